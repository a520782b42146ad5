"""Data for csm_jax: tfds images, npz files, synthetic densities; preprocessing.

Everything here is host-side numpy. Images stay uint8 (N, H, W, C) in memory and are
turned into float32 (B, D) model inputs per batch by a `Preprocessor` (uniform
dequantization, scaling, optional logit as in MAF). Batch order is a pure function of
(step, seed) (`batch_indices`), so a restarted run sees bit-identical batches.

Modules: `sources` (Arrays, `load_arrays` dispatch on ``config.data``), `tfds_source`,
`npz`, `toy` (synthetic densities), `preprocess`, `batching`. Every field read here is
declared, with its default, in `csm_jax.config_base.default_config().data`.
"""

from csm_jax.data.batching import batch_indices, dequant_rng
from csm_jax.data.npz import load_npz
from csm_jax.data.preprocess import Preprocessor, get_preprocessor
from csm_jax.data.sources import (Arrays, CorruptDataError, DataNotFoundError,
                                  IMAGE_SHAPES, image_shape, load_arrays)
from csm_jax.data.tfds_source import TFDS_NAMES, celeba_transform, resolve_data_dir
from csm_jax.data.toy import TOY2D_NAMES, gaussian_covariance, toy2d_sample

__all__ = [
    'Arrays', 'CorruptDataError', 'DataNotFoundError', 'IMAGE_SHAPES', 'Preprocessor',
    'TFDS_NAMES', 'TOY2D_NAMES', 'batch_indices', 'celeba_transform', 'dequant_rng',
    'gaussian_covariance', 'get_preprocessor', 'image_shape', 'load_arrays', 'load_npz',
    'resolve_data_dir', 'toy2d_sample',
]
