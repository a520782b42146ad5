"""Metropolis-adjusted Langevin (MALA) and the accuracy of the default samplers, on AR
models with exactly known conditionals (csm_jax.models.known)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from csm_jax import config_base, sampling
from csm_jax.models import known
from tests.helpers import float64, tiny_model, tiny_train_config


@pytest.mark.parametrize("n", [2, 3, 4, 6])
def test_lobatto_rule_integrates_polynomials_of_degree_2n_minus_3(n):
  u, w = sampling.lobatto(n)
  assert u[0] == 0.0 and u[-1] == 1.0
  for k in range(2 * n - 2):
    np.testing.assert_allclose(np.dot(w, u ** k), 1.0 / (k + 1), rtol=1e-12, atol=1e-13)


def test_energy_difference_is_exact_for_a_gaussian_head():
  """Linear score: every Lobatto rule (trapezoid included) gives log q(x') - log q(x)."""
  model = known.GaussianAR(np.zeros((1, 1)), np.array([0.7]), np.array([0.3]))
  with float64():
    rng = np.random.default_rng(0)
    x, x_new = (jnp.asarray(rng.normal(0, 2, 50)) for _ in range(2))
    ctx = model.context(None, jnp.zeros((50, 1), jnp.float64))
    sig = jnp.full((50,), 0.2)
    f = lambda y: model.score(None, ctx, y[:, None], sig[:, None])[:, 0]
    w = 0.3 + 0.2 ** 2
    exact = (-(x_new - 0.7) ** 2 + (x - 0.7) ** 2) / (2 * w)
    for nodes in (2, 3, 5):
      diff, s_new = sampling.energy_difference(f, x, x_new, f(x), nodes)
      assert diff.dtype == jnp.float64
      np.testing.assert_allclose(diff, exact, rtol=1e-12, atol=1e-12)
      np.testing.assert_allclose(s_new, f(x_new), rtol=1e-12)


@pytest.mark.slow
def test_energy_difference_converges_for_a_bimodal_head():
  """Mixture head, moves of one component std across both modes and the gap between
  them: the log-density difference (log-sum-exp) to 1e-6 with 8 nodes, the error
  falling with the number of nodes."""
  model = known.MixtureAR(np.zeros((1, 1)), np.array([0.0]), np.array([0.05]),
                          np.array([0.6]), np.array([0.3]))
  with float64():
    x = jnp.linspace(-1.5, 1.5, 13)
    x_new = x + 0.25 * (-1.0) ** jnp.arange(13)
    ctx = model.context(None, jnp.zeros((13, 1), jnp.float64))
    sig = jnp.full((13,), 0.1)
    f = lambda y: model.score(None, ctx, y[:, None], sig[:, None])[:, 0]
    var = 0.05 + 0.1 ** 2

    def logq(y):
      return jnp.logaddexp(jnp.log(0.3) - (y + 0.6) ** 2 / (2 * var),
                           jnp.log(0.7) - (y - 0.6) ** 2 / (2 * var))
    errs = [float(jnp.max(jnp.abs(sampling.energy_difference(f, x, x_new, f(x), n)[0]
                                  - (logq(x_new) - logq(x))))) for n in (3, 4, 6, 8)]
    assert errs == sorted(errs, reverse=True) and errs[-1] < 1e-6, errs


def _moments_ok(x, mean, var, num_se=4.0):
  n = len(x)
  x = np.asarray(x, np.float64)
  assert abs(x.mean() - mean) < num_se * np.sqrt(var / n)
  assert abs(x.var() - var) < num_se * var * np.sqrt(2.0 / n)


def test_mala_leaves_a_one_dimensional_gaussian_invariant():
  """Start from N(m, w) exactly; one level with a large step (alpha = w): MALA keeps
  N(m, w) (sample moments within 4 standard errors), the unadjusted chain drifts to its
  biased law N(m, w / (1 - alpha / 4w)) = variance 4/3 w."""
  model = known.GaussianAR(np.zeros((1, 1)), np.array([0.5]), np.array([0.99]))
  sigma, n, w = 0.1, 20000, 1.0
  x0 = 0.5 + jnp.sqrt(w) * jax.random.normal(jax.random.PRNGKey(1), (n, 1))
  kw = dict(num_samples=n, sigmas=(sigma,), n_steps=30, step_lr=w, denoise=False, x_init=x0)
  x, acc = jax.jit(lambda r: sampling.sample(model, None, r, mh_nodes=2,
                                             return_acceptance=True, **kw))(
      jax.random.PRNGKey(0))
  _moments_ok(x[:, 0], 0.5, w)
  assert 0.5 < float(acc[0]) < 1.0
  ula = jax.jit(lambda r: sampling.sample(model, None, r, **kw))(jax.random.PRNGKey(0))
  _moments_ok(ula[:, 0], 0.5, w / (1 - 1 / 4))


def _gaussian_ar_4():
  return known.random_gaussian_ar(4, seed=1)


def test_default_sampler_reaches_the_monte_carlo_floor():
  """The default sampler of config_base (noise 5 -> 0.05, 10 levels) on a known Gaussian
  AR model (D = 4): covariance and mean errors within 2x the Monte Carlo floor (the
  errors of exact samples of the same size, largest of 4 sets)."""
  from experiments import sampler_accuracy as sa
  model, n = _gaussian_ar_4(), 4000
  config = config_base.default_config()
  config.sampling.chunk_dims = 0
  sampler, info = sampling.make_sampler_from_config(config, model, num_samples=n)
  x = sampler(None, jax.random.PRNGKey(0))
  err = sa.gaussian_errors(model, x)
  floor = [sa.gaussian_errors(model, model.exact_sample(s, n)) for s in range(4)]
  for key in ("cov_rel_fro", "mean_err"):
    assert err[key] < 2.0 * max(f[key] for f in floor), (key, err, floor, info)


@pytest.mark.slow
def test_mala_from_the_config_records_acceptance_and_fixed_point_agrees():
  config = tiny_train_config(**{"sampling.num_samples": 4, "sampling.num_steps": 3,
                                "sampling.chunk_dims": 2, "sampling.mh_correction": True,
                                "sampling.mh_nodes": 3})
  model = tiny_model(4, order="random")
  params = model.init(jax.random.PRNGKey(0))
  lines = []
  seq, info = sampling.make_sampler_from_config(config, model, log=lines.append)
  x = seq(params, jax.random.PRNGKey(1))
  assert np.all(np.isfinite(x)) and info["mh_nodes"] == 3
  assert 0.0 <= info["acceptance_min"] <= info["acceptance_mean"] <= 1.0
  assert info["head_evaluations_per_sample"] == 4 * (4 * (1 + 3 * 2) + 1)
  assert "MALA acceptance" in lines[-1]
  # one compiled call gives the same samples as the chunks; so do fixed-point sweeps
  whole, _ = sampling.make_sampler_from_config(config, model, chunk_dims=0)
  np.testing.assert_allclose(whole(params, jax.random.PRNGKey(1)), x, atol=1e-5)
  config.sampling.method, config.sampling.fixed_point_tol = "fixed_point", 0.0
  par, _ = sampling.make_sampler_from_config(config, model)
  np.testing.assert_allclose(par(params, jax.random.PRNGKey(1)), x, atol=1e-5)


@pytest.mark.parametrize("value", [1, 0, -3])
def test_mh_nodes_is_validated(value):
  """(A value of the wrong type is refused when set, by the locked config.)"""
  config = config_base.default_config()
  config.sampling.mh_nodes = value
  with pytest.raises(ValueError, match="sampling.mh_nodes"):
    config_base.validate(config)
