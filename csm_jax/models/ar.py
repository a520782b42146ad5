"""The AR-CSM interface: a context network plus a head shared over dimensions.

`ARModel` wraps a Flax module into pure functions of `params`, which is what
`jvp`, `vmap` and the losses want. Every model of this package, normalized or
not, exposes the same conditional scores s_d(x_<d, x_d) (paper Eq. 4).
"""

import contextlib
import dataclasses

from typing import Callable, Optional

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


KINDS = ("score", "density", "mass")


def _precision(name: Optional[str]):
  """jax.default_matmul_precision(name) for the ops traced inside (None: unchanged)."""
  return contextlib.nullcontext() if name is None else jax.default_matmul_precision(name)


def fast_init(init_fn: Callable, rng):
  """init_fn(rng) compiled once, with XLA's backend optimizations off on CPU.

  Eager Flax init compiles every op separately, and a fully optimized compile of a
  one-off init costs minutes for big convnets on CPU: this is the one way parameters
  are initialized in this package. Inside jit / eval_shape it just calls init_fn.
  """
  tracer = getattr(jax.core, "Tracer", None)  # absent in some JAX versions
  if tracer is not None and isinstance(rng, tracer):
    return init_fn(rng)
  opts = {"xla_backend_optimization_level": 0} if jax.default_backend() == "cpu" else None
  return jax.jit(init_fn, compiler_options=opts)(rng)


class ARNet(nn.Module):
  """Backbone (x -> context (B, D, C)) and head (context, x[, sigma] -> (B, D)).

  `kind` (set by the registry) says what the head outputs: 'score' heads take the
  noise level, normalized heads ('density', 'mass') do not.
  """
  backbone: nn.Module
  head: nn.Module
  kind: str = "score"
  context_sigma: bool = False   # the backbone takes the noise level (one per example)

  def context(self, x, train: bool = False, sigma=None):
    if self.context_sigma:
      return self.backbone(x, train=train, sigma=sigma)
    return self.backbone(x, train=train)

  def head_out(self, ctx, x, sigma=None):
    if self.kind == "score":
      return self.head(ctx, x, sigma)
    return self.head(ctx, x)

  def __call__(self, x, sigma, train: bool = False):
    ctx_sigma = sigma[:, 0] if self.context_sigma else None
    return self.head_out(self.context(x, train, ctx_sigma), x, sigma)


@dataclasses.dataclass(frozen=True)
class ARModel:
  """Pure-function view of an `ARNet`.

  Attributes:
    net: the Flax module.
    dim: D, the number of conditionals.
    rank: rank[i] is the position of variable i in the autoregressive order.
    kind: 'score' (AR-CSM head), 'density' (normalized log-density, MLE baselines)
      or 'mass' (probability mass over pixel bins); see `models.get_model`.
    data_shape: per-example shape of the data (for reshaping samples).
    has_dropout: the backbone uses dropout when train=True (needs an rng).
    num_masked_weights: stored kernel entries fixed at zero by masks (MADE).
  """
  net: ARNet
  dim: int
  rank: np.ndarray
  kind: str
  data_shape: tuple
  has_dropout: bool = False
  num_masked_weights: int = 0
  # Matmul precision of the backbone's and of the head's float32 operations (None: the
  # backend default). bfloat16 backbones ignore theirs (operands are bfloat16).
  backbone_precision: Optional[str] = None
  head_precision: Optional[str] = "highest"
  # A noise-conditional context (smoothed-joint training, noise.mode='joint'): the context
  # network takes the noise level too. `context_level` is the level it is evaluated at
  # when a caller gives none (None: callers must give one); see `at_level`.
  context_level: Optional[float] = None

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f"ARModel.kind must be one of {KINDS}, got {self.kind!r}")
    if self.net.kind != self.kind:
      raise ValueError(f"ARModel.kind {self.kind!r} differs from its net's {self.net.kind!r}")

  @property
  def context_sigma(self) -> bool:
    """The context network takes the noise level (a model of the smoothed joint)."""
    return self.net.context_sigma

  def at_level(self, sigma: float) -> "ARModel":
    """This model with its context evaluated at noise level `sigma` whenever a caller
    gives none: q_sigma(x) of a smoothed-joint model as a plain AR model, for every
    function that calls `context(params, x)` (samplers, likelihood, restoration)."""
    return dataclasses.replace(self, context_level=float(sigma))

  def _context_sigma(self, sigma, batch: int):
    """The (B,) context noise level of a noise-conditional context; None otherwise."""
    if not self.context_sigma:
      return None
    if sigma is None:
      sigma = self.context_level
    if sigma is None:
      raise ValueError("this model's context network is noise-conditional "
                       "(model.context_sigma_embedding > 0, noise.mode='joint'): give "
                       "context(..., sigma=level) or use model.at_level(level)")
    return jnp.broadcast_to(jnp.asarray(sigma), (batch,))

  @property
  def normalized(self) -> bool:
    """A normalized conditional (log-density or log-mass): exact NLL, MLE."""
    return self.kind != "score"

  @property
  def discrete(self) -> bool:
    """A probability mass over bins: no derivative in x, hence no score."""
    return self.kind == "mass"

  def init(self, rng, batch_size: int = 2):
    """Parameters (see `fast_init`)."""
    def f(rng):
      x = jnp.zeros((batch_size, self.dim), jnp.float32)  # sigma = 1 for every input
      with _precision(self.backbone_precision):
        return self.net.init({"params": rng, "dropout": rng}, x, jnp.ones_like(x))
    return fast_init(f, rng)

  def context(self, params, x, train: bool = False, rng=None, sigma=None):
    """Contexts (B, D, C); context[:, d] depends only on x_<d.

    `sigma` (scalar or (B,)): the noise level of a noise-conditional context (default
    `context_level`); ignored by a context that takes none.
    """
    chex.assert_shape(x, (None, self.dim))
    rngs = {"dropout": rng} if (train and self.has_dropout) else None
    if train and self.has_dropout and rng is None:
      raise ValueError("this model uses dropout: context(train=True) needs an rng")
    ctx_sigma = self._context_sigma(sigma, x.shape[0])
    with _precision(self.backbone_precision):
      return self.net.apply(params, x, train, ctx_sigma, method=ARNet.context, rngs=rngs)

  def log_cond(self, params, ctx, x):
    """log q(x_d | x_<d) per dimension, (B, D); normalized heads only."""
    if not self.normalized:
      raise ValueError("log_cond needs a normalized head; use likelihood.py for AR-CSM")
    with _precision(self.head_precision):
      return self.net.apply(params, ctx, x, method=ARNet.head_out)

  def score(self, params, ctx, x, sigma):
    """Conditional scores s_d given fixed contexts, (B, D)."""
    if self.normalized:
      f = lambda y: self.log_cond(params, ctx, y)
      return jax.jvp(f, (x,), (jnp.ones_like(x),))[1]
    with _precision(self.head_precision):
      return self.net.apply(params, ctx, x, sigma, method=ARNet.head_out)

  def score_and_diag(self, params, ctx, x, sigma):
    """(s, ds/dx_d) for all d in one jvp through the head (the AR-CSM fast path)."""
    f = lambda y: self.score(params, ctx, y, sigma)
    return jax.jvp(f, (x,), (jnp.ones_like(x),))

  def full_score(self, params, x, sigma, train: bool = False, rng=None):
    """s(x) as a function R^D -> R^D (context recomputed from x): for references.

    A noise-conditional context is evaluated at each example's level sigma[:, 0] (one
    level per example in the smoothed joint) unless `context_level` is set.
    """
    ctx_sigma = None
    if self.context_sigma and self.context_level is None:
      ctx_sigma = jnp.broadcast_to(sigma, x.shape)[:, 0]
    return self.score(params, self.context(params, x, train, rng, ctx_sigma), x, sigma)

  @property
  def order(self) -> np.ndarray:
    """Variable indices in sampling order: order[t] is sampled t-th."""
    return np.argsort(self.rank)

