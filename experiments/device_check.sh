# The prepared run for a lent GPU (about 10 minutes; see ../shared/device/README.md):
# the test suite, bench_step (loop efficiency, float32 and bfloat16) and the paper-size
# PixelCNN++ benchmark (float32 and bfloat16); results tarred into $OUT after each stage.
# Prepare here, from the project root:
#   bash ../shared/device/prepare.sh mnist
#   pip download dm-pix --no-deps -d .device-carry/whl --python-version 3.12 --only-binary=:all:
#   (and nbclient nbformat ipykernel with their dependencies for the notebook test)
# then run on the device with carry [".device-carry"]: bash experiments/device_check.sh
set -u
R=$OUT/r; mkdir -p $R
pack() { tar czf $OUT/results.tgz -C $OUT r 2>/dev/null; }
source .device-carry/env.sh > $R/env.log 2>&1 || { cat $R/env.log; }
tail -3 $R/env.log
nvidia-smi --query-gpu=name,memory.total --format=csv > $R/gpu.txt 2>&1; cat $R/gpu.txt
pack
# 1. the suite on the GPU (verbose: a time-out still shows every finished test)
timeout 190 python3 -m pytest -v -n 14 -p no:cacheprovider tests > $R/pytest.log 2>&1; echo "pytest rc $?" >> $R/pytest.log
grep -E "FAILED|ERROR|passed|failed" $R/pytest.log | tail -25; pack
# 2. bench_step, float32 and bfloat16 (loop efficiency)
for dt in float32 bfloat16; do
  timeout 75 python3 -m experiments.bench_step --out $R/bench_step_$dt --repeats 10 --inner 5 \
    --loop_steps 2000 --config.model.compute_dtype=$dt > $R/bench_step_$dt.log 2>&1; echo "rc $?" >> $R/bench_step_$dt.log
  grep -E "loop|csm_over|rc" $R/bench_step_$dt.log; pack
done
# 3. PixelCNN++ paper size, f32 (steps only) then bf16 (steps + bounded sampling)
timeout 100 python3 -m experiments.bench_pixelcnnpp --out $R/pcnn_f32 --paper_size --repeats 10 --no_sampling \
  > $R/pcnn_f32.log 2>&1; echo "rc $?" >> $R/pcnn_f32.log; grep -E "CSM step|rc" $R/pcnn_f32.log; pack
timeout 125 python3 -m experiments.bench_pixelcnnpp --out $R/pcnn_bf16 --paper_size --repeats 10 \
  --config.model.compute_dtype=bfloat16 > $R/pcnn_bf16.log 2>&1; echo "rc $?" >> $R/pcnn_bf16.log
grep -E "CSM step|samples/s|rc" $R/pcnn_bf16.log; pack
