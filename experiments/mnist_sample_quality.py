"""MNIST sample quality by classifier-FID: noise schedules, samplers, MLE MADEs (issue 13).

Trains (or resumes, in OUT/models/NAME) the same MADE backbone five ways, all for the
same number of steps (--config.FIELD=value for all, --NAME.FIELD=value for one):

  sigma5    AR-CSM on logit pixels, noise 5 -> 0.05 in 10 levels (the former
            configs/mnist_made.py schedule)
  sigma30   AR-CSM on logit pixels, noise 30 -> 0.05 in 15 levels: sigma_max by the
            mode-separation rule (the off and on modes of a pixel's conditional are
            about 27.6 apart in logit space; Song & Ermon 2020's largest-distance rule,
            per dimension)
  unit      AR-CSM on [0, 1] pixels (no logit), noise 1 -> 0.01 in 10 levels (the modes
            are 1 apart; as configs/mnist_denoise.py)
  gaussian  the MLE MADE with Gaussian conditionals (configs/mnist_made_mle.py)
  mol       the MLE MADE with logistic-mixture conditionals

and samples each (rows of the table): the AR-CSMs by cached-context annealed Langevin
(sigma5 with the former sampler defaults T = 10, step_lr = 2e-3, all with the current
T = 30, step_lr = 2 sigma_min^2 and with --long_steps steps per level) and on
a grid over the data's support at sigma_min (`sampling.grid_sample`: the model's own
sigma_min conditionals, free of Langevin mixing, whose mode weights score matching
does not pin down), the MLE MADEs exactly (`sampling.ancestral_sample`).

Each row is scored by `csm_jax.image_quality` against held-out test images: FID in the
feature space of a small CNN the project trains on the MNIST labels (cached in
--classifier_dir; its test accuracy is reported), mean intensity and on-pixel fraction
(pixels > 0.5) next to the data's, and the class histogram the classifier assigns. The
"data" row is the FID of as many other test images as samples: the floor at this
sample size. Writes OUT/results.json, OUT/samples.png (one row per setting) and
OUT/samples/ROW.npy (float16 pixels in [0, 1]) after every row, OUT/table.md at the end.

  python -m experiments.mnist_sample_quality --out /tmp/msq
"""

import os
import time

from experiments import common


OLD_SAMPLER = ("sampling.num_steps=10", "sampling.step_lr=0.002")


LOGIT = ("data.logit_lambda=1e-06", "data.scale=unit")


MODELS = {
    "sigma5": ("mnist_made", LOGIT + ("noise.sigma_max=5.0", "noise.sigma_min=0.05",
                              "noise.num_levels=10") + OLD_SAMPLER,
               "AR-CSM, logit, sigma 5 -> 0.05 (L=10)"),
    "sigma30": ("mnist_made", LOGIT + ("noise.sigma_max=30.0", "noise.sigma_min=0.05",
                               "noise.num_levels=15", "sampling.num_steps=30",
                               "sampling.step_lr=0.005"),
                "AR-CSM, logit, sigma 30 -> 0.05 (L=15)"),
    "unit": ("mnist_made", ("data.logit_lambda=0.0", "data.scale=unit", "noise.sigma_max=1.0",
                            "noise.sigma_min=0.01", "noise.num_levels=10",
                            "sampling.num_steps=30", "sampling.step_lr=0.0002"),
             "AR-CSM, [0, 1], sigma 1 -> 0.01 (L=10)"),
    "gaussian": ("mnist_made_mle", (), "MLE MADE, Gaussian"),
    "mol": ("mnist_made_mle", ("model.head=logistic_mixture",), "MLE MADE, logistic mixture"),
}


add_scoring_flags = common.add_sample_scoring_flags


def parse_args(argv=None):
  p = common.parser(__doc__.split("\n\n")[0], ("config",) + tuple(MODELS))
  p.add_argument("--models", default=",".join(MODELS),
                 help=f"comma-separated subset of {','.join(MODELS)}")
  p.add_argument("--grid_points", type=int, default=513,
                 help="nodes of the grid sampler over the data's support")
  p.add_argument("--no_grid_arcsm", action="store_true",
                 help="skip the grid-sampler rows of the AR-CSMs")
  p.add_argument("--long_steps", type=int, default=100,
                 help="also sample every AR-CSM with this many Langevin steps per level "
                      "(c = 2; 0: no such rows)")
  p.add_argument("--rows", default="",
                 help="comma-separated row names to run (e.g. sigma30_T30,gaussian_grid; "
                      "default: all rows of the chosen models)")
  add_scoring_flags(p)
  p.add_argument("--params", choices=tuple(common.PARAMS), default="ema",
                 help="EMA parameters, or the raw last iterate")
  args, ov = common.parse(p, argv, prefixes=("config",) + tuple(MODELS))
  args.models = [m for m in args.models.split(",") if m]
  args.rows = [r for r in args.rows.split(",") if r]
  bad = set(args.models) - set(MODELS)
  if bad:
    p.error(f"unknown models {sorted(bad)}; choose from {list(MODELS)}")
  return args, ov


common.parse_early(__name__, parse_args)  # --help and flag errors before JAX loads

import jax  # noqa: E402
import numpy as np  # noqa: E402
from csm_jax import chunked  # noqa: E402
from csm_jax import config_base  # noqa: E402
from csm_jax import data as data_lib  # noqa: E402
from csm_jax import image_quality as iq  # noqa: E402
from csm_jax import likelihood  # noqa: E402
from csm_jax import plotting  # noqa: E402
from csm_jax import sampling  # noqa: E402
from csm_jax.data import tfds_source  # noqa: E402


# CPU-sized training, the same for every model (each overridable).
CPU = ("model.hidden_sizes=(512, 512)", "model.context_size=8", "model.head_hidden=(32, 32)",
       "training.num_steps=1500", "training.batch_size=64", "training.log_every=250",
       "training.eval_every=0", "training.checkpoint_every=500", "optim.warmup_steps=100",
       "optim.ema_decay=0.99", "seed=0")


def model_config(name, overrides):
  path, own, _ = MODELS[name]
  config = config_base.load_config(path, list(CPU) + list(own))
  return common.apply(config, overrides["config"] + overrides[name])


def support_grid(pre, num_points):
  """The grid sampler's range: the exact support of the preprocessed data (pixels
  0..pixel_range through the forward map)."""
  lo, hi = pre.from_pixels(np.array([0.0, pre.pixel_range]), np.float64)
  return likelihood.Grid(float(lo), float(hi), num_points)


def rows_for(name, config, args):
  """(row name, label, sampler spec) of one model."""
  label = MODELS[name][2]
  s = config.sampling
  if config.model.head != "score":
    return [(f"{name}_exact", f"{label}, exact ancestral", {"kind": "exact"})]
  c = s.step_lr / config.noise.sigma_min ** 2
  rows = [(f"{name}_T{s.num_steps}", f"{label}, Langevin T={s.num_steps}, c={c:.2g}",
           {"kind": "langevin"})]
  current = {"num_steps": 30, "step_lr": 2 * config.noise.sigma_min ** 2}
  if name == "sigma5" and (s.num_steps, s.step_lr) != tuple(current.values()):
    rows.append((f"{name}_T30", f"{label}, Langevin T=30, c=2", dict(kind="langevin",
                                                                      **current)))
  if args.long_steps and args.long_steps not in (s.num_steps, current["num_steps"]):
    rows.append((f"{name}_T{args.long_steps}", f"{label}, Langevin T={args.long_steps}, c=2",
                 dict(kind="langevin", num_steps=args.long_steps, step_lr=current["step_lr"])))
  if not args.no_grid_arcsm:
    rows.append((f"{name}_grid", f"{label}, grid at sigma_min", {"kind": "grid"}))
  return rows


class Run:
  """Results, figure and log of one invocation; JSON and PNG written after every row."""

  def __init__(self, args, overrides):
    self.args, self.start = args, time.perf_counter()
    os.makedirs(args.out, exist_ok=True)
    self.results = {"what": "MNIST sample quality: classifier-FID against held-out test "
                            "images, mean intensity and on-pixel fraction (> 0.5)",
                    "args": vars(args), "overrides": overrides, "machine": common.machine(),
                    "models": {}, "rows": {}}
    self.images = {}
    self.title = (f"MNIST samples ({args.num_samples} per row scored; classifier-FID "
                  "against held-out test images)")

  def log(self, msg):
    print(f"{time.perf_counter() - self.start:7.1f}s {msg}", flush=True)

  def save(self):
    self.results["seconds"] = time.perf_counter() - self.start
    common.write_results(self.args.out, self.results, self.args)
    if self.images:
      plotting.save_image_rows(os.path.join(self.args.out, "samples.png"), self.images,
                               title=self.title)

  def finish(self):
    """Writes table.md, logs the table and saves; returns the results."""
    md = table(self.results)
    with open(os.path.join(self.args.out, "table.md"), "w") as f:
      f.write(md + "\n")
    self.log("\n" + md)
    self.save()
    return self.results

  def add_row(self, key, label, images, report, extra):
    self.results["rows"][key] = dict(report, label=label, **extra)
    os.makedirs(os.path.join(self.args.out, "samples"), exist_ok=True)
    np.save(os.path.join(self.args.out, "samples", f"{key}.npy"),
            np.asarray(images, np.float16))
    self.images[f"{label}\nFID {report['fid']:.1f}, on {report['on_fraction']:.3f}"] = \
        images[:self.args.num_show]
    self.log(f"[{key}] FID {report['fid']:.2f} (bootstrap std "
             f"{report['fid_bootstrap_std']:.2f})  mean intensity {report['mean_intensity']:.4f} "
             f"(data {report['data_mean_intensity']:.4f})  on {report['on_fraction']:.4f} "
             f"(data {report['data_on_fraction']:.4f})  classes {report['predicted_class_counts']}")
    self.save()


def sample_row(spec, config, model, params, pre, args, key, log):
  """(images (N, 28, 28, 1) in [0, 1], info) of one sampler setting: spec['kind'] 'grid'
  or 'exact', else the sampler config.sampling asks for (what --mode=sample runs), with
  the spec's other entries as sampler overrides."""
  n, shape = args.num_samples, (28, 28, 1)
  t0 = time.perf_counter()
  if spec["kind"] == "grid":
    grid = support_grid(pre, args.grid_points)
    sigma = likelihood.noise_level(config) if model.kind == "score" else 1.0
    x = jax.jit(lambda p, r: sampling.grid_sample(model, p, r, n, grid, sigma=sigma,
                                                  num_dims=args.num_dims))(params, key)
    info = {"sampler": "grid", "grid": grid.to_dict(), "sigma": sigma,
            "head_evaluations_per_sample": model.dim * grid.num_points}
  elif spec["kind"] == "exact":
    dims = chunked.dims_to_sample(model.dim, args.num_dims)
    sampler = sampling.make_ancestral_sampler(model, n, num_dims=args.num_dims,
                                              chunk_dims=chunked.auto_chunk_dims(dims), log=log)
    x = sampler(params, key)
    info = {"sampler": "exact ancestral", "head_evaluations_per_sample": model.dim}
  else:
    over = {k: v for k, v in spec.items() if k != "kind"}
    sampler, info = sampling.make_sampler_from_config(config, model, n, num_dims=args.num_dims,
                                                      log=log, **over)
    x = sampler(params, key)
  x = np.asarray(jax.block_until_ready(x))
  info = dict(info, seconds=time.perf_counter() - t0)
  return pre.to_display(x).reshape((-1,) + shape), info


def table(results):
  """Markdown table of the rows."""
  lines = ["| setting | FID (bootstrap std) | mean intensity | on-pixel fraction | head evals / sample | "
           "sampling s |", "|---|---|---|---|---|---|"]
  for key, r in results["rows"].items():
    evals = r.get("head_evaluations_per_sample", "")
    lines.append(f"| {r['label']} | {r['fid']:.1f} ({r['fid_bootstrap_std']:.1f}) | "
                 f"{r['mean_intensity']:.3f} | "
                 f"{r['on_fraction']:.3f} | {evals} | {r.get('seconds', 0):.0f} |")
  return "\n".join(lines)


def setup_scoring(r, data_config, arrays):
  """(classifier, reference statistics, reference images) every row is scored against:
  the cached FID classifier, test[:num_reference] as reference, and the floor row
  "data" (the next num_samples test images) added to the results of Run `r`."""
  args, log = r.args, r.log
  train_labels, test_labels = tfds_source.load_tfds_labels(data_config, "mnist")
  n, nref = args.num_samples, args.num_reference
  if nref + n > len(arrays.test):
    raise ValueError(f"--num_reference {nref} + --num_samples {n} exceed the "
                     f"{len(arrays.test)} test images")
  clf = iq.train_classifier(
      arrays.train, train_labels, arrays.test, test_labels, seed=args.seed,
      steps=args.classifier_steps,
      channels=tuple(int(v) for v in args.classifier_channels.split(",")),
      features=args.classifier_features,
      cache_dir=args.classifier_dir or os.path.join(args.out, "classifier"), log=log)
  r.results["classifier"] = clf.info
  reference = arrays.test[:nref]
  ref_stats = iq.reference_stats(clf, reference)
  held = arrays.test[nref:nref + n]
  r.results["reference"] = {"num_images": nref, "split": "test[:num_reference]",
                            "mean_intensity": iq.mean_intensity(iq.to_unit(reference)),
                            "on_fraction": iq.on_pixel_fraction(iq.to_unit(reference))}
  r.add_row("data", f"data (test images {nref}..{nref + n})", iq.to_unit(held),
            iq.quality_report(clf, held, ref_stats, reference), {"model": None})
  return clf, ref_stats, reference


def run(args, overrides):
  r = Run(args, overrides)
  log = r.log
  configs = {m: model_config(m, overrides) for m in args.models}
  for m, c in configs.items():
    common.follow_num_steps(c, overrides["config"] + overrides[m], 6)
  first = configs[args.models[0]]
  arrays = data_lib.load_arrays(first.data)
  if arrays.shape != (28, 28, 1):
    raise ValueError(f"MNIST expected, got images of shape {arrays.shape}")
  clf, ref_stats, reference = setup_scoring(r, first.data, arrays)

  key = jax.random.PRNGKey(args.seed + 3)
  for m in args.models:
    model, params, cfg, info = common.train_or_restore(m, configs[m], args.out, log,
                                                       params=args.params)
    r.results["models"][m] = dict(info, config=cfg.to_dict())
    r.save()
    pre = data_lib.get_preprocessor(cfg.data, arrays)
    for row, label, spec in rows_for(m, cfg, args):
      if args.rows and row not in args.rows:
        continue
      log(f"[{row}] sampling {args.num_samples} images: {label}")
      images, sinfo = sample_row(spec, cfg, model, params, pre, args, key, log)
      r.add_row(row, label, images, iq.quality_report(clf, images, ref_stats, reference),
                dict(sinfo, model=m))
  return r.finish()


def main(argv=None):
  return run(*parse_args(argv))


if __name__ == "__main__":
  main()
