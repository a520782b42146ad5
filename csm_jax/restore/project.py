"""Denoise-and-project: the smoothed joint's Tweedie denoiser in a plug-and-play loop.

For an observation y of the image x that pins a set of images C(y) = {x : A x = y}
(inpainting: the observed pixels; super-resolution: the block averages; salt-and-pepper:
the pixels that are neither 0 nor 255), start from a classical restoration u_0 (the
biharmonic inpainter, bicubic upsampling, the adaptive median) and alternate, over
decreasing levels s_1 > ... > s_K (image units),

    u <- P_y( D_{s_k}(u) ),   D_s(u) = u + s^2 grad_u log q_s(u)   (Tweedie's formula),

where D_s is the model's MMSE denoiser at level s (exact for the smoothed density q_s,
which a smoothed-joint AR-CSM learns: its joint of paper Eq. 4 at level s, differentiated
through the contexts, `joint.py`) and P_y the Euclidean projection onto C(y): observed
pixels put back; for 2x2 average pooling u + up(y - pool(u)), up = nearest-neighbour
upsampling, since pool(up(r)) = r and up(r) is orthogonal to pool's null space.

This is plug-and-play with a decreasing denoiser strength (Venkatakrishnan, Bouman and
Wohlberg 2013; Zhang et al. 2017 IRCNN; Kadkhodaie and Simoncelli 2021 use a learned
denoiser's Tweedie step the same way). It is **not** a posterior mean or a posterior
sample: it is a deterministic point estimate, a fixed-point iteration whose regularizer
is the model's smoothed density, fed an input that is not noisy at level s (the denoiser
shrinks it toward the model's data). The projection ignores the small noise of a
super-resolution y (restore.sr_sigma), as the classical upsamplers do.

Written here: the loop is a few lines, and no maintained library exposes Tweedie's
denoiser of an arbitrary log-density. The classical starts come from `classical.py`.
"""

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from csm_jax.restore import joint as joint_lib
from csm_jax.restore import observations as obs_lib
from csm_jax.restore import tweedie as tweedie_lib

START = {"Missing": "biharmonic", "Downsample": "bicubic", "SaltPepper": "adaptive_median"}
# restore.sp_start: the classical starts on salt-and-pepper. The decision median keeps
# every black or white pixel whose 3x3 median equals it (most pixels the noise kept); the
# adaptive median replaces any that is an extreme of its window.
SP_STARTS = ("adaptive_median", "decision_median")
# restore.init='classical' (posterior.py): the loop's start on the tasks that pin pixels,
# and on Gaussian noise, which pins nothing, BM3D at the observation's known sigma.
INIT_START = dict(START, GaussianNoise="bm3d")


def levels(start: float, end: float, num: int) -> np.ndarray:
  """`num` levels from `start` down to `end` (image units), log-spaced."""
  if not (start > 0 and end > 0):
    raise ValueError(f"restore.project_start and project_end must be > 0, got {start!r}, "
                     f"{end!r}")
  if not start >= end:
    raise ValueError(f"restore.project_start ({start}) must be >= restore.project_end "
                     f"({end})")
  if int(num) < 1:
    raise ValueError(f"restore.project_levels must be >= 1, got {num!r}")
  return np.geomspace(float(start), float(end), int(num))


def check(model, obs, space: obs_lib.PixelSpace, image_levels, trained,
          what: str = "restore.method: 'project'") -> None:
  """ValueError (one line naming the field) unless the loop applies: an observation with
  a projection, a smoothed-joint model, an affine pixel space, levels it was trained on.
  `what` names the field in the message (restore.init: 'project' starts from the loop)."""
  if type(obs).__name__ not in START:
    raise ValueError(f"{what} needs an observation that pins part of "
                     f"the image (inpaint, superres, salt_pepper), got {type(obs).__name__}"
                     f" (Gaussian noise: use restore.method='tweedie')")
  if not getattr(model, "context_sigma", False):
    raise ValueError(f"{what} needs a smoothed-joint model (noise.mode="
                     "'joint', model.context_sigma_embedding > 0) for its denoiser")
  if space.logit_lambda:
    raise ValueError(f"{what} needs an affine pixel space (unit or "
                     "symmetric scale)")
  lo, hi = min(trained), max(trained)
  for s in (max(image_levels), min(image_levels)):
    lev = float(s) / float(space.image_per_model)
    if not lo * (1 - 1e-6) <= lev <= hi * (1 + 1e-6):
      raise ValueError(f"restore.project_start/project_end: level {s:.4g} is {lev:.4g} in "
                       f"model units, outside the model's levels [{lo:.4g}, {hi:.4g}]")


def project(obs, y, u):
  """P_y(u): the closest image (N, D) to u (N, D), image units, that the observation
  pins exactly (see the module docstring)."""
  if isinstance(obs, obs_lib.Downsample):
    f, s = obs.factor, tuple(obs.shape)
    r = (obs_lib._flat(y) - obs.pool(u)).reshape((-1,) + obs.y_shape)  # pylint: disable=protected-access
    up = jnp.repeat(jnp.repeat(r, f, axis=1), f, axis=2)
    return u + up.reshape(u.shape[0], -1)
  if isinstance(obs, (obs_lib.Missing, obs_lib.SaltPepper)):
    mask, vals = obs.fixed(y)
    return jnp.where(mask, vals.astype(u.dtype), u)
  raise ValueError(f"no projection for {type(obs).__name__}")


def check_sp_start(sp_start: str) -> None:
  """ValueError (one line naming restore.sp_start) unless it is one of `SP_STARTS`."""
  if sp_start not in SP_STARTS:
    raise ValueError(f"restore.sp_start must be one of {', '.join(SP_STARTS)}, "
                     f"got {sp_start!r}")


def start_name(obs, sp_start: str = "adaptive_median") -> str:
  """The name of the classical restoration `start_image` computes for `obs`."""
  check_sp_start(sp_start)
  if type(obs).__name__ == "SaltPepper":
    return sp_start
  return INIT_START[type(obs).__name__]


def start_image(obs, y, sp_start: str = "adaptive_median") -> np.ndarray:
  """The classical restoration (N, D), image units, that the loop (`START`'s tasks) and
  restore.init='classical' (`INIT_START`: also Gaussian noise, BM3D at the known sigma,
  clipped to [0, 1]) start from; on salt-and-pepper `sp_start` (`SP_STARTS`)."""
  from csm_jax.restore import classical  # pylint: disable=g-import-not-at-top
  y = np.asarray(y, np.float32)
  n = len(y)
  y_img = y.reshape((n,) + tuple(obs.y_shape))
  name = start_name(obs, sp_start)
  if name == "biharmonic":
    m = np.asarray(obs._mask_for(n)).reshape((n,) + tuple(obs.shape))  # pylint: disable=protected-access
    out = classical.inpaint_biharmonic(y_img, m[..., 0] if m.ndim == 4 else m)
  elif name == "bicubic":
    out = classical.upsample_bicubic(y_img, obs.factor)
  elif name == "bm3d":
    out = np.clip(classical.bm3d_denoise(y_img, obs.sigma), 0.0, 1.0)
  elif name == "decision_median":
    out = classical.decision_median(y_img)
  else:
    out = classical.adaptive_median(y_img)
  return np.asarray(out, np.float32).reshape(n, -1)


def make_tweedie_denoiser(joint: joint_lib.Joint, space: obs_lib.PixelSpace) -> Callable:
  """jit (params, u (N, D) image units, s image-unit level) -> D_s(u), clipped to the
  pixel range when it is bounded. `joint` must be normalized on a box holding u plus a
  few levels s (`tweedie.widened_box`)."""
  def run(params, u, s):
    lev = s / space.image_per_model
    x = space.from_image(u)
    _, g = joint.value_and_grad_fn(params, x, lev)
    out = space.to_image(x + lev * lev * g)
    return jnp.clip(out, 0.0, 1.0) if space.bounded else out
  return jax.jit(run)


def denoise_and_project(denoise: Callable, obs, y, u0, image_levels: Sequence[float],
                        bounded: bool = True) -> np.ndarray:
  """u <- P_y(D_s(u)) over `image_levels` from u0 (N, D); returns (N, D) image units.

  `denoise(u, s)`: any denoiser at image-unit level s (the model's Tweedie step, or a
  classical one as a control)."""
  yj = jnp.asarray(np.asarray(y, np.float32).reshape(len(y), -1))
  u = jnp.asarray(u0, jnp.float32)
  for s in image_levels:
    u = project(obs, yj, jnp.asarray(denoise(u, float(s)), jnp.float32))
    if bounded:
      u = jnp.clip(u, 0.0, 1.0)
  return np.asarray(u)


def make_project(model, box: joint_lib.Box, obs, space: obs_lib.PixelSpace,
                 image_levels: Sequence[float], batch_chunk=None,
                 sp_start: str = "adaptive_median") -> Callable:
  """(params, y (N, Dy) image units[, u0 (N, D)]) -> (N, D) the loop's estimate with the
  model's Tweedie denoiser (u0: the classical start, `start_image(obs, y, sp_start)`, if
  not given).
  Each level's joint is normalized on `box` widened by tweedie.BOX_SIGMAS levels."""
  denoisers = {}
  for s in image_levels:
    lev = float(s) / float(space.image_per_model)
    j = joint_lib.make_joint(model, tweedie_lib.widened_box(box, lev), batch_chunk=batch_chunk)
    denoisers[float(s)] = make_tweedie_denoiser(j, space)

  def run(params, y, u0=None):
    if u0 is None:
      u0 = start_image(obs, y, sp_start)
    return denoise_and_project(
        lambda u, s: denoisers[s](params, u, jnp.asarray(s, jnp.float32)), obs, y, u0,
        [float(s) for s in image_levels], space.bounded)
  return run
