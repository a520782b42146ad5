"""Quadrature log-likelihoods (csm_jax/likelihood.py) against exact densities."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from csm_jax import data as data_lib
from csm_jax import likelihood
from csm_jax.config_base import default_config
from tests.helpers import float64, tiny_model, to_f64


def _set_head_bias(params, bias):
  params = jax.tree.map(lambda a: a, params)
  params["params"]["head"]["params"]["bias"] = jnp.asarray(bias, jnp.float32)
  return params


def _gaussian_made(dim=6):
  model = tiny_model(dim, head="gaussian", order="random")
  params = model.init(jax.random.PRNGKey(0))
  # conditionals with scales between ~0.15 and ~3 and means away from 0
  params = _set_head_bias(params, [0.7, -0.4])
  params["params"]["head"]["params"]["kernel"] *= 1.5
  return model, params


def _logistic_made(dim=5):
  model = tiny_model(dim, head="logistic_mixture", order="random")    # 3 components
  params = model.init(jax.random.PRNGKey(1))
  # well separated components: bimodal / trimodal conditionals
  params = _set_head_bias(params, [0.0, 0.5, -0.5, -2.5, 0.0, 2.5, -0.7, -1.2, -0.3])
  params["params"]["head"]["params"]["kernel"] *= 0.5
  return model, params


@pytest.mark.parametrize("make", [_gaussian_made, _logistic_made])
def test_quadrature_matches_exact_normalized_made(make):
  model, params = make()
  x = 2.0 * jax.random.normal(jax.random.PRNGKey(5), (16, model.dim))
  grid = likelihood.Grid(-30.0, 30.0, 4097)
  fn = likelihood.make_log_likelihood_fn(model, grid)
  out = fn(params, x)
  exact = likelihood.make_exact_log_likelihood_fn(model)(params, x)
  err = np.abs(np.asarray(out["log_cond"]) - np.asarray(exact))
  assert err.max() < 1e-3, err.max()                                  # nats per dimension
  assert np.abs(out["log_cond_coarse"] - exact).max() < 1e-3
  assert not np.any(out["outside"])
  # through evaluate_nll (batches with padding), both methods
  y = np.asarray(x)
  q = likelihood.evaluate_nll(model, params, y, grid=grid, batch_size=12, fn=fn)
  e = likelihood.evaluate_nll(model, params, y, method="exact", batch_size=5)
  assert abs(q["nll_nats_per_dim"] - e["nll_nats_per_dim"]) < 1e-4
  assert q["quad_error_nats_per_dim"] < 1e-3
  assert q["num_examples"] == 16 and q["frac_outside_grid"] == 0.0


def test_error_estimate_is_conservative_and_fourth_order():
  """float64: halving the grid changes log q by ~15x the actual error at step h."""
  with float64():
    model, params = _logistic_made()
    params = to_f64(params)
    x = 2.0 * jax.random.normal(jax.random.PRNGKey(5), (8, model.dim), jnp.float64)
    exact = np.asarray(likelihood.make_exact_log_likelihood_fn(model)(params, x))
    errs, ests = [], []
    for k in (257, 513):                      # h = 0.23, 0.12: coarse grids on purpose
      out = likelihood.make_log_likelihood_fn(model, likelihood.Grid(-30.0, 30.0, k))(params, x)
      errs.append(np.abs(np.asarray(out["log_cond"]) - exact).sum(-1).mean())
      ests.append(np.abs(np.asarray(out["log_cond"] - out["log_cond_coarse"]).sum(-1)).mean())
    assert errs[1] < 1e-3 and errs[0] > 1e-7
    assert ests[0] >= errs[0] and ests[1] >= errs[1]                  # conservative
    assert errs[0] / errs[1] > 8.0                                     # ~16 for O(h^4)


def test_float32_rounding_with_sharp_conditionals_far_from_the_grid_edge():
  """A narrow Gaussian (sd 0.02) at +10 on [-15, 15]: energies of 1e5 nats at the edges."""
  model, params = _gaussian_made(dim=3)
  params = _set_head_bias(params, [10.0, math.log(0.02)])
  params["params"]["head"]["params"]["kernel"] *= 0.0
  x = 10.0 + 0.02 * jax.random.normal(jax.random.PRNGKey(3), (32, 3))
  grid = likelihood.Grid(-15.0, 15.0, 8193)
  out = likelihood.make_log_likelihood_fn(model, grid)(params, x)
  exact = likelihood.make_exact_log_likelihood_fn(model)(params, x)
  assert np.abs(np.asarray(out["log_cond"]) - np.asarray(exact)).max() < 1e-3


def _mixture_2d():
  """An analytic 2-D Gaussian mixture as a noise-conditional AR model (x1, then x2|x1)."""
  pis = np.array([0.3, 0.5, 0.2])
  mus = np.array([[-1.5, 1.0], [0.5, -1.0], [2.0, 1.5]])
  sds = np.array([[0.4, 0.6], [0.7, 0.3], [0.3, 0.5]])

  class Mixture2D:
    dim, kind, normalized = 2, "score", False
    order = np.arange(2)

    def context(self, params, x, train=False, rng=None):
      # context of d: (is dim 2, x1): the 'head' below is shared over dimensions
      b = x.shape[0]
      return jnp.stack([jnp.broadcast_to(jnp.array([0.0, 1.0]), (b, 2)),
                        jnp.broadcast_to(x[:, :1], (b, 2))], -1)

    def log_cond(self, ctx, x, sigma):
      is2, x1 = ctx[..., 0][..., None], ctx[..., 1][..., None]
      v1, v2 = sds[:, 0] ** 2, sds[:, 1] ** 2 + sigma[..., None] ** 2
      log_n = lambda y, m, v: -0.5 * (y - m) ** 2 / v - 0.5 * jnp.log(2 * jnp.pi * v)
      # d = 1: marginal of x1 (perturbed); d = 2: p(x2 | x1) (only x2 perturbed)
      lw = jnp.log(pis) + jnp.where(is2 > 0, log_n(x1, mus[:, 0], v1), 0.0)
      lw = lw - jax.nn.logsumexp(lw, -1, keepdims=True)
      v = jnp.where(is2 > 0, v2, v1 + sigma[..., None] ** 2)
      m = jnp.where(is2 > 0, mus[:, 1], mus[:, 0])
      return jax.nn.logsumexp(lw + log_n(x[..., None], m, v), -1)

    def score(self, params, ctx, x, sigma):
      return jax.jvp(lambda y: self.log_cond(ctx, y, sigma), (x,), (jnp.ones_like(x),))[1]

    def score_and_diag(self, params, ctx, x, sigma):
      return jax.jvp(lambda y: self.score(params, ctx, y, sigma), (x,), (jnp.ones_like(x),))

  return Mixture2D()


def test_quadrature_matches_analytic_2d_mixture_with_noise():
  model = _mixture_2d()
  x = jax.random.uniform(jax.random.PRNGKey(0), (64, 2), minval=-3.0, maxval=3.0)
  sigma = 0.1
  out = likelihood.make_log_likelihood_fn(model, likelihood.Grid(-10.0, 10.0, 4097),
                                          sigma)(None, x)
  exact = model.log_cond(model.context(None, x), x, jnp.full_like(x, sigma))
  assert np.abs(np.asarray(out["log_cond"] - exact)).max() < 1e-3


def test_learned_2d_density_integrates_to_one():
  """A random MADE + score head (D = 2): the quadrature density q(x1, x2), evaluated on
  a mesh that is not the quadrature grid, integrates to 1 by 2-D Simpson's rule."""
  model = tiny_model(2, head="score")
  params = model.init(jax.random.PRNGKey(4))
  grid = likelihood.Grid(-3.0, 3.0, 257)
  m = 121                                            # Simpson mesh, odd, off the grid
  t = np.linspace(-3.0, 3.0, m)
  mesh = np.stack(np.meshgrid(t, t, indexing="ij"), -1).reshape(-1, 2).astype(np.float32)
  fn = likelihood.make_log_likelihood_fn(model, grid, sigma=0.5)
  logq = np.asarray(fn(params, mesh)["log_cond"]).sum(-1)
  q = np.exp(logq.astype(np.float64)).reshape(m, m)
  w = np.ones(m)
  w[1:-1:2], w[2:-1:2] = 4.0, 2.0
  w *= (t[1] - t[0]) / 3.0
  total = w @ q @ w
  assert abs(total - 1.0) < 1e-3, total
  assert q.max() / q.min() > 2.0                    # not trivially flat


def test_pixel_space_bits_per_dim():
  """bpd in pixel space: NLL(y) - log|dy/dx| over D log 2, as in the eval of train.py."""
  model, params = _gaussian_made(dim=4)
  pre = data_lib.Preprocessor(shape=(2, 2, 1), discrete=True, dequantize=True,
                              logit_lambda=1e-6)
  pix = np.random.default_rng(0).integers(0, 256, (10, 2, 2, 1)).astype(np.uint8)
  y = pre(pix, np.random.default_rng(1))
  res = likelihood.evaluate_nll(model, params, y, method="exact", preprocessor=pre)
  log_q = np.asarray(likelihood.make_exact_log_likelihood_fn(model)(params, y)).sum(-1)
  ref = np.mean(-(log_q + pre.log_det_jacobian(y))) / (4 * math.log(2.0))
  assert res["space"] == "pixel"
  np.testing.assert_allclose(res["bpd"], ref, rtol=1e-6)


def test_config_helpers():
  c = default_config()
  assert likelihood.noise_level(c) == pytest.approx(c.noise.sigma_min)
  c.noise.enabled = False
  assert likelihood.noise_level(c) == 1.0
  c.likelihood.num_points, c.likelihood.grid_min = 101, -2.0
  lc = c.likelihood
  assert lc.grid_max is None
  g = likelihood.make_grid(lc, data=np.array([[0.0, 1.0]]))
  assert g.lo == -2.0 and g.hi == pytest.approx(1.1) and g.num_points == 101
  with pytest.raises(ValueError, match="odd"):
    likelihood.Grid(0.0, 1.0, 100)


def test_nll_per_sigma_picks_the_data_noise_level():
  """Samples of the analytic model's own q_sigma at sigma = 0.5 (x_1 from its perturbed
  marginal, x_2 from q_sigma(x_2 | x_1)): per-level NLLs are exact, and the best level
  is 0.5."""
  model = _mixture_2d()
  pis = np.array([0.3, 0.5, 0.2])
  mus = np.array([[-1.5, 1.0], [0.5, -1.0], [2.0, 1.5]])
  sds = np.array([[0.4, 0.6], [0.7, 0.3], [0.3, 0.5]])
  rng, n, sig = np.random.default_rng(0), 4000, 0.5
  k1 = rng.choice(3, size=n, p=pis)
  x1 = mus[k1, 0] + np.sqrt(sds[k1, 0] ** 2 + sig ** 2) * rng.standard_normal(n)
  logr = np.log(pis) - 0.5 * (x1[:, None] - mus[:, 0]) ** 2 / sds[:, 0] ** 2 - np.log(sds[:, 0])
  r = np.exp(logr - logr.max(1, keepdims=True))
  r /= r.sum(1, keepdims=True)
  k2 = (rng.random(n)[:, None] > np.cumsum(r, 1)).sum(1)
  x2 = mus[k2, 1] + np.sqrt(sds[k2, 1] ** 2 + sig ** 2) * rng.standard_normal(n)
  y = np.stack([x1, x2], 1).astype(np.float32)
  grid = likelihood.Grid(-10.0, 10.0, 1025)
  per = likelihood.nll_per_sigma(model, None, y, [0.05, 0.5, 1.5], grid, batch_size=1000)
  assert per["sigmas"] == [0.05, 0.5, 1.5] and per["best_sigma"] == 0.5
  for s_, nll in zip(per["sigmas"], per["nll_nats"]):
    exact = model.log_cond(model.context(None, jnp.asarray(y)), jnp.asarray(y),
                           jnp.full(y.shape, s_, jnp.float32))
    np.testing.assert_allclose(nll, -float(np.asarray(exact).sum(-1).mean()), atol=1e-3)


def test_discrete_head_bits_per_dim_has_no_log_det():
  """A probability-mass head (discretized logistics): bpd = -log2 P / D; no quadrature."""
  model = tiny_model(4, head="discretized_logistic")
  params = model.init(jax.random.PRNGKey(0))
  pre = data_lib.Preprocessor(shape=(2, 2, 1), discrete=True, dequantize=False,
                              scale="symmetric")
  pix = np.random.default_rng(0).integers(0, 256, (6, 2, 2, 1)).astype(np.uint8)
  y = pre(pix)
  res = likelihood.evaluate_nll(model, params, y, method="exact", preprocessor=pre)
  log_p = np.asarray(likelihood.make_exact_log_likelihood_fn(model)(params, y)).sum(-1)
  np.testing.assert_allclose(res["bpd"], -log_p.mean() / (4 * math.log(2.0)), rtol=1e-6)
  with pytest.raises(ValueError, match="discrete"):
    likelihood.make_log_likelihood_fn(model, likelihood.Grid(-1.0, 1.0, 5))
