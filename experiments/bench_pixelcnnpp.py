"""PixelCNN++ at CIFAR-10 shape: CSM train step vs MLE train step, and sampling speed.

Both steps use the same PixelCNN++ backbone (configs/cifar10_pixelcnnpp.py and its ':mle'
variant, paper Sec. 5.3); they differ only in the head and the loss:
  CSM  score head, composite score matching with per-dimension noise (fast diagonal:
       one jvp through the head with the context fixed, paper Eq. 5);
  MLE  discretized logistic mixture head, exact negative log-likelihood.
The two compiled train steps (`train.make_train_step`: loss, gradient, Adam, EMA) are
timed interleaved (alternating which goes first) in one process, so machine load affects
both alike; we report the medians and the median of the per-repeat ratios.

Sampling (`sampling.make_sampler_from_config`): the cached-context Langevin sampler
(D context passes + D*L*T head steps) and exact ancestral sampling of the MLE model
(D context passes) are timed over a few dimensions k1 < k2 and scaled to all D = 3072:
per_dim = (t(k2) - t(k1)) / (k2 - k1), full = t(k1) + (D - k1) * per_dim; the JSON says
so ("scaled_from_dims"). The naive Langevin sampler (D*L*T full passes) is timed on one
dimension for comparison. The JSON is written after the train steps and after sampling.

CPU-feasible defaults (batch 4, 16 filters, 1 resnet per resolution, 4 samples); config
fields are set with --config.FIELD=value (both variants), e.g.
  python -m experiments.bench_pixelcnnpp --out /tmp/bench_pixelcnnpp \\
      --config.model.nr_filters=32 --config.sampling.num_steps=5
and the paper size (160 filters, 5 resnets, batch 16) on a GPU:
  python -m experiments.bench_pixelcnnpp --out /tmp/bench_pixelcnnpp --paper_size
"""

import os
import sys
import time

from experiments import common


def parse_args(argv=None):
  p = common.parser(__doc__.split("\n\n")[0], ("config",))
  p.add_argument("--out", required=True, help="output directory (results.json)")
  p.add_argument("--paper_size", action="store_true",
                 help="nr_filters 160, nr_resnet 5, batch 16 (before --config.* flags)")
  p.add_argument("--image_size", type=int, default=None,
                 help="H = W of the benchmark images (default: CIFAR-10's 32)")
  p.add_argument("--repeats", type=int, default=15, help="timed (CSM, MLE) step pairs")
  p.add_argument("--warmup", type=int, default=2, help="untimed steps of each after compile")
  p.add_argument("--sample_dims", default="2,10",
                 help="k1,k2 (or one k): dimensions timed, scaled to D (module docstring)")
  p.add_argument("--no_naive", action="store_true", help="skip the naive sampler timing")
  p.add_argument("--no_sampling", action="store_true", help="time the train steps only")
  p.add_argument("--data", default=common.CIFAR_NPZ[0],
                 help="CIFAR-10 npz (key x, uint8 NHWC); random pixels if missing")
  p.add_argument("--seed", type=int, default=0, help="random seed")
  return common.parse(p, argv, prefixes=("config",))


common.parse_early(__name__, parse_args)  # --help and flag errors before JAX loads

import jax  # noqa: E402
import numpy as np  # noqa: E402
from csm_jax import config_base  # noqa: E402
from csm_jax import data as data_lib  # noqa: E402
from csm_jax import models  # noqa: E402
from csm_jax import sampling  # noqa: E402
from csm_jax import sharding as sharding_lib  # noqa: E402
from csm_jax import train  # noqa: E402


CONFIG = "cifar10_pixelcnnpp"
CPU_SIZE = ("model.nr_filters=16", "model.nr_resnet=1", "training.batch_size=4",
            "sampling.num_samples=4")
PAPER_SIZE = ("model.nr_filters=160", "model.nr_resnet=5", "training.batch_size=16")


def load_configs(args, overrides):
  """{'csm': config, 'mle': config}: the two variants, CPU size (or --paper_size), then
  the --config.* overrides."""
  base = list(CPU_SIZE) + (list(PAPER_SIZE) if args.paper_size else [])
  return {v: common.apply(config_base.load_config(f"{CONFIG}:{v}", base), overrides)
          for v in ("csm", "mle")}


def benchmark_arrays(args, config):
  """(arrays, where from): the batches' pixels, from --data, or uniform random pixels
  when it is missing or of another shape (--image_size)."""
  shape = data_lib.image_shape(config.data, config.data.dataset)
  if args.image_size:
    shape = (args.image_size, args.image_size, shape[-1])
  pix, source = np.load(args.data)["x"] if os.path.exists(args.data) else None, args.data
  if pix is None or pix.shape[1:] != shape:
    pix = np.random.default_rng(args.seed).integers(0, 256, (256,) + shape, dtype=np.uint8)
    source = "uniform random pixels"
  return data_lib.Arrays(train=pix, test=pix[:1], shape=shape, discrete=True), source


def _timed(fn):
  t = time.perf_counter()
  out = jax.block_until_ready(fn())
  return time.perf_counter() - t, out


def prepare_run(config, arrays, args):
  """Setup, compiled step and state after `args.warmup` steps; times the compile.
  State, key and batches are placed on the mesh as in training (so the step compiles
  once: inputs of the same shardings as its outputs)."""
  s = train.setup(config, arrays=arrays)
  key = jax.device_put(jax.random.PRNGKey(args.seed), sharding_lib.replicated(s.mesh))
  state = train.initial_state(s)
  batch = s.batcher.train(0)
  t0 = time.perf_counter()
  step = jax.jit(train.make_train_step(s.loss_fn, s.optimizer, config.optim.ema_decay),
                 donate_argnums=(0,)).lower(state, batch, key).compile()
  compile_s = time.perf_counter() - t0
  state, _ = step(state, batch, key)
  for i in range(args.warmup):
    state, _ = step(state, s.batcher.train(1 + i), key)
  return {"setup": s, "step": step, "key": key, "compile_s": compile_s, "times": [],
          "flops": common.xla_flops(step), "state": jax.block_until_ready(state)}


def _step_summary(runs, args):
  csm_t, mle_t = np.array(runs["csm"]["times"]), np.array(runs["mle"]["times"])
  return {
      "csm_step_s_median": float(np.median(csm_t)),
      "mle_step_s_median": float(np.median(mle_t)),
      "ratio_csm_over_mle": float(np.median(csm_t) / np.median(mle_t)),
      "ratio_median_of_pairs": float(np.median(csm_t / mle_t)),
      "ratio_of_minima": float(csm_t.min() / mle_t.min()),
      "csm_step_s": csm_t.tolist(), "mle_step_s": mle_t.tolist(),
      "compile_s": {v: r["compile_s"] for v, r in runs.items()},
      "flops_per_step": {v: r["flops"] for v, r in runs.items()},
      "flops_per_sec": {v: (r["flops"] / float(np.median(r["times"])) if r["flops"] else None)
                        for v, r in runs.items()},
      "compute_dtype": runs["csm"]["setup"].config.model.compute_dtype,
      "matmul_precision": runs["csm"]["setup"].config.model.matmul_precision,
      "num_params": {v: models.count_parameters(r["state"].params, r["setup"].model)[
          "parameters"] for v, r in runs.items()},
      "timing": f"{args.repeats} interleaved pairs after {args.warmup} warm-up steps each; "
                "one jit-compiled train step = loss, gradient, Adam update, EMA",
  }


def time_train_steps(configs, arrays, args):
  """(summary, runs): the two train steps timed in alternating order."""
  runs = {v: prepare_run(c, arrays, args) for v, c in configs.items()}
  for r in range(args.repeats):
    for variant in (("csm", "mle") if r % 2 == 0 else ("mle", "csm")):
      run = runs[variant]
      x = jax.block_until_ready(run["setup"].batcher.train(1 + args.warmup + r))  # not timed
      dt, (run["state"], _) = _timed(lambda: run["step"](run["state"], x, run["key"]))
      run["times"].append(dt)
  return _step_summary(runs, args), runs


def _scaled_sampler_time(make, params, dims, dim, key):
  """Times make(k)(params, key) for k in dims; scales linearly to all `dim` dims."""
  times, compiles = {}, {}
  for k in dims:
    fn = make(k)
    compiles[k], _ = _timed(lambda: fn(params, key))
    times[k] = float(np.median([_timed(lambda: fn(params, jax.random.fold_in(key, i)))[0]
                                for i in range(3)]))
  k1, k2 = dims[0], dims[-1]
  per_dim = (times[k2] - times[k1]) / (k2 - k1) if k2 > k1 else 0.0
  if per_dim <= 0.0:  # one k, or timing noise: no fixed-cost correction
    per_dim, k1 = times[k2] / k2, 0
  full = (times[k1] if k1 else 0.0) + (dim - k1) * per_dim
  return {"timed_s": {str(k): v for k, v in times.items()},
          "compile_s": {str(k): v for k, v in compiles.items()},
          "per_dim_s": per_dim, "est_full_image_s": full,
          "scaled_from_dims": list(dims), "D": dim}


def time_config_sampler(run, dims, key, note):
  """The sampler config.sampling asks for (one compiled call), timed and scaled to D."""
  config, model = run["setup"].config, run["setup"].model
  make = lambda k: sampling.make_sampler_from_config(config, model, num_dims=k,
                                                     chunk_dims=0)[0]
  r = _scaled_sampler_time(make, run["state"].ema_params, dims, model.dim, key)
  n = config.sampling.num_samples
  r.update(sampling.make_sampler_from_config(config, model, chunk_dims=0)[1], num_samples=n,
           samples_per_sec=n / r["est_full_image_s"], note=note)
  return r


def time_naive_sampler(run, cached, key):
  """The naive Langevin sampler (full passes) on one dimension, times D."""
  model, n = run["setup"].model, cached["num_samples"]
  fn, _ = sampling.make_sampler_from_config(run["setup"].config, model, n, num_dims=1,
                                            chunk_dims=0, cached=False)
  params = run["state"].ema_params
  _timed(lambda: fn(params, key))
  t1 = _timed(lambda: fn(params, jax.random.fold_in(key, 1)))[0]
  return {"timed_s_one_dim": t1, "est_full_image_s": t1 * model.dim, "num_samples": n,
          "samples_per_sec": n / (t1 * model.dim), "L": cached["L"], "T": cached["T"],
          "note": "D*L*T full passes; one dimension timed, times D",
          "cached_speedup": (t1 * model.dim) / cached["est_full_image_s"]}


def time_sampling(args, runs, save=lambda out: None):
  """Each sampler timed in turn; save(out) after each, so a time-out keeps the finished."""
  key = jax.random.PRNGKey(args.seed + 1)
  dims = tuple(int(k) for k in args.sample_dims.split(","))
  out = {"csm_cached_langevin": time_config_sampler(
      runs["csm"], dims, key, "cached-context annealed Langevin: D context passes + D*L*T "
      "head steps; timed on the first k dims, scaled linearly to D")}
  save(out)
  out["mle_ancestral"] = time_config_sampler(
      runs["mle"], dims, key, "exact ancestral sampling of the discretized mixture: D "
      "context passes; timed on the first k dims, scaled linearly to D")
  save(out)
  if not args.no_naive:
    out["csm_naive_langevin"] = time_naive_sampler(runs["csm"], out["csm_cached_langevin"], key)
    save(out)
  return out


def main(argv=None):
  args, ov = parse_args(argv)
  configs = load_configs(args, ov["config"])
  arrays, source = benchmark_arrays(args, configs["csm"])
  m = configs["csm"].model
  result = {
      "experiment": "bench_pixelcnnpp", "shape": list(arrays.shape),
      "backbone": {k: m[k] for k in ("nr_filters", "nr_resnet", "num_resolutions",
                                     "dropout_rate")},
      "batch": configs["csm"].training.batch_size, "config_overrides": ov["config"],
      "paper_size": args.paper_size, "data": source, "machine": common.machine(),
  }
  result["train_step"], runs = time_train_steps(configs, arrays, args)
  common.write_results(args.out, result, args)
  steps = result["train_step"]
  print(f"CSM step {steps['csm_step_s_median'] * 1e3:.1f} ms, MLE step "
        f"{steps['mle_step_s_median'] * 1e3:.1f} ms, ratio {steps['ratio_csm_over_mle']:.3f}",
        flush=True)
  if not args.no_sampling:
    def save(partial):
      result["sampling"] = partial
      common.write_results(args.out, result, args)
    time_sampling(args, runs, save)
    for k, v in result["sampling"].items():
      print(f"{k}: {v['samples_per_sec']:.4g} samples/s "
            f"(full image {v['est_full_image_s']:.1f} s for {v['num_samples']})", flush=True)
  print("wrote", common.results_path(args.out))
  return result


if __name__ == "__main__":
  main(sys.argv[1:])
