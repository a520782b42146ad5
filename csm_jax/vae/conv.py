"""Convolutional encoders and decoder for CelebA (the reference's DCGAN-like networks).

The sliced-score-matching reference (models/vae.py there) works on 64x64 faces: four
5x5 stride-2 convolutions (nef, 2nef, 4nef, 8nef channels, ReLU), a 512-unit ReLU layer,
then the posterior's parameters; the decoder maps z to 8ndf x 4 x 4 and upsamples by
stride-2 5x5 transposed convolutions to the image, tanh means and a fixed Gaussian
log std. Here the number of upsamplings follows the image size (three for 32x32, four for
64x64). The implicit encoder feeds its noise through a ReLU layer to one extra image
channel, as the reference's. All networks take and return flattened (B, H*W*C) data.
"""

import math
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp


def _down(h, nef: int, last_relu: bool = True):
  for i, mult in enumerate((1, 2, 4, 8)):
    h = nn.Conv(nef * mult, (5, 5), strides=(2, 2), padding=2, name=f"conv_{i}")(h)
    if last_relu or i < 3:
      h = nn.relu(h)
  return h.reshape(h.shape[0], -1)


class ConvGaussianEncoder(nn.Module):
  """x (B, D) -> (mean, log_std) (B, Z)."""
  z_dim: int
  image_shape: Sequence[int]
  nef: int = 16

  @nn.compact
  def __call__(self, x):
    h = _down(x.reshape((x.shape[0],) + tuple(self.image_shape)), self.nef)
    h = nn.relu(nn.Dense(512, name="flatten")(h))
    return nn.Dense(self.z_dim, name="mean")(h), nn.Dense(self.z_dim, name="log_std")(h)


class ConvImplicitEncoder(nn.Module):
  """z = g(x, eps): x (B, D), eps (..., B, E) -> z (..., B, Z)."""
  z_dim: int
  image_shape: Sequence[int]
  nef: int = 16

  @nn.compact
  def __call__(self, x, eps):
    height, width, _ = self.image_shape
    lead = eps.shape[:-2]
    n = math.prod(lead) * x.shape[0]
    noise = nn.relu(nn.Dense(height * width, name="noise_fc")(eps)).reshape(n, height, width, 1)
    imgs = jnp.broadcast_to(x, lead + x.shape).reshape((n,) + tuple(self.image_shape))
    h = _down(jnp.concatenate([imgs, noise], axis=-1), self.nef, last_relu=False)
    h = nn.relu(nn.Dense(512, name="flatten")(h))
    return nn.Dense(self.z_dim, name="fc")(h).reshape(lead + (x.shape[0], self.z_dim))


class ConvDecoder(nn.Module):
  """z (..., Z) -> tanh means (..., D) of images of `image_shape` (side 4 * 2^k)."""
  image_shape: Sequence[int]
  ndf: int = 16

  @nn.compact
  def __call__(self, z):
    height, width, channels = self.image_shape
    ups = int(round(math.log2(height / 4)))
    if height != width or 4 * 2 ** ups != height:
      raise ValueError(f"ConvDecoder needs square images of side 4 * 2^k, got {height}x{width}")
    lead = z.shape[:-1]
    h = nn.Dense(self.ndf * 8 * 16, name="fc")(z.reshape(-1, z.shape[-1]))
    h = h.reshape(-1, 4, 4, self.ndf * 8)
    for i in range(ups):
      last = i == ups - 1
      feats = channels if last else self.ndf * 8 // 2 ** (i + 1)
      h = nn.ConvTranspose(feats, (5, 5), strides=(2, 2), padding="SAME", name=f"deconv_{i}")(h)
      h = jnp.tanh(h) if last else nn.relu(h)
    return h.reshape(lead + (height * width * channels,))
