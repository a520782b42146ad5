"""AIS estimates of log p(x) (csm_jax/ais.py) against exact marginal likelihoods.

Linear-Gaussian decoder x = W z + b + N(0, s^2 I), z ~ N(0, I): p(x) = N(b, W W^T + s^2 I).
Bernoulli decoder with a 1-D z: p(x) by quadrature over z.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from csm_jax import ais as ais_lib

Z, XD, S, B = 2, 4, 0.5, 8


def _linear_gaussian(seed=0):
  rng = np.random.default_rng(seed)
  w = rng.normal(size=(XD, Z)).astype(np.float32)
  b = rng.normal(size=(XD,)).astype(np.float32)
  z = rng.normal(size=(B, Z))
  x = (z @ w.T + b + S * rng.normal(size=(B, XD))).astype(np.float32)
  cov = w.astype(np.float64) @ w.T + S ** 2 * np.eye(XD)
  diff = x - b
  _, logdet = np.linalg.slogdet(cov)
  truth = -0.5 * (np.einsum("bi,ij,bj->b", diff, np.linalg.inv(cov), diff)
                  + logdet + XD * np.log(2 * np.pi))
  loglik = ais_lib.gaussian_log_likelihood(lambda z: z @ jnp.asarray(w).T + jnp.asarray(b), S)
  return loglik, jnp.asarray(x), truth


@functools.lru_cache(maxsize=None)
def _run(num_steps, seed, num_chains=64):
  loglik, x, truth = _linear_gaussian()
  f = jax.jit(functools.partial(ais_lib.ais, loglik, z_dim=Z, num_steps=num_steps,
                                num_chains=num_chains))
  res = f(x, rng=jax.random.PRNGKey(seed))
  return jax.tree.map(np.asarray, res), truth


def test_sigmoid_schedule():
  betas = ais_lib.sigmoid_schedule(1000)
  assert betas.shape == (1001,) and betas[0] == 0.0 and betas[-1] == 1.0
  steps = np.diff(betas)
  assert np.all(steps > 0) and steps[0] < steps[500] and steps[-1] < steps[500]
  with pytest.raises(ValueError):
    ais_lib.ais(lambda x, z: jnp.zeros(x.shape[0]), jnp.zeros((2, 3)), 2,
                jax.random.PRNGKey(0), schedule=np.array([0.0, 0.5]))


def test_linear_gaussian_within_0p1_nats():
  """1000 steps (the default), 64 chains: measured |error| <= 0.06 nats."""
  res, truth = _run(1000, 0, 64)
  assert res.log_px.shape == (B,) and res.log_weights.shape == (64, B)
  np.testing.assert_array_less(np.abs(res.log_px - truth), 0.1)
  # the step sizes were adapted towards the 0.65 target
  assert 0.45 < res.accept_rate.mean() < 0.9, res.accept_rate


def test_more_steps_tighten_the_bound():
  """With 4 chains the Jensen gap E[log mean w] < log p(x) is visible at 10 steps
  (measured: mean gap 0.95 nats) and nearly closed at 1000 (0.03)."""
  short, truth = _run(10, 0, 4)
  long, _ = _run(1000, 0, 4)
  gap_short = (truth - short.log_px).mean()
  gap_long = (truth - long.log_px).mean()
  assert gap_short > gap_long + 0.3, (gap_short, gap_long)
  assert abs(gap_long) < 0.15


def test_never_above_truth_beyond_monte_carlo_error():
  """E[exp(estimate)] = p(x): an estimate above the truth is Monte Carlo noise only."""
  for steps, chains in ((10, 4), (1000, 4), (1000, 64)):
    res, truth = _run(steps, 0, chains)
    se = np.asarray(ais_lib.log_mean_exp_stderr(jnp.asarray(res.log_weights)))
    assert np.all(res.log_px - truth <= 3 * se + 1e-3), (steps, res.log_px - truth, se)


def test_bernoulli_decoder_against_quadrature():
  """1-D z, 6 binary pixels with logits a z + c: log p(x) by a fine grid over z."""
  rng = np.random.default_rng(1)
  a = rng.normal(size=6).astype(np.float32) * 2
  c = rng.normal(size=6).astype(np.float32)
  x = (rng.uniform(size=(4, 6)) < 0.5).astype(np.float32)
  decode = lambda z: z * jnp.asarray(a) + jnp.asarray(c)      # (N, 1) -> (N, 6)
  loglik = ais_lib.bernoulli_log_likelihood(decode)

  grid = np.linspace(-8, 8, 4001)
  logits = grid[:, None] * a + c                               # (G, 6)
  ll = (x[:, None, :] * -np.logaddexp(0, -logits) +
        (1 - x[:, None, :]) * -np.logaddexp(0, logits)).sum(-1)   # (4, G)
  log_prior = -0.5 * grid ** 2 - 0.5 * np.log(2 * np.pi)
  truth = np.log(np.trapezoid(np.exp(ll + log_prior), grid, axis=-1))

  f = jax.jit(functools.partial(ais_lib.ais_log_likelihood, loglik, z_dim=1, num_steps=200,
                                num_chains=16))
  est = np.asarray(f(jnp.asarray(x), rng=jax.random.PRNGKey(0)))
  np.testing.assert_array_less(np.abs(est - truth), 0.1)
