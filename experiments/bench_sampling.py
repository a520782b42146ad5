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

Parallel sampling (fixed point, `sampling.fixed_point_sample`): for each batch size of
``--fixed_point_batches``, the sequential cached sampler and the fixed-point sampler with
the same random numbers (tolerance sampling.fixed_point_tol), compiled and timed: sweeps
to converge, wall time, the largest difference to the sequential sample, and the work
each spends (context passes and head evaluations: a sweep runs every dimension's chain,
so K sweeps cost about K times the sequential sampler's head work, to cut its D
sequential stages to K). On a CPU, which is throughput-bound, this extra work can make
the fixed-point sampler slower; on a GPU the sequential sampler is latency-bound.
``--workdir W`` uses a trained model (W's recorded config and latest EMA parameters)
instead of a random initialization: sweeps depend on the model.

  python -m experiments.bench_sampling --out /tmp/bench_sampling
  python -m experiments.bench_sampling --out /tmp/b --workdir /tmp/csm_mnist \
      --naive_dims 0 --fixed_point_batches 1,8
  python -m experiments.bench_sampling --out /tmp/b --config=configs/mnist_made.py \\
      --config.model.hidden_sizes=64,64 --config.noise.num_levels=10 \\
      --config.sampling.num_steps=10 --config.sampling.num_samples=16

The model, the noise schedule (L = noise.num_levels), the sampler (T =
sampling.num_steps, step_lr, denoise), the batch (sampling.num_samples) and the seed
come from the config (default configs/mnist_made.py) and its ``--config.FIELD=value``
overrides; parameters are a random init (the cost does not depend on their values).
"""

import time

from experiments import common


def parse_args(argv=None):
  p = common.parser(__doc__.splitlines()[0], ("config",))
  p.add_argument("--out", required=True, help="output directory (results.json)")
  p.add_argument("--config", default="mnist_made", help="configs/NAME.py[:variant] or a path")
  p.add_argument("--naive_dims", type=int, default=4, help="k: naive timed on k dims")
  p.add_argument("--repeats", type=int, default=3,
                 help="timed calls of each sampler (the median is reported)")
  p.add_argument("--image_size", type=int, default=0,
                 help="images of image_size^2 pixels (smoke runs; 0: the dataset's shape)")
  p.add_argument("--workdir", default=None,
                 help="a trained run: its recorded config and EMA parameters")
  p.add_argument("--fixed_point_batches", default="1,8",
                 help="batch sizes for the fixed-point vs sequential comparison ('': skip)")
  return common.parse(p, argv, prefixes=("config",))


common.parse_early(__name__, parse_args)  # --help and flag errors before JAX loads

import jax  # noqa: E402
import numpy as np  # noqa: E402
from csm_jax import config_base, inference, models, sampling  # noqa: E402
from csm_jax import data as data_lib  # noqa: E402


def make_samplers(config, model, k):
  """{name: jitted (params, rng) -> samples} and the Langevin settings: the full cached
  sampler, and the naive and cached ones on the first k dimensions."""
  cached, info = sampling.make_sampler_from_config(config, model, chunk_dims=0)
  cached_k, _ = sampling.make_sampler_from_config(config, model, num_dims=k, chunk_dims=0)
  naive_k, _ = sampling.make_sampler_from_config(config, model, num_dims=k, chunk_dims=0,
                                                 cached=False)
  return {"cached": cached, "naive_k": naive_k, "cached_k": cached_k}, info


def compile_all(fns, params, rng):
  """({name: compiled}, {name: compile seconds})."""
  compiled, seconds = {}, {}
  for name, f in fns.items():
    t0 = time.perf_counter()
    if hasattr(f, "lower"):
      compiled[name] = f.lower(params, rng).compile()
    else:                     # a wrapper (e.g. MALA, which records acceptance): warm it up
      common.block(f(params, rng))
      compiled[name] = f
    seconds[name] = time.perf_counter() - t0
    print(f"compiled {name} in {seconds[name]:.1f}s", flush=True)
  return compiled, seconds


def agreement(model, outs, k):
  """Max |naive - cached| on the first k dimensions of the order, absolute and relative
  to the sample scale: a random-init model's Langevin chain is not contracting, so
  rounding differences (the head runs on (B, 1) vs (B, D) inputs) grow with |x|."""
  first = model.order[:k]
  diff = float(np.abs(outs["naive_k"][:, first] - outs["cached_k"][:, first]).max())
  return diff, diff / max(float(np.abs(outs["naive_k"][:, first]).max()), 1e-30)


def load_model(args, overrides):
  """(config, model, params, where the parameters come from)."""
  if args.workdir:
    cfg = common.apply(config_base.load_workdir_config(args.workdir), overrides["config"])
    inf = inference.build(cfg)
    params, step = inference.restore(inf, args.workdir)
    return cfg, inf.model, params, f"{args.workdir}, EMA parameters of step {step}"
  cfg = common.apply(config_base.load_config(args.config), overrides["config"])
  shape = data_lib.image_shape(cfg.data, cfg.data.dataset)
  if args.image_size:
    shape = (args.image_size, args.image_size, shape[-1])
  model = models.get_model(cfg.model, shape)
  return cfg, model, model.init(jax.random.PRNGKey(cfg.seed)), "random init"


def _timed(fn):
  t0 = time.perf_counter()
  out = jax.block_until_ready(fn())
  return time.perf_counter() - t0, out


def fixed_point_vs_sequential(cfg, model, params, batch, rng):
  """One batch size: both samplers compiled, timed (second call) and compared."""
  c = config_base.override(cfg.copy_and_resolve_references(),
                           [f"sampling.num_samples={batch}", "sampling.chunk_dims=0"])
  seq, info = sampling.make_sampler_from_config(c, model)
  seq_compile, _ = _timed(lambda: seq(params, rng))
  seq_s, x_seq = _timed(lambda: seq(params, rng))
  c.sampling.method = "fixed_point"
  par, fp_info = sampling.make_sampler_from_config(c, model)
  par_compile, _ = _timed(lambda: par(params, rng))
  par_s, x_par = _timed(lambda: par(params, rng))
  dim, steps = model.dim, info["L"] * info["T"] + int(info["denoise"])
  sweeps = fp_info["sweeps"]
  return {
      "batch": batch, "sweeps": sweeps, "last_change": fp_info["max_change"],
      "converged": fp_info["converged"],
      "finite_samples": bool(np.isfinite(np.asarray(x_seq)).all()),
      "max_abs_diff_to_sequential": float(np.abs(np.asarray(x_par) - np.asarray(x_seq)).max()),
      "sequential_seconds": seq_s, "fixed_point_seconds": par_s,
      "speedup": seq_s / par_s, "compile_seconds": {"sequential": seq_compile,
                                                     "fixed_point": par_compile},
      "sequential_stages": dim, "fixed_point_stages": sweeps,
      "context_passes": {"sequential": dim, "fixed_point": sweeps},
      "head_evaluations": {"sequential": batch * dim * steps,
                           "fixed_point": sweeps * batch * dim * steps},
      "tolerance": fp_info["fixed_point_tol"]}


def run(args, overrides):
  cfg, model, params, source = load_model(args, overrides)
  dim = model.dim
  rng = jax.random.PRNGKey(cfg.seed + 1)
  result = {"what": "samplers of the AR-CSM (Meng et al. 2020, Sec. 4.2): cached vs naive "
                    "Langevin, and the fixed-point (parallel) sampler vs the sequential one",
            "params": source, "dim": dim, "machine": common.machine()}
  if args.fixed_point_batches:
    result["fixed_point"] = []
    for b in (int(v) for v in args.fixed_point_batches.split(",")):
      row = fixed_point_vs_sequential(cfg, model, params, b, rng)
      result["fixed_point"].append(row)
      common.write_results(args.out, result, args)
      print(f"batch {b}: fixed point {row['sweeps']} sweeps (D={dim}), "
            f"{row['fixed_point_seconds']:.2f}s vs sequential {row['sequential_seconds']:.2f}s"
            f" ({row['speedup']:.2f}x), max diff {row['max_abs_diff_to_sequential']:.2e}",
            flush=True)
  if not args.naive_dims:
    return result
  k = min(args.naive_dims, dim)
  fns, info = make_samplers(cfg, model, k)
  compiled, compile_s = compile_all(fns, params, rng)

  outs = {name: np.asarray(c(params, rng)) for name, c in compiled.items()}  # warm-up
  agree, agree_rel = agreement(model, outs, k)
  print(f"naive vs cached on the first {k} dims: max |diff| = {agree:.2e} "
        f"({agree_rel:.1e} of max |x|)", flush=True)

  thunks = {"cached": lambda: compiled["cached"](params, rng),
            "naive_k": lambda: compiled["naive_k"](params, rng)}
  t0 = time.perf_counter()
  med, all_times = common.time_interleaved(thunks, repeats=args.repeats, inner=1)
  naive_full = med["naive_k"] * dim / k
  speedup = naive_full / med["cached"]
  num_l, num_t, batch = info["L"], info["T"], cfg.sampling.num_samples
  result.update({
      "what_naive": "cached-context vs naive 1-D annealed Langevin sampler, jit-compiled, "
                    "median seconds after compilation, timed round robin",
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
      "config": {"config_file": args.config, "overrides": overrides["config"], "dim": dim,
                 "batch": batch, "num_levels_L": num_l, "num_steps_T": num_t,
                 "sigmas": info["sigmas"], "hidden_sizes": list(cfg.model.hidden_sizes),
                 "context_size": cfg.model.context_size, "head": cfg.model.head,
                 "head_hidden": list(cfg.model.head_hidden),
                 **models.count_parameters(params, model),
                 "params": "random init (cost does not depend on the values)"},
      "evaluations": {"cached": f"{dim} context passes + {dim * num_l * num_t}"
                                f" head passes on 1 dim",
                      "naive": f"{dim * num_l * num_t} full passes "
                               f"(context + head on all {dim} dims)"},
  })
  common.write_results(args.out, result, args)
  print(f"cached {med['cached']:.2f}s, naive {med['naive_k']:.2f}s on {k} dims -> "
        f"{naive_full:.1f}s estimated for D={dim}: speedup {speedup:.1f}x", flush=True)
  return result


def main(argv=None):
  return run(*parse_args(argv))


if __name__ == "__main__":
  main()
