"""Training and evaluation loop: state, sharded jit step, EMA, checkpoints, metrics.

The data order, dequantization noise and loss rng are functions of the step alone,
so a run killed at any moment and restarted from its latest checkpoint ends with
exactly the parameters of an uninterrupted run (on a fixed machine and device count).
"""

import json
import math
import os
import time
from typing import Any

from absl import logging
import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from csm_jax import checkpoints
from csm_jax import datasets
from csm_jax import losses
from csm_jax import metrics as metrics_lib
from csm_jax import models
from csm_jax import sharding as sharding_lib
from csm_jax.models import discretized


@flax.struct.dataclass
class TrainState:
  step: jnp.ndarray
  params: Any
  ema_params: Any
  opt_state: Any
  bad_step: jnp.ndarray  # -1 while every loss so far was finite; else the first bad step


def make_optimizer(optim_config):
  """Adam(W) with linear warm-up and global-norm gradient clipping."""
  o = optim_config
  schedule = optax.linear_schedule(0.0, o.learning_rate, max(1, o.warmup_steps))
  chain = []
  if o.grad_clip and o.grad_clip > 0:
    chain.append(optax.clip_by_global_norm(o.grad_clip))
  chain.append(optax.adamw(schedule, b1=o.b1, b2=o.b2, weight_decay=o.weight_decay))
  return optax.chain(*chain)


def init_state(model, optimizer, rng) -> TrainState:
  params = model.init(rng)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    ema_params=jax.tree.map(jnp.copy, params),
                    opt_state=optimizer.init(params), bad_step=jnp.full((), -1, jnp.int32))


def _global_norm(tree):
  return jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in jax.tree.leaves(tree)))


def make_train_step(loss_fn, optimizer, ema_decay):
  """(state, batch, base_rng) -> (state, metrics). Non-finite losses freeze the state."""

  def train_step(state, batch, base_rng):
    rng = jax.random.fold_in(base_rng, state.step)
    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params, batch, rng, True)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    # EMA with the usual warm-up (decay (1+t)/(10+t) early on) so short runs are not
    # evaluated at their initialization.
    t = state.step.astype(jnp.float32)
    decay = jnp.minimum(ema_decay, (1.0 + t) / (10.0 + t))
    ema = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, state.ema_params, params)
    grad_norm = _global_norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    ok = finite & (state.bad_step < 0)
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)
    bad_step = jnp.where((state.bad_step < 0) & ~finite, state.step, state.bad_step)
    new_state = TrainState(step=state.step + 1, params=keep(params, state.params),
                           ema_params=keep(ema, state.ema_params),
                           opt_state=keep(opt_state, state.opt_state), bad_step=bad_step)
    metrics = dict(metrics, grad_norm=grad_norm)
    return new_state, metrics

  return train_step


class Batcher:
  """Host-side batches as a pure function of (split, step)."""

  def __init__(self, config, arrays, preprocessor, mesh):
    self.config, self.arrays, self.pre, self.mesh = config, arrays, preprocessor, mesh

  def train(self, step):
    bs = self.config.training.batch_size
    idx = datasets.batch_indices(len(self.arrays.train), bs, step, self.config.seed)
    x = self.pre(self.arrays.train[idx], datasets.dequant_rng(self.config.seed, step))
    return sharding_lib.shard_batch(x, self.mesh)

  def test(self, i, batch_size):
    n = len(self.arrays.test)
    idx = (np.arange(i * batch_size, (i + 1) * batch_size)) % n
    x = self.pre(self.arrays.test[idx], datasets.dequant_rng(self.config.seed + 1, i))
    return sharding_lib.shard_batch(x, self.mesh)


def setup(config, mesh=None):
  """Data, model, loss and optimizer from a config (no files, no flags)."""
  mesh = mesh or sharding_lib.data_mesh()
  sharding_lib.check_batch_size(config.training.batch_size, mesh, "training.batch_size")
  arrays = datasets.load_arrays(config.data)
  pre = datasets.get_preprocessor(config.data, arrays)
  model = models.get_model(config.model, arrays.shape)
  if discretized.is_discrete(model):
    d = config.data
    if not arrays.discrete or d.dequantize or d.scale != "symmetric" or d.logit_lambda:
      raise ValueError(
          "the discretized_logistic head models 8-bit pixels in [-1, 1]: it needs image data "
          "with data.dequantize=False, data.scale='symmetric' and data.logit_lambda=0 "
          "(see configs/*_pixelcnnpp.py:mle)")
  loss_fn = losses.get_loss_fn(config, model)
  optimizer = make_optimizer(config.optim)
  return dict(mesh=mesh, arrays=arrays, pre=pre, model=model, loss_fn=loss_fn,
              optimizer=optimizer, batcher=Batcher(config, arrays, pre, mesh))


def make_eval_fn(config, env):
  """(params) -> dict of test metrics over `num_batches` fixed test batches."""
  loss_fn, pre, model = env["loss_fn"], env["pre"], env["model"]
  repl = sharding_lib.replicated(env["mesh"])

  eval_batch = jax.jit(lambda params, x, rng: loss_fn(params, x, rng, False))
  with_bpd = model.normalized and config.loss.name == "mle" and env["arrays"].discrete
  discrete_head = discretized.is_discrete(model)

  def evaluate(params, num_batches=None, batch_size=None):
    bs = batch_size or config.eval.batch_size
    sharding_lib.check_batch_size(bs, env["mesh"], "eval.batch_size")
    nb = num_batches or config.eval.num_batches
    key = jax.device_put(jax.random.PRNGKey(config.seed + 10_000), repl)
    losses_, bpds = [], []
    for i in range(nb):
      x = env["batcher"].test(i, bs)
      loss, metrics = eval_batch(params, x, jax.random.fold_in(key, i))
      losses_.append(float(loss))
      if with_bpd:
        if discrete_head:  # probability mass on the 256 bins: no change of variables
          nll_pixel = float(metrics["nll"])
        else:  # density of the dequantized pixels in [0, 256)^D
          nll_pixel = float(metrics["nll"]) - float(np.mean(pre.log_det_jacobian(np.asarray(x))))
        bpds.append(nll_pixel / (model.dim * math.log(2.0)))
    out = {"eval_loss": float(np.mean(losses_))}
    if with_bpd:
      out["eval_bpd"] = float(np.mean(bpds))
    return out

  return evaluate


def train_and_evaluate(config, workdir: str):
  """Trains to config.training.num_steps, resuming from workdir's latest checkpoint."""
  env = setup(config)
  mesh, model, batcher = env["mesh"], env["model"], env["batcher"]
  t = config.training
  repl = sharding_lib.replicated(mesh)
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config.to_json_best_effort(indent=2))

  state = jax.device_put(init_state(model, env["optimizer"], jax.random.PRNGKey(config.seed)), repl)
  ckpt = checkpoints.Checkpointer(os.path.join(workdir, "checkpoints"), t.keep_checkpoints)
  state = ckpt.restore_latest(state)
  start = int(state.step)
  if start:
    logging.info("resumed from checkpoint at step %d", start)
  writer = metrics_lib.MetricWriter(workdir, resume_step=start)
  train_step = jax.jit(make_train_step(env["loss_fn"], env["optimizer"], config.optim.ema_decay),
                       in_shardings=(repl, sharding_lib.batch_sharding(mesh), repl),
                       out_shardings=(repl, repl), donate_argnums=(0,))
  evaluate = make_eval_fn(config, env)
  base_rng = jax.device_put(jax.random.PRNGKey(config.seed + 1), repl)
  n_params = sum(x.size for x in jax.tree.leaves(state.params))
  logging.info("model %s/%s, %d parameters, loss %s, %d devices, batch %d",
               config.model.backbone, config.model.head, n_params, config.loss.name,
               mesh.size, t.batch_size)

  if start == 0:
    writer.write(0, evaluate(state.ema_params))
  progress = metrics_lib.Progress(start, t.num_steps)
  batch = batcher.train(start) if start < t.num_steps else None
  for step in range(start, t.num_steps):
    state, metrics = train_step(state, batch, base_rng)
    done = step + 1
    if done < t.num_steps:
      batch = batcher.train(done)  # host work overlaps the asynchronous device step
    is_log = done % t.log_every == 0 or done == t.num_steps
    is_eval = done % t.eval_every == 0 or done == t.num_steps
    is_ckpt = done % t.checkpoint_every == 0 or done == t.num_steps
    if is_log or is_eval or is_ckpt:
      bad = int(state.bad_step)
      if bad >= 0:
        raise FloatingPointError(
            f"non-finite loss or gradient at step {bad} (0-based); training stopped with the "
            f"state of step {bad} kept in memory and the last good checkpoint "
            f"(step {ckpt.latest_step()}) left in {ckpt.directory}. Lower optim.learning_rate, "
            "check the data, or raise noise.sigma_min.")
    if is_log:
      row = {k: float(v) for k, v in metrics.items()}
      row.update(progress.update(done))
      writer.write(done, row)
      logging.info("step %d/%d loss %.4f  %.2f steps/s  ETA %s", done, t.num_steps,
                   row["loss"], row["steps_per_sec"], progress.eta_str(done))
    if is_eval:
      ev = evaluate(state.ema_params)
      writer.write(done, ev)
      logging.info("step %d eval %s", done, json.dumps(ev))
    if is_ckpt:
      ckpt.save(done, state)
  ckpt.close()
  writer.close()
  return state


def restore_for_inference(config, workdir):
  """(env, state) with the latest checkpoint of workdir; an error if there is none."""
  env = setup(config)
  repl = sharding_lib.replicated(env["mesh"])
  state = jax.device_put(init_state(env["model"], env["optimizer"], jax.random.PRNGKey(config.seed)), repl)
  ckpt = checkpoints.Checkpointer(os.path.join(workdir, "checkpoints"), config.training.keep_checkpoints)
  if ckpt.latest_step() is None:
    raise FileNotFoundError(f"no checkpoint in {ckpt.directory}; train first (--mode=train)")
  state = ckpt.restore_latest(state)
  ckpt.close()
  return env, state
