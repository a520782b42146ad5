"""Out-of-distribution detection with AR-CSM statistics (Meng et al. 2020, Sec. 5.5, Table 1).

Statistics of an image x (model space y = preprocessor(x), a batch (B, D)):

  `score_sum`      h(y) = sum_d s_theta,d(y; sigma), the paper's statistic: the sum of the
                   conditional scores (contexts from y itself) at noise level sigma.
  `score_norm_sq`  sum_d s_theta,d(y; sigma)^2.
  log-likelihood   the AR-CSM's quadrature log-likelihood (`likelihood.py`; ours, not in
                   the paper) or an MLE model's exact one, in pixel space.

Sign convention (which direction means "in distribution"); in-distribution is the
positive class of every AUROC:

  * log-likelihood: larger is in-distribution (one-sided), as for the PixelCNN++ row of
    the paper's Table 1.
  * h and the squared score norm: two-sided typicality against held-out
    in-distribution images, `typicality(v, ref) = -|v - median(ref)| / IQR(ref)`:
    larger (closer to the held-out median) is in-distribution. The direction in which an
    OOD set deviates (larger or smaller h) is not known in advance and is never chosen
    on OOD data; the reference values come from held-out in-distribution images only.

The noise level of h besides sigma_min is chosen on held-out in-distribution images
only (`choose_sigma`): the level whose held-out values of h are most concentrated
relative to their location, IQR / |median| smallest.

Synthetic OOD sets in the data's pixel range (uint8, 0..255): `constant_uniform` (each
image one value per channel drawn from U[0, 1]) and `uniform` (every pixel i.i.d.
U[0, 1]); `to_grayscale`, `to_rgb` and `resize` convert image sets between the MNIST and
CIFAR-10 formats.
"""

from typing import Callable, Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np


# ------------------------------------------------------------------------------------
# Statistics
# ------------------------------------------------------------------------------------


def _scores(model, params, y, sigma):
  if model.discrete:
    raise ValueError("score statistics need a score d/dx_d: a probability-mass head "
                     "(discretized_logistic) has none; use its exact log-likelihood")
  chex.assert_shape(y, (None, model.dim))
  return model.full_score(params, y, jnp.full_like(y, sigma))


def score_sum(model, params, y, sigma: float):
  """h(y) = sum_d s_d(y; sigma), (B,) (paper Sec. 5.5)."""
  return _scores(model, params, y, sigma).sum(-1)


def score_norm_sq(model, params, y, sigma: float):
  """sum_d s_d(y; sigma)^2, (B,)."""
  return jnp.square(_scores(model, params, y, sigma)).sum(-1)


def make_score_stats_fn(model) -> Callable:
  """jit (params, y (B, D), sigma) -> {'h': (B,), 'norm_sq': (B,)}."""
  def fn(params, y, sigma):
    s = _scores(model, params, y, sigma)
    return {"h": s.sum(-1), "norm_sq": jnp.square(s).sum(-1)}
  return jax.jit(fn)


def score_stats(fn, params, y: np.ndarray, sigma: float, batch_size: int = 100) -> dict:
  """`make_score_stats_fn` over a data set in batches (last batch padded): numpy (N,)."""
  y = np.asarray(y, np.float32)
  out = {"h": [], "norm_sq": []}
  for i in range(0, len(y), batch_size):
    yb = y[i:i + batch_size]
    nb = len(yb)
    if nb < batch_size:
      yb = np.concatenate([yb, np.repeat(yb[-1:], batch_size - nb, 0)])
    r = fn(params, yb, jnp.float32(sigma))
    for k in out:
      out[k].append(np.asarray(r[k], np.float64)[:nb])
  return {k: np.concatenate(v) for k, v in out.items()}


# ------------------------------------------------------------------------------------
# Sign convention, noise level, AUROC
# ------------------------------------------------------------------------------------


def typicality(values, reference) -> np.ndarray:
  """-|v - median(ref)| / IQR(ref): larger = more like the held-out in-distribution
  reference values `ref` (two-sided; see the module docstring)."""
  ref = np.asarray(reference, np.float64)
  med = np.median(ref)
  q75, q25 = np.percentile(ref, [75, 25])
  scale = max(q75 - q25, 1e-12 * max(1.0, abs(med)))
  return -np.abs(np.asarray(values, np.float64) - med) / scale


def choose_sigma(heldout_h: dict) -> float:
  """The level sigma of {sigma: held-out in-distribution h values} with the smallest
  IQR / |median| (most concentrated statistic); in-distribution data only."""
  def spread(v):
    v = np.asarray(v, np.float64)
    q75, q25 = np.percentile(v, [75, 25])
    return (q75 - q25) / max(abs(np.median(v)), 1e-12)
  return float(min(heldout_h, key=lambda s: spread(heldout_h[s])))


def auroc(in_scores, out_scores) -> float:
  """Area under the ROC curve, in-distribution = positive class, larger score = more
  in-distribution (scikit-learn's roc_auc_score)."""
  from sklearn.metrics import roc_auc_score  # pylint: disable=g-import-not-at-top
  a, b = np.asarray(in_scores, np.float64), np.asarray(out_scores, np.float64)
  if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
    raise ValueError("non-finite OOD scores: check the model and the statistic")
  labels = np.concatenate([np.ones(len(a)), np.zeros(len(b))])
  return float(roc_auc_score(labels, np.concatenate([a, b])))


# ------------------------------------------------------------------------------------
# OOD image sets (uint8 pixels, (N, H, W, C))
# ------------------------------------------------------------------------------------

SYNTHETIC = {
    "constant_uniform": "every pixel of an image takes one value per channel, drawn from "
                        "U[0, 1] per image and channel, as uint8 floor(256 u)",
    "uniform": "every pixel and channel i.i.d. U[0, 1], as uint8 floor(256 u)",
}


def _to_uint8(u):
  return np.minimum(np.floor(256.0 * u), 255).astype(np.uint8)


def constant_uniform(rng: np.random.Generator, n: int, shape: Sequence[int]) -> np.ndarray:
  """n images of `shape` (H, W, C), each constant per channel with a U[0, 1] value."""
  h, w, c = shape
  return np.broadcast_to(_to_uint8(rng.random((n, 1, 1, c))), (n, h, w, c)).copy()


def uniform(rng: np.random.Generator, n: int, shape: Sequence[int]) -> np.ndarray:
  """n images of `shape` with i.i.d. U[0, 1] pixels."""
  return _to_uint8(rng.random((n,) + tuple(shape)))


def resize(images: np.ndarray, size: int) -> np.ndarray:
  """uint8 (N, H, W, C) -> (N, size, size, C), antialiased bilinear (jax.image)."""
  x = jnp.asarray(images, jnp.float32)
  n, _, _, c = x.shape
  out = jax.image.resize(x, (n, size, size, c), "linear", antialias=True)
  return np.asarray(jnp.clip(jnp.round(out), 0, 255)).astype(np.uint8)


def to_grayscale(images: np.ndarray) -> np.ndarray:
  """uint8 RGB (N, H, W, 3) -> (N, H, W, 1) by ITU-R 601 luma."""
  w = np.array([0.299, 0.587, 0.114])
  g = np.asarray(images, np.float64) @ w
  return np.clip(np.round(g), 0, 255).astype(np.uint8)[..., None]


def to_rgb(images: np.ndarray, size: int = 32) -> np.ndarray:
  """uint8 grayscale (N, h, w, 1) -> (N, size, size, 3): zero-padded to size x size
  (centred; MNIST 28 -> 32) and replicated over three channels."""
  n, h, w, _ = images.shape
  top, left = (size - h) // 2, (size - w) // 2
  out = np.zeros((n, size, size, 1), np.uint8)
  out[:, top:top + h, left:left + w] = images
  return np.repeat(out, 3, axis=-1)


def convert(images: np.ndarray, shape: Sequence[int]) -> np.ndarray:
  """An image set in the in-distribution format `shape` (H, W, C): RGB -> grayscale by
  luma and resized (CIFAR-10 / CelebA -> 28x28x1), grayscale -> zero-padded and
  replicated to RGB (MNIST -> 32x32x3), same format unchanged."""
  h, w, c = shape
  if h != w:
    raise ValueError(f"square images only, got {tuple(shape)}")
  if images.shape[1:] == tuple(shape):
    return images
  if c == 1 and images.shape[-1] == 3:
    images = to_grayscale(images)
  elif c == 3 and images.shape[-1] == 1:
    if images.shape[1] <= h:
      return to_rgb(images, h)
    images = np.repeat(images, 3, axis=-1)
  if images.shape[1:] != tuple(shape):
    images = resize(images, h)
  return images


def load_image_set(name: str, data_config, n: int):
  """The first n test images of a named image set as uint8 (N, H, W, C), or raises
  `data.DataNotFoundError` where it is not available here.

  `data_config` (a config.data) says where to read: data.dataset/source/path/test_path
  are replaced by `name` (tfds for mnist and svhn: the tfds `svhn_cropped` test split;
  for npz sets pass a config whose source/path point at the file).
  """
  from csm_jax import data as data_lib  # pylint: disable=g-import-not-at-top
  arrays = data_lib.load_arrays(data_config)
  if not arrays.discrete:
    raise ValueError(f"OOD set {name!r}: expected uint8 images")
  test = arrays.test if len(arrays.test) else arrays.train
  return np.asarray(test[:n])
