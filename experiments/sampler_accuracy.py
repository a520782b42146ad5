"""Sampler accuracy against cost on AR models with exactly known conditionals.

The samplers of csm_jax/sampling.py run unchanged on two models of
`csm_jax.models.known` whose noise-conditional heads are exact (context from the clean
x_<d, only x_d noised: q_sigma(x_d | x_<d) = p(. | x_<d) * N(0, sigma^2), paper Sec. 4.2):

  gaussian   x_d | x_<d ~ N(b_d + w_d . x_<d, v_d), conditional stds 0.05..1;
             errors: relative Frobenius error of the sample covariance, and the error of
             the sample mean (its norm over sqrt(trace C)), against the exact moments.
  mixture    x_d | x_<d a mixture of two Gaussians whose means move linearly with x_<d
             (modes 5-8 conditional stds apart, weights 0.2-0.8); errors against an
             exact ancestral sample of the same size: the largest two-sample KS statistic
             over the marginals, and the largest error of the fraction of x_d in the upper
             mode (above the midpoint of its two modes).

Samplers: annealed 1-D Langevin (ULA) and its Metropolis-adjusted version (MALA,
sampling.mh_correction) over a grid of steps per level T and step sizes
c = step_lr / sigma_L^2 (the step at level i is alpha_i = c sigma_i^2: c is what carries
over between noise schedules), and `grid_sample` (each 1-D conditional normalized on a
K-node grid over the exact sample's range + 10%, at sigma_L). Cost: head evaluations per
sample (`sampling.head_evaluations`; K per dimension for the grid, each with its
x-derivative) and the seconds of one compiled run of all samples. The Monte Carlo floor
is the same error of exact samples of the same size (mean over --floor_reps sets).

  python -m experiments.sampler_accuracy --out /tmp/sampler_accuracy

The noise schedule is --config.noise.* (here 3 -> 0.01, 10 levels, unless set); the
denoising step follows --config.sampling.denoise, MALA's nodes --config.sampling.mh_nodes.
"""

import os
import time

from experiments import common


def parse_args(argv=None):
  p = common.parser(__doc__.split("\n\n")[0])
  p.add_argument("--out", required=True, help="output directory (JSON + PNG)")
  p.add_argument("--models", default="gaussian,mixture",
                 help="comma-separated known-conditional AR models: gaussian, mixture")
  p.add_argument("--dim", type=int, default=8, help="dimension D of the test models")
  p.add_argument("--num_samples", type=int, default=10000, help="samples per sampler setting")
  p.add_argument("--ula_steps", default="1,3,10,30,100", help="T for ULA")
  p.add_argument("--ula_c", default="0.2,0.8,2", help="c = step_lr / sigma_L^2 for ULA")
  p.add_argument("--mala_steps", default="1,3,10,30", help="T for MALA")
  p.add_argument("--mala_c", default="0.8,2,6", help="c = step_lr / sigma_L^2 for MALA")
  p.add_argument("--grid_points", default="65,257,1025", help="K for grid_sample")
  p.add_argument("--floor_reps", type=int, default=5,
                 help="sets of exact samples whose mean error is the Monte Carlo floor")
  p.add_argument("--seed", type=int, default=0, help="random seed")
  return common.parse(p, argv)


common.parse_early(__name__, parse_args)  # --help and flag errors before JAX loads

import jax  # noqa: E402
import numpy as np  # noqa: E402
from csm_jax import config_base, likelihood, noise, plotting, sampling  # noqa: E402
from csm_jax.models import known  # noqa: E402


plt = plotting.plt


def _floats(text, kind=float):
  return [kind(v) for v in text.split(",") if v]


def make_config(overrides):
  c = config_base.default_config()
  c.noise.sigma_max, c.noise.sigma_min, c.noise.num_levels = 3.0, 0.01, 10
  return common.apply(c, overrides)


# ------------------------------------------------------------------------------------
# Errors
# ------------------------------------------------------------------------------------


def _ks(a, b):
  """Two-sample Kolmogorov-Smirnov statistic of 1-D samples a, b."""
  a, b = np.sort(a), np.sort(b)
  grid = np.concatenate([a, b])
  fa = np.searchsorted(a, grid, side="right") / len(a)
  fb = np.searchsorted(b, grid, side="right") / len(b)
  return float(np.max(np.abs(fa - fb)))


def gaussian_errors(model, x):
  mean, cov = model.joint()
  x = np.asarray(x, np.float64)
  if not np.all(np.isfinite(x)):
    return {"cov_rel_fro": float("inf"), "mean_err": float("inf"), "var_rel_max": float("inf")}
  c_hat = np.cov(x, rowvar=False)
  return {"cov_rel_fro": float(np.linalg.norm(c_hat - cov) / np.linalg.norm(cov)),
          "mean_err": float(np.linalg.norm(x.mean(0) - mean) / np.sqrt(np.trace(cov))),
          "var_rel_max": float(np.max(np.abs(np.diag(c_hat) / np.diag(cov) - 1)))}


def mixture_errors(model, x, ref):
  x = np.asarray(x, np.float64)
  if not np.all(np.isfinite(x)):
    return {"ks_max": float("inf"), "mode_frac_err": float("inf")}
  ks = max(_ks(x[:, d], ref[:, d]) for d in range(model.dim))
  frac = model.mode_split(x).mean(0) - model.mode_split(ref).mean(0)
  return {"ks_max": ks, "mode_frac_err": float(np.max(np.abs(frac)))}


def _errors(name, model, x, ref):
  return gaussian_errors(model, x) if name == "gaussian" else mixture_errors(model, x, ref)


def floor(name, model, n, reps, seed):
  """Mean (and max) error of exact sample sets of size n: the Monte Carlo floor."""
  ref = model.exact_sample(seed, n)
  errs = [_errors(name, model, model.exact_sample(seed + 1 + r, n), ref) for r in range(reps)]
  return {k: float(np.mean([e[k] for e in errs])) for k in errs[0]} | \
      {k + "_max": float(np.max([e[k] for e in errs])) for k in errs[0]}, ref


# ------------------------------------------------------------------------------------
# Runs
# ------------------------------------------------------------------------------------


def _timed(fn, *args):
  """(output, seconds of one run): compiled first, so compile time is not counted."""
  compiled = jax.jit(fn).lower(*args).compile()
  t0 = time.perf_counter()
  out = jax.block_until_ready(compiled(*args))
  return out, time.perf_counter() - t0


def run_langevin(model, sigmas, n, T, c, mh_nodes, denoise, rng):
  step_lr = c * float(sigmas[-1]) ** 2
  f = sampling.make_sampler(model, sigmas, n, n_steps=T, step_lr=step_lr, denoise=denoise,
                            mh_nodes=mh_nodes, return_acceptance=True)
  (x, acc), secs = _timed(lambda r: f(None, r), rng)
  row = {"sampler": "mala" if mh_nodes else "ula", "T": T, "c": c, "step_lr": step_lr,
         "head_evals": sampling.head_evaluations(model.dim, len(sigmas), T, mh_nodes, denoise),
         "seconds": secs}
  if mh_nodes:
    row.update(acceptance_mean=float(np.mean(acc)), acceptance_min=float(np.min(acc)),
               mh_nodes=mh_nodes)
  return row, x


def run_grid(model, ref, sigma, n, k, rng):
  lo, hi = float(ref.min()), float(ref.max())
  pad = 0.1 * (hi - lo)
  grid = likelihood.Grid(lo - pad, hi + pad, k)
  x, secs = _timed(lambda r: sampling.grid_sample(model, None, r, n, grid, sigma), rng)
  return {"sampler": "grid", "K": k, "head_evals": model.dim * k, "seconds": secs,
          "grid": [grid.lo, grid.hi], "h": grid.h}, x


def run_model(name, args, config, results, write, log):
  model = (known.random_gaussian_ar if name == "gaussian" else known.random_mixture_ar)(
      args.dim, args.seed)
  sigmas = tuple(float(v) for v in noise.sigmas_from_config(config.noise))
  n, denoise = args.num_samples, bool(config.sampling.denoise)
  fl, ref = floor(name, model, n, args.floor_reps, 1000 * args.seed + 17)
  res = results["models"][name] = {"floor": fl, "rows": []}
  log(f"{name}: Monte Carlo floor {fl}")
  rng = jax.random.PRNGKey(args.seed)
  jobs = ([("ula", T, c) for c in _floats(args.ula_c) for T in _floats(args.ula_steps, int)]
          + [("mala", T, c) for c in _floats(args.mala_c) for T in _floats(args.mala_steps, int)]
          + [("grid", k, None) for k in _floats(args.grid_points, int)])
  for i, (kind, a, c) in enumerate(jobs):
    key = jax.random.fold_in(rng, i)
    if kind == "grid":
      row, x = run_grid(model, ref, sigmas[-1], n, a, key)
    else:
      mh = config.sampling.mh_nodes if kind == "mala" else 0
      row, x = run_langevin(model, sigmas, n, a, c, mh, denoise, key)
    row.update(_errors(name, model, x, ref))
    main = "cov_rel_fro" if name == "gaussian" else "ks_max"
    row["over_floor"] = row[main] / fl[main]
    res["rows"].append(row)
    log(f"{name} {kind:4s} " + ("K=%-5d" % a if kind == "grid" else f"T={a:<4d} c={c:<4g}")
        + f" evals/sample {row['head_evals']:>8d}  {row['seconds']:7.2f}s  "
        + "  ".join(f"{k} {row[k]:.4g}" for k in ("cov_rel_fro", "mean_err", "ks_max",
                                                    "mode_frac_err", "acceptance_mean")
                    if k in row))
    write()


# ------------------------------------------------------------------------------------
# Output
# ------------------------------------------------------------------------------------


def plot(path, results):
  names = list(results["models"])
  metrics = {"gaussian": ("cov_rel_fro", "relative Frobenius error of the covariance"),
             "mixture": ("ks_max", "largest marginal KS statistic")}
  fig, axes = plt.subplots(1, len(names), figsize=(6 * len(names), 4.5), squeeze=False)
  for ax, name in zip(axes[0], names):
    res = results["models"][name]
    key, label = metrics[name]
    series = {}
    for r in res["rows"]:
      lab = ("grid sampler" if r["sampler"] == "grid"
             else f"{r['sampler'].upper()} c={r['c']:g}")
      series.setdefault(lab, []).append((r["head_evals"], r[key]))
    for i, (lab, pts) in enumerate(series.items()):
      pts = sorted(pts)
      ax.loglog([p[0] for p in pts], [min(p[1], 1e3) for p in pts],
                "s-" if lab.startswith("grid") else ("o-" if "ULA" in lab else "^--"),
                label=lab, ms=4, color=f"C{i}")
    ax.axhline(res["floor"][key], color="k", lw=1, ls=":", label="Monte Carlo floor")
    ax.set_xlabel("head evaluations per sample")
    ax.set_ylabel(label)
    ax.set_title(f"{name} AR model, D={results['args']['dim']}, N={results['args']['num_samples']}")
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)


def run(args, overrides):
  os.makedirs(args.out, exist_ok=True)
  config = make_config(overrides["config"])
  start = time.perf_counter()

  def log(msg):
    print(f"{time.perf_counter() - start:7.1f}s {msg}", flush=True)

  results = {"what": __doc__.split("\n\n")[0], "args": vars(args), "overrides": overrides,
             "sigmas": [float(v) for v in noise.sigmas_from_config(config.noise)],
             "denoise": bool(config.sampling.denoise), "machine": common.machine(),
             "models": {}}

  def write():
    results["seconds"] = time.perf_counter() - start
    common.write_results(args.out, results, args)
    plot(os.path.join(args.out, "sampler_accuracy.png"), results)

  for name in args.models.split(","):
    run_model(name, args, config, results, write, log)
  log(f"wrote {args.out}/results.json and sampler_accuracy.png")
  return results


def main(argv=None):
  return run(*parse_args(argv))


if __name__ == "__main__":
  main()
