"""Data for csm_jax: tfds images, npz files, synthetic densities; preprocessing.

Everything here is host-side numpy. Images stay uint8 (N, H, W, C) in memory and are
turned into float32 (B, D) model inputs per batch by a `Preprocessor` (uniform
dequantization, scaling, optional logit as in MAF). Batch order is a pure function of
(step, seed) (`batch_indices`), so a restarted run sees bit-identical batches.

Sources (``config.data.dataset``, or ``config.data.source`` to read a named image set
from a file instead of tfds, e.g. ``dataset=cifar10, source=npz, path=subset.npz``):
  mnist | cifar10 | celeba | svhn   tensorflow-datasets, read with `tfds.data_source`
                                    (array_record; TensorFlow is not needed to read).
                                    Decoded once, cached as .npy in ``cache_dir``.
  npz                               a .npz file (or a directory holding train/test .npz).
  gaussian                          N(0, Sigma), Sigma a random well-conditioned matrix.
  toy2d                             2-D densities: ring8, moons, checkerboard, spirals,
                                    pinwheel, rings.
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import hashlib
import logging
import math
import os
import socket
import tempfile
import threading
import time
from typing import Any, Callable, NamedTuple, Optional, Sequence

import numpy as np

logger = logging.getLogger(__name__)

__all__ = [
    'Arrays', 'DataNotFoundError', 'Preprocessor', 'TOY2D_NAMES', 'batch_indices',
    'bits_per_dim', 'dequant_rng', 'gaussian_covariance', 'get_preprocessor',
    'load_arrays', 'load_npz', 'resolve_data_dir', 'toy2d_sample',
]

# dataset name in the config -> tfds name; image feature key is 'image' for all.
TFDS_NAMES = {'mnist': 'mnist', 'cifar10': 'cifar10', 'celeba': 'celeb_a',
              'svhn': 'svhn_cropped'}
TFDS_SPLITS = ('train', 'test')
# per-example (H, W, C) of the named image sets (celeba: data.image_size, see image_shape)
IMAGE_SHAPES = {'mnist': (28, 28, 1), 'cifar10': (32, 32, 3), 'svhn': (32, 32, 3)}
DEFAULT_CACHE_DIR = os.path.join('~', '.cache', 'csm_jax')
_NETWORK_HOST = ('storage.googleapis.com', 443)


class DataNotFoundError(RuntimeError):
  """A dataset is not available locally and cannot be prepared here."""


class Arrays(NamedTuple):
  """In-memory dataset. Images: uint8 (N, H, W, C); synthetic: float32 (N, D)."""
  train: np.ndarray
  test: np.ndarray
  shape: tuple          # per-example shape, e.g. (28, 28, 1) or (2,)
  discrete: bool        # True for uint8 pixel values 0..255

  @property
  def dim(self) -> int:
    """D, the number of dimensions of one flattened example."""
    return int(np.prod(self.shape))


def _get(cfg: Any, key: str, default: Any = None) -> Any:
  """cfg.get(key) for ConfigDict / dict / plain objects; None means `default`."""
  if cfg is None:
    return default
  if hasattr(cfg, 'get'):
    value = cfg.get(key, None)
  else:
    value = getattr(cfg, key, None)
  return default if value is None else value


# --------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------


def image_shape(data_config: Any, dataset: str) -> tuple:
  """(H, W, C) of one example of a named image dataset, as the model will see it."""
  if dataset == 'celeba':
    size = int(_get(data_config, 'image_size', 32))
    return (size, size, 3)
  return IMAGE_SHAPES[dataset]


def _load_named_npz(data_config: Any, dataset: str) -> Arrays:
  """A named image set read from npz (``data.source='npz'``), its shape checked."""
  path = _get(data_config, 'path')
  if not path:
    raise ValueError(f"data.source='npz' needs data.path (a .npz file or directory) for "
                     f'data.dataset={dataset!r}.')
  arrays = load_npz(path, _get(data_config, 'test_path'))
  want = image_shape(data_config, dataset)
  if not arrays.discrete or arrays.shape != want:
    got = f"{'uint8' if arrays.discrete else 'float32'} {arrays.shape}"
    raise ValueError(f'data.dataset={dataset!r} expects uint8 images of shape {want} per '
                     f'example, but {path!r} holds {got}. Point data.path at {dataset} '
                     "images, or use data.dataset='npz' for arbitrary arrays.")
  return arrays


def load_arrays(data_config: Any) -> Arrays:
  """Loads the dataset named by ``data_config.dataset`` (from ``data.source``) into memory."""
  dataset = str(_get(data_config, 'dataset', '')).lower()
  source = str(_get(data_config, 'source', '') or 'auto').lower()
  if source not in ('auto', 'tfds', 'npz'):
    raise ValueError(f"data.source must be 'auto', 'tfds' or 'npz', got {source!r}.")
  if source != 'auto' and dataset not in TFDS_NAMES and dataset != 'npz':
    raise ValueError(f'data.source={source!r} applies to the image datasets '
                     f'{sorted(TFDS_NAMES)}, not to data.dataset={dataset!r}.')
  if dataset in TFDS_NAMES:
    if source == 'npz':
      return _load_named_npz(data_config, dataset)
    return _load_tfds(data_config, dataset)
  if dataset == 'npz':
    if source == 'tfds':
      raise ValueError("data.dataset='npz' reads data.path; it has no tfds source.")
    path = _get(data_config, 'path')
    if not path:
      raise ValueError("data.dataset='npz' needs data.path (a .npz file or directory).")
    return load_npz(path, _get(data_config, 'test_path'))
  if dataset == 'gaussian':
    dim = int(_get(data_config, 'dim', 2))
    seed = int(_get(data_config, 'seed', 0))
    cov = gaussian_covariance(dim, seed)
    chol = np.linalg.cholesky(cov)

    def draw(n, stream):
      z = np.random.default_rng([seed, stream]).standard_normal((n, dim))
      return (z @ chol.T).astype(np.float32)

    return Arrays(draw(int(_get(data_config, 'num_train', 10000)), 0),
                  draw(int(_get(data_config, 'num_test', 5000)), 1), (dim,), False)
  if dataset == 'toy2d':
    name = _get(data_config, 'name', 'ring8')
    seed = int(_get(data_config, 'seed', 0))
    train = toy2d_sample(name, int(_get(data_config, 'num_train', 10000)),
                         np.random.default_rng([seed, 0]))
    test = toy2d_sample(name, int(_get(data_config, 'num_test', 5000)),
                        np.random.default_rng([seed, 1]))
    return Arrays(train, test, (2,), False)
  valid = sorted(TFDS_NAMES) + ['gaussian', 'npz', 'toy2d']
  raise ValueError(f'Unknown data.dataset {dataset!r}; valid: {valid}.')


# --------------------------------------------------------------------------------------
# tensorflow-datasets (array_record, no TensorFlow needed to read)
# --------------------------------------------------------------------------------------


def resolve_data_dir(data_dir: Optional[str] = None) -> str:
  """config value > $TFDS_DATA_DIR > ~/tensorflow_datasets, as an absolute path.

  Resolved here, not by tfds: tfds reads TFDS_DATA_DIR once, at import.
  """
  data_dir = data_dir or os.environ.get('TFDS_DATA_DIR') or os.path.join(
      '~', 'tensorflow_datasets')
  return os.path.abspath(os.path.expanduser(str(data_dir)))


def _network_available(timeout: float = 3.0) -> bool:
  """Whether the tfds download host answers within `timeout` seconds (DNS included)."""
  result = []

  def probe():
    try:
      with socket.create_connection(_NETWORK_HOST, timeout=timeout):
        result.append(True)
    except OSError:
      result.append(False)

  thread = threading.Thread(target=probe, daemon=True)
  thread.start()
  thread.join(timeout + 0.5)
  return bool(result and result[0])


def _tensorflow_available() -> bool:
  try:
    import tensorflow  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    return False
  return True


def _is_prepared(builder: Any) -> bool:
  """Purely local check: <data_dir>/<name>/<version>/dataset_info.json exists."""
  return os.path.isfile(os.path.join(str(builder.data_path), 'dataset_info.json'))


def _ensure_prepared(tfds_name: str, data_dir: str) -> Any:
  """Returns a tfds builder whose data is prepared in `data_dir` as array_record.

  Prepares it (download) only when the network is up and TensorFlow is installed;
  otherwise raises DataNotFoundError at once instead of letting tfds retry for minutes.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = tfds.builder(tfds_name, data_dir=data_dir)
  if not _is_prepared(builder):
    where = str(builder.data_path)
    other = sorted(os.path.basename(os.path.dirname(p)) for p in glob.glob(
        os.path.join(data_dir, tfds_name, '*', 'dataset_info.json')))
    found = (f' (found other versions: {other}; this tfds expects {builder.version})'
             if other else '')
    if not _network_available():
      raise DataNotFoundError(
          f'tfds dataset {tfds_name!r} {builder.version} is not prepared in the data '
          f'dir {data_dir!r} (looked for {where}/dataset_info.json){found}, and there '
          'is no network to download it. The data dir is data.data_dir if set, else '
          '$TFDS_DATA_DIR, else ~/tensorflow_datasets. Fix: point TFDS_DATA_DIR (or '
          '--config.data.data_dir) at a directory holding a prepared copy, or use '
          "--config.data.source=npz with --config.data.path=<file.npz>.")
    if not _tensorflow_available():
      raise DataNotFoundError(
          f'tfds dataset {tfds_name!r} is not prepared in {data_dir!r}. Preparing it '
          '(download + conversion) needs TensorFlow, which is not installed: install '
          'the prepare extra, pip install -e ".[prepare]", or set TFDS_DATA_DIR / '
          '--config.data.data_dir to a prepared copy.')
    logger.info('Preparing tfds %s in %s (array_record).', tfds_name, data_dir)
    builder.download_and_prepare(file_format='array_record')
    builder = tfds.builder(tfds_name, data_dir=data_dir)
  path = str(builder.data_path)
  if (not glob.glob(os.path.join(path, '*.array_record*'))
      and glob.glob(os.path.join(path, '*.tfrecord*'))):
    raise DataNotFoundError(
        f'tfds dataset {tfds_name!r} in {path} is prepared as tfrecord only, but '
        'random access needs array_record. Re-prepare it with tfds.builder(...)'
        ".download_and_prepare(file_format='array_record') (TensorFlow needed once).")
  return builder


def _getitems(source: Any, indices: Sequence[int]) -> list:
  """Batched random access to a tfds data source (falls back to one at a time)."""
  try:
    return list(source.__getitems__(list(indices)))
  except (TypeError, AttributeError, NotImplementedError):
    return [source[i] for i in indices]


def _decode_source(source: Any, transform: Optional[Callable[[np.ndarray], np.ndarray]],
                   chunk: int = 10000) -> np.ndarray:
  """Decodes all images of a data source into one uint8 (N, H, W, C) array."""
  n = len(source)
  out = None
  for start in range(0, n, chunk):
    items = _getitems(source, range(start, min(n, start + chunk)))
    images = [np.asarray(item['image']) for item in items]
    if transform is not None:
      images = [transform(im) for im in images]
    images = np.stack(images).astype(np.uint8, copy=False)
    if out is None:
      out = np.empty((n,) + images.shape[1:], np.uint8)
    out[start:start + len(images)] = images
  if out is None:
    raise DataNotFoundError(f'Data source {source!r} is empty.')
  return out


def celeba_transform(image: np.ndarray, crop: int = 140, size: int = 32) -> np.ndarray:
  """Centre crop (crop x crop) of an aligned CelebA image, then resize (Lanczos)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  h, w = image.shape[:2]
  crop_h, crop_w = min(crop, h), min(crop, w)
  top, left = (h - crop_h) // 2, (w - crop_w) // 2
  image = image[top:top + crop_h, left:left + crop_w]
  if image.shape[:2] != (size, size):
    image = np.asarray(Image.fromarray(image).resize((size, size), Image.LANCZOS))
  return image.reshape(size, size, -1)


def _save_atomic(path: str, array: np.ndarray) -> None:
  """np.save to a temporary file in the same directory, then os.replace."""
  directory = os.path.dirname(path)
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix='.tmp-', suffix='.npy')
  try:
    with os.fdopen(fd, 'wb') as f:
      np.save(f, array)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def _load_tfds(data_config: Any, dataset: str) -> Arrays:
  tfds_name = TFDS_NAMES[dataset]
  data_dir = resolve_data_dir(_get(data_config, 'data_dir'))
  cache_dir = os.path.abspath(os.path.expanduser(
      str(_get(data_config, 'cache_dir', DEFAULT_CACHE_DIR))))
  transform, tag = None, ''
  if dataset == 'celeba':
    crop, size = int(_get(data_config, 'crop', 140)), int(_get(data_config, 'image_size', 32))
    transform = functools.partial(celeba_transform, crop=crop, size=size)
    tag = f'crop{crop}-size{size}'

  builder = _ensure_prepared(tfds_name, data_dir)
  key = hashlib.sha1(f'{os.path.realpath(data_dir)}|{tag}'.encode()).hexdigest()[:12]
  splits = {}
  for split in TFDS_SPLITS:
    path = os.path.join(cache_dir, f'{tfds_name}-{builder.version}-{split}'
                        f'{"-" + tag if tag else ""}-{key}.npy')
    splits[split] = _cached_split(builder, split, path, transform)
  shape = splits['train'].shape[1:]
  return Arrays(splits['train'], splits['test'], tuple(int(s) for s in shape), True)


def _cached_split(builder: Any, split: str, path: str,
                  transform: Optional[Callable]) -> np.ndarray:
  expected = None
  try:
    expected = int(builder.info.splits[split].num_examples)
  except Exception:  # pylint: disable=broad-except  (info without splits, e.g. mocks)
    pass
  if os.path.isfile(path):
    try:
      array = np.load(path)
      if array.dtype == np.uint8 and array.ndim == 4 and (
          expected is None or len(array) == expected):
        return array
      logger.warning('Ignoring stale cache %s.', path)
    except (OSError, ValueError) as e:
      logger.warning('Ignoring unreadable cache %s: %s', path, e)
  start = time.time()
  source = builder.as_data_source(split=split)
  array = _decode_source(source, transform)
  logger.info('Decoded %s/%s: %s in %.1fs.', builder.name, split, array.shape,
              time.time() - start)
  try:
    _save_atomic(path, array)
  except OSError as e:
    logger.warning('Could not write cache %s: %s', path, e)
  return array


# --------------------------------------------------------------------------------------
# npz
# --------------------------------------------------------------------------------------


def _resolve_npz_dir(path: str) -> tuple[str, Optional[str]]:
  """A directory with exactly one .npz, or one train*.npz (+ optional test*.npz)."""
  files = sorted(glob.glob(os.path.join(path, '*.npz')))
  train = [f for f in files if os.path.basename(f).startswith('train')]
  test = [f for f in files if os.path.basename(f).startswith('test')]
  if len(files) == 1:
    return files[0], None
  if len(train) == 1 and len(test) <= 1:
    return train[0], (test[0] if test else None)
  raise ValueError(
      f'npz directory {path!r} is ambiguous: expected one .npz file, or one train*.npz '
      f'and at most one test*.npz; found {[os.path.basename(f) for f in files]}.')


def _read_npz(path: str) -> dict:
  if not os.path.isfile(path):
    raise FileNotFoundError(f'npz file not found: {path!r}.')
  with np.load(path, allow_pickle=False) as f:
    return {k: f[k] for k in f.files}


def _check_array(x: np.ndarray, what: str) -> np.ndarray:
  """uint8 (N, H, W, C) images, or finite float (N, ...) real-valued data."""
  x = np.asarray(x)
  if x.dtype == np.uint8:
    if x.ndim != 4:
      raise ValueError(f'{what}: uint8 images must be (N, H, W, C); got shape '
                       f'{x.shape} (add a channel axis for grayscale: x[..., None]).')
  elif np.issubdtype(x.dtype, np.floating):
    if x.ndim < 2:
      raise ValueError(f'{what}: real-valued data must be (N, D) or (N, ...); got '
                       f'shape {x.shape}.')
    if not np.all(np.isfinite(x)):
      raise ValueError(f'{what}: contains NaN or inf values.')
    x = x.astype(np.float32, copy=False)
  else:
    raise ValueError(f'{what}: dtype {x.dtype} not supported; use uint8 images '
                     '(pixel values 0..255) or floating point data.')
  if len(x) == 0:
    raise ValueError(f'{what}: no examples.')
  return x


def load_npz(path: str, test_path: Optional[str] = None) -> Arrays:
  """Loads data from .npz.

  ``path`` holds 'train' and 'test', or 'train' / 'x' alone; then the test set is
  ``test_path``'s 'x' (or 'test'), or, without one, the last 10% (held out, in order).
  ``path`` may be a directory (see `_resolve_npz_dir`).
  """
  path = os.path.expanduser(str(path))
  if os.path.isdir(path):
    path, dir_test = _resolve_npz_dir(path)
    test_path = test_path or dir_test
  data = _read_npz(path)
  if 'train' in data:
    train = data['train']
  elif 'x' in data:
    train = data['x']
  else:
    raise ValueError(f"{path!r}: expected key 'train' (and 'test') or 'x'; found keys "
                     f'{sorted(data)}.')
  if test_path:
    test_path = os.path.expanduser(str(test_path))
    tdata = _read_npz(test_path)
    key = 'x' if 'x' in tdata else 'test' if 'test' in tdata else None
    if key is None:
      raise ValueError(f"{test_path!r}: expected key 'x' or 'test'; found keys "
                       f'{sorted(tdata)}.')
    test = tdata[key]
  elif 'test' in data:
    test = data['test']
  else:
    train = _check_array(train, f'{path}:train')
    if len(train) < 2:
      raise ValueError(f'{path!r}: need at least 2 examples to hold out a test set.')
    n_test = max(1, len(train) // 10)
    train, test = train[:-n_test], train[-n_test:]
  train = _check_array(train, f'{path}:train')
  test = _check_array(test, f'{test_path or path}:test')
  if train.shape[1:] != test.shape[1:] or train.dtype != test.dtype:
    raise ValueError(f'train and test differ: train {train.dtype}{train.shape[1:]} vs '
                     f'test {test.dtype}{test.shape[1:]} per example.')
  discrete = train.dtype == np.uint8
  if not discrete:
    train = train.reshape(len(train), -1)
    test = test.reshape(len(test), -1)
  return Arrays(train, test, tuple(int(s) for s in train.shape[1:]), bool(discrete))


# --------------------------------------------------------------------------------------
# Synthetic data
# --------------------------------------------------------------------------------------


def gaussian_covariance(dim: int, seed: int) -> np.ndarray:
  """Random full covariance Q diag(lam) Q^T, lam in [0.5, 2] (condition number <= 4).

  float64, symmetric positive definite, a deterministic function of (dim, seed).
  """
  rng = np.random.default_rng([seed, dim, 7])
  q, r = np.linalg.qr(rng.standard_normal((dim, dim)))
  q = q * np.sign(np.diag(r))
  eig = rng.uniform(0.5, 2.0, size=dim)
  cov = (q * eig) @ q.T
  return 0.5 * (cov + cov.T)


def _ring8(n, rng):
  angles = 2 * np.pi * np.arange(8) / 8
  centers = 2.0 * np.stack([np.cos(angles), np.sin(angles)], 1) * np.sqrt(2)
  return centers[rng.integers(0, 8, n)] + 0.5 / np.sqrt(2) * rng.standard_normal((n, 2))


def _moons(n, rng):
  upper = rng.random(n) < 0.5
  t = np.pi * rng.random(n)
  x = np.where(upper, np.cos(t), 1 - np.cos(t))
  y = np.where(upper, np.sin(t), 0.5 - np.sin(t))
  pts = np.stack([x, y], 1) + 0.1 * rng.standard_normal((n, 2))
  return 2 * pts + np.array([-1.0, -0.25])


def _checkerboard(n, rng):
  x1 = 4 * rng.random(n) - 2
  x2 = rng.random(n) - 2 * rng.integers(0, 2, n) + np.floor(x1) % 2
  return 2 * np.stack([x1, x2], 1)


def _spirals(n, rng):
  t = np.sqrt(rng.random(n)) * 3 * np.pi
  sign = np.where(rng.random(n) < 0.5, 1.0, -1.0)[:, None]
  pts = np.stack([-np.cos(t) * t, np.sin(t) * t], 1) + 0.5 * rng.random((n, 2))
  return sign * pts / 3 + 0.1 * rng.standard_normal((n, 2))


def _pinwheel(n, rng, num_classes=5, radial_std=0.3, tangential_std=0.1, rate=0.25):
  labels = rng.integers(0, num_classes, n)
  feats = rng.standard_normal((n, 2)) * np.array([radial_std, tangential_std])
  feats[:, 0] += 1.0
  angles = 2 * np.pi * labels / num_classes + rate * np.exp(feats[:, 0])
  c, s = np.cos(angles), np.sin(angles)
  return 2 * np.stack([c * feats[:, 0] - s * feats[:, 1],
                       s * feats[:, 0] + c * feats[:, 1]], 1)


def _rings(n, rng):
  radii = 3 * np.array([1.0, 0.75, 0.5, 0.25])
  r = radii[rng.integers(0, 4, n)]
  t = 2 * np.pi * rng.random(n)
  return r[:, None] * np.stack([np.cos(t), np.sin(t)], 1) + 0.08 * rng.standard_normal(
      (n, 2))


_TOY2D = {'ring8': _ring8, 'moons': _moons, 'checkerboard': _checkerboard,
          'spirals': _spirals, 'pinwheel': _pinwheel, 'rings': _rings}
TOY2D_NAMES = tuple(_TOY2D)


def toy2d_sample(name: str, n: int, rng: np.random.Generator) -> np.ndarray:
  """n samples (float32 (n, 2)) of a 2-D toy density, mostly inside [-4, 4]^2."""
  if name not in _TOY2D:
    raise ValueError(f'Unknown toy2d name {name!r}; valid names: {list(TOY2D_NAMES)}.')
  return np.asarray(_TOY2D[name](int(n), rng), np.float32).reshape(int(n), 2)


# --------------------------------------------------------------------------------------
# Preprocessing
# --------------------------------------------------------------------------------------


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


def get_preprocessor(data_config: Any, arrays: Arrays) -> Preprocessor:
  """Preprocessor for `arrays` configured by data.{dequantize, scale, logit_lambda}."""
  return Preprocessor(
      shape=tuple(arrays.shape), discrete=bool(arrays.discrete),
      dequantize=bool(_get(data_config, 'dequantize', True)),
      scale=str(_get(data_config, 'scale', 'unit')),
      logit_lambda=float(_get(data_config, 'logit_lambda', 0.0)))


def bits_per_dim(nll_nats_per_example: Any, dim: int) -> Any:
  """Negative log-likelihood in nats per example -> bits per dimension."""
  return np.asarray(nll_nats_per_example) / (dim * math.log(2.0))


# --------------------------------------------------------------------------------------
# Deterministic batching
# --------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _epoch_permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
  perm = np.random.default_rng([seed, epoch]).permutation(num_examples)
  perm.setflags(write=False)
  return perm


def batch_indices(num_examples: int, batch_size: int, step: int, seed: int) -> np.ndarray:
  """Example indices of batch `step`: a pure function of (step, seed).

  The stream of examples is the concatenation over epochs e = 0, 1, ... of
  default_rng([seed, e]).permutation(num_examples); batch `step` is the slice
  [step * batch_size, (step + 1) * batch_size) of it, so batches cross epoch
  boundaries seamlessly and a restart at any step reproduces the order exactly.
  """
  if num_examples <= 0 or batch_size <= 0 or step < 0:
    raise ValueError(f'Need num_examples > 0, batch_size > 0, step >= 0; got '
                     f'{num_examples}, {batch_size}, {step}.')
  start = int(step) * int(batch_size)
  end = start + int(batch_size)
  out = np.empty(batch_size, np.int64)
  pos = start
  while pos < end:
    epoch, offset = divmod(pos, num_examples)
    take = min(end - pos, num_examples - offset)
    out[pos - start:pos - start + take] = _epoch_permutation(
        int(num_examples), int(seed), int(epoch))[offset:offset + take]
    pos += take
  return out


def dequant_rng(seed: int, step: int) -> np.random.Generator:
  """Generator for the dequantization noise of batch `step` (restart-exact)."""
  return np.random.default_rng([seed, step, 1])
