"""Training input pipelines: the batch of every step as a pure function of the step.

Two ways to feed the compiled train step, chosen by ``config.data.pipeline``:

  'host'    batches are gathered, dequantized (numpy noise from (seed, step)) and
            preprocessed in numpy on the host, then copied to the devices;
  'device'  the raw training array (uint8 pixels or float32 points) is copied to every
            device once; the step receives only the example indices of its batch
            (computed on the host by `data.batch_indices`: the same order as 'host') and
            gathers, dequantizes (jax.random noise from (seed, step)) and preprocesses
            inside the jitted step (`Preprocessor.device_forward`);
  'auto'    (default) 'device' when the training array takes at most
            data.device_max_mb MiB, else 'host'.

Both are restart-exact (nothing but the step determines a batch); they draw different
dequantization noise, so their runs agree in distribution, not bit for bit.

The loop step (`make_loop_step`) runs k consecutive train steps in one dispatch with
`lax.scan` when ``training.steps_per_dispatch`` = k > 1; the inputs then carry a
leading axis of length k (indices (k, B) or batches (k, B, D)).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from csm_jax import sharding as sharding_lib
from csm_jax.config_base import ConfigError
from csm_jax.data import batching
from csm_jax.data.preprocess import Preprocessor
from csm_jax.data.sources import Arrays

PIPELINES = ("auto", "host", "device")
_NOISE_STREAM = 0x0D47A  # folded into PRNGKey(seed): the device dequantization stream


def choose(data_config, arrays: Arrays) -> str:
  """'host' or 'device' for data.pipeline (resolving 'auto' by the array's size)."""
  name = data_config.pipeline
  if name not in PIPELINES:
    raise ConfigError(f"config field data.pipeline must be one of {', '.join(PIPELINES)}, "
                      f"got {name!r}")
  if name != "auto":
    return name
  fits = arrays.train.nbytes <= float(data_config.device_max_mb) * 2 ** 20
  return "device" if fits else "host"


def _steps_sharding(mesh):
  """(k, B, ...) inputs: the step axis unsharded, the batch axis split over 'data'."""
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, "data"))


def _place(x: np.ndarray, sharding) -> jax.Array:
  """A host array (identical on every process) placed with `sharding`."""
  if jax.process_count() == 1:
    return jax.device_put(x, sharding)
  return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])


class HostPipeline:
  """Batches made in numpy on the host (any dataset size)."""
  kind = "host"

  def __init__(self, config, arrays: Arrays, pre: Preprocessor, mesh):
    self.config, self.arrays, self.pre, self.mesh = config, arrays, pre, mesh
    self.resident = None

  def host_batch(self, step: int) -> np.ndarray:
    """The float32 (B, D) model-space batch of `step`, in numpy."""
    bs, seed = self.config.training.batch_size, self.config.seed
    idx = batching.batch_indices(len(self.arrays.train), bs, step, seed)
    return self.pre(self.arrays.train[idx], batching.dequant_rng(seed, step))

  def inputs(self, step: int, k: int = 1) -> jax.Array:
    """(k, B, D) batches of steps step .. step + k - 1, placed on the mesh."""
    x = np.stack([self.host_batch(step + i) for i in range(k)])
    return _place(x, _steps_sharding(self.mesh))

  def assemble(self, resident, inputs, step):
    del resident, step
    return inputs

  def train(self, step: int) -> jax.Array:
    """The model-space batch of `step` (B, D), sharded over the mesh."""
    return sharding_lib.shard_batch(self.host_batch(step), self.mesh)


class DevicePipeline:
  """The raw training array on the devices; gather and preprocessing in the step."""
  kind = "device"

  def __init__(self, config, arrays: Arrays, pre: Preprocessor, mesh):
    self.config, self.arrays, self.pre, self.mesh = config, arrays, pre, mesh
    train = np.ascontiguousarray(arrays.train)
    if not arrays.discrete:
      train = train.astype(np.float32)
    self.resident = _place(train, sharding_lib.replicated(mesh))
    self._train_fn = None

  def indices(self, step: int, k: int = 1) -> np.ndarray:
    """int32 (k, B): the example indices of steps step .. step + k - 1 (host order)."""
    bs, seed, n = self.config.training.batch_size, self.config.seed, len(self.arrays.train)
    return np.stack([batching.batch_indices(n, bs, step + i, seed)
                     for i in range(k)]).astype(np.int32)

  def inputs(self, step: int, k: int = 1) -> jax.Array:
    return _place(self.indices(step, k), _steps_sharding(self.mesh))

  def assemble(self, resident, idx, step):
    """Inside jit: the float32 (B, D) batch of `step` from its indices (B,)."""
    x = jnp.take(resident, idx, axis=0)
    u = None
    if self.pre.discrete and self.pre.dequantize:
      key = jax.random.fold_in(jax.random.PRNGKey(self.config.seed), _NOISE_STREAM)
      key = jax.random.fold_in(key, step)
      u = jax.random.uniform(key, (x.shape[0], self.pre.dim), jnp.float32)
    y = self.pre.device_forward(x, u)
    return jax.lax.with_sharding_constraint(y, sharding_lib.batch_sharding(self.mesh))

  def train(self, step: int) -> jax.Array:
    """The model-space batch of `step` (B, D) exactly as the loop step builds it."""
    if self._train_fn is None:
      self._train_fn = jax.jit(lambda r, idx, s: self.assemble(r, idx[0], s))
    return self._train_fn(self.resident, self.inputs(step, 1), jnp.int32(step))


def make_pipeline(config, arrays: Arrays, pre: Preprocessor, mesh):
  """The pipeline config.data.pipeline names (see the module docstring)."""
  cls = DevicePipeline if choose(config.data, arrays) == "device" else HostPipeline
  return cls(config, arrays, pre, mesh)


def make_loop_step(train_step: Callable, pipeline, k: int = 1):
  """(state, resident, inputs, base_rng) -> (state, metrics): k train steps in one call.

  inputs: `pipeline.inputs(step, k)`. k > 1 runs the steps in a `lax.scan`; the
  metrics are those of the last step.
  """

  def one(state, inp, base_rng, resident):
    batch = pipeline.assemble(resident, inp, state.step)
    return train_step(state, batch, base_rng)

  def loop_step(state, resident, inputs, base_rng):
    if k == 1:
      return one(state, inputs[0], base_rng, resident)
    body = lambda st, inp: one(st, inp, base_rng, resident)
    state, metrics = jax.lax.scan(body, state, inputs)
    return state, jax.tree.map(lambda m: m[-1], metrics)

  return loop_step


def compile_loop_step(train_step: Callable, pipeline, k: int, state, base_rng):
  """`make_loop_step` jitted with the training shardings (state donated), compiled."""
  mesh = pipeline.mesh
  repl = sharding_lib.replicated(mesh)
  resident_sharding = None if pipeline.resident is None else repl
  fn = jax.jit(make_loop_step(train_step, pipeline, k),
               in_shardings=(repl, resident_sharding, _steps_sharding(mesh), repl),
               out_shardings=(repl, repl), donate_argnums=(0,))
  return fn.lower(state, pipeline.resident, pipeline.inputs(int(state.step), k),
                  base_rng).compile()


def chunk_length(step: int, k: int, intervals, end: int) -> int:
  """Train steps in the dispatch starting at `step`: k, or fewer so that it stops at the
  next multiple of every positive interval (logging, evaluation, checkpoints) and at
  `end`. A pure function of the step: a resumed run dispatches as the original did."""
  stop = min(step + k, end)
  for every in intervals:
    if every and every > 0:
      stop = min(stop, (step // every + 1) * every)
  return max(1, stop - step)
