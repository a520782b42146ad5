"""Full (non-autoregressive) score networks s: R^D -> R^D.

These are what exact, sliced and denoising score matching (SM, SSM, DSM) train in
the paper's Sec. 5.1 comparisons (Fig. 1 and 2). `ScoreNetModel` has the part of the
`ARModel` interface the losses use (`init`, `full_score`, `dim`, `kind`), so
`losses.sm_loss(model, ...)` works on either.
"""

import dataclasses
from typing import Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp

from csm_jax.models.ar import fast_init

ACTIVATIONS = {
    "softplus": nn.softplus,
    "swish": nn.swish,
    "elu": nn.elu,
}


def get_activation(name: str) -> Callable:
  if name not in ACTIVATIONS:
    raise ValueError(f"unknown activation {name!r}; known: {sorted(ACTIVATIONS)}")
  return ACTIVATIONS[name]


class MLPScore(nn.Module):
  """s(x) = MLP(x), D -> hidden... -> D; smooth activations so ds/dx exists everywhere."""
  dim: int
  hidden_sizes: Sequence[int] = (256, 256, 256)
  activation: str = "softplus"

  @nn.compact
  def __call__(self, x):
    act = get_activation(self.activation)
    h = x
    for i, width in enumerate(self.hidden_sizes):
      h = act(nn.Dense(width, name=f"dense_{i}")(h))
    return nn.Dense(self.dim, name="out")(h)


class LinearScore(nn.Module):
  """s(x) = W x + b: the score of a Gaussian when W = -Sigma^-1, b = Sigma^-1 mu."""
  dim: int

  @nn.compact
  def __call__(self, x):
    w = self.param("W", nn.initializers.normal(0.1), (self.dim, self.dim), x.dtype)
    b = self.param("b", nn.initializers.zeros, (self.dim,), x.dtype)
    return x @ w.T + b


@dataclasses.dataclass(frozen=True)
class ScoreNetModel:
  """Pure-function view of a full score network (not noise-conditional: sigma is ignored)."""
  net: nn.Module
  dim: int
  kind: str = "score"
  has_dropout: bool = False
  num_masked_weights: int = 0
  normalized = False

  def init(self, rng, batch_size: int = 2, dtype=jnp.float32):
    """Parameters (see `ar.fast_init`)."""
    return fast_init(lambda r: self.net.init(r, jnp.zeros((batch_size, self.dim), dtype)), rng)

  def full_score(self, params, x, sigma=None, train: bool = False, rng=None):
    """s(x), (B, D). `sigma`, `train` and `rng` are accepted for interface parity."""
    del sigma, train, rng
    if x.ndim != 2 or x.shape[-1] != self.dim:
      raise ValueError(f"expected x of shape (B, {self.dim}), got {x.shape}")
    return self.net.apply(params, x)


def mlp_score_model(dim: int, hidden_sizes=(256, 256, 256), activation="softplus"):
  return ScoreNetModel(MLPScore(dim, tuple(hidden_sizes), activation), dim)


def linear_score_model(dim: int):
  return ScoreNetModel(LinearScore(dim), dim)
