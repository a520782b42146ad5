"""tensorflow-datasets images (array_record, no TensorFlow needed to read).

Finds or prepares the data in the tfds data dir (`resolve_data_dir`), failing fast when
it is missing and there is no network (`_network_available`) or no TensorFlow to prepare
it; decodes a split once into uint8 (N, H, W, C) (CelebA: centre crop and resize,
`celeba_transform`) and caches it as .npy in ``data.cache_dir``, written atomically and
re-decoded when stale. Shards that cannot be read raise `CorruptDataError` naming the
split and the directory.
"""

from __future__ import annotations

import functools
import glob
import hashlib
import json
import logging
import os
import socket
import threading
import time
from typing import Any, Callable, Optional, Sequence

import numpy as np

from csm_jax.data.sources import Arrays, CorruptDataError, DataNotFoundError

logger = logging.getLogger(__name__)

# dataset name in the config -> tfds name; image feature key is 'image' for all.
TFDS_NAMES = {'mnist': 'mnist', 'cifar10': 'cifar10', 'celeba': 'celeb_a',
              'svhn': 'svhn_cropped'}
TFDS_SPLITS = ('train', 'test')
DEFAULT_CACHE_DIR = os.path.join('~', '.cache', 'csm_jax')
_NETWORK_HOST = ('storage.googleapis.com', 443)


def resolve_data_dir(data_dir: Optional[str] = None) -> str:
  """config value > $TFDS_DATA_DIR > ~/tensorflow_datasets, as an absolute path.

  Resolved here, not by tfds: tfds reads TFDS_DATA_DIR once, at import.
  """
  data_dir = data_dir or os.environ.get('TFDS_DATA_DIR') or os.path.join(
      '~', 'tensorflow_datasets')
  return os.path.abspath(os.path.expanduser(str(data_dir)))


def resolve_cache_dir(cache_dir: Optional[str] = None) -> str:
  """config value (None: ~/.cache/csm_jax), as an absolute path."""
  if cache_dir is None:
    cache_dir = DEFAULT_CACHE_DIR
  return os.path.abspath(os.path.expanduser(str(cache_dir)))


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


def _sha256_array(array: np.ndarray) -> str:
  return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def _source_checksum(builder: Any, split: str) -> str:
  """sha256 of the prepared tfds shard files of `split` (names and bytes): what a cache
  of the split is built from ('' when the builder has no files, e.g. a mock)."""
  h = hashlib.sha256()
  try:
    shards = sorted(glob.glob(os.path.join(str(builder.data_path), f'*-{split}.*')))
  except Exception:  # pylint: disable=broad-except  (mock builders)
    return ''
  for shard in shards:
    h.update(os.path.basename(shard).encode() + b'\0')
    with open(shard, 'rb') as f:
      for block in iter(lambda: f.read(1 << 23), b''):
        h.update(block)
  return h.hexdigest() if shards else ''


def _meta_path(path: str) -> str:
  return path[:-len('.npy')] + '.json' if path.endswith('.npy') else path + '.json'


def _save_atomic(path: str, array: np.ndarray, source: str = '') -> None:
  """np.save atomically (temporary file, fsync, rename), then its checksum record
  PATH.json {array_sha256, source_sha256}, also atomically: a cache without a record
  (a kill between the two) is rebuilt."""
  from csm_jax import atomic  # pylint: disable=g-import-not-at-top
  os.makedirs(os.path.dirname(path), exist_ok=True)
  atomic.save_npy(path, array)
  atomic.write_json(_meta_path(path), {'array_sha256': _sha256_array(array),
                                       'source_sha256': source,
                                       'shape': list(array.shape), 'dtype': str(array.dtype)})


def load_tfds(data_config: Any, dataset: str) -> Arrays:
  """The named image set `dataset` from tfds, both splits, via the .npy cache.

  Reads data.{data_dir, cache_dir} and, for celeba, data.{crop, image_size}. The cache
  key holds the tfds version, the split, the celeba transform and the data dir.
  """
  tfds_name = TFDS_NAMES[dataset]
  data_dir = resolve_data_dir(data_config.data_dir)
  cache_dir = resolve_cache_dir(data_config.cache_dir)
  transform, tag = None, ''
  if dataset == 'celeba':
    crop, size = int(data_config.crop), int(data_config.image_size)
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


def _corrupt_split_error(builder: Any, split: str, error: Exception) -> CorruptDataError:
  """What to raise when reading the shards of `split` failed with `error`."""
  where = str(builder.data_path)
  try:
    shards = sorted(os.path.basename(p) for p in glob.glob(
        os.path.join(where, f'*-{split}.*')))
  except OSError:
    shards = []
  found = f' (shards: {shards})' if shards else ''
  return CorruptDataError(
      f'Could not read tfds dataset {builder.name!r} {builder.version}, split '
      f'{split!r}, from the data dir {where}{found}: {type(error).__name__}: {error}. '
      'The prepared files look truncated or corrupt (e.g. an interrupted copy or '
      'download). Fix: point TFDS_DATA_DIR (or --config.data.data_dir) at a good copy, '
      'or move that directory aside and re-prepare the dataset (needs the network and '
      'TensorFlow).')


def _read_cache(path: str) -> Optional[np.ndarray]:
  """The array in the .npy cache file `path`, or None (with a warning) if unreadable."""
  try:
    with open(path, 'rb') as f:
      if f.read(6) != b'\x93NUMPY':
        logger.warning('Ignoring unreadable cache %s: not a .npy file (damaged?); it '
                       'will be decoded again.', path)
        return None
    return np.load(path, allow_pickle=False)
  except (OSError, ValueError, EOFError) as e:
    reason = 'holds an array of dtype object' if 'pickle' in str(e) else f'{e}'
    logger.warning('Ignoring unreadable cache %s: %s; it will be decoded again.', path,
                   reason)
    return None


def _fresh_cache(builder: Any, split: str, path: str, dtype, ndim: int):
  """The array cached at `path` if it has this dtype and rank and as many examples as
  tfds reports for the split (when it reports any); else None (a stale one is logged)."""
  expected = None
  try:
    expected = int(builder.info.splits[split].num_examples)
  except Exception:  # pylint: disable=broad-except  (info without splits, e.g. mocks)
    pass
  if not os.path.isfile(path):
    return None
  array = _read_cache(path)
  if array is None:
    return None
  if not (array.dtype == dtype and array.ndim == ndim and (
      expected is None or len(array) == expected)):
    logger.warning('Ignoring stale cache %s.', path)
    return None
  try:
    with open(_meta_path(path), 'rb') as f:
      meta = json.loads(f.read().decode('utf-8'))
    recorded, source = meta['array_sha256'], meta['source_sha256']
  except (OSError, ValueError, KeyError, TypeError):
    logger.warning('Ignoring cache %s: no readable checksum record %s (written by an older '
                   'version, or cut short); it will be decoded again.', path,
                   _meta_path(path))
    return None
  if source != _source_checksum(builder, split):
    logger.warning('Ignoring cache %s: the prepared dataset it was built from has changed; '
                   'it will be decoded again.', path)
    return None
  if _sha256_array(array) != recorded:
    logger.warning('Ignoring cache %s: its contents differ from the checksum recorded when '
                   'it was written (damaged or overwritten); it will be decoded again.', path)
    return None
  return array


def _cached_split(builder: Any, split: str, path: str,
                  transform: Optional[Callable]) -> np.ndarray:
  """The decoded split from the cache at `path` if it is fresh, else decoded and saved.

  A cached array is used only when it is uint8 (N, H, W, C) with the number of examples
  tfds reports for the split; an unwritable cache is logged, not fatal.
  """
  array = _fresh_cache(builder, split, path, np.uint8, 4)
  if array is not None:
    return array
  start = time.time()
  try:
    source = builder.as_data_source(split=split)
    array = _decode_source(source, transform)
  except (DataNotFoundError, MemoryError):
    raise
  except Exception as e:
    raise _corrupt_split_error(builder, split, e) from e
  logger.info('Decoded %s/%s: %s in %.1fs.', builder.name, split, array.shape,
              time.time() - start)
  try:
    _save_atomic(path, array, _source_checksum(builder, split))
  except OSError as e:
    logger.warning('Could not write cache %s: %s', path, e)
  return array


def _decode_labels(source: Any, chunk: int = 10000) -> np.ndarray:
  """All class labels of a data source as one int64 (N,) array."""
  n = len(source)
  out = np.empty((n,), np.int64)
  for start in range(0, n, chunk):
    items = _getitems(source, range(start, min(n, start + chunk)))
    out[start:start + len(items)] = [int(np.asarray(item['label'])) for item in items]
  return out


def _cached_labels(builder: Any, split: str, path: str) -> np.ndarray:
  """The class labels of `split` from the .npy cache at `path` if fresh, else decoded
  (image decoding skipped) and saved; same freshness rule as `_cached_split`."""
  array = _fresh_cache(builder, split, path, np.int64, 1)
  if array is not None:
    return array
  try:
    try:
      import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
      source = builder.as_data_source(split=split,
                                      decoders={'image': tfds.decode.SkipDecoding()})
    except (ImportError, TypeError, ValueError):
      source = builder.as_data_source(split=split)
    array = _decode_labels(source)
  except (DataNotFoundError, MemoryError):
    raise
  except Exception as e:
    raise _corrupt_split_error(builder, split, e) from e
  try:
    _save_atomic(path, array, _source_checksum(builder, split))
  except OSError as e:
    logger.warning('Could not write cache %s: %s', path, e)
  return array


def load_tfds_labels(data_config: Any, dataset: str) -> tuple:
  """(train_labels, test_labels): int64 class labels of the named image set, in the
  order of `load_tfds`'s images, cached as .npy beside them (data.{data_dir,
  cache_dir}). For evaluation tools (e.g. the classifier of `image_quality`); the
  generative models never see labels."""
  tfds_name = TFDS_NAMES[dataset]
  data_dir = resolve_data_dir(data_config.data_dir)
  cache_dir = resolve_cache_dir(data_config.cache_dir)
  builder = _ensure_prepared(tfds_name, data_dir)
  key = hashlib.sha1(os.path.realpath(data_dir).encode()).hexdigest()[:12]
  return tuple(_cached_labels(builder, split, os.path.join(
      cache_dir, f'{tfds_name}-{builder.version}-{split}-labels-{key}.npy'))
               for split in TFDS_SPLITS)
