"""Smoke runs of the PixelCNN++ experiment scripts on tiny images (real CLIs, subprocesses).

XLA's backend optimizations are switched off in the subprocesses: at these sizes
compilation, not execution, is the cost, and the scripts' logic is what is under test.
"""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from csm_jax import config_base

REPO = pathlib.Path(__file__).resolve().parents[1]
ENV = dict(os.environ, XLA_FLAGS="--xla_backend_optimization_level=0",
           JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))

# Writes two work directories as training does (config.json + an orbax checkpoint of a
# freshly initialized TrainState) for the ':mle' (discretized head) and default (score
# head) variants of configs/cifar10_pixelcnnpp.py at a tiny size, then draws the grids.
# Compiling PixelCNN++ train steps would triple the time; real runs are in the README.
DRIVER = """
import os, sys
import jax
from csm_jax import checkpoints, config_base, train
from experiments import image_samples
tmp = sys.argv[1]
tiny = ["data.dataset=npz", f"data.path={tmp}/train.npz", f"data.test_path={tmp}/test.npz",
        "model.nr_filters=4", "model.nr_resnet=1", "model.num_resolutions=2",
        "model.context_size=4", "model.head_hidden=(8,)", "model.num_mixtures=2",
        "model.dropout_rate=0.0"]
for variant in ("mle", "csm"):
  c = config_base.load_config(f"configs/cifar10_pixelcnnpp.py:{variant}", tiny)
  s = train.setup(c)
  state = train.init_state(s.model, s.optimizer, jax.random.PRNGKey(c.seed))
  workdir = os.path.join(tmp, variant)
  os.makedirs(workdir)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(c.to_json_best_effort(indent=2))
  ckpt = checkpoints.Checkpointer(os.path.join(workdir, "checkpoints"))
  ckpt.save(0, state)
  ckpt.close()
image_samples.main(["--out", tmp + "/fig", "--mle_workdir", tmp + "/mle",
                    "--csm_workdir", tmp + "/csm", "--num_samples=4",
                    "--config.sampling.num_steps=2"])
"""

BENCH_ARGS = ["--image_size=4", "--config.training.batch_size=2", "--config.model.nr_filters=4",
              "--config.model.num_resolutions=2", "--config.model.dropout_rate=0",
              "--repeats=2", "--warmup=0", "--sample_dims=2",
              "--config.sampling.num_samples=2", "--config.sampling.num_steps=2"]


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
  """Starts the benchmark smoke run in the background (it is compile-bound and
  single-threaded, so it overlaps with the other smoke test); yields (proc, out)."""
  out = tmp_path_factory.mktemp("bench") / "bench"
  proc = subprocess.Popen([sys.executable, "-m", "experiments.bench_pixelcnnpp",
                           f"--out={out}"] + BENCH_ARGS, cwd=REPO, env=ENV,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  yield proc, out
  if proc.poll() is None:
    proc.kill()
    proc.communicate()


def _run(args, timeout=240):
  proc = subprocess.run([sys.executable] + args, cwd=REPO, env=ENV, capture_output=True,
                        text=True, timeout=timeout)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
  return proc


def test_config_switch():
  """configs/*_pixelcnnpp.py: CSM by default, the MLE baseline with ':mle'."""
  for name in ("mnist", "cifar10", "celeba"):
    path = str(REPO / "configs" / f"{name}_pixelcnnpp.py")
    csm, mle = config_base.load_config(path), config_base.load_config(path + ":mle")
    assert csm.model.backbone == mle.model.backbone == "pixelcnnpp"
    assert (csm.model.head, csm.loss.name, csm.noise.enabled) == ("score", "csm", True)
    assert (mle.model.head, mle.loss.name, mle.noise.enabled) == ("discretized_logistic",
                                                                  "mle", False)
    assert csm.data.scale == mle.data.scale == "symmetric"
    assert csm.data.dequantize and not mle.data.dequantize
    assert csm.data.logit_lambda == mle.data.logit_lambda == 0.0
    with pytest.raises(ValueError, match="variant"):
      config_base.load_config(path + ":nope")


@pytest.mark.slow
def test_image_samples_smoke(tmp_path, bench_run):
  del bench_run  # started first so that it runs alongside
  rng = np.random.default_rng(0)
  np.savez(tmp_path / "train.npz", x=rng.integers(0, 256, (32, 4, 4, 3), dtype=np.uint8))
  np.savez(tmp_path / "test.npz", x=rng.integers(0, 256, (8, 4, 4, 3), dtype=np.uint8))
  _run(["-c", DRIVER, str(tmp_path)])
  mle_cfg = json.loads((tmp_path / "mle" / "config.json").read_text())
  assert mle_cfg["model"]["head"] == "discretized_logistic" and mle_cfg["loss"]["name"] == "mle"
  out = tmp_path / "fig"
  for name in ("side_by_side.png", "mle_samples.png", "csm_samples.png", "samples.npz"):
    assert (out / name).stat().st_size > 0, name
  summary = json.loads((out / "results.json").read_text())
  assert summary["same_backbone"]
  assert summary["mle"]["step"] == summary["csm"]["step"] == 0
  assert summary["mle"]["sampler"].startswith("exact ancestral")
  assert summary["csm"]["sampler"].startswith("cached-context")
  s = np.load(out / "samples.npz")
  assert s["mle"].shape == s["csm"].shape == (4, 4, 4, 3)
  assert 0.0 <= s["mle"].min() and s["mle"].max() <= 1.0
  # MLE samples are pixel bins: k / 255 exactly
  np.testing.assert_allclose(s["mle"] * 255, np.round(s["mle"] * 255), atol=1e-3)


@pytest.mark.slow
def test_bench_pixelcnnpp_smoke(bench_run):
  proc, out = bench_run
  log, _ = proc.communicate(timeout=300)
  assert proc.returncode == 0, log[-5000:]
  r = json.loads((out / "results.json").read_text())
  assert r["shape"] == [4, 4, 3]
  ts = r["train_step"]
  assert len(ts["csm_step_s"]) == len(ts["mle_step_s"]) == 2
  assert ts["ratio_csm_over_mle"] > 0 and np.isfinite(ts["ratio_csm_over_mle"])
  s = r["sampling"]
  for k in ("csm_cached_langevin", "csm_naive_langevin", "mle_ancestral"):
    assert s[k]["samples_per_sec"] > 0, k
  assert s["csm_cached_langevin"]["scaled_from_dims"] == [2]
  assert s["csm_cached_langevin"]["D"] == 48
