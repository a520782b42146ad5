"""Training a VAE: a two-optimizer state and one jitted step, run by the one loop.

Each step, in one `jax.jit`:
  1. the batch is binarized (or dequantized) with a key fixed by (seed, step);
  2. a learned score estimator takes one optimizer step on its fit objective, on fresh
     stop-gradient encoder samples of the batch;
  3. encoder and decoder take one step on the VAE loss, the entropy term through the
     updated score estimate (or the analytic KL of a Gaussian encoder).
The reference (ermongroup/sliced_score_matching, runners/vae_runner.py) alternates the
same way. Batches and keys are functions of the step, so a killed run restarted from
its latest checkpoint ends with exactly the parameters of an uninterrupted one.

Training runs through the project's one loop (`csm_jax/loop.py`: checkpoints, signals,
NaN stop, metrics, progress); this module brings only the VAE's state (two parameter
sets and two optimizer states), step, inputs and validation, as a `loop.Trainer`.
"""

import contextlib
import dataclasses
from typing import Any, Callable, Optional

from absl import logging
import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from csm_jax import checkpoints
from csm_jax import config_base
from csm_jax import data as data_lib
from csm_jax import loop as loop_lib
from csm_jax import sharding as sharding_lib
from csm_jax import workdir as workdir_lib
from csm_jax.models.ar import fast_init
from csm_jax.vae import data as vae_data
from csm_jax.vae import estimators as estimators_lib
from csm_jax.vae import loss as loss_lib
from csm_jax.vae import model as model_lib
from csm_jax.vae import optim as optim_lib


@flax.struct.dataclass
class VAEState:
  step: jnp.ndarray
  params: Any              # {"encoder": ..., "decoder": ...}
  opt_state: Any
  score_params: Any        # the learned score model's ({} for kernel estimators / ELBO)
  score_opt_state: Any
  bad_step: jnp.ndarray    # -1 while every loss so far was finite; else the first bad step


@dataclasses.dataclass(frozen=True)
class VAESetup:
  """Everything training needs, built from a config (no files, no flags)."""
  config: ml_collections.ConfigDict
  mesh: Any
  data: vae_data.VAEData
  vae: model_lib.VAE
  estimator: Optional[estimators_lib.ScoreEstimator]   # None: Gaussian encoder (ELBO)
  optimizer: Any
  score_optimizer: Any

  @property
  def learned(self) -> bool:
    return self.estimator is not None and self.estimator.learned


def setup(config, arrays: Optional[data_lib.Arrays] = None, mesh=None) -> VAESetup:
  """Data (train/validation/test), VAE, score estimator and optimizers from a config;
  `arrays` replaces the dataset config.data names."""
  config_base.validate_vae(config)
  mesh = mesh or sharding_lib.data_mesh()
  sharding_lib.check_batch_size(config.training.batch_size, mesh, "training.batch_size")
  arrays = data_lib.load_arrays(config.data) if arrays is None else arrays
  v = config.vae
  data = vae_data.split(arrays, v.validation_fraction, v.split_seed)
  vae = model_lib.build_vae(v, data.shape)
  estimator = estimators_lib.get_estimator(v, vae.data_dim) if vae.implicit else None
  return VAESetup(config=config, mesh=mesh, data=data, vae=vae, estimator=estimator,
                  optimizer=optim_lib.from_config(config.optim),
                  score_optimizer=optim_lib.from_config(config.optim, score=True))


def init_state(s: VAESetup) -> VAEState:
  """The fresh state (seed config.seed), replicated on s.mesh."""
  def init(key):
    k_vae, k_score = jax.random.split(key)
    params = s.vae.init(k_vae)
    score_params = s.estimator.init(k_score) if s.learned else {}
    return VAEState(step=jnp.zeros((), jnp.int32), params=params,
                    opt_state=s.optimizer.init(params), score_params=score_params,
                    score_opt_state=s.score_optimizer.init(score_params),
                    bad_step=jnp.full((), -1, jnp.int32))
  state = fast_init(init, jax.random.PRNGKey(s.config.seed))
  return jax.device_put(state, sharding_lib.replicated(s.mesh))


def abstract_state(s: VAESetup):
  """The state's shapes, dtypes and (replicated) shardings, with nothing computed."""
  return loop_lib.abstract_replicated(lambda: init_state(s), s.mesh)


def _global_norm(tree):
  leaves = jax.tree.leaves(tree)
  return jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in leaves)) if leaves else jnp.zeros(())


def vae_loss_fn(s: VAESetup):
  """(params, score_params, x, rng) -> (loss, metrics) of the VAE's objective."""
  if s.estimator is None:
    return lambda params, score_params, x, rng: loss_lib.gaussian_elbo(s.vae, params, x, rng)
  return lambda params, score_params, x, rng: loss_lib.implicit_loss(
      s.vae, s.estimator, params, score_params, x, rng)


def make_train_step(s: VAESetup):
  """(state, images uint8 (B, D)) -> (state, metrics): score step, then VAE step.

  A non-finite loss or gradient freezes the state and records the step (as train.py).
  """
  seed, likelihood = s.config.seed, s.vae.likelihood
  vae_loss = vae_loss_fn(s)

  def step(state, images):
    k_data, k_score, k_vae = vae_data.batch_keys(seed, state.step)
    x = vae_data.prepare(images, k_data, likelihood)
    metrics = {}
    score_params, score_opt_state = state.score_params, state.score_opt_state
    finite = jnp.array(True)
    if s.learned:
      fit = lambda sp: loss_lib.score_fit_loss(s.vae, s.estimator, sp, state.params, x, k_score)
      (score_loss, _), g = jax.value_and_grad(fit, has_aux=True)(score_params)
      updates, score_opt_state = s.score_optimizer.update(g, score_opt_state, score_params)
      score_params = optax.apply_updates(score_params, updates)
      score_grad_norm = _global_norm(g)
      metrics.update(score_loss=score_loss, score_grad_norm=score_grad_norm)
      finite = jnp.isfinite(score_loss) & jnp.isfinite(score_grad_norm)
    (loss, m), grads = jax.value_and_grad(vae_loss, has_aux=True)(state.params, score_params,
                                                                  x, k_vae)
    updates, opt_state = s.optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    grad_norm = _global_norm(grads)
    metrics.update(m, grad_norm=grad_norm)
    finite = finite & jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    ok = finite & (state.bad_step < 0)
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)
    bad_step = jnp.where((state.bad_step < 0) & ~finite, state.step, state.bad_step)
    return VAEState(step=state.step + 1, params=keep(params, state.params),
                    opt_state=keep(opt_state, state.opt_state),
                    score_params=keep(score_params, state.score_params),
                    score_opt_state=keep(score_opt_state, state.score_opt_state),
                    bad_step=bad_step), metrics

  return step


def compile_train_step(s: VAESetup, state, images):
  """The jitted step (state donated), compiled for these shapes."""
  repl = sharding_lib.replicated(s.mesh)
  fn = jax.jit(make_train_step(s), in_shardings=(repl, sharding_lib.batch_sharding(s.mesh)),
               out_shardings=(repl, repl), donate_argnums=(0,))
  return fn.lower(state, images).compile()


def train_images(s: VAESetup, step: int):
  """Training batch `step` on the mesh (uint8, (B, D))."""
  t = s.config.training
  x = vae_data.train_batch(s.data, t.batch_size, step, s.config.seed)
  return sharding_lib.shard_batch(x, s.mesh)


def make_eval_fn(s: VAESetup):
  """params, score_params -> validation metrics over eval.num_batches fixed batches
  (binarized with keys fixed by (seed, batch)): reconstruction -log p(x | z) at one
  z ~ q(z | x); the -ELBO and KL of a Gaussian encoder; the VAE loss and the score
  model's fit loss for an implicit one."""
  e, seed = s.config.eval, s.config.seed
  sharding_lib.check_batch_size(e.batch_size, s.mesh, "eval.batch_size")
  vae_loss = vae_loss_fn(s)

  @jax.jit
  def one(params, score_params, images, key):
    k_data, k_vae, k_score = jax.random.split(key, 3)
    x = vae_data.prepare(images, k_data, s.vae.likelihood)
    _, m = vae_loss(params, score_params, x, k_vae)
    if s.learned:
      m = dict(m, score_loss=loss_lib.score_fit_loss(s.vae, s.estimator, score_params,
                                                     params, x, k_score)[0])
    return m

  def evaluate(params, score_params):
    rows = []
    for i in range(e.num_batches):
      images = sharding_lib.shard_batch(vae_data.fixed_batch(s.data.validation, e.batch_size, i),
                                        s.mesh)
      key = jax.random.fold_in(jax.random.PRNGKey(seed + 2), i)
      rows.append(jax.device_get(one(params, score_params, images, key)))
    return {"val_" + k: float(np.mean([r[k] for r in rows])) for k in rows[0]
            if k not in ("score_sq",)}

  return evaluate


def trainer(s: VAESetup, eval_every: int) -> loop_lib.Trainer:
  """s as a `loop.Trainer`: one score step and one VAE step per call, validated by
  `make_eval_fn` (built only when eval_every > 0)."""
  t, v = s.config.training, s.config.vae
  eval_fn = make_eval_fn(s) if eval_every else None
  method = "elbo" if s.estimator is None else s.estimator.name

  def describe(state):
    counts = parameter_counts(state)
    return (f"VAE {v.architecture}, {v.encoder} encoder, z_dim {v.z_dim}, entropy by "
            f"{method}; parameters {counts}; {s.mesh.size} devices, batch {t.batch_size}")

  def format_row(row):
    extra = f" score_loss {row['score_loss']:.3f}" if "score_loss" in row else ""
    return f"loss {row['loss']:.3f} recon {row['recon']:.2f}{extra}"

  def compile_fn(state, length, images):
    assert length == 1, "a VAE dispatch is one step"
    return compile_train_step(s, state, images)

  return loop_lib.Trainer(
      init=lambda: init_state(s), abstract=lambda: abstract_state(s), compile=compile_fn,
      inputs=lambda step, length: train_images(s, step),
      evaluate=None if eval_fn is None else (
          lambda state: eval_fn(state.params, state.score_params)),
      describe=describe, format_row=format_row, fields=checkpoints.model_fields(s.config))


def parameter_counts(state) -> dict:
  """Parameters of the VAE (encoder + decoder) and of the learned score model."""
  size = lambda tree: int(sum(a.size for a in jax.tree.leaves(tree)))
  return {"vae": size(state.params), "score_model": size(state.score_params)}


def train_loop(s: VAESetup, workdir: Optional[str] = None, eval_every: Optional[int] = None,
               log: Callable[[str], None] = logging.info, label: str = "",
               callbacks=(), on_start=None):
  """Trains to config.training.num_steps with `loop.run` (the project's one loop);
  returns (state, info).

  With a `workdir`: resumes from its latest readable checkpoint, saves every
  training.checkpoint_every steps, at the first logged step, every
  training.checkpoint_every_secs and at the end, and on SIGINT / SIGTERM (then raises
  `loop.Interrupted`); metrics go to workdir/metrics.jsonl. Validation runs at step 0
  (fresh runs), every `eval_every` (default training.eval_every; 0: never) and at the end.
  A non-finite loss stops training with FloatingPointError naming the step.
  info: as `loop.run`'s (compile_seconds, train_seconds with validation excluded,
  steps_run, step_seconds, final, history), plus parameters and method.
  """
  t = s.config.training
  eval_every = t.eval_every if eval_every is None else eval_every
  state, info = loop_lib.run(trainer(s, eval_every), t, workdir=workdir,
                             eval_every=eval_every, log=log, label=label, callbacks=callbacks,
                             on_start=on_start)
  info.update(parameters=parameter_counts(state),
              method="elbo" if s.estimator is None else s.estimator.name)
  return state, info


def train_and_evaluate(config, workdir: str, allow_config_change: bool = False):
  """What `python -m csm_jax.main --mode=train` runs for a VAE config: takes the
  workdir's lock, checks the config against its record, trains (resuming)."""
  config_base.validate_vae(config)
  owner = jax.process_index() == 0
  with workdir_lib.lock(workdir) if owner else contextlib.nullcontext():
    data = workdir_lib.resolve_data(workdir, config, allow_config_change)  # absolute paths
    changes = workdir_lib.check_config(workdir, config, allow_config_change)
    s = setup(config)

    def record():
      if owner:
        workdir_lib.write_record(workdir, config, changes)
        workdir_lib.write_data_record(workdir, data)
    state, _ = train_loop(s, workdir=workdir, on_start=record)
  return state
