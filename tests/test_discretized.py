"""Tests for the discretized logistic mixture head (csm_jax/models/discretized.py)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from csm_jax import likelihood
from csm_jax import losses
from csm_jax import sampling
from csm_jax.models import discretized
from tests import helpers


def _numpy_params(init, seed=0, scale=0.3, dtype=None):
  """Random parameters with the structure of `init()`, built with numpy: no compile."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda a: jnp.asarray(scale * rng.standard_normal(a.shape),
                                            dtype or a.dtype), jax.eval_shape(init))


def _random_mixture(rng, shape, k, extreme=False):
  """Mixture parameters (logits, means, log_scales), each shape + (k,), float64."""
  logits = rng.normal(size=shape + (k,)) * 2
  if extreme:  # means far outside [-1, 1], scales at both clip limits
    means = rng.uniform(-30, 30, size=shape + (k,))
    log_scales = rng.choice([-7.0, -5.0, 0.0, 3.0, 7.0], size=shape + (k,))
  else:
    means = rng.uniform(-1.2, 1.2, size=shape + (k,))
    log_scales = rng.uniform(-7.0, 1.0, size=shape + (k,))
  return logits, means, log_scales


@pytest.mark.parametrize("extreme", [False, True])
def test_mixture_sums_to_one_over_256_values(extreme):
  with helpers.float64():
    rng = np.random.default_rng(0 + extreme)
    params = [jnp.asarray(a) for a in _random_mixture(rng, (5, 7), 4, extreme)]
    xs = discretized.bin_centers(256, jnp.float64)                     # (256,)
    logp = jax.jit(jax.vmap(lambda x: discretized.mixture_log_prob(
        jnp.full((5, 7), x), *params)))(xs)                            # (256, 5, 7)
    assert logp.dtype == jnp.float64
    assert np.all(np.isfinite(logp)) and np.all(logp <= 1e-12)
    total = np.exp(np.asarray(logp)).sum(0)
    np.testing.assert_allclose(total, 1.0, rtol=0, atol=1e-12)


def test_head_sums_to_one_for_random_contexts():
  """The registered head with random weights and random contexts, float64."""
  with helpers.float64():
    head = discretized.DiscretizedLogisticMixtureHead(num_mixtures=5)
    rng = np.random.default_rng(1)
    ctx = jnp.asarray(rng.normal(size=(3, 4, 6)) * 3)                 # (B, D, C)
    params = _numpy_params(lambda: head.init(jax.random.key(0), ctx, jnp.zeros((3, 4))),
                           scale=1.0)
    xs = discretized.bin_centers(256, jnp.float64)
    logp = jax.jit(jax.vmap(lambda x: head.apply(params, ctx, jnp.full((3, 4), x))))(xs)
    np.testing.assert_allclose(np.exp(np.asarray(logp)).sum(0), 1.0, rtol=0, atol=1e-12)


def test_matches_reference_probabilities():
  """Against a direct numpy float64 CDF difference (edge bins open)."""
  with helpers.float64():
    rng = np.random.default_rng(2)
    mean, log_scale = rng.uniform(-1, 1, 64), rng.uniform(-3, 0, 64)
    k = rng.integers(0, 256, 64)
    k[:3], k[3:6] = 0, 255
    x = -1 + 2 * k / 255.0
    sig = lambda z: 1 / (1 + np.exp(-z))
    hi = np.where(k == 255, np.inf, (x + 1 / 255 - mean) / np.exp(log_scale))
    lo = np.where(k == 0, -np.inf, (x - 1 / 255 - mean) / np.exp(log_scale))
    # F(hi) - F(lo), in whichever tail keeps both terms small (no cancellation)
    ref = np.where(x > mean, sig(-lo) - sig(-hi), sig(hi) - sig(lo))
    got = jax.jit(discretized.discretized_logistic_log_prob)(
        jnp.asarray(x), jnp.asarray(mean), jnp.asarray(log_scale))
    np.testing.assert_allclose(np.asarray(got), np.log(ref), rtol=1e-10)


def test_stable_agrees_with_pixelcnnpp_formula():
  """Same values as the original formula wherever its CDF difference is > 1e-5, and
  close to its mid-bin fallback in the far tails."""
  with helpers.float64():
    rng = np.random.default_rng(3)
    x = jnp.asarray(-1 + 2 * rng.integers(0, 256, 4000) / 255.0)
    mean = jnp.asarray(rng.uniform(-1.5, 1.5, 4000))
    log_scale = jnp.asarray(rng.uniform(-7, 0, 4000))
    f = jax.jit(discretized.discretized_logistic_log_prob, static_argnames="method")
    a = np.asarray(f(x, mean, log_scale))
    b = np.asarray(f(x, mean, log_scale, method="pixelcnnpp"))
    big = a > math.log(1e-5)
    assert big.sum() > 100 and (~big).sum() > 100
    np.testing.assert_allclose(a[big], b[big], rtol=1e-9)
    # the fallback approximates log(pdf * width): right to within a few nats at most
    assert np.all(np.isfinite(a)) and np.median(np.abs(a[~big] - b[~big])) < 1.0


def test_sampling_matches_probabilities():
  rng = np.random.default_rng(4)
  logits = jnp.asarray(rng.normal(size=3), jnp.float32)
  means = jnp.asarray([-0.98, 0.2, 0.95], jnp.float32)
  log_scales = jnp.asarray([-3.0, -2.5, -3.5], jnp.float32)
  n = 40000
  draws = jax.jit(lambda key: discretized.mixture_sample(
      key, jnp.broadcast_to(logits, (n, 3)), jnp.broadcast_to(means, (n, 3)),
      jnp.broadcast_to(log_scales, (n, 3))))(jax.random.key(0))
  idx = np.asarray(discretized.to_bin_index(draws))
  np.testing.assert_allclose(np.asarray(draws), -1 + 2 * idx / 255.0, atol=1e-6)
  p = np.exp(np.asarray(jax.jit(discretized.mixture_log_prob)(
      discretized.bin_centers(), logits, means, log_scales)))
  freq = np.bincount(idx, minlength=256) / n
  # coarse bins of 8 values: |freq - p| within 5 standard errors
  pc, fc = p.reshape(32, 8).sum(1), freq.reshape(32, 8).sum(1)
  assert np.all(np.abs(fc - pc) <= 5 * np.sqrt(pc * (1 - pc) / n) + 1e-4)


def test_registry_mle_and_no_score():
  """Registered head: normalized MLE works; anything that wants a score fails loudly."""
  model = helpers.tiny_model(6, head="discretized_logistic")
  assert model.normalized and model.discrete and model.kind == "mass"
  params = _numpy_params(lambda: model.init(jax.random.key(0)))
  x = jnp.asarray(-1 + 2 * np.random.default_rng(5).integers(0, 256, (4, 6)) / 255.0,
                  jnp.float32)
  (loss, _), grads = jax.jit(jax.value_and_grad(
      lambda p: losses.mle_loss(model, p, x, jax.random.key(1)), has_aux=True))(params)
  assert np.isfinite(loss) and 0 < float(loss) / (6 * math.log(2)) < 20
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
  with pytest.raises(TypeError, match="no score"):
    jax.eval_shape(lambda p: model.score(p, model.context(p, x), x, jnp.ones_like(x)), params)
  with pytest.raises(ValueError, match="probability mass"):
    losses.get_loss_fn(helpers.tiny_train_config(), model)


def test_ancestral_sample_and_bits_per_dim():
  model = helpers.tiny_model(5, head="discretized_logistic")
  params = _numpy_params(lambda: model.init(jax.random.key(0)))
  x = np.asarray(sampling.make_ancestral_sampler(model, 8)(params, jax.random.key(1)))
  assert x.shape == (8, 5)
  idx = np.asarray(discretized.to_bin_index(jnp.asarray(x)))
  np.testing.assert_allclose(x, -1 + 2 * idx / 255.0, atol=1e-6)
  assert len(np.unique(x)) > 5
  np.testing.assert_allclose(likelihood.bits_per_dim(5 * math.log(256.0), 5), 8.0)


def test_chunked_ancestral_sampler_matches_the_single_call():
  model = helpers.tiny_model(5, head="discretized_logistic", order="random")
  params = _numpy_params(lambda: model.init(jax.random.key(0)))
  whole = sampling.make_ancestral_sampler(model, 6)(params, jax.random.key(3))
  lines = []
  x = sampling.make_ancestral_sampler(model, 6, chunk_dims=2, log=lines.append)(
      params, jax.random.key(3))
  np.testing.assert_array_equal(np.asarray(x), np.asarray(whole))
  assert len(lines) == 3 and "5/5 dims" in lines[-1]


def test_ancestral_sample_refuses_score_heads():
  model = helpers.tiny_model(3)
  with pytest.raises(ValueError, match="discretized \\(probability mass\\) head"):
    sampling.ancestral_sample(model, None, jax.random.key(0), 2)
