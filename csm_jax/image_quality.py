"""Sample quality of image models without downloaded weights: classifier-FID, intensity.

FID (Heusel et al. 2017) compares Gaussians fitted to features of real and generated
images: ||mu1 - mu2||^2 + tr(C1 + C2 - 2 (C1 C2)^{1/2}). The usual features come from
an ImageNet Inception network, whose weights must be downloaded and which sees MNIST
digits poorly; here they come from a small classifier trained by the project on the
data's own labels (`train_classifier`; its test accuracy is reported, and its weights
are cached in a directory keyed by its settings and the data, so every run of an
experiment measures with the same network). The features are its penultimate layer
(ReLU units).

Next to it, two statistics a speckled or blank sample gives away at once:
`mean_intensity` (mean pixel value) and `on_pixel_fraction` (pixels > 0.5), each to
be compared with the same statistic of the data.

Images everywhere are display-scale floats in [0, 1] of shape (N, H, W, C), as
`Preprocessor.to_display` returns them. FID is estimated from finite samples and is
biased upwards by an amount that grows with the feature dimension over the sample
size; compare models at equal sample sizes, next to the floor that two sets of real
images of that size give (`classifier_fid` of held-out data against the reference).
"""

import hashlib
import json
import os
import time
from typing import Callable, NamedTuple, Optional, Sequence, Tuple, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from csm_jax import atomic
from csm_jax.models.ar import fast_init

ON_THRESHOLD = 0.5


# ------------------------------------------------------------------------------------
# Pixel statistics
# ------------------------------------------------------------------------------------


def mean_intensity(images: np.ndarray) -> float:
  """Mean pixel value of display-scale images in [0, 1]."""
  return float(np.mean(np.asarray(images, np.float64)))


def on_pixel_fraction(images: np.ndarray, threshold: float = ON_THRESHOLD) -> float:
  """Fraction of pixels brighter than `threshold` (display scale [0, 1])."""
  return float(np.mean(np.asarray(images) > threshold))


# ------------------------------------------------------------------------------------
# Frechet distance
# ------------------------------------------------------------------------------------


def _psd_sqrt(c: np.ndarray) -> np.ndarray:
  """Symmetric square root of a symmetric PSD matrix (tiny negative eigenvalues -> 0)."""
  w, v = np.linalg.eigh(0.5 * (c + c.T))
  return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def trace_sqrt_product(cov1: np.ndarray, cov2: np.ndarray) -> float:
  """tr((C1 C2)^{1/2}) for symmetric PSD C1, C2, in float64.

  C1 C2 is similar to the symmetric PSD S C2 S with S = C1^{1/2} (same eigenvalues), so
  the trace is the sum of the square roots of the eigenvalues of S C2 S: no complex
  parts and no ill-conditioned general sqrtm. Rounding can make tiny eigenvalues
  negative; they are clipped to 0.
  """
  s = _psd_sqrt(np.asarray(cov1, np.float64))
  m = s @ np.asarray(cov2, np.float64) @ s
  w = np.linalg.eigvalsh(0.5 * (m + m.T))
  return float(np.sum(np.sqrt(np.clip(w, 0.0, None))))


def frechet_distance(mu1, cov1, mu2, cov2) -> float:
  """Squared Frechet (2-Wasserstein) distance between N(mu1, cov1) and N(mu2, cov2):
  ||mu1 - mu2||^2 + tr(C1) + tr(C2) - 2 tr((C1 C2)^{1/2}), in float64, clipped at 0."""
  mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
  cov1, cov2 = np.asarray(cov1, np.float64), np.asarray(cov2, np.float64)
  if not all(np.all(np.isfinite(a)) for a in (mu1, mu2, cov1, cov2)):
    raise ValueError("non-finite mean or covariance")
  if mu1.shape != mu2.shape or cov1.shape != cov2.shape or cov1.shape != mu1.shape * 2:
    raise ValueError(f"shapes do not match: mu {mu1.shape}, {mu2.shape}; cov {cov1.shape}, "
                     f"{cov2.shape}")
  d = float(np.sum((mu1 - mu2) ** 2) + np.trace(cov1) + np.trace(cov2)
            - 2.0 * trace_sqrt_product(cov1, cov2))
  return max(d, 0.0)


def feature_stats(features: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
  """(mean, covariance) of (N, F) features in float64 (unbiased covariance, N - 1)."""
  f = np.asarray(features, np.float64)
  if f.ndim != 2 or len(f) < 2:
    raise ValueError(f"need (N >= 2, F) features, got shape {f.shape}")
  return f.mean(0), np.cov(f, rowvar=False)


def features_frechet_distance(features1: np.ndarray, features2: np.ndarray) -> float:
  """`frechet_distance` of the Gaussians `feature_stats` fits to (N1, F) and (N2, F)
  features, exactly, without F x F eigendecompositions when both sets are smaller
  than F.

  With A_i the centred features over sqrt(N_i - 1) (F x N_i), C_i = A_i A_i^T, and the
  nonzero eigenvalues of C1 C2 are those of M M^T, M = A1^T A2 (N1 x N2): so
  tr((C1 C2)^{1/2}) is the sum of M's singular values and tr(C_i) = ||A_i||_F^2. For
  Inception's F = 2048 and a few hundred images this is milliseconds instead of the
  seconds two 2048 x 2048 eigendecompositions take; larger sets go through the
  covariances.
  """
  f1, f2 = np.asarray(features1, np.float64), np.asarray(features2, np.float64)
  for f in (f1, f2):
    if f.ndim != 2 or len(f) < 2:
      raise ValueError(f"need (N >= 2, F) features, got shape {f.shape}")
  if f1.shape[1] != f2.shape[1]:
    raise ValueError(f"feature sizes differ: {f1.shape[1]} and {f2.shape[1]}")
  if max(len(f1), len(f2)) > f1.shape[1]:
    return frechet_distance(*feature_stats(f1), *feature_stats(f2))
  if not (np.all(np.isfinite(f1)) and np.all(np.isfinite(f2))):
    raise ValueError("non-finite features")
  mu1, mu2 = f1.mean(0), f2.mean(0)
  a1 = (f1 - mu1) / np.sqrt(len(f1) - 1)
  a2 = (f2 - mu2) / np.sqrt(len(f2) - 1)
  tr_sqrt = float(np.sum(np.linalg.svd(a1 @ a2.T, compute_uv=False)))
  d = float(np.sum((mu1 - mu2) ** 2) + np.sum(a1 ** 2) + np.sum(a2 ** 2) - 2.0 * tr_sqrt)
  return max(d, 0.0)


# ------------------------------------------------------------------------------------
# The classifier
# ------------------------------------------------------------------------------------


class Classifier(nn.Module):
  """A small CNN: strided 3x3 convolutions (ReLU), one dense feature layer (ReLU),
  a linear read-out. Input (B, H, W, C) in [0, 1]; `features` is the FID feature space."""
  channels: Sequence[int] = (32, 64)
  features: int = 128
  num_classes: int = 10

  @nn.compact
  def __call__(self, x, return_features: bool = False):
    h = x.astype(jnp.float32) - 0.5
    for ch in self.channels:
      h = nn.relu(nn.Conv(ch, (3, 3), strides=(2, 2))(h))
    h = h.reshape((h.shape[0], -1))
    f = nn.relu(nn.Dense(self.features)(h))
    logits = nn.Dense(self.num_classes)(f)
    return (logits, f) if return_features else logits


class TrainedClassifier(NamedTuple):
  """A trained `Classifier` with its parameters and how it was made (`info`: settings,
  test accuracy, training seconds, whether it came from the cache)."""
  module: Classifier
  params: dict
  info: dict

  def _apply_batched(self, images, batch_size, fn):
    images = np.asarray(images, np.float32)
    out = [np.asarray(fn(self.params, images[i:i + batch_size]))
           for i in range(0, len(images), batch_size)]
    return np.concatenate(out, 0)

  def features(self, images: np.ndarray, batch_size: int = 500) -> np.ndarray:
    """(N, features) penultimate-layer activations of display-scale images."""
    return self._apply_batched(images, batch_size, _features_fn(self.module))

  def predict(self, images: np.ndarray, batch_size: int = 500) -> np.ndarray:
    """(N,) predicted classes."""
    return self._apply_batched(images, batch_size, _predict_fn(self.module))


_JIT_CACHE = {}


def _features_fn(module):
  key = ("features", module)
  if key not in _JIT_CACHE:
    _JIT_CACHE[key] = jax.jit(lambda p, x: module.apply(p, x, return_features=True)[1])
  return _JIT_CACHE[key]


def _predict_fn(module):
  key = ("predict", module)
  if key not in _JIT_CACHE:
    _JIT_CACHE[key] = jax.jit(lambda p, x: jnp.argmax(module.apply(p, x), -1))
  return _JIT_CACHE[key]


def _train_step(module):
  """One Adam step of softmax cross-entropy with the learning rate as an argument (so
  the compiled step is shared by every training of the same architecture)."""
  key = ("train", module)
  if key not in _JIT_CACHE:
    tx = optax.scale_by_adam()

    def step(params, opt_state, x, y, lr):
      def loss_fn(p):
        logits = module.apply(p, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
      loss, grads = jax.value_and_grad(loss_fn)(params)
      updates, opt_state = tx.update(grads, opt_state, params)
      params = jax.tree.map(lambda p, u: p - lr * u, params, updates)
      return params, opt_state, loss
    _JIT_CACHE[key] = jax.jit(step)
  return _JIT_CACHE[key]


def to_unit(images: np.ndarray, dequantize_rng: Optional[np.random.Generator] = None):
  """Images in [0, 1] as float32: uint8 pixels x as (x + 1/2) / 256 (the bin centres
  that `Preprocessor.to_display` shows for undisturbed data; with `dequantize_rng`,
  (x + u) / 256, u ~ U[0, 1)); floats unchanged."""
  images = np.asarray(images)
  if images.dtype != np.uint8:
    return images.astype(np.float32)
  u = 0.5 if dequantize_rng is None else dequantize_rng.random(images.shape)
  return ((images.astype(np.float32) + u) / 256.0).astype(np.float32)


def _fingerprint(*arrays) -> str:
  h = hashlib.sha1()
  for a in arrays:
    a = np.ascontiguousarray(a)
    h.update(f"{a.dtype}{a.shape}".encode())
    h.update(a.tobytes())
  return h.hexdigest()[:16]


def _save(path: str, params, info: dict):
  flat = {"/".join(k): np.asarray(v) for k, v in
          traverse_util.flatten_dict(jax.device_get(params)).items()}
  atomic.save_npz(path + ".npz", **flat)
  atomic.write_json(path + ".json", info)


def _load(path: str):
  if not (os.path.isfile(path + ".npz") and os.path.isfile(path + ".json")):
    return None
  try:
    with np.load(path + ".npz") as z:
      flat = {tuple(k.split("/")): jnp.asarray(z[k]) for k in z.files}
    with open(path + ".json") as f:
      info = json.load(f)
  except (OSError, ValueError, KeyError):
    return None          # unreadable: retrain and overwrite
  return traverse_util.unflatten_dict(flat), info


TRAIN_COUNT = [0]        # how many classifiers this process has trained (tests read it)


def train_classifier(train_images: np.ndarray, train_labels: np.ndarray,
                     test_images: np.ndarray, test_labels: np.ndarray, *, seed: int = 0,
                     steps: int = 2000, batch_size: int = 128, learning_rate: float = 1e-3,
                     channels: Sequence[int] = (32, 64), features: int = 128,
                     num_classes: int = 10, cache_dir: Optional[str] = None,
                     log: Optional[Callable[[str], None]] = None) -> TrainedClassifier:
  """A `Classifier` trained by Adam on softmax cross-entropy, and its test accuracy.

  Images: uint8 pixels (dequantized as (x + u) / 256 in training, bin centres
  (x + 1/2) / 256 in testing: the scale of `Preprocessor.to_display`) or floats in [0, 1].
  Minibatches are drawn with replacement from a numpy generator seeded by `seed`.

  With `cache_dir`, the parameters and info are kept there as classifier-KEY.{npz,json},
  KEY a hash of the settings and of the training and test data; a later call with the
  same settings and data loads them instead of training (info['cached'] = True).
  """
  log = log or (lambda msg: None)
  settings = {"seed": int(seed), "steps": int(steps), "batch_size": int(batch_size),
              "learning_rate": float(learning_rate), "channels": [int(c) for c in channels],
              "features": int(features), "num_classes": int(num_classes),
              "data": _fingerprint(train_images, train_labels, test_images, test_labels)}
  module = Classifier(tuple(settings["channels"]), settings["features"], num_classes)
  path = None
  if cache_dir:
    key = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    path = os.path.join(cache_dir, f"classifier-{key}")
    loaded = _load(path)
    if loaded is not None:
      params, info = loaded
      log(f"classifier restored from {path}.npz (test accuracy {info['test_accuracy']:.4f})")
      return TrainedClassifier(module, params, dict(info, cached=True))

  t0 = time.perf_counter()
  train_labels = np.asarray(train_labels, np.int32)
  x0 = to_unit(train_images[:1])
  params = fast_init(lambda r: module.init(r, x0), jax.random.PRNGKey(seed))
  tx = optax.scale_by_adam()
  opt_state = tx.init(params)
  step = _train_step(module)
  lr = lambda i: learning_rate * 0.5 * (1 + np.cos(np.pi * i / max(1, steps)))  # cosine

  rng = np.random.default_rng(seed)
  report = max(1, steps // 5)
  for i in range(steps):
    idx = rng.integers(0, len(train_images), batch_size)
    x = to_unit(train_images[idx], rng if np.asarray(train_images).dtype == np.uint8 else None)
    params, opt_state, loss = step(params, opt_state, x, train_labels[idx],
                                   np.float32(lr(i)))
    if (i + 1) % report == 0 or i + 1 == steps:
      log(f"classifier step {i + 1}/{steps} loss {float(loss):.4f}")
  clf = TrainedClassifier(module, params, {})
  pred = clf.predict(to_unit(test_images))
  acc = float(np.mean(pred == np.asarray(test_labels)))
  info = dict(settings, test_accuracy=acc, num_test=int(len(test_labels)),
              train_seconds=time.perf_counter() - t0, cached=False)
  TRAIN_COUNT[0] += 1
  log(f"classifier trained in {info['train_seconds']:.1f}s: test accuracy {acc:.4f}")
  if path:
    os.makedirs(cache_dir, exist_ok=True)
    _save(path, params, {k: v for k, v in info.items() if k != "cached"})
  return TrainedClassifier(module, params, info)


# ------------------------------------------------------------------------------------
# Classifier-FID and the report of one sample set
# ------------------------------------------------------------------------------------


Stats = Tuple[np.ndarray, np.ndarray]


def reference_stats(classifier: TrainedClassifier, images: np.ndarray) -> Stats:
  """(mean, covariance) of the classifier features of reference images."""
  return feature_stats(classifier.features(to_unit(images)))


def classifier_fid(classifier: TrainedClassifier, samples: np.ndarray,
                   reference: Union[np.ndarray, Stats]) -> float:
  """FID between `samples` and `reference` (images, or their `reference_stats`) in the
  classifier's feature space."""
  if not isinstance(reference, tuple):
    reference = reference_stats(classifier, reference)
  mu, cov = feature_stats(classifier.features(to_unit(samples)))
  return frechet_distance(mu, cov, *reference)


def bootstrap_fid_std(features: np.ndarray, reference: Stats, num_resamples: int = 50,
                      seed: int = 0) -> float:
  """Standard deviation of the FID over bootstrap resamples (with replacement) of the
  sample features: the part of the FID's spread that comes from drawing this many
  samples of a fixed model (not from training). Resampling duplicates points, so the
  spread is approximate; use it to judge which differences are larger than noise."""
  rng = np.random.default_rng(seed)
  f = np.asarray(features, np.float64)
  vals = [frechet_distance(*feature_stats(f[rng.integers(0, len(f), len(f))]), *reference)
          for _ in range(num_resamples)]
  return float(np.std(vals, ddof=1))


def quality_report(classifier: TrainedClassifier, samples: np.ndarray, reference: Stats,
                   data_images: np.ndarray) -> dict:
  """Classifier-FID against `reference` (with its bootstrap spread over the samples),
  mean intensity and on-pixel fraction of `samples` and of `data_images`, and the
  class histogram the classifier assigns.

  Samples with non-finite pixels (a diverged sampler) are counted in
  'nonfinite_samples', and those pixels scored as 0 (black), so that the metrics stay
  defined and such samples count against the model.
  """
  samples = to_unit(samples)
  bad = ~np.isfinite(samples)
  nonfinite = int(np.sum(bad.reshape(len(samples), -1).any(-1)))
  if nonfinite:
    samples = np.where(bad, 0.0, samples).astype(np.float32)
  data = to_unit(data_images)
  counts = np.bincount(classifier.predict(samples), minlength=classifier.module.num_classes)
  feats = classifier.features(samples)
  return {"fid": frechet_distance(*feature_stats(feats), *reference),
          "fid_bootstrap_std": bootstrap_fid_std(feats, reference),
          "num_samples": int(len(samples)),
          "nonfinite_samples": nonfinite,
          "mean_intensity": mean_intensity(samples),
          "data_mean_intensity": mean_intensity(data),
          "on_fraction": on_pixel_fraction(samples),
          "data_on_fraction": on_pixel_fraction(data),
          "predicted_class_counts": [int(c) for c in counts]}
