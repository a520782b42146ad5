"""InceptionV3 pool3 features in the FID convention (Heusel et al. 2017), in Flax.

FID's features are the 2048 averages of the last Inception block of the network that the
original TensorFlow FID code froze (the TTUR release; pytorch-fid's `FIDInceptionA/C/E`
and matthias-wright/jax-fid port the same graph). It differs from torchvision's
InceptionV3 in three places, all kept here: the 3x3 average pools inside the A, C and
first E blocks do not count the padding in their divisor, the second E block (Mixed_7c)
pools by max instead of average, and batch norm uses eps = 1e-3 with its stored
statistics. Images are resized bilinearly (half-pixel centres, no antialiasing: torch's
`interpolate(..., align_corners=False)`) to 299 x 299 and mapped to [-1, 1].

This module holds the network and the feature extraction; the parameters come from a
file the user supplies (`csm_jax.inception_weights`: its format and the key list), since
no weights can be downloaded here. Why not depend on a maintained package: the JAX one
on PyPI (jax-fid 0.0.2, 2021) downloads its weights at run time, pins keras, Pillow and
requests, and uses Flax internals that later versions removed; so the network is written
here, and its parameter names follow jax-fid's (`Mixed_5b/branch1x1/conv/kernel`, ...),
so that the weights file jax-fid distributes loads as it is.

The architecture works for any input of at least 75 x 75 (`MIN_INPUT_SIZE`): tests run
it at 75 x 75 with random weights; FID proper uses `INPUT_SIZE` = 299.
"""

from typing import Sequence, Tuple, Union

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

INPUT_SIZE = 299
MIN_INPUT_SIZE = 75
FEATURE_DIM = 2048
BN_EPSILON = 1e-3

Padding = Union[str, Sequence[Tuple[int, int]]]


class ConvBN(nn.Module):
  """Convolution without bias, batch norm from stored statistics, ReLU; the parameters
  are `conv/kernel` (HWIO) and `bn/scale`, `bn/bias`, with `bn/mean`, `bn/var` in the
  'batch_stats' collection."""
  features: int
  kernel: Tuple[int, int]
  strides: Tuple[int, int] = (1, 1)
  padding: Padding = "VALID"

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(self.features, self.kernel, self.strides, padding=self.padding,
                use_bias=False, name="conv")(x)
    x = nn.BatchNorm(use_running_average=True, epsilon=BN_EPSILON, name="bn")(x)
    return nn.relu(x)


def _conv(name: str, features: int, kernel, strides=(1, 1), padding: Padding = "VALID"):
  kernel = (kernel, kernel) if isinstance(kernel, int) else tuple(kernel)
  return ConvBN(features, kernel, tuple(strides), padding, name=name)


def _same(name: str, features: int, kernel):
  """A stride-1 convolution padded to keep the spatial size (odd kernels)."""
  return _conv(name, features, kernel, padding="SAME")


def _avg_pool_3x3(x):
  """3x3, stride 1, padded by 1, divisor = the number of pixels inside the image."""
  return nn.avg_pool(x, (3, 3), (1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3x3(x):
  return nn.max_pool(x, (3, 3), (1, 1), padding=((1, 1), (1, 1)))


def _max_pool_3x3_s2(x):
  return nn.max_pool(x, (3, 3), (2, 2))


class InceptionA(nn.Module):
  """35x35 block (Mixed_5b/c/d): 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avg pool-1x1."""
  pool_features: int

  @nn.compact
  def __call__(self, x):
    b1 = _conv("branch1x1", 64, 1)(x)
    b5 = _same("branch5x5_2", 64, 5)(_conv("branch5x5_1", 48, 1)(x))
    b3 = _conv("branch3x3dbl_1", 64, 1)(x)
    b3 = _same("branch3x3dbl_3", 96, 3)(_same("branch3x3dbl_2", 96, 3)(b3))
    bp = _conv("branch_pool", self.pool_features, 1)(_avg_pool_3x3(x))
    return jnp.concatenate([b1, b5, b3, bp], -1)


class InceptionB(nn.Module):
  """Grid reduction 35 -> 17 (Mixed_6a): strided 3x3 | 1x1-3x3-strided 3x3 | max pool."""

  @nn.compact
  def __call__(self, x):
    b3 = _conv("branch3x3", 384, 3, strides=(2, 2))(x)
    bd = _same("branch3x3dbl_2", 96, 3)(_conv("branch3x3dbl_1", 64, 1)(x))
    bd = _conv("branch3x3dbl_3", 96, 3, strides=(2, 2))(bd)
    return jnp.concatenate([b3, bd, _max_pool_3x3_s2(x)], -1)


class InceptionC(nn.Module):
  """17x17 block (Mixed_6b-e) with factorized 7x7 convolutions of `channels_7x7` units."""
  channels_7x7: int

  @nn.compact
  def __call__(self, x):
    c = self.channels_7x7
    b1 = _conv("branch1x1", 192, 1)(x)
    b7 = _conv("branch7x7_1", c, 1)(x)
    b7 = _same("branch7x7_3", 192, (7, 1))(_same("branch7x7_2", c, (1, 7))(b7))
    bd = _conv("branch7x7dbl_1", c, 1)(x)
    for i, (features, kernel) in enumerate([(c, (7, 1)), (c, (1, 7)), (c, (7, 1)),
                                            (192, (1, 7))], start=2):
      bd = _same(f"branch7x7dbl_{i}", features, kernel)(bd)
    bp = _conv("branch_pool", 192, 1)(_avg_pool_3x3(x))
    return jnp.concatenate([b1, b7, bd, bp], -1)


class InceptionD(nn.Module):
  """Grid reduction 17 -> 8 (Mixed_7a)."""

  @nn.compact
  def __call__(self, x):
    b3 = _conv("branch3x3_2", 320, 3, strides=(2, 2))(_conv("branch3x3_1", 192, 1)(x))
    b7 = _conv("branch7x7x3_1", 192, 1)(x)
    b7 = _same("branch7x7x3_3", 192, (7, 1))(_same("branch7x7x3_2", 192, (1, 7))(b7))
    b7 = _conv("branch7x7x3_4", 192, 3, strides=(2, 2))(b7)
    return jnp.concatenate([b3, b7, _max_pool_3x3_s2(x)], -1)


class InceptionE(nn.Module):
  """8x8 block (Mixed_7b: average pool, Mixed_7c: max pool, as in FID's graph)."""
  max_pool: bool = False

  @nn.compact
  def __call__(self, x):
    b1 = _conv("branch1x1", 320, 1)(x)
    b3 = _conv("branch3x3_1", 384, 1)(x)
    b3 = jnp.concatenate([_same("branch3x3_2a", 384, (1, 3))(b3),
                          _same("branch3x3_2b", 384, (3, 1))(b3)], -1)
    bd = _same("branch3x3dbl_2", 384, 3)(_conv("branch3x3dbl_1", 448, 1)(x))
    bd = jnp.concatenate([_same("branch3x3dbl_3a", 384, (1, 3))(bd),
                          _same("branch3x3dbl_3b", 384, (3, 1))(bd)], -1)
    pooled = _max_pool_3x3(x) if self.max_pool else _avg_pool_3x3(x)
    bp = _conv("branch_pool", 192, 1)(pooled)
    return jnp.concatenate([b1, b3, bd, bp], -1)


class FIDInceptionV3(nn.Module):
  """(B, S, S, 3) inputs in [-1, 1], S >= 75 -> (B, 2048) pool3 features."""

  @nn.compact
  def __call__(self, x):
    chex.assert_rank(x, 4)
    chex.assert_axis_dimension(x, 3, 3)
    if min(x.shape[1:3]) < MIN_INPUT_SIZE:
      raise ValueError(f"InceptionV3 needs inputs of at least {MIN_INPUT_SIZE}x"
                       f"{MIN_INPUT_SIZE}, got {x.shape[1]}x{x.shape[2]}")
    x = _conv("Conv2d_1a_3x3", 32, 3, strides=(2, 2))(x)
    x = _conv("Conv2d_2a_3x3", 32, 3)(x)
    x = _same("Conv2d_2b_3x3", 64, 3)(x)
    x = _max_pool_3x3_s2(x)
    x = _conv("Conv2d_3b_1x1", 80, 1)(x)
    x = _conv("Conv2d_4a_3x3", 192, 3)(x)
    x = _max_pool_3x3_s2(x)
    for name, pool_features in (("Mixed_5b", 32), ("Mixed_5c", 64), ("Mixed_5d", 64)):
      x = InceptionA(pool_features, name=name)(x)
    x = InceptionB(name="Mixed_6a")(x)
    for name, c in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160),
                    ("Mixed_6e", 192)):
      x = InceptionC(c, name=name)(x)
    x = InceptionD(name="Mixed_7a")(x)
    x = InceptionE(max_pool=False, name="Mixed_7b")(x)
    x = InceptionE(max_pool=True, name="Mixed_7c")(x)
    features = jnp.mean(x, axis=(1, 2))
    chex.assert_shape(features, (x.shape[0], FEATURE_DIM))
    return features


def preprocess(images, size: int = INPUT_SIZE) -> jax.Array:
  """Images (B, H, W, C), C in {1, 3}, floats in [0, 1] (or uint8 pixels, read as
  x / 255) -> (B, size, size, 3) in [-1, 1]: grey replicated to RGB, bilinear resize
  without antialiasing."""
  chex.assert_rank(images, 4)
  if images.shape[-1] not in (1, 3):
    raise ValueError(f"images need 1 or 3 channels, got shape {images.shape}")
  x = (images.astype(jnp.float32) / 255.0 if images.dtype == jnp.uint8
       else images.astype(jnp.float32))
  if x.shape[-1] == 1:
    x = jnp.repeat(x, 3, axis=-1)
  if x.shape[1:3] != (size, size):
    x = jax.image.resize(x, (x.shape[0], size, size, 3), "bilinear", antialias=False)
  return 2.0 * x - 1.0


_JITTED = {}


def _jitted(size: int):
  """(jit preprocess, jit network): separate, so that inputs of every image size share
  the compiled network (it depends only on the batch size and `size`)."""
  if size not in _JITTED:
    module = FIDInceptionV3()
    _JITTED[size] = (jax.jit(lambda images: preprocess(images, size)), jax.jit(module.apply))
  return _JITTED[size]


def features(variables, images, batch_size: int = 50, size: int = INPUT_SIZE) -> np.ndarray:
  """(N, 2048) float32 features of images (N, H, W, C) in [0, 1] (see `preprocess`),
  computed in batches of `batch_size` under jit. A short last batch is padded to
  `batch_size` by repeating its last image, so that one shape is compiled whatever N."""
  images = np.asarray(images)
  chex.assert_rank(images, 4)
  n = len(images)
  if n == 0:
    raise ValueError("no images")
  prep, net = _jitted(size)
  out = []
  for i in range(0, n, batch_size):
    batch = images[i:i + batch_size]
    pad = batch_size - len(batch)
    if pad:
      batch = np.concatenate([batch, np.repeat(batch[-1:], pad, axis=0)])
    out.append(np.asarray(net(variables, prep(batch)))[:batch_size - pad])
  feats = np.concatenate(out, 0)
  chex.assert_shape(feats, (n, FEATURE_DIM))
  return feats
