"""Observation models p(y | x) in pixel space, and the map from the model's space.

Images are float arrays in [0, 1] (pixel / 255) of shape (N, *shape) (H, W[, C]); the
model works on flattened model-space vectors (N, D) (dequantized, scaled or logit
pixels, `data.preprocess.Preprocessor`). `PixelSpace` maps a model state x to image
units u(x) differentiably (u = 0 at pixel 0 and 1 at pixel 255, continuous in
between and beyond), so every likelihood below is written in pixel space and its
gradient in model space comes from autodiff through u(x).

Every model gives
  corrupt(rng, images) -> y              the corrupted observation (numpy)
  log_likelihood(y, u, extra_var=0)      log p(y | u) per image, (N,), in jax (y flat)
  fixed(y) -> (mask, values)             pixels the observation pins exactly (N, D):
                                         samplers clamp them and move only the others
  init_image(y) -> (N, D)                a starting point for the chains, image units
`extra_var` is the annealing: at noise level sigma_i the sampler's state carries extra
Gaussian noise of variance (sigma_i^2 - sigma_min^2) (times the model-to-image scale
squared), and the likelihood is that of y given the smoothed state (the observation
noise inflated accordingly; score-SDE / NCSN inverse-problem samplers do the same).

Salt-and-pepper (rate p): each pixel is kept with probability 1 - p, else replaced by 0
or 255 with probability p/2 each. Exact discrete likelihood: p(y_i | x_i) =
(1 - p) [x_i in the bin of y_i] + (p/2) [y_i in {0, 255}]. A pixel that is not 0 or
255 was kept: it is pinned to its value (`fixed`), exactly. A pixel that is 0 or 255
may or may not be corrupted, and the posterior decides: its factor is the two-component
mixture above with the bin indicator relaxed to a Gaussian window of the same area,
exp(-(y - u)^2 / (2 tau^2)) with tau = bin width / sqrt(2 pi) by default (`tau` widens
it so that chains mix). This marginalizes the latent corruption indicator c_i exactly
(for the relaxed window): P(c_i = corrupted | x_i, y_i) = (p/2) / ((1 - p) window + p/2)
(`corruption_probability`), and an indicator can be drawn given x after sampling.
"""

import dataclasses
import math
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np


# ------------------------------------------------------------------------------------
# Model space <-> image units
# ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PixelSpace:
  """Model space <-> image units u in [0, 1] (u = pixel / 255), elementwise, in jax.

  From a `Preprocessor` of discrete data (`from_preprocessor`); the identity (model
  space is image space, no range) for real-valued data or a known test model.
  """
  identity: bool = True
  pixel_range: float = 256.0      # x01 = (255 u + offset) / pixel_range
  offset: float = 0.5             # the dequantization midpoint (0 without it)
  scale: str = "unit"
  logit_lambda: float = 0.0

  @classmethod
  def from_preprocessor(cls, pre) -> "PixelSpace":
    if pre is None or not pre.discrete:
      return cls()
    return cls(False, float(pre.pixel_range), 0.5 if pre.dequantize else 0.0,
               str(pre.scale), float(pre.logit_lambda))

  @property
  def bounded(self) -> bool:
    return not self.identity

  def to_image(self, x):
    if self.identity:
      return x
    if self.logit_lambda:
      lam = self.logit_lambda
      x01 = (jax.nn.sigmoid(x) - lam) / (1 - 2 * lam)
    elif self.scale == "symmetric":
      x01 = 0.5 * (x + 1)
    else:
      x01 = x
    return (self.pixel_range * x01 - self.offset) / 255.0

  def from_image(self, u):
    if self.identity:
      return u
    x01 = (255.0 * u + self.offset) / self.pixel_range
    if self.logit_lambda:
      lam = self.logit_lambda
      x01 = jnp.clip(x01, 0.5 / self.pixel_range, 1 - 0.5 / self.pixel_range)
      return jnp.log(lam + (1 - 2 * lam) * x01) - jnp.log(lam + (1 - 2 * lam) * (1 - x01))
    if self.scale == "symmetric":
      return 2 * x01 - 1
    return x01

  @property
  def image_per_model(self) -> float:
    """du/dx, a typical value (the logit's at mid-range): converts a model-space noise
    level to image units for the annealed likelihoods."""
    if self.identity:
      return 1.0
    base = self.pixel_range / 255.0
    if self.logit_lambda:
      return base * 0.25 / (1 - 2 * self.logit_lambda)
    return base * (0.5 if self.scale == "symmetric" else 1.0)


# ------------------------------------------------------------------------------------
# Input checks: one line naming the argument
# ------------------------------------------------------------------------------------


def check_images(images, shape: Sequence[int], name: str = "images",
                 bounded: bool = True) -> np.ndarray:
  """(N, *shape) float array, values in [0, 1] when `bounded`; a single image gets N=1."""
  a = np.asarray(images, np.float64)
  shape = tuple(shape)
  if a.shape == shape:
    a = a[None]
  if a.ndim != len(shape) + 1 or a.shape[1:] != shape:
    raise ValueError(f"{name} must have shape (N, {', '.join(map(str, shape))}), "
                     f"got {a.shape}")
  if not np.isfinite(a).all():
    raise ValueError(f"{name} must be finite")
  if bounded and (a.min() < 0.0 or a.max() > 1.0):
    raise ValueError(f"{name} must lie in [0, 1] (pixel / 255), got values in "
                     f"[{a.min():.3g}, {a.max():.3g}]")
  return a


def _check_positive(value, name):
  if not (isinstance(value, (int, float, np.floating, np.integer)) and value > 0
          and math.isfinite(value)):
    raise ValueError(f"{name} must be > 0, got {value!r}")


def _flat(a):
  a = jnp.asarray(a)
  return a.reshape(a.shape[0], -1)


# ------------------------------------------------------------------------------------
# Observation models
# ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class GaussianNoise:
  """y = x + sigma * n, n ~ N(0, I), in image units (y is not clipped)."""
  sigma: float
  shape: tuple
  bounded: bool = True    # images must lie in [0, 1]

  def __post_init__(self):
    _check_positive(self.sigma, "sigma")

  @property
  def y_shape(self):
    return tuple(self.shape)

  def corrupt(self, rng, images):
    x = check_images(images, self.shape, "images", self.bounded)
    gen = np.random.default_rng(rng)
    return (x + self.sigma * gen.standard_normal(x.shape)).astype(np.float32)

  def log_likelihood(self, y, u, extra_var=0.0):
    var = self.sigma ** 2 + extra_var
    r = _flat(y) - u
    return jnp.sum(-0.5 * r * r / var - 0.5 * jnp.log(2 * jnp.pi * var), -1)

  def fixed(self, y):
    y = _flat(y)
    return jnp.zeros(y.shape, bool), jnp.zeros_like(y)

  def init_image(self, y):
    y = _flat(y)
    return jnp.clip(y, 0.0, 1.0) if self.bounded else y


def is_extreme(y, xp=jnp):
  """True where a pixel (image units) is 0 or 1, 8-bit 0 or 255: the values salt-and-pepper
  writes. `xp`: jax.numpy (default, traceable) or numpy (host code)."""
  return (xp.abs(y) < 1e-6) | (xp.abs(y - 1.0) < 1e-6)


@dataclasses.dataclass(frozen=True)
class SaltPepper:
  """Each pixel kept w.p. 1 - p, else 0 or 1 (pixel 0 or 255) w.p. p/2 each.

  Exact discrete likelihood with the bin indicator relaxed to a Gaussian window of
  width tau (None: one bin's area, 1 / (255 sqrt(2 pi))); see the module docstring.
  """
  p: float
  shape: tuple
  tau: Optional[float] = None

  def __post_init__(self):
    if not (isinstance(self.p, (int, float, np.floating)) and 0.0 <= self.p <= 1.0):
      raise ValueError(f"p must be in [0, 1], got {self.p!r}")
    if self.tau is not None:
      _check_positive(self.tau, "tau")

  @property
  def y_shape(self):
    return tuple(self.shape)

  @property
  def window(self) -> float:
    return self.tau if self.tau is not None else 1.0 / (255.0 * math.sqrt(2 * math.pi))

  def corrupt(self, rng, images):
    x = check_images(images, self.shape, "images")
    gen = np.random.default_rng(rng)
    hit = gen.random(x.shape) < self.p
    salt = gen.random(x.shape) < 0.5
    return np.where(hit, salt.astype(np.float64), x).astype(np.float32)

  @staticmethod
  def extreme(y):
    return is_extreme(_flat(y))

  def _log_terms(self, y, u, extra_var=0.0):
    """(log of the kept term, log of the corrupted term) per pixel (N, D)."""
    y = _flat(y)
    var = self.window ** 2 + extra_var
    log_kept = (math.log(max(1.0 - self.p, 1e-30)) + 0.5 * jnp.log(self.window ** 2 / var)
                - 0.5 * (y - u) ** 2 / var)
    log_corr = jnp.where(self.extreme(y), math.log(max(self.p / 2, 1e-30)), -jnp.inf)
    return log_kept, log_corr

  def log_likelihood(self, y, u, extra_var=0.0):
    log_kept, log_corr = self._log_terms(y, u, extra_var)
    ext = self.extreme(y)
    # non-extreme pixels are pinned (`fixed`): only the extreme ones carry a term; the
    # double where keeps -inf out of the gradient
    log_corr = jnp.where(ext, log_corr, 0.0)
    both = jnp.logaddexp(log_kept, log_corr)
    return jnp.sum(jnp.where(ext, both, 0.0), -1)

  def corruption_probability(self, y, u):
    """P(pixel corrupted | x, y) (N, D): 0 where y is not extreme."""
    log_kept, log_corr = self._log_terms(y, u)
    ext = self.extreme(y)
    lc = jnp.where(ext, log_corr, 0.0)
    return jnp.where(ext, jax.nn.sigmoid(lc - log_kept), 0.0)

  def fixed(self, y):
    y = _flat(y)
    return ~self.extreme(y), y

  def init_image(self, y):
    y = _flat(y)
    ext = self.extreme(y)
    kept = jnp.where(ext, 0.0, y).sum(-1, keepdims=True)
    mean = kept / jnp.maximum((~ext).sum(-1, keepdims=True), 1)
    return jnp.where(ext, jnp.broadcast_to(mean, y.shape), y)


MASKS = ("random50", "random80", "centre", "bottom")


def make_mask(kind: str, shape: Sequence[int], rng=0) -> np.ndarray:
  """A boolean mask of image `shape` (True: observed): 'random50' / 'random80' (that
  share of pixels missing, the same for every channel), 'centre' (a centred box of half
  the height and width missing: 14x14 on MNIST), 'bottom' (the bottom half missing)."""
  shape = tuple(shape)
  if len(shape) < 2:
    raise ValueError(f"mask: needs image shape (H, W[, C]), got {shape}")
  h, w = shape[0], shape[1]
  obs = np.ones((h, w), bool)
  if kind in ("random50", "random80"):
    frac = 0.5 if kind == "random50" else 0.8
    obs = np.random.default_rng(rng).random((h, w)) >= frac
  elif kind == "centre":
    obs[h // 4:h // 4 + h // 2, w // 4:w // 4 + w // 2] = False
  elif kind == "bottom":
    obs[h // 2:] = False
  else:
    raise ValueError(f"mask must be one of {', '.join(MASKS)}, got {kind!r}")
  return np.broadcast_to(obs.reshape((h, w) + (1,) * (len(shape) - 2)), shape).copy()


@dataclasses.dataclass(frozen=True, eq=False)
class Missing:
  """Missing pixels: observed where `mask` is True (kept exactly), unknown elsewhere.

  mask: bool of the image shape (one mask for every image) or (N, *shape) (one each).
  The observed pixels are pinned (`fixed`); the likelihood is otherwise flat.
  """
  mask: np.ndarray
  shape: tuple
  bounded: bool = True    # images must lie in [0, 1]

  def __post_init__(self):
    m = np.asarray(self.mask)
    shape = tuple(self.shape)
    if m.shape != shape and (m.ndim != len(shape) + 1 or m.shape[1:] != shape):
      raise ValueError(f"mask must have the image shape {shape} (or (N, *shape)), "
                       f"got {m.shape}")
    if m.dtype != bool and not np.isin(m, (0, 1)).all():
      raise ValueError("mask must be boolean (True: observed)")
    object.__setattr__(self, "mask", m.astype(bool))

  @property
  def y_shape(self):
    return tuple(self.shape)

  def _mask_for(self, n):
    m = self.mask
    if m.shape == tuple(self.shape):
      m = np.broadcast_to(m, (n,) + m.shape)
    elif m.shape[0] != n:
      raise ValueError(f"mask has {m.shape[0]} images, the observation {n}")
    return jnp.asarray(m.reshape(n, -1))

  def corrupt(self, rng, images):
    del rng
    x = check_images(images, self.shape, "images", self.bounded)
    m = np.asarray(self._mask_for(len(x))).reshape(x.shape)
    return np.where(m, x, 0.0).astype(np.float32)

  def log_likelihood(self, y, u, extra_var=0.0):
    del extra_var
    return jnp.zeros(u.shape[0], u.dtype)

  def fixed(self, y):
    y = _flat(y)
    return self._mask_for(y.shape[0]), y

  def init_image(self, y):
    y = _flat(y)
    m = self._mask_for(y.shape[0])
    mean = jnp.where(m, y, 0.0).sum(-1, keepdims=True) / jnp.maximum(m.sum(-1, keepdims=True), 1)
    return jnp.where(m, y, jnp.broadcast_to(mean, y.shape))


@dataclasses.dataclass(frozen=True)
class Downsample:
  """Super-resolution: y = (factor x factor average pool of x) + sigma * n."""
  factor: int
  sigma: float
  shape: tuple

  def __post_init__(self):
    if not (isinstance(self.factor, (int, np.integer)) and self.factor >= 1):
      raise ValueError(f"factor must be an integer >= 1, got {self.factor!r}")
    _check_positive(self.sigma, "sigma")
    s = tuple(self.shape)
    if len(s) < 2 or s[0] % self.factor or s[1] % self.factor:
      raise ValueError(f"shape must be (H, W[, C]) with H and W divisible by factor "
                       f"{self.factor}, got {s}")

  @property
  def y_shape(self):
    s = tuple(self.shape)
    return (s[0] // self.factor, s[1] // self.factor) + s[2:]

  def pool(self, u):
    """(N, D) image-unit vectors -> (N, D / factor^2) averages, flattened."""
    s, f = tuple(self.shape), self.factor
    img = u.reshape((u.shape[0], s[0] // f, f, s[1] // f, f) + s[2:])
    return img.mean(axis=(2, 4)).reshape(u.shape[0], -1)

  def corrupt(self, rng, images):
    x = check_images(images, self.shape, "images")
    gen = np.random.default_rng(rng)
    low = np.asarray(self.pool(x.reshape(len(x), -1)))
    return (low + self.sigma * gen.standard_normal(low.shape)).reshape(
        (len(x),) + self.y_shape).astype(np.float32)

  def log_likelihood(self, y, u, extra_var=0.0):
    var = self.sigma ** 2 + extra_var / self.factor ** 2
    r = _flat(y) - self.pool(u)
    return jnp.sum(-0.5 * r * r / var - 0.5 * jnp.log(2 * jnp.pi * var), -1)

  def fixed(self, y):
    n = jnp.asarray(y).shape[0]
    d = int(np.prod(self.shape))
    return jnp.zeros((n, d), bool), jnp.zeros((n, d), jnp.float32)

  def init_image(self, y):
    """Nearest-neighbour upsampling of y, clipped to [0, 1]."""
    s, f = tuple(self.shape), self.factor
    y = jnp.asarray(y).reshape((-1,) + self.y_shape)
    up = jnp.repeat(jnp.repeat(y, f, axis=1), f, axis=2)
    return jnp.clip(up.reshape(up.shape[0], -1), 0.0, 1.0)


TASKS = ("gaussian", "salt_pepper", "inpaint", "superres")


def from_config(rc, shape, bounded: bool = True, mask_rng=0):
  """The observation model config.restore describes (task and its settings)."""
  shape = tuple(shape)
  if rc.task == "gaussian":
    return GaussianNoise(float(rc.sigma), shape, bounded)
  if rc.task == "salt_pepper":
    return SaltPepper(float(rc.p), shape, rc.sp_tau)
  if rc.task == "inpaint":
    return Missing(make_mask(rc.mask, shape, mask_rng), shape, bounded)
  if rc.task == "superres":
    return Downsample(int(rc.sr_factor), float(rc.sr_sigma), shape)
  raise ValueError(f"task must be one of {', '.join(TASKS)}, got {rc.task!r}")


def check_observation(obs, y) -> np.ndarray:
  """y as (N, *obs.y_shape) float32; one-line ValueError naming `y` otherwise."""
  # noisy observations (Gaussian, super-resolution) may leave [0, 1]
  bounded = isinstance(obs, SaltPepper) or (isinstance(obs, Missing) and obs.bounded)
  return check_images(y, obs.y_shape, "y", bounded).astype(np.float32)
