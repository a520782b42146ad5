"""Cached-context vs naive annealed Langevin sampling of the MNIST AR-CSM MADE.

Meng et al. (NeurIPS 2020, Sec. 4.2) sample an AR-CSM one dimension at a time with
annealed Langevin dynamics and note that this is slow. With the context of dimension d
computed once from x_<d, the L*T Langevin steps of x_d run the small head alone
(`sampling.sample`); the naive sampler re-evaluates the whole model at every step
(`sampling.naive_sample`). Both are jit-compiled and timed after compilation, round
robin in one process. The naive sampler costs the same for every dimension, so it is
timed on the first `--naive_dims` dimensions and scaled by D / k (the JSON says so);
the two samplers are also checked to agree on those dimensions (same random numbers;
the difference is reported relative to the largest |x|, as float32 rounding grows with
the samples of a random-init model).

  python experiments/bench_sampling.py --out /tmp/bench_sampling.json
"""

import argparse
import importlib.util
import pathlib
import sys
import time

if __package__ in (None, ""):  # run as a script: make the repository importable
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax
import numpy as np

from csm_jax import models, noise, sampling
from experiments import common

REPO = pathlib.Path(__file__).resolve().parents[1]


def load_config(path):
  """get_config() of a configs/*.py file."""
  spec = importlib.util.spec_from_file_location("bench_config", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config()


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--out", required=True, help="output JSON file")
  p.add_argument("--config", default=str(REPO / "configs" / "mnist_made.py"))
  p.add_argument("--batch", type=int, default=16)
  p.add_argument("--num_scales", type=int, default=10, help="L")
  p.add_argument("--n_steps", type=int, default=10, help="T, Langevin steps per level")
  p.add_argument("--naive_dims", type=int, default=4, help="k: naive timed on k dims")
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--hidden", default=None, help="override model.hidden_sizes, e.g. 64,64")
  p.add_argument("--context_size", type=int, default=None)
  p.add_argument("--image_size", type=int, default=28, help="D = image_size^2 (smoke runs)")
  p.add_argument("--seed", type=int, default=0)
  return p.parse_args(argv)


def run(args):
  cfg = load_config(args.config)
  if args.hidden:
    cfg.model.hidden_sizes = tuple(int(h) for h in args.hidden.split(","))
  if args.context_size:
    cfg.model.context_size = args.context_size
  shape = (args.image_size, args.image_size, 1)
  model = models.get_model(cfg.model, shape)
  dim = model.dim
  params = model.init(jax.random.PRNGKey(args.seed))
  sigmas = noise.geometric_sigmas(cfg.noise.sigma_max, cfg.noise.sigma_min, args.num_scales)
  k = min(args.naive_dims, dim)
  kw = dict(num_samples=args.batch, sigmas=tuple(sigmas.tolist()), n_steps=args.n_steps,
            step_lr=cfg.sampling.step_lr, denoise=cfg.sampling.denoise)
  rng = jax.random.PRNGKey(args.seed + 1)

  fns = {
      "cached": jax.jit(lambda p, r: sampling.sample(model, p, r, **kw)),
      "naive_k": jax.jit(lambda p, r: sampling.naive_sample(model, p, r, num_dims=k, **kw)),
      "cached_k": jax.jit(lambda p, r: sampling.sample(model, p, r, num_dims=k, **kw)),
  }
  compiled, compile_s = {}, {}
  for name, f in fns.items():
    t0 = time.perf_counter()
    compiled[name] = f.lower(params, rng).compile()
    compile_s[name] = time.perf_counter() - t0
    print(f"compiled {name} in {compile_s[name]:.1f}s", flush=True)

  outs = {name: np.asarray(c(params, rng)) for name, c in compiled.items()}  # warm-up
  first = model.order[:k]
  agree = float(np.abs(outs["naive_k"][:, first] - outs["cached_k"][:, first]).max())
  # relative to the sample scale: a random-init model's Langevin chain is not contracting,
  # so rounding differences (the head runs on (B, 1) vs (B, D) inputs) grow with |x|
  agree_rel = agree / max(float(np.abs(outs["naive_k"][:, first]).max()), 1e-30)
  print(f"naive vs cached on the first {k} dims: max |diff| = {agree:.2e} "
        f"({agree_rel:.1e} of max |x|)", flush=True)

  thunks = {"cached": lambda: compiled["cached"](params, rng),
            "naive_k": lambda: compiled["naive_k"](params, rng)}
  t0 = time.perf_counter()
  med, all_times = common.time_interleaved(thunks, repeats=args.repeats, inner=1)
  naive_full = med["naive_k"] * dim / k
  speedup = naive_full / med["cached"]
  n_params = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(params))
  result = {
      "what": "cached-context vs naive 1-D annealed Langevin sampler (Meng et al. 2020, "
              "Sec. 4.2), jit-compiled, median seconds after compilation, timed round robin",
      "speedup_over_naive": float(speedup),
      "cached_seconds": med["cached"],
      "naive_seconds_first_k_dims": med["naive_k"],
      "naive_seconds_estimated_full": float(naive_full),
      "naive_scaling": f"naive timed on the first k={k} of D={dim} dimensions and scaled "
                       f"by D/k={dim / k:.1f} (its cost per dimension is constant)",
      "naive_dims_timed": int(k),
      "max_abs_diff_naive_vs_cached_first_k": agree,
      "max_rel_diff_naive_vs_cached_first_k": agree_rel,
      "compile_seconds": compile_s,
      "all_times": all_times,
      "timing_wall_seconds": float(time.perf_counter() - t0),
      "config": {"config_file": str(args.config), "dim": dim, "batch": args.batch,
                 "num_scales_L": args.num_scales, "n_steps_T": args.n_steps,
                 "sigmas": sigmas.tolist(), "hidden_sizes": list(cfg.model.hidden_sizes),
                 "context_size": cfg.model.context_size, "head": cfg.model.head,
                 "head_hidden": list(cfg.model.head_hidden), "parameters": n_params,
                 "params": "random init (cost does not depend on the values)"},
      "evaluations": {"cached": f"{dim} context passes + {dim * args.num_scales * args.n_steps}"
                                f" head passes on 1 dim",
                      "naive": f"{dim * args.num_scales * args.n_steps} full passes "
                               f"(context + head on all {dim} dims)"},
      "machine": common.machine(),
  }
  common.write_json(args.out, result)
  print(f"cached {med['cached']:.2f}s, naive {med['naive_k']:.2f}s on {k} dims -> "
        f"{naive_full:.1f}s estimated for D={dim}: speedup {speedup:.1f}x", flush=True)
  return result


def main(argv=None):
  return run(parse_args(argv))


if __name__ == "__main__":
  main()
