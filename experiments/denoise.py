"""Denoising with AR-CSM against classical filters and the MLE MADE (paper Sec. 5.4, Fig. 5).

Settings (--settings, comma-separated):

  mnist_gaussian  MNIST test images in [0, 1] (configs/mnist_denoise.py) + N(0, 0.6^2):
                  the AR-CSM's single-step Tweedie denoiser (autoregressive, and all at
                  once with the noisy context), its Langevin restoration from sigma = 0.6,
                  the MLE Gaussian MADE fit to noisy targets (same Tweedie steps with its
                  exact score), a Gaussian blur (width chosen on held-out training images)
                  and the best linear (Wiener) estimate from the training covariance.
  mnist_sp        MNIST with 10% salt-and-pepper noise: the AR-CSM's Langevin
                  restoration (start level chosen on held-out training images from
                  --start_sigmas) against a 3x3 median filter.
  cifar_sp        the paper's setting, CIFAR-10 with 10% salt-and-pepper noise and a
                  PixelCNN++ AR-CSM (configs/cifar10_pixelcnnpp.py; CPU-sized on the
                  offline subset unless --cifar_csm_workdir names a trained run).

Models are trained here (in OUT/models/NAME, resumed by a rerun) with CPU-sized defaults,
or read from work directories of `python -m csm_jax.main` (--csm_workdir, --mle_workdir,
--cifar_csm_workdir). --csm.FIELD=value / --mle.FIELD=value / --cifar.FIELD=value set
config fields of one model. Writes results.json after every stage (PSNR / SSIM from
dm-pix, mean and std over the test images) and one PNG per setting: clean / corrupted /
each restoration.

  python -m experiments.denoise --out /tmp/denoise
"""

import os
import time

from experiments import common


def parse_args(argv=None):
  p = common.parser(__doc__.split("\n\n")[0], ("config", "csm", "mle", "cifar"))
  p.add_argument("--out", required=True, help="output directory")
  p.add_argument("--settings", default="mnist_gaussian,mnist_sp",
                 help="comma-separated: mnist_gaussian, mnist_sp, cifar_sp")
  p.add_argument("--num_images", type=int, default=100, help="test images per setting")
  p.add_argument("--num_heldout", type=int, default=32,
                 help="held-out training images that choose the blur width / start level")
  p.add_argument("--holdout", type=int, default=1000,
                 help="training images kept out of training (the held-out pool)")
  p.add_argument("--sigma", type=float, default=0.6, help="Gaussian noise, [0, 1] scale")
  p.add_argument("--sp_rate", type=float, default=0.1, help="salt-and-pepper rate p")
  p.add_argument("--start_sigmas", default="0.03,0.06,0.1,0.2,0.36,0.6",
                 help="candidate starting levels of the salt-and-pepper Langevin "
                      "restoration (chosen on held-out images; the nearest trained levels)")
  p.add_argument("--num_steps", type=int, default=None,
                 help="Langevin steps per level (default: the model config's sampling)")
  p.add_argument("--step_lr", type=float, default=None,
                 help="Langevin step at the last level (default: the model config's)")
  p.add_argument("--csm_workdir", default=None,
                 help="trained MNIST AR-CSM run of csm_jax.main to restore (default: train one)")
  p.add_argument("--mle_workdir", default=None,
                 help="trained MNIST MLE run of csm_jax.main to restore (default: train one)")
  p.add_argument("--cifar_csm_workdir", default=None,
                 help="trained CIFAR-10 AR-CSM run (cifar_sp; default: train one)")
  p.add_argument("--paper_size", action="store_true",
                 help="train the configs' own (paper-size) models, not the CPU-sized ones")
  p.add_argument("--num_show", type=int, default=8, help="images per row of the figures")
  p.add_argument("--params", choices=tuple(common.PARAMS), default="ema",
                 help="EMA parameters, or the raw last iterate (short runs trained with a "
                      "long EMA horizon, which still remembers the initialization)")
  p.add_argument("--seed", type=int, default=0, help="random seed")
  return common.parse(p, argv, prefixes=("config", "csm", "mle", "cifar"))


common.parse_early(__name__, parse_args)  # --help and flag errors before JAX loads

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from csm_jax import config_base  # noqa: E402
from csm_jax import data as data_lib  # noqa: E402
from csm_jax import denoise  # noqa: E402
from csm_jax import noise as noise_lib  # noqa: E402
from csm_jax import plotting  # noqa: E402


CIFAR_NPZ = common.CIFAR_NPZ  # $CSM_DATA_DIR (default ./data), docs/usage.md
# CPU-sized defaults (each overridable with --csm.FIELD= etc.)
MNIST_CPU = ("model.hidden_sizes=(512, 512)", "model.context_size=8",
             "training.num_steps=1500",
             "training.batch_size=64", "training.log_every=200", "training.eval_every=0",
             "training.checkpoint_every=500", "optim.warmup_steps=100",
             "optim.ema_decay=0.99")
CIFAR_CPU = ("data.source=npz", f"data.path={CIFAR_NPZ[0]}", f"data.test_path={CIFAR_NPZ[1]}",
             "model.nr_filters=16", "model.nr_resnet=1", "model.dropout_rate=0.0",
             "training.batch_size=8", "training.num_steps=400", "training.log_every=50",
             "training.eval_every=0", "training.checkpoint_every=100",
             "optim.warmup_steps=20", "optim.ema_decay=0.99")


def _config(path, variant, cpu, args, overrides, name):
  config = config_base.load_config(f"{path}:{variant}")
  if not args.paper_size:
    config = common.apply(config, list(cpu))
  return common.apply(config, overrides["config"] + overrides[name])


def _images(pre, y, shape):
  return pre.to_display(np.asarray(y)).reshape((-1,) + tuple(shape))


class Run:
  """Results, figures and the log of one invocation; JSON written after each stage."""

  def __init__(self, args, overrides):
    self.args, self.start = args, time.perf_counter()
    os.makedirs(args.out, exist_ok=True)
    self.results = {"what": "denoising (Meng et al. 2020, Sec. 5.4, Fig. 5): PSNR (dB) and "
                            "SSIM against the clean images, mean and std over images",
                    "args": vars(args), "overrides": overrides, "machine": common.machine(),
                    "models": {}, "settings": {}}

  def log(self, msg):
    print(f"{time.perf_counter() - self.start:7.1f}s {msg}", flush=True)

  def save(self):
    common.write_results(self.args.out,
                         dict(self.results, seconds=time.perf_counter() - self.start), self.args)

  def record(self, setting, method, clean, restored, extra=None):
    m = denoise.image_metrics(clean, restored)
    entry = self.results["settings"].setdefault(setting, {"methods": {}})
    entry["methods"][method] = dict(m, **(extra or {}))
    self.log(f"[{setting}] {method:28s} PSNR {m['psnr']:6.2f} dB  SSIM {m['ssim']:.3f}")
    self.save()


def _split(arrays, holdout):
  n = len(arrays.train) - holdout
  if n <= 0:
    raise ValueError(f"--holdout {holdout} leaves no training images")
  return arrays._replace(train=arrays.train[:n]), arrays.train[n:]


def _choose_start(run, restorer_for, model_params, y_held, clean_held, candidates, pre, shape,
                  key):
  """The candidate start level of highest PSNR on held-out images."""
  scores = {}
  for s in candidates:
    out = restorer_for(s)(model_params, key, y_held)
    scores[s] = denoise.image_metrics(clean_held, _images(pre, out, shape))["psnr"]
  best = max(scores, key=scores.get)
  run.log(f"start level by held-out PSNR: {best} ({ {k: round(v, 2) for k, v in scores.items()} })")
  return best, scores


def mnist_settings(run, args, overrides, settings):
  csm_cfg = _config("mnist_denoise", "csm", MNIST_CPU, args, overrides, "csm")
  mle_cfg = _config("mnist_denoise", "mle", MNIST_CPU, args, overrides, "mle")
  arrays = data_lib.load_arrays(csm_cfg.data)
  train_arrays, held = _split(arrays, args.holdout)
  pre = data_lib.get_preprocessor(csm_cfg.data, arrays)
  shape = arrays.shape
  models = {}
  for name, cfg, wd in (("csm", csm_cfg, args.csm_workdir), ("mle", mle_cfg, args.mle_workdir)):
    if name == "mle" and "mnist_gaussian" not in settings:
      continue
    model, params, cfg, info = common.train_or_restore(f"mnist_{name}", cfg, args.out, run.log,
                                                       wd, train_arrays, args.params)
    models[name] = (model, params, cfg)
    run.results["models"][f"mnist_{name}"] = dict(info, config=cfg.to_dict())
    run.save()
  if (pre.scale, pre.logit_lambda) != ("unit", 0.0):
    raise ValueError("MNIST denoising works in the [0, 1] pixel scale: data.scale='unit', "
                     "data.logit_lambda=0")
  n, nh = args.num_images, args.num_heldout
  clean_y = pre(arrays.test[:n])                    # bin centres (x + 1/2) / 256
  held_y = pre(held[:nh])
  clean, clean_held = _images(pre, clean_y, shape), _images(pre, held_y, shape)
  key = jax.random.PRNGKey(args.seed)
  k_noise, k_held, k_sp, k_sph, k_lang = jax.random.split(key, 5)
  csm_model, csm_params, csm_c = models["csm"]
  sigmas = [float(v) for v in noise_lib.sigmas_from_config(csm_c.noise)]

  if "mnist_gaussian" in settings:
    s = "mnist_gaussian"
    run.results["settings"][s] = {"corruption": f"x + N(0, {args.sigma}^2) in [0, 1]",
                                  "num_images": n, "methods": {}}
    y = denoise.gaussian_noise(k_noise, jnp.asarray(clean_y), args.sigma)
    y_held = denoise.gaussian_noise(k_held, jnp.asarray(held_y), args.sigma)
    rows = {"clean": clean, "noisy": _images(pre, y, shape)}
    run.record(s, "noisy input", clean, rows["noisy"])
    width = denoise.best_blur_width(clean_held, _images(pre, y_held, shape))
    blur = denoise.gaussian_blur(np.asarray(y).reshape((-1,) + shape), width)
    run.record(s, "gaussian blur", clean, blur, {"width": width})
    rows["gaussian blur"] = blur
    lin = denoise.linear_posterior_mean(pre(train_arrays.train[:20000]), y, args.sigma)
    run.record(s, "linear (Wiener)", clean, _images(pre, lin, shape))
    rows["wiener"] = _images(pre, lin, shape)
    for name in ("csm", "mle"):
      model, params, _ = models[name]
      label = "AR-CSM" if name == "csm" else "MLE MADE"
      for ar in (True, False):
        t0 = time.perf_counter()
        out = denoise.make_tweedie_denoiser(model, args.sigma, ar)(params, y)
        img = _images(pre, out, shape)
        tag = f"{label} tweedie {'autoregressive' if ar else 'all-at-once'}"
        run.record(s, tag, clean, img, {"seconds": time.perf_counter() - t0})
        rows[tag.replace(" tweedie", "").replace("autoregressive", "AR")] = img
    t0 = time.perf_counter()
    restore, opt = denoise.restorer_from_config(csm_c, csm_model, args.sigma,
                                                num_steps=args.num_steps, step_lr=args.step_lr)
    img = _images(pre, restore(csm_params, k_lang, y), shape)
    run.record(s, "AR-CSM langevin", clean, img, dict(opt, seconds=time.perf_counter() - t0))
    rows["AR-CSM langevin"] = img
    plotting.save_image_rows(os.path.join(args.out, f"{s}.png"),
                             {k: v[:args.num_show] for k, v in rows.items()},
                             f"MNIST, Gaussian noise sigma={args.sigma} in [0, 1]")

  if "mnist_sp" in settings:
    s = "mnist_sp"
    run.results["settings"][s] = {"corruption": f"salt-and-pepper p={args.sp_rate} to 0 / 1 "
                                                "in [0, 1] (bin centres 1/512, 511/512 for "
                                                "clean pixels)",
                                  "num_images": n, "methods": {}}
    y, _ = denoise.salt_and_pepper(k_sp, jnp.asarray(clean_y), args.sp_rate, 0.0, 1.0)
    y_held, _ = denoise.salt_and_pepper(k_sph, jnp.asarray(held_y), args.sp_rate, 0.0, 1.0)
    rows = {"clean": clean, "noisy": _images(pre, y, shape)}
    run.record(s, "noisy input", clean, rows["noisy"])
    med = denoise.median_filter(np.asarray(y).reshape((-1,) + shape))
    run.record(s, "median 3x3", clean, med)
    rows["median 3x3"] = med
    _langevin_sp(run, s, args, csm_model, csm_params, csm_c, sigmas, y, y_held, clean,
                 clean_held, pre, shape, k_lang, rows)
    plotting.save_image_rows(os.path.join(args.out, f"{s}.png"),
                             {k: v[:args.num_show] for k, v in rows.items()},
                             f"MNIST, salt-and-pepper p={args.sp_rate}")


def _langevin_sp(run, s, args, model, params, config, sigmas, y, y_held, clean, clean_held,
                 pre, shape, key, rows):
  cands = sorted({min(sigmas, key=lambda v: abs(np.log(v / float(c))))
                  for c in args.start_sigmas.split(",")}, reverse=True)
  restorers = {c: denoise.restorer_from_config(config, model, c, num_steps=args.num_steps,
                                               step_lr=args.step_lr) for c in cands}
  k_held, k_test = jax.random.split(key)
  best, scores = _choose_start(run, lambda c: restorers[c][0], params, y_held, clean_held,
                               cands, pre, shape, k_held)
  t0 = time.perf_counter()
  img = _images(pre, restorers[best][0](params, k_test, y), shape)
  run.record(s, "AR-CSM langevin", clean, img,
             dict(restorers[best][1], seconds=time.perf_counter() - t0,
                  heldout_psnr_by_start={str(k): v for k, v in scores.items()}))
  rows["AR-CSM langevin"] = img


def cifar_setting(run, args, overrides):
  s = "cifar_sp"
  cfg = _config("cifar10_pixelcnnpp", "csm", CIFAR_CPU, args, overrides, "cifar")
  arrays = data_lib.load_arrays(cfg.data)
  nh = args.num_heldout
  train_arrays, held = _split(arrays, max(nh, min(args.holdout, len(arrays.train) // 10)))
  model, params, cfg, info = common.train_or_restore("cifar_csm", cfg, args.out, run.log,
                                                     args.cifar_csm_workdir, train_arrays,
                                                     args.params)
  run.results["models"]["cifar_csm"] = dict(info, config=cfg.to_dict())
  pre = data_lib.get_preprocessor(cfg.data, arrays)
  lo, hi = (-1.0, 1.0) if pre.scale == "symmetric" else (0.0, 1.0)
  if pre.logit_lambda:
    raise ValueError("salt-and-pepper restoration needs a model without the logit transform")
  shape = arrays.shape
  n = min(args.num_images, len(arrays.test))
  clean_y, held_y = pre(arrays.test[:n]), pre(held[:nh])
  clean, clean_held = _images(pre, clean_y, shape), _images(pre, held_y, shape)
  k_sp, k_sph, k_lang = jax.random.split(jax.random.PRNGKey(args.seed + 1), 3)
  run.results["settings"][s] = {"corruption": f"salt-and-pepper p={args.sp_rate} to the "
                                              f"extremes {lo} / {hi} of the model's scale",
                                "num_images": n, "methods": {}}
  y, _ = denoise.salt_and_pepper(k_sp, jnp.asarray(clean_y), args.sp_rate, lo, hi)
  y_held, _ = denoise.salt_and_pepper(k_sph, jnp.asarray(held_y), args.sp_rate, lo, hi)
  rows = {"clean": clean, "noisy": _images(pre, y, shape)}
  run.record(s, "noisy input", clean, rows["noisy"])
  med = denoise.median_filter(np.asarray(pre.to_display(np.asarray(y))).reshape((-1,) + shape))
  run.record(s, "median 3x3", clean, med)
  rows["median 3x3"] = med
  sigmas = [float(v) for v in noise_lib.sigmas_from_config(cfg.noise)]
  _langevin_sp(run, s, args, model, params, cfg, sigmas, y, y_held, clean, clean_held, pre,
               shape, k_lang, rows)
  plotting.save_image_rows(os.path.join(args.out, f"{s}.png"),
                           {k: v[:args.num_show] for k, v in rows.items()},
                           f"CIFAR-10, salt-and-pepper p={args.sp_rate}")


def run(args, overrides):
  r = Run(args, overrides)
  settings = [s.strip() for s in args.settings.split(",") if s.strip()]
  unknown = set(settings) - {"mnist_gaussian", "mnist_sp", "cifar_sp"}
  if unknown:
    raise SystemExit(f"--settings: unknown {sorted(unknown)}; known: mnist_gaussian, "
                     "mnist_sp, cifar_sp")
  if {"mnist_gaussian", "mnist_sp"} & set(settings):
    mnist_settings(r, args, overrides, settings)
  if "cifar_sp" in settings:
    cifar_setting(r, args, overrides)
  r.save()
  r.log("summary (PSNR dB / SSIM):")
  for s, e in r.results["settings"].items():
    for m, v in e["methods"].items():
      r.log(f"  {s:15s} {m:32s} {v['psnr']:6.2f} / {v['ssim']:.3f}")
  return r.results


def main(argv=None):
  return run(*parse_args(argv))


if __name__ == "__main__":
  main()
