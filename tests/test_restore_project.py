"""Denoise-and-project on a smoothed-joint prior (csm_jax/restore/project.py): the
projections against their definitions, the loop against the same loop with the analytic
Gaussian denoiser, one-line refusals, the library call."""

import jax.numpy as jnp
import numpy as np
import pytest

from csm_jax import config_base
from csm_jax.models import known
from csm_jax.restore import joint as joint_lib
from csm_jax.restore import observations as obs_lib
from csm_jax.restore import posterior
from csm_jax.restore import project
from tests.helpers import smoothed_gaussian as _smoothed_gaussian
from tests.helpers import tiny_smoothed_joint_image_model

SPACE = obs_lib.PixelSpace()          # identity: model space is image space


def test_downsample_projection_is_the_closest_consistent_image():
  """P(u) satisfies pool(P(u)) = y, is idempotent, and no other image with pool = y is
  closer to u (the Euclidean projection onto the affine set)."""
  shape = (4, 6, 1)
  obs = obs_lib.Downsample(2, 0.02, shape)
  gen = np.random.default_rng(0)
  y = jnp.asarray(gen.uniform(0, 1, (3, 6)), jnp.float32)
  u = jnp.asarray(gen.uniform(0, 1, (3, 24)), jnp.float32)
  p = project.project(obs, y, u)
  np.testing.assert_allclose(np.asarray(obs.pool(p)), np.asarray(y), atol=1e-6)
  np.testing.assert_allclose(np.asarray(project.project(obs, y, p)), np.asarray(p), atol=1e-6)
  d = np.linalg.norm(np.asarray(u - p), axis=1)
  for _ in range(20):   # other consistent images: p plus a pool-null perturbation
    w = gen.normal(0, 0.3, (3, 24)).astype(np.float32)
    v = project.project(obs, y, p + jnp.asarray(w))
    np.testing.assert_allclose(np.asarray(obs.pool(v)), np.asarray(y), atol=1e-5)
    assert (np.linalg.norm(np.asarray(u - v), axis=1) >= d - 1e-5).all()


def test_pinned_projections_keep_the_observed_pixels_exactly():
  shape = (4, 4, 1)
  gen = np.random.default_rng(1)
  images = gen.integers(0, 256, (2,) + shape) / 255.0
  u = jnp.asarray(gen.uniform(0, 1, (2, 16)), jnp.float32)
  miss = obs_lib.Missing(obs_lib.make_mask("random50", shape, 0), shape)
  y = miss.corrupt(0, images)
  p = np.asarray(project.project(miss, jnp.asarray(y.reshape(2, -1)), u))
  m = np.asarray(miss.mask).reshape(-1)
  np.testing.assert_array_equal(p[:, m], y.reshape(2, -1)[:, m])
  np.testing.assert_array_equal(p[:, ~m], np.asarray(u)[:, ~m])
  sp = obs_lib.SaltPepper(0.3, shape)
  y = sp.corrupt(2, images).reshape(2, -1)
  p = np.asarray(project.project(sp, jnp.asarray(y), u))
  kept = (y > 0) & (y < 1)        # neither 0 nor 255: observed exactly
  assert kept.any() and (~kept).any()
  np.testing.assert_array_equal(p[kept], y[kept])
  np.testing.assert_array_equal(p[~kept], np.asarray(u)[~kept])


def test_loop_equals_the_loop_with_the_analytic_gaussian_denoiser():
  """On a known smoothed Gaussian (q_s = N(mu, cov + s^2 I)) the model's Tweedie step is
  E[x | u] = mu + cov (cov + s^2 I)^-1 (u - mu): the loop through the box-quadrature
  joint equals the same loop with that denoiser in float64, for super-resolution."""
  m = _smoothed_gaussian(4)
  shape = (2, 2, 1)
  obs = obs_lib.Downsample(2, 0.02, shape)
  gen = np.random.default_rng(3)
  x = gen.multivariate_normal(m.mu, m.cov, 5)
  y = obs.pool(jnp.asarray(x)).reshape(5, 1)
  u0 = x + gen.normal(0, 0.3, x.shape)
  levels = project.levels(0.5, 0.1, 3)
  fn = project.make_project(m, joint_lib.Box(-4.0, 4.0, 129, True), obs, SPACE, levels)
  out = fn(None, np.asarray(y, np.float32), np.asarray(u0, np.float32))

  def analytic(u, s):
    c = m.cov + s * s * np.eye(m.dim)
    return m.mu + (u - m.mu) @ np.linalg.solve(c, m.cov)
  ref = u0.copy()
  for s in levels:
    d = analytic(ref, s)
    ref = d + np.repeat(np.asarray(y, np.float64) - d.mean(1, keepdims=True), 4, 1)
  np.testing.assert_allclose(out, ref, atol=3e-3)
  np.testing.assert_allclose(np.asarray(obs.pool(jnp.asarray(out))), np.asarray(y), atol=1e-5)
  assert np.abs(ref - u0).max() > 0.1       # the prior moved the estimate


def test_project_rejects_what_it_does_not_cover():
  m = _smoothed_gaussian(4)
  shape = (2, 2, 1)
  miss = obs_lib.Missing(obs_lib.make_mask("random50", shape, 0), shape)
  lv = project.levels(0.1, 0.02, 3)
  with pytest.raises(ValueError, match="smoothed-joint"):
    project.check(known.random_gaussian_ar(4), miss, SPACE, lv, (1.0, 0.01))
  with pytest.raises(ValueError, match="tweedie"):
    project.check(m, obs_lib.GaussianNoise(0.3, shape), SPACE, lv, (1.0, 0.01))
  with pytest.raises(ValueError, match="project_start/project_end.*outside"):
    project.check(m, miss, SPACE, lv, (1.0, 0.05))
  with pytest.raises(ValueError, match="affine"):
    project.check(m, miss, obs_lib.PixelSpace(False, 256.0, 0.5, "unit", 1e-6), lv,
                  (1.0, 0.01))
  with pytest.raises(ValueError, match="project_start .* must be >= restore.project_end"):
    project.levels(0.01, 0.1, 3)
  with pytest.raises(ValueError, match="project_levels"):
    project.levels(0.1, 0.01, 0)
  with pytest.raises(ValueError, match="mala_steps"):
    posterior.Settings(sigmas=(0.1,), method="project", mala_steps=2)
  config = config_base.default_config()
  config.restore.project_end = 0.5      # above project_start
  with pytest.raises(config_base.ConfigError, match="restore.project_end"):
    config_base.validate(config)


def test_restore_library_call_with_project_on_a_smoothed_joint_made():
  """restore.method='project': from the biharmonic start, the observed pixels exact, the
  same as make_project called by hand."""
  shape = (4, 4, 1)
  config, model, params, pre = tiny_smoothed_joint_image_model(shape)
  config.noise.sigma_max, config.noise.sigma_min, config.noise.num_levels = 0.5, 0.01, 3
  config.restore.method, config.restore.mask = "project", "centre"
  config.restore.project_levels = 2
  config_base.validate(config)
  images = np.random.default_rng(0).integers(0, 256, (3,) + shape) / 255.0
  obs = obs_lib.Missing(obs_lib.make_mask("centre", shape, 0), shape)
  y = obs.corrupt(0, images)
  res = posterior.restore(model, params, config, y, task="inpaint", rng=0, preprocessor=pre)
  assert res["mean"].shape == images.shape and "sample" not in res
  m = np.asarray(obs.mask)
  np.testing.assert_array_equal(res["mean"][:, m], y[:, m])
  space = obs_lib.PixelSpace.from_preprocessor(pre)
  box = joint_lib.default_box(pre, config.restore.grid_points)
  ref = project.make_project(model, box, obs, space, project.levels(0.1, 0.02, 2))(
      params, y.reshape(3, -1))
  np.testing.assert_allclose(res["mean"].reshape(3, -1), ref, atol=1e-6)
  assert not np.allclose(ref, project.start_image(obs, y))   # the loop moved the start
  with pytest.raises(ValueError, match="tweedie"):
    posterior.restore(model, params, config, np.clip(y, 0, 1), task="gaussian", rng=0,
                      preprocessor=pre)


def test_salt_pepper_start_is_the_configured_median_and_the_loop_starts_from_it():
  """restore.sp_start: start_image gives the decision median (classical.py) when asked, the
  adaptive median by default; method='project' starts its loop from it (the same as
  make_project with that u0); a name outside SP_STARTS is one line naming the field."""
  from csm_jax.restore import classical  # pylint: disable=g-import-not-at-top
  shape = (6, 6, 1)
  config, model, params, pre = tiny_smoothed_joint_image_model(shape)
  config.noise.sigma_max, config.noise.sigma_min, config.noise.num_levels = 0.5, 0.01, 3
  config.restore.method, config.restore.task, config.restore.p = "project", "salt_pepper", 0.3
  config.restore.project_levels, config.restore.sp_start = 2, "decision_median"
  config_base.validate(config)
  gen = np.random.default_rng(1)
  images = gen.integers(0, 256, (3,) + shape) / 255.0
  images[:, :2] = 0.0                                   # a black band: kept zeros
  obs = obs_lib.SaltPepper(0.3, shape)
  y = obs.corrupt(0, images)
  dm = project.start_image(obs, y, "decision_median")
  np.testing.assert_array_equal(dm, np.asarray(classical.decision_median(y)).reshape(3, -1))
  am = project.start_image(obs, y)
  np.testing.assert_array_equal(am, np.asarray(classical.adaptive_median(y)).reshape(3, -1))
  assert not np.allclose(dm, am)
  assert project.start_name(obs, "decision_median") == "decision_median"
  assert project.start_name(obs_lib.Missing(obs_lib.make_mask("centre", shape, 0), shape),
                            "decision_median") == "biharmonic"   # salt-and-pepper only
  res = posterior.restore(model, params, config, y, rng=0, preprocessor=pre)
  space = obs_lib.PixelSpace.from_preprocessor(pre)
  box = joint_lib.default_box(pre, config.restore.grid_points)
  loop = project.make_project(model, box, obs, space, project.levels(0.1, 0.02, 2))
  yf = y.reshape(3, -1)
  np.testing.assert_allclose(res["mean"].reshape(3, -1), loop(params, yf, dm), atol=1e-6)
  assert not np.allclose(loop(params, yf, dm), loop(params, yf, am))
  with pytest.raises(ValueError, match="restore.sp_start must be one of"):
    project.start_image(obs, y, "median3x3")
  with pytest.raises(ValueError, match="sp_start must be one of"):
    posterior.Settings(sigmas=(0.1,), method="project", sp_start="median")
  config.restore.sp_start = "median3x3"
  with pytest.raises(config_base.ConfigError, match="restore.sp_start"):
    config_base.validate(config)
