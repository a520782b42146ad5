"""Time and memory of one training step versus data dimension (paper Fig. 1a, Sec. 5.1).

For each D, a 3-hidden-layer network per method with comparable parameter counts is
trained on N(0, I_D) samples, and we record the median wall time of a jit-compiled
train step (loss, gradient and Adam update) and XLA's memory and flop counts for it:

  SM   exact score matching on an MLP score net, trace by D one-hot jvps
  SSM  sliced score matching on the same MLP, 1 Gaussian projection (variance reduced)
  DSM  denoising score matching on the same MLP (sigma = 0.1)
  CSM  composite score matching on a MADE AR-CSM, fast diagonal (one jvp through the head)

SM needs D forward-mode passes per step, so its cost grows by a factor ~D faster than
the others'; CSM, SSM and DSM cost a constant number of passes. Points that would
exceed the time or memory budget are written as {"skipped": reason}.

  python -m experiments.gaussian_scaling --out /tmp/scaling
"""

import functools
import os
import sys
import time

from experiments import common


METHODS = ("sm", "ssm", "dsm", "csm")


DEFAULT_DIMS = "2,10,50,100,200,500,1000,2000"


def parse_args(argv=None):
  p = common.parser(__doc__.split("\n\n")[0], ())
  p.add_argument("--out", required=True, help="output directory")
  p.add_argument("--dims", default=DEFAULT_DIMS, help="comma-separated data dimensions")
  p.add_argument("--methods", default=",".join(METHODS),
                 help="comma-separated objectives to time (sm, ssm, dsm, csm)")
  p.add_argument("--steps", type=int, default=20, help="timed steps per point (at most)")
  p.add_argument("--min_steps", type=int, default=3, help="timed steps per point (at least)")
  p.add_argument("--batch", type=int, default=32, help="batch size of the timed steps")
  p.add_argument("--hidden", type=int, default=128,
                 help="MADE hidden width; the MLP's width is matched to its parameter count")
  p.add_argument("--context_size", type=int, default=4,
                 help="MADE context features per dimension")
  p.add_argument("--head_hidden", default="32,32",
                 help="score-head hidden widths, comma-separated")
  p.add_argument("--activation", default="softplus", help="MLP score-net activation")
  p.add_argument("--dsm_sigma", type=float, default=0.1, help="DSM noise level")
  p.add_argument("--sm_chunk_size", type=int, default=None,
                 help="one-hot jvps per chunk in SM (bounds memory); default all D at once")
  p.add_argument("--point_budget", type=float, default=30.0,
                 help="seconds of timed steps per point; fewer steps when a step is slow")
  p.add_argument("--max_step_seconds", type=float, default=15.0,
                 help="skip a point whose predicted step time exceeds this")
  p.add_argument("--max_temp_gb", type=float, default=8.0,
                 help="skip a point whose compiled temporary memory exceeds this")
  p.add_argument("--sm_max_dim", type=int, default=None, help="skip SM above this D")
  p.add_argument("--seed", type=int, default=0, help="random seed")
  return p.parse_args(argv)


common.parse_early(__name__, parse_args)  # --help and flag errors before JAX loads

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from csm_jax import losses  # noqa: E402
from csm_jax import models  # noqa: E402
from csm_jax import train  # noqa: E402
from experiments import matched_sizes  # noqa: E402


def _mem_stats(compiled):
  """XLA's memory analysis of a compiled step (None fields where the backend gives none)."""
  try:
    m = compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-except
    m = None
  keys = {"temp_bytes": "temp_size_in_bytes", "argument_bytes": "argument_size_in_bytes",
          "output_bytes": "output_size_in_bytes",
          "generated_code_bytes": "generated_code_size_in_bytes"}
  return {k: (int(getattr(m, a)) if m is not None and getattr(m, a, None) is not None else None)
          for k, a in keys.items()}


_flops = common.xla_flops


def make_loss(method, dim, args):
  """(model, loss_fn(params, x, rng, train)) for one method at dimension `dim`."""
  ar, mlp = matched_sizes.matched_pair(
      dim, args.hidden, args.context_size,
      tuple(int(h) for h in args.head_hidden.split(",") if h), args.activation)
  if method == "sm":
    return mlp, functools.partial(losses.sm_loss, mlp, chunk_size=args.sm_chunk_size)
  if method == "ssm":
    return mlp, functools.partial(losses.ssm_loss, mlp, num_projections=1)
  if method == "dsm":
    return mlp, functools.partial(losses.dsm_loss, mlp, sigma=args.dsm_sigma)
  if method == "csm":
    return ar, functools.partial(losses.csm_loss, ar, None)
  raise ValueError(f"unknown method {method!r}")


def _init(model, rng, cache):
  """Parameters of `model`, shared by the methods that train the same network."""
  key = (type(model).__name__, model.dim)
  if key not in cache:
    cache.clear()  # hold one network's parameters at a time (memory at large D)
    cache[key] = model.init(rng)
  return cache[key]


def _skip_reason(rec, args, flop_rate):
  """Why a compiled point is not run (memory or predicted time over budget), or None."""
  if rec["temp_bytes"] is not None and rec["temp_bytes"] > args.max_temp_gb * 2 ** 30:
    return (f"compiled temp memory {rec['temp_bytes'] / 2 ** 30:.1f} GiB > "
            f"--max_temp_gb={args.max_temp_gb}")
  if flop_rate and rec["flops"]:
    rec["predicted_step_seconds"] = predicted = rec["flops"] / flop_rate
    if predicted > args.max_step_seconds:
      return (f"predicted {predicted:.1f} s/step (XLA flops / flop rate of the previous "
              f"point) > --max_step_seconds={args.max_step_seconds}")
  return None


def _time_steps(compiled, params, opt_state, x, rng, args):
  """(median seconds per step, steps timed, final loss) after one warm-up step."""
  state = jax.block_until_ready(compiled(params, opt_state, x, rng))
  times = []
  budget_end = time.perf_counter() + args.point_budget
  while len(times) < args.steps and (len(times) < args.min_steps
                                     or time.perf_counter() < budget_end):
    t = time.perf_counter()
    state = jax.block_until_ready(compiled(state[0], state[1], x, rng))
    times.append(time.perf_counter() - t)
  return float(np.median(times)), len(times), float(state[2])


def measure_point(method, dim, args, flop_rate=None, cache=None):
  """Compiles and times one (method, D) point; returns its record (or a skip reason)."""
  model, loss_fn = make_loss(method, dim, args)
  rng = jax.random.key(args.seed)
  params = _init(model, rng, {} if cache is None else cache)
  rec = {"params": models.count_parameters(params, model)["parameters"]}
  if method == "sm" and args.sm_max_dim is not None and dim > args.sm_max_dim:
    return dict(rec, skipped=f"D={dim} > --sm_max_dim={args.sm_max_dim}")
  optimizer = optax.adam(1e-3)
  opt_state = optimizer.init(params)
  x = jax.random.normal(jax.random.fold_in(rng, 1), (args.batch, dim), jnp.float32)
  step_rng = jax.random.fold_in(rng, 2)
  t0 = time.perf_counter()
  try:  # no donation: the parameters are shared with the next method on this network
    compiled = jax.jit(train.make_update_step(loss_fn, optimizer)).lower(
        params, opt_state, x, step_rng).compile()
  except Exception as e:  # pylint: disable=broad-except  (e.g. out of memory while compiling)
    return dict(rec, skipped=f"compile failed: {type(e).__name__}: {str(e)[:200]}")
  rec.update(compile_seconds=time.perf_counter() - t0, flops=_flops(compiled),
             **_mem_stats(compiled))
  reason = _skip_reason(rec, args, flop_rate)
  if reason:
    return dict(rec, skipped=reason)
  try:
    seconds, steps, loss = _time_steps(compiled, params, opt_state, x, step_rng, args)
  except Exception as e:  # pylint: disable=broad-except  (e.g. RESOURCE_EXHAUSTED at run time)
    return dict(rec, skipped=f"step failed: {type(e).__name__}: {str(e)[:200]}")
  return dict(rec, step_seconds=seconds, timed_steps=steps, final_loss=loss)


def plot(results, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  panels = [("step_seconds", "median time per train step (s)"),
            ("temp_bytes", "XLA temp memory of the step (bytes)"),
            ("flops", "XLA flops per step")]
  fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4))
  for ax, (key, label) in zip(axes, panels):
    for method, points in results.items():
      ds = sorted(int(d) for d in points)
      ok = [d for d in ds if points[str(d)].get(key) is not None
            and "skipped" not in points[str(d)]]
      skipped = [d for d in ds if "skipped" in points[str(d)]]
      name = method.upper() + (f" (skipped D>={min(skipped)})" if skipped else "")
      ax.loglog(ok, [points[str(d)][key] for d in ok], "o-", label=name)
    ax.set_xlabel("data dimension D")
    ax.set_ylabel(label)
    ax.grid(True, which="both", alpha=0.3)
  axes[0].legend()
  fig.suptitle("Score matching objectives: cost vs dimension (cf. Meng et al. 2020, Fig. 1a)")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def ratios(results, d_lo, d_hi):
  """step_seconds(D=d_hi) / step_seconds(D=d_lo) per method (None if either is missing)."""
  out = {}
  for method, points in results.items():
    lo, hi = points.get(str(d_lo), {}), points.get(str(d_hi), {})
    if "step_seconds" in lo and "step_seconds" in hi:
      out[method] = hi["step_seconds"] / lo["step_seconds"]
    else:
      out[method] = None
  return out


def _describe(rec):
  if "skipped" in rec:
    return f"skipped: {rec['skipped']}"
  temp = rec["temp_bytes"] / 2 ** 20 if rec["temp_bytes"] is not None else float("nan")
  return (f"{rec['step_seconds'] * 1e3:9.2f} ms/step ({rec['timed_steps']} steps)  "
          f"temp {temp:8.2f} MiB  params {rec['params']}")


def _parse_lists(args):
  dims = [int(d) for d in args.dims.split(",") if d]
  methods = [m for m in args.methods.split(",") if m]
  for m in methods:
    if m not in METHODS:
      raise ValueError(f"unknown method {m!r}; known: {METHODS}")
  return dims, methods


def measure_all(dims, methods, args, write):
  """{method: {str(D): record}}; write(results) after each point. SM is not run again
  once it was over budget at a smaller D (its cost only grows with D)."""
  results = {m: {} for m in methods}
  flop_rate = {m: None for m in methods}
  sm_skipped_from, cache = None, {}
  total, done, t_start = len(dims) * len(methods), 0, time.time()
  for dim in dims:
    for method in methods:
      if method == "sm" and sm_skipped_from is not None:
        model, _ = make_loss(method, dim, args)
        rec = {"params": matched_sizes.mlp_param_count(dim, model.net.hidden_sizes),
               "skipped": f"SM already over budget at D={sm_skipped_from} (cost grows with D)"}
      else:
        rec = measure_point(method, dim, args, flop_rate[method], cache)
      if "step_seconds" in rec and rec.get("flops"):
        flop_rate[method] = rec["flops"] / rec["step_seconds"]
      if method == "sm" and "skipped" in rec and sm_skipped_from is None:
        sm_skipped_from = dim
      results[method][str(dim)] = rec
      done += 1
      elapsed = time.time() - t_start
      print(f"[{done:2d}/{total}] {method:>3s} D={dim:5d}  {_describe(rec)}  (elapsed "
            f"{elapsed:5.0f}s, ETA {elapsed / done * (total - done):5.0f}s)", flush=True)
      write(results)
  return results


def run(args):
  dims, methods = _parse_lists(args)
  os.makedirs(args.out, exist_ok=True)
  t_start = time.time()
  print(f"devices: {jax.devices()}  batch={args.batch} hidden={args.hidden}", flush=True)
  results = measure_all(dims, methods, args, lambda r: common.write_results(
      args.out, {"results": r}, args))
  plot(results, os.path.join(args.out, "scaling.png"))
  meta = {"args": vars(args), "machine": common.machine(), "wall_seconds": time.time() - t_start}
  if len(dims) >= 2:
    lo = 10 if 10 in dims else dims[0]
    hi = 1000 if 1000 in dims else dims[-1]
    r = meta[f"step_ratio_D{hi}_over_D{lo}"] = ratios(results, lo, hi)
    print(f"step time ratio D={hi} / D={lo}: " + ", ".join(
        f"{m}={v:.1f}x" if v else f"{m}=n/a" for m, v in r.items()))
  common.write_results(args.out, dict(meta, results=results))
  print(f"wrote {args.out}/results.json, scaling.png "
        f"in {time.time() - t_start:.0f}s", flush=True)
  return results


def main(argv=None):
  return run(parse_args(argv))


if __name__ == "__main__":
  main(sys.argv[1:])
