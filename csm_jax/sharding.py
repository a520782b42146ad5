"""Data parallelism with a ('data',) mesh: batch sharded, state replicated.

The same code runs on one CPU, several simulated CPU devices, a GPU box and a TPU
pod. With several processes (multi-host) every process computes the same global batch
(a pure function of the step) and puts only the rows its own devices hold
(`process_rows`, `shard_batch`); the replicated state and metrics are then identical on
every process, and `to_host` brings a sharded result back to each of them.
"""

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from csm_jax.config_base import ConfigError


def data_mesh(devices=None) -> Mesh:
  """A 1-D mesh over all (or the given) devices with axis name 'data'."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), ("data",))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P("data"))


def check_batch_size(batch_size: int, mesh: Mesh, name: str = "batch_size"):
  if batch_size < 1 or batch_size % mesh.size:
    raise ConfigError(f"{name}={batch_size} must be divisible by the number of devices "
                     f"({mesh.size}); pick a multiple of {mesh.size}")


def process_rows(num_rows: int, mesh: Mesh) -> np.ndarray:
  """Indices (ascending) of the rows of a global batch of num_rows that the devices of
  this process hold under `batch_sharding(mesh)`: all rows with one process."""
  index_map = batch_sharding(mesh).addressable_devices_indices_map((num_rows,))
  rows = set()
  for index in index_map.values():
    rows.update(range(*index[0].indices(num_rows)))
  return np.asarray(sorted(rows), np.int64)


def put_process_rows(local: np.ndarray, mesh: Mesh, num_rows: int) -> jax.Array:
  """The global (num_rows, ...) batch sharded over the mesh, from this process's rows
  (`local` = the global batch's rows `process_rows(num_rows, mesh)`, in that order)."""
  sharding = batch_sharding(mesh)
  if jax.process_count() == 1:
    return jax.device_put(local, sharding)
  return jax.make_array_from_process_local_data(sharding, local,
                                                (num_rows,) + tuple(local.shape[1:]))


def shard_batch(x: np.ndarray, mesh: Mesh) -> jax.Array:
  """Places a global host batch (identical on every process) on the mesh, split along
  axis 0: each process transfers only the rows of its own devices."""
  if jax.process_count() == 1:
    return jax.device_put(x, batch_sharding(mesh))
  return put_process_rows(np.asarray(x)[process_rows(len(x), mesh)], mesh, len(x))


def to_host(x) -> np.ndarray:
  """A NumPy copy of the whole (global) array x on every process. With several
  processes and a sharded x this is a collective: every process must call it."""
  if not isinstance(x, jax.Array) or x.is_fully_addressable:
    return np.asarray(x)
  if x.is_fully_replicated:
    return np.asarray(x.addressable_data(0))
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def is_main_process() -> bool:
  """True on the process that writes files (process 0; the only one without multi-host)."""
  return jax.process_index() == 0


def sync(name: str):
  """Waits until every process got here (nothing to do with one process)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)


def broadcast_flag(ok: bool) -> bool:
  """Process 0's `ok`, on every process (a collective with several processes)."""
  if jax.process_count() == 1:
    return bool(ok)
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return bool(multihost_utils.broadcast_one_to_all(np.asarray(bool(ok))))


def preemption_point(first: int, last: int) -> bool:
  """With several processes: True on every process after the same step once any of them
  got SIGTERM (JAX's preemption service). Call it after every dispatch with the steps it
  ran (first, last]: the service needs every step number, in order. False otherwise."""
  if jax.process_count() == 1:
    return False
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  try:
    return any(multihost_utils.reached_preemption_sync_point(s)
               for s in range(first + 1, last + 1))
  except RuntimeError:  # the preemption service is off (jax_enable_preemption_service)
    return False


def initialize_distributed(coordinator_address=None, num_processes=None, process_id=None):
  """jax.distributed.initialize (None: detected on Cloud TPU, SLURM, Open MPI, or from
  $JAX_COORDINATOR_ADDRESS), after choosing gloo for CPU cross-process collectives
  unless the user chose (JAX's default in recent versions; older ones had none)."""
  try:
    if jax.config.jax_cpu_collectives_implementation in (None, "none"):
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
  except AttributeError:  # a JAX without this option
    pass
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id)
