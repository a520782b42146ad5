"""Conditional AR-CSM (paper Sec. 6 building block): scores of q(z_d | z_<d, x).

Checks, in float64 where exactness is claimed: the one-jvp diagonal equals the one-hot
reference; d s / d z is strictly lower triangular in the model's order whatever x is;
the scores do depend on x (every dimension, the first in the order included); and CSM
learns the noise-conditional scores of a linear-Gaussian z | x.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from csm_jax import derivatives
from csm_jax import losses
from csm_jax import noise as noise_lib
from csm_jax.models import conditional
from tests.helpers import float64, to_f64

D, X = 5, 3


def _tiny(order="random", dtype=jnp.float64, **kw):
  kw = {"hidden_sizes": (16, 16), "context_size": 3, "head_hidden": (8,), **kw}
  return conditional.conditional_made_model(D, X, order=order, order_seed=1, dtype=dtype, **kw)


def _inputs(seed, batch=4):
  kz, kx, ks = jax.random.split(jax.random.PRNGKey(seed), 3)
  z = jax.random.normal(kz, (batch, D), jnp.float64)
  cond = jax.random.normal(kx, (batch, X), jnp.float64)
  sigma = jnp.exp(0.5 * jax.random.normal(ks, (batch, D), jnp.float64))
  return z, cond, sigma


@pytest.mark.parametrize("order", ["natural", "random"])
def test_fast_diagonal_equals_one_hot_reference(order):
  with float64():
    model = _tiny(order)
    params = to_f64(model.init(jax.random.PRNGKey(0)))
    z, cond, sigma = _inputs(1)
    fast = jax.jit(lambda z: model.score_and_diag(params, model.context(params, z, cond), z,
                                                  sigma))
    s, ds = fast(z)
    s_ref, ds_ref = jax.jit(lambda z: derivatives.jacobian_diagonal(
        lambda y: model.full_score(params, y, cond, sigma), z))(z)
    assert s.dtype == jnp.float64
    np.testing.assert_allclose(s, s_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ds, ds_ref, rtol=1e-10, atol=1e-12)
    assert np.abs(np.asarray(ds_ref)).max() > 1e-6


def _per_example_jacobians(model, params, z, cond, sigma):
  """(d s / d z, d s / d cond) per example: (B, D, D) and (B, D, X)."""
  f = lambda zi, ci, si: model.full_score(params, zi[None], ci[None], si[None])[0]
  return jax.jit(jax.vmap(jax.jacfwd(f, argnums=(0, 1))))(z, cond, sigma)


def test_scores_are_autoregressive_in_z_for_any_x_and_depend_on_x():
  with float64():
    model = _tiny("random")
    assert not np.array_equal(model.rank, np.arange(D))   # a non-trivial order
    params = to_f64(model.init(jax.random.PRNGKey(2)))
    for seed in (3, 4):
      z, cond, sigma = _inputs(seed)
      jz, jx = map(np.asarray, _per_example_jacobians(model, params, z, cond, sigma))
      rank = model.rank
      later = (rank[None, :] > rank[:, None])           # later[d, j]: z_j after z_d
      earlier = rank[None, :] < rank[:, None]
      assert np.all(jz[:, later] == 0.0)
      assert np.abs(jz[:, earlier]).max() > 1e-8          # the context uses z_<d
      assert np.abs(np.diagonal(jz, axis1=1, axis2=2)).min() > 0.0
      # every conditional, the first in the order included, sees x
      assert np.abs(jx).max(axis=(0, 2)).min() > 1e-6


def test_contexts_depend_on_x_even_without_hidden_layers():
  with float64():
    model = _tiny("natural", hidden_sizes=())
    params = to_f64(model.init(jax.random.PRNGKey(5)))
    z, cond, _ = _inputs(6)
    dctx = jax.jacfwd(lambda c: model.context(params, z, c))(cond)   # (B, D, C, B, X)
    per_dim = np.abs(np.asarray(dctx)).max(axis=(0, 2, 3, 4))
    assert per_dim.min() > 1e-6


def test_shape_errors():
  model = _tiny(dtype=jnp.float32)
  params = model.init(jax.random.PRNGKey(0))
  z = jnp.zeros((2, D))
  with pytest.raises(AssertionError):
    model.context(params, z, jnp.zeros((2, X + 1)))
  with pytest.raises(AssertionError):
    model.context(params, z, jnp.zeros((3, X)))


# --- learning a conditional Gaussian with CSM --------------------------------------

GD, GX = 3, 2
_A = np.array([[1.0, -0.5], [0.3, 0.8], [-0.7, 0.2]])       # mean's dependence on x
_B = np.array([[0.0, 0.0, 0.0], [0.6, 0.0, 0.0], [-0.4, 0.5, 0.0]])  # AR dependence
_V = np.array([0.5, 0.3, 0.8])                              # conditional variances


def _sample_gaussian(rng, n):
  """x ~ N(0, I); z_d = (A x)_d + (B z)_d + sqrt(v_d) eps_d (B strictly lower)."""
  kx, ke = jax.random.split(rng)
  x = jax.random.normal(kx, (n, GX))
  eps = jax.random.normal(ke, (n, GD)) * jnp.sqrt(jnp.asarray(_V, jnp.float32))
  z = jnp.zeros((n, GD))
  for d in range(GD):
    z = z.at[:, d].set(x @ jnp.asarray(_A[d], jnp.float32) + z @ jnp.asarray(_B[d], jnp.float32)
                       + eps[:, d])
  return z, x


def _true_noisy_score(z_clean, x, z_noisy, sigma):
  """d/dz~_d log q_sigma(z~_d | z_<d, x): N(m_d, v_d + sigma^2) with m_d from the clean z."""
  m = x @ jnp.asarray(_A.T, jnp.float32) + z_clean @ jnp.asarray(_B.T, jnp.float32)
  return -(z_noisy - m) / (jnp.asarray(_V, jnp.float32) + sigma ** 2)


class _AnalyticConditionalGaussian:
  """Duck-typed conditional model whose scores are the true noisy ones of `_sample_gaussian`
  (noisy=False: the clean ones; without noise conditional_csm_loss passes sigma = 1)."""

  def __init__(self, noisy):
    self.noisy = noisy

  def context(self, params, z, cond):
    m = cond @ jnp.asarray(_A.T, jnp.float32) + z @ jnp.asarray(_B.T, jnp.float32)
    return m[..., None]                          # m_d depends on z_<d and x only

  def score_and_diag(self, params, ctx, z, sigma):
    var = jnp.asarray(_V, jnp.float32) + (sigma ** 2 if self.noisy else 0.0)
    return -(z - ctx[..., 0]) / var, jnp.broadcast_to(-1.0 / var, z.shape)


@pytest.mark.parametrize("noisy", [False, True])
def test_conditional_csm_at_true_scores_matches_analytic_value(noisy):
  """At the true scores E[1/2 s_d^2 + ds_d/dz_d] = -1/(2 (v_d + sigma^2)) (paper Eq. 5);
  with noise each term is weighted by sigma^2 and sigma is uniform over the levels."""
  sigmas = noise_lib.geometric_sigmas(0.3, 0.1, 2) if noisy else None
  z, x = _sample_gaussian(jax.random.PRNGKey(7), 50_000)
  loss, _ = losses.conditional_csm_loss(_AnalyticConditionalGaussian(noisy), sigmas, None, z, x,
                                        jax.random.PRNGKey(8))
  if noisy:
    sig = np.asarray(sigmas, np.float64)[:, None]
    expected = (-0.5 * sig ** 2 / (_V + sig ** 2)).mean(0).sum()
  else:
    expected = (-0.5 / _V).sum()
  np.testing.assert_allclose(float(loss), expected, rtol=0.02)


@pytest.mark.slow
def test_csm_learns_conditional_gaussian_scores():
  """After 400 adam steps (cosine decay, fresh samples each step, sigmas 0.3 and 0.1) the
  learned scores at sigma_min on held-out (z, x) are within 15% relative RMS error of
  the analytic ones (measured: 0.085). The head outputs s itself (scale_by_sigma=False):
  with s = MLP / sigma the small-sigma scores need far more steps on this problem."""
  model = conditional.conditional_made_model(GD, GX, hidden_sizes=(64,), context_size=4,
                                             head_hidden=(32, 32), order="natural",
                                             scale_by_sigma=False)
  sigmas = noise_lib.geometric_sigmas(0.3, 0.1, 2)
  params = model.init(jax.random.PRNGKey(0))
  steps = 400
  opt = optax.adam(optax.cosine_decay_schedule(1e-2, steps))
  loss_fn = functools.partial(losses.conditional_csm_loss, model, sigmas)

  def step(carry, rng):
    params, opt_state = carry
    k_data, k_loss = jax.random.split(rng)
    z, x = _sample_gaussian(k_data, 1024)
    grads, metrics = jax.grad(loss_fn, has_aux=True)(params, z, x, k_loss)
    updates, opt_state = opt.update(grads, opt_state)
    return (optax.apply_updates(params, updates), opt_state), metrics["loss"]

  @jax.jit
  def train(params, rng):
    (params, _), curve = jax.lax.scan(step, (params, opt.init(params)),
                                      jax.random.split(rng, steps))
    return params, curve

  params, curve = train(params, jax.random.PRNGKey(1))
  assert np.isfinite(np.asarray(curve)).all()
  assert curve[-50:].mean() < curve[:50].mean()

  z, x = _sample_gaussian(jax.random.PRNGKey(2), 2000)
  sigma = jnp.full_like(z, float(sigmas[-1]))
  zt, _ = noise_lib.perturb(jax.random.PRNGKey(3), z, sigma)
  s = model.score(params, model.context(params, z, x), zt, sigma)
  s_true = _true_noisy_score(z, x, zt, sigma)
  rel = float(jnp.sqrt(jnp.mean((s - s_true) ** 2) / jnp.mean(s_true ** 2)))
  assert rel < 0.15, rel
