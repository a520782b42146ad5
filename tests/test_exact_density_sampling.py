"""Exact ancestral sampling of the normalized MADE heads (Gaussian, logistic mixture):
the probability integral transform of every conditional is uniform, against the
closed-form CDFs computed from the head's own distribution parameters."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special, stats

from csm_jax import sampling
from tests import helpers


def _cdf(model, params, x):
  """F_d(x_d | x_<d) for every d, (N, D), from the head's distribution parameters."""
  ctx = model.context(params, jnp.asarray(x))
  dist = model.net.apply(params, ctx, method=lambda m, c: m.head.distribution(c))
  dist = [np.asarray(a, np.float64) for a in dist]
  x = np.asarray(x, np.float64)
  if len(dist) == 2:                                   # Gaussian: (mu, log_scale)
    mu, log_scale = dist
    return special.ndtr((x - mu) * np.exp(-log_scale))
  logits, means, log_scales = dist                     # logistic mixture
  w = special.softmax(logits, -1)
  return np.sum(w * special.expit((x[..., None] - means) * np.exp(-log_scales)), -1)


@pytest.mark.parametrize("head", ["gaussian", "logistic_mixture"])
def test_ancestral_samples_have_uniform_pit(head):
  model = helpers.tiny_model(4, head=head)
  params = model.init(jax.random.PRNGKey(1))
  x = np.asarray(sampling.ancestral_sample(model, params, jax.random.PRNGKey(2), 4000))
  u = _cdf(model, params, x)
  for d in range(model.dim):
    assert stats.kstest(u[:, d], "uniform").pvalue > 1e-3, (head, d)
  # the check has power: a last dimension off by a quarter of its spread fails it
  shifted = x.copy()
  shifted[:, -1] += 0.25 * x[:, -1].std()
  assert stats.kstest(_cdf(model, params, shifted)[:, -1], "uniform").pvalue < 1e-3


def test_ancestral_sampler_refuses_score_heads_and_keeps_the_mass_message():
  model = helpers.tiny_model(3)
  with pytest.raises(ValueError, match="discretized \\(probability mass\\) head"):
    sampling.ancestral_sample(model, None, jax.random.key(0), 2)
