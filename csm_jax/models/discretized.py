"""Discretized mixture of logistics: the MLE baseline head of PixelCNN++ (bits/dim).

Salimans et al. (ICLR 2017), Sec. 2.1, applied per sub-pixel: with data scaled to
[-1, 1] *without* dequantization (``data.dequantize=False``, ``data.scale='symmetric'``)
pixel value k in {0..255} sits at the bin centre x_k = -1 + 2k/255 and

    P(x_k | x_<d) = sum_i pi_i [F_i(x_k + 1/255) - F_i(x_k - 1/255)],

with F_i the logistic CDF and the edge bins open: P(x_0) uses F_i(x_0 + 1/255) alone and
P(x_255) uses 1 - F_i(x_255 - 1/255). The probabilities of a pixel sum to one exactly.
PixelCNN++ mixes the channels of one pixel linearly inside the head; here the backbone's
context for channel c already sees the channels < c of its pixel (R -> G -> B), so one
univariate mixture per sub-pixel is enough and the head stays elementwise over d.

Numerics: F(a) - F(b) is evaluated as sigmoid(a) sigmoid(-b) (1 - exp(b - a)), in log
space, which is exact and stable even far in the tails, so the mid-bin density
fallback of PixelCNN++ (used when the difference underflows) is not needed. The
original PixelCNN++ formula, fallback included, is kept as ``method='pixelcnnpp'``.

This is a probability *mass* over 256 bins: it has no useful derivative in x, hence no
score. It is for MLE training and bits/dim only (``loss.name='mle'``); the head refuses
forward-mode x-derivatives (which is what CSM, SM and the Langevin sampler take) with
a clear error. Sample it with `sampling.ancestral_sample` (exact); it is registered
with kind 'mass' (`models.get_model`).
"""

import math

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

MIN_LOG_SCALE = -7.0  # as in PixelCNN++
MAX_LOG_SCALE = 7.0   # keeps exp(-log_scale) * bin width away from underflow


def _log_one_minus_exp(t):
  """log(1 - exp(-t)) for t > 0, accurate for small and large t."""
  return jnp.where(t < math.log(2.0), jnp.log(-jnp.expm1(-t)), jnp.log1p(-jnp.exp(-t)))


def bin_centers(num_bins: int = 256, dtype=jnp.float32):
  """The values x_k = -1 + 2k/(num_bins-1), k = 0..num_bins-1, of the bins in [-1, 1]."""
  return jnp.linspace(-1.0, 1.0, num_bins, dtype=dtype)


def to_bin_index(x, num_bins: int = 256):
  """Index k of the bin nearest to x in [-1, 1] (clipped), int32."""
  k = jnp.round((x + 1.0) * (0.5 * (num_bins - 1)))
  return jnp.clip(k, 0, num_bins - 1).astype(jnp.int32)


def discretized_logistic_log_prob(x, mean, log_scale, num_bins: int = 256,
                                  method: str = "stable"):
  """log P(bin of x) under one discretized logistic(mean, exp(log_scale)), elementwise.

  x holds bin centres in [-1, 1] (broadcasts with mean and log_scale). method:
    'stable'     exact in log space everywhere (default);
    'pixelcnnpp' the original formula: CDF difference, with log(pdf(x) * bin width)
                 where the difference is below 1e-5.
  """
  half = 1.0 / (num_bins - 1)                 # half a bin width
  centered = x - mean
  inv_s = jnp.exp(-log_scale)
  plus_in = inv_s * (centered + half)
  min_in = inv_s * (centered - half)
  log_cdf_plus = -jax.nn.softplus(-plus_in)               # log F(x + half): bin 0
  log_one_minus_cdf_min = -jax.nn.softplus(min_in)       # log (1 - F(x - half)): last bin
  if method == "stable":
    inner = log_cdf_plus + log_one_minus_cdf_min + _log_one_minus_exp(2.0 * half * inv_s)
  elif method == "pixelcnnpp":
    cdf_delta = jax.nn.sigmoid(plus_in) - jax.nn.sigmoid(min_in)
    mid_in = inv_s * centered
    log_pdf_mid = mid_in - log_scale - 2.0 * jax.nn.softplus(mid_in)
    inner = jnp.where(cdf_delta > 1e-5, jnp.log(jnp.maximum(cdf_delta, 1e-12)),
                      log_pdf_mid - math.log(0.5 * (num_bins - 1)))
  else:
    raise ValueError(f"method must be 'stable' or 'pixelcnnpp', got {method!r}")
  return jnp.where(x < -1.0 + half, log_cdf_plus,
                   jnp.where(x > 1.0 - half, log_one_minus_cdf_min, inner))


def mixture_log_prob(x, logits, means, log_scales, num_bins: int = 256,
                     method: str = "stable"):
  """log P(bin of x) under a discretized logistic mixture; params (..., K), x (...)."""
  comp = discretized_logistic_log_prob(x[..., None], means, log_scales, num_bins, method)
  return jax.nn.logsumexp(jax.nn.log_softmax(logits, axis=-1) + comp, axis=-1)


def mixture_sample(rng, logits, means, log_scales, num_bins: int = 256):
  """Exact draws from the discretized mixture: bin centres, shape logits.shape[:-1].

  A component by its weight, a continuous logistic draw from it, then the nearest bin
  (the end bins take everything beyond them), which is exactly P(bin) above.
  """
  k_comp, k_u = jax.random.split(rng)
  comp = jax.random.categorical(k_comp, logits, axis=-1)
  take = lambda a: jnp.take_along_axis(a, comp[..., None], axis=-1)[..., 0]
  mean, log_scale = take(means), take(log_scales)
  u = jax.random.uniform(k_u, mean.shape, mean.dtype, minval=1e-6, maxval=1.0 - 1e-6)
  y = mean + jnp.exp(log_scale) * (jnp.log(u) - jnp.log1p(-u))
  return bin_centers(num_bins, mean.dtype)[to_bin_index(y, num_bins)]


_NO_SCORE_MSG = (
    "the discretized logistic head is a probability mass over pixel bins: it has no "
    "derivative in x, hence no score. Use it with loss.name='mle' (data.dequantize=False, "
    "data.scale='symmetric') and sample it with sampling.ancestral_sample; for CSM, "
    "the Langevin sampler or quadrature likelihoods use model.head='score'.")


@jax.custom_jvp
def _no_x_derivative(x):
  return x


@_no_x_derivative.defjvp
def _no_x_derivative_jvp(primals, tangents):
  del primals, tangents
  raise TypeError(_NO_SCORE_MSG)


class DiscretizedLogisticMixtureHead(nn.Module):
  """Normalized discrete head: log P(x_d | x_<d) of the bin at x_d, (B, D).

  Mixture parameters from a linear map of the context, per sub-pixel:
  logits, means and log-scales (clipped to [-7, 7]) of `num_mixtures` logistics.
  """
  num_mixtures: int = 10
  num_bins: int = 256
  method: str = "stable"

  def setup(self):
    self.proj = nn.Dense(3 * self.num_mixtures, name="mixture")

  def mixture(self, ctx):
    """(logits, means, log_scales), each ctx.shape[:-1] + (num_mixtures,)."""
    k = self.num_mixtures
    p = self.proj(ctx)
    return (p[..., :k], p[..., k:2 * k],
            jnp.clip(p[..., 2 * k:], MIN_LOG_SCALE, MAX_LOG_SCALE))

  def __call__(self, ctx, x):
    chex.assert_equal_shape_prefix([ctx, x], x.ndim)
    logits, means, log_scales = self.mixture(ctx)
    return mixture_log_prob(_no_x_derivative(x), logits, means, log_scales,
                            self.num_bins, self.method)

  def sample(self, ctx, rng):
    """Exact draws (bin centres), shape ctx.shape[:-1]."""
    return mixture_sample(rng, *self.mixture(ctx), num_bins=self.num_bins)
