"""Noise levels and the two ways of perturbing the data for CSM training (noise.mode).

'per_dim' (paper Sec. 4.2, our reading of App. C): each (example, dimension) gets its own
sigma from a geometric schedule; only the target coordinate x_d is perturbed, the
context stays computed from the clean x_<d: the model learns q_sigma(x~_d | x_<d).
'joint' (the smoothed joint): one sigma per example, the whole x perturbed, x~ = x +
sigma eps; contexts see x~_<d and sigma, so the AR model is one of p_sigma = p * N(0,
sigma^2 I) at every level (docs/smoothed_joint.md).

noise.levels says where a training level comes from: 'discrete' (the L levels of the
geometric schedule, uniformly; NCSN's choice) or 'continuous' (log sigma uniform on
[sigma_min, sigma_max], so a noise-conditional model also learns the levels between the
schedule's; the samplers still anneal over the schedule).
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


MODES = ("per_dim", "joint")
LEVELS = ("discrete", "continuous")


def _choice(noise_config, name: str, choices, default: str) -> str:
  """config.noise.NAME, one of `choices` (`default` when absent: configs older than the
  field); ConfigError naming the field otherwise."""
  from csm_jax import config_base  # pylint: disable=g-import-not-at-top
  value = noise_config.get(name, default)
  if value not in choices:
    raise config_base.ConfigError(f"config field noise.{name} must be one of "
                                  f"{', '.join(map(repr, choices))}, got {value!r}")
  return value


def mode_from_config(noise_config) -> str:
  """config.noise.mode ('per_dim' when absent)."""
  return _choice(noise_config, "mode", MODES, "per_dim")


def levels_from_config(noise_config) -> str:
  """config.noise.levels ('discrete' when absent)."""
  return _choice(noise_config, "levels", LEVELS, "discrete")


def sigmas_from_config(noise_config):
  """The schedule of config.noise, or None when training without noise."""
  if not noise_config.enabled:
    return None
  return geometric_sigmas(noise_config.sigma_max, noise_config.sigma_min,
                          noise_config.num_levels)


def sample_sigmas(rng, shape, sigmas, continuous=False):
  """A level for every entry of `shape`: uniformly one of `sigmas`, or with
  `continuous` log-uniform between their smallest and largest."""
  if continuous:
    lo, hi = np.log(np.min(sigmas)), np.log(np.max(sigmas))
    return jnp.exp(jax.random.uniform(rng, shape, minval=lo, maxval=hi))
  idx = jax.random.randint(rng, shape, 0, len(sigmas))
  return jnp.asarray(sigmas)[idx]


def perturb(rng, x, sigma):
  """x~ = x + sigma * eps, eps ~ N(0, I); returns (x~, eps)."""
  eps = jax.random.normal(rng, x.shape, x.dtype)
  return x + sigma * eps, eps


def perturb_joint(rng, x, sigmas, continuous=False):
  """The smoothed joint's perturbation: one level per example (`sample_sigmas`), the
  whole example perturbed; returns (x~ = x + sigma eps, sigma (B,))."""
  k_sig, k_eps = jax.random.split(rng)
  sigma = sample_sigmas(k_sig, x.shape[:1], sigmas, continuous).astype(x.dtype)
  xt, _ = perturb(k_eps, x, sigma.reshape((-1,) + (1,) * (x.ndim - 1)))
  return xt, sigma
