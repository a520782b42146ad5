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

  python experiments/mnist_nll.py --out /tmp/mnist_nll        # CPU defaults, < 30 min
  # full length (GPU):
  python experiments/mnist_nll.py --out DIR --hidden 1024,1024 --context_size 16 \\
      --head_hidden 64,64 --batch_size 100 --steps 20000 --eval_every 1000 \\
      --num_eval 10000 --num_quadrature 10000 --num_val 1000 --num_points 2049
Writes DIR/mnist_nll.json, DIR/mnist_nll_curves.png, DIR/mnist_nll_arcsm.png and
DIR/mnist_samples.png.
"""

import argparse
import os
import pathlib
import sys
import time

if __package__ in (None, ""):  # run as a script: make the repository importable
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax
import numpy as np

from csm_jax import datasets, likelihood, losses, noise, plotting, sampling, train
from csm_jax.config_base import default_config
from experiments import common
from experiments.toy2d import count_parameters, fit

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


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--out", required=True, help="output directory")
  p.add_argument("--methods", default="mle,csm,dsm,ssm", help="Gaussian MADE objectives")
  p.add_argument("--dsm_sigmas", default="0.01,0.05,0.1")
  p.add_argument("--sm_target", choices=["joint", "conditional"], default="joint")
  p.add_argument("--arcsm", type=int, default=1, help="1: AR-CSM + MoL quadrature comparison")
  p.add_argument("--hidden", default="256", help="MADE hidden sizes, e.g. 1024,1024")
  p.add_argument("--context_size", type=int, default=4)
  p.add_argument("--head_hidden", default="32,32", help="AR-CSM score head")
  p.add_argument("--num_mixtures", type=int, default=10)
  p.add_argument("--steps", type=int, default=1500)
  p.add_argument("--arcsm_steps", type=int, default=0, help="0: --steps")
  p.add_argument("--batch_size", type=int, default=64)
  p.add_argument("--lr", type=float, default=1e-3)
  p.add_argument("--ema_decay", type=float, default=0.99)
  p.add_argument("--sigma_max", type=float, default=5.0, help="AR-CSM noise schedule")
  p.add_argument("--sigma_min", type=float, default=0.05)
  p.add_argument("--num_scales", type=int, default=10)
  p.add_argument("--eval_every", type=int, default=150)
  p.add_argument("--num_eval", type=int, default=500, help="test images per curve point")
  p.add_argument("--num_final", type=int, default=10000, help="test images, final exact NLL")
  p.add_argument("--num_quadrature", type=int, default=100, help="test images, quadrature")
  p.add_argument("--holdout", type=int, default=1000, help="train images held out (validation)")
  p.add_argument("--num_val", type=int, default=20, help="validation images to pick sigma*")
  p.add_argument("--num_points", type=int, default=1025, help="quadrature nodes")
  p.add_argument("--grid", choices=["support", "data"], default="support",
                 help="quadrature range: the exact support [logit(lambda), logit(1-lambda)] "
                      "of the logit-transformed data, or the training data range + 10%%")
  p.add_argument("--quad_batch", type=int, default=10)
  p.add_argument("--num_samples", type=int, default=16, help="0: no samples figure")
  p.add_argument("--num_train", type=int, default=0, help="0: all but the held-out images")
  p.add_argument("--data_dir", default=None, help="tfds data dir (default $TFDS_DATA_DIR)")
  p.add_argument("--seed", type=int, default=0)
  return p.parse_args(argv)


def base_config(args):
  c = default_config()
  c.seed = args.seed
  c.data.dataset = "mnist"
  c.data.dequantize = True
  c.data.logit_lambda = 1e-6
  if args.data_dir:
    c.data.data_dir = args.data_dir
  c.model.backbone = "made"
  c.model.hidden_sizes = tuple(int(h) for h in args.hidden.split(","))
  c.model.context_size = args.context_size
  c.model.head_hidden = tuple(int(h) for h in args.head_hidden.split(","))
  c.model.num_mixtures = args.num_mixtures
  c.noise.enabled = False
  c.training.num_steps = args.steps
  c.training.batch_size = args.batch_size
  c.training.log_every = max(1, args.steps // 6)
  c.optim.learning_rate = args.lr
  c.optim.warmup_steps = min(100, args.steps // 10 + 1)
  c.optim.ema_decay = args.ema_decay
  return c


def run_configs(args):
  """name -> config for every training run of the experiment."""
  runs = {}
  for method in [m for m in args.methods.split(",") if m]:
    sigmas = [float(s) for s in args.dsm_sigmas.split(",")] if method == "dsm" else [None]
    for s in sigmas:
      c = base_config(args)
      c.model.head = "gaussian"
      c.loss.name = method
      name = f"gaussian_{method}" + (f"_{s:g}" if s is not None else "")
      if s is not None:
        c.loss.dsm_sigma = s
      runs[name] = c
  if args.arcsm:
    c = base_config(args)
    c.model.head = "score"
    c.loss.name = "csm"
    c.noise.enabled = True
    c.noise.sigma_max, c.noise.sigma_min, c.noise.num_scales = (
        args.sigma_max, args.sigma_min, args.num_scales)
    c.training.num_steps = args.arcsm_steps or args.steps
    runs["arcsm_csm"] = c
    c = base_config(args)
    c.model.head = "logistic_mixture"
    c.loss.name = "mle"
    runs["mol_mle"] = c
    if "gaussian_mle" not in runs:
      c = base_config(args)
      c.model.head = "gaussian"
      c.loss.name = "mle"
      runs["gaussian_mle"] = c
  return runs


def split_train(args, arrays):
  """(training images, held-out validation images) of the MNIST training split."""
  n = len(arrays.train) - args.holdout
  if n <= 0:
    raise ValueError(f"--holdout {args.holdout} leaves no training images")
  return arrays.train[:min(n, args.num_train or n)], arrays.train[n:]


def make_env(config, args, arrays):
  env = train.setup(config)
  arrays = arrays._replace(train=split_train(args, arrays)[0])
  env["arrays"] = arrays
  env["batcher"] = train.Batcher(config, arrays, env["pre"], env["mesh"])
  if config.loss.name in ("dsm", "ssm") and args.sm_target == "joint":
    env["loss_fn"] = losses.get_loss_fn(config, JointScore(env["model"]))
  return env


def plot_curves(path, results):
  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  finals = []
  for name, r in results.items():
    h = r.get("history") or []
    if not h or not name.startswith("gaussian_"):
      continue
    steps = [row["step"] for row in h]
    secs = [row["seconds"] for row in h]
    bpd = [row["bpd"] for row in h]
    label = name.replace("gaussian_", "").upper().replace("DSM_", "DSM σ=")
    axes[0].plot(steps, bpd, marker=".", label=label)
    axes[1].plot(secs, bpd, marker=".", label=label)
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


def run(args):
  os.makedirs(args.out, exist_ok=True)
  start = time.perf_counter()

  def log(msg):
    print(f"{time.perf_counter() - start:7.1f}s {msg}", flush=True)

  configs = run_configs(args)
  first = next(iter(configs.values()))
  arrays = datasets.load_arrays(first.data)
  pre = datasets.get_preprocessor(first.data, arrays)
  n_test = len(arrays.test)
  y_test = pre(arrays.test, datasets.dequant_rng(args.seed + 1, 0))    # fixed dequantization
  y_eval = y_test[:min(args.num_eval, n_test)]
  y_final = y_test[:min(args.num_final, n_test)]
  y_quad = y_test[:min(args.num_quadrature, n_test)]
  results = {"what": "MNIST test NLL of MADE models (Meng et al. 2020, Sec. 5.2, Fig. 3a); "
                     "bits/dim in pixel space of the dequantized data (x in [0,256)^784)",
             "args": vars(args), "machine": common.machine(), "runs": {}}
  json_path = os.path.join(args.out, "mnist_nll.json")
  states = {}
  for i, (name, cfg) in enumerate(configs.items()):
    log(f"run {i + 1}/{len(configs)}: {name} ({cfg.model.head} head, {cfg.loss.name} loss, "
        f"{cfg.training.num_steps} steps)")
    env = make_env(cfg, args, arrays)
    model = env["model"]
    eval_fn = None
    if model.normalized:
      fn = likelihood.make_exact_log_likelihood_fn(model)
      eval_fn = lambda p, fn=fn, model=model: {
          k: v for k, v in likelihood.evaluate_nll(
              model, p, y_eval, method="exact", preprocessor=pre, batch_size=500,
              fn=fn).items() if k in ("bpd", "nll_nats")}
    state, info = fit(cfg, env, log=log, eval_fn=eval_fn, eval_every=args.eval_every,
                      label=name)
    states[name] = (model, state.ema_params, cfg)
    entry = dict(info, **count_parameters(model, state.ema_params, cfg.model),
                 head=cfg.model.head, loss=cfg.loss.name,
                 sm_target=args.sm_target if cfg.loss.name in ("dsm", "ssm") else None)
    if model.normalized:
      entry["final_test"] = likelihood.evaluate_nll(model, state.ema_params, y_final,
                                                    method="exact", preprocessor=pre,
                                                    batch_size=500)
      log(f"[{name}] final test NLL {entry['final_test']['bpd']:.4f} bits/dim "
          f"({len(y_final)} images)")
    results["runs"][name] = entry
    results["seconds"] = time.perf_counter() - start
    common.write_json(json_path, results)

  results["table_fig3a"] = {n: {"bpd": r["final_test"]["bpd"], "steps": r["steps"],
                                "train_seconds": r["train_seconds"]}
                            for n, r in results["runs"].items()
                            if n.startswith("gaussian_") and "final_test" in r}
  plot_curves(os.path.join(args.out, "mnist_nll_curves.png"), results["runs"])

  if args.arcsm:
    model, params, cfg = states["arcsm_csm"]
    sigma = likelihood.noise_level(cfg)
    if args.grid == "support":       # y = logit(lambda + (1 - 2 lambda) x / 256), x in [0, 256]
      lo, hi = pre.from_pixels(np.array([0.0, pre.pixel_range]), np.float64)
      grid = likelihood.Grid(float(lo), float(hi), args.num_points)
    else:
      grid = likelihood.grid_from_data(pre(arrays.train[:2000], datasets.dequant_rng(0, 0)),
                                       args.num_points, margin=0.1)
    log(f"quadrature of the AR-CSM on {len(y_quad)} test images, {grid.num_points} nodes "
        f"on [{grid.lo:.2f}, {grid.hi:.2f}], sigma {sigma:g}")
    comp = {"num_examples": int(len(y_quad)), "models": {}}
    fn = likelihood.make_log_likelihood_fn(model, grid, sigma)
    val = split_train(args, arrays)[1][:args.num_val]
    if len(val):
      y_val = pre(val, datasets.dequant_rng(args.seed + 2, 0))
      log(f"validation NLL per noise level on {len(y_val)} held-out training images")
      per = likelihood.nll_per_sigma(model, params, y_val, noise.sigmas_from_config(
          cfg.noise)[::-1], grid, fn=fn, preprocessor=pre, batch_size=args.quad_batch)
      best = per.pop("best_sigma")
      per["bpd"] = [r["bpd"] for r in per.pop("results")]
      comp["validation_per_sigma"] = per
      log("  " + ", ".join(f"sigma {s:.3g}: {b:.3f}" for s, b in zip(per["sigmas"], per["bpd"]))
          + f" bits/dim -> sigma* = {best:.3g}")
    comp["models"]["arcsm_csm"] = likelihood.evaluate_nll(
        model, params, y_quad, grid=grid, sigma=sigma, preprocessor=pre,
        batch_size=args.quad_batch, log=log, fn=fn)
    if len(val):
      comp["models"]["arcsm_csm_best_sigma"] = likelihood.evaluate_nll(
          model, params, y_quad, grid=grid, sigma=best, preprocessor=pre,
          batch_size=args.quad_batch, log=log, fn=fn)
    for name in ("gaussian_mle", "mol_mle"):
      m, p, _ = states[name]
      comp["models"][name] = likelihood.evaluate_nll(m, p, y_quad, method="exact",
                                                     preprocessor=pre, batch_size=500)
    # the quadrature on a model whose conditionals are known exactly: the trained
    # Gaussian MADE's score integrated on a grid twice as wide (same step; its tails
    # reach past the data support) against its exact NLL; and on `grid` itself, where
    # the difference is the gain from normalizing it on that range instead of R
    m, p, _ = states["gaussian_mle"]
    exact = comp["models"]["gaussian_mle"]
    half = 0.5 * (grid.hi - grid.lo)
    wide = likelihood.Grid(grid.lo - half, grid.hi + half, 2 * grid.num_points - 1)
    check = {}
    for key, g in (("wide_grid", wide), ("same_grid", grid)):
      r = likelihood.evaluate_nll(m, p, y_quad, grid=g, preprocessor=pre,
                                  batch_size=args.quad_batch)
      check[key] = {"grid": g.to_dict(), "quadrature_bpd": r["bpd"],
                    "exact_bpd": exact["bpd"],
                    "error_nats_per_dim": (r["nll_nats"] - exact["nll_nats"]) / m.dim,
                    "estimated_error_nats_per_dim": r["quad_error_nats_per_dim"],
                    "edge_density_mean": r["edge_density_mean"]}
    comp["quadrature_check_gaussian_mle"] = check
    log(f"quadrature check on the trained Gaussian MADE: "
        f"{comp['quadrature_check_gaussian_mle']}")
    results["arcsm_comparison"] = comp
    run_of = lambda n: results["runs"]["arcsm_csm" if n.startswith("arcsm") else n]
    results["table_arcsm"] = {
        n: {"bpd": r["bpd"], "bpd_stderr": r["bpd_stderr"],
            "quad_error_bpd": r.get("quad_error_bpd"), "sigma": r.get("sigma"),
            "steps": run_of(n)["steps"], "train_seconds": run_of(n)["train_seconds"],
            "effective_parameters": run_of(n)["effective_parameters"]}
        for n, r in comp["models"].items()}
    plot_comparison(os.path.join(args.out, "mnist_nll_arcsm.png"), comp)

    if args.num_samples:
      log(f"sampling {args.num_samples} images: AR-CSM (Langevin), MLE MADEs (grid)")
      rng = jax.random.PRNGKey(args.seed + 3)
      sig = noise.sigmas_from_config(cfg.noise)
      rows = [("AR-CSM, annealed Langevin", sampling.make_sampler(
          model, sig, args.num_samples, cfg.sampling.n_steps, cfg.sampling.step_lr,
          cfg.sampling.denoise)(params, rng))]
      for name, title in (("gaussian_mle", "Gaussian MADE, exact (grid)"),
                          ("mol_mle", "MoL MADE, exact (grid)")):
        m, p, _ = states[name]
        rows.append((title, jax.jit(lambda p, r, m=m: sampling.grid_sample(
            m, p, r, args.num_samples, grid))(p, rng)))
      fig, axes = plt.subplots(len(rows), 1, figsize=(max(4.0, args.num_samples * 0.6),
                                                      0.9 * len(rows)))
      for ax, (title, x) in zip(np.atleast_1d(axes), rows):
        img = plotting.image_grid(pre.inverse(np.asarray(x)), ncols=args.num_samples)
        ax.imshow(img[..., 0], cmap="gray", vmin=0, vmax=1)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
      fig.tight_layout()
      fig.savefig(os.path.join(args.out, "mnist_samples.png"), dpi=90)
      plt.close(fig)
  results["seconds"] = time.perf_counter() - start
  common.write_json(json_path, results)
  log("Fig. 3a table (Gaussian MADE, exact test NLL, bits/dim):")
  for n, r in results["table_fig3a"].items():
    log(f"  {n:22s} {r['bpd']:9.4f}  ({r['steps']} steps, {r['train_seconds']:.0f}s)")
  if args.arcsm:
    log(f"AR-CSM vs MLE MADEs on {len(y_quad)} test images (bits/dim):")
    for n, r in results["table_arcsm"].items():
      q = f" quad. err. {r['quad_error_bpd']:.1e}" if r["quad_error_bpd"] is not None else ""
      log(f"  {n:22s} {r['bpd']:9.4f} +- {r['bpd_stderr']:.4f}{q}")
  return results


def main(argv=None):
  return run(parse_args(argv))


if __name__ == "__main__":
  main()
