"""Out-of-distribution detection with AR-CSM statistics (paper Sec. 5.5, Table 1).

Model settings (--settings, comma-separated):

  mnist   MNIST MADE AR-CSM (configs/mnist_made.py, CPU-sized unless --paper_size or
          --mnist_workdir) against constant uniform, uniform, CIFAR-10 and CelebA
          (offline subsets, converted to 28x28 grayscale) and SVHN where tfds has it.
  cifar   CIFAR-10 PixelCNN++ AR-CSM and its MLE PixelCNN++ (configs/cifar10_pixelcnnpp.py,
          CPU-sized on the offline subset unless the workdir flags name trained runs)
          against SVHN (tfds `svhn_cropped` test split, where available), constant
          uniform, uniform, CelebA (32x32 subset) and MNIST (padded to 32x32, RGB).

Statistics (csm_jax/ood.py): h = sum_d s_d at sigma_min and at a level sigma* chosen on
held-out in-distribution images, the squared score norm, the AR-CSM's quadrature
log-likelihood (at the noise level of best held-out log-likelihood), and the MLE model's
exact log-likelihood. h and the score norm are
scored by two-sided typicality against held-out in-distribution images; log-likelihoods
one-sided (larger = in-distribution). AUROC with in-distribution as the positive class.
The synthetic sets have as many images as the in-distribution test images used.

Writes results.json after each stage (AUROCs, the paper's numbers for reference, the
definitions of the synthetic sets), table1.md (the paper's Table 1 layout: rows OOD sets
and their average, columns statistics/models) and SETTING_hist.png (histograms of each
statistic per set).

  python -m experiments.ood --out /tmp/ood
"""

import os
import time

from experiments import common


def parse_args(argv=None):
  p = common.parser(__doc__.split("\n\n")[0], ("config", "mnist", "cifar", "cifar_mle"))
  p.add_argument("--out", required=True, help="output directory")
  p.add_argument("--settings", default="mnist,cifar", help="comma-separated: mnist, cifar")
  p.add_argument("--num_test", type=int, default=500,
                 help="in-distribution test images, and images per OOD set")
  p.add_argument("--num_heldout", type=int, default=300,
                 help="held-out in-distribution training images (reference, sigma*)")
  p.add_argument("--num_ll", type=int, default=50,
                 help="images per set for the AR-CSM quadrature log-likelihood (0: skip)")
  p.add_argument("--num_ll_cifar", type=int, default=20,
                 help="the same for the CIFAR-10 AR-CSM (3072 dimensions)")
  p.add_argument("--num_ll_val", type=int, default=20,
                 help="held-out images that choose the quadrature density's noise level")
  p.add_argument("--num_ll_val_cifar", type=int, default=5,
                 help="the same for the CIFAR-10 AR-CSM")
  p.add_argument("--mnist_workdir", default=None, help="trained MNIST AR-CSM run")
  p.add_argument("--cifar_csm_workdir", default=None, help="trained CIFAR-10 AR-CSM run")
  p.add_argument("--cifar_mle_workdir", default=None, help="trained CIFAR-10 MLE run")
  p.add_argument("--paper_size", action="store_true",
                 help="train the configs' own (paper-size) models, not the CPU-sized ones")
  p.add_argument("--params", choices=tuple(common.PARAMS), default="ema",
                 help="EMA parameters, or the raw last iterate (short runs trained with a "
                      "long EMA horizon, which still remembers the initialization)")
  p.add_argument("--seed", type=int, default=0, help="random seed")
  return common.parse(p, argv, prefixes=("config", "mnist", "cifar", "cifar_mle"))


common.parse_early(__name__, parse_args)  # --help and flag errors before JAX loads

import jax  # noqa: E402
import matplotlib  # noqa: E402
matplotlib.use("Agg")  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from csm_jax import config_base  # noqa: E402
from csm_jax import data as data_lib  # noqa: E402
from csm_jax import likelihood  # noqa: E402
from csm_jax import noise as noise_lib  # noqa: E402
from csm_jax import ood  # noqa: E402


CIFAR_NPZ, CELEBA_NPZ = common.CIFAR_NPZ, common.CELEBA_NPZ  # $CSM_DATA_DIR, docs/usage.md
PAPER = {"what": "Meng et al. 2020, Table 1 (AUROC; CIFAR-10 in-distribution)",
         "sets": ["SVHN", "const uniform", "uniform"],
         "PixelCNN++": [0.32, 0.0, 1.0], "Glow": [0.24, 0.0, 1.0], "EBM": [0.63, 0.30, 1.0],
         "AR-CSM": [0.68, 0.57, 0.95], "AR-CSM average": 0.73}
MNIST_CPU = ("model.hidden_sizes=(512, 512)", "model.context_size=8",
             "training.num_steps=1500", "training.batch_size=64", "training.log_every=250",
             "training.eval_every=0", "training.checkpoint_every=500", "optim.ema_decay=0.99",
             "optim.warmup_steps=100")
CIFAR_CPU = ("data.source=npz", f"data.path={CIFAR_NPZ[0]}", f"data.test_path={CIFAR_NPZ[1]}",
             "model.nr_filters=16", "model.nr_resnet=1", "model.dropout_rate=0.0",
             "training.batch_size=8", "training.num_steps=400", "training.log_every=50",
             "training.eval_every=0", "training.checkpoint_every=100",
             "optim.warmup_steps=20", "optim.ema_decay=0.99", "likelihood.num_points=513",
             "likelihood.outer_points=64")


class Run:
  """Results and log of one invocation; results.json / table1.md after each stage."""

  def __init__(self, args, overrides):
    self.args, self.start = args, time.perf_counter()
    os.makedirs(args.out, exist_ok=True)
    self.results = {"what": "OOD detection AUROC (in-distribution = positive class)",
                    "sign_convention": ood.__doc__.split("Sign convention")[1].split(
                        "Synthetic OOD")[0].strip(),
                    "synthetic_sets": ood.SYNTHETIC, "paper": PAPER, "args": vars(args),
                    "overrides": overrides, "machine": common.machine(), "settings": {}}

  def log(self, msg):
    print(f"{time.perf_counter() - self.start:7.1f}s {msg}", flush=True)

  def save(self):
    common.write_results(self.args.out,
                         dict(self.results, seconds=time.perf_counter() - self.start), self.args)
    with open(os.path.join(self.args.out, "table1.md"), "w") as f:
      f.write(markdown(self.results))


def markdown(results) -> str:
  lines = []
  for name, s in results["settings"].items():
    cols = list(s.get("columns", []))
    sets = [k for k in s.get("auroc", {}) if k != "average"]
    if not cols or not sets:
      continue
    lines += [f"### {name}: in-distribution {s['in_distribution']}", "",
              "| OOD set | " + " | ".join(cols) + " |",
              "|---" * (len(cols) + 1) + "|"]
    for row in sets + ["average"]:
      vals = [s["auroc"][row].get(c) for c in cols]
      lines.append(f"| {row} | " + " | ".join("" if v is None else f"{v:.2f}" for v in vals)
                   + " |")
    lines.append("")
  p = results["paper"]
  lines += ["Paper (Table 1, CIFAR-10 in-distribution): " + ", ".join(
      f"{m} {'/'.join(str(v) for v in p[m])}" for m in ("PixelCNN++", "Glow", "EBM", "AR-CSM"))
      + f" on {'/'.join(p['sets'])}; AR-CSM average {p['AR-CSM average']}", ""]
  return "\n".join(lines)


def _config(path, variant, cpu, args, overrides, name):
  config = config_base.load_config(f"{path}:{variant}" if variant else path)
  if not args.paper_size:
    config = common.apply(config, list(cpu))
  return common.apply(config, overrides["config"] + overrides[name])


def _npz_config(path):
  c = config_base.default_config().data
  c.dataset, c.path = "npz", path
  return c


def ood_sets(run, in_name, shape, n, rng):
  """{name: uint8 images in the in-distribution format}; unavailable sets are recorded."""
  sets, missing = {}, {}
  sets["constant uniform"] = ood.constant_uniform(rng, n, shape)
  sets["uniform"] = ood.uniform(rng, n, shape)
  real = {"SVHN": None, "CelebA": _npz_config(CELEBA_NPZ),
          "CIFAR-10": _npz_config(CIFAR_NPZ[1]) if in_name != "cifar10" else False,
          "MNIST": None if in_name != "mnist" else False}
  for name, cfg in real.items():
    if cfg is False:
      continue
    if cfg is None:
      cfg = config_base.default_config().data
      cfg.dataset = {"SVHN": "svhn", "MNIST": "mnist"}[name]
    try:
      sets[name] = ood.convert(ood.load_image_set(name, cfg, n), shape)
    except (data_lib.DataNotFoundError, FileNotFoundError, OSError) as e:
      missing[name] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
      run.log(f"OOD set {name} not available here: {missing[name]}")
  return sets, missing


def _split(arrays, holdout):
  n = len(arrays.train) - holdout
  if n <= 0:
    raise ValueError(f"--num_heldout {holdout} leaves no training images")
  return arrays._replace(train=arrays.train[:n]), arrays.train[n:]


def score_statistics(run, model, params, config, y_by_set, y_held):
  """{stat name: {set: values}} for h at sigma_min and sigma*, and the score norm."""
  fn = ood.make_score_stats_fn(model)
  sigmas = noise_lib.sigmas_from_config(config.noise)
  sigmas = [1.0] if sigmas is None else [float(s) for s in sigmas]
  held = {s: ood.score_stats(fn, params, y_held, s) for s in sigmas}
  s_min, s_star = min(sigmas), ood.choose_sigma({s: v["h"] for s, v in held.items()})
  run.log(f"sigma* = {s_star:.4g} (smallest held-out IQR/|median| of h); sigma_min = {s_min:.4g}")
  stats, refs = {}, {}
  for label, s in ((f"h (sigma_min={s_min:.3g})", s_min), (f"h (sigma*={s_star:.3g})", s_star),
                   (f"||s||^2 (sigma_min={s_min:.3g})", s_min)):
    key = "norm_sq" if label.startswith("||s||") else "h"
    refs[label] = held[s][key]
    stats[label] = {k: ood.score_stats(fn, params, y, s)[key] for k, y in y_by_set.items()}
  return stats, refs, {"sigma_min": s_min, "sigma_star": s_star,
                       "heldout_h_spread": {str(s): float(np.subtract(*np.percentile(
                           v["h"], [75, 25])) / max(abs(np.median(v["h"])), 1e-12))
                           for s, v in held.items()}}


def log_likelihoods(run, model, params, config, pre, train_images, y_by_set, num, y_held,
                    num_val):
  """{set: per-image pixel-space log-likelihoods} of the first `num` images of each set.

  An AR-CSM's quadrature density is taken at the noise level of highest mean
  log-likelihood on `num_val` held-out in-distribution images (as experiments/mnist_nll.py
  does: at sigma_min the score is unconstrained between the data's modes, see
  `likelihood.nll_per_sigma`); returns (log-likelihoods, mean quadrature errors, info).
  """
  info = {}
  if model.normalized:
    fn, kw = likelihood.make_exact_log_likelihood_fn(model), {"method": "exact"}
  else:
    lk = config.likelihood
    grid = likelihood.make_grid(lk, likelihood.grid_training_data(config, train_images, pre))
    sigmas = noise_lib.sigmas_from_config(config.noise)
    sigmas = [likelihood.noise_level(config)] if sigmas is None else [float(v) for v in sigmas]
    fn = likelihood.make_log_likelihood_fn(model, grid, sigmas[-1], lk.batch_chunk,
                                           lk.node_chunk)
    per = likelihood.nll_per_sigma(model, params, y_held[:num_val], sigmas, grid, fn=fn,
                                   preprocessor=pre, batch_size=min(num_val, 50))
    sigma = per["best_sigma"]
    info = {"sigma": sigma, "heldout_nll_nats_by_sigma": dict(zip(
        [f"{v:.4g}" for v in per["sigmas"]], per["nll_nats"])), "num_val": int(num_val)}
    run.log(f"  log-likelihood level sigma = {sigma:.4g} (best held-out NLL over "
            f"{len(sigmas)} levels, {num_val} images)")
    kw = {"method": "quadrature", "grid": grid, "sigma": sigma}
  out, errors = {}, {}
  for k, y in y_by_set.items():
    r = likelihood.evaluate_nll(model, params, y[:num], preprocessor=pre, fn=fn,
                                batch_size=min(num, 50), per_example=True, **kw)
    out[k], errors[k] = r["per_example"]["log_lik"], float(r["per_example"]["error"].mean())
    run.log(f"  log-likelihood on {k}: mean {out[k].mean():.1f} nats ({len(out[k])} images, "
            f"{r['seconds']:.0f}s)")
  return out, errors, info


def aurocs(stats: dict, refs: dict, in_key: str) -> dict:
  """{set: {stat: AUROC}} and the average over sets; typicality where refs has a
  reference (two-sided), else the values themselves (larger = in-distribution)."""
  table = {}
  for stat, by_set in stats.items():
    conv = (lambda v: ood.typicality(v, refs[stat])) if stat in refs else (lambda v: v)
    for k, v in by_set.items():
      if k == in_key:
        continue
      n = min(len(v), len(by_set[in_key]))
      table.setdefault(k, {})[stat] = ood.auroc(conv(by_set[in_key][:n]), conv(v[:n]))
  cols = list(stats)
  table["average"] = {c: float(np.mean([table[k][c] for k in table if c in table[k]]))
                      for c in cols}
  return table


def histograms(path, stats, title):
  cols = list(stats)
  fig, axes = plt.subplots(1, len(cols), figsize=(4.2 * len(cols), 3.2), squeeze=False)
  for ax, c in zip(axes[0], cols):
    for k, v in stats[c].items():
      v = np.asarray(v)
      if c.startswith("||s||") or c.startswith("log-lik"):
        v = np.sign(v) * np.log10(1 + np.abs(v))
      ax.hist(v, bins=40, alpha=0.5, label=k, density=True)
    ax.set_title(c + (" (signed log10)" if c.startswith(("||s||", "log-lik")) else ""),
                 fontsize=8)
  axes[0][0].legend(fontsize=7)
  fig.suptitle(title, fontsize=9)
  fig.savefig(path, dpi=100, bbox_inches="tight")
  plt.close(fig)


def run_setting(run, name, in_name, models, args):
  """models: [(column prefix, model, params, config)] sharing one dataset."""
  config = models[0][3]
  arrays = data_lib.load_arrays(config.data)
  pre = data_lib.get_preprocessor(config.data, arrays)
  _, held = _split(arrays, args.num_heldout)
  n = min(args.num_test, len(arrays.test))
  rng = np.random.default_rng([args.seed, 7])
  sets, missing = ood_sets(run, in_name, arrays.shape, n, rng)
  in_key = f"{in_name} (test)"
  images = {in_key: arrays.test[:n], **sets}
  y_by_set = {k: pre(v) for k, v in images.items()}        # bin centres, no dequant noise
  y_held = pre(held)
  entry = run.results["settings"].setdefault(name, {})
  entry.update({"in_distribution": in_key, "num_test": n, "num_heldout": len(held),
                "sets": {k: len(v) for k, v in images.items()}, "unavailable": missing})
  stats, refs = {}, {}
  num_ll = args.num_ll_cifar if in_name == "cifar10" else args.num_ll
  for prefix, model, params, cfg in models:
    if not model.normalized:
      st, rf, info = score_statistics(run, model, params, cfg, y_by_set, y_held)
      stats.update({f"{prefix} {k}": v for k, v in st.items()})
      refs.update({f"{prefix} {k}": v for k, v in rf.items()})
      entry[f"{prefix} noise levels"] = info
    exact = model.normalized
    if exact or num_ll:       # exact log-likelihoods are cheap: every image
      t0 = time.perf_counter()
      ll, err, ll_info = log_likelihoods(
          run, model, params, cfg, pre, arrays.train[:-args.num_heldout], y_by_set,
          n if exact else num_ll, y_held,
          args.num_ll_val_cifar if in_name == "cifar10" else args.num_ll_val)
      label = f"{prefix} log-lik ({'exact' if exact else 'quadrature'})"
      stats[label] = ll
      entry.setdefault("log_lik_error_nats", {})[label] = err
      entry.setdefault("log_lik_seconds", {})[label] = time.perf_counter() - t0
      entry.setdefault("log_lik_level", {})[label] = ll_info
    entry["columns"] = list(stats)
    entry["auroc"] = aurocs(stats, refs, in_key)
    entry["stat_means"] = {c: {k: float(np.mean(v)) for k, v in s.items()}
                           for c, s in stats.items()}
    run.save()
    histograms(os.path.join(args.out, f"{name}_hist.png"), stats,
               f"{name}: statistics per set (in-distribution {in_key})")
  for k, row in entry["auroc"].items():
    run.log(f"[{name}] {k:18s} " + "  ".join(f"{c}: {v:.3f}" for c, v in row.items()))


def main_mnist(run, args, overrides):
  cfg = _config("mnist_made", None, MNIST_CPU, args, overrides, "mnist")
  arrays = data_lib.load_arrays(cfg.data)
  train_arrays, _ = _split(arrays, args.num_heldout)
  model, params, cfg, info = common.train_or_restore("mnist_csm", cfg, args.out, run.log,
                                                     args.mnist_workdir, train_arrays,
                                                     args.params)
  run.results["settings"].setdefault("mnist", {})["model"] = dict(info, config=cfg.to_dict())
  run.save()
  run_setting(run, "mnist", "mnist", [("AR-CSM", model, params, cfg)], args)


def main_cifar(run, args, overrides):
  models = []
  for variant, wd, name in (("csm", args.cifar_csm_workdir, "cifar"),
                            ("mle", args.cifar_mle_workdir, "cifar_mle")):
    cfg = _config("cifar10_pixelcnnpp", variant, CIFAR_CPU, args, overrides, name)
    arrays = data_lib.load_arrays(cfg.data)
    train_arrays, _ = _split(arrays, args.num_heldout)
    model, params, cfg, info = common.train_or_restore(f"cifar_{variant}", cfg, args.out,
                                                       run.log, wd, train_arrays, args.params)
    run.results["settings"].setdefault("cifar", {})[f"model_{variant}"] = dict(
        info, config=cfg.to_dict())
    run.save()
    models.append(("AR-CSM" if variant == "csm" else "PixelCNN++ MLE", model, params, cfg))
  run_setting(run, "cifar", "cifar10", models, args)


def run(args, overrides):
  r = Run(args, overrides)
  settings = [s.strip() for s in args.settings.split(",") if s.strip()]
  if set(settings) - {"mnist", "cifar"}:
    raise SystemExit(f"--settings: unknown {sorted(set(settings) - {'mnist', 'cifar'})}")
  if "mnist" in settings:
    main_mnist(r, args, overrides)
  if "cifar" in settings:
    main_cifar(r, args, overrides)
  r.save()
  print(markdown(r.results))
  return r.results


def main(argv=None):
  return run(*parse_args(argv))


if __name__ == "__main__":
  main()
