"""MNIST likelihoods: one Gaussian MADE trained by MLE, CSM, DSM and SSM; AR-CSM by quadrature.

Meng et al. (NeurIPS 2020), Sec. 5.2 / Figure 3a: a MADE with Gaussian conditionals
(a normalized AR model, hence an AR-CSM too) trained on dequantized, logit-transformed
MNIST by maximum likelihood, composite score matching (Eq. 5, no noise), denoising
score matching at three noise levels and sliced score matching; exact test NLL
(bits/dim in pixel space) against training step and against training seconds.
Then what the paper does not report: the unnormalized AR-CSM MADE (score head, CSM with
per-dimension noise annealing) evaluated by quadrature (`csm_jax/likelihood.py`) at the
smallest noise level sigma_min and at the level sigma* of the schedule with the best
NLL on validation images held out of training, next to the MLE MADEs with Gaussian
and logistic-mixture conditionals on the same test images.

DSM and SSM match the score of the model's joint density, grad_x log q(x) (the model is
normalized), by default (`--sm_target joint`); `--sm_target conditional` applies them
to the vector of conditional scores instead, as `losses.py` does for AR models.

  python -m experiments.mnist_nll --out /tmp/mnist_nll        # CPU defaults, < 30 min
  # full length (GPU):
  python -m experiments.mnist_nll --out DIR --config.model.hidden_sizes=1024,1024 \\
      --config.model.context_size=16 --config.model.head_hidden=64,64 \\
      --config.training.batch_size=100 --config.training.num_steps=20000 \\
      --config.training.eval_every=1000 --num_eval 10000 --num_quadrature 10000 \\
      --num_val 1000 --num_points 2049

The runs are the variants of configs/mnist_nll.py (gaussian_{mle,csm,dsm,ssm}, arcsm_csm,
mol_mle). ``--config.FIELD=value`` sets a field of every run, ``--gaussian.FIELD=value``,
``--arcsm.FIELD=value`` or ``--mol.FIELD=value`` of those runs only (after --config), e.g.
``--arcsm.training.num_steps=3000`` or ``--config.data.data_dir=DIR`` (tfds data; default
$TFDS_DATA_DIR). loss.dsm_sigma is set per --dsm_sigmas entry. Derived settings:
optim.warmup_steps = min(100, num_steps // 10 + 1) and training.log_every =
num_steps // 6 follow each run's training.num_steps unless they are set themselves.
The data and the fixed dequantization of the test images (seed + 1) follow --config.*;
the validation images (seed + 2) and the samples (seed + 3) the AR-CSM run's seed.
Writes DIR/results.json and DIR/mnist_nll_curves.png after each run, then
DIR/mnist_nll_arcsm.png and DIR/mnist_samples.png.
"""

import dataclasses
import os
import time

from experiments import common


FAMILIES = ("gaussian", "arcsm", "mol")


def parse_args(argv=None):
  p = common.parser(__doc__.splitlines()[0], ("config",) + FAMILIES)
  p.add_argument("--out", required=True, help="output directory")
  p.add_argument("--methods", default="mle,csm,dsm,ssm", help="Gaussian MADE objectives")
  p.add_argument("--dsm_sigmas", default="0.01,0.05,0.1",
                 help="comma-separated DSM noise levels (one run each)")
  p.add_argument("--sm_target", choices=["joint", "conditional"], default="joint",
                 help="DSM/SSM on the joint score (joint) or on each conditional "
                      "(conditional); see the module docstring")
  p.add_argument("--arcsm_comparison", type=int, default=1,
                 help="1: AR-CSM + MoL quadrature comparison")
  p.add_argument("--num_eval", type=int, default=500, help="test images per curve point")
  p.add_argument("--num_final", type=int, default=10000, help="test images, final exact NLL")
  p.add_argument("--num_quadrature", type=int, default=100, help="test images, quadrature")
  p.add_argument("--holdout", type=int, default=1000, help="train images held out (validation)")
  p.add_argument("--num_val", type=int, default=20, help="validation images to pick sigma*")
  p.add_argument("--num_points", type=int, default=1025, help="quadrature nodes")
  p.add_argument("--grid", choices=["support", "data"], default="support",
                 help="quadrature range: the exact support [logit(lambda), logit(1-lambda)] "
                      "of the logit-transformed data, or the training data range + 10%%")
  p.add_argument("--quad_batch", type=int, default=10, help="test images per quadrature call")
  p.add_argument("--num_samples", type=int, default=16, help="0: no samples figure")
  p.add_argument("--num_train", type=int, default=0, help="0: all but the held-out images")
  p.add_argument("--num_steps", type=int, default=0,
                 help="training steps of every run (0: the config's 1500); with "
                      "--methods mle,csm --arcsm_comparison 0 the CSM-MLE gap against "
                      "training length (table gap_vs_steps)")
  p.add_argument("--eval_every", type=int, default=0,
                 help="steps between test-NLL curve points (0: the config's 150)")
  args, overrides = common.parse(p, argv, prefixes=("config",) + FAMILIES)
  extra = ([f"training.num_steps={args.num_steps}"] if args.num_steps else []) + (
      [f"training.eval_every={args.eval_every}"] if args.eval_every else [])
  overrides["config"] = extra + list(overrides["config"])  # explicit --config.* wins
  return args, overrides


common.parse_early(__name__, parse_args)  # --help and flag errors before JAX loads

import jax  # noqa: E402
import numpy as np  # noqa: E402
from csm_jax import config_base, likelihood, losses, noise, plotting, sampling, train  # noqa: E402
from csm_jax import data as data_lib  # noqa: E402


plt = plotting.plt


class JointScore:
  """grad_x log q(x) of a normalized AR model, exposed as `full_score` for DSM/SSM.

  Everything else (init, dim, context, ...) is the wrapped `ARModel`'s.
  """

  def __init__(self, model):
    self.model = model

  def __getattr__(self, name):
    return getattr(self.model, name)

  def full_score(self, params, x, sigma=None, train=False, rng=None):
    del sigma
    m = self.model
    f = lambda y: m.log_cond(params, m.context(params, y, train, rng), y).sum()
    return jax.grad(f)(x)


# ------------------------------------------------------------------------------------
# Configs and data
# ------------------------------------------------------------------------------------


def load_run_config(variant, overrides, extra=()):
  """configs/mnist_nll.py:variant with --config.*, then its family's overrides."""
  own = overrides["config"] + overrides[variant.split("_")[0]] + list(extra)
  config = common.apply(config_base.load_config(f"mnist_nll:{variant}"), own)
  return common.follow_num_steps(config, own, 6)


def run_configs(args, overrides):
  """name -> config for every training run of the experiment."""
  runs = {}
  for method in [m for m in args.methods.split(",") if m]:
    if method == "dsm":
      for s in [float(s) for s in args.dsm_sigmas.split(",")]:
        runs[f"gaussian_dsm_{s:g}"] = load_run_config("gaussian_dsm", overrides,
                                                      [f"loss.dsm_sigma={s!r}"])
    else:
      runs[f"gaussian_{method}"] = load_run_config(f"gaussian_{method}", overrides)
  if args.arcsm_comparison:
    for name in ("arcsm_csm", "mol_mle", "gaussian_mle"):
      if name not in runs:
        runs[name] = load_run_config(name, overrides)
  return runs


def split_train(args, arrays):
  """(training images, held-out validation images) of the MNIST training split."""
  n = len(arrays.train) - args.holdout
  if n <= 0:
    raise ValueError(f"--holdout {args.holdout} leaves no training images")
  return arrays.train[:min(n, args.num_train or n)], arrays.train[n:]


# ------------------------------------------------------------------------------------
# Training runs (Fig. 3a)
# ------------------------------------------------------------------------------------


def train_run(args, name, config, arrays, y_eval, pre, log):
  """Trains one run (held-out images excluded); a normalized model's exact test NLL on
  y_eval is its learning curve. Returns (model, EMA parameters, its JSON entry)."""
  s = train.setup(config, arrays=arrays._replace(train=split_train(args, arrays)[0]))
  if config.loss.name in ("dsm", "ssm") and args.sm_target == "joint":
    s = dataclasses.replace(s, loss_fn=losses.get_loss_fn(config, JointScore(s.model)))
  fn = likelihood.make_exact_log_likelihood_fn(s.model) if s.model.normalized else None

  def eval_fn(params):
    r = likelihood.evaluate_nll(s.model, params, y_eval, method="exact", preprocessor=pre,
                                batch_size=500, fn=fn)
    return {"nll_nats": r["nll_nats"], "bpd": r["bpd"]}

  state, info = train.train_loop(s, eval_fn=None if fn is None else eval_fn, log=log,
                                 label=name)
  counts = info.pop("parameters")
  entry = dict(info, **counts, head=config.model.head, loss=config.loss.name,
               sm_target=args.sm_target if config.loss.name in ("dsm", "ssm") else None)
  return s.model, state.ema_params, entry


def plot_curves(path, results):
  """Exact test NLL of the Gaussian MADEs against training step and seconds."""
  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  finals = []
  for name, r in results.items():
    h = r.get("history") or []
    if not h or not name.startswith("gaussian_"):
      continue
    bpd = [row["bpd"] for row in h]
    label = name.replace("gaussian_", "").upper().replace("DSM_", "DSM σ=")
    axes[0].plot([row["step"] for row in h], bpd, marker=".", label=label)
    axes[1].plot([row["seconds"] for row in h], bpd, marker=".", label=label)
    finals += [b for b in bpd[1:] if np.isfinite(b)]
  if finals:
    lo = min(finals)
    hi = min(max(finals), lo + 6.0)
    for ax in axes:
      ax.set_ylim(lo - 0.1 * (hi - lo + 0.1), hi + 0.1 * (hi - lo + 0.1))
  axes[0].set_xlabel("training step")
  axes[1].set_xlabel("training seconds (evaluation excluded)")
  for ax in axes:
    ax.set_ylabel("test NLL (bits/dim, pixel space, exact)")
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize=8)
  fig.suptitle("Gaussian MADE on MNIST trained by different objectives (cf. Meng et al. Fig. 3a)")
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)


def table_fig3a(runs):
  return {n: {"bpd": r["final_test"]["bpd"], "steps": r["steps"],
              "train_seconds": r["train_seconds"]}
          for n, r in runs.items() if n.startswith("gaussian_") and "final_test" in r}


# ------------------------------------------------------------------------------------
# AR-CSM by quadrature vs the MLE MADEs
# ------------------------------------------------------------------------------------


def quadrature_grid(args, pre, arrays):
  """The quadrature range: the exact support of the logit-transformed data, y =
  logit(lambda + (1 - 2 lambda) x / 256) for x in [0, 256], or the training data range
  + 10%; never the test set. The model's mass beyond it is included (outer nodes, tails)."""
  if args.grid == "support":
    lo, hi = pre.from_pixels(np.array([0.0, pre.pixel_range]), np.float64)
    return likelihood.Grid(float(lo), float(hi), args.num_points)
  return likelihood.grid_from_data(pre(arrays.train[:2000], data_lib.dequant_rng(0, 0)),
                                   args.num_points, margin=0.1)


def validation_sigma(args, config, model, params, grid, fn, pre, arrays, log):
  """(sigma*, per-level validation bits/dim) on held-out training images, or None."""
  val = split_train(args, arrays)[1][:args.num_val]
  if not len(val):
    return None, None
  y_val = pre(val, data_lib.dequant_rng(config.seed + 2, 0))
  log(f"validation NLL per noise level on {len(y_val)} held-out training images")
  per = likelihood.nll_per_sigma(model, params, y_val, noise.sigmas_from_config(
      config.noise)[::-1], grid, fn=fn, preprocessor=pre, batch_size=args.quad_batch)
  best = per.pop("best_sigma")
  per["bpd"] = [r["bpd"] for r in per.pop("results")]
  log("  " + ", ".join(f"sigma {s:.3g}: {b:.3f}" for s, b in zip(per["sigmas"], per["bpd"]))
      + f" bits/dim -> sigma* = {best:.3g}")
  return best, per


def quadrature_check(args, model, params, grid, y, exact, pre):
  """The quadrature on a model whose conditionals are known exactly.

  The trained Gaussian MADE's score integrated on a grid twice as wide (same step) and
  on `grid` itself, against its exact NLL: both normalize over R (outer nodes and tails
  carry the mass past the grid), so both differences are quadrature error.
  """
  half = 0.5 * (grid.hi - grid.lo)
  wide = likelihood.Grid(grid.lo - half, grid.hi + half, 2 * grid.num_points - 1)
  check = {}
  for key, g in (("wide_grid", wide), ("same_grid", grid)):
    r = likelihood.evaluate_nll(model, params, y, grid=g, preprocessor=pre,
                                batch_size=args.quad_batch)
    check[key] = {"grid": g.to_dict(), "quadrature_bpd": r["bpd"], "exact_bpd": exact["bpd"],
                  "error_nats_per_dim": (r["nll_nats"] - exact["nll_nats"]) / model.dim,
                  "estimated_error_nats_per_dim": r["quad_error_nats_per_dim"],
                  "edge_density_mean": r["edge_density_mean"]}
  return check


def compare(args, states, configs, grid, y_quad, pre, arrays, log):
  """Test NLL of the AR-CSM (quadrature, sigma_min and sigma*) and the MLE MADEs (exact)."""
  model, params = states["arcsm_csm"]
  config = configs["arcsm_csm"]
  sigma = likelihood.noise_level(config)
  log(f"quadrature of the AR-CSM on {len(y_quad)} test images, {grid.num_points} nodes "
      f"on [{grid.lo:.2f}, {grid.hi:.2f}], sigma {sigma:g}")
  comp = {"num_examples": int(len(y_quad)), "models": {}}
  fn = likelihood.make_log_likelihood_fn(model, grid, sigma)
  best, per = validation_sigma(args, config, model, params, grid, fn, pre, arrays, log)
  if per is not None:
    comp["validation_per_sigma"] = per
  quad = lambda s: likelihood.evaluate_nll(model, params, y_quad, grid=grid, sigma=s,
                                           preprocessor=pre, batch_size=args.quad_batch,
                                           log=log, fn=fn)
  comp["models"]["arcsm_csm"] = quad(sigma)
  if best is not None:
    comp["models"]["arcsm_csm_best_sigma"] = quad(best)
  for name in ("gaussian_mle", "mol_mle"):
    m, p = states[name]
    comp["models"][name] = likelihood.evaluate_nll(m, p, y_quad, method="exact",
                                                   preprocessor=pre, batch_size=500)
  m, p = states["gaussian_mle"]
  comp["quadrature_check_gaussian_mle"] = quadrature_check(
      args, m, p, grid, y_quad, comp["models"]["gaussian_mle"], pre)
  log(f"quadrature check on the trained Gaussian MADE: {comp['quadrature_check_gaussian_mle']}")
  return comp


def table_arcsm(runs, comp):
  run_of = lambda n: runs["arcsm_csm" if n.startswith("arcsm") else n]
  return {n: {"bpd": r["bpd"], "bpd_stderr": r["bpd_stderr"],
              "quad_error_bpd": r.get("quad_error_bpd"), "sigma": r.get("sigma"),
              "steps": run_of(n)["steps"], "train_seconds": run_of(n)["train_seconds"],
              "effective_parameters": run_of(n)["effective_parameters"]}
          for n, r in comp["models"].items()}


def plot_comparison(path, comp):
  names = [n for n in ("arcsm_csm", "gaussian_mle", "mol_mle") if n in comp["models"]]
  labels = {"arcsm_csm": "AR-CSM, σ_min\n(quadrature)", "gaussian_mle": "Gaussian MADE\n(MLE)",
            "mol_mle": "MoL MADE\n(MLE)", "arcsm_csm_best_sigma": "AR-CSM, σ*\n(quadrature)"}
  names = names[:1] + [n for n in ("arcsm_csm_best_sigma",) if n in comp["models"]] + names[1:]
  vals = [comp["models"][n]["bpd"] for n in names]
  errs = [comp["models"][n]["bpd_stderr"] + comp["models"][n].get("quad_error_bpd", 0.0)
          for n in names]
  fig, ax = plt.subplots(figsize=(5.5, 4))
  ax.bar(range(len(names)), vals, yerr=errs, color=["C3", "C1", "C0", "C2"][:len(names)],
         capsize=4)
  ax.set_xticks(range(len(names)))
  ax.set_xticklabels([labels[n] for n in names])
  for i, v in enumerate(vals):
    ax.text(i, v, f"{v:.3f}", ha="center", va="bottom")
  if max(vals) > 5 * min(vals):
    ax.set_yscale("log")
  ax.set_ylabel("test NLL (bits/dim, pixel space)")
  ax.set_title(f"{comp['num_examples']} MNIST test images")
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)


def plot_samples(path, args, states, configs, grid, pre, log):
  """Rows of samples: the AR-CSM by annealed Langevin (Sec. 4.2), the MLE MADEs exactly
  on the quadrature grid."""
  log(f"sampling {args.num_samples} images: AR-CSM (Langevin), MLE MADEs (grid)")
  rng = jax.random.PRNGKey(configs["arcsm_csm"].seed + 3)
  model, params = states["arcsm_csm"]
  sampler, _ = sampling.make_sampler_from_config(configs["arcsm_csm"], model, args.num_samples,
                                                 log=log)
  rows = [("AR-CSM, annealed Langevin", sampler(params, rng))]
  for name, title in (("gaussian_mle", "Gaussian MADE, exact (grid)"),
                      ("mol_mle", "MoL MADE, exact (grid)")):
    m, p = states[name]
    rows.append((title, jax.jit(lambda p, r, m=m: sampling.grid_sample(
        m, p, r, args.num_samples, grid))(p, rng)))
  fig, axes = plt.subplots(len(rows), 1, figsize=(max(4.0, args.num_samples * 0.6),
                                                  0.9 * len(rows)))
  for ax, (title, x) in zip(np.atleast_1d(axes), rows):
    img = plotting.image_grid(pre.to_display(np.asarray(x)), ncols=args.num_samples)
    ax.imshow(img[..., 0], cmap="gray", vmin=0, vmax=1)
    ax.set_title(title, fontsize=9)
    ax.axis("off")
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)


# ------------------------------------------------------------------------------------
# The experiment
# ------------------------------------------------------------------------------------


def gap_vs_steps(runs, a="gaussian_csm", b="gaussian_mle"):
  """[{step, a, b, gap}]: test bits/dim of runs a and b at the curve points they share
  (the same test images), and a - b; the final exact NLL on --num_final images last."""
  if a not in runs or b not in runs:
    return []
  hb = {h["step"]: h["bpd"] for h in runs[b]["history"]}
  rows = [{"step": h["step"], a: h["bpd"], b: hb[h["step"]], "gap": h["bpd"] - hb[h["step"]]}
          for h in runs[a]["history"] if h["step"] in hb and h["step"] > 0]
  if "final_test" in runs[a] and "final_test" in runs[b]:
    fa, fb = runs[a]["final_test"]["bpd"], runs[b]["final_test"]["bpd"]
    rows.append({"step": "final", a: fa, b: fb, "gap": fa - fb})
  return rows


def run(args, overrides):
  os.makedirs(args.out, exist_ok=True)
  start = time.perf_counter()

  def log(msg):
    print(f"{time.perf_counter() - start:7.1f}s {msg}", flush=True)

  configs = run_configs(args, overrides)
  shared = common.apply(config_base.load_config("mnist_nll"), overrides["config"])
  arrays = data_lib.load_arrays(shared.data)
  pre = data_lib.get_preprocessor(shared.data, arrays)
  y_test = pre(arrays.test, data_lib.dequant_rng(shared.seed + 1, 0))   # fixed dequantization
  y_eval, y_final, y_quad = (y_test[:n] for n in (args.num_eval, args.num_final,
                                                  args.num_quadrature))
  results = {"what": "MNIST test NLL of MADE models (Meng et al. 2020, Sec. 5.2, Fig. 3a); "
                     "bits/dim in pixel space of the dequantized data (x in [0,256)^784)",
             "args": vars(args), "overrides": overrides,
             "configs": {n: c.to_dict() for n, c in configs.items()},
             "machine": common.machine(), "runs": {}}
  json_path = common.results_path(args.out)
  save = lambda: common.write_json(json_path, dict(results,
                                                   seconds=time.perf_counter() - start))
  states = {}
  for i, (name, config) in enumerate(configs.items()):
    log(f"run {i + 1}/{len(configs)}: {name} ({config.model.head} head, {config.loss.name} "
        f"loss, {config.training.num_steps} steps)")
    model, params, entry = train_run(args, name, config, arrays, y_eval, pre, log)
    states[name] = (model, params)
    if model.normalized:
      entry["final_test"] = likelihood.evaluate_nll(model, params, y_final, method="exact",
                                                    preprocessor=pre, batch_size=500)
      log(f"[{name}] final test NLL {entry['final_test']['bpd']:.4f} bits/dim "
          f"({len(y_final)} images)")
    results["runs"][name] = entry
    results["table_fig3a"] = table_fig3a(results["runs"])
    results["gap_vs_steps"] = gap_vs_steps(results["runs"])
    save()
    plot_curves(os.path.join(args.out, "mnist_nll_curves.png"), results["runs"])

  if args.arcsm_comparison:
    grid = quadrature_grid(args, pre, arrays)
    comp = compare(args, states, configs, grid, y_quad, pre, arrays, log)
    results["arcsm_comparison"] = comp
    results["table_arcsm"] = table_arcsm(results["runs"], comp)
    save()
    plot_comparison(os.path.join(args.out, "mnist_nll_arcsm.png"), comp)
    if args.num_samples:
      plot_samples(os.path.join(args.out, "mnist_samples.png"), args, states, configs, grid,
                   pre, log)
  save()
  log("Fig. 3a table (Gaussian MADE, exact test NLL, bits/dim):")
  for n, r in results["table_fig3a"].items():
    log(f"  {n:22s} {r['bpd']:9.4f}  ({r['steps']} steps, {r['train_seconds']:.0f}s)")
  if results["gap_vs_steps"]:
    log("CSM - MLE gap of the Gaussian MADE against training steps (bits/dim):")
    for r in results["gap_vs_steps"]:
      log(f"  step {r['step']!s:>6}  csm {r['gaussian_csm']:.4f}  mle {r['gaussian_mle']:.4f}"
          f"  gap {r['gap']:+.4f}")
  if args.arcsm_comparison:
    log(f"AR-CSM vs MLE MADEs on {len(y_quad)} test images (bits/dim):")
    for n, r in results["table_arcsm"].items():
      q = f" quad. err. {r['quad_error_bpd']:.1e}" if r["quad_error_bpd"] is not None else ""
      log(f"  {n:22s} {r['bpd']:9.4f} +- {r['bpd_stderr']:.4f}{q}")
  return results


def main(argv=None):
  return run(*parse_args(argv))


if __name__ == "__main__":
  main()
