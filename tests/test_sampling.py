"""Samplers of csm_jax/sampling.py (paper Sec. 4.2): cached vs naive, known conditionals."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from csm_jax import likelihood, sampling, sharding
from tests.helpers import tiny_model


@dataclasses.dataclass(frozen=True)
class GaussianAR:
  """Analytic AR model x_d | x_<d ~ N(c_d + (B x)_d, v_d), B strictly lower triangular.

  Noise-conditional like an AR-CSM head: the score at level sigma is that of
  N(m_d, v_d + sigma^2). The context carries (m_d, v_d), so the 'head' is shared over d.
  """
  bmat: np.ndarray
  c: np.ndarray
  v: np.ndarray
  kind, normalized = "score", False

  @property
  def dim(self):
    return len(self.c)

  @property
  def order(self):
    return np.arange(self.dim)

  def context(self, params, x, train=False, rng=None):
    m = x @ jnp.asarray(self.bmat, x.dtype).T + jnp.asarray(self.c, x.dtype)
    return jnp.stack([m, jnp.broadcast_to(jnp.asarray(self.v, x.dtype), m.shape)], -1)

  def score(self, params, ctx, x, sigma):
    return -(x - ctx[..., 0]) / (ctx[..., 1] + sigma ** 2)

  def score_and_diag(self, params, ctx, x, sigma):
    return jax.jvp(lambda y: self.score(params, ctx, y, sigma), (x,), (jnp.ones_like(x),))

  def full_score(self, params, x, sigma, train=False, rng=None):
    return self.score(params, self.context(params, x), x, sigma)

  def joint(self, cond_var):
    """Mean and covariance of x = B x + c + e, e ~ N(0, diag(cond_var))."""
    a = np.linalg.inv(np.eye(self.dim) - self.bmat)
    return a @ self.c, a @ np.diag(cond_var) @ a.T


def _gaussian_ar():
  bmat = np.array([[0.0, 0.0, 0.0], [0.8, 0.0, 0.0], [-0.5, 0.6, 0.0]])
  return GaussianAR(bmat, np.array([1.0, -0.5, 0.3]), np.array([0.5, 1.0, 1.5]))


def _assert_moments(x, mean, cov, num_se=4.0):
  """Sample mean, variances and covariances within `num_se` standard errors."""
  n = len(x)
  x = np.asarray(x, np.float64)
  m_hat, c_hat = x.mean(0), np.cov(x, rowvar=False)
  se_mean = np.sqrt(np.diag(cov) / n)
  se_cov = np.sqrt((np.outer(np.diag(cov), np.diag(cov)) + cov ** 2) / (n - 1))  # normal theory
  np.testing.assert_array_less(np.abs(m_hat - mean), num_se * se_mean)
  np.testing.assert_array_less(np.abs(c_hat - cov), num_se * se_cov)


@pytest.mark.parametrize("head,order", [("score", "natural"), ("score", "random"),
                                        ("gaussian", "random")])
def test_cached_and_naive_samplers_agree(head, order):
  model = tiny_model(5, head=head, order=order)
  params = model.init(jax.random.PRNGKey(0))
  kw = dict(num_samples=6, sigmas=(1.0, 0.5, 0.2), n_steps=4, step_lr=0.05, denoise=True)
  rng = jax.random.PRNGKey(1)
  # full float32 matmuls: GPUs default to TF32, whose rounding differs between the two paths
  with jax.default_matmul_precision("highest"):
    fast = jax.jit(lambda p, r: sampling.sample(model, p, r, **kw))(params, rng)
    ref = jax.jit(lambda p, r: sampling.naive_sample(model, p, r, **kw))(params, rng)
    # num_dims (used to time the naive sampler) stops after the first k dims of the order
    part = sampling.naive_sample(model, params, rng, num_dims=2, **kw)
  assert np.all(np.isfinite(fast))
  np.testing.assert_allclose(fast, ref, rtol=1e-5, atol=1e-5)
  first = model.order[:2]
  np.testing.assert_allclose(part[:, first], ref[:, first], rtol=1e-5, atol=1e-5)


def test_make_sampler_with_sharding():
  model = tiny_model(4)
  params = model.init(jax.random.PRNGKey(0))
  mesh = sharding.data_mesh()
  n = 2 * mesh.size
  f = sampling.make_sampler(model, (1.0, 0.3), n, n_steps=3, step_lr=0.05,
                            out_sharding=sharding.batch_sharding(mesh))
  x = f(params, jax.random.PRNGKey(3))
  ref = sampling.sample(model, params, jax.random.PRNGKey(3), n, (1.0, 0.3), n_steps=3,
                        step_lr=0.05)
  assert x.shape == (n, 4)
  np.testing.assert_allclose(x, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("chunk_dims", [1, 2, 3, 7])
def test_chunked_sampler_gives_the_same_samples_and_reports_progress(chunk_dims):
  """Chunks of 1..7 dims of D=5 (padded last chunk included) equal the single call."""
  model = tiny_model(5, order="random")
  params = model.init(jax.random.PRNGKey(0))
  kw = dict(sigmas=(1.0, 0.4), num_samples=4, n_steps=3, step_lr=0.05)
  whole = sampling.make_sampler(model, **kw)(params, jax.random.PRNGKey(2))
  lines = []
  x = sampling.make_sampler(model, chunk_dims=chunk_dims, log=lines.append, **kw)(
      params, jax.random.PRNGKey(2))
  np.testing.assert_allclose(x, whole, rtol=1e-6, atol=1e-6)
  assert len(lines) == -(-5 // chunk_dims) and lines[-1].startswith("Langevin sampling: 5/5 dims")
  assert "ETA" in lines[0]
  # num_dims with chunks: the first k dims of the order only, the rest untouched
  part = sampling.make_sampler(model, chunk_dims=2, num_dims=3, **kw)(params, jax.random.PRNGKey(2))
  first, rest = model.order[:3], model.order[3:]
  np.testing.assert_allclose(part[:, first], whole[:, first], rtol=1e-6, atol=1e-6)
  assert not np.allclose(part[:, rest], whole[:, rest])


@pytest.mark.parametrize("denoise", [False, True])
def test_langevin_moments_of_known_conditionals(denoise):
  """Annealed Langevin on a linear-Gaussian AR model: the exact law of the chain.

  At the last level (sigma_L, step a = step_lr) T steps of unadjusted Langevin on
  N(m_d, w), w = v_d + sigma_L^2, converge (error (1 - a/2w)^T < 1e-9) to
  N(m_d, w / (1 - a/(4w))); the optional denoising step scales the deviation by
  1 - sigma_L^2 / w. The tolerances are standard errors, nothing is tuned.
  """
  model = _gaussian_ar()
  sigmas, step_lr, n_steps, n = (0.5, 0.2, 0.1), 0.05, 1500, 4000
  x = jax.jit(lambda r: sampling.sample(model, None, r, n, sigmas, n_steps, step_lr,
                                        denoise=denoise))(jax.random.PRNGKey(0))
  w = model.v + sigmas[-1] ** 2
  assert np.max((1 - step_lr / (2 * w)) ** n_steps) < 1e-9
  var = w / (1 - step_lr / (4 * w))
  if denoise:
    var = var * (1 - sigmas[-1] ** 2 / w) ** 2
  mean, cov = model.joint(var)
  _assert_moments(x, mean, cov)


def test_grid_sampler_moments_of_known_conditionals():
  """Exact ancestral sampling on the grid: N(m_d, v_d + sigma^2) conditionals."""
  model = _gaussian_ar()
  grid = likelihood.Grid(-12.0, 12.0, 1025)
  sigma, n = 0.1, 4000
  x = jax.jit(lambda r: sampling.grid_sample(model, None, r, n, grid, sigma))(
      jax.random.PRNGKey(0))
  # node drawn from the discretized Gaussian, then jittered uniformly in its cell
  mean, cov = model.joint(model.v + sigma ** 2 + grid.h ** 2 / 12)
  _assert_moments(x, mean, cov)


@pytest.mark.slow
def test_grid_sampler_on_made_matches_its_own_density():
  """Grid samples of a small MADE + score head: histogram vs quadrature marginal."""
  model = tiny_model(2, head="score")
  params = model.init(jax.random.PRNGKey(2))
  grid = likelihood.Grid(-4.0, 4.0, 257)
  x = sampling.grid_sample(model, params, jax.random.PRNGKey(1), 20000, grid, 1.0)
  assert np.all((x >= grid.lo) & (x <= grid.hi))
  # x_1 (first in the order) has a fixed context: its marginal is the grid density
  ctx = model.context(params, jnp.zeros((1, 2)))[:, :1]
  logq = likelihood.log_conditionals_on_grid(model, params, ctx, grid, 1.0)[0, 0]
  p = np.exp(np.asarray(logq, np.float64)) * grid.h          # trapezoid node masses
  p[[0, -1]] /= 2
  # bins of 32 cells whose edges are nodes: a node on an inner edge owns half a cell
  # on each side; the end nodes own half cells inside [lo, hi]
  share = np.ones((8, 257))
  for i in range(8):
    a, b = 32 * i, 32 * (i + 1)
    share[i, :] = 0.0
    share[i, a:b + 1] = 1.0
    if i > 0:
      share[i, a] = 0.5
    if i < 7:
      share[i, b] = 0.5
  expected = share @ p
  np.testing.assert_allclose(expected.sum(), 1.0, atol=1e-3)
  counts = np.histogram(np.asarray(x[:, 0]), np.linspace(grid.lo, grid.hi, 9))[0] / len(x)
  se = np.sqrt(expected * (1 - expected) / len(x))
  np.testing.assert_array_less(np.abs(counts - expected), 4 * se + 1e-12)


# ------------------------------------------------------------------------------------
# Parallel (fixed-point) sampling: the sequential sample by Jacobi sweeps
# ------------------------------------------------------------------------------------

_FP_KW = dict(sigmas=(1.0, 0.3), n_steps=3, step_lr=0.05, denoise=True)


def _pixelcnnpp_model():
  from tests.helpers import tiny_model_config
  cfg = tiny_model_config(head="score")
  cfg.backbone, cfg.nr_filters, cfg.nr_resnet = "pixelcnnpp", 4, 1
  cfg.num_resolutions, cfg.dropout_rate = 1, 0.0
  from csm_jax import models
  return models.get_model(cfg, (2, 2, 3))


@pytest.mark.slow
@pytest.mark.parametrize("which", ["made_natural", "made_random", "pixelcnnpp"])
def test_fixed_point_langevin_equals_the_sequential_sample(which):
  model = (_pixelcnnpp_model() if which == "pixelcnnpp"
           else tiny_model(7, order=which.split("_")[1], hidden=(16, 16)))
  params = model.init(jax.random.PRNGKey(0))
  rng = jax.random.PRNGKey(3)
  seq = sampling.sample(model, params, rng, 5, **_FP_KW)
  x, sweeps, change = jax.jit(lambda p, r: sampling.fixed_point_sample(
      "langevin", model, p, r, 5, **_FP_KW))(params, rng)
  np.testing.assert_allclose(np.asarray(x), np.asarray(seq), atol=1e-5, rtol=0)
  assert 1 <= int(sweeps) <= model.dim + 1 and float(change) == 0.0
  # after k sweeps the first k dimensions of the order are exact, whatever the model
  for k in (1, 2, 3):
    xk, used, _ = sampling.fixed_point_sample("langevin", model, params, rng, 5,
                                              max_sweeps=k, **_FP_KW)
    first = np.asarray(model.order[:k])
    assert int(used) == k
    np.testing.assert_allclose(np.asarray(xk)[:, first], np.asarray(seq)[:, first],
                               atol=1e-5, rtol=0)


def test_fixed_point_early_stop_stops():
  model = tiny_model(7, order="random", hidden=(16, 16))
  params = model.init(jax.random.PRNGKey(0))
  _, sweeps, change = sampling.fixed_point_sample("langevin", model, params,
                                                  jax.random.PRNGKey(3), 5, tol=1e9,
                                                  **_FP_KW)
  assert int(sweeps) == 1 and float(change) <= 1e9
  lines = []
  run = sampling.make_fixed_point_sampler("langevin", model, 5, max_sweeps=2, log=lines.append,
                                          **_FP_KW)
  _, stats = run(params, jax.random.PRNGKey(3))
  assert stats["sweeps"] == 2 and len(lines) == 2 and "sweep 2" in lines[-1]
  assert stats["converged"] is False or stats["max_change"] <= 0.0
  # a diverging chain stops the loop at once and is not reported as converged
  x, k, change = sampling.fixed_point_iterate(lambda x: x * jnp.nan, jnp.ones((2, 3)), 10, 0.0)
  assert int(k) == 1 and not float(change) <= 0.0


def test_fixed_point_converged_after_tol_or_d_sweeps():
  conv = sampling.fixed_point_converged
  assert conv(2, 0.0, 0.0, 5) and conv(2, 1e-5, 1e-4, 5)
  assert conv(5, 3e-8, 0.0, 5)              # D sweeps: exact whatever the rounding
  assert not conv(4, 3e-8, 0.0, 5) and not conv(5, float("nan"), 0.0, 5)


@pytest.mark.slow
def test_fixed_point_grid_and_ancestral_equal_their_sequential_versions():
  model = tiny_model(6, order="random", hidden=(16, 16))
  params = model.init(jax.random.PRNGKey(0))
  grid = likelihood.Grid(-4.0, 4.0, 65)
  rng = jax.random.PRNGKey(5)
  seq = sampling.grid_sample(model, params, rng, 4, grid, sigma=0.3)
  x, _, _ = sampling.fixed_point_sample("grid", model, params, rng, 4, grid=grid, sigma=0.3)
  np.testing.assert_allclose(np.asarray(x), np.asarray(seq), atol=1e-5, rtol=0)
  mass = tiny_model(6, head="discretized_logistic", order="random")
  params = mass.init(jax.random.PRNGKey(1))
  seq = sampling.ancestral_sample(mass, params, rng, 4)
  x, _, _ = sampling.fixed_point_sample("ancestral", mass, params, rng, 4)
  np.testing.assert_array_equal(np.asarray(x), np.asarray(seq))


def test_fixed_point_is_selected_by_the_config():
  from tests.helpers import tiny_train_config
  config = tiny_train_config(**{"sampling.num_samples": 4, "sampling.num_steps": 2,
                                "sampling.chunk_dims": 0})
  model = tiny_model(4)
  params = model.init(jax.random.PRNGKey(0))
  seq, _ = sampling.make_sampler_from_config(config, model)
  config.sampling.method = "fixed_point"
  config.sampling.fixed_point_tol = 0.0
  lines = []
  par, info = sampling.make_sampler_from_config(config, model, log=lines.append)
  x = par(params, jax.random.PRNGKey(1))
  np.testing.assert_allclose(np.asarray(x), np.asarray(seq(params, jax.random.PRNGKey(1))),
                             atol=1e-5, rtol=0)
  assert info["method"] == "fixed_point" and 1 <= info["sweeps"] <= 5
  assert "sweeps for D=4" in lines[-1]


# ------------------------------------------------------------------------------------
# Conditional AR-CSM (the VAE's q(z | x)): the samplers through a bound adapter
# ------------------------------------------------------------------------------------


def _conditional(dim=5, cond_dim=3):
  from csm_jax.models import conditional
  model = conditional.conditional_made_model(dim, cond_dim, hidden_sizes=(16, 16),
                                             context_size=3, head_hidden=(8,),
                                             order="random", order_seed=1)
  params = model.init(jax.random.PRNGKey(0))
  cond = jax.random.normal(jax.random.PRNGKey(7), (4, cond_dim))
  return model, params, cond


def test_bound_conditional_presents_the_conditional_models_scores():
  model, params, cond = _conditional()
  bound = model.bind(cond)
  z = jax.random.normal(jax.random.PRNGKey(1), (4, model.dim))
  sig = jnp.full_like(z, 0.5)
  assert bound.dim == model.dim and not bound.normalized and bound.kind == "score"
  np.testing.assert_array_equal(bound.order, model.order)
  ctx = model.context(params, z, cond)
  np.testing.assert_array_equal(bound.context(params, z), ctx)
  np.testing.assert_array_equal(bound.full_score(params, z, sig),
                                model.full_score(params, z, cond, sig))
  for a, b in zip(bound.score_and_diag(params, ctx, z, sig),
                  model.score_and_diag(params, ctx, z, sig)):
    np.testing.assert_array_equal(a, b)
  # one dimension's context (what the samplers pass) gives that dimension's score
  d = int(model.order[2])
  one = bound.score(params, ctx[:, d:d + 1], z[:, d:d + 1], sig[:, :1])
  np.testing.assert_allclose(one[:, 0], model.full_score(params, z, cond, sig)[:, d],
                             atol=1e-6, rtol=0)
  # a single x (X,) is shared by every sample
  np.testing.assert_array_equal(model.bind(cond[1]).context(params, z),
                                model.context(params, z, jnp.tile(cond[1:2], (4, 1))))
  with pytest.raises(AssertionError):
    bound.context(params, z[:3])       # a batch of 4 x's samples 4 z's


def test_conditional_fixed_point_langevin_equals_the_sequential_sample():
  model, params, cond = _conditional()
  rng = jax.random.PRNGKey(3)
  seq_fn = jax.jit(lambda p, r, c: sampling.sample(model.bind(c), p, r, 4, **_FP_KW))
  seq = seq_fn(params, rng, cond)
  fp = jax.jit(lambda p, r, c, k: sampling.fixed_point_sample(
      "langevin", model.bind(c), p, r, 4, max_sweeps=k, **_FP_KW))
  x, sweeps, change = fp(params, rng, cond, model.dim)
  np.testing.assert_allclose(np.asarray(x), np.asarray(seq), atol=1e-5, rtol=0)
  assert 1 <= int(sweeps) <= model.dim and float(change) == 0.0
  for k in (1, 2, 3):                  # after k sweeps the first k dims of the order
    xk, used, _ = fp(params, rng, cond, k)
    first = np.asarray(model.order[:k])
    assert int(used) == k
    np.testing.assert_allclose(np.asarray(xk)[:, first], np.asarray(seq)[:, first],
                               atol=1e-5, rtol=0)
  # the naive reference (full passes) agrees: the adapter's full_score is consistent
  ref = sampling.naive_sample(model.bind(cond), params, rng, 4, **_FP_KW)
  np.testing.assert_allclose(np.asarray(ref), np.asarray(seq), atol=1e-5, rtol=0)
  # the sample is of q(z | x): another x, same rng, another z (every dimension)
  other = seq_fn(params, rng, cond + 1.0)
  assert np.all(np.abs(np.asarray(other) - np.asarray(seq)) > 1e-6)


def test_conditional_fixed_point_grid_equals_grid_sample():
  model, params, cond = _conditional()
  grid = likelihood.Grid(-4.0, 4.0, 33)
  rng = jax.random.PRNGKey(5)
  seq = sampling.grid_sample(model.bind(cond), params, rng, 4, grid, sigma=0.3)
  x, _, _ = sampling.fixed_point_sample("grid", model.bind(cond), params, rng, 4, grid=grid,
                                        sigma=0.3)
  np.testing.assert_allclose(np.asarray(x), np.asarray(seq), atol=1e-5, rtol=0)
  other = sampling.grid_sample(model.bind(cond + 1.0), params, rng, 4, grid, sigma=0.3)
  assert not np.allclose(np.asarray(other), np.asarray(seq))
