"""Deterministic batching: batch order and dequantization noise from (step, seed).

A restarted run at any step sees bit-identical batches, with no iterator state to save.
"""

from __future__ import annotations

import functools

import numpy as np


@functools.lru_cache(maxsize=8)
def _epoch_permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
  """default_rng([seed, epoch]).permutation(num_examples), read-only and cached."""
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
