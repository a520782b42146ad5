"""Full (non-autoregressive) score networks s: R^D -> R^D, and size-matched AR-CSMs.

These are what exact, sliced and denoising score matching (SM, SSM, DSM) train in
the paper's Sec. 5.1 comparisons (Fig. 1 and 2). `ScoreNetModel` exposes the same
duck-typed interface the losses use on an `ARModel`: `init`, `full_score`, `dim`,
`normalized`; so `losses.sm_loss(model, ...)` works on either.
"""

import dataclasses
import math
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

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
  normalized: bool = False
  has_dropout: bool = False

  def init(self, rng, batch_size: int = 2, dtype=jnp.float32):
    """Parameters (jit-compiled: one compile instead of one per eager op)."""
    x = jnp.zeros((batch_size, self.dim), dtype)
    return jax.jit(self.net.init)(rng, x)

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


def init_params(model, rng):
  """model.init(rng) under jit: one compile instead of one per eager op (matters for MADE)."""
  return jax.jit(model.init)(rng)


def num_params(params) -> int:
  """Number of stored parameters (MADE's masked-out weights are counted too)."""
  return int(sum(np.prod(p.shape) for p in jax.tree.leaves(params)))


def ar_csm_config(dim: int, hidden: int = 256, num_hidden: int = 3, context_size: int = 4,
                  head_hidden=(32, 32), order: str = "natural") -> ml_collections.ConfigDict:
  """config.model for a MADE AR-CSM with `num_hidden` hidden layers of width `hidden`."""
  from csm_jax import config_base
  m = config_base.default_config().model
  m.backbone, m.head = "made", "score"
  m.hidden_sizes = (hidden,) * num_hidden
  m.context_size = context_size
  m.head_hidden = tuple(head_hidden)
  m.order = order
  return m


def ar_csm_for_dim(dim: int, hidden: int = 256, num_hidden: int = 3, context_size: int = 4,
                   head_hidden=(32, 32), order: str = "natural"):
  """A MADE (3 hidden layers) + score-head AR-CSM for D-dimensional vectors."""
  from csm_jax import models
  return models.get_model(
      ar_csm_config(dim, hidden, num_hidden, context_size, head_hidden, order), (dim,))


def made_param_count(dim: int, hidden: int, num_hidden: int = 3, context_size: int = 4,
                     head_hidden=(32, 32)) -> int:
  """Stored parameters of `ar_csm_for_dim(...)`, computed without building it."""
  n = dim * hidden + hidden
  n += (num_hidden - 1) * (hidden * hidden + hidden)
  n += hidden * dim * context_size + dim * context_size
  width = context_size + 2                       # [context_d, x_d, log sigma_d]
  for h in head_hidden:
    n += width * h + h
    width = h
  return n + width + 1


def mlp_param_count(dim: int, hidden_sizes: Sequence[int]) -> int:
  n, width = 0, dim
  for h in hidden_sizes:
    n += width * h + h
    width = h
  return n + width * dim + dim


def matched_mlp_hidden(dim: int, target_params: int, num_hidden: int = 3) -> int:
  """Width H of a `num_hidden`-layer MLP score net whose parameter count is closest to target.

  Solves (num_hidden-1) H^2 + (2D + num_hidden) H + D = target for H.
  """
  a, b, c = num_hidden - 1, 2 * dim + num_hidden, dim - target_params
  if a == 0:
    h = -c / b
  else:
    h = (-b + math.sqrt(b * b - 4 * a * c)) / (2 * a)
  cands = {max(1, int(math.floor(h))), max(1, int(math.ceil(h)))}
  return min(cands, key=lambda w: abs(mlp_param_count(dim, (w,) * num_hidden) - target_params))


def matched_pair(dim: int, hidden: int = 256, context_size: int = 4, head_hidden=(32, 32),
                 activation: str = "softplus", order: str = "natural"):
  """(AR-CSM MADE, MLP score net) with 3 hidden layers each and comparable parameter counts.

  MADE's width is `hidden`; the MLP's width is chosen to match MADE's stored-parameter
  count (MADE has D*context_size outputs, the MLP has D, so the MLP is wider).
  """
  ar = ar_csm_for_dim(dim, hidden, 3, context_size, head_hidden, order)
  target = made_param_count(dim, hidden, 3, context_size, head_hidden)
  h_mlp = matched_mlp_hidden(dim, target, 3)
  return ar, mlp_score_model(dim, (h_mlp,) * 3, activation)
