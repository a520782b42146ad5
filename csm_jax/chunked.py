"""Dimension-by-dimension samplers run in jit-compiled chunks, with progress and ETA.

An autoregressive sampler is a `lax.scan` over the D dimensions of the model's order
(`sampling.sample`, `naive_sample` and `ancestral_sample`). For a
PixelCNN++ image that one call can run for minutes to hours with nothing to show.
Here the same scan is cut into chunks of `chunk_dims` dimensions, each one call of
a single compiled function (the start index is traced, so it compiles once), and
the host reports progress between them. The random numbers of dimension t depend on
t only, so the chunked result is identical to the single call.
"""

import math
import time
from typing import Callable, Optional

import jax
import jax.numpy as jnp

from csm_jax import metrics as metrics_lib


def scan_dims(per_dim: Callable, x, start, length: int, num_dims: int):
  """x after per_dim(x, t) for t = start .. start+length-1, skipping t >= num_dims.

  `per_dim(x, t) -> x` updates dimension order[t]; positions past the end (the padding
  of the last chunk) leave x unchanged, so every chunk has the same static length.
  x may be a pytree of arrays (e.g. samples and per-dimension statistics).
  """
  def body(x, t):
    new = per_dim(x, jnp.minimum(t, num_dims - 1))
    return jax.tree.map(lambda a, b: jnp.where(t < num_dims, a, b), new, x), None

  x, _ = jax.lax.scan(body, x, start + jnp.arange(length))
  return x


def dims_to_sample(dim: int, num_dims=None) -> int:
  """How many dimensions of the order to sample: all D, or the first `num_dims`."""
  return dim if num_dims is None else min(int(num_dims), dim)


def auto_chunk_dims(num_dims: int, reports: int = 20) -> int:
  """Chunk size giving about `reports` progress lines."""
  return max(1, math.ceil(num_dims / reports))


def run_in_chunks(chunk_fn: Callable, x, num_dims: int, chunk_dims: int,
                  log: Optional[Callable[[str], None]] = None, label: str = "sampling"):
  """Calls chunk_fn(x, start) for start = 0, chunk_dims, ... < num_dims; logs ETA.

  chunk_fn must be jit-compiled with a traced `start` and cover dimensions
  start .. start+chunk_dims-1 (see `scan_dims`).
  """
  if chunk_dims < 1:
    raise ValueError(f"chunk_dims must be >= 1, got {chunk_dims}")
  progress = metrics_lib.Progress(0, num_dims)
  t0 = time.perf_counter()
  for start in range(0, num_dims, chunk_dims):
    x = chunk_fn(x, jnp.int32(start))
    done = min(start + chunk_dims, num_dims)
    if log is not None:
      jax.block_until_ready(x)
      progress.update(done)
      log(f"{label}: {done}/{num_dims} dims, {progress.rate:.1f} dims/s, "
          f"elapsed {time.perf_counter() - t0:.0f}s, ETA {progress.eta_str(done)}")
  return x
