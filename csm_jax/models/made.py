"""MADE backbone (Germain et al. 2015) producing one context vector per dimension.

The context of dimension d depends only on x_<d in the model's variable order,
which is what makes the AR-CSM diagonal cheap (paper Sec. 4.1).
"""

from typing import Sequence

import chex
import flax.linen as nn
import jax.numpy as jnp
import numpy as np


def variable_order(dim: int, order: str, seed: int = 0) -> np.ndarray:
  """Returns rank[i]: the position (0-based) of variable i in the sampling order."""
  if order == "natural":
    return np.arange(dim)
  if order == "reverse":
    return np.arange(dim)[::-1].copy()
  if order == "random":
    return np.random.default_rng(seed).permutation(dim)
  raise ValueError(f"model.order must be 'natural', 'reverse' or 'random', got {order!r}")


def made_masks(rank: np.ndarray, hidden_sizes: Sequence[int], context_size: int):
  """Binary masks for the MADE layers (inputs -> hiddens -> D*context outputs).

  Degrees: input i has degree rank[i] + 1 in 1..D; hidden units cycle through
  1..D-1; a unit may see a unit of the previous layer whose degree is <= its own;
  the context units of dimension i see hidden degrees < rank[i] + 1.
  """
  dim = len(rank)
  if dim < 2:
    raise ValueError(f"MADE needs at least 2 dimensions, got {dim}")
  in_deg = rank + 1
  degrees = [in_deg]
  for h in hidden_sizes:
    degrees.append(np.arange(h) % (dim - 1) + 1)
  masks = [(d_out[None, :] >= d_in[:, None]).astype(np.float32)
           for d_in, d_out in zip(degrees[:-1], degrees[1:])]
  out_deg = np.repeat(in_deg, context_size)  # unit (i, k) at index i*C + k
  masks.append((out_deg[None, :] > degrees[-1][:, None]).astype(np.float32))
  return masks


class SigmaEmbedding(nn.Module):
  """log sigma (one level per example) -> a learned (B, width) embedding: sinusoidal
  features of log sigma through one swish layer (as the score head's)."""
  width: int

  @nn.compact
  def __call__(self, sigma, batch: int):
    sigma = jnp.asarray(sigma)
    sigma = sigma.astype(jnp.promote_types(sigma.dtype, jnp.float32))
    ls = jnp.log(jnp.broadcast_to(sigma, (batch,))).reshape(-1, 1)
    freqs = 2.0 ** jnp.arange(4, dtype=ls.dtype)
    feats = jnp.concatenate([ls, jnp.sin(ls * freqs), jnp.cos(ls * freqs)], axis=-1)
    return nn.swish(nn.Dense(self.width, name="dense")(feats))


def sigma_features(sigma, batch: int, width: int):
  """The embedding of `SigmaEmbedding` inside a compact module (named 'sigma_embed')."""
  return SigmaEmbedding(width, name="sigma_embed")(sigma, batch)


class MaskedDense(nn.Module):
  """Dense layer whose kernel is multiplied by a fixed binary mask."""
  mask: np.ndarray
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    fan_in, fan_out = self.mask.shape
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (fan_in, fan_out), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (fan_out,), jnp.float32)
    w = (kernel * jnp.asarray(self.mask)).astype(self.dtype)
    return jnp.dot(x.astype(self.dtype), w) + bias.astype(self.dtype)


class MADE(nn.Module):
  """MADE context network: x (B, D) -> context (B, D, C), context[:, d] a function of x_<d."""
  dim: int
  hidden_sizes: Sequence[int] = (1024, 1024)
  context_size: int = 16
  order: str = "natural"
  order_seed: int = 0
  dtype: jnp.dtype = jnp.float32
  # > 0: the context is noise-conditional (smoothed-joint training, noise.mode='joint'):
  # a learned embedding of log sigma, one level per example, shifts every layer's
  # pre-activations. sigma is not a data variable, so the masks stay autoregressive.
  sigma_embedding: int = 0

  @property
  def rank(self) -> np.ndarray:
    return variable_order(self.dim, self.order, self.order_seed)

  @nn.compact
  def __call__(self, x, train: bool = False, sigma=None):
    del train  # MADE has no dropout
    chex.assert_rank(x, 2)
    if x.shape[-1] != self.dim:
      raise ValueError(f"MADE built for D={self.dim} got inputs with D={x.shape[-1]}")
    masks = made_masks(self.rank, self.hidden_sizes, self.context_size)
    emb = None
    if self.sigma_embedding:
      if sigma is None:
        raise ValueError("this MADE is noise-conditional (sigma_embedding > 0): it needs sigma")
      emb = sigma_features(sigma, x.shape[0], self.sigma_embedding)
    shift = lambda width, name: (0.0 if emb is None else
                                 nn.Dense(width, name=name)(emb).astype(self.dtype))
    h = x
    for i, m in enumerate(masks[:-1]):
      z = MaskedDense(m, dtype=self.dtype, name=f"hidden_{i}")(h)
      h = nn.relu(z + shift(m.shape[1], f"sigma_{i}"))
    out = MaskedDense(masks[-1], dtype=self.dtype, name="context")(h)
    out = out + shift(masks[-1].shape[1], "sigma_context")
    out = out.reshape(x.shape[0], self.dim, self.context_size)
    return out.astype(jnp.promote_types(out.dtype, x.dtype))  # bf16 -> the input's dtype
