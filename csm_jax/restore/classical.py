"""Classical image restorers from maintained libraries: the baselines of the restoration
benchmark.

Every restorer maps images y, float in [0, 1], of shape (N, H, W) or (N, H, W, C), to
restored images of the same shape (super-resolution: H and W times `factor`) and dtype,
clipped to [0, 1]. They run on the host (numpy), one image at a time.

  Gaussian noise   `bm3d_denoise` (the `bm3d` package), `nl_means` (scikit-image),
                   `tv_chambolle` (scikit-image), `wavelet_denoise` (scikit-image,
                   BayesShrink), `wiener` (scipy.signal.wiener)
  salt-and-pepper  `median3x3` (scipy.ndimage), `adaptive_median` and
                   `decision_median` (written here on scipy.ndimage: no maintained library
                   we know of has them)
  missing pixels   `inpaint_biharmonic` (scikit-image), `inpaint_telea` (OpenCV)
  2x super-res     `upsample_bicubic`, `upsample_bilinear` (scikit-image)

`restorers_for(task, ...)` gives the ones that apply to a task as {name: y -> x}.
Masks are 1 (True) where a pixel is OBSERVED and 0 where it is missing.
"""

from typing import Callable, Dict, Optional

import numpy as np

TASKS = ("gaussian", "salt_pepper", "inpaint", "superres")

# Where the defaults' settings come from: a small grid per restorer on 100 MNIST test
# images (test[5200:5300], outside the benchmark's first images and the sample-quality
# reference and floor test[:5100]), pixels in [0, 1], mean PSNR.
TUNING = "MNIST test[5200:5300], Gaussian sigma 0.3 and 0.6, salt-and-pepper p 0.1 and 0.3"


# ------------------------------------------------------------------------------------
# Shapes: every restorer works on one (H, W, C) image at a time
# ------------------------------------------------------------------------------------


def _check_images(y, name: str = "y") -> np.ndarray:
  y = np.asarray(y)
  if y.ndim not in (3, 4):
    raise ValueError(f"{name} must be images of shape (N, H, W) or (N, H, W, C), got shape "
                     f"{y.shape}")
  if not np.issubdtype(y.dtype, np.floating):
    raise ValueError(f"{name} must be float images in [0, 1], got dtype {y.dtype}")
  return y


def _per_image(fn: Callable[[np.ndarray, int], np.ndarray], y) -> np.ndarray:
  """fn(image (H, W, C) float64, index) -> (H', W', C) over the batch; y's rank and dtype
  restored, values clipped to [0, 1]."""
  y = _check_images(y)
  gray = y.ndim == 3
  imgs = y[..., None] if gray else y
  def call(img, i):  # some scikit-image functions drop a channel axis of length 1
    o = np.asarray(fn(img.astype(np.float64), i), np.float64)
    return o[..., None] if o.ndim == 2 else o
  out = np.stack([call(img, i) for i, img in enumerate(imgs)])
  out = np.clip(out, 0.0, 1.0).astype(y.dtype)
  return out[..., 0] if gray else out


def _per_channel(fn: Callable[[np.ndarray], np.ndarray]):
  """A 2-D restorer applied to each channel of an (H, W, C) image."""
  return lambda img, i: np.stack([fn(img[..., c]) for c in range(img.shape[-1])], axis=-1)


def _check_sigma(sigma):
  if sigma is None or not np.isfinite(sigma) or sigma <= 0:
    raise ValueError(f"sigma (the Gaussian noise level in [0, 1] units) must be > 0, got "
                     f"{sigma!r}")
  return float(sigma)


# ------------------------------------------------------------------------------------
# Gaussian noise of known sigma
# ------------------------------------------------------------------------------------


def bm3d_denoise(y, sigma: float):
  """BM3D (Dabov et al. 2007; the `bm3d` package) at noise level sigma; colour images
  (C = 3) through its opponent-colour `bm3d_rgb`, others channel by channel. The slowest
  restorer here: about 1.3 s per 28x28 image on a 2-core CPU."""
  import bm3d  # pylint: disable=g-import-not-at-top
  sigma = _check_sigma(sigma)
  shape = np.shape(y)
  if len(shape) >= 3 and shape[1] <= 8 and shape[2] <= 8:
    # the package refuses images smaller than its 8x8 blocks and crashes the process
    # (a segmentation fault in its compiled code) on images of exactly 8x8
    raise ValueError(f"y: BM3D needs images larger than its 8x8 blocks, got "
                     f"{shape[1]}x{shape[2]}")

  def one(img, i):
    if img.shape[-1] == 3:
      return bm3d.bm3d_rgb(img, sigma)
    return np.stack([bm3d.bm3d(img[..., c], sigma) for c in range(img.shape[-1])], -1)
  return _per_image(one, y)


def nl_means(y, sigma: float, h_factor: float = 0.5, patch_size: int = 5,
             patch_distance: int = 6):
  """scikit-image's non-local means (fast mode), filter strength h = h_factor * sigma, the
  known sigma subtracted from patch distances. h_factor 0.5 is the best of 0.4-1.2 on
  MNIST at sigma 0.3 and 0.6 (`TUNING`); scikit-image's example uses 0.8."""
  from skimage import restoration  # pylint: disable=g-import-not-at-top
  sigma = _check_sigma(sigma)
  return _per_image(lambda img, i: restoration.denoise_nl_means(
      img, h=h_factor * sigma, sigma=sigma, patch_size=patch_size,
      patch_distance=patch_distance, fast_mode=True, channel_axis=-1), y)


def tv_chambolle(y, sigma: float, weight_factor: float = 0.75):
  """Total-variation denoising (Chambolle 2004, scikit-image), weight = weight_factor *
  sigma (heavier noise, smoother result); 0.75 is the best of 0.25-1.5 on MNIST at sigma
  0.3 and 0.6 (`TUNING`)."""
  from skimage import restoration  # pylint: disable=g-import-not-at-top
  sigma = _check_sigma(sigma)
  return _per_image(lambda img, i: restoration.denoise_tv_chambolle(
      img, weight=weight_factor * sigma, channel_axis=-1), y)


def wavelet_denoise(y, sigma: float, wavelet: str = "sym4", method: str = "BayesShrink"):
  """scikit-image's wavelet denoiser (BayesShrink soft thresholds, the known sigma);
  sym4 is the best of db1, db2, sym4 on MNIST (`TUNING`)."""
  from skimage import restoration  # pylint: disable=g-import-not-at-top
  sigma = _check_sigma(sigma)
  return _per_image(lambda img, i: restoration.denoise_wavelet(
      img, sigma=sigma, wavelet=wavelet, method=method, mode="soft", rescale_sigma=True,
      channel_axis=-1), y)


def wiener(y, sigma: float, size: int = 5):
  """scipy.signal.wiener: the local-statistics (Lee) Wiener filter in a size x size
  window with the known noise power sigma^2 (5: the best of 3-9 at sigma 0.6 on MNIST,
  3 is 0.3 dB better at sigma 0.3; `TUNING`)."""
  from scipy import signal  # pylint: disable=g-import-not-at-top
  sigma = _check_sigma(sigma)
  return _per_image(_per_channel(lambda a: signal.wiener(a, (size, size), sigma ** 2)), y)


# ------------------------------------------------------------------------------------
# Salt-and-pepper
# ------------------------------------------------------------------------------------


def median3x3(y):
  """3x3 median filter (scipy.ndimage, edges reflected)."""
  from scipy import ndimage  # pylint: disable=g-import-not-at-top
  return _per_image(_per_channel(lambda a: ndimage.median_filter(a, size=3,
                                                                 mode="reflect")), y)


def decision_median(y, size: int = 3):
  """Decision-based (switching) median filter for salt-and-pepper noise: a pixel that is
  0 or 1 (0 or 255) may be an impulse and is replaced by the median of its size x size
  window; every other pixel is kept, since the noise never produces it (the rule of the
  decision-based filters of impulse noise, e.g. Srinivasan and Ebenezer 2007, in its
  simplest form: the window's median over all its pixels, extremes included, so that a
  black background stays black). Written here on scipy.ndimage's median filter: scipy,
  scikit-image and OpenCV have no switching median."""
  if size < 3 or size % 2 == 0:
    raise ValueError(f"size (the window) must be odd and >= 3, got {size}")
  from scipy import ndimage  # pylint: disable=g-import-not-at-top
  from csm_jax.restore import observations  # pylint: disable=g-import-not-at-top

  def one(a):
    med = ndimage.median_filter(a, size=size, mode="reflect")
    return np.where(observations.is_extreme(a, np), med, a)
  return _per_image(_per_channel(one), y)


def _adaptive_median_2d(a: np.ndarray, max_size: int) -> np.ndarray:
  """Hwang and Haddad (1995): at each pixel grow the window (3, 5, .. max_size) until its
  median is not an extreme (min < med < max); then keep the pixel if it is not an extreme
  of that window, else replace it by the median. Where no window qualifies: the median
  of the largest."""
  from scipy import ndimage  # pylint: disable=g-import-not-at-top
  out = a.copy()
  done = np.zeros(a.shape, bool)
  med = a
  for size in range(3, max_size + 1, 2):
    lo = ndimage.minimum_filter(a, size=size, mode="reflect")
    hi = ndimage.maximum_filter(a, size=size, mode="reflect")
    med = ndimage.median_filter(a, size=size, mode="reflect")
    ok = (lo < med) & (med < hi) & ~done
    keep = (lo < a) & (a < hi)
    out[ok] = np.where(keep, a, med)[ok]
    done |= ok
  out[~done] = med[~done]
  return out


def adaptive_median(y, max_size: int = 5):
  """Adaptive median filter (Hwang and Haddad 1995) for salt-and-pepper noise: pixels
  that are not extremes of their window are kept, the others replaced by the median of
  the smallest window whose median is not an extreme. Written here (on scipy.ndimage's
  min / max / median filters): scipy, scikit-image and OpenCV have no adaptive median.
  max_size 5 is the best of 5-11 on MNIST at p = 0.1 and 0.3 (`TUNING`)."""
  if max_size < 3 or max_size % 2 == 0:
    raise ValueError(f"max_size (the largest window) must be odd and >= 3, got {max_size}")
  return _per_image(_per_channel(lambda a: _adaptive_median_2d(a, max_size)), y)


# ------------------------------------------------------------------------------------
# Missing pixels
# ------------------------------------------------------------------------------------


def _observed(mask, y) -> np.ndarray:
  """The (N, H, W) boolean mask of observed pixels, from one of shape (H, W), (N, H, W)
  or (N, H, W, 1) (the same for every channel)."""
  y = _check_images(y)
  spatial = y.shape[:3]
  m = np.asarray(mask)
  if m.ndim == 4 and m.shape[-1] == 1:
    m = m[..., 0]
  if m.shape == spatial[1:]:
    m = np.broadcast_to(m, spatial)
  if m.shape != spatial:
    raise ValueError(f"mask (1 where observed) must have shape (H, W) = {spatial[1:]} or "
                     f"(N, H, W) = {spatial}, got {np.asarray(mask).shape}")
  if not np.all((m == 0) | (m == 1)):
    raise ValueError("mask must be boolean or 0/1 (1 where a pixel is observed)")
  return m.astype(bool)


def _keep_observed(x, y, observed):
  obs = observed if y.ndim == 3 else observed[..., None]
  return np.where(obs, y, x).astype(y.dtype)


def inpaint_biharmonic(y, mask):
  """scikit-image's biharmonic inpainting of the missing pixels (mask 0); observed
  pixels (mask 1) are returned exactly."""
  from skimage import restoration  # pylint: disable=g-import-not-at-top
  y = _check_images(y)
  observed = _observed(mask, y)
  x = _per_image(lambda img, i: restoration.inpaint_biharmonic(
      img, ~observed[i], channel_axis=-1), y)
  return _keep_observed(x, y, observed)


def inpaint_telea(y, mask, radius: float = 3.0):
  """OpenCV's Telea (2004) fast-marching inpainting (cv2.INPAINT_TELEA) of the missing
  pixels (mask 0); observed pixels (mask 1) returned exactly. Each channel goes through
  OpenCV as 16-bit integers (its float32 path returned values far outside the data's
  range in opencv-python-headless 5.1)."""
  import cv2  # pylint: disable=g-import-not-at-top
  y = _check_images(y)
  observed = _observed(mask, y)

  def one(img, i):
    hole = (~observed[i]).astype(np.uint8)
    to16 = lambda a: np.ascontiguousarray(np.round(np.clip(a, 0, 1) * 65535), np.uint16)
    return np.stack([cv2.inpaint(to16(img[..., c]), hole, radius, cv2.INPAINT_TELEA) / 65535.0
                     for c in range(img.shape[-1])], axis=-1)
  return _keep_observed(_per_image(one, y), y, observed)


# ------------------------------------------------------------------------------------
# Super-resolution
# ------------------------------------------------------------------------------------


def _upsample(y, factor: int, order: int):
  from skimage import transform  # pylint: disable=g-import-not-at-top
  if not isinstance(factor, (int, np.integer)) or factor < 1:
    raise ValueError(f"factor (the upsampling factor) must be an integer >= 1, got {factor!r}")
  y = _check_images(y)
  h, w = y.shape[1] * factor, y.shape[2] * factor
  return _per_image(lambda img, i: transform.resize(
      img, (h, w, img.shape[-1]), order=order, mode="edge", anti_aliasing=False), y)


def upsample_bicubic(y, factor: int = 2):
  """Bicubic interpolation (scikit-image, order 3) of low-resolution images to `factor`
  times their height and width (pixel centres as in average pooling)."""
  return _upsample(y, factor, 3)


def upsample_bilinear(y, factor: int = 2):
  """Bilinear interpolation (scikit-image, order 1); see `upsample_bicubic`."""
  return _upsample(y, factor, 1)


# ------------------------------------------------------------------------------------
# The restorers of a task
# ------------------------------------------------------------------------------------


def restorers_for(task: str, *, sigma: Optional[float] = None, p: Optional[float] = None,
                  mask=None, factor: Optional[int] = None) -> Dict[str, Callable]:
  """{name: y -> restored} of the classical restorers for `task`:

    'gaussian'     (sigma > 0)          bm3d, nl_means, tv_chambolle, wavelet, wiener
    'salt_pepper'  (p in [0, 1])        median3x3, adaptive_median, decision_median
    'inpaint'      (mask, 1: observed)  biharmonic, telea
    'superres'     (factor, default 2)  bicubic, bilinear (y: the low-resolution images)
  """
  if task == "gaussian":
    s = _check_sigma(sigma)
    return {"bm3d": lambda y: bm3d_denoise(y, s),
            "nl_means": lambda y: nl_means(y, s),
            "tv_chambolle": lambda y: tv_chambolle(y, s),
            "wavelet": lambda y: wavelet_denoise(y, s),
            "wiener": lambda y: wiener(y, s)}
  if task == "salt_pepper":
    if p is None or not 0 <= p <= 1:
      raise ValueError(f"p (the salt-and-pepper rate) must be in [0, 1], got {p!r}")
    return {"median3x3": median3x3, "adaptive_median": adaptive_median,
            "decision_median": decision_median}
  if task == "inpaint":
    if mask is None:
      raise ValueError("mask (1 where a pixel is observed) is needed for task 'inpaint'")
    return {"biharmonic": lambda y: inpaint_biharmonic(y, mask),
            "telea": lambda y: inpaint_telea(y, mask)}
  if task == "superres":
    f = 2 if factor is None else factor
    if not isinstance(f, (int, np.integer)) or f < 1:
      raise ValueError(f"factor (the upsampling factor) must be an integer >= 1, got {f!r}")
    return {"bicubic": lambda y: upsample_bicubic(y, f),
            "bilinear": lambda y: upsample_bilinear(y, f)}
  raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
