"""Gaussian denoising by Tweedie's formula on a smoothed-joint AR-CSM's joint score.

For y = x + N(0, s^2 I) the posterior mean is exactly (Tweedie's formula; Efron 2011)

    E[x | y] = y + s^2 grad_y log p_s(y),   p_s = p * N(0, s^2 I),

the density of the noisy images themselves. A smoothed-joint AR-CSM (noise.mode='joint',
docs/smoothed_joint.md) learns q_s ~ p_s at every level of its schedule, and its joint
log q_s(y) = sum_d log q_s(y_d | y_<d) (paper Eq. 4, normalized by `joint.py`'s box
quadrature) is differentiable in y: through y_d and through the contexts. So one
gradient of the joint at the level of the observation's noise is the model's MMSE
estimate, with no sampling and no step size: what the annealed posterior sampler
approaches as its chains grow, at the cost of one joint evaluation.

It needs (checked, one line naming the field otherwise):
  - Gaussian noise (`observations.GaussianNoise`) of a known sigma;
  - a model whose context takes the level (a smoothed-joint model: a per-dimension
    model's joint at a noisy state is not p_s, its contexts never saw noise);
  - an affine pixel space (unit or symmetric scale: the noise stays Gaussian in model
    space, with sigma / image_per_model; under a logit it is not);
  - that level within the model's schedule [sigma_min, sigma_max] (the levels it was
    trained on; between them its level embedding interpolates).

The joint is normalized on the data's box widened by `BOX_SIGMAS` noise levels on each
side, so that each smoothed conditional's mass lies inside it.
"""

import jax
import jax.numpy as jnp

from csm_jax.restore import joint as joint_lib
from csm_jax.restore import observations as obs_lib

BOX_SIGMAS = 3.0   # the box reaches this many noise levels beyond the data's range


def model_level(obs, space: obs_lib.PixelSpace) -> float:
  """The observation's noise std in model units (its Tweedie level)."""
  return float(obs.sigma) / float(space.image_per_model)


def check(model, obs, space: obs_lib.PixelSpace, sigmas) -> float:
  """The model-space level of the observation's noise; ValueError if Tweedie's formula
  on this model and observation is not the posterior mean (see the module docstring)."""
  if not isinstance(obs, obs_lib.GaussianNoise):
    raise ValueError(f"restore.method: 'tweedie' is the posterior mean for Gaussian noise "
                     f"only (restore.task=gaussian), got {type(obs).__name__}")
  if not getattr(model, "context_sigma", False):
    raise ValueError("restore.method: 'tweedie' needs a smoothed-joint model (noise.mode="
                     "'joint', model.context_sigma_embedding > 0): a per-dimension "
                     "model's joint at a noisy image is not the noisy images' density")
  if space.logit_lambda:
    raise ValueError("restore.method: 'tweedie' needs an affine pixel space (unit or "
                     "symmetric scale); under the logit the noise is not Gaussian")
  level = model_level(obs, space)
  lo, hi = min(sigmas), max(sigmas)
  if not lo * (1 - 1e-6) <= level <= hi * (1 + 1e-6):
    raise ValueError(f"restore.sigma: the noise is {level:.4g} in model units, outside the "
                     f"model's levels [{lo:.4g}, {hi:.4g}]: its q_sigma is not trained there")
  return level


def widened_box(box: joint_lib.Box, level: float) -> joint_lib.Box:
  """`box` reaching BOX_SIGMAS noise levels further on each side, same number of nodes."""
  pad = BOX_SIGMAS * level
  return joint_lib.Box(box.lo - pad, box.hi + pad, box.num_points, box.corrected)


def make_tweedie(joint: joint_lib.Joint, space: obs_lib.PixelSpace, level: float):
  """jit (params, y (N, D) image units) -> (N, D) posterior means in image units.

  `joint`: the model's joint (`joint.make_joint`) on a box that holds the noisy values
  (`widened_box`); `level`: `check`'s model-space noise level.
  """
  def run(params, y):
    yx = space.from_image(y.astype(jnp.float32))
    _, g = joint.value_and_grad_fn(params, yx, jnp.asarray(level, yx.dtype))
    img = space.to_image(yx + level * level * g)
    return jnp.clip(img, 0.0, 1.0) if space.bounded else img

  return jax.jit(run)
