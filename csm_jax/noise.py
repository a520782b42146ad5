"""Noise levels and per-dimension perturbation (paper Sec. 4.2, our reading of App. C).

Each (example, dimension) gets its own sigma from a geometric schedule; only the
target coordinate x_d is perturbed, the context stays computed from the clean x_<d.
"""

import jax
import jax.numpy as jnp
import numpy as np


def geometric_sigmas(sigma_max: float, sigma_min: float, num_levels: int) -> np.ndarray:
  """sigma_1 > ... > sigma_L, geometric (as in NCSN)."""
  if num_levels < 1 or not sigma_max >= sigma_min > 0:
    raise ValueError(f"need noise.num_levels >= 1 and noise.sigma_max >= noise.sigma_min > 0, "
                     f"got {num_levels}, {sigma_max}, {sigma_min}")
  return np.geomspace(sigma_max, sigma_min, num_levels).astype(np.float32)


def sigmas_from_config(noise_config):
  """The schedule of config.noise, or None when training without noise."""
  if not noise_config.enabled:
    return None
  return geometric_sigmas(noise_config.sigma_max, noise_config.sigma_min,
                          noise_config.num_levels)


def sample_sigmas(rng, shape, sigmas):
  """A level drawn uniformly from `sigmas` for every entry of `shape`."""
  idx = jax.random.randint(rng, shape, 0, len(sigmas))
  return jnp.asarray(sigmas)[idx]


def perturb(rng, x, sigma):
  """x~ = x + sigma * eps, eps ~ N(0, I); returns (x~, eps)."""
  eps = jax.random.normal(rng, x.shape, x.dtype)
  return x + sigma * eps, eps
