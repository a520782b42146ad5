"""Training: state, sharded jit step, EMA, the one training loop, checkpoints, metrics.

The data order, dequantization noise and loss rng are functions of the step alone,
so a run killed at any moment and restarted from its latest checkpoint ends with
exactly the parameters of an uninterrupted run (on a fixed machine and device count).

  setup(config)                 data, model, loss, optimizer (a frozen `Setup`)
  train_loop(setup, ...)        the image / 2-D models through `loop.run`, the one loop
                                (NaN stop, progress/ETA, metrics, evaluation,
                                checkpoints, SIGINT/SIGTERM saves) that every trainer uses
  train_and_evaluate(config, workdir)   what `python -m csm_jax.main` runs
  make_update_step(loss, opt)   a plain step (loss, gradient, optimizer; no EMA) for
                                benchmarks and small studies
"""

import dataclasses
from typing import Any, Callable, Optional, Sequence

from absl import logging
import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from csm_jax import checkpoints as checkpoints_lib
from csm_jax import config_base
from csm_jax import data as data_lib
from csm_jax import likelihood
from csm_jax import loop as loop_lib
from csm_jax import losses
from csm_jax import models
from csm_jax import pipeline as pipeline_lib
from csm_jax import sampling
from csm_jax import sharding as sharding_lib
from csm_jax import workdir as workdir_lib


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


def initial_state(s: "Setup") -> TrainState:
  """The freshly initialized state of s.model (seed config.seed), replicated on s.mesh:
  placed as the compiled step's outputs are, so the step compiles once."""
  state = init_state(s.model, s.optimizer, jax.random.PRNGKey(s.config.seed))
  return jax.device_put(state, sharding_lib.replicated(s.mesh))


def _global_norm(tree):
  return jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in jax.tree.leaves(tree)))


def _update(loss_fn, optimizer, params, opt_state, x, rng):
  """One optimizer update: (loss, metrics, grads, new params, new optimizer state)."""
  (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, x, rng, True)
  updates, opt_state = optimizer.update(grads, opt_state, params)
  return loss, metrics, grads, optax.apply_updates(params, updates), opt_state


def make_update_step(loss_fn, optimizer):
  """(params, opt_state, x, rng) -> (params, opt_state, loss): loss, gradient and update.

  No EMA and no NaN guard: for benchmarks and small studies; jit it (donating the
  first two arguments).
  """

  def step(params, opt_state, x, rng):
    loss, _, _, params, opt_state = _update(loss_fn, optimizer, params, opt_state, x, rng)
    return params, opt_state, loss

  return step


def make_train_step(loss_fn, optimizer, ema_decay):
  """(state, batch, base_rng) -> (state, metrics). Non-finite losses freeze the state."""

  def train_step(state, batch, base_rng):
    rng = jax.random.fold_in(base_rng, state.step)
    loss, metrics, grads, params, opt_state = _update(loss_fn, optimizer, state.params,
                                                      state.opt_state, batch, rng)
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


# ------------------------------------------------------------------------------------
# Batches
# ------------------------------------------------------------------------------------


def test_batch(config, test, pre, mesh, i: int, batch_size: int):
  """Test batch i (wrapping around), dequantized with a noise fixed by (seed, i)."""
  idx = np.arange(i * batch_size, (i + 1) * batch_size) % len(test)
  x = pre(test[idx], data_lib.dequant_rng(config.seed + 1, i))
  return sharding_lib.shard_batch(x, mesh)


def Batcher(config, arrays, preprocessor, mesh):  # pylint: disable=invalid-name
  """The training input pipeline config.data.pipeline names (`pipeline.make_pipeline`):
  `.train(step)` is the model-space batch of a step, a pure function of the step."""
  return pipeline_lib.make_pipeline(config, arrays, preprocessor, mesh)


# ------------------------------------------------------------------------------------
# Setup
# ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Setup:
  """Everything training needs, built from a config (no files, no flags)."""
  config: ml_collections.ConfigDict
  mesh: Any
  arrays: data_lib.Arrays
  pre: data_lib.Preprocessor
  model: models.ARModel
  loss_fn: Callable
  optimizer: Any
  batcher: Any  # pipeline.HostPipeline | pipeline.DevicePipeline


def check_model_data(config, model, arrays):
  """Refuses data a model cannot describe (a probability-mass head needs 8-bit bins)."""
  if model.kind == "mass":
    d = config.data
    if not arrays.discrete or d.dequantize or d.scale != "symmetric" or d.logit_lambda:
      raise ValueError(
          "the discretized_logistic head models 8-bit pixels in [-1, 1]: it needs image data "
          "with data.dequantize=False, data.scale='symmetric' and data.logit_lambda=0 "
          "(see configs/*_pixelcnnpp.py:mle)")


def setup(config, mesh=None, arrays: Optional[data_lib.Arrays] = None,
          loss_fn: Optional[Callable] = None) -> Setup:
  """Data, model, loss and optimizer from a config.

  `arrays` replaces the dataset config.data names (e.g. a training split with a
  held-out part); `loss_fn` replaces the loss config.loss names.
  """
  config_base.validate(config)
  mesh = mesh or sharding_lib.data_mesh()
  sharding_lib.check_batch_size(config.training.batch_size, mesh, "training.batch_size")
  arrays = data_lib.load_arrays(config.data) if arrays is None else arrays
  pre = data_lib.get_preprocessor(config.data, arrays)
  model = models.get_model(config.model, arrays.shape)
  check_model_data(config, model, arrays)
  loss_fn = losses.get_loss_fn(config, model) if loss_fn is None else loss_fn
  return Setup(config=config, mesh=mesh, arrays=arrays, pre=pre, model=model,
               loss_fn=loss_fn, optimizer=make_optimizer(config.optim),
               batcher=Batcher(config, arrays, pre, mesh))


def make_eval_fn(config, model, pre, test, mesh, loss_fn):
  """(params, num_batches=None, batch_size=None) -> dict of test metrics.

  The loss on fixed test batches (config.eval) and, for MLE on discrete data, bits/dim
  of the pixels (a probability-mass head: no change of variables).
  """
  repl = sharding_lib.replicated(mesh)
  eval_batch = jax.jit(lambda params, x, rng: loss_fn(params, x, rng, False))
  with_bpd = model.normalized and config.loss.name == "mle" and pre.discrete

  def evaluate(params, num_batches=None, batch_size=None):
    bs = batch_size or config.eval.batch_size
    sharding_lib.check_batch_size(bs, mesh, "eval.batch_size")
    nb = num_batches or config.eval.num_batches
    key = jax.device_put(jax.random.PRNGKey(config.seed + 10_000), repl)
    losses_, bpds = [], []
    for i in range(nb):
      x = test_batch(config, test, pre, mesh, i, bs)
      loss, metrics = eval_batch(params, x, jax.random.fold_in(key, i))
      losses_.append(float(loss))
      if with_bpd:
        nll = float(metrics["nll"])
        if model.kind != "mass":  # density of the dequantized pixels in [0, 256)^D
          nll -= float(np.mean(pre.log_det_jacobian(sharding_lib.to_host(x))))
        bpds.append(float(likelihood.bits_per_dim(nll, model.dim)))
    out = {"eval_loss": float(np.mean(losses_))}
    if with_bpd:
      out["eval_bpd"] = float(np.mean(bpds))
    return out

  return evaluate


# ------------------------------------------------------------------------------------
# The training loop (`loop.run`, shared with the VAEs)
# ------------------------------------------------------------------------------------

Interrupted = loop_lib.Interrupted


def trainer(s: Setup, eval_fn: Optional[Callable[[Any], dict]] = None) -> loop_lib.Trainer:
  """s as a `loop.Trainer`: the EMA train step over s.batcher's pipeline, evaluated on
  the EMA parameters by `eval_fn(ema_params) -> dict`."""
  config, t = s.config, s.config.training
  pipe = s.batcher
  base_rng = jax.device_put(jax.random.PRNGKey(config.seed + 1),
                            sharding_lib.replicated(s.mesh))
  train_step = make_train_step(s.loss_fn, s.optimizer, config.optim.ema_decay)

  def compile_fn(state, length, inputs):
    del inputs  # compile_loop_step takes the shapes from the pipeline
    fn = pipeline_lib.compile_loop_step(train_step, pipe, length, state, base_rng)
    return lambda st, inp: fn(st, pipe.resident, inp, base_rng)

  def describe(state):
    counts = models.count_parameters(state.params, s.model)
    return (f"model {config.model.backbone}/{config.model.head}, {counts['parameters']} "
            f"parameters ({counts['effective_parameters']} effective), loss "
            f"{config.loss.name}, {s.mesh.size} devices, batch {t.batch_size}, "
            f"{pipe.kind} input pipeline"
            + (f", {t.steps_per_dispatch} steps per dispatch"
               if t.steps_per_dispatch > 1 else ""))

  return loop_lib.Trainer(
      init=lambda: initial_state(s), compile=compile_fn, inputs=pipe.inputs,
      abstract=lambda: loop_lib.abstract_replicated(lambda: initial_state(s), s.mesh),
      evaluate=None if eval_fn is None else (lambda state: eval_fn(state.ema_params)),
      sample_grid=None if eval_fn is None else sample_grid_fn(s),
      describe=describe, steps_per_dispatch=int(t.steps_per_dispatch),
      fields=checkpoints_lib.model_fields(config),
      nan_hint="Lower optim.learning_rate, check the data, or raise noise.sigma_min.")


def sample_grid_fn(s: Setup) -> Optional[Callable[[Any], np.ndarray]]:
  """state -> an image grid of training.eval_samples samples of the EMA parameters
  (config.sampling's sampler, the same random numbers every time); None where
  eval_samples is 0 or the data are not images."""
  config, n = s.config, int(s.config.training.eval_samples)
  if not n or len(s.arrays.shape) != 3:
    return None
  sampler = []  # built at the first call (its compilation is part of the first grid)

  def grid(state):
    from csm_jax import plotting  # pylint: disable=g-import-not-at-top  (matplotlib)
    if not sampler:
      sampler.append(sampling.make_sampler_from_config(config, s.model, num_samples=n,
                                                       mesh=s.mesh)[0])
    x = sharding_lib.to_host(sampler[0](state.ema_params,
                                        jax.random.PRNGKey(config.seed + 30_000)))
    images = np.asarray(s.pre.to_display(x)).reshape((-1,) + tuple(s.arrays.shape))
    images = np.nan_to_num(images, nan=0.0, posinf=1.0, neginf=0.0)  # a diverged chain
    return plotting.image_grid(np.clip(images, 0.0, 1.0))

  return grid


def train_loop(s: Setup, workdir: Optional[str] = None,
               eval_fn: Optional[Callable[[Any], dict]] = None,
               eval_every: Optional[int] = None, log: Callable[[str], None] = logging.info,
               label: str = "", callbacks: Sequence[Callable] = (),
               on_start: Optional[Callable[[], None]] = None):
  """Trains s.model to config.training.num_steps with `loop.run`; returns (state, info).

  With a `workdir`: resumes from its latest readable checkpoint, saves every
  training.checkpoint_every steps, at the first logged step, every
  training.checkpoint_every_secs seconds and at the end, and on SIGINT / SIGTERM (then
  raises `Interrupted`), and appends metrics to workdir/metrics.jsonl (and TensorBoard).
  `eval_fn(ema_params) -> dict` runs at step 0 (fresh runs), every `eval_every` steps
  (default training.eval_every; 0: never) and at the end.
  A non-finite loss or gradient stops training with FloatingPointError naming the step.
  `callbacks`: cb(step, state, metrics) after each logged step.
  info: as `loop.run`'s, plus parameters (counts), pipeline and steps_per_dispatch.
  """
  config_base.validate(s.config)
  state, info = loop_lib.run(trainer(s, eval_fn), s.config.training, workdir=workdir,
                             eval_every=eval_every, log=log, label=label,
                             callbacks=callbacks, on_start=on_start)
  info.update(parameters=models.count_parameters(state.params, s.model),
              pipeline=s.batcher.kind, steps_per_dispatch=int(s.config.training.steps_per_dispatch))
  return state, info


def train_and_evaluate(config, workdir: str, allow_config_change: bool = False):
  """Trains to config.training.num_steps, resuming from workdir's latest checkpoint.

  Takes the workdir's training lock, refuses a config whose model/data/optimization
  fields differ from the workdir's record (unless allow_config_change, which records
  the change), and writes the record only once the config has built a working setup
  and the checkpoints (if any) restored into it.
  """
  config_base.validate(config)
  with workdir_lib.training_lock(workdir):  # multi-host: held by process 0 for all
    data = workdir_lib.resolve_data(workdir, config, allow_config_change)  # absolute paths
    changes = workdir_lib.check_config(workdir, config, allow_config_change)
    s = setup(config)

    def record():
      if sharding_lib.is_main_process():
        workdir_lib.write_record(workdir, config, changes)
        workdir_lib.write_data_record(workdir, data)
    eval_fn = make_eval_fn(config, s.model, s.pre, s.arrays.test, s.mesh, s.loss_fn)
    state, _ = train_loop(s, workdir=workdir, eval_fn=eval_fn, on_start=record)
  return state
