"""`python -m csm_jax.main --mode=restore`: corrupt held-out test images as config.restore
says, restore them with the workdir's model as the prior, and write a picture and a
JSON of metrics (PSNR of the corrupted input, posterior mean, sample, MAP) and the
restored images (.npz) atomically into workdir/restore/. With config.restore.input the
images are the user's own (csm_jax/restore/inputs.py), with PSNR only if they come with
their truth."""

import json
import math
import os
from typing import Callable

from absl import logging
import jax
import numpy as np

from csm_jax import atomic
from csm_jax import config_base
from csm_jax import plotting
from csm_jax import workdir as workdir_lib
from csm_jax.restore import inputs as inputs_lib
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


def restore_workdir(config, workdir: str, log: Callable[[str], None] = logging.info) -> dict:
  """Restores config.restore.num_images test images (or config.restore.input); returns
  the metrics dict."""
  from csm_jax import inference  # pylint: disable=g-import-not-at-top  (heavy)
  workdir_lib.require_checkpoints(workdir)
  out_dir = os.path.join(workdir, "restore")
  workdir_lib.check_writable(out_dir)
  inf = inference.build(config)
  try:
    posterior.check_mass_settings(inf.model, config.restore)
  except ValueError as e:
    raise config_base.ConfigError(str(e)) from None
  if not inf.arrays.discrete:
    raise config_base.ConfigError("data.dataset: --mode=restore needs image data (pixels)")
  params, step = inference.restore(inf, workdir)
  rc = config.restore
  shape = tuple(inf.arrays.shape)
  if rc.input:   # the user's own corrupted images
    obs0 = obs_lib.from_config(rc, shape, mask_rng=rc.mask_seed)
    user = inputs_lib.load(rc, shape, obs0.y_shape)
    obs = obs_lib.Missing(user.mask, shape) if user.mask is not None else obs0
    y, truth, tag = user.y, user.truth, "input"
    try:
      y = obs_lib.check_observation(obs, y)
    except ValueError as e:
      raise config_base.ConfigError(f"restore.input {user.source}: {e}") from None
  else:
    truth = np.asarray(inf.arrays.test[:rc.num_images], np.float64) / 255.0
    obs = obs_lib.from_config(rc, shape, mask_rng=rc.mask_seed)
    y, tag = obs.corrupt(config.seed + 30_000, truth), "test"
  res = posterior.restore(inf.model, params, config, y, rng=jax.random.PRNGKey(config.seed + 31_000),
                          preprocessor=inf.pre, observation=obs, log=log)
  n = len(y)
  metrics = {"step": step, "task": rc.task, "images": tag, "num_images": n,
             "seconds": res["seconds"], "seconds_per_image": res["seconds"] / n,
             "mala_accept": res["accept"], "settings": res["settings"],
             "observation": {k: rc[k] for k in ("sigma", "p", "sp_tau", "mask", "sr_factor",
                                                "sr_sigma", "input", "input_mask")}}
  rows = {} if truth is None else {"truth": truth}
  if y.shape[1:] == shape:
    if truth is not None:
      metrics["psnr_corrupted"] = _stats(psnr(y.clip(0, 1), truth))
    rows["corrupted"] = y
  else:   # super-resolution: show y upsampled
    rows["corrupted"] = np.asarray(obs.init_image(y)).reshape((n,) + shape)
  for key in ("mean", "sample", "map"):
    if key in res:
      if truth is not None:
        metrics[f"psnr_{key}"] = _stats(psnr(res[key], truth))
      label = {"map": "MAP", "mean": ("denoise-and-project" if rc.method == "project"
                                      else "posterior mean")}.get(key, f"posterior {key}")
      rows[label] = res[key]
  name = f"restore_{rc.task}" + ("_input" if tag == "input" else "") + f"_{step:08d}"
  base = os.path.join(out_dir, name)
  os.makedirs(out_dir, exist_ok=True)
  show = {k: np.asarray(v)[:16].reshape((-1,) + shape if len(shape) == 3 else (-1,) + shape + (1,))
          for k, v in rows.items()}
  plotting.save_image_rows(base + ".png", show, f"{rc.task}, step {step}")   # atomic
  atomic.save_npz(base + ".npz", **{k: np.asarray(res[k], np.float32).reshape((n,) + shape)
                                    for k in ("mean", "sample", "map") if k in res})
  atomic.write_json(base + ".json", metrics)
  log(f"restore {json.dumps({k: v for k, v in metrics.items() if k.startswith('psnr')})} "
      f"-> {base}.json, .png, .npz")
  return metrics
