"""Conditional AR-CSM: scores of q(z_d | z_<d, x) for a conditioning input x.

The building block of VAEs with implicit encoders (paper Sec. 6): the score of an
implicit posterior q(z | x) is estimated by an AR-CSM whose contexts depend on z_<d
and on x. The conditioning input enters every layer of the MADE unmasked (as in
conditional MADE, Germain et al. 2015, Sec. 3.4), so the autoregressive structure in
z, and with it the one-jvp diagonal of CSM (paper Eq. 5), is unchanged.
"""

import dataclasses
from typing import Sequence

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from csm_jax.models import heads as heads_lib
from csm_jax.models import made as made_lib
from csm_jax.models.ar import fast_init


class ConditionalMADE(nn.Module):
  """z (B, D), x (B, X) -> contexts (B, D, C); context[:, d] depends on z_<d and all of x.

  The masked path is `made.MADE`'s; x adds an unmasked linear term to every hidden
  pre-activation and to the context layer. The latter matters: the context of the
  first dimension in the order sees no hidden unit, and would otherwise ignore x.
  """
  dim: int
  cond_dim: int
  hidden_sizes: Sequence[int] = (256, 256)
  context_size: int = 16
  order: str = "natural"
  order_seed: int = 0
  dtype: jnp.dtype = jnp.float32

  @property
  def rank(self) -> np.ndarray:
    return made_lib.variable_order(self.dim, self.order, self.order_seed)

  @nn.compact
  def __call__(self, z, cond):
    chex.assert_rank([z, cond], 2)
    chex.assert_equal_shape_prefix([z, cond], 1)
    if z.shape[-1] != self.dim or cond.shape[-1] != self.cond_dim:
      raise ValueError(f"ConditionalMADE built for D={self.dim}, X={self.cond_dim} got "
                       f"z with D={z.shape[-1]} and cond with X={cond.shape[-1]}")
    masks = made_lib.made_masks(self.rank, self.hidden_sizes, self.context_size)
    c = cond.astype(self.dtype)
    h = z
    for i, m in enumerate(masks[:-1]):
      pre = made_lib.MaskedDense(m, dtype=self.dtype, name=f"hidden_{i}")(h)
      pre = pre + nn.Dense(m.shape[1], use_bias=False, dtype=self.dtype, name=f"cond_{i}")(c)
      h = nn.relu(pre)
    out = made_lib.MaskedDense(masks[-1], dtype=self.dtype, name="context")(h)
    out = out + nn.Dense(masks[-1].shape[1], use_bias=False, dtype=self.dtype,
                         name="cond_context")(c)
    out_dtype = jnp.promote_types(self.dtype, jnp.float32)  # float64 in exactness tests
    return out.reshape(z.shape[0], self.dim, self.context_size).astype(out_dtype)


class ConditionalARNet(nn.Module):
  """Backbone ((z, x) -> context (B, D, C)) and a noise-conditional score head."""
  backbone: nn.Module
  head: nn.Module

  def context(self, z, cond):
    return self.backbone(z, cond)

  def head_out(self, ctx, z, sigma):
    return self.head(ctx, z, sigma)

  def __call__(self, z, cond, sigma):
    return self.head_out(self.context(z, cond), z, sigma)


@dataclasses.dataclass(frozen=True)
class ConditionalARModel:
  """Pure-function view of a `ConditionalARNet`: `ARModel`'s API with an explicit `cond`.

  s_d(z_<d, z_d; x, sigma) approximates d/dz_d log q_sigma(z_d | z_<d, x) (paper Eq. 4
  with every conditional also given x). Only the context sees x, so `score` and
  `score_and_diag` take the contexts exactly as `ARModel`'s do.

  Attributes:
    net: the Flax module.
    dim: D, the number of conditionals (the dimension of z).
    cond_dim: X, the dimension of the conditioning input.
    rank: rank[i] is the position of variable i in the autoregressive order.
  """
  net: ConditionalARNet
  dim: int
  cond_dim: int
  rank: np.ndarray

  def init(self, rng, batch_size: int = 2):
    """Parameters (see `ar.fast_init`)."""
    def f(rng):
      z = jnp.zeros((batch_size, self.dim), jnp.float32)
      x = jnp.zeros((batch_size, self.cond_dim), jnp.float32)
      return self.net.init(rng, z, x, jnp.ones_like(z))
    return fast_init(f, rng)

  def context(self, params, z, cond):
    """Contexts (B, D, C); context[:, d] depends only on z_<d and on cond."""
    chex.assert_shape(z, (None, self.dim))
    chex.assert_shape(cond, (z.shape[0], self.cond_dim))
    return self.net.apply(params, z, cond, method=ConditionalARNet.context)

  def score(self, params, ctx, z, sigma):
    """Conditional scores s_d given fixed contexts: ctx (B, n, C), z (B, n) -> (B, n).

    n = D, or any slice of the dimensions (the head is shared over d: the samplers
    call it with the context of one dimension, n = 1).
    """
    chex.assert_shape(ctx, (z.shape[0], z.shape[1], None))
    return self.net.apply(params, ctx, z, sigma, method=ConditionalARNet.head_out)

  def score_and_diag(self, params, ctx, z, sigma):
    """(s, ds_d/dz_d) for all d in one jvp through the head (the AR-CSM fast path)."""
    f = lambda y: self.score(params, ctx, y, sigma)
    return jax.jvp(f, (z,), (jnp.ones_like(z),))

  def full_score(self, params, z, cond, sigma):
    """s as a function of (z, cond), context recomputed from z: for references."""
    return self.score(params, self.context(params, z, cond), z, sigma)

  @property
  def order(self) -> np.ndarray:
    """Variable indices in sampling order: order[t] is sampled t-th."""
    return np.argsort(self.rank)

  def bind(self, cond) -> "BoundConditional":
    """This model with the conditioning input fixed (see `BoundConditional`)."""
    return BoundConditional(self, cond)


@dataclasses.dataclass(frozen=True, eq=False)
class BoundConditional:
  """A `ConditionalARModel` with its conditioning batch x fixed, seen as an `ARModel`.

  The AR-CSM of q(z | x) for that x: s_d(z_<d, z_d; sigma) = s_d(z_<d, z_d; x, sigma)
  (paper Eq. 4 with every conditional also given x). It presents what the samplers
  (`sampling.sample`, `naive_sample`, `grid_sample`, `fixed_point_sample`), the
  likelihood grid and the denoisers read from an unconditional model -- dim, rank,
  order, kind, normalized, discrete, context(params, z), score, score_and_diag,
  full_score(params, z, sigma) -- so they sample z ~ q(z | x) unchanged.

  `cond` is (B, X), one row per sample (num_samples must be B), or (X,), shared by
  every sample. It may be a tracer: bind inside the jitted function
  (`jax.jit(lambda params, rng, cond: sampling.sample(model.bind(cond), ...))`) so
  that a new x does not recompile; a concrete cond closed over becomes a constant.
  Compared by identity (eq=False): an array has no hash.
  """
  model: ConditionalARModel
  cond: jax.Array
  kind = "score"           # a noise-conditional score head, never normalized
  normalized = False
  discrete = False
  has_dropout = False

  @property
  def dim(self) -> int:
    return self.model.dim

  @property
  def rank(self) -> np.ndarray:
    return self.model.rank

  @property
  def order(self) -> np.ndarray:
    return self.model.order

  @property
  def data_shape(self) -> tuple:
    return (self.model.dim,)

  def _cond(self, batch: int):
    """cond as (batch, X)."""
    c = jnp.asarray(self.cond)
    if c.ndim == 1:
      c = jnp.broadcast_to(c, (batch,) + c.shape)
    chex.assert_shape(c, (batch, self.model.cond_dim))
    return c

  def context(self, params, z, train: bool = False, rng=None):
    """Contexts (B, D, C) from z_<d and the bound x (`train`, `rng`: no dropout)."""
    del train, rng
    return self.model.context(params, z, self._cond(z.shape[0]))

  def score(self, params, ctx, z, sigma):
    """The conditional model's head: scores given fixed contexts, (B, n)."""
    return self.model.score(params, ctx, z, sigma)

  def score_and_diag(self, params, ctx, z, sigma):
    return self.model.score_and_diag(params, ctx, z, sigma)

  def full_score(self, params, z, sigma, train: bool = False, rng=None):
    """s(z; x) with the context recomputed from z (references, the naive sampler)."""
    return self.score(params, self.context(params, z, train, rng), z, sigma)


def conditional_made_model(dim: int, cond_dim: int, hidden_sizes=(256, 256),
                           context_size: int = 16, head_hidden=(32, 32),
                           order: str = "natural", order_seed: int = 0,
                           scale_by_sigma: bool = True, sigma_embedding: int = 0,
                           sigma_film: bool = False,
                           dtype=jnp.float32) -> ConditionalARModel:
  """A conditional MADE with the package's `ScoreHead`, as a `ConditionalARModel`."""
  backbone = ConditionalMADE(dim=dim, cond_dim=cond_dim, hidden_sizes=tuple(hidden_sizes),
                             context_size=context_size, order=order, order_seed=order_seed,
                             dtype=dtype)
  head = heads_lib.ScoreHead(hidden_sizes=tuple(head_hidden), scale_by_sigma=scale_by_sigma,
                             sigma_embedding=sigma_embedding, sigma_film=sigma_film)
  return ConditionalARModel(net=ConditionalARNet(backbone=backbone, head=head), dim=dim,
                            cond_dim=cond_dim, rank=backbone.rank)
