"""Every file in configs/ (every variant) is locked and builds its model, loss, sampler
and likelihood settings from declared fields only.

The model, loss and samplers are traced with `jax.eval_shape` at the configs' real
sizes (nothing is compiled or allocated), with `ConfigDict.get` patched to refuse
undeclared keys: a reader that asks for a field config_base does not declare fails here.
"""

import glob
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from csm_jax import config_base
from csm_jax import data as data_lib
from csm_jax import likelihood
from csm_jax import losses
from csm_jax import models
from csm_jax import sampling

CONFIG_FILES = sorted(glob.glob(os.path.join(config_base.REPO_CONFIGS, "*.py")))


def _specs():
  for path in CONFIG_FILES:
    variants = config_base.config_variants(path)
    for v in (variants or [None]):
      yield path + (f":{v}" if v else "")


@pytest.fixture
def strict_get(monkeypatch):
  """ConfigDict.get raises for keys the config does not declare."""
  original = ml_collections.ConfigDict.get

  def get(self, key, default=None):
    if key not in self:
      raise KeyError(f"read of undeclared config field {key!r}")
    return original(self, key, default)

  monkeypatch.setattr(ml_collections.ConfigDict, "get", get)


def _data_shape(config):
  d = config.data
  if d.dataset in data_lib.TFDS_NAMES:
    return data_lib.image_shape(d, d.dataset)
  if d.dataset == "toy2d":
    return (2,)
  if d.dataset == "gaussian":
    return (d.dim,)
  raise AssertionError(f"configs should name a dataset with a known shape, got {d.dataset}")


def test_every_config_file_is_covered():
  names = {os.path.basename(p) for p in CONFIG_FILES}
  assert {"default.py", "mnist_made.py", "mnist_made_mle.py", "cifar10_pixelcnnpp.py"} <= names


@pytest.mark.slow
@pytest.mark.parametrize("spec", list(_specs()), ids=lambda s: os.path.basename(s))
def test_config_is_locked_and_builds(spec, strict_get):
  config = config_base.load_config(spec)
  with pytest.raises(AttributeError):
    config.training.num_stepz = 3            # a misspelled field fails loudly
  with pytest.raises(AttributeError):
    config_base.override(config, ["model.hiden_sizes=(8,)"])

  if config_base.is_vae_config(config):   # VAEs (csm_jax/vae) build from their own fields
    _check_vae_config(config)
    return
  shape = _data_shape(config)
  discrete = config.data.dataset in data_lib.TFDS_NAMES
  pre = data_lib.get_preprocessor(config.data, data_lib.Arrays(None, None, shape, discrete))
  model = models.get_model(config.model, shape)
  assert model.kind == models.head_kind(config.model)
  params = jax.eval_shape(model.init, jax.random.PRNGKey(0))
  x = jax.ShapeDtypeStruct((2, model.dim), jnp.float32)
  loss_fn = losses.get_loss_fn(config, model)
  loss, _ = jax.eval_shape(lambda p, x: loss_fn(p, x, jax.random.PRNGKey(1), True), params, x)
  assert loss.shape == ()

  sampler, info = sampling.make_sampler_from_config(config, model, num_samples=2, num_dims=1,
                                                    chunk_dims=0)
  out = jax.eval_shape(sampler, params, jax.random.PRNGKey(2))
  assert out.shape == (2, model.dim) and info["sampler"]

  lk = config.likelihood
  if not model.normalized:
    grid = likelihood.make_grid(lk, data=np.array([[-1.0, 1.0]]))
    assert grid.num_points == lk.num_points and likelihood.noise_level(config) > 0
  assert pre.dim == model.dim


def _check_vae_config(config):
  """The VAE, its score estimator and the whole training step trace at the config's
  real sizes (jax.eval_shape; placeholder images of the dataset's shape)."""
  from csm_jax.vae import train as vae_train  # pylint: disable=g-import-not-at-top
  config_base.validate_vae(config)
  shape = _data_shape(config)
  arrays = data_lib.Arrays(np.zeros((10,) + shape, np.uint8), np.zeros((2,) + shape, np.uint8),
                           shape, True)
  s = vae_train.setup(config, arrays=arrays)
  state = jax.eval_shape(lambda: vae_train.init_state(s))
  images = jax.ShapeDtypeStruct((config.training.batch_size, int(np.prod(shape))), jnp.uint8)
  _, metrics = jax.eval_shape(vae_train.make_train_step(s), state, images)
  assert {"loss", "recon", "grad_norm"} <= set(metrics)
