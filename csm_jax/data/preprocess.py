"""Raw batches -> model inputs, and back: dequantization, scaling, logit, log-det.

The `Preprocessor` is the one place that knows how pixels map to model space, so the
density bookkeeping (`log_det_jacobian`) and the way back for plots (`inverse`,
`to_display`) stay consistent with the forward map.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional

import numpy as np

from csm_jax.data.sources import Arrays


def _softplus(x):
  return np.logaddexp(0.0, x)


@dataclasses.dataclass(frozen=True)
class Preprocessor:
  """Raw batch -> float32 (B, D) model input; density bookkeeping back to pixels.

  Discrete (uint8) data: x_pix = x + u, u ~ U[0, 1) if dequantize (u = 1/2 without an
  rng), x01 = x_pix / 256; without dequantization x01 = x / 255. Then
    logit_lambda > 0:  y = logit(lambda + (1 - 2 lambda) x01)   (MAF; `scale` unused)
    scale 'unit':      y = x01        scale 'symmetric':  y = 2 x01 - 1.
  Real-valued data is flattened and cast only.
  """
  shape: tuple
  discrete: bool
  dequantize: bool = True
  scale: str = 'unit'
  logit_lambda: float = 0.0

  def __post_init__(self):
    if self.scale not in ('unit', 'symmetric'):
      raise ValueError(f"data.scale must be 'unit' or 'symmetric', got {self.scale!r}.")
    if not 0.0 <= self.logit_lambda < 0.5:
      raise ValueError(f'data.logit_lambda must be in [0, 0.5), got {self.logit_lambda}.')

  @property
  def dim(self) -> int:
    return int(np.prod(self.shape))

  @property
  def pixel_range(self) -> float:
    """x01 = x_pix / pixel_range: 256 with dequantization, 255 without."""
    return 256.0 if self.dequantize else 255.0

  def __call__(self, x: np.ndarray, rng: Optional[np.random.Generator] = None
               ) -> np.ndarray:
    x = np.asarray(x)
    flat = x.reshape(x.shape[0], -1)
    if not self.discrete:
      return flat.astype(np.float32)
    pix = flat.astype(np.float64)
    if self.dequantize:
      pix = pix + (rng.random(pix.shape) if rng is not None else 0.5)
    return self.from_pixels(pix)

  def from_pixels(self, pix: np.ndarray, dtype: Any = np.float32) -> np.ndarray:
    """The forward map from (dequantized) pixel values, elementwise, in float64."""
    x01 = np.asarray(pix, np.float64) / self.pixel_range
    if self.logit_lambda:
      p = self.logit_lambda + (1 - 2 * self.logit_lambda) * x01
      y = np.log(p) - np.log1p(-p)
    elif self.scale == 'symmetric':
      y = 2 * x01 - 1
    else:
      y = x01
    return y.astype(dtype)

  def device_forward(self, x, u=None):
    """The forward map inside a jitted step (jax.numpy, float32): raw batch -> (B, D).

    x: the raw examples as stored (uint8 pixels or float32), any trailing shape; u:
    dequantization noise of x's flattened shape in [0, 1) (None: 1/2, as `__call__`
    without an rng). Same map as `__call__`/`from_pixels` but in float32; the logit
    takes log p - log(1 - p) with both p and 1 - p formed from their own pixel
    counts (pix and range - pix), so the values next to 0 and 255 keep their
    relative precision (no cancellation in 1 - p).
    """
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top  (numpy module otherwise)
    flat = jnp.reshape(x, (x.shape[0], -1))
    if not self.discrete:
      return flat.astype(jnp.float32)
    pix = flat.astype(jnp.float32)
    rest = self.pixel_range - pix               # exact: integers
    if self.dequantize:
      u = jnp.float32(0.5) if u is None else u.astype(jnp.float32)
      pix, rest = pix + u, rest - u
    x01, one_minus = pix / self.pixel_range, rest / self.pixel_range
    if self.logit_lambda:
      lam = self.logit_lambda
      return jnp.log(lam + (1 - 2 * lam) * x01) - jnp.log(lam + (1 - 2 * lam) * one_minus)
    if self.scale == 'symmetric':
      return 2 * x01 - 1
    return x01

  def log_det_jacobian(self, y: np.ndarray) -> np.ndarray:
    """sum_d log |dy_d / dx_pix_d|, float64 (B,): log p_pix(x) = log p_y(y) + this."""
    y = np.asarray(y, np.float64)
    y = y.reshape(y.shape[0], -1)
    if not self.discrete:
      return np.zeros(y.shape[0], np.float64)
    const = -math.log(self.pixel_range)
    if self.logit_lambda:
      # dy/dp = 1 / (p (1 - p)) with p = sigmoid(y): -log(p(1-p)) = sp(y) + sp(-y).
      per_dim = _softplus(y) + _softplus(-y) + math.log1p(-2 * self.logit_lambda)
      return per_dim.sum(-1) + y.shape[1] * const
    if self.scale == 'symmetric':
      const += math.log(2.0)
    return np.full(y.shape[0], y.shape[1] * const, np.float64)

  def inverse(self, y: np.ndarray) -> np.ndarray:
    """Model space -> data in the configured scale ([0,1] or [-1,1]), (B, *shape).

    Clipped for discrete data (samples may leave the range); for plotting.
    """
    y = np.asarray(y, np.float64)
    y = y.reshape((y.shape[0],) + tuple(self.shape))
    if not self.discrete:
      return y.astype(np.float32)
    if self.logit_lambda:
      p = 0.5 * (1 + np.tanh(0.5 * y))          # sigmoid, overflow-free
      x01 = (p - self.logit_lambda) / (1 - 2 * self.logit_lambda)
    elif self.scale == 'symmetric':
      x01 = 0.5 * (y + 1)
    else:
      x01 = y
    x01 = np.clip(x01, 0.0, 1.0)
    out = x01 if self.scale == 'unit' else 2 * x01 - 1
    return out.astype(np.float32)

  def to_display(self, y: np.ndarray) -> np.ndarray:
    """Model space -> displayable pixels: float32 (B, *shape), images in [0, 1].

    The one conversion from model inputs or samples to what a plot shows. Discrete
    data: `inverse` mapped from the configured scale to [0, 1] and clipped, so pixel
    x_pix shows as x_pix / pixel_range. Real-valued data: `inverse` (reshaped, no
    clipping; there is no pixel range to clip to).
    """
    x = self.inverse(y)
    if not self.discrete:
      return x
    if self.scale == 'symmetric':
      x = 0.5 * (x + 1)
    return np.clip(x, 0.0, 1.0).astype(np.float32)


def get_preprocessor(data_config: Any, arrays: Arrays) -> Preprocessor:
  """Preprocessor for `arrays` configured by data.{dequantize, scale, logit_lambda}."""
  return Preprocessor(
      shape=tuple(arrays.shape), discrete=bool(arrays.discrete),
      dequantize=bool(data_config.dequantize), scale=str(data_config.scale),
      logit_lambda=float(data_config.logit_lambda))
