"""Inference from a trained work directory: build, restore, evaluate, sample.

`build(config)` makes only what sampling and evaluation need (data, preprocessor,
model, mesh): no loss, no optimizer state. `restore(inf, workdir)` reads parameters
from the latest checkpoint into a target shaped by `jax.eval_shape` (no random
initialization is run). `evaluate_workdir` and `sample_workdir` are what
``python -m csm_jax.main --mode=eval|sample`` run; experiments call the same pieces.
"""

import dataclasses
import json
import os
from typing import Any, Callable, Optional

from absl import logging
import jax
import ml_collections
import numpy as np

from csm_jax import atomic
from csm_jax import checkpoints
from csm_jax import config_base
from csm_jax import data as data_lib
from csm_jax import export as export_lib
from csm_jax import likelihood
from csm_jax import losses
from csm_jax import models
from csm_jax import plotting
from csm_jax import sampling
from csm_jax import sharding as sharding_lib
from csm_jax import train
from csm_jax import workdir as workdir_lib


@dataclasses.dataclass(frozen=True)
class Inference:
  """What sampling and evaluation of a trained model need."""
  config: ml_collections.ConfigDict
  mesh: Any
  arrays: data_lib.Arrays
  pre: data_lib.Preprocessor
  model: models.ARModel


def build(config, mesh=None) -> Inference:
  """Data, preprocessor, model and mesh from a config (no loss, no optimizer)."""
  config_base.validate(config)
  arrays = data_lib.load_arrays(config.data)
  model = models.get_model(config.model, arrays.shape)
  train.check_model_data(config, model, arrays)
  return Inference(config=config, mesh=mesh or sharding_lib.data_mesh(), arrays=arrays,
                   pre=data_lib.get_preprocessor(config.data, arrays), model=model)


def restore(inf: Inference, workdir: str, which: str = "ema_params"):
  """(params, step) of the latest checkpoint in workdir/checkpoints, replicated.

  `which` is 'ema_params' (what eval and sampling use) or 'params' (the raw last
  iterate). Only that part of the checkpoint is read; its target shapes come from
  `jax.eval_shape` of the model's init, so nothing is initialized. An export directory
  (`csm_jax.export`, --mode=export) is read the same way.
  """
  if which not in ("ema_params", "params"):
    raise ValueError(f"which must be 'ema_params' or 'params', got {which!r}")
  repl = sharding_lib.replicated(inf.mesh)
  if export_lib.is_export(workdir):  # --mode=export's directory: its parameters only
    params, meta = export_lib.read_params(workdir, inf.model)
    if meta["params"] != which:
      raise ValueError(f"{workdir} is an export of the {meta['params']} only, not {which}")
    return jax.device_put(params, repl), int(meta["step"])
  shapes = jax.eval_shape(inf.model.init, jax.random.PRNGKey(0))
  target = {which: jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype,
                                                               sharding=repl), shapes),
            "step": jax.ShapeDtypeStruct((), np.int32, sharding=repl)}
  _, restored = checkpoints.restore_partial(os.path.join(workdir, "checkpoints"), target,
                                            inf.config.training.keep_checkpoints,
                                            checkpoints.model_fields(inf.config))
  return restored[which], int(restored["step"])


def evaluate_workdir(config, workdir: str, log: Callable[[str], None] = logging.info) -> dict:
  """Test loss over the whole test split and the test NLL (config.likelihood) of the
  latest checkpoint's EMA parameters; written to workdir/eval_<step>.json."""
  if not export_lib.is_export(workdir):
    workdir_lib.require_checkpoints(workdir)
  workdir_lib.check_writable(workdir)
  inf = build(config)
  params, step = restore(inf, workdir)
  bs = config.eval.batch_size
  loss_fn = losses.get_loss_fn(config, inf.model)
  evaluate = train.make_eval_fn(config, inf.model, inf.pre, inf.arrays.test, inf.mesh, loss_fn)
  result = evaluate(params, num_batches=max(1, len(inf.arrays.test) // bs))
  result["step"] = step
  y = inf.pre(inf.arrays.test, data_lib.dequant_rng(config.seed + 2, 0))
  model = inf.model
  if model.context_sigma:  # a smoothed joint: its AR model at the level of the NLL's head
    lk = config.likelihood
    model = model.at_level(lk.sigma if lk.sigma is not None else likelihood.noise_level(config))
  result["likelihood"] = likelihood.nll_from_config(config, model, params, y, inf.pre, log,
                                                    train=inf.arrays.train)
  path = os.path.join(workdir, f"eval_{step:08d}.json")
  if sharding_lib.is_main_process():  # multi-host: every process has the same result
    atomic.write_json(path, result)
  log(f"{summary(result, len(inf.arrays.test))}; all results in {path}")
  return result


def summary(result: dict, num_test: Optional[int] = None) -> str:
  """A one-line reading of `evaluate_workdir`'s result (the file holds the rest)."""
  parts = [f"step {result['step']}: test loss {result['eval_loss']:.4g}"
           + (f" ({num_test} examples)" if num_test else "")]
  if "eval_bpd" in result:
    parts.append(f"test {result['eval_bpd']:.3f} bits/dim (eval batches)")
  lk = result.get("likelihood")
  if lk:
    unit = "bits/dim" if lk["space"] == "pixel" else "bits/dim (model space)"
    parts.append(f"test NLL {lk['bpd']:.3f} ± {lk['bpd_stderr']:.3f} {unit}, "
                 f"{lk['nll_nats']:.1f} nats ({lk['num_examples']} examples, {lk['method']})")
    if "quad_error_bpd" in lk:
      parts.append(f"quadrature error {lk['quad_error_bpd']:.2g} bits/dim")
  return "; ".join(parts)


def sample_workdir(config, workdir: str, log: Callable[[str], None] = logging.info,
                   rng: Optional[jax.Array] = None) -> str:
  """config.sampling.num_samples samples of the latest checkpoint's EMA parameters;
  writes workdir/samples/samples_<step>.npy (model space) and .png; returns the base path."""
  if not export_lib.is_export(workdir):
    workdir_lib.require_checkpoints(workdir)
  workdir_lib.check_writable(os.path.join(workdir, "samples"))
  inf = build(config)
  params, step = restore(inf, workdir)
  sampler, info = sampling.make_sampler_from_config(config, inf.model, mesh=inf.mesh, log=log)
  log(f"sampling with {json.dumps(info)}")
  rng = jax.random.PRNGKey(config.seed + 20_000) if rng is None else rng
  x = sharding_lib.to_host(sampler(params, rng))  # multi-host: gathered on every process
  if "sweeps" in info:
    log(f"fixed-point sampling used {info['sweeps']} sweeps for {inf.model.dim} dimensions "
        f"(largest change in the last one {info['max_change']:.3g})")
  base = os.path.join(workdir, "samples", f"samples_{step:08d}")
  if sharding_lib.is_main_process():
    os.makedirs(os.path.join(workdir, "samples"), exist_ok=True)
    atomic.save_npy(base + ".npy", x)
    plotting.save_samples(base + ".png", inf.pre.to_display(x), inf.arrays.shape,
                          f"step {step}")
    log(f"wrote {base}.png")
  return base
