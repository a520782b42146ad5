"""Small builders shared by tests."""

import contextlib

import jax
import ml_collections
import numpy as np

from csm_jax import models
from csm_jax.models import known
from csm_jax.config_base import default_config


def tiny_model_config(head="score", hidden=(16, 16), order="natural", context_size=3,
                      **extra):
  c = default_config().model
  c.backbone = "made"
  c.head = head
  c.hidden_sizes = hidden
  c.order = order
  c.context_size = context_size
  c.head_hidden = (8,)
  c.num_mixtures = 3
  for k, v in extra.items():
    c[k] = v
  return c


def smoothed_gaussian(dim=4, seed=0):
  """A random known smoothed joint N(mu, cov + sigma^2 I) (models.known.SmoothedGaussian)."""
  gen = np.random.default_rng(seed)
  a = gen.normal(0, 0.4, (dim, dim))
  return known.SmoothedGaussian(gen.normal(0, 0.5, dim), a @ a.T + 0.05 * np.eye(dim))


def smoothed_gaussian_inpainting(s_min=0.3, seed=3):
  """A known smoothed joint (`smoothed_gaussian(4, seed)`) with pixels 0 and 2 observed
  and the analytic posterior of the free pixels 1 and 3 at level s_min.

  Returns (model, observation, keep, y, mean, cov): the observation a
  `restore.observations.Missing` on unbounded values, y (4,) float32 with zeros at the
  free pixels, mean and cov the conditional Gaussian under N(mu, cov + s_min^2 I).
  """
  from csm_jax.restore import observations   # pylint: disable=import-outside-toplevel
  m = smoothed_gaussian(4, seed=seed)
  keep = np.array([True, False, True, False])
  obs = observations.Missing(keep, (4,), bounded=False)
  x_true = np.random.default_rng(4).multivariate_normal(m.mu, m.cov)
  y = np.where(keep, x_true, 0.0).astype(np.float32)
  c = m.cov + s_min ** 2 * np.eye(4)          # the prior at the last level
  o, f = keep, ~keep
  mean = m.mu[f] + c[np.ix_(f, o)] @ np.linalg.solve(c[np.ix_(o, o)], y[o] - m.mu[o])
  cov = c[np.ix_(f, f)] - c[np.ix_(f, o)] @ np.linalg.solve(c[np.ix_(o, o)], c[np.ix_(o, f)])
  return m, obs, keep, y, mean, cov


def check_inpainting_chains(chains, keep, y, mean, cov):
  """Chains (C, 4): observed pixels exactly y; the free ones' mean within 5 standard
  errors and covariance within 12% (of the largest variance) of the analytic posterior."""
  chains = np.asarray(chains, np.float64)
  n = len(chains)
  np.testing.assert_array_equal(chains[:, keep], np.broadcast_to(y[keep], (n, keep.sum())))
  free = chains[:, ~keep]
  se = np.sqrt(np.diag(cov) / n)
  assert np.all(np.abs(free.mean(0) - mean) < 5 * se + 1e-3), (free.mean(0), mean)
  emp = np.cov(free.T)
  assert np.abs(emp - cov).max() < 0.12 * np.diag(cov).max(), (emp, cov)


def tiny_model(dim, **kw):
  return models.get_model(tiny_model_config(**kw), (dim,))


def tiny_smoothed_joint_image_model(shape=(4, 4, 1)):
  """A small untrained smoothed-joint MADE on images of `shape` in [0, 1].

  Returns (config, model, params, preprocessor): the config has the level embedding
  (`context_sigma_embedding=8`) and `noise.mode='joint'`, unlocked for the caller's
  restore settings; the preprocessor dequantizes 8-bit pixels onto the unit scale.
  """
  from csm_jax.data import preprocess   # pylint: disable=import-outside-toplevel
  config = default_config()
  config.unlock()
  config.model.context_sigma_embedding, config.noise.mode = 8, "joint"
  model = tiny_model(int(np.prod(shape)), context_sigma_embedding=8)
  model = model.__class__(**{**model.__dict__, "data_shape": shape})
  params = model.init(jax.random.PRNGKey(0))
  pre = preprocess.Preprocessor(shape=shape, discrete=True, dequantize=True, scale="unit",
                                logit_lambda=0.0)
  return config, model, params, pre


@contextlib.contextmanager
def float64():
  """Enables x64 for the block and restores the previous setting."""
  old = jax.config.jax_enable_x64
  jax.config.update("jax_enable_x64", True)
  try:
    yield
  finally:
    jax.config.update("jax_enable_x64", old)


def to_f64(tree):
  return jax.tree.map(lambda a: a.astype("float64"), tree)


def tiny_train_config(**overrides) -> ml_collections.ConfigDict:
  c = default_config()
  c.data.dataset = "gaussian"
  c.data.dim = 4
  c.data.num_train = 512
  c.data.num_test = 256
  c.model = tiny_model_config()
  c.training.batch_size = 32
  c.training.num_steps = 40
  c.training.log_every = 10
  c.training.eval_every = 20
  c.training.checkpoint_every = 20
  c.eval.batch_size = 128
  c.eval.num_batches = 2
  c.optim.warmup_steps = 5
  c.noise.sigma_max = 1.0
  c.noise.sigma_min = 0.05
  c.noise.num_levels = 4
  for k, v in overrides.items():
    node = c
    *path, last = k.split(".")
    for p in path:
      node = node[p]
    node[last] = v
  return c
