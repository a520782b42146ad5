"""restore.init: the posterior samplers started from a restoration instead of the
observation's own fill-in (posterior.py, the module docstring)."""

import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from csm_jax import config_base
from csm_jax.restore import classical
from csm_jax.restore import joint as joint_lib
from csm_jax.restore import observations as obs_lib
from csm_jax.restore import posterior
from csm_jax.restore import project
from tests.helpers import check_inpainting_chains
from tests.helpers import smoothed_gaussian as _smoothed_gaussian
from tests.helpers import smoothed_gaussian_inpainting
from tests.helpers import tiny_model
from tests.helpers import tiny_smoothed_joint_image_model

SPACE = obs_lib.PixelSpace()          # identity: model space is image space


def test_the_start_image_replaces_the_fill_in_and_gets_the_first_level_noise():
  """With one tiny step the chains sit at start + sigma_1 noise on the free pixels: the
  start is used, noised at sigma_1, and the pinned pixels keep their values."""
  m = _smoothed_gaussian(4, seed=3)
  keep = np.array([True, False, True, False])
  obs = obs_lib.Missing(keep, (4,), bounded=False)
  y = np.array([0.3, 0.0, -0.2, 0.0], np.float32)
  start = np.array([9.0, 2.0, 9.0, -1.5], np.float32)   # pinned entries must be ignored
  joint = joint_lib.make_joint(m, joint_lib.Box(-8.0, 8.0, 97, True))
  st = posterior.Settings(sigmas=(0.5,), steps_per_level=1, step_lr=1e-10, chains=4000)
  run = posterior.make_sampler(m, joint, obs, SPACE, st)
  out = run(None, jnp.asarray(y[None]), jax.random.PRNGKey(0), start=jnp.asarray(start[None]))
  ch = np.asarray(out["chains"][0], np.float64)
  np.testing.assert_array_equal(ch[:, keep], np.broadcast_to(y[keep], (4000, 2)))
  free = ch[:, ~keep]
  se = 0.5 / np.sqrt(4000)
  assert np.all(np.abs(free.mean(0) - start[~keep]) < 5 * se), free.mean(0)
  assert np.all(np.abs(free.std(0) - 0.5) < 0.03), free.std(0)
  # without a start: the observation's fill-in (the mean of the observed pixels)
  out0 = run(None, jnp.asarray(y[None]), jax.random.PRNGKey(0))
  fill = np.asarray(obs.init_image(jnp.asarray(y[None])))[0]
  assert np.all(np.abs(np.asarray(out0["chains"][0])[:, ~keep].mean(0) - fill[~keep]) < 5 * se)


@pytest.mark.slow
def test_annealing_from_a_far_start_ends_in_the_exact_inpainting_posterior():
  """A start far from the posterior (over 4 standard deviations) is forgotten: annealed
  Langevin ends in the analytic conditional Gaussian of a known smoothed joint."""
  s_min = 0.3
  m, obs, keep, y, mean, cov = smoothed_gaussian_inpainting(s_min)
  start = np.where(keep, 0.0, 5.0).astype(np.float32)
  assert np.all(np.abs(start[~keep] - mean) > 4 * np.sqrt(np.diag(cov)))
  joint = joint_lib.make_joint(m, joint_lib.Box(-8.0, 8.0, 97, True))
  st = posterior.Settings(sigmas=(0.6, 0.45, s_min), steps_per_level=200, step_lr=0.05,
                          chains=1000)
  out = posterior.make_sampler(m, joint, obs, SPACE, st)(
      None, jnp.asarray(y[None]), jax.random.PRNGKey(5), start=jnp.asarray(start[None]))
  check_inpainting_chains(out["chains"][0], keep, y, mean, cov)


def _image_setup(init, method="annealed"):
  shape = (4, 4, 1)
  config, model, params, pre = tiny_smoothed_joint_image_model(shape)
  config.noise.sigma_max, config.noise.sigma_min, config.noise.num_levels = 0.5, 0.01, 3
  config.restore.method, config.restore.mask, config.restore.init = method, "centre", init
  config.restore.project_levels, config.restore.steps_per_level = 2, 2
  config.restore.chains = 3
  config_base.validate(config)
  images = np.random.default_rng(0).integers(0, 256, (2,) + shape) / 255.0
  obs = obs_lib.Missing(obs_lib.make_mask("centre", shape, 0), shape)
  return config, model, params, pre, obs, obs.corrupt(0, images)


@pytest.mark.parametrize("init", ["classical", "project"])
def test_restore_library_call_starts_from_the_restoration(init):
  """restore.init: the same as the sampler run by hand from the classical start or the
  denoise-and-project estimate; the observed pixels exact."""
  config, model, params, pre, obs, y = _image_setup(init)
  res = posterior.restore(model, params, config, y, task="inpaint", rng=0, preprocessor=pre)
  m = np.asarray(obs.mask)
  np.testing.assert_array_equal(res["mean"][:, m], y[:, m])
  np.testing.assert_array_equal(res["sample"][:, m], y[:, m])
  space = obs_lib.PixelSpace.from_preprocessor(pre)
  box = joint_lib.default_box(pre, config.restore.grid_points)
  yf = jnp.asarray(y.reshape(2, -1))
  start = (project.start_image(obs, y) if init == "classical" else
           project.make_project(model, box, obs, space, project.levels(0.1, 0.02, 2))(params, yf))
  settings = posterior.settings_from_config(config)
  assert settings.init == init
  run = posterior.make_sampler(model, joint_lib.make_joint(model, box), obs, space, settings)
  ref = run(params, yf, jax.random.fold_in(jax.random.PRNGKey(0), 0), start=jnp.asarray(start))
  np.testing.assert_allclose(res["mean"].reshape(2, -1), ref["mean"], atol=1e-6)
  other = run(params, yf, jax.random.fold_in(jax.random.PRNGKey(0), 0))
  assert not np.allclose(other["mean"], ref["mean"])     # the start mattered


def test_the_classical_start_on_gaussian_noise_is_bm3d_at_the_known_sigma():
  """restore.init='classical' on Gaussian noise: the sampler run by hand from BM3D's
  estimate (the `bm3d` package at the observation's sigma), clipped to [0, 1]."""
  shape, sigma = (12, 12, 1), 0.3                    # BM3D's blocks are 8x8
  config, model, params, pre = tiny_smoothed_joint_image_model(shape)
  config.noise.sigma_max, config.noise.sigma_min, config.noise.num_levels = 0.5, 0.01, 3
  config.restore.method, config.restore.init, config.restore.sigma = "annealed", "classical", sigma
  config.restore.steps_per_level, config.restore.chains = 2, 3
  config_base.validate(config)
  images = np.random.default_rng(1).integers(0, 256, (2,) + shape) / 255.0
  obs = obs_lib.GaussianNoise(sigma, shape)
  y = obs.corrupt(0, images)
  res = posterior.restore(model, params, config, y, task="gaussian", rng=0, preprocessor=pre)
  start = np.clip(classical.bm3d_denoise(y, sigma), 0.0, 1.0).reshape(2, -1)
  np.testing.assert_allclose(project.start_image(obs, y), start, atol=1e-6)
  assert np.abs(start - np.clip(y, 0, 1).reshape(2, -1)).max() > 0.1   # not the fill-in
  space = obs_lib.PixelSpace.from_preprocessor(pre)
  box = joint_lib.default_box(pre, config.restore.grid_points)
  run = posterior.make_sampler(model, joint_lib.make_joint(model, box), obs, space,
                               posterior.settings_from_config(config))
  yf = jnp.asarray(y.reshape(2, -1))
  key = jax.random.fold_in(jax.random.PRNGKey(0), 0)
  ref = run(params, yf, key, start=jnp.asarray(start))
  np.testing.assert_allclose(res["mean"].reshape(2, -1), ref["mean"], atol=1e-6)
  assert not np.allclose(run(params, yf, key)["mean"], ref["mean"])   # the start mattered


def test_init_refusals_name_the_field():
  with pytest.raises(ValueError, match="init must be one of"):
    posterior.Settings(sigmas=(0.1,), init="bicubic")
  with pytest.raises(ValueError, match="a start applies to methods"):
    posterior.Settings(sigmas=(0.1,), method="filter", init="project")
  config = config_base.default_config()
  config.unlock()
  config.restore.init = "median"
  with pytest.raises(config_base.ConfigError, match="restore.init"):
    config_base.validate(config)
  config.restore.init, config.restore.method = "project", "tweedie"
  with pytest.raises(config_base.ConfigError, match="restore.init"):
    config_base.validate(config)
  # Gaussian noise pins nothing: no denoise-and-project loop to begin from
  config, model, params, pre, _, y = _image_setup("project")
  with pytest.raises(ValueError, match="restore.init: 'project' needs an observation"):
    posterior.restore(model, params, config, np.clip(y, 0, 1), task="gaussian", rng=0,
                      preprocessor=pre)
  # 'project' needs a smoothed-joint model: the per-dimension one has no denoiser
  config, model, params, pre, _, y = _image_setup("project")
  plain = tiny_model(16)
  plain = plain.__class__(**{**plain.__dict__, "data_shape": (4, 4, 1)})
  assert not plain.context_sigma
  with pytest.raises(ValueError, match="restore.init: 'project' needs a smoothed-joint"):
    posterior.restore(plain, plain.init(jax.random.PRNGKey(0)), config, y, task="inpaint",
                      rng=0, preprocessor=pre)


def test_a_start_passed_in_replaces_the_one_restore_init_computes():
  """start=: the denoise-and-project estimate computed once (restore.method=project) and
  passed in gives what restore.init='project' computes itself, in batches with padding;
  and the refusals name `start`."""
  config, model, params, pre, obs, y = _image_setup("project")
  y = np.concatenate([y, y[:1]])                     # 3 images in batches of 2: one pad
  config.restore.batch_size = 2
  own = posterior.restore(model, params, config, y, task="inpaint", rng=0, preprocessor=pre)
  pcfg = copy.deepcopy(config)
  pcfg.restore.method, pcfg.restore.init = "project", "observation"
  dnp = posterior.restore(model, params, pcfg, y, task="inpaint", rng=0, preprocessor=pre)
  config.restore.init = "observation"                # start= alone decides the start
  given = posterior.restore(model, params, config, y, task="inpaint", rng=0,
                            preprocessor=pre, start=dnp["mean"])
  np.testing.assert_allclose(given["mean"], own["mean"], atol=1e-6)
  np.testing.assert_allclose(given["sample"], own["sample"], atol=1e-6)
  plain = posterior.restore(model, params, config, y, task="inpaint", rng=0, preprocessor=pre)
  assert not np.allclose(plain["mean"], own["mean"])
  with pytest.raises(ValueError, match=r"start must have shape \(N, 4, 4, 1\)"):
    posterior.restore(model, params, config, y, task="inpaint", rng=0, preprocessor=pre,
                      start=dnp["mean"][:, :2])
  with pytest.raises(ValueError, match="start: 2 images for 3 observations"):
    posterior.restore(model, params, config, y, task="inpaint", rng=0, preprocessor=pre,
                      start=dnp["mean"][:2])
  with pytest.raises(ValueError, match="start must lie in"):
    posterior.restore(model, params, config, y, task="inpaint", rng=0, preprocessor=pre,
                      start=dnp["mean"] + 2.0)
  with pytest.raises(ValueError, match="start: restore.method 'project' takes no start"):
    posterior.restore(model, params, pcfg, y, task="inpaint", rng=0, preprocessor=pre,
                      start=dnp["mean"])
