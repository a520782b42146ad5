"""PixelCNN++ at CIFAR-10 shape: CSM train step vs MLE train step, and sampling speed.

Both steps use the same PixelCNN++ backbone (configs/cifar10_pixelcnnpp.py); they differ
only in the head and the loss:
  CSM  score head, composite score matching with per-dimension noise (fast diagonal:
       one jvp through the head with the context fixed, paper Eq. 5);
  MLE  discretized logistic mixture head, exact negative log-likelihood.
The two compiled steps are timed interleaved (alternating which goes first) in one
process, so machine load affects both alike; we report the medians and the median of
the per-repeat ratios.

Sampling: the cached-context Langevin sampler (D context passes + D*L*T head steps) and
exact ancestral sampling of the MLE model (D context passes) are timed over a few
dimensions k1 < k2 and scaled to all D = 3072: per_dim = (t(k2) - t(k1)) / (k2 - k1),
full = t(k1) + (D - k1) * per_dim; the JSON says so ("scaled_from_dims"). The naive
Langevin sampler (D*L*T full passes) is timed on one dimension for comparison.

CPU-feasible defaults (batch 4, 16 filters, 1 resnet per scale); paper size on a GPU:
  python -m experiments.bench_pixelcnnpp --out /tmp/bench.json --paper_size
"""

import argparse
import importlib.util
import json
import os
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from csm_jax import datasets
from csm_jax import losses
from csm_jax import models
from csm_jax import noise as noise_lib
from csm_jax import sampling
from csm_jax import train
from csm_jax.models import discretized

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "cifar10_pixelcnnpp.py")
CIFAR_NPZ = os.path.join(os.path.dirname(REPO), "shared", "data", "cifar10_subset",
                         "train_first4000.npz")


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--out", required=True, help="output JSON file")
  p.add_argument("--image_size", type=int, default=32, help="H = W (CIFAR-10: 32)")
  p.add_argument("--channels", type=int, default=3)
  p.add_argument("--batch", type=int, default=4)
  p.add_argument("--nr_filters", type=int, default=16)
  p.add_argument("--nr_resnet", type=int, default=1)
  p.add_argument("--num_scales", type=int, default=3)
  p.add_argument("--dropout_rate", type=float, default=0.5)
  p.add_argument("--paper_size", action="store_true",
                 help="nr_filters 160, nr_resnet 5, batch 16 (overrides those flags)")
  p.add_argument("--repeats", type=int, default=15, help="timed (CSM, MLE) step pairs")
  p.add_argument("--warmup", type=int, default=2, help="untimed steps of each after compile")
  p.add_argument("--sample_batch", type=int, default=4, help="samples per sampler call")
  p.add_argument("--sample_dims", default="2,10",
                 help="k1,k2 (or one k): dimensions timed, scaled to D (module docstring)")
  p.add_argument("--n_steps", type=int, default=None,
                 help="Langevin steps per noise level (default: the config's)")
  p.add_argument("--no_naive", action="store_true", help="skip the naive sampler timing")
  p.add_argument("--no_sampling", action="store_true", help="time the train steps only")
  p.add_argument("--data", default=CIFAR_NPZ,
                 help="CIFAR-10 npz (key x, uint8 NHWC); random pixels if missing")
  p.add_argument("--seed", type=int, default=0)
  return p.parse_args(argv)


def load_config(variant):
  spec = importlib.util.spec_from_file_location("cifar10_pixelcnnpp", CONFIG)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(variant)


def numpy_init(model, seed):
  """Parameters with the structure of model.init, drawn with numpy: no slow compile.

  Normal(0, 0.05) for kernels (the PixelCNN++ init; weight norm makes the scale moot),
  ones for weight-norm scales, zeros for biases. Values do not affect step times.
  """
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0))

  def fill(path, leaf):
    name = str(path[-1].key) if hasattr(path[-1], "key") else str(path[-1])
    if "bias" in name:
      return jnp.zeros(leaf.shape, leaf.dtype)
    if "scale" in name:
      return jnp.ones(leaf.shape, leaf.dtype)
    fan_in = int(np.prod(leaf.shape[:-1])) or 1
    std = 0.05 if len(leaf.shape) > 2 else 1.0 / np.sqrt(fan_in)
    return jnp.asarray(std * rng.standard_normal(leaf.shape), leaf.dtype)

  return jax.tree_util.tree_map_with_path(fill, shapes)


def build(variant, args):
  c = load_config(variant)
  c.model.nr_filters, c.model.nr_resnet = args.nr_filters, args.nr_resnet
  c.model.num_scales, c.model.dropout_rate = args.num_scales, args.dropout_rate
  c.training.batch_size = args.batch
  if args.n_steps is not None:
    c.sampling.n_steps = args.n_steps
  model = models.get_model(c.model, shape_of(args))
  loss_fn = losses.get_loss_fn(c, model)
  opt = train.make_optimizer(c.optim)
  params = numpy_init(model, args.seed)
  state = train.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                           ema_params=jax.tree.map(jnp.copy, params),
                           opt_state=opt.init(params), bad_step=jnp.full((), -1, jnp.int32))
  step = jax.jit(train.make_train_step(loss_fn, opt, c.optim.ema_decay), donate_argnums=(0,))
  return c, model, state, step


def shape_of(args):
  return (args.image_size, args.image_size, args.channels)


def batches(args, config, n):
  """n preprocessed (B, D) batches from the CIFAR subset (or random pixels)."""
  rng = np.random.default_rng(args.seed)
  shape = shape_of(args)
  pix = np.load(args.data)["x"] if os.path.exists(args.data) else None
  if pix is None or pix.shape[1:] != shape:
    pix = rng.integers(0, 256, (256,) + shape, dtype=np.uint8)
  pre = datasets.Preprocessor(shape=shape, discrete=True, dequantize=config.data.dequantize,
                              scale=config.data.scale, logit_lambda=config.data.logit_lambda)
  return [jnp.asarray(pre(pix[rng.integers(0, len(pix), args.batch)], rng)) for _ in range(n)]


def _timed(fn):
  t = time.perf_counter()
  out = fn()
  jax.block_until_ready(out)
  return time.perf_counter() - t, out


def time_train_steps(args):
  key = jax.random.PRNGKey(args.seed)
  runs = {}
  for variant in ("csm", "mle"):
    c, model, state, step = build(variant, args)
    data = batches(args, c, args.repeats + args.warmup + 1)
    compile_s, (state, _) = _timed(lambda: step(state, data[0], key))
    runs[variant] = dict(config=c, model=model, state=state, step=step, data=data,
                         compile_s=compile_s, times=[])
    for i in range(args.warmup):
      state, _ = step(state, data[1 + i], key)
    jax.block_until_ready(state)
    runs[variant]["state"] = state
  for r in range(args.repeats):
    order = ("csm", "mle") if r % 2 == 0 else ("mle", "csm")
    for variant in order:
      run = runs[variant]
      x = run["data"][1 + args.warmup + r]
      dt, (run["state"], _) = _timed(lambda: run["step"](run["state"], x, key))
      run["times"].append(dt)
  csm_t, mle_t = np.array(runs["csm"]["times"]), np.array(runs["mle"]["times"])
  n_params = {v: int(sum(x.size for x in jax.tree.leaves(runs[v]["state"].params)))
              for v in runs}
  result = {
      "csm_step_s_median": float(np.median(csm_t)),
      "mle_step_s_median": float(np.median(mle_t)),
      "ratio_csm_over_mle": float(np.median(csm_t) / np.median(mle_t)),
      "ratio_median_of_pairs": float(np.median(csm_t / mle_t)),
      "ratio_of_minima": float(csm_t.min() / mle_t.min()),
      "csm_step_s": csm_t.tolist(),
      "mle_step_s": mle_t.tolist(),
      "compile_s": {v: runs[v]["compile_s"] for v in runs},
      "num_params": n_params,
      "timing": f"{args.repeats} interleaved pairs after {args.warmup} warm-up steps each; "
                "one jit-compiled train step = loss, gradient, Adam update, EMA",
  }
  return result, runs


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


def time_sampling(args, runs):
  key = jax.random.PRNGKey(args.seed + 1)
  dims = tuple(int(k) for k in args.sample_dims.split(","))
  n = args.sample_batch
  out = {}
  c, model = runs["csm"]["config"], runs["csm"]["model"]
  params = runs["csm"]["state"].ema_params
  sigmas = noise_lib.sigmas_from_config(c.noise)
  L, T = len(sigmas), c.sampling.n_steps
  make = lambda k: sampling.make_sampler(model, sigmas, n, T, c.sampling.step_lr,
                                         c.sampling.denoise, num_dims=k)
  r = _scaled_sampler_time(make, params, dims, model.dim, key)
  r.update(num_samples=n, L=L, T=T, samples_per_sec=n / r["est_full_image_s"],
           note="cached-context annealed Langevin: D context passes + D*L*T head steps; "
                "timed on the first k dims, scaled linearly to D")
  out["csm_cached_langevin"] = r
  if not args.no_naive:
    fn = sampling.make_sampler(model, sigmas, n, T, c.sampling.step_lr, c.sampling.denoise,
                               cached=False, num_dims=1)
    _timed(lambda: fn(params, key))
    t1 = _timed(lambda: fn(params, jax.random.fold_in(key, 1)))[0]
    out["csm_naive_langevin"] = {
        "timed_s_one_dim": t1, "est_full_image_s": t1 * model.dim, "num_samples": n,
        "samples_per_sec": n / (t1 * model.dim), "L": L, "T": T,
        "note": "D*L*T full passes; one dimension timed, times D",
        "cached_speedup": (t1 * model.dim) / r["est_full_image_s"]}
  m_model = runs["mle"]["model"]
  m_params = runs["mle"]["state"].ema_params
  make = lambda k: discretized.make_ancestral_sampler(m_model, n, num_dims=k)
  r = _scaled_sampler_time(make, m_params, dims, m_model.dim, key)
  r.update(num_samples=n, samples_per_sec=n / r["est_full_image_s"],
           note="exact ancestral sampling of the discretized mixture: D context passes; "
                "timed on the first k dims, scaled linearly to D")
  out["mle_ancestral"] = r
  return out


def main(argv=None):
  args = parse_args(argv)
  if args.paper_size:
    args.nr_filters, args.nr_resnet, args.batch = 160, 5, 16
  result = {
      "experiment": "bench_pixelcnnpp",
      "shape": list(shape_of(args)),
      "backbone": {"nr_filters": args.nr_filters, "nr_resnet": args.nr_resnet,
                   "num_scales": args.num_scales, "dropout_rate": args.dropout_rate},
      "batch": args.batch,
      "data": (args.data if os.path.exists(args.data) and shape_of(args) == (32, 32, 3)
               else "uniform random pixels"),
      "device": str(jax.devices()[0]), "backend": jax.default_backend(),
      "num_devices": jax.device_count(), "jax": jax.__version__,
      "host": platform.node(), "cpu_count": os.cpu_count(),
  }
  steps, runs = time_train_steps(args)
  result["train_step"] = steps
  print(f"CSM step {steps['csm_step_s_median'] * 1e3:.1f} ms, MLE step "
        f"{steps['mle_step_s_median'] * 1e3:.1f} ms, ratio {steps['ratio_csm_over_mle']:.3f}",
        flush=True)
  if not args.no_sampling:
    result["sampling"] = time_sampling(args, runs)
    for k, v in result["sampling"].items():
      print(f"{k}: {v['samples_per_sec']:.4g} samples/s "
            f"(full image {v['est_full_image_s']:.1f} s for {v['num_samples']})", flush=True)
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(result, f, indent=2)
  print("wrote", args.out)
  return result


if __name__ == "__main__":
  main(sys.argv[1:])
