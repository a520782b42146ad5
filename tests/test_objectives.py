"""The score-matching family against closed forms (paper Sec. 2 and 5.1).

On a Gaussian N(mu, Sigma) with a linear score model s(x) = W x + b every objective
has a closed form; stochastic estimators (SSM, DSM, SM on a sample) are checked to be
unbiased within 4 empirical standard errors of R independent draws (fixed seeds).
On an AR-CSM, exact SM (one-hot trace) equals noise-free CSM (fast diagonal),
because the Jacobian of the conditional scores is triangular in the variable order.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from csm_jax import config_base
from csm_jax import losses
from csm_jax import models
from csm_jax.models import score_nets
from experiments import matched_sizes

N_SE = 4.0  # a mean within 4 standard errors: a false failure has probability ~6e-5


@pytest.fixture
def x64():
  with jax.enable_x64(True):
    yield


def _assert_unbiased(estimates, target, abs_floor=1e-9):
  estimates = np.asarray(estimates, np.float64)
  mean = estimates.mean()
  se = estimates.std(ddof=1) / np.sqrt(len(estimates))
  tol = max(N_SE * se, abs_floor * max(1.0, abs(target)))
  assert abs(mean - target) <= tol, (
      f"mean {mean:.6g} vs target {target:.6g}: |diff| {abs(mean - target):.3g} > "
      f"{N_SE} SE = {tol:.3g}")
  return mean, se


class _Gaussian:
  """A fixed N(mu, Sigma) in D=4 and a fixed (not optimal) linear score s(x) = W x + b."""

  def __init__(self, dim=4, seed=0):
    rs = np.random.default_rng(seed)
    a = rs.normal(size=(dim, dim))
    self.dim = dim
    self.mu = rs.normal(size=dim)
    self.cov = a @ a.T / dim + 0.5 * np.eye(dim)
    self.chol = np.linalg.cholesky(self.cov)
    self.w = rs.normal(size=(dim, dim))
    self.b = rs.normal(size=dim)
    self.model = score_nets.linear_score_model(dim)
    self.params = {"params": {"W": jnp.asarray(self.w), "b": jnp.asarray(self.b)}}

  def sample(self, rng, n):
    z = jax.random.normal(rng, (n, self.dim), jnp.float64)
    return jnp.asarray(self.mu) + z @ jnp.asarray(self.chol).T

  def mean_sq_score(self):
    """E ||W x + b||^2 = ||W mu + b||^2 + tr(W Sigma W^T)."""
    m = self.w @ self.mu + self.b
    return m @ m + np.trace(self.w @ self.cov @ self.w.T)

  def sm_value(self):
    return 0.5 * self.mean_sq_score() + np.trace(self.w)

  def dsm_value(self, sigma):
    """E 1/2 ||W (x + sigma eps) + b + eps / sigma||^2, eps ~ N(0, I) independent of x."""
    a = sigma * self.w + np.eye(self.dim) / sigma
    return 0.5 * (self.mean_sq_score() + np.sum(a * a))


def _draws(fn, num, seed=0):
  """fn(key) -> scalar, evaluated on `num` independent keys (jit + vmap)."""
  keys = jax.random.split(jax.random.key(seed), num)
  return np.asarray(jax.jit(jax.vmap(fn))(keys))


# ------------------------------------------------------------------ linear model, Gaussian

def test_linear_score_model_interface():
  m = score_nets.linear_score_model(3)
  params = m.init(jax.random.key(0))
  x = jnp.ones((5, 3))
  assert m.full_score(params, x, jnp.ones_like(x)).shape == (5, 3)
  assert m.dim == 3 and m.normalized is False
  with pytest.raises(ValueError):
    m.full_score(params, jnp.ones((5, 4)), None)


def test_sm_exact_on_a_batch(x64):
  g = _Gaussian()
  x = g.sample(jax.random.key(1), 64)
  loss, _ = losses.sm_loss(g.model, g.params, x, jax.random.key(2), False)
  s = np.asarray(x) @ g.w.T + g.b
  expected = 0.5 * (s ** 2).sum(-1).mean() + np.trace(g.w)
  np.testing.assert_allclose(float(loss), expected, rtol=1e-12)
  for chunk in (1, 3):  # chunked one-hot jvps give the same value
    loss_c, _ = losses.sm_loss(g.model, g.params, x, jax.random.key(2), False, chunk_size=chunk)
    np.testing.assert_allclose(float(loss_c), expected, rtol=1e-12)


def test_sm_matches_closed_form_in_expectation(x64):
  g = _Gaussian()

  def one(key):
    return losses.sm_loss(g.model, g.params, g.sample(key, 256), key, False)[0]

  _assert_unbiased(_draws(one, 400), g.sm_value())


SSM_VARIANTS = ([(dist, vr, m) for dist in ("gaussian", "rademacher") for vr in (True, False)
                 for m in (1, 3)] + [("sphere", vr, 1) for vr in (True, False)])


@pytest.mark.slow
def test_ssm_is_unbiased_for_sm(x64):
  """Given the batch, E_v[SSM] = SM exactly (E v v^T = I), for the gaussian, rademacher
  and sphere projections, both forms and 1 or 3 projections; checked over projection draws."""
  g = _Gaussian()
  x = g.sample(jax.random.key(3), 32)
  sm, _ = losses.sm_loss(g.model, g.params, x, jax.random.key(0), False)

  def all_variants(key):  # one compiled function for every variant
    return jnp.stack([
        losses.ssm_loss(g.model, g.params, x, jax.random.fold_in(key, i), False,
                        num_projections=m, distribution=dist, variance_reduced=vr)[0]
        for i, (dist, vr, m) in enumerate(SSM_VARIANTS)])

  est = _draws(all_variants, 3000)
  for i, variant in enumerate(SSM_VARIANTS):
    try:
      _assert_unbiased(est[:, i], float(sm))
    except AssertionError as e:
      raise AssertionError(f"SSM variant {variant}: {e}") from None
    assert est[:, i].std() > 0  # W is not diagonal: the projections do add noise


def test_ssm_matches_closed_form_in_expectation(x64):
  g = _Gaussian()

  def one(key):
    k_x, k_v = jax.random.split(key)
    return losses.ssm_loss(g.model, g.params, g.sample(k_x, 128), k_v, False,
                           distribution="gaussian", variance_reduced=False)[0]

  _assert_unbiased(_draws(one, 1000), g.sm_value())


def test_ssm_variance_reduction_helps(x64):
  """Replacing 1/2 (v^T s)^2 by 1/2 ||s||^2 lowers the estimator variance here."""
  g = _Gaussian()
  x = g.sample(jax.random.key(4), 32)
  var = {}
  for vr in (True, False):
    var[vr] = _draws(lambda k: losses.ssm_loss(g.model, g.params, x, k, False,
                                               variance_reduced=vr)[0], 2000).var()
  assert var[True] < var[False]


def test_projection_norms_and_second_moments(x64):
  """gaussian_unit rows have norm 1 and E v v^T = I / D; sphere rows norm sqrt(D), E v v^T = I."""
  dim, n = 5, 20000
  for dist, norm, scale in (("gaussian_unit", 1.0, 1.0 / dim), ("sphere", np.sqrt(dim), 1.0)):
    v = np.asarray(losses.random_projections(jax.random.key(0), (n, dim), dist, jnp.float64))
    np.testing.assert_allclose(np.linalg.norm(v, axis=-1), norm, rtol=1e-12)
    second = v.T @ v / n
    # each entry of v v^T is bounded by ||v||^2, so its mean has SE <= ||v||^2 / sqrt(n)
    np.testing.assert_allclose(second, scale * np.eye(dim), atol=5 * norm ** 2 / np.sqrt(n))


def _unit_ssm_expectations(g, x):
  """E_v of the two unit-projection SSM forms on the batch x for s = W x + b (E vv^T = I/D):
  plain 1/2 mean||s||^2 / D + tr W / D (= SM / D), VR 1/2 mean||s||^2 + tr W / D."""
  s = np.asarray(x) @ g.w.T + g.b
  half_sq = 0.5 * (s ** 2).sum(-1).mean()
  tr = np.trace(g.w)
  return {False: (half_sq + tr) / g.dim, True: half_sq + tr / g.dim}


def test_ssm_with_unit_projections_closed_forms(x64):
  """With v = g / ||g||: plain SSM estimates SM / D, variance-reduced SSM estimates
  1/2 ||s||^2 + tr(ds/dx) / D (a different objective), for 1 and 3 projections."""
  g = _Gaussian()
  x = g.sample(jax.random.key(5), 32)
  sm = float(losses.sm_loss(g.model, g.params, x, jax.random.key(0), False)[0])
  target = _unit_ssm_expectations(g, x)
  np.testing.assert_allclose(target[False], sm / g.dim, rtol=1e-12)
  variants = [(vr, m) for vr in (False, True) for m in (1, 3)]

  def all_variants(key):
    return jnp.stack([
        losses.ssm_loss(g.model, g.params, x, jax.random.fold_in(key, i), False,
                        num_projections=m, distribution="gaussian_unit", variance_reduced=vr)[0]
        for i, (vr, m) in enumerate(variants)])

  est = _draws(all_variants, 2000)
  for i, (vr, m) in enumerate(variants):
    try:
      _assert_unbiased(est[:, i], target[vr])
    except AssertionError as e:
      raise AssertionError(f"unit SSM variance_reduced={vr}, M={m}: {e}") from None
  # and the VR form is far from SM / D here: a real difference, not MC noise
  assert abs(target[True] - sm / g.dim) > 20 * est[:, 2].std()


def test_unit_vr_ssm_minimizer_is_the_score_over_d(x64):
  """On a batch, SM over linear scores s = W x + b is minimized by the batch Gaussian fit
  W* = -C^-1, b* = C^-1 xbar (C the batch covariance). The expected gradient of plain
  unit-projection SSM vanishes there; that of variance-reduced unit-projection SSM vanishes
  at (W*, b*) / D instead, and not at (W*, b*)."""
  g = _Gaussian()
  x = g.sample(jax.random.key(6), 64)
  xn = np.asarray(x)
  xbar = xn.mean(0)
  prec = np.linalg.inv(np.cov(xn.T, bias=True))
  fit = (-prec, prec @ xbar)

  @functools.partial(jax.jit, static_argnums=2)
  def draws(w, b, vr, keys):
    def one(key):
      gr = jax.grad(lambda p: losses.ssm_loss(
          g.model, p, x, key, False, distribution="gaussian_unit", variance_reduced=vr)[0])(
              {"params": {"W": w, "b": b}})["params"]
      return jnp.concatenate([gr["W"].ravel(), gr["b"]])
    return jax.vmap(one)(keys)

  def grads(w, b, vr):
    d = np.asarray(draws(jnp.asarray(w), jnp.asarray(b), vr,
                         jax.random.split(jax.random.key(1), 4000)))
    return d.mean(0), d.std(0, ddof=1) / np.sqrt(len(d))

  def assert_stationary(mean, se, what):
    assert np.all(np.abs(mean) <= 5 * se + 1e-9), f"{what}: mean gradient {mean} (SE {se})"

  assert_stationary(*grads(*fit, vr=False), "plain unit SSM at the SM minimizer")
  assert_stationary(*grads(fit[0] / g.dim, fit[1] / g.dim, vr=True),
                    "VR unit SSM at the SM minimizer / D")
  mean, se = grads(*fit, vr=True)
  # there its expected W-gradient is -(1 - 1/D) I exactly
  np.testing.assert_allclose(mean[:g.dim ** 2].reshape(g.dim, g.dim),
                             -(1 - 1 / g.dim) * np.eye(g.dim), atol=5 * se.max() + 1e-9)


@pytest.mark.parametrize("sigma", [0.1, 0.5, 1.0])
def test_dsm_matches_closed_form_in_expectation(x64, sigma):
  g = _Gaussian()

  def one(key):
    k_x, k_eps = jax.random.split(key)
    return losses.dsm_loss(g.model, g.params, g.sample(k_x, 256), k_eps, False, sigma=sigma)[0]

  _assert_unbiased(_draws(one, 400), g.dsm_value(sigma))


def test_dsm_closed_form_minimizer_is_the_noisy_score(x64):
  """Sanity of the closed form itself: its minimizer is the score of N(mu, Sigma + s^2 I)."""
  g = _Gaussian(dim=3)
  sigma = 0.3
  cov_s = g.cov + sigma ** 2 * np.eye(3)
  prec = np.linalg.inv(cov_s)

  def closed(w, b):
    m = w @ g.mu + b
    a = sigma * w + jnp.eye(3) / sigma
    return 0.5 * (m @ m + jnp.trace(w @ g.cov @ w.T) + jnp.sum(a * a))

  gw, gb = jax.grad(closed, argnums=(0, 1))(jnp.asarray(-prec), jnp.asarray(prec @ g.mu))
  np.testing.assert_allclose(np.asarray(gw), 0.0, atol=1e-10)
  np.testing.assert_allclose(np.asarray(gb), 0.0, atol=1e-10)


# ----------------------------------------------------------------------------- AR-CSM model

def _ar_model(order):
  model = matched_sizes.ar_csm_for_dim(6, hidden=32, context_size=4, head_hidden=(16, 16),
                                       order=order)
  params = model.init(jax.random.key(7))
  # Move the (zero-initialized) biases off zero so the check is not degenerate.
  params = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(jax.random.key(8), p.shape), params)
  return model, params


@pytest.mark.slow
@pytest.mark.parametrize("order", ["natural", "random"])
def test_sm_equals_noise_free_csm_on_ar_model(x64, order):
  model, params = _ar_model(order)
  x = jax.random.normal(jax.random.key(9), (16, 6), jnp.float64)

  @jax.jit
  def values(params, x):
    key = jax.random.key(0)
    return (losses.sm_loss(model, params, x, key, False)[0],
            losses.sm_loss(model, params, x, key, False, chunk_size=4)[0],
            losses.csm_loss(model, None, params, x, key, False)[0])

  sm, sm_chunked, csm = values(params, x)
  assert sm.dtype == jnp.float64
  np.testing.assert_allclose(float(sm), float(csm), rtol=1e-10, atol=1e-12)
  np.testing.assert_allclose(float(sm_chunked), float(csm), rtol=1e-10, atol=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("order", ["natural", "random"])
def test_ssm_on_ar_model_is_unbiased_for_csm(x64, order):
  """SSM-AR: slicing the AR-CSM's (triangular) Jacobian estimates the CSM value."""
  model, params = _ar_model(order)
  x = jax.random.normal(jax.random.key(10), (16, 6), jnp.float64)
  csm, _ = losses.csm_loss(model, None, params, x, jax.random.key(0), False)
  variants = [("gaussian", True), ("rademacher", False)]

  def both(key):
    return jnp.stack([
        losses.ssm_loss(model, params, x, jax.random.fold_in(key, i), False,
                        distribution=dist, variance_reduced=vr)[0]
        for i, (dist, vr) in enumerate(variants)])

  est = _draws(both, 2000)
  for i in range(len(variants)):
    _assert_unbiased(est[:, i], float(csm))


# ----------------------------------------------------------------------------- the factory

@pytest.mark.parametrize("name", ["csm", "sm", "ssm", "dsm"])
def test_get_loss_fn_builds_each_objective(name):
  config = config_base.default_config()
  config.loss.name = name
  ar = matched_sizes.ar_csm_for_dim(5, hidden=16, context_size=2, head_hidden=(8,))
  mlp = score_nets.mlp_score_model(5, (16, 16, 16))
  x = jax.random.normal(jax.random.key(0), (4, 5))
  nets = [ar] if name == "csm" else [ar, mlp]
  for model in nets:
    loss_fn = losses.get_loss_fn(config, model)
    params = model.init(jax.random.key(1))
    (loss, metrics), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True),
                                     static_argnums=3)(params, x, jax.random.key(2), True)
    assert loss.shape == () and np.isfinite(float(loss))
    assert "loss" in metrics
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))


def test_get_loss_fn_rejects_unknown_and_mle_on_score_head():
  config = config_base.default_config()
  model = matched_sizes.ar_csm_for_dim(5, hidden=16, context_size=2)
  config.loss.name = "not_a_loss"
  with pytest.raises(ValueError, match="unknown loss.name"):
    losses.get_loss_fn(config, model)
  config.loss.name = "mle"
  with pytest.raises(ValueError):
    losses.get_loss_fn(config, model)
  with pytest.raises(ValueError, match="loss.projection"):
    losses.random_projections(jax.random.key(0), (2, 3), "uniform")
  config.loss.name = "ssm"
  config.loss.projection = "unit"
  with pytest.raises(ValueError, match="loss.projection"):
    losses.get_loss_fn(config, model)
  with pytest.raises(config_base.ConfigError, match="loss.projection"):
    config_base.validate(config)


def test_ssm_projection_from_config(x64):
  """loss.projection and loss.variance_reduced reach ssm_loss; the config's list of
  projections is the library's."""
  assert config_base._SSM_PROJECTIONS == losses.PROJECTIONS
  g = _Gaussian()
  x = g.sample(jax.random.key(2), 8)
  config = config_base.default_config()
  config.loss.name = "ssm"
  for dist in ("gaussian_unit", "sphere"):
    for vr in (True, False):
      config.loss.projection, config.loss.variance_reduced = dist, vr
      config_base.validate(config)
      got = losses.get_loss_fn(config, g.model)(g.params, x, jax.random.key(3), False)[0]
      want = losses.ssm_loss(g.model, g.params, x, jax.random.key(3), False,
                             distribution=dist, variance_reduced=vr)[0]
      assert float(got) == float(want)


# ----------------------------------------------------------------------------- score nets

@pytest.mark.parametrize("activation", ["softplus", "swish", "elu"])
def test_mlp_score_net_and_matched_sizes(activation):
  dim = 20
  ar, mlp = matched_sizes.matched_pair(dim, hidden=32, activation=activation)
  p_ar, p_mlp = ar.init(jax.random.key(0)), mlp.init(jax.random.key(0))
  n_ar = models.count_parameters(p_ar, ar)["parameters"]
  n_mlp = models.count_parameters(p_mlp, mlp)["parameters"]
  assert n_ar == matched_sizes.made_param_count(dim, 32)
  assert n_mlp == matched_sizes.mlp_param_count(dim, mlp.net.hidden_sizes)
  assert abs(n_mlp - n_ar) / n_ar < 0.05
  assert len(mlp.net.hidden_sizes) == 3 and len(ar.net.backbone.hidden_sizes) == 3
  x = jnp.ones((3, dim))
  assert mlp.full_score(p_mlp, x, None).shape == (3, dim)
  with pytest.raises(ValueError, match="activation"):
    score_nets.mlp_score_model(dim, (8,), "tanhh").init(jax.random.key(0))


def test_mle_on_noisy_targets_matches_the_gaussian_expectation():
  """loss.mle_target_sigma: with clean contexts and targets x + sigma eps, the expected
  Gaussian-head NLL is sum_d 1/2 log(2 pi v_d) + ((x_d - mu_d)^2 + sigma^2) / (2 v_d),
  with (mu_d, v_d) read off the head's log-density (a quadratic in x_d)."""
  from csm_jax import losses as losses_lib
  from tests.helpers import tiny_model
  model = tiny_model(3, head="gaussian")
  params = model.init(jax.random.PRNGKey(0))
  x = jnp.array([[0.3, -0.7, 1.1]])
  ctx = model.context(params, x)
  f = lambda y: np.asarray(model.log_cond(params, ctx, y), np.float64)[0]
  l0, lp, lm = f(x), f(x + 1.0), f(x - 1.0)
  a = 0.5 * (lp + lm) - l0                 # -1 / (2 v)
  b = 0.5 * (lp - lm)                      # (mu - x) / v
  v = -0.5 / a
  mu = np.asarray(x[0]) + b * v
  sigma, n = 0.4, 40000
  want = np.sum(0.5 * np.log(2 * np.pi * v) + ((np.asarray(x[0]) - mu) ** 2 + sigma ** 2)
                / (2 * v))
  xs = jnp.tile(x, (n, 1))
  loss, _ = losses_lib.mle_loss(model, params, xs, jax.random.PRNGKey(1), False, sigma)
  se = np.sqrt(np.sum((sigma ** 4 / 2 + sigma ** 2 * (np.asarray(x[0]) - mu) ** 2) / v ** 2)
               / n)
  assert abs(float(loss) - want) < 5 * se + 1e-5
  plain, _ = losses_lib.mle_loss(model, params, x, jax.random.PRNGKey(1), False)
  np.testing.assert_allclose(float(plain), -np.sum(l0), rtol=1e-5)
