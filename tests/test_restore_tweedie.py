"""Tweedie's posterior mean on a smoothed-joint prior (csm_jax/restore/tweedie.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from csm_jax import config_base
from csm_jax.models import known
from csm_jax.restore import joint as joint_lib
from csm_jax.restore import observations as obs_lib
from csm_jax.restore import posterior
from csm_jax.restore import tweedie
from tests.helpers import check_inpainting_chains
from tests.helpers import smoothed_gaussian as _smoothed_gaussian
from tests.helpers import smoothed_gaussian_inpainting
from tests.helpers import tiny_smoothed_joint_image_model

SPACE = obs_lib.PixelSpace()          # identity: model space is image space


def test_known_smoothed_gaussian_conditionals_give_its_smoothed_joint():
  """The AR factorization's joint (box quadrature) is log N(x; mu, cov + s^2 I)."""
  m = _smoothed_gaussian()
  x = np.random.default_rng(1).normal(0, 0.7, (5, m.dim))
  s = 0.4
  lp = joint_lib.make_joint(m, joint_lib.Box(-9.0, 9.0, 129, True)).log_prob(
      None, jnp.asarray(x, jnp.float32), s)
  c = m.cov + s * s * np.eye(m.dim)
  r = x - m.mu
  ref = -0.5 * (np.einsum("nd,de,ne->n", r, np.linalg.inv(c), r)
                + np.linalg.slogdet(2 * np.pi * c)[1])
  np.testing.assert_allclose(np.asarray(lp), ref, atol=2e-3)


@pytest.mark.parametrize("s", [0.2, 0.6])
def test_tweedie_is_the_analytic_gaussian_posterior_mean(s):
  """x ~ N(mu, cov), y = x + N(0, s^2 I): E[x | y] = mu + cov (cov + s^2 I)^-1 (y - mu)."""
  m = _smoothed_gaussian()
  obs = obs_lib.GaussianNoise(s, (m.dim,), bounded=False)
  level = tweedie.check(m, obs, SPACE, (1.0, 0.1))
  assert level == pytest.approx(s)
  joint = joint_lib.make_joint(m, tweedie.widened_box(joint_lib.Box(-4.0, 4.0, 129, True),
                                                      level))
  gen = np.random.default_rng(2)
  x = gen.multivariate_normal(m.mu, m.cov, 8)
  y = x + s * gen.standard_normal(x.shape)
  out = np.asarray(tweedie.make_tweedie(joint, SPACE, level)(None, jnp.asarray(y, jnp.float32)))
  c = m.cov + s * s * np.eye(m.dim)
  ref = m.mu + (y - m.mu) @ np.linalg.solve(c, m.cov)     # cov symmetric
  np.testing.assert_allclose(out, ref, atol=3e-3)
  assert np.abs(ref - y).max() > 0.1       # the prior moved the estimate


def test_tweedie_rejects_what_its_formula_does_not_cover():
  obs = obs_lib.GaussianNoise(0.3, (3,), bounded=False)
  per_dim = known.random_gaussian_ar(3)     # contexts without the level
  with pytest.raises(ValueError, match="smoothed-joint"):
    tweedie.check(per_dim, obs, SPACE, (1.0, 0.1))
  m = _smoothed_gaussian(3)
  with pytest.raises(ValueError, match="Gaussian noise"):
    tweedie.check(m, obs_lib.SaltPepper(0.1, (3,)), SPACE, (1.0, 0.1))
  with pytest.raises(ValueError, match="restore.sigma.*outside"):
    tweedie.check(m, obs, SPACE, (0.2, 0.1))
  with pytest.raises(ValueError, match="affine"):
    tweedie.check(m, obs, obs_lib.PixelSpace(False, 256.0, 0.5, "unit", 1e-6), (1.0, 0.1))
  with pytest.raises(ValueError, match="mala_steps"):
    posterior.Settings(sigmas=(0.1,), method="tweedie", mala_steps=2)


def test_restore_library_call_with_tweedie_on_a_smoothed_joint_made():
  shape = (4, 4, 1)
  config, model, params, pre = tiny_smoothed_joint_image_model(shape)
  assert model.context_sigma
  config.noise.sigma_max, config.noise.sigma_min, config.noise.num_levels = 0.5, 0.05, 3
  config.restore.method, config.restore.sigma = "tweedie", 0.2
  config.restore.num_levels = 1    # annealing levels only: the check reads the trained ones
  config_base.validate(config)     # 'tweedie' is a valid restore.method
  images = np.random.default_rng(0).integers(0, 256, (3,) + shape) / 255.0
  y = obs_lib.GaussianNoise(0.2, shape).corrupt(0, images)
  res = posterior.restore(model, params, config, y, task="gaussian", rng=0, preprocessor=pre)
  assert res["mean"].shape == images.shape and "sample" not in res
  assert np.isfinite(res["mean"]).all() and 0 <= res["mean"].min() <= res["mean"].max() <= 1
  # the same as the formula by hand on the widened box
  space = obs_lib.PixelSpace.from_preprocessor(pre)
  level = 0.2 / space.image_per_model
  box = tweedie.widened_box(joint_lib.default_box(pre, config.restore.grid_points), level)
  yx = space.from_image(jnp.asarray(y.reshape(3, -1), jnp.float32))
  g = joint_lib.make_joint(model, box).grad(params, yx, level)
  ref = np.clip(np.asarray(space.to_image(yx + level ** 2 * g)), 0, 1).reshape(images.shape)
  np.testing.assert_allclose(res["mean"], ref, atol=1e-5)
  with pytest.raises(ValueError, match="Gaussian noise"):
    posterior.restore(model, params, config, np.clip(y, 0, 1), task="salt_pepper", rng=0,
                      preprocessor=pre)


@pytest.mark.slow
def test_annealing_with_noised_pins_ends_in_the_exact_inpainting_posterior():
  """restore.noise_pins: the observed pixels carry each level's extra noise and are
  pinned at the last one; the free pixels end in the analytic conditional Gaussian."""
  s_min = 0.3
  m, obs, keep, y, mean, cov = smoothed_gaussian_inpainting(s_min)
  joint = joint_lib.make_joint(m, joint_lib.Box(-8.0, 8.0, 97, True))
  st = posterior.Settings(sigmas=(1.0, 0.6, s_min), steps_per_level=200, step_lr=0.05,
                          chains=1000, noise_pins=True)
  out = posterior.make_sampler(m, joint, obs, SPACE, st)(None, jnp.asarray(y[None]),
                                                         jax.random.PRNGKey(5))
  check_inpainting_chains(out["chains"][0], keep, y, mean, cov)
