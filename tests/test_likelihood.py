"""Quadrature log-likelihoods (csm_jax/likelihood.py) against exact densities."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from csm_jax import data as data_lib
from csm_jax import likelihood
from csm_jax import config_base
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


@pytest.mark.slow
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


def _ancestral_samples(model, params, n, seed):
  """Samples of a normalized AR model: each conditional's inverse CDF on 4097 nodes over
  [-40, 40] (its exact log-density there), in the model's order; (n, D) float64."""
  grid = likelihood.Grid(-40.0, 40.0, 4097, 0)
  dtype = jax.tree.leaves(params)[0].dtype
  rng = np.random.default_rng(seed)
  x = np.zeros((n, model.dim))
  for d in model.order:
    ctx = model.context(params, jnp.asarray(x, dtype))[:, d:d + 1]
    logq = np.asarray(likelihood.log_conditionals_on_grid(model, params, ctx, grid),
                      np.float64)[:, 0]
    cdf = np.cumsum(np.exp(logq - logq.max(1, keepdims=True)), 1)
    j = (rng.random((n, 1)) * cdf[:, -1:] > cdf).sum(1)
    x[:, d] = grid.lo + (j + rng.random(n) - 0.5) * grid.h
  return x


def _place_outliers(x, grid):
  """Every other example gets one value past the grid: 5% or 25% of its width beyond
  lo or hi, cycling through the dimensions."""
  x = x.copy()
  width = grid.hi - grid.lo
  for n, i in enumerate(range(0, len(x), 2)):
    past = (0.05 if n % 4 < 2 else 0.25) * width
    x[i, n % x.shape[1]] = grid.hi + past if n % 2 else grid.lo - past
  return x


@pytest.mark.slow
@pytest.mark.parametrize("head", ["gaussian", "logistic_mixture"])
def test_default_grid_from_training_data_matches_exact(head):
  """float64, random-weight normalized MADEs on the default grid (config defaults: the
  range of training samples + 10%, K = 2049, outer nodes, analytic tails): quadrature
  and exact log-likelihoods agree within 1e-4 nats/dim on samples of the model, and
  with test values placed beyond the grid (later conditionals then move, partly past
  the grid). Normalizing on the grid alone would be off by tail_nats_per_dim, more than
  that tolerance. Values outside the grid are counted per dimension."""
  with float64():
    model = tiny_model(5, head=head, order="random")
    params = to_f64(model.init(jax.random.PRNGKey(0)))
    train = _ancestral_samples(model, params, 300, 1)
    grid = likelihood.make_grid(default_config().likelihood, data=train)
    assert grid.num_points == 2049 and grid.outer_points == likelihood.OUTER_POINTS
    assert grid.lo < train.min() and grid.hi > train.max()
    test = _ancestral_samples(model, params, 40, 2)
    fn = likelihood.make_log_likelihood_fn(model, grid)
    exact_fn = likelihood.make_exact_log_likelihood_fn(model)
    for x, tail_min in ((test, 0.0), (_place_outliers(test, grid), 1e-4)):
      q = likelihood.evaluate_nll(model, params, x, grid=grid, batch_size=len(x), fn=fn)
      e = likelihood.evaluate_nll(model, params, x, method="exact", batch_size=len(x))
      assert abs(q["nll_nats_per_dim"] - e["nll_nats_per_dim"]) < 1e-4, (q, e)
      err = np.asarray(fn(params, x)["log_cond"]) - np.asarray(exact_fn(params, x))
      assert np.abs(err).max() < 1e-4, np.abs(err).max()          # every conditional
      assert q["quad_error_nats_per_dim"] < 1e-4
      assert q["tail_nats_per_dim"] >= tail_min and q["frac_improper_tail"] == 0.0
      outside = (x < grid.lo) | (x > grid.hi)
      assert q["outside_per_dim"] == outside.sum(0).tolist()
      assert q["frac_outside_grid"] == pytest.approx(outside.mean())
    assert sum(q["outside_per_dim"]) >= 20 and min(q["outside_per_dim"]) >= 4


def test_tail_mass_closed_form():
  """log int_0^inf exp(a t - c t^2 / 2) dt against numerical integration, float32 and
  float64, from Gaussian tails (c > 0, either sign of a) to the exponential limit."""
  cases = [(-1.0, 0.0), (-3.0, 0.5), (2.0, 1.5), (0.0, 2.0), (-1.0, 1e-6), (-50.0, 1e-3),
           (-1e3, 1e2), (1e-3, 1e-2)]
  t = np.linspace(0.0, 2000.0, 2_000_001)
  for a, c in cases:
    f = np.exp(a * t - 0.5 * c * t * t)
    ref = np.log(np.sum((f[1:] + f[:-1]) * 0.5 * (t[1] - t[0])))
    if a < -10:                                  # too sharp for the mesh: 1/|a| series
      ref = -np.log(-a) + np.log1p(-c / a ** 2 + 3 * c ** 2 / a ** 4)
    for dtype in (jnp.float32, np.float64):
      with float64():
        got = float(likelihood.log_tail_mass(jnp.asarray(a, dtype), jnp.asarray(c, dtype)))
      assert got == pytest.approx(ref, abs=2e-5 if dtype == jnp.float32 else 1e-6), (a, c)
  assert np.isinf(likelihood.log_tail_mass(jnp.float32(0.5), jnp.float32(0.0)))


@pytest.mark.slow
def test_analytic_tails_exact_for_gaussian_conditionals_and_outside_points():
  """No outer nodes (outer_points=0): the Gaussian tail model is exact for Gaussian
  conditionals, so a grid that cuts off much of their mass, and test values beyond it
  (their energy from the tail model, not extrapolated from the end cell), still give
  the exact log-likelihood; the reported tail error is the Gaussian-vs-exponential gap."""
  with float64():
    model, params = _gaussian_made(dim=4)
    params = to_f64(params)
    x = jnp.asarray(2.0 * np.random.default_rng(0).standard_normal((12, 4)))
    x = x.at[0, 1].set(6.0).at[1, 2].set(-7.5).at[2, 0].set(9.0)
    grid = likelihood.Grid(-1.5, 2.0, 1025, outer_points=0)
    out = likelihood.make_log_likelihood_fn(model, grid)(params, x)
    exact = np.asarray(likelihood.make_exact_log_likelihood_fn(model)(params, x))
    np.testing.assert_allclose(np.asarray(out["log_cond"]), exact, atol=1e-8)
    np.testing.assert_allclose(np.asarray(out["log_cond_coarse"]), exact, atol=1e-5)
    assert np.asarray(out["beyond_reach"]).sum() == np.asarray(out["outside"]).sum() > 3
    assert np.asarray(out["tail_nats"]).max() > 0.1                # a lot beyond the grid
    assert np.all(np.asarray(out["tail_error"]) > 0)
    assert np.all(np.asarray(out["outside_error"])[~np.asarray(out["outside"])] == 0)


def _constant_score(value):
  """A 1-D 'AR model' whose score is a constant: exp(value x), a tail that never decays
  on one side (the model is not normalizable there)."""

  class Constant:
    dim, kind, normalized = 1, "score", False
    order = np.arange(1)

    def context(self, params, x, train=False, rng=None):
      return jnp.zeros(x.shape + (1,), x.dtype)

    def score_and_diag(self, params, ctx, x, sigma):
      return jnp.full_like(x, value), jnp.zeros_like(x)

  return Constant()


@pytest.mark.slow
def test_improper_tail_is_cut_and_flagged():
  """A score of +1 everywhere: no finite mass to the right. That side is cut at its last
  node (the covered range), the rest stays normalized, and evaluate_nll reports it."""
  model = _constant_score(1.0)
  for outer in (0, 64):
    grid = likelihood.Grid(0.0, 1.0, 33, outer_points=outer)
    x = np.array([[0.25], [-2.0]], np.float32)
    out = likelihood.make_log_likelihood_fn(model, grid)(None, x)
    assert np.all(np.asarray(out["improper_tail"]))
    right = grid.to_dict()["covered"][1]
    # density exp(x) on (-inf, right]: log q(x) = x - right
    np.testing.assert_allclose(np.asarray(out["log_cond"])[:, 0], x[:, 0] - right, atol=1e-3)
    res = likelihood.evaluate_nll(model, None, x, grid=grid)
    assert res["frac_improper_tail"] == 1.0 and np.isfinite(res["nll_nats"])


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_quadrature_matches_analytic_2d_mixture_with_noise():
  model = _mixture_2d()
  x = jax.random.uniform(jax.random.PRNGKey(0), (64, 2), minval=-3.0, maxval=3.0)
  sigma = 0.1
  out = likelihood.make_log_likelihood_fn(model, likelihood.Grid(-10.0, 10.0, 4097),
                                          sigma)(None, x)
  exact = model.log_cond(model.context(None, x), x, jnp.full_like(x, sigma))
  assert np.abs(np.asarray(out["log_cond"] - exact)).max() < 1e-3


@pytest.mark.slow
def test_learned_2d_density_integrates_to_one():
  """A random MADE + score head (D = 2): the quadrature density q(x1, x2), evaluated on
  a mesh that is not the quadrature grid, integrates to 1 by 2-D Simpson's rule once
  the mass it reports beyond the mesh square (the grid) is added: per row x1 = t_i the
  conditional of x2 misses exp(-tail_nats), and so does the marginal of x1. With the
  tails analytic at the grid ends (outer_points=0) and with the default outer nodes."""
  model = tiny_model(2, head="score")
  params = model.init(jax.random.PRNGKey(4))
  m = 121                                            # Simpson mesh, odd, off the grid
  t = np.linspace(-3.0, 3.0, m)
  mesh = np.stack(np.meshgrid(t, t, indexing="ij"), -1).reshape(-1, 2).astype(np.float32)
  w = np.ones(m)
  w[1:-1:2], w[2:-1:2] = 4.0, 2.0
  w *= (t[1] - t[0]) / 3.0
  assert list(model.order) == [0, 1]
  for outer in (0, likelihood.OUTER_POINTS):
    grid = likelihood.Grid(-3.0, 3.0, 257, outer)
    out = likelihood.make_log_likelihood_fn(model, grid, sigma=0.5)(params, mesh)
    q = np.exp(np.asarray(out["log_cond"], np.float64)).reshape(m, m, 2)   # [i, j, d]
    inside = np.exp(-np.asarray(out["tail_nats"], np.float64)).reshape(m, m, 2)
    q1, q2 = q[:, 0, 0], q[..., 1]                  # q(x1 = t_i), q(x2 = t_j | x1 = t_i)
    in1, in2 = inside[0, 0, 0], inside[:, 0, 1]     # their mass on [-3, 3]
    np.testing.assert_allclose(q2 @ w, in2, rtol=1e-3)          # each row x1 = t_i
    np.testing.assert_allclose(w @ q1, in1, rtol=1e-3)
    total = w @ (q1[:, None] * q2) @ w
    np.testing.assert_allclose(total, w @ (q1 * in2), rtol=1e-3)
    assert q2.max() / q2.min() > 2.0                 # not trivially flat


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
  assert g.outer_points == lc.outer_points and g.outer_reach == lc.outer_reach
  for field, value in (("outer_points", 3), ("grid_num_train", 0), ("grid_max", -3.0)):
    bad = default_config()
    bad.likelihood.grid_min = -2.0
    bad.likelihood[field] = value
    with pytest.raises(config_base.ConfigError, match=f"likelihood.{field}"):
      config_base.validate(bad)


@pytest.mark.slow
def test_nll_from_config_takes_the_grid_from_training_data():
  """The NLL of --mode=eval: the grid range comes from a fixed subset of the training
  data passed in (dequantized with a fixed rng), never from the test set; explicit
  grid_min/grid_max win; test values outside the grid are counted per dimension."""
  model = tiny_model(3, head="score")
  params = model.init(jax.random.PRNGKey(0))
  c = default_config()
  lk = c.likelihood
  lk.num_points, lk.num_examples, lk.grid_num_train, lk.outer_points = 65, 6, 50, 8
  rng = np.random.default_rng(0)
  train = rng.standard_normal((80, 3)).astype(np.float32)
  test = (5.0 * rng.standard_normal((10, 3))).astype(np.float32)   # wider than training
  res = likelihood.nll_from_config(c, model, params, test, train=train)
  want = likelihood.grid_from_data(train[:50], 65, lk.margin, 8)
  assert res["grid"] == want.to_dict() and "50 training examples" in res["grid_source"]
  assert res["num_examples"] == 6 and np.isfinite(res["nll_nats"])
  outside = (test[:6] < want.lo) | (test[:6] > want.hi)
  assert res["outside_per_dim"] == outside.sum(0).tolist() and outside.sum() > 0
  with pytest.raises(ValueError, match="training data"):
    likelihood.nll_from_config(c, model, params, test)
  lk.grid_min, lk.grid_max = -4.0, 4.0
  res = likelihood.nll_from_config(c, model, params, test)
  assert (res["grid"]["lo"], res["grid"]["hi"]) == (-4.0, 4.0)
  assert res["grid_source"].startswith("config")
  # images: the same dequantized training subset on every call
  pre = data_lib.Preprocessor(shape=(3, 1, 1), discrete=True, dequantize=True,
                              logit_lambda=1e-6)
  pix = rng.integers(0, 256, (70, 3, 1, 1)).astype(np.uint8)
  a = likelihood.grid_training_data(c, pix, pre)
  assert a.shape == (50, 3) and np.array_equal(a, likelihood.grid_training_data(c, pix, pre))


@pytest.mark.slow
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
