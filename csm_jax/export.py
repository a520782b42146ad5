"""An inference-only copy of a trained run: its parameters and config, nothing else.

A checkpoint holds the parameters, their EMA and two Adam moments (about 4x the
parameters, plus the step and RNG state). `export_workdir` (``python -m csm_jax.main
--mode=export``) writes WORKDIR/export/ with

  params.npz    the EMA parameters (the raw ones where a state has no EMA), one array
                per leaf named by its path ('context/Dense_0/kernel'), plus '__meta__'
                (a JSON string: step, which parameters, the data shape); plain arrays,
                so numpy loads it without allow_pickle
  config.json   the run's config, as WORKDIR/config.json records it

each written atomically (temporary file, fsync, rename). `load(path)` returns
(model, params, config) and checks every array against the model's shapes;
`inference.restore` and ``--mode=eval|sample --workdir=EXPORT_DIR`` read an export too.
"""

import json
import os
from typing import Callable, Optional

from absl import logging
import jax
import numpy as np

from csm_jax import atomic
from csm_jax import config_base
from csm_jax import models

PARAMS_FILE, CONFIG_FILE = "params.npz", "config.json"


def _write_atomic(path: str, write: Callable):
  with atomic.open_atomic(path, "wb") as f:   # temporary file, fsync, rename, dir fsync
    write(f)


def _flatten(params) -> dict:
  leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  return {"/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path): np.asarray(v)
          for path, v in leaves}


def save(directory: str, params, config, data_shape, step: int, which: str) -> str:
  """Writes params.npz and config.json to `directory`; returns the npz path."""
  os.makedirs(directory, exist_ok=True)
  arrays = _flatten(jax.device_get(params))
  meta = {"step": int(step), "params": which, "data_shape": [int(s) for s in data_shape],
          "format": 1}
  arrays["__meta__"] = np.asarray(json.dumps(meta))
  path = os.path.join(directory, PARAMS_FILE)
  _write_atomic(path, lambda f: np.savez(f, **arrays))
  _write_atomic(os.path.join(directory, CONFIG_FILE),
                lambda f: f.write(config.to_json_best_effort(indent=2).encode()))
  return path


def export_workdir(config, workdir: str, out: Optional[str] = None,
                   log: Callable[[str], None] = logging.info) -> str:
  """Writes `out` (default WORKDIR/export) from the latest checkpoint's EMA parameters;
  returns it. `--mode=eval|sample --workdir=OUT` and `inference.restore` read it."""
  from csm_jax import inference, sharding, workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  if config_base.is_vae_config(config):
    raise config_base.ConfigError("--mode=export supports the autoregressive models, not VAE "
                                  "configs")
  workdir_lib.require_checkpoints(workdir)
  inf = inference.build(config)
  params, step = inference.restore(inf, workdir, "ema_params")
  out = out or os.path.join(workdir, "export")
  if sharding.is_main_process():
    path = save(out, params, config, inf.arrays.shape, step, "ema_params")
    size = sum(os.path.getsize(os.path.join(out, f)) for f in (PARAMS_FILE, CONFIG_FILE))
    ckpt = os.path.join(workdir, "checkpoints", str(step))
    ckpt_size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(ckpt)
                    for f in fs) if os.path.isdir(ckpt) else 0
    log(f"exported step {step} (EMA parameters, {models.count_parameters(params, inf.model)['parameters']} "
        f"parameters) to {out}: {size / 1e6:.1f} MB"
        + (f" (the checkpoint of that step: {ckpt_size / 1e6:.1f} MB)" if ckpt_size else "")
        + f"; load it with csm_jax.export.load({path!r})")
  return out


def is_export(directory: str) -> bool:
  """Whether `directory` holds an export (params.npz and config.json)."""
  return all(os.path.isfile(os.path.join(directory, f)) for f in (PARAMS_FILE, CONFIG_FILE))


def read_params(directory: str, model):
  """(params, meta) of the export in `directory`, checked against `model`'s shapes
  (ValueError naming every mismatch)."""
  with np.load(os.path.join(directory, PARAMS_FILE), allow_pickle=False) as z:
    arrays = {k: z[k] for k in z.files}
  meta = json.loads(str(arrays.pop("__meta__")))
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0))
  leaves, treedef = jax.tree_util.tree_flatten_with_path(shapes)
  want = {"/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path): leaf
          for path, leaf in leaves}
  missing, extra = sorted(set(want) - set(arrays)), sorted(set(arrays) - set(want))
  bad = [f"{k}: {arrays[k].shape} {arrays[k].dtype}, model {want[k].shape} {want[k].dtype}"
         for k in want if k in arrays and (arrays[k].shape != want[k].shape
                                           or arrays[k].dtype != want[k].dtype)]
  if missing or extra or bad:
    raise ValueError(f"{directory} does not match the model its config builds: missing "
                     f"{missing}, unexpected {extra}, wrong shape {bad}")
  return jax.tree_util.tree_unflatten(treedef, [arrays[k] for k in want]), meta


def load(path: str):
  """(model, params, config) of an export (its directory or its params.npz), the
  params as numpy arrays; raises ValueError when they do not match the model."""
  directory = path if os.path.isdir(path) else os.path.dirname(path)
  config = config_base.load_workdir_config(directory)
  with np.load(os.path.join(directory, PARAMS_FILE), allow_pickle=False) as z:
    meta = json.loads(str(z["__meta__"]))
  model = models.get_model(config.model, tuple(meta["data_shape"]))
  params, _ = read_params(directory, model)
  return model, params, config
