"""Datasets from .npz files: reading, test-set selection and validation.

uint8 arrays are images (N, H, W, C) with pixel values 0..255; floating arrays are
real-valued data, flattened to (N, D) float32. Anything else is refused with a message
that says what was found.
"""

from __future__ import annotations

import glob
import os
from typing import Optional

import numpy as np

from csm_jax.data.sources import Arrays


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
  """All arrays of the .npz at `path` (no pickles), read into memory."""
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
