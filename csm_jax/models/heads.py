"""Heads shared across dimensions: map (context_d, x_d[, sigma_d]) to a 1-D conditional.

A head acts elementwise over dimensions: its output at d depends on x only through
x_d (and on context_d), so d/dx_d of the output is one jvp with an all-ones tangent.
"""

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


class ScoreHead(nn.Module):
  """AR-CSM head: s_d = MLP([context_d, x_d, log sigma_d]) (optionally / sigma_d).

  Unnormalized: it models d/dx_d log q_sigma(x_d | x_<d) directly (paper Eq. 4-5).
  With `sigma_embedding` > 0 the noise level also enters every layer, through a learned
  embedding of log sigma (sinusoidal features, one swish layer) that shifts, or with
  `sigma_film` scales and shifts, each pre-activation. One scalar input is a weak
  condition when one head serves sigma from 0.05 to 3: on 2-D data it leaves the
  small-sigma scores visibly underfit (experiments/toy2d.py). The embedding costs
  several times the head's own flops per element, so it is off by default.
  """
  hidden_sizes: Sequence[int] = (32, 32)   # as config_base: model.head_hidden
  scale_by_sigma: bool = True
  sigma_embedding: int = 0   # > 0: a learned embedding of log sigma added to every layer
  sigma_film: bool = False

  @nn.compact
  def __call__(self, ctx, x, sigma):
    feats = jnp.concatenate([ctx, x[..., None], jnp.log(sigma)[..., None]], axis=-1)
    h = feats.reshape(-1, feats.shape[-1])  # (B*D, F): 2-D matmuls are faster on CPU
    emb = None
    if self.sigma_embedding:
      ls = jnp.log(sigma).reshape(-1, 1)
      freqs = 2.0 ** jnp.arange(4, dtype=ls.dtype)
      emb = jnp.concatenate([ls, jnp.sin(ls * freqs), jnp.cos(ls * freqs)], axis=-1)
      emb = nn.swish(nn.Dense(self.sigma_embedding, name="sigma_embed")(emb))
    for i, width in enumerate(self.hidden_sizes):
      z = nn.Dense(width, name=f"dense_{i}")(h)
      if emb is not None:
        if self.sigma_film:
          g = nn.Dense(2 * width, name=f"sigma_{i}")(emb)
          z = z * (1.0 + g[:, :width]) + g[:, width:]
        else:
          z = z + nn.Dense(width, name=f"sigma_{i}")(emb)
      h = nn.swish(z)
    s = nn.Dense(1, name="out")(h)[..., 0].reshape(x.shape)
    return s / sigma if self.scale_by_sigma else s


class GaussianHead(nn.Module):
  """Normalized head: x_d | x_<d ~ N(mu_d, exp(log_scale_d)^2)."""

  @nn.compact
  def distribution(self, ctx):
    """(mu, log_scale) of each conditional, shape ctx.shape[:-1] each."""
    p = nn.Dense(2, name="params")(ctx)
    return p[..., 0], jnp.clip(p[..., 1], -7.0, 7.0)

  def __call__(self, ctx, x):
    mu, log_scale = self.distribution(ctx)
    z = (x - mu) * jnp.exp(-log_scale)
    return -0.5 * z ** 2 - log_scale - 0.5 * jnp.log(2 * jnp.pi)

  def sample(self, ctx, rng):
    """Exact draws, shape ctx.shape[:-1]."""
    mu, log_scale = self.distribution(ctx)
    return mu + jnp.exp(log_scale) * jax.random.normal(rng, mu.shape, mu.dtype)


class LogisticMixtureHead(nn.Module):
  """Normalized head: x_d | x_<d ~ a mixture of `num_mixtures` logistics."""
  num_mixtures: int = 10

  @nn.compact
  def distribution(self, ctx):
    """(logits, means, log_scales) of each conditional's mixture, (..., K) each."""
    k = self.num_mixtures
    p = nn.Dense(3 * k, name="params")(ctx)
    return p[..., :k], p[..., k:2 * k], jnp.clip(p[..., 2 * k:], -7.0, 7.0)

  def __call__(self, ctx, x):
    logits, means, log_scales = self.distribution(ctx)
    z = (x[..., None] - means) * jnp.exp(-log_scales)
    log_pdf = -z - 2.0 * jax.nn.softplus(-z) - log_scales  # log logistic density
    return jax.nn.logsumexp(jax.nn.log_softmax(logits, axis=-1) + log_pdf, axis=-1)

  def sample(self, ctx, rng):
    """Exact draws, shape ctx.shape[:-1]: a component by its weight, then the inverse
    logistic CDF, mean + scale (log u - log(1 - u))."""
    logits, means, log_scales = self.distribution(ctx)
    k_comp, k_u = jax.random.split(rng)
    j = jax.random.categorical(k_comp, logits, axis=-1)
    pick = lambda a: jnp.take_along_axis(a, j[..., None], axis=-1)[..., 0]
    u = jax.random.uniform(k_u, j.shape, means.dtype, minval=1e-6, maxval=1.0 - 1e-6)
    return pick(means) + jnp.exp(pick(log_scales)) * (jnp.log(u) - jnp.log1p(-u))
