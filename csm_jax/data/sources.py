"""What a dataset is (`Arrays`) and where it comes from (`load_arrays`).

Sources (``config.data.dataset``, or ``config.data.source`` to read a named image set
from a file instead of tfds, e.g. ``dataset=cifar10, source=npz, path=subset.npz``):
  mnist | cifar10 | celeba | svhn   tensorflow-datasets, read with `tfds.data_source`
                                    (array_record; TensorFlow is not needed to read).
                                    Decoded once, cached as .npy in ``cache_dir``.
  npz                               a .npz file (or a directory holding train/test .npz).
  gaussian                          N(0, Sigma), Sigma a random well-conditioned matrix.
  toy2d                             2-D densities: ring8, moons, checkerboard, spirals,
                                    pinwheel, rings.

Every ``data.*`` field read here is declared, with its default, in
`csm_jax.config_base.default_config().data`; readers take the config as given.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from csm_jax import config_base
from csm_jax.data import toy

# per-example (H, W, C) of the named image sets (celeba: data.image_size, see image_shape)
IMAGE_SHAPES = {'mnist': (28, 28, 1), 'cifar10': (32, 32, 3), 'svhn': (32, 32, 3)}


class DataNotFoundError(RuntimeError):
  """A dataset is not available locally and cannot be prepared here."""


class CorruptDataError(ValueError):
  """A data file is there but cannot be read: damaged, truncated or of another format.

  The message names the file (or tfds split and directory) and what is wrong; the
  original error, if any, is chained as ``__cause__``.
  """


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


def image_shape(data_config: Any, dataset: str) -> tuple:
  """(H, W, C) of one example of a named image dataset, as the model will see it."""
  if dataset == 'celeba':
    size = int(data_config.image_size)
    return (size, size, 3)
  return IMAGE_SHAPES[dataset]


def _load_named_npz(data_config: Any, dataset: str) -> Arrays:
  """A named image set read from npz (``data.source='npz'``), its shape checked."""
  from csm_jax.data import npz  # pylint: disable=g-import-not-at-top  (see load_arrays)
  path = data_config.path
  if not path:
    raise config_base.ConfigError(f"data.source='npz' needs data.path (a .npz file or directory) for "
                     f'data.dataset={dataset!r}.')
  arrays = npz.load_npz(path, data_config.test_path)
  want = image_shape(data_config, dataset)
  if not arrays.discrete or arrays.shape != want:
    got = f"{'uint8' if arrays.discrete else 'float32'} {arrays.shape}"
    raise config_base.ConfigError(f'data.dataset={dataset!r} expects uint8 images of shape {want} per '
                     f'example, but {path!r} holds {got}. Point data.path at {dataset} '
                     "images, or use data.dataset='npz' for arbitrary arrays.")
  return arrays


def _load_gaussian(data_config: Any) -> Arrays:
  """N(0, gaussian_covariance(dim, seed)); train and test from independent streams."""
  dim, seed = int(data_config.dim), int(data_config.seed)
  chol = np.linalg.cholesky(toy.gaussian_covariance(dim, seed))

  def draw(n, stream):
    z = np.random.default_rng([seed, stream]).standard_normal((n, dim))
    return (z @ chol.T).astype(np.float32)

  return Arrays(draw(int(data_config.num_train), 0), draw(int(data_config.num_test), 1),
                (dim,), False)


def _load_toy2d(data_config: Any) -> Arrays:
  """The 2-D density data.name; train and test from independent streams."""
  name, seed = data_config.name, int(data_config.seed)
  train = toy.toy2d_sample(name, int(data_config.num_train),
                           np.random.default_rng([seed, 0]))
  test = toy.toy2d_sample(name, int(data_config.num_test),
                          np.random.default_rng([seed, 1]))
  return Arrays(train, test, (2,), False)


def load_arrays(data_config: Any) -> Arrays:
  """Loads the dataset named by ``data_config.dataset`` (from ``data.source``) into memory."""
  # Imported here, not at the top: both loaders import Arrays from this module.
  from csm_jax.data import npz, tfds_source  # pylint: disable=g-import-not-at-top
  dataset = str(data_config.dataset).lower()
  source = str(data_config.source).lower()
  if source not in ('auto', 'tfds', 'npz'):
    raise config_base.ConfigError(f"data.source must be 'auto', 'tfds' or 'npz', got {source!r}.")
  image_sets = tfds_source.TFDS_NAMES
  if source != 'auto' and dataset not in image_sets and dataset != 'npz':
    raise config_base.ConfigError(f'data.source={source!r} applies to the image datasets '
                     f'{sorted(image_sets)}, not to data.dataset={dataset!r}.')
  if dataset in image_sets:
    if source == 'npz':
      return _load_named_npz(data_config, dataset)
    return tfds_source.load_tfds(data_config, dataset)
  if dataset == 'npz':
    if source == 'tfds':
      raise config_base.ConfigError("data.dataset='npz' reads data.path; it has no tfds source.")
    if not data_config.path:
      raise config_base.ConfigError("data.dataset='npz' needs data.path (a .npz file or directory).")
    return npz.load_npz(data_config.path, data_config.test_path)
  if dataset == 'gaussian':
    return _load_gaussian(data_config)
  if dataset == 'toy2d':
    return _load_toy2d(data_config)
  valid = sorted(image_sets) + ['gaussian', 'npz', 'toy2d']
  raise config_base.ConfigError(f'Unknown data.dataset {dataset!r}; valid: {valid}.')
