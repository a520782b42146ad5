"""`python -m csm_jax.main --mode=restore`: corrupt held-out test images as config.restore
says, restore them with the workdir's model as the prior, and write a picture and a
JSON of metrics (PSNR of the corrupted input, posterior mean, sample, MAP) atomically
into workdir/restore/."""

import json
import math
import os
from typing import Callable

from absl import logging
import jax
import numpy as np

from csm_jax import config_base
from csm_jax import plotting
from csm_jax import workdir as workdir_lib
from csm_jax.restore import observations as obs_lib
from csm_jax.restore import posterior


def psnr(a, b) -> np.ndarray:
  """Per-image PSNR (dB) of images in [0, 1], (N,)."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  mse = ((a - b) ** 2).reshape(len(a), -1).mean(-1)
  return 10.0 * np.log10(1.0 / np.maximum(mse, 1e-12))


def _stats(v):
  v = np.asarray(v, np.float64)
  se = float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else float("nan")
  return {"mean": float(v.mean()), "stderr": se}


def _atomic(path, write):
  tmp = path + ".tmp" + os.path.splitext(path)[1]
  write(tmp)
  os.replace(tmp, path)


def restore_workdir(config, workdir: str, log: Callable[[str], None] = logging.info) -> dict:
  """Restores config.restore.num_images test images; returns the metrics dict."""
  from csm_jax import inference  # pylint: disable=g-import-not-at-top  (heavy)
  workdir_lib.require_checkpoints(workdir)
  out_dir = os.path.join(workdir, "restore")
  workdir_lib.check_writable(out_dir)
  inf = inference.build(config)
  if inf.model.kind == "mass":
    raise config_base.ConfigError("model.head: a discrete (probability mass) head cannot be "
                                  "a restoration prior; use a score or density head")
  if not inf.arrays.discrete:
    raise config_base.ConfigError("data.dataset: --mode=restore needs image data (pixels)")
  params, step = inference.restore(inf, workdir)
  rc = config.restore
  shape = tuple(inf.arrays.shape)
  truth = np.asarray(inf.arrays.test[:rc.num_images], np.float64) / 255.0
  obs = obs_lib.from_config(rc, shape, mask_rng=rc.mask_seed)
  y = obs.corrupt(config.seed + 30_000, truth)
  res = posterior.restore(inf.model, params, config, y, rng=jax.random.PRNGKey(config.seed + 31_000),
                          preprocessor=inf.pre, observation=obs, log=log)
  metrics = {"step": step, "task": rc.task, "num_images": len(truth),
             "seconds": res["seconds"], "seconds_per_image": res["seconds"] / len(truth),
             "mala_accept": res["accept"], "settings": res["settings"],
             "observation": {k: rc[k] for k in ("sigma", "p", "sp_tau", "mask", "sr_factor",
                                                "sr_sigma")}}
  rows = {"truth": truth}
  if y.shape == truth.shape:
    metrics["psnr_corrupted"] = _stats(psnr(y.clip(0, 1), truth))
    rows["corrupted"] = y
  else:   # super-resolution: show y upsampled
    rows["corrupted"] = np.asarray(obs.init_image(y)).reshape(truth.shape)
  for key in ("mean", "sample", "map"):
    if key in res:
      metrics[f"psnr_{key}"] = _stats(psnr(res[key], truth))
      rows[f"posterior {key}" if key != "map" else "MAP"] = res[key]
  base = os.path.join(out_dir, f"restore_{rc.task}_{step:08d}")
  os.makedirs(out_dir, exist_ok=True)
  show = {k: v[:16].reshape((-1,) + shape if len(shape) == 3 else (-1,) + shape + (1,))
          for k, v in rows.items()}
  _atomic(base + ".png", lambda p: plotting.save_image_rows(p, show, f"{rc.task}, step {step}"))
  _atomic(base + ".json", lambda p: open(p, "w").write(json.dumps(metrics, indent=2)))
  log(f"restore {json.dumps({k: v for k, v in metrics.items() if k.startswith('psnr')})} "
      f"-> {base}.json, .png")
  return metrics
