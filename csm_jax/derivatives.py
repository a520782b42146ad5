"""Diagonals of Jacobians: the general one-hot reference and the AR-CSM fast path.

CSM (paper Eq. 5) needs only d s_d / d x_d. For a generic f: R^D -> R^D that costs
D forward-mode passes; for an AR-CSM it is one jvp through the head
(`ARModel.score_and_diag`, with the context held fixed).
"""

import jax
import jax.numpy as jnp


def jacobian_diagonal(f, x, chunk_size=None):
  """Exact diag(df/dx) of a batched, example-wise f: (B, D) -> (B, D).

  One forward pass (`jax.linearize`) then D jvps with one-hot tangents, vectorized
  with `vmap` (in chunks of `chunk_size` tangents to bound memory).
  Returns (f(x), diag) both (B, D).
  """
  dim = x.shape[-1]
  y, f_lin = jax.linearize(f, x)

  def diag_block(idx):
    tangents = jax.nn.one_hot(idx, dim, dtype=x.dtype)              # (K, D)
    tangents = jnp.broadcast_to(tangents[:, None, :], (len(idx),) + x.shape)
    cols = jax.vmap(f_lin)(tangents)                                  # (K, B, D)
    return jnp.take_along_axis(cols, idx[:, None, None], axis=2)[..., 0].T  # (B, K)

  if chunk_size is None or chunk_size >= dim:
    return y, diag_block(jnp.arange(dim))
  blocks = [diag_block(jnp.arange(s, min(s + chunk_size, dim))) for s in range(0, dim, chunk_size)]
  return y, jnp.concatenate(blocks, axis=1)


def jacobian_trace(f, x, chunk_size=None):
  """(f(x), tr(df/dx)) per example; trace through the exact one-hot diagonal."""
  y, diag = jacobian_diagonal(f, x, chunk_size)
  return y, diag.sum(axis=-1)
