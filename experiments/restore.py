"""Image restoration with AR models as priors against classical restorers (MNIST, CIFAR-10).

Tasks (--tasks, comma-separated; the number is the task's parameter):

  gaussian_0.3, gaussian_0.6   y = x + N(0, sigma^2), pixels in [0, 1]
  sp_0.1, sp_0.3               salt-and-pepper: each pixel 0 or 1 with probability p/2 each
  inpaint_random50, inpaint_random80, inpaint_centre, inpaint_bottom
                               missing pixels (50% / 80% at random, a centred 14x14 box,
                               the bottom half); observed pixels kept exactly
  superres_2                   2x2 average pooling + N(0, 0.02^2), restored at 28x28

Rows per task: each prior's posterior (csm_jax.restore: annealed Langevin over the noise
levels with the observation annealed alongside, posterior mean over chains and one
sample); on Gaussian noise also the smoothed-joint prior's Tweedie posterior mean
(restore.method=tweedie: y + s^2 grad log q_s(y), one gradient of its joint); on
salt-and-pepper, inpainting and super-resolution the smoothed-joint prior's
denoise-and-project estimate (restore.method=project: from the classical start, its
Tweedie denoiser and the projection onto the observation in turn over decreasing levels;
a plug-and-play point estimate, not a posterior mean), the same prior's annealed posterior
started from that estimate plus noise at --warm_start_level (restore.init=project; mean
and sample over --warm_chains chains) and, as the loop's control, the same loop with a
classical denoiser (--project_control); on Gaussian noise the same prior's annealed
posterior started from the BM3D estimate plus noise at GAUSS_WARM_START; on
--filter_tasks also each prior's sequential filter (restore.method=filter:
the pixels drawn in the model's order, each on its 256 values from its conditional times
its likelihood; exact for the bottom half, no look-ahead otherwise), the
earlier AR-CSM restorations where they apply (Tweedie autoregressive and all
at once, Langevin from the corrupted image), and the classical restorers of
csm_jax.restore.classical (BM3D, non-local means, TV, wavelet, Wiener; median and adaptive
median; biharmonic and Telea inpainting; bicubic and bilinear upsampling).

Priors (--priors): csm (configs/mnist_denoise.py, per-dimension noise), joint
(configs/mnist_denoise_joint.py, the smoothed joint), mle_gauss and mle_mol (the same MADE
with Gaussian / logistic-mixture conditionals by MLE on clean data: exact log-density; not
smoothed, so they are sampled by exact grid Gibbs instead of annealed Langevin; mle_mol
only when asked for); pcnn and pcnn_mle, only when asked for (configs/mnist_pixelcnnpp.py
at a CPU size: 32 filters, 1 ResNet per block, batch 16; the AR-CSM and its MLE
baseline, whose discretized logistic mixture is a probability mass: no density in x, so
it gets the filter rows only); pcnn_joint, only when asked for
(configs/mnist_pixelcnnpp_joint.py at the same CPU size: the PixelCNN++ AR-CSM of the
smoothed joint, pixels in [0, 1], with the MADE smoothed joint's rows: Tweedie,
denoise-and-project and the posteriors started from them).
Each is trained here with CPU-sized defaults (OUT/models/NAME, resumed by a rerun) or read
from a work directory (--csm_workdir etc.). --config.restore.FIELD=value sets sampler
fields of every prior, --csm.FIELD=value (joint, mle_gauss, mle_mol) of one.

--dataset cifar10: the paper's Fig. 5 setting, salt-and-pepper on CIFAR-10 with a
PixelCNN++ AR-CSM (configs/cifar10_pixelcnnpp.py at a CPU size: 16 filters, 1 ResNet per
block, batch 8; $CSM_DATA_DIR/cifar10_train_first4000.npz and _test_first1000.npz, see
docs/usage.md) as the prior, 16 test images, median and adaptive median; no classifier
(accuracy not reported). Its only prior is csm (a smoothed-joint PixelCNN++ was not
measured on CIFAR-10, and its MLE baseline is a probability mass, which cannot be a prior
here).

Per prior: its lattice bits/dim, the discrete NLL of the clean test images on the 256
pixel values at the sampler's last level, what the filter draws from
(results.json: models.NAME.lattice_bits_per_dim). --filter_mass_sigma auto|LEVEL (MNIST
default auto; CIFAR-10 none, where it was not measured): the AR-CSM priors' filter takes
each conditional's background and ink masses from a larger noise level (auto: the level
with the lowest lattice bits/dim on the first --mass_sigma_images training images, 64;
results.json: models.NAME.filter_mass_sigma, with the per-level table).

Metrics per row: PSNR and SSIM (dm-pix) against the clean images, the accuracy of the
project's MNIST classifier on the restored digits (MNIST only), seconds per image; mean with standard
error over images, and each model row's paired PSNR difference to the task's best
classical row (results.json keeps every image's PSNR, to pair runs). Writes
OUT/results.json after every row, OUT/table.md and one picture per
task (OUT/TASK.png: truth, corrupted, each method).

  python -m experiments.restore --out /tmp/restore
"""

import copy
import dataclasses
import os
import time

from experiments import common

TASKS = ("gaussian_0.3", "gaussian_0.6", "sp_0.1", "sp_0.3", "inpaint_random50",
         "inpaint_random80", "inpaint_centre", "inpaint_bottom", "superres_2")
PRIORS = ("csm", "joint", "mle_gauss", "mle_mol", "pcnn", "pcnn_mle", "pcnn_joint")
# Per-dataset defaults of --tasks, --priors, --num_images, --steps; the priors available.
# MNIST's 3000 steps: of 1500 and 3000, the length whose smoothed joint is ahead of the best
# classical restorer on more tasks of held-out images (test[5400:5500]; docs/restoration.md).
# MNIST's filter tasks: salt-and-pepper (one exact draw decides whether an extreme pixel was
# kept), the bottom half (a suffix of the order: the filter is the exact posterior) and the
# centre box, where held-out images put the per-dimension AR-CSM's filter mean ahead of
# every other row (15.68 dB against 13.81 for the best other AR-CSM row, biharmonic 13.77).
DEFAULTS = {
    "mnist": {"tasks": ",".join(TASKS), "priors": "csm,joint,mle_gauss", "num_images": 100,
              "steps": 3000, "available": PRIORS,
              "filter_tasks": "sp_0.1,sp_0.3,inpaint_centre,inpaint_bottom", "filter_chains": 8,
              "filter_mass_sigma": "auto"},
    "cifar10": {"tasks": "sp_0.1", "priors": "csm", "num_images": 16, "steps": 1000,
                "available": ("csm",), "filter_tasks": "sp_0.1", "filter_chains": 4,
                "filter_mass_sigma": "none"},
}


def _defaults_help(field):
  return "; ".join(f"{d}: {v[field]}" for d, v in DEFAULTS.items())


def parse_args(argv=None):
  p = common.parser(__doc__.split("\n\n")[0] + "\n\n" + __doc__.split("\n\n", 1)[1],
                    ("config",) + PRIORS)
  p.add_argument("--out", required=True, help="output directory")
  p.add_argument("--dataset", choices=tuple(DEFAULTS), default="mnist",
                 help="mnist (MADE priors, nine tasks) or cifar10 (PixelCNN++ AR-CSM, "
                      "salt-and-pepper: the paper's Fig. 5 setting)")
  p.add_argument("--tasks", default=None,
                 help="comma-separated tasks (default: " + _defaults_help("tasks") + ")")
  p.add_argument("--skip_tasks", default="",
                 help="comma-separated tasks of --tasks not to run; the others keep their "
                      "place in --tasks and so their corruptions (task i's seed is "
                      "--seed + 1000 i), e.g. to run the last tasks of a run again")
  p.add_argument("--priors", default=None,
                 help="comma-separated priors: " + ", ".join(PRIORS) + " (default: "
                      + _defaults_help("priors") + ")")
  p.add_argument("--num_images", type=int, default=None,
                 help="test images per task (default: " + _defaults_help("num_images") + ")")
  p.add_argument("--image_offset", type=int, default=0,
                 help="index of the first test image (default 0: the benchmark's images; "
                      "another range, e.g. 5400, to choose settings on images the benchmark "
                      "does not score; MNIST test[5200:5300] tuned the classical restorers)")
  p.add_argument("--steps", type=int, default=None,
                 help="training steps of each prior trained here (CPU-sized MADE 512-512 or "
                      "PixelCNN++; default: " + _defaults_help("steps") + ")")
  for name in PRIORS:
    p.add_argument(f"--{name}_workdir", default=None,
                   help=f"trained run of csm_jax.main to use as the {name} prior "
                        "(default: train one in OUT/models)")
  p.add_argument("--filter_tasks", default=None,
                 help="tasks that also get each prior's sequential-filter rows (restore."
                      "method=filter: each pixel drawn on its 256 values in the model's "
                      "order, exact for a suffix mask; 'none' for none; default: "
                      + _defaults_help("filter_tasks") + ")")
  p.add_argument("--filter_chains", type=int, default=None,
                 help="chains of the sequential-filter rows (default: "
                      + _defaults_help("filter_chains") + ")")
  p.add_argument("--filter_mass_sigma", default=None,
                 help="the filter rows of the AR-CSM (score-head) priors: 'none' (each "
                      "conditional at the last level), a level, or 'auto' (the level whose "
                      "background and ink masses give the lowest lattice bits/dim on the "
                      "first --mass_sigma_images training images; "
                      "restore.filter_mass_sigma; default: "
                      + _defaults_help("filter_mass_sigma") + ")")
  p.add_argument("--mass_sigma_images", type=int, default=64,
                 help="training images that --filter_mass_sigma auto scores the levels on")
  p.add_argument("--project_control", default="nl_means", choices=("nl_means", "bm3d", "none"),
                 help="the classical denoiser of the denoise-and-project control row (the "
                      "same loop, levels and start as restore.method=project; bm3d costs "
                      "about 0.35 s per image per level here)")
  p.add_argument("--warm_chains", type=int, default=4,
                 help="chains of the smoothed-joint prior's annealed posterior started from "
                      "its denoise-and-project estimate (restore.init=project) on the tasks "
                      "of the denoise-and-project rows, and from the BM3D estimate on "
                      "Gaussian noise; 0: no such rows")
  p.add_argument("--warm_start_level", type=float, default=None,
                 help="first level (pixel units) of the annealed posterior from the "
                      "denoise-and-project estimate, > 0; at or below the prior's last "
                      "level, every level is the last one (default: PIN_WARM_START = "
                      "0.01, chosen on held-out images; 0.1 is the loop's own first "
                      "level, restore.project_start)")
  p.add_argument("--annealed", type=int, default=1, choices=(0, 1),
                 help="1: each prior's annealed posterior from the observation (the "
                      "'posterior mean / sample' rows); 0 skips them (the rows started from "
                      "an estimate, Tweedie's and the filter's stay)")
  p.add_argument("--earlier", type=int, default=1,
                 help="1: also run the earlier AR-CSM restorations (Tweedie, Langevin)")
  p.add_argument("--sp_start_sigma", type=float, default=0.2,
                 help="start level of the earlier Langevin restoration for salt-and-pepper")
  p.add_argument("--classifier_steps", type=int, default=2000,
                 help="training steps of the MNIST classifier (cached in OUT/classifier)")
  p.add_argument("--num_show", type=int, default=8, help="images per row of the pictures")
  p.add_argument("--seed", type=int, default=0, help="random seed")
  args, overrides = common.parse(p, argv, prefixes=("config",) + PRIORS)
  for field in ("tasks", "priors", "num_images", "steps", "filter_tasks", "filter_chains",
                "filter_mass_sigma"):
    if getattr(args, field) is None:
      setattr(args, field, DEFAULTS[args.dataset][field])
  return args, overrides


common.parse_early(__name__, parse_args)  # --help and flag errors before JAX loads

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from csm_jax import atomic  # noqa: E402
from csm_jax import config_base  # noqa: E402
from csm_jax import data as data_lib  # noqa: E402
from csm_jax import denoise  # noqa: E402
from csm_jax import image_quality as iq  # noqa: E402
from csm_jax import noise as noise_lib  # noqa: E402
from csm_jax import plotting  # noqa: E402
from csm_jax.data import tfds_source  # noqa: E402
from csm_jax.restore import classical  # noqa: E402
from csm_jax.restore import diagnostics  # noqa: E402
from csm_jax.restore import filtering as filter_lib  # noqa: E402
from csm_jax.restore import observations as obs_lib  # noqa: E402
from csm_jax.restore import posterior  # noqa: E402
from csm_jax.restore import project as project_lib  # noqa: E402

# MNIST PixelCNN++ priors at a CPU size (32 filters, 1 ResNet per block, batch 16).
PCNN_CPU = ("model.nr_filters=32", "model.nr_resnet=1", "model.dropout_rate=0.0",
            "training.batch_size=16", "training.eval_every=0",
            "training.checkpoint_every=500", "optim.warmup_steps=20", "optim.ema_decay=0.99")
# CPU-sized priors (MADE 512-512, context 8, batch 64, the config's EMA 0.999);
# --NAME.FIELD=value on top.
CPU = ("model.hidden_sizes=(512, 512)", "model.context_size=8", "training.batch_size=64",
       "training.eval_every=0", "training.checkpoint_every=500", "optim.warmup_steps=100")
# CIFAR-10 at a CPU size (as experiments.denoise): PixelCNN++ with 16 filters, 1 ResNet per
# block, batch 8, on the offline subset.
CIFAR_NPZ = common.CIFAR_NPZ
CIFAR_CPU = ("data.source=npz", f"data.path={CIFAR_NPZ[0]}", f"data.test_path={CIFAR_NPZ[1]}",
             "model.nr_filters=16", "model.nr_resnet=1", "model.dropout_rate=0.0",
             "training.batch_size=8", "training.eval_every=0", "training.checkpoint_every=100",
             "optim.warmup_steps=20", "optim.ema_decay=0.99")
BASE = {"mnist": ("mnist_denoise.py:csm", ()), "cifar10": ("cifar10_pixelcnnpp.py:csm",
                                                            CIFAR_CPU[:3])}
PRIOR_CONFIGS = {
    "csm": ("mnist_denoise.py:csm", (), "AR-CSM (per-dim)"),
    "joint": ("mnist_denoise_joint.py", (), "AR-CSM (smoothed joint)"),
    "mle_gauss": ("mnist_denoise.py:mle", ("loss.mle_target_sigma=0.0",), "MLE Gaussian MADE"),
    "mle_mol": ("mnist_denoise.py:mle", ("loss.mle_target_sigma=0.0",
                                         "model.head=logistic_mixture"), "MLE MoL MADE"),
    "pcnn": ("mnist_pixelcnnpp.py:csm", PCNN_CPU, "AR-CSM PixelCNN++"),
    "pcnn_mle": ("mnist_pixelcnnpp.py:mle", PCNN_CPU, "MLE PixelCNN++"),
    "pcnn_joint": ("mnist_pixelcnnpp_joint.py", PCNN_CPU, "AR-CSM PixelCNN++ (smoothed joint)"),
}
# The MLE priors are not noise-conditional: their densities are not smoothed, so the
# annealed schedule (levels 1.0 -> 0.01, steps made for the smoothed levels) does not
# apply, and Langevin or MALA steps from the observation are rejected or explode (the
# conditionals of background pixels have standard deviations near 1e-3). Their sampler is
# exact grid Gibbs at the data level, which needs no step size: 1 sweep over the free
# pixels (the CPU default's 60 minutes; --mle_gauss.restore.gibbs_sweeps=2 for more), each
# pixel drawn from its full conditional on 8 values of the box (-0.2, 0, ..., 1.2).
PRIOR_SAMPLER = {
    "mle_gauss": ("restore.method=gibbs", "restore.gibbs_sweeps=1", "restore.gibbs_values=8"),
    "mle_mol": ("restore.method=gibbs", "restore.gibbs_sweeps=1", "restore.gibbs_values=8"),
}
# A probability-mass prior (the MLE PixelCNN++'s discretized logistic mixture) has no
# density in x: it gets the sequential filter's rows only, on --filter_tasks.
MASS_PRIORS = ("pcnn_mle",)
CIFAR_PRIORS = {"csm": ("cifar10_pixelcnnpp.py:csm", CIFAR_CPU, "AR-CSM PixelCNN++ (per-dim)")}
SR_SIGMA = 0.02
# The sampler at the CPU default (60 minutes for the whole benchmark on 2 cores): 2 chains,
# 4 Langevin steps per level, a 17-node box for the score heads' joint; each is a
# --config.restore.FIELD=value (or --NAME.restore.FIELD=value) away.
RESTORE_CPU = ("restore.chains=2", "restore.steps_per_level=4", "restore.grid_points=17")


def _configs_dir():
  return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def parse_task(task: str):
  """'gaussian_0.3' -> ('gaussian', {'sigma': 0.3}) etc.; one-line error otherwise."""
  kind, _, arg = task.partition("_")
  try:
    if kind == "gaussian":
      return kind, {"sigma": float(arg)}
    if kind == "sp":
      return "salt_pepper", {"p": float(arg)}
    if kind == "inpaint" and arg in obs_lib.MASKS:
      return kind, {"mask": arg}
    if kind == "superres":
      return kind, {"sr_factor": int(arg), "sr_sigma": SR_SIGMA}
  except ValueError:
    pass
  raise SystemExit(f"--tasks: unknown task {task!r}; known: {', '.join(TASKS)} "
                   "(other numbers allowed)")


def observation_for(kind, kw, shape, seed):
  if kind == "gaussian":
    return obs_lib.GaussianNoise(kw["sigma"], shape)
  if kind == "salt_pepper":
    return obs_lib.SaltPepper(kw["p"], shape)
  if kind == "inpaint":
    return obs_lib.Missing(obs_lib.make_mask(kw["mask"], shape, seed), shape)
  return obs_lib.Downsample(kw["sr_factor"], kw["sr_sigma"], shape)


def method_alone(cfg, method):
  """A copy of a prior's config whose restore.method is `method`, with no finishing
  stages (MALA, MH sweeps, Gibbs, MAP), and the observation's start for a method that
  takes no start (restore.init set by flag applies to the sampler rows only)."""
  out = copy.deepcopy(cfg)
  out.restore.method = method
  if method not in posterior.INIT_METHODS:
    out.restore.init = "observation"
  for field in posterior.FINISH_STAGES:
    out.restore[field] = 0
  return out


PROJECT_TASKS = ("salt_pepper", "inpaint", "superres")
# The annealed posterior from the denoise-and-project estimate (restore.init=project):
# WARM_LEVELS levels log-spaced from --warm_start_level down to the prior's last one, the
# CPU default's 4 Langevin steps per level.
WARM_LEVELS = 5
# Its default first level (pixel units): of 0.01, 0.02, 0.03 and 0.05 the one with the
# best mean gain over the seven tasks that pin pixels on held-out images (MNIST
# test[5200:5300], other corruptions, 4 chains), with a 1500-step smoothed
# joint (docs/restoration.md). 0.01 is at the prior's last level (0.01 in its units,
# 0.01004 in pixel units): the chains take their 20 steps there, from the estimate plus
# noise at that level.
PIN_WARM_START = 0.01


# On Gaussian noise the start is the BM3D estimate and the first level GAUSS_WARM_START
# (pixel units): of 0.01, 0.014, 0.02, 0.03, 0.05 and 0.1 the one with the best mean gain
# over BM3D on both noise levels on held-out images (MNIST test[5200:5300], the classical
# restorers' tuning set, never the benchmark's), with a 1500-step smoothed
# joint (docs/restoration.md).
GAUSS_WARM_START = 0.02


def warm_config(cfg, image_per_model, chains, start_level=None, init="project"):
  """A copy of a smoothed-joint prior's config for the annealed posterior started from
  a restoration plus noise at its first level (posterior.py): by default its
  denoise-and-project estimate and restore.project_start; `start_level` in pixel units
  (one at or below the prior's last level puts every level at that one)."""
  out = method_alone(cfg, "annealed")
  rc = out.restore
  s_min = posterior.settings_from_config(cfg).sigma_min
  first = rc.project_start if start_level is None else float(start_level)
  first = max(first / image_per_model, s_min)   # at or below the last level: all at it
  rc.init, rc.num_levels, rc.chains = init, None, int(chains)
  rc.sigmas = tuple(float(s) for s in np.geomspace(first, s_min, WARM_LEVELS))
  return out


def classical_project(denoiser, obs, y, rc):
  """The denoise-and-project loop of restore.method=project (its start, levels and
  projection: config.restore's project_* fields `rc`) with a classical denoiser."""
  fn = {"nl_means": classical.nl_means, "bm3d": classical.bm3d_denoise}[denoiser]
  shape = (len(y),) + tuple(obs.shape)
  levels = project_lib.levels(rc.project_start, rc.project_end, rc.project_levels)
  return project_lib.denoise_and_project(
      lambda u, s: np.asarray(fn(np.asarray(u).reshape(shape), s)).reshape(len(y), -1),
      obs, y.reshape(len(y), -1), project_lib.start_image(obs, y, rc.sp_start), levels)


def per_image_metrics(clean, restored):
  """Per-image PSNR and SSIM (dm-pix, max 1) of (N, H, W, C) images in [0, 1]."""
  import dm_pix  # pylint: disable=g-import-not-at-top
  c = jnp.asarray(clean, jnp.float32)
  r = jnp.clip(jnp.asarray(restored, jnp.float32), 0.0, 1.0)
  return np.asarray(dm_pix.psnr(c, r)), np.asarray(dm_pix.ssim(c, r))


def mean_se(v):
  v = np.asarray(v, np.float64)
  return float(v.mean()), float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else 0.0


class Run:
  """Results, pictures and table of one invocation; results.json written after each row."""

  def __init__(self, args, overrides):
    self.args, self.overrides, self.start = args, overrides, time.perf_counter()
    os.makedirs(args.out, exist_ok=True)
    self.results = {"what": f"{args.dataset} restoration: AR priors' posteriors against "
                            "classical restorers; PSNR (dB), SSIM, classifier accuracy "
                            "(MNIST), seconds per image; mean and standard error over the "
                            "test images",
                    "args": vars(args), "overrides": overrides, "machine": common.machine(),
                    "models": {}, "tasks": {}}
    self.per_image = {}
    self.sp_observed = {}   # task -> its salt-and-pepper observation y (error split)

  def log(self, msg):
    print(f"{time.perf_counter() - self.start:7.1f}s {msg}", flush=True)

  def save(self):
    common.write_results(self.args.out,
                         dict(self.results, seconds=time.perf_counter() - self.start), self.args)

  def record(self, task, name, kind, clean, labels, restored, clf, seconds, extra=None):
    psnr, ssim = per_image_metrics(clean, restored)
    acc = (None if clf is None else
           mean_se((clf.predict(np.clip(restored, 0, 1)) == labels).astype(np.float64)))
    entry = self.results["tasks"][task]["rows"]
    row = {"kind": kind, "psnr": mean_se(psnr), "ssim": mean_se(ssim),
           "accuracy": acc, "seconds_per_image": seconds / len(clean),
           "psnr_per_image": [round(float(v), 4) for v in psnr]}   # pairs across runs
    row.update(extra or {})
    if task in self.sp_observed:   # salt-and-pepper: where the error lies
      split = diagnostics.salt_pepper_error_split(clean, self.sp_observed[task],
                                                  np.clip(restored, 0, 1))
      row["sse_split"] = {k: mean_se(split[k]) for k in diagnostics.SPLIT_PARTS}
      row["sse_split"]["pixels"] = {k: float(np.mean(split["count_" + k]))
                                    for k in diagnostics.SPLIT_PARTS}
    entry[name] = row
    self.per_image.setdefault(task, {})[name] = psnr
    self.log(f"[{task}] {name:34s} PSNR {row['psnr'][0]:6.2f} +- {row['psnr'][1]:.2f}  "
             f"SSIM {row['ssim'][0]:.3f}  "
             + (f"acc {acc[0]:.2f}  " if acc else "")
             + f"{row['seconds_per_image']:.3f} s/img")
    self.save()

  def paired(self, task):
    """Each model row's paired PSNR difference to the task's best classical row."""
    rows = self.results["tasks"][task]["rows"]
    cl = [n for n, r in rows.items() if r["kind"] == "classical"]
    if not cl:
      return
    best = max(cl, key=lambda n: rows[n]["psnr"][0])
    self.results["tasks"][task]["best_classical"] = best
    for n, r in rows.items():
      if r["kind"] in ("posterior", "point", "earlier"):
        r["psnr_minus_best_classical"] = mean_se(self.per_image[task][n]
                                                 - self.per_image[task][best])
    self.save()

  def table(self):
    lines = ["| task | method | PSNR (dB) | SSIM | classifier acc. | s / image | "
             "PSNR - best classical |", "|---|---|---|---|---|---|---|"]
    for task, t in self.results["tasks"].items():
      for n, r in sorted(t["rows"].items(), key=lambda kv: -kv[1]["psnr"][0]):
        d = r.get("psnr_minus_best_classical")
        lines.append(f"| {task} | {n} | {r['psnr'][0]:.2f} ± {r['psnr'][1]:.2f} | "
                     f"{r['ssim'][0]:.3f} | "
                     + (f"{r['accuracy'][0]:.2f}" if r["accuracy"] else "-") + " | "
                     f"{r['seconds_per_image']:.3f} | "
                     + (f"{d[0]:+.2f} ± {d[1]:.2f}" if d else "") + " |")
    split = [(task, n, r["sse_split"]) for task, t in self.results["tasks"].items()
             for n, r in sorted(t["rows"].items(), key=lambda kv: -kv[1]["psnr"][0])
             if "sse_split" in r]
    if split:
      lines += ["", "Salt-and-pepper: each image's squared error (summed over its pixels, image "
                "units) on the corrupted pixels, on the extreme pixels the corruption kept "
                "(true 0 or 255) and on the pinned ones (`csm_jax.restore.diagnostics`)", "",
                "| task | method | corrupted | kept extreme | pinned |", "|---|---|---|---|---|"]
      shown = set()
      for task, n, sp in split:
        if task not in shown:   # the sets' sizes, once per task
          shown.add(task)
          lines.append(f"| {task} | (pixels per image) | " + " | ".join(
              f"{sp['pixels'][k]:.1f}" for k in diagnostics.SPLIT_PARTS) + " |")
        lines.append(f"| {task} | {n} | " + " | ".join(
            f"{sp[k][0]:.3f} ± {sp[k][1]:.3f}" for k in diagnostics.SPLIT_PARTS) + " |")
    atomic.write_text(os.path.join(self.args.out, "table.md"), "\n".join(lines) + "\n")


def load_prior(run, name, args, overrides, train_arrays):
  cifar = args.dataset == "cifar10"
  path, extra, label = (CIFAR_PRIORS if cifar else PRIOR_CONFIGS)[name]
  # the CIFAR-10 and PixelCNN++ CPU sizes are the prior's `extra`
  cpu = () if cifar or name.startswith("pcnn") else CPU
  wd = getattr(args, f"{name}_workdir")
  if wd:
    model, params, cfg, info = common.train_or_restore(name, None, args.out, run.log, wd)
    cfg = common.apply(cfg, list(RESTORE_CPU) + list(PRIOR_SAMPLER.get(name, ()))
                       + overrides["config"] + overrides[name])
  else:
    cfg = config_base.load_config(os.path.join(_configs_dir(), path))
    cfg = common.apply(cfg, list(cpu) + list(RESTORE_CPU) + list(PRIOR_SAMPLER.get(name, ()))
                       + list(extra) + [f"training.num_steps={args.steps}",
                                        f"training.log_every={max(1, args.steps // 5)}"])
    cfg = common.apply(cfg, overrides["config"] + overrides[name])
    model, params, cfg, info = common.train_or_restore(name, cfg, args.out, run.log, None,
                                                       train_arrays)
  run.results["models"][name] = dict(info, label=label, config=cfg.to_dict())
  run.save()
  # each prior's own pixel space (PixelCNN++: [-1, 1], the MLE one not dequantized)
  return model, params, cfg, label, data_lib.get_preprocessor(cfg.data, train_arrays)


def run(args, overrides):
  r = Run(args, overrides)
  tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
  parsed = {t: parse_task(t) for t in tasks}
  skip = {t.strip() for t in args.skip_tasks.split(",") if t.strip()}
  if skip - set(tasks):
    raise SystemExit(f"--skip_tasks: {', '.join(sorted(skip - set(tasks)))} not in --tasks "
                     f"({', '.join(tasks)})")
  priors = [p.strip() for p in args.priors.split(",") if p.strip()]
  available = DEFAULTS[args.dataset]["available"]
  unknown = set(priors) - set(available)
  if unknown:
    raise SystemExit(f"--priors: {', '.join(sorted(unknown))} not available for "
                     f"--dataset {args.dataset}; available: {', '.join(available)}")
  if args.dataset == "cifar10" and ({k for k, _ in parsed.values()} - {"gaussian",
                                                                      "salt_pepper"}):
    raise SystemExit("--tasks: CIFAR-10 runs the noise tasks (gaussian_S, sp_P) only")

  filter_tasks = set() if args.filter_tasks.strip() in ("", "none") else {
      t.strip() for t in args.filter_tasks.split(",") if t.strip()}
  unknown = filter_tasks - set(tasks) - set(TASKS)
  if unknown:
    raise SystemExit(f"--filter_tasks: unknown {', '.join(sorted(unknown))}; tasks: "
                     f"{', '.join(TASKS)}")
  filter_tasks -= skip   # a skipped task needs no filter (nor its mass level)
  if args.warm_chains < 0:
    raise SystemExit(f"--warm_chains must be >= 0, got {args.warm_chains}")
  if args.image_offset < 0:
    raise SystemExit(f"--image_offset must be >= 0, got {args.image_offset}")
  if args.warm_start_level is None:
    args.warm_start_level = PIN_WARM_START
  if not args.warm_start_level > 0:
    raise SystemExit(f"--warm_start_level must be > 0, got {args.warm_start_level}")
  if args.filter_chains < 1:
    raise SystemExit(f"--filter_chains must be >= 1, got {args.filter_chains}")
  mass_sigma = args.filter_mass_sigma.strip().lower()
  if mass_sigma not in ("none", "auto"):
    try:
      mass_sigma = float(mass_sigma)
    except ValueError:
      mass_sigma = -1.0
    if not mass_sigma > 0:
      raise SystemExit(f"--filter_mass_sigma must be 'none', 'auto' or a level > 0, got "
                       f"{args.filter_mass_sigma!r}")
  if args.mass_sigma_images < 1:
    raise SystemExit(f"--mass_sigma_images must be >= 1, got {args.mass_sigma_images}")

  path, data_overrides = BASE[args.dataset]
  base = config_base.load_config(os.path.join(_configs_dir(), path))
  base = common.apply(base, list(data_overrides) + overrides["config"])
  arrays = data_lib.load_arrays(base.data)
  shape = tuple(arrays.shape)
  n, first = args.num_images, args.image_offset
  if n < 2 or n > len(arrays.test):
    raise SystemExit(f"--num_images must be in [2, {len(arrays.test)}], got {n}")
  if first < 0 or first + n > len(arrays.test):
    raise SystemExit(f"--image_offset must be in [0, {len(arrays.test) - n}] for "
                     f"--num_images {n} ({len(arrays.test)} test images), got {first}")
  clf = labels = None
  if args.dataset == "mnist":
    train_labels, test_labels = tfds_source.load_tfds_labels(base.data, "mnist")
    clf = iq.train_classifier(arrays.train, train_labels, arrays.test, test_labels,
                              seed=args.seed, steps=args.classifier_steps,
                              cache_dir=os.path.join(args.out, "classifier"), log=r.log)
    r.results["classifier"] = clf.info
    labels = np.asarray(test_labels[first:first + n])
  clean = arrays.test[first:first + n].astype(np.float32) / 255.0   # image units: pixel / 255

  models = {}
  for name in priors:
    models[name] = load_prior(r, name, args, overrides, arrays)
    model, params, cfg, label, prior_pre = models[name]
    # the prior as the filter sees it: its discrete NLL of the clean test images on the
    # lattice of pixel values, at the sampler's last level
    t0 = time.perf_counter()
    bpd = filter_lib.lattice_bits_per_dim(
        model, params, clean, obs_lib.PixelSpace.from_preprocessor(prior_pre),
        posterior.settings_from_config(cfg).sigma_min)
    r.results["models"][name]["lattice_bits_per_dim"] = bpd
    r.save()
    r.log(f"[{name}] lattice bits/dim of the {n} clean test images: {bpd:.4f} "
          f"({time.perf_counter() - t0:.0f}s)")
    uses_filter = (bool(filter_tasks & set(tasks))
                   or cfg.restore.method in ("filter", "smc"))
    if (uses_filter and mass_sigma != "none" and not model.normalized
        and name not in MASS_PRIORS):
      space = obs_lib.PixelSpace.from_preprocessor(prior_pre)
      s_min = posterior.settings_from_config(cfg).sigma_min
      info = {"requested": mass_sigma}
      if mass_sigma == "auto":   # chosen on training images, never the test images
        t0 = time.perf_counter()
        chosen, table = filter_lib.select_mass_sigma(
            model, params,
            arrays.train[:args.mass_sigma_images].astype(np.float32) / 255.0, space, s_min,
            noise_lib.sigmas_from_config(cfg.noise))
        info.update(chosen=chosen, train_bits_per_dim=table)
        r.log(f"[{name}] filter side masses from level {chosen} (lattice bits/dim of "
              f"{args.mass_sigma_images} training images: " + ", ".join(f"{k} {v:.3f}" for k, v in table.items())
              + f"; {time.perf_counter() - t0:.0f}s)")
      else:
        info["chosen"] = mass_sigma
      if info["chosen"] is not None:
        info["test_bits_per_dim"] = filter_lib.lattice_bits_per_dim(
            model, params, clean, space, s_min, mass_sigma=info["chosen"])
      r.results["models"][name]["filter_mass_sigma"] = info
      r.save()
      cfg.restore.filter_mass_sigma = info["chosen"]
    if name in MASS_PRIORS and not filter_tasks & set(tasks):
      r.log(f"[{name}] a probability-mass prior has filter rows only, and no task of "
            f"--tasks is in --filter_tasks: it restores nothing")

  # the denoise-and-project control runs the loop the smoothed-joint prior runs (its
  # restore.project_* levels and sp_start, which a --joint_workdir's config may hold):
  # the first such prior's settings, else the base config's
  control_rc = next((m[2].restore for m in models.values()
                     if getattr(m[0], "context_sigma", False)), base.restore)
  for ti, task in enumerate(tasks):
    if task in skip:
      continue
    kind, kw = parsed[task]
    obs = observation_for(kind, kw, shape, args.seed)
    y = obs.corrupt(args.seed + 1000 * ti, clean)
    r.results["tasks"][task] = {"task": kind, "settings": kw, "num_images": n, "rows": {}}
    if kind == "salt_pepper":
      r.sp_observed[task] = y
    show = {"truth": clean[:args.num_show]}
    if kind == "superres":
      up = np.repeat(np.repeat(y, kw["sr_factor"], 1), kw["sr_factor"], 2)
      show["observed (nearest)"] = np.clip(up[:args.num_show], 0, 1)
    else:
      show["corrupted"] = np.clip(y[:args.num_show], 0, 1)
      r.record(task, "corrupted", "input", clean, labels, np.clip(y, 0, 1), clf, 0.0)

    mask = obs.mask[..., 0] if kind == "inpaint" else None   # (H, W): one channel
    rest = classical.restorers_for(kind, sigma=kw.get("sigma"), p=kw.get("p"), mask=mask,
                                   factor=kw.get("sr_factor"))
    classical_out = {}
    for cname, fn in rest.items():
      t0 = time.perf_counter()
      out = np.asarray(fn(y), np.float32).reshape(clean.shape)
      classical_out[cname] = (out, time.perf_counter() - t0)
      r.record(task, cname, "classical", clean, labels, out, clf, classical_out[cname][1])
      show[cname] = out[:args.num_show]
    projects = kind in PROJECT_TASKS and args.dataset == "mnist"
    if projects and args.project_control != "none":
      # the control of the denoise-and-project rows: the same loop, a classical denoiser
      t0 = time.perf_counter()
      out = classical_project(args.project_control, obs, y, control_rc).reshape(clean.shape)
      cname = f"{args.project_control} denoise-and-project"
      r.record(task, cname, "classical", clean, labels, out, clf, time.perf_counter() - t0,
               {"settings": {f: control_rc[f] for f in ("project_start", "project_end",
                                                        "project_levels", "sp_start")}})
      show[cname] = out[:args.num_show]

    for name, (model, params, cfg, label, prior_pre) in models.items():
      ipm = obs_lib.PixelSpace.from_preprocessor(prior_pre).image_per_model   # warm rows
      prior_obs = obs   # the task fixes the corruption; restore.sp_tau only the likelihood
      if kind == "salt_pepper" and cfg.restore.sp_tau is not None:
        prior_obs = dataclasses.replace(obs, tau=float(cfg.restore.sp_tau))
      if name not in MASS_PRIORS and args.annealed:
        res = posterior.restore(model, params, cfg, y, kind,
                                jax.random.PRNGKey(args.seed + ti), preprocessor=prior_pre,
                                observation=prior_obs, log=r.log)
        extra = {"settings": res["settings"], "mala_accept": res["accept"]}
        if kind == "salt_pepper":
          extra["sp_window"] = prior_obs.window   # the likelihood's bin window (sp_tau)
        for part in ("mean", "sample"):
          out = res[part].reshape(clean.shape)
          r.record(task, f"{label}, posterior {part}", "posterior", clean, labels, out, clf,
                   res["seconds"], extra)
          show[f"{name} {part}"] = out[:args.num_show]
      if name not in MASS_PRIORS:
        if kind == "gaussian" and getattr(model, "context_sigma", False):
          # a smoothed-joint prior: Tweedie's posterior mean, one gradient of its joint
          res = posterior.restore(model, params, method_alone(cfg, "tweedie"), y, kind,
                                  jax.random.PRNGKey(args.seed + ti), preprocessor=prior_pre,
                                  observation=obs, log=r.log)
          out = res["mean"].reshape(clean.shape)
          r.record(task, f"{label}, Tweedie posterior mean", "posterior", clean, labels, out,
                   clf, res["seconds"], {"settings": res["settings"]})
          show[f"{name} Tweedie"] = out[:args.num_show]
          if args.warm_chains and "bm3d" in classical_out:
            # its annealed posterior from the BM3D estimate (start=), from GAUSS_WARM_START
            bm3d_out, bm3d_s = classical_out["bm3d"]
            wcfg = warm_config(cfg, ipm, args.warm_chains, GAUSS_WARM_START, "classical")
            res = posterior.restore(model, params, wcfg, y, kind,
                                    jax.random.PRNGKey(args.seed + ti), preprocessor=prior_pre,
                                    observation=obs, start=np.clip(bm3d_out, 0.0, 1.0),
                                    log=r.log)
            for part in ("mean", "sample"):   # its time includes BM3D's
              out = res[part].reshape(clean.shape)
              r.record(task, f"{label}, posterior {part}, annealed from bm3d", "posterior",
                       clean, labels, out, clf, bm3d_s + res["seconds"],
                       {"settings": res["settings"], "start_level": GAUSS_WARM_START})
              show[f"{name} warm {part}"] = out[:args.num_show]

      if projects and getattr(model, "context_sigma", False):
        # a smoothed-joint prior: its Tweedie denoiser in the denoise-and-project loop
        res = posterior.restore(model, params, method_alone(cfg, "project"), y, kind,
                                jax.random.PRNGKey(args.seed + ti), preprocessor=prior_pre,
                                observation=obs, log=r.log)
        out, project_s = res["mean"].reshape(clean.shape), res["seconds"]
        start = project_lib.start_name(obs, cfg.restore.sp_start)
        r.record(task, f"{label}, denoise-and-project from {start}", "point", clean, labels,
                 out, clf, res["seconds"], {"settings": res["settings"]})
        show[f"{name} project"] = out[:args.num_show]
        if args.warm_chains:   # from the estimate just computed (restore.init=project)
          wcfg = warm_config(cfg, ipm, args.warm_chains, args.warm_start_level)
          res = posterior.restore(model, params, wcfg, y, kind,
                                  jax.random.PRNGKey(args.seed + ti),
                                  preprocessor=prior_pre, observation=obs, start=out,
                                  log=r.log)
          for part in ("mean", "sample"):   # its time includes the estimate's
            out = res[part].reshape(clean.shape)
            r.record(task, f"{label}, posterior {part}, annealed from denoise-and-project",
                     "posterior", clean, labels, out, clf, project_s + res["seconds"],
                     {"settings": res["settings"], "start_level": args.warm_start_level})
            show[f"{name} warm {part}"] = out[:args.num_show]

      if task in filter_tasks:
        fcfg = method_alone(cfg, "filter")   # the filter alone: its Rao-Blackwellized mean
        fcfg.restore.chains = int(args.filter_chains)
        if name in MASS_PRIORS or model.normalized:
          fcfg.restore.filter_mass_sigma = None   # one level only: nothing to reweight
        res = posterior.restore(model, params, fcfg, y, kind,
                                jax.random.PRNGKey(args.seed + ti), preprocessor=prior_pre,
                                observation=obs, log=r.log)
        for part in ("mean", "sample"):
          out = res[part].reshape(clean.shape)
          r.record(task, f"{label}, filter {part}", "posterior", clean, labels, out, clf,
                   res["seconds"], {"settings": res["settings"]})
          show[f"{name} filter {part}"] = out[:args.num_show]

    if args.earlier and "csm" in models and kind in ("gaussian", "salt_pepper"):
      model, params, cfg, _, csm_pre = models["csm"]
      space = obs_lib.PixelSpace.from_preprocessor(csm_pre)
      yx = jnp.asarray(np.asarray(space.from_image(jnp.asarray(y.reshape(n, -1)))))
      to_img = lambda x: np.clip(np.asarray(space.to_image(x)), 0, 1).reshape(clean.shape)
      if kind == "gaussian":
        sig_model = kw["sigma"] / space.image_per_model
        for ar in (True, False):
          t0 = time.perf_counter()
          out = to_img(denoise.make_tweedie_denoiser(model, sig_model, ar)(params, yx))
          nm = f"AR-CSM Tweedie {'autoregressive' if ar else 'all at once'}"
          r.record(task, nm, "earlier", clean, labels, out, clf, time.perf_counter() - t0)
          show[nm] = out[:args.num_show]
        start = sig_model
      else:
        start = args.sp_start_sigma
      t0 = time.perf_counter()
      restore_fn, opt = denoise.restorer_from_config(cfg, model, start)
      out = to_img(restore_fn(params, jax.random.PRNGKey(args.seed + 7), yx))
      r.record(task, "AR-CSM Langevin from corrupted", "earlier", clean, labels, out, clf,
               time.perf_counter() - t0, {"start_sigma": float(start)})
      show["AR-CSM Langevin"] = out[:args.num_show]

    r.paired(task)
    r.table()
    plotting.save_image_rows(os.path.join(args.out, f"{task}.png"), show,
                             f"{'MNIST' if args.dataset == 'mnist' else 'CIFAR-10'}, {task}")
  r.log(f"done; table in {os.path.join(args.out, 'table.md')}")
  return r.results


def main(argv=None):
  return run(*parse_args(argv))


if __name__ == "__main__":
  main()
