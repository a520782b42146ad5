"""Denoising (csm_jax/denoise.py, paper Sec. 5.4) against analytic Gaussian posteriors."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from csm_jax import denoise
from tests.helpers import float64, tiny_model, to_f64
from tests.test_sampling import GaussianAR, _assert_moments, _gaussian_ar


@dataclasses.dataclass(frozen=True)
class GaussianARModel(GaussianAR):
  """GaussianAR with the attributes the denoisers read."""
  discrete = False


def _model():
  g = _gaussian_ar()
  return GaussianARModel(g.bmat, g.c, g.v)


def test_salt_and_pepper_fraction_and_values():
  x = jnp.full((200, 28, 28, 1), 0.4)
  p = 0.1
  y, mask = denoise.salt_and_pepper(jax.random.PRNGKey(0), x, p, low=-1.0, high=1.0)
  y, mask = np.asarray(y), np.asarray(mask)
  n = mask.size
  assert abs(mask.mean() - p) < 4 * np.sqrt(p * (1 - p) / n)
  # changed entries took exactly the extreme values, about half each; the rest are kept
  changed = y[mask]
  assert set(np.unique(changed)) <= {-1.0, 1.0}
  assert abs((changed == 1.0).mean() - 0.5) < 4 * np.sqrt(0.25 / changed.size)
  np.testing.assert_array_equal(y[~mask], np.float32(0.4))
  with pytest.raises(ValueError, match="rate"):
    denoise.salt_and_pepper(jax.random.PRNGKey(0), x, 1.5)


def _posterior_mean_loop(model, y, sigma, autoregressive):
  """E[x_d | y_d, context] for x_d | x_<d ~ N(m_d, v_d), y_d = x_d + sigma eps, by
  Gaussian conditioning in float64 (independent of the score formula)."""
  y = np.asarray(y, np.float64)
  x = y.copy()
  for d in range(model.dim):
    prefix = x if autoregressive else y
    m = prefix @ model.bmat[d] + model.c[d]           # bmat strictly lower: uses x_<d only
    gain = model.v[d] / (model.v[d] + sigma ** 2)
    x[:, d] = m + gain * (y[:, d] - m)
  return x


@pytest.mark.parametrize("autoregressive", [True, False])
def test_tweedie_step_is_the_gaussian_posterior_mean(autoregressive):
  model, sigma = _model(), 0.6
  with float64():
    y = jax.random.normal(jax.random.PRNGKey(1), (64, model.dim), jnp.float64) * 2.0
    got = denoise.tweedie_denoise(model, None, y, sigma, autoregressive)
    assert got.dtype == jnp.float64
    want = _posterior_mean_loop(model, y, sigma, autoregressive)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-12, atol=1e-12)


def test_autoregressive_tweedie_on_a_made_uses_the_denoised_prefix():
  """On a MADE AR-CSM (random order) the one-scan denoiser equals a loop that re-runs the
  full model with the prefix already denoised (float64)."""
  model = tiny_model(5, order="random")
  sigma = 0.3
  with float64():
    params = to_f64(model.init(jax.random.PRNGKey(0)))
    y = jax.random.normal(jax.random.PRNGKey(2), (4, 5), jnp.float64)
    got = np.asarray(denoise.tweedie_denoise(model, params, y, sigma, True))
    x = np.asarray(y).copy()
    for d in model.order:
      s = model.full_score(params, jnp.asarray(x), jnp.full_like(y, sigma))
      x[:, d] = np.asarray(y)[:, d] + sigma ** 2 * np.asarray(s)[:, d]
    once = np.asarray(denoise.tweedie_denoise(model, params, y, sigma, False))
    want_once = np.asarray(y + sigma ** 2 * model.full_score(params, y, jnp.full_like(y, sigma)))
  np.testing.assert_allclose(got, x, rtol=1e-10, atol=1e-12)
  np.testing.assert_allclose(once, want_once, rtol=1e-12, atol=1e-12)
  assert not np.allclose(got, once)   # the two variants differ on a real AR model


def test_langevin_restorer_started_at_model_samples_stays_in_the_model():
  """Chains started at exact draws of a Gaussian AR model, run from start_sigma down,
  end distributed as the model (mean and covariance within sampling error)."""
  model = _model()
  a = np.linalg.inv(np.eye(3) - model.bmat)
  mean, cov = a @ model.c, a @ np.diag(model.v) @ a.T
  n = 4000
  x0 = mean + np.random.default_rng(0).standard_normal((n, 3)) @ np.linalg.cholesky(cov).T
  sigmas = (1.0, 0.3, 0.1, 0.03, 0.01)
  restore = denoise.make_langevin_restorer(model, sigmas, start_sigma=0.1, n_steps=100,
                                           step_lr=0.002, denoise=False)
  out = np.asarray(restore(None, jax.random.PRNGKey(3), jnp.asarray(x0, jnp.float32)))
  # the last level's target is N(m_d, v_d + 0.01^2): covariance of that AR model
  _assert_moments(out, mean, a @ np.diag(model.v + 0.01 ** 2) @ a.T)
  # the chains moved: the restorer is not the identity on already clean inputs
  assert np.mean(np.abs(out - x0)) > 0.1


@pytest.mark.slow
def test_fixed_point_restoration_equals_the_sequential_one():
  """sampling.method='fixed_point': the same restoration by Jacobi sweeps from x^(0) = y
  (same rng, fixed_point_tol=0), with the sweeps used recorded and logged."""
  from tests.helpers import tiny_train_config
  model = tiny_model(5, order="random")
  params = model.init(jax.random.PRNGKey(0))
  config = tiny_train_config(**{"sampling.sigmas": (1.0, 0.5, 0.2, 0.1),
                                "sampling.num_steps": 3, "sampling.step_lr": 0.005})
  y = jax.random.normal(jax.random.PRNGKey(1), (4, 5))
  rng = jax.random.PRNGKey(2)
  seq_fn, seq_info = denoise.restorer_from_config(config, model, 0.5)
  seq = np.asarray(seq_fn(params, rng, y))
  assert seq_info["method"] == "sequential" and "sweeps" not in seq_info
  config.sampling.method = "fixed_point"
  config.sampling.fixed_point_tol = 0.0
  lines = []
  fp_fn, info = denoise.restorer_from_config(config, model, 0.5, log=lines.append)
  np.testing.assert_allclose(np.asarray(fp_fn(params, rng, y)), seq, atol=1e-5, rtol=0)
  assert info["levels"] == [0.5, 0.2, 0.1] and info["method"] == "fixed_point"
  # D = 5 sweeps are exact even if rounding leaves a last change above tol = 0
  assert 1 <= info["sweeps"] <= 5 and info["converged"] and info["max_change"] < 1e-5
  assert f"{info['sweeps']} sweeps for D=5" in lines[-1]
  # one sweep from y: the first dimension of the order is already the sequential one
  x1, used, _ = denoise.fixed_point_restore(model, params, rng, y, (1.0, 0.5, 0.2, 0.1),
                                            0.5, 3, 0.005, max_sweeps=1)
  d = model.order[0]
  assert int(used) == 1
  np.testing.assert_allclose(np.asarray(x1)[:, d], seq[:, d], atol=1e-5, rtol=0)


def test_restoration_levels_and_errors():
  assert denoise.restoration_sigmas((1.0, 0.5, 0.1), 0.5) == (0.5, 0.1)
  assert denoise.restoration_sigmas((1.0, 0.5, 0.1), 0.7) == (0.5, 0.1)
  with pytest.raises(ValueError, match="below every"):
    denoise.restoration_sigmas((1.0, 0.5), 0.1)
  with pytest.raises(ValueError, match="decrease"):
    denoise.restoration_sigmas((0.1, 0.5), 1.0)


def test_image_metrics_and_baselines():
  rng = np.random.default_rng(0)
  clean = rng.random((4, 16, 16, 1)).astype(np.float32)
  m = denoise.image_metrics(clean, clean)
  assert m["ssim"] == pytest.approx(1.0, abs=1e-6) and m["psnr"] > 100
  noisy = clean + 0.1 * rng.standard_normal(clean.shape).astype(np.float32)
  # PSNR of additive noise of std 0.1 (before clipping, which only lowers the error): ~20 dB
  assert 19.5 < denoise.image_metrics(clean, noisy)["psnr"] < 21.5
  # median filter removes isolated impulses of a constant image exactly
  flat = np.full((2, 9, 9, 1), 0.5, np.float32)
  imp = flat.copy()
  imp[:, 4, 4, 0] = 1.0
  np.testing.assert_array_equal(denoise.median_filter(imp), flat)
  # the linear posterior mean of Gaussian data equals the analytic Wiener solution
  cov = np.array([[1.0, 0.8], [0.8, 1.0]])
  x = rng.multivariate_normal([0, 0], cov, size=200_000)
  y = np.array([[1.0, -1.0]])
  got = denoise.linear_posterior_mean(x, y, 0.5)
  want = y @ np.linalg.solve(cov + 0.25 * np.eye(2), cov)
  np.testing.assert_allclose(got, want, atol=2e-2)
