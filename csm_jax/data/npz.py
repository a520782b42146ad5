"""Datasets from .npz files: reading, test-set selection and validation.

uint8 arrays are images (N, H, W, C) with pixel values 0..255; floating arrays are
real-valued data, flattened to (N, D) float32. Anything else is refused with a message
that says what was found.
"""

from __future__ import annotations

import glob
import os
from typing import Any, Optional

import numpy as np

from csm_jax.data.sources import Arrays, CorruptDataError


def _resolve_npz_dir(path: str) -> tuple[str, Optional[str]]:
  """A directory with exactly one .npz, or one train*.npz (+ optional test*.npz)."""
  files = sorted(glob.glob(os.path.join(path, '*.npz')))
  train = [f for f in files if os.path.basename(f).startswith('train')]
  test = [f for f in files if os.path.basename(f).startswith('test')]
  if len(files) == 1:
    return files[0], None
  if len(train) == 1 and len(test) <= 1:
    return train[0], (test[0] if test else None)
  raise CorruptDataError(
      f'npz directory {path!r} is ambiguous: expected one .npz file, or one train*.npz '
      f'and at most one test*.npz; found {[os.path.basename(f) for f in files]}.')


_ZIP_MAGICS = (b'PK\x03\x04', b'PK\x05\x06')  # a zip's first entry; an empty zip
_NPY_MAGIC = b'\x93NUMPY'


def _detail(e: BaseException) -> str:
  """`e` as ' (Type: message)' for an error message; numpy's own advice is left out."""
  text = str(e)
  if 'pickle' in text:  # numpy suggests loading pickles; csm_jax never does
    return ''
  kind = type(e).__name__
  if type(e).__module__ not in ('builtins', 'numpy'):
    kind = f'{type(e).__module__}.{kind}'  # e.g. zlib.error, zipfile.BadZipFile
  return f' ({kind}: {text})' if text else f' ({kind})'


def _member_dtype(f: Any, key: str) -> Optional[np.dtype]:
  """The dtype in the .npy header of array `key` of the open npz `f`; None if unreadable."""
  names = f.zip.namelist()
  name = key if key in names else key + '.npy'
  try:
    with f.zip.open(name) as member:
      version = np.lib.format.read_magic(member)
      header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                else np.lib.format.read_array_header_2_0)
      return header(member)[2]
  except Exception:  # pylint: disable=broad-except  (damaged header: caller reports it)
    return None


def _read_npz(path: str) -> dict:
  """All arrays of the .npz at `path`, read into memory; never unpickles anything.

  A file that is there but cannot be read raises `CorruptDataError` (a ValueError)
  naming the file and what is wrong: not an npz (zip) archive, truncated or damaged, or
  holding an array of dtype object (pickled Python objects, which are never loaded).
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f'npz file not found: {path!r}.')
  size = os.path.getsize(path)
  with open(path, 'rb') as raw:
    magic = raw.read(6)
  if size == 0:
    raise CorruptDataError(f'npz file {path!r} is empty (0 bytes): not a valid .npz '
                           'archive. Re-create it with np.savez.')
  if magic == _NPY_MAGIC:
    raise CorruptDataError(
        f'npz file {path!r} is a single .npy array, not a .npz archive. Save it with '
        "np.savez(path, x=array) (key 'x', or 'train' and 'test').")
  if not magic.startswith(_ZIP_MAGICS):
    raise CorruptDataError(
        f'npz file {path!r} is not a valid .npz archive: it is not a zip file (first '
        f'bytes {magic[:4]!r}, expected {_ZIP_MAGICS[0]!r}). It may be damaged or of '
        'another format; re-create it with np.savez.')
  try:
    f = np.load(path, allow_pickle=False)
  except (MemoryError, PermissionError):
    raise
  except Exception as e:
    raise CorruptDataError(
        f'npz file {path!r} ({size} bytes) is truncated or damaged: it starts like a '
        f'zip archive but its index cannot be read{_detail(e)}. Re-create or re-copy '
        'it.') from e
  with f:
    data = {}
    for key in f.files:
      try:
        value = f[key]
      except (MemoryError, PermissionError):
        raise
      except Exception as e:
        dtype = _member_dtype(f, key)
        if dtype is not None and dtype.hasobject:
          raise CorruptDataError(
              f'npz file {path!r}: array {key!r} has dtype object (pickled Python '
              'objects), which csm_jax never loads. Save numeric arrays instead: uint8 '
              'images or floating point data.') from None  # numpy's error is about pickles
        raise CorruptDataError(
            f'npz file {path!r} ({size} bytes): array {key!r} is truncated or damaged'
            f'{_detail(e)}. Re-create or re-copy the file.') from e
      if not isinstance(value, np.ndarray):
        raise CorruptDataError(
            f'npz file {path!r}: member {key!r} is not a .npy array (no .npy header); '
            'not a valid .npz archive. Re-create it with np.savez.')
      data[key] = value
    return data


def _check_array(x: np.ndarray, what: str) -> np.ndarray:
  """uint8 (N, H, W, C) images, or finite float (N, ...) real-valued data."""
  x = np.asarray(x)
  if x.dtype == np.uint8:
    if x.ndim != 4:
      raise CorruptDataError(f'{what}: uint8 images must be (N, H, W, C); got shape '
                       f'{x.shape} (add a channel axis for grayscale: x[..., None]).')
  elif np.issubdtype(x.dtype, np.floating):
    if x.ndim < 2:
      raise CorruptDataError(f'{what}: real-valued data must be (N, D) or (N, ...); got '
                       f'shape {x.shape}.')
    if not np.all(np.isfinite(x)):
      raise CorruptDataError(f'{what}: contains NaN or inf values.')
    x = x.astype(np.float32, copy=False)
  else:
    raise CorruptDataError(f'{what}: dtype {x.dtype} not supported; use uint8 images '
                     '(pixel values 0..255) or floating point data.')
  if len(x) == 0:
    raise CorruptDataError(f'{what}: no examples.')
  return x


def load_npz(path: str, test_path: Optional[str] = None) -> Arrays:
  """Loads data from .npz.

  ``path`` holds 'train' and 'test', or 'train' / 'x' alone; then the test set is
  ``test_path``'s 'x' (or 'test'), or, without one, the last 10% (held out, in order).
  ``path`` may be a directory (see `_resolve_npz_dir`). An empty ``test_path`` is unset.
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
    raise CorruptDataError(f"{path!r}: expected key 'train' (and 'test') or 'x'; found keys "
                     f'{sorted(data)}.')
  if test_path:
    test_path = os.path.expanduser(str(test_path))
    tdata = _read_npz(test_path)
    key = 'x' if 'x' in tdata else 'test' if 'test' in tdata else None
    if key is None:
      raise CorruptDataError(f"{test_path!r}: expected key 'x' or 'test'; found keys "
                       f'{sorted(tdata)}.')
    test = tdata[key]
  elif 'test' in data:
    test = data['test']
  else:
    train = _check_array(train, f'{path}:train')
    if len(train) < 2:
      raise CorruptDataError(f'{path!r}: need at least 2 examples to hold out a test set.')
    n_test = max(1, len(train) // 10)
    train, test = train[:-n_test], train[-n_test:]
  train = _check_array(train, f'{path}:train')
  test = _check_array(test, f'{test_path or path}:test')
  if train.shape[1:] != test.shape[1:] or train.dtype != test.dtype:
    raise CorruptDataError(f'train and test differ: train {train.dtype}{train.shape[1:]} vs '
                     f'test {test.dtype}{test.shape[1:]} per example.')
  discrete = train.dtype == np.uint8
  if not discrete:
    train = train.reshape(len(train), -1)
    test = test.reshape(len(test), -1)
  return Arrays(train, test, tuple(int(s) for s in train.shape[1:]), bool(discrete))
