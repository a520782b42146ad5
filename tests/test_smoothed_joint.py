"""Smoothed-joint training (noise.mode='joint'): the loss, the noise-conditional context,
the samplers and the config errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from csm_jax import config_base
from csm_jax import losses
from csm_jax import noise as noise_lib
from csm_jax import sampling
from tests import helpers

SIGMAS = np.array([0.8, 0.3, 0.1], np.float32)


def _joint_config(dim=6):
  c = config_base.default_config()
  c.model = helpers.tiny_model_config(context_sigma_embedding=8)
  c.noise.mode = "joint"
  c.noise.sigma_max, c.noise.sigma_min, c.noise.num_levels = 0.8, 0.1, 3
  c.data.dim = dim
  return c


def _model(dim=6):
  return helpers.tiny_model(dim, context_sigma_embedding=8)


@pytest.mark.slow
def test_joint_loss_is_csm_on_the_jointly_perturbed_data():
  """Eq. 5 by hand (float64): one sigma per example, x~ = x + sigma eps on every
  dimension, scores and their diagonal derivatives of the model re-evaluated on x~ as a
  function R^D -> R^D (jacfwd: the context depends on x~_<d, given sigma), sigma^2 weights."""
  model = _model()
  with helpers.float64():
    params = helpers.to_f64(model.init(jax.random.PRNGKey(0)))
    x = jax.random.uniform(jax.random.PRNGKey(1), (5, model.dim), jnp.float64)
    rng = jax.random.PRNGKey(2)
    loss, _ = losses.joint_csm_loss(model, SIGMAS, params, x, rng)

    k_noise, _ = jax.random.split(rng)        # the draws of joint_csm_loss, spelled out
    k_sig, k_eps = jax.random.split(k_noise)
    sigma = jnp.asarray(SIGMAS, jnp.float64)[jax.random.randint(k_sig, (5,), 0, 3)]
    xt = x + sigma[:, None] * jax.random.normal(k_eps, x.shape, jnp.float64)

    def per_example(xi, si):
      f = lambda y: model.full_score(params, y[None], jnp.full((1, model.dim), si))[0]
      s = f(xi)
      diag = jnp.diag(jax.jacfwd(f)(xi))
      return si ** 2 * jnp.sum(0.5 * s ** 2 + diag)

    want = jnp.mean(jax.vmap(per_example)(xt, sigma))
    assert loss.dtype == jnp.float64
    np.testing.assert_allclose(float(loss), float(want), rtol=1e-10)


def test_loss_factory_picks_the_joint_loss_and_per_dim_stays_the_default():
  assert config_base.default_config().noise.mode == "per_dim"
  c = _joint_config()
  model = _model()
  params = model.init(jax.random.PRNGKey(0))
  x = jax.random.uniform(jax.random.PRNGKey(1), (4, model.dim))
  got = losses.get_loss_fn(c, model)(params, x, jax.random.PRNGKey(3))[0]
  want = losses.joint_csm_loss(model, noise_lib.sigmas_from_config(c.noise), params, x,
                               jax.random.PRNGKey(3))[0]
  np.testing.assert_allclose(float(got), float(want), rtol=1e-6)


def test_the_context_network_receives_sigma_and_stays_autoregressive():
  model = _model()
  params = model.init(jax.random.PRNGKey(0))
  x = jax.random.uniform(jax.random.PRNGKey(1), (3, model.dim))
  c1 = model.context(params, x, sigma=0.1)
  c2 = model.context(params, x, sigma=0.5)
  assert float(jnp.max(jnp.abs(c1 - c2))) > 1e-4               # sigma changes the context
  per_example = model.context(params, x, sigma=jnp.array([0.1, 0.5, 0.1]))
  np.testing.assert_allclose(per_example[0], c1[0], rtol=1e-6)
  np.testing.assert_allclose(per_example[1], c2[1], rtol=1e-6)
  np.testing.assert_allclose(model.at_level(0.5).context(params, x), c2, rtol=1e-6)
  # context[:, d] depends on x_<d only, whatever sigma
  jac = jax.jacfwd(lambda y: model.context(params, y[None], sigma=0.3)[0].sum(-1))(x[0])
  assert np.all(np.abs(np.triu(np.asarray(jac))) == 0)        # jac[d, j] = 0 for j >= d
  with pytest.raises(ValueError, match="noise-conditional"):
    model.context(params, x)                                   # no level: refused


@pytest.mark.parametrize("method", ["level_sweeps", "sequential", "fixed_point"])
def test_samplers_run_on_a_joint_model(method):
  c = _joint_config()
  c.sampling.method = method
  c.sampling.num_samples, c.sampling.num_steps = 4, 3
  c.sampling.step_lr = 2 * 0.1 ** 2
  model = _model()
  params = model.init(jax.random.PRNGKey(0))
  lines = []
  sampler, info = sampling.make_sampler_from_config(c, model, log=lines.append)
  x = np.asarray(sampler(params, jax.random.PRNGKey(1)))
  assert x.shape == (4, model.dim) and np.all(np.isfinite(x))
  if method == "level_sweeps":
    assert info["context_passes_per_sample"] == 3 * model.dim
    assert sum("level sweeps" in ln for ln in lines) == 3


def test_level_sweeps_at_one_level_is_the_cached_sampler_at_that_level():
  """One level: the sweep is the cached sequential sampler with the context at that level."""
  model = _model()
  params = model.init(jax.random.PRNGKey(0))
  rng = jax.random.PRNGKey(4)
  got = sampling.level_sweeps_sample(model, params, rng, 3, (0.2,), n_steps=4,
                                     step_lr=0.01)
  k_init, k_run = jax.random.split(rng)
  x0 = 0.2 * jax.random.normal(k_init, (3, model.dim), jnp.float32)
  sig = jnp.full((4,), 0.2)
  alpha = jnp.full((4,), 0.01)
  ref, _ = sampling._langevin_chunk(model.at_level(0.2), params, x0,
                                    jax.random.fold_in(k_run, 0), 0, model.dim, model.dim,
                                    sig, alpha, True, True, None)
  np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=1e-5, atol=1e-6)


def test_level_sweeps_needs_a_joint_model():
  model = helpers.tiny_model(6)
  params = model.init(jax.random.PRNGKey(0))
  with pytest.raises(ValueError, match="smoothed-joint"):
    sampling.level_sweeps_sample(model, params, jax.random.PRNGKey(1), 2, SIGMAS)


def test_continuous_levels_are_log_uniform_over_the_schedules_range():
  """noise.levels='continuous': log sigma ~ U[log sigma_min, log sigma_max] (KS test on
  20000 draws against the uniform law), the per-example level of the joint perturbation
  included; 'discrete' draws only the schedule's levels."""
  from scipy import stats  # pylint: disable=g-import-not-at-top
  sig = np.asarray(noise_lib.sample_sigmas(jax.random.PRNGKey(0), (20000,), SIGMAS, True))
  assert sig.min() >= 0.1 * (1 - 1e-6) and sig.max() <= 0.8 * (1 + 1e-6)
  u = (np.log(sig) - np.log(0.1)) / (np.log(0.8) - np.log(0.1))
  assert stats.kstest(u, "uniform").pvalue > 1e-3
  assert len(np.unique(sig)) > 19000                      # not the 3 schedule levels
  disc = np.asarray(noise_lib.sample_sigmas(jax.random.PRNGKey(0), (2000,), SIGMAS))
  assert set(np.unique(disc)) == set(SIGMAS)
  x = jnp.zeros((20000, 2))
  xt, s = noise_lib.perturb_joint(jax.random.PRNGKey(1), x, SIGMAS, continuous=True)
  u = (np.log(np.asarray(s)) - np.log(0.1)) / (np.log(0.8) - np.log(0.1))
  assert stats.kstest(u, "uniform").pvalue > 1e-3
  # x~ - x = sigma eps with that example's sigma: standardized, a unit Gaussian
  z = np.asarray(xt / s[:, None]).ravel()
  assert stats.kstest(z, "norm").pvalue > 1e-3


def test_the_loss_factory_passes_continuous_levels_to_both_modes():
  model = _model()
  params = model.init(jax.random.PRNGKey(0))
  x = jax.random.uniform(jax.random.PRNGKey(1), (4, model.dim))
  for mode, fn in (("joint", losses.joint_csm_loss), ("per_dim", losses.csm_loss)):
    c = _joint_config() if mode == "joint" else config_base.default_config()
    if mode == "per_dim":
      c.model = helpers.tiny_model_config()
      c.data.dim = model.dim
      m = helpers.tiny_model(model.dim)
      p = m.init(jax.random.PRNGKey(0))
    else:
      m, p = model, params
    c.noise.levels = "continuous"
    config_base.validate(c)
    got = losses.get_loss_fn(c, m)(p, x, jax.random.PRNGKey(3))[0]
    sch = noise_lib.sigmas_from_config(c.noise)
    want = fn(m, sch, p, x, jax.random.PRNGKey(3), continuous=True)[0]
    other = fn(m, sch, p, x, jax.random.PRNGKey(3))[0]
    np.testing.assert_allclose(float(got), float(want), rtol=1e-6)
    assert abs(float(got) - float(other)) > 1e-6 * abs(float(other))


def test_bad_noise_levels_are_one_line_config_errors():
  c = _joint_config()
  c.noise.levels = "uniform"
  with pytest.raises(config_base.ConfigError, match="noise.levels") as e:
    config_base.validate(c)
  assert "\n" not in str(e.value)
  c = config_base.default_config()
  c.model = helpers.tiny_model_config(head="gaussian")
  c.loss.name = "mle"
  c.noise.enabled = False
  c.noise.levels = "continuous"
  with pytest.raises(config_base.ConfigError, match="noise.levels"):
    losses.get_loss_fn(c, helpers.tiny_model(6, head="gaussian"))


def test_unknown_mode_and_inconsistent_fields_are_config_errors_naming_the_field():
  c = _joint_config()
  c.noise.mode = "per_pixel"
  with pytest.raises(config_base.ConfigError, match="noise.mode") as e:
    config_base.validate(c)
  assert "\n" not in str(e.value)
  with pytest.raises(config_base.ConfigError, match="noise.mode"):
    losses.get_loss_fn(c, _model())
  c = _joint_config()
  c.model.context_sigma_embedding = 0
  with pytest.raises(config_base.ConfigError, match="model.context_sigma_embedding"):
    config_base.validate(c)
  c = config_base.default_config()
  c.model.context_sigma_embedding = 8                       # per_dim: no level per example
  with pytest.raises(config_base.ConfigError, match="model.context_sigma_embedding"):
    config_base.validate(c)
  c = _joint_config()
  c.loss.name = "dsm"
  with pytest.raises(config_base.ConfigError, match="loss.name"):
    config_base.validate(c)


def test_mnist_joint_config_trains_in_joint_mode():
  c = config_base.load_config("configs/mnist_denoise_joint.py")
  config_base.validate(c)
  assert c.noise.mode == "joint" and c.model.context_sigma_embedding > 0
  assert c.sampling.method == "level_sweeps"
  assert c.noise.levels == "continuous"    # trained between the schedule's levels too
  base = config_base.load_config("configs/mnist_denoise.py")
  assert base.noise.mode == "per_dim"
  assert (c.noise.sigma_max, c.noise.sigma_min, c.noise.num_levels) == (
      base.noise.sigma_max, base.noise.sigma_min, base.noise.num_levels)


@pytest.mark.slow
def test_a_joint_run_trains_evaluates_and_samples_from_its_workdir(tmp_path):
  """The real entry points on tiny data: training in joint mode, --mode=eval (the NLL of
  the AR model at the likelihood's level) and --mode=sample (level sweeps)."""
  from csm_jax import inference, train  # pylint: disable=g-import-not-at-top
  c = helpers.tiny_train_config(**{
      "noise.mode": "joint", "model.context_sigma_embedding": 8, "training.num_steps": 20,
      "training.eval_every": 0, "likelihood.num_examples": 8, "likelihood.num_points": 33,
      "likelihood.outer_points": 8, "sampling.num_samples": 4, "sampling.num_steps": 2,
      "sampling.method": "level_sweeps"})
  train.train_and_evaluate(c, str(tmp_path))
  result = inference.evaluate_workdir(c, str(tmp_path), log=lambda s: None)
  assert np.isfinite(result["eval_loss"]) and np.isfinite(result["likelihood"]["nll_nats"])
  base = inference.sample_workdir(c, str(tmp_path), log=lambda s: None)
  x = np.load(base + ".npy")
  assert x.shape == (4, 4) and np.all(np.isfinite(x))
