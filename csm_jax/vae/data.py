"""VAE data: the reference's train/validation split and per-batch binarization.

Images stay uint8 (N, D) on the host; a batch is turned into model inputs on the device
by `prepare`, with a key that is a function of (seed, step) only (`batch_keys`), so a
restarted run sees the same binarizations:

  binarize    x ~ Bernoulli(pixel / 255), drawn afresh for every batch (dynamic
              binarization; the reference does the same for its validation batches)
  dequantize  x = 2 pixel / 255 - 1 + (u - 1/2) / 128, u ~ U(0, 1) (CelebA, in [-1, 1])
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from csm_jax import data as data_lib


class VAEData(NamedTuple):
  """uint8 (N, D) arrays: the training part of the train split, the held-out
  validation part, and the test split; `shape` is one example's (H, W, C)."""
  train: np.ndarray
  validation: np.ndarray
  test: np.ndarray
  shape: tuple


def split(arrays: data_lib.Arrays, validation_fraction: float = 0.2,
          seed: int = 2019) -> VAEData:
  """Flattens images and holds out a fixed random `validation_fraction` of the training
  split (the first 1 - fraction of a permutation train, the rest validates)."""
  if not arrays.discrete:
    raise ValueError("the VAE experiments read 8-bit images (MNIST, CelebA)")
  flat = lambda a: np.asarray(a).reshape(len(a), -1)
  n = len(arrays.train)
  perm = np.random.default_rng(seed).permutation(n)
  cut = int(n * (1.0 - validation_fraction))
  train = flat(arrays.train)
  return VAEData(train[np.sort(perm[:cut])], train[np.sort(perm[cut:])], flat(arrays.test),
                 tuple(arrays.shape))


def train_batch(data: VAEData, batch_size: int, step: int, seed: int) -> np.ndarray:
  """uint8 training batch `step` (B, D): a pure function of (step, seed)."""
  return data.train[data_lib.batch_indices(len(data.train), batch_size, step, seed)]


def fixed_batch(images: np.ndarray, batch_size: int, i: int) -> np.ndarray:
  """Batch i of a fixed split, in order, wrapping around."""
  return images[np.arange(i * batch_size, (i + 1) * batch_size) % len(images)]


def batch_keys(seed: int, step):
  """(data, score, vae) keys of training step `step` (an int or a traced scalar)."""
  key = jax.random.fold_in(jax.random.PRNGKey(seed + 1), step)
  return tuple(jax.random.split(key, 3))


def prepare(images, key, likelihood: str):
  """uint8 images (B, D) -> model inputs: binarized (bernoulli) or dequantized to
  [-1, 1] (gaussian)."""
  pixels = images.astype(jnp.float32) / 255.0
  if likelihood == "bernoulli":
    return (jax.random.uniform(key, pixels.shape) < pixels).astype(jnp.float32)
  noise = jax.random.uniform(key, pixels.shape) - 0.5
  return 2.0 * pixels - 1.0 + noise / 128.0


def to_display(x, likelihood: str):
  """Model space -> [0, 1] for pictures."""
  return x if likelihood == "bernoulli" else (x + 1.0) / 2.0
