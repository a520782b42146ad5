"""FID (Heusel et al. 2017) in the features of FID's InceptionV3, from a weights file.

`fid_from_weights(samples, reference, path)` is the whole path: load the user's weights
(`csm_jax.inception_weights`), extract pool3 features in batches under jit
(`csm_jax.inception`), fit a Gaussian to each set and take the Frechet distance in
float64 (`csm_jax.image_quality`: `frechet_distance` of `feature_stats`, or for sets
smaller than the 2048 features the same value through their Gram matrices,
`features_frechet_distance`).

Images are (N, H, W, C) floats in [0, 1] (images in [-1, 1]: pass (x + 1) / 2) or uint8
pixels, C = 1 or 3, any H, W (resized to 299). FID from N samples is biased upwards by
an amount that shrinks with N (the usual protocol draws 10 000 or 50 000); compare
models at equal N only.
"""

from typing import Tuple, Union

import numpy as np

from csm_jax import image_quality
from csm_jax import inception
from csm_jax import inception_weights

Stats = Tuple[np.ndarray, np.ndarray]


def _features(variables, images, batch_size: int, size) -> np.ndarray:
  size = inception.INPUT_SIZE if size is None else size
  return inception.features(variables, images, batch_size, size)


def inception_stats(variables, images, batch_size: int = 50,
                    size: int = None) -> Stats:
  """(mean, covariance), float64, of the Inception features of `images`; `size` is the
  network's input size (None: `inception.INPUT_SIZE`, 299)."""
  return image_quality.feature_stats(_features(variables, images, batch_size, size))


def inception_fid(variables, samples, reference: Union[np.ndarray, Stats],
                  batch_size: int = 50, size: int = None) -> float:
  """FID between `samples` and `reference` (images, or their `inception_stats`) under
  the given Flax variables of `inception.FIDInceptionV3`. Two image sets go through
  `image_quality.features_frechet_distance` (exact, and fast for sets under 2048)."""
  samples_features = _features(variables, samples, batch_size, size)
  if isinstance(reference, tuple):
    return image_quality.frechet_distance(*image_quality.feature_stats(samples_features),
                                          *reference)
  return image_quality.features_frechet_distance(
      samples_features, _features(variables, reference, batch_size, size))


def fid_from_weights(samples, reference: Union[np.ndarray, Stats], weights_path: str,
                     batch_size: int = 50, size: int = None) -> float:
  """FID between `samples` and `reference` with the Inception weights in `weights_path`
  (formats: `csm_jax.inception_weights`; a missing or mismatched key raises
  `inception_weights.WeightsError` naming the file and the key)."""
  variables = inception_weights.load_variables(weights_path)
  return inception_fid(variables, samples, reference, batch_size, size)
