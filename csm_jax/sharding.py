"""Data parallelism with a ('data',) mesh: batch sharded, state replicated.

The same code runs on one CPU, several simulated CPU devices, a GPU box and a TPU
pod (each host builds the same global batch; every device takes its rows).
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


def shard_batch(x: np.ndarray, mesh: Mesh) -> jax.Array:
  """Places a host batch (identical on every host) on the mesh, split along axis 0."""
  sharding = batch_sharding(mesh)
  if jax.process_count() == 1:
    return jax.device_put(x, sharding)
  return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])
