"""The VAE: encoder (explicit Gaussian or implicit), decoder, prior N(0, I).

Everything works on flattened data x (B, D); convolutional networks reshape inside.
`encode` returns reparameterized samples, so gradients reach the encoder through z.
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from csm_jax.vae import conv
from csm_jax.vae import networks
from csm_jax.vae import objectives


@dataclasses.dataclass(frozen=True)
class VAE:
  """Pure-function view of a VAE's networks.

  Attributes:
    encoder: `GaussianEncoder`-like (x -> mean, log_std) or `ImplicitEncoder`-like
      ((x, eps) -> z).
    decoder: z -> Bernoulli logits or Gaussian means, (..., D).
    data_shape: one example's shape, e.g. (28, 28, 1); D = its product.
    z_dim: Z.
    eps_dim: E, the noise fed to an implicit encoder.
    implicit: whether the encoder is implicit.
    likelihood: 'bernoulli' (binary x) or 'gaussian' (fixed decoder_log_std).
    decoder_log_std: log standard deviation of the Gaussian likelihood.
  """
  encoder: nn.Module
  decoder: nn.Module
  data_shape: tuple
  z_dim: int
  eps_dim: int
  implicit: bool
  likelihood: str = "bernoulli"
  decoder_log_std: float = -0.602

  @property
  def data_dim(self) -> int:
    d = 1
    for s in self.data_shape:
      d *= int(s)
    return d

  def init(self, rng):
    k_enc, k_dec = jax.random.split(rng)
    x = jnp.zeros((1, self.data_dim), jnp.float32)
    if self.implicit:
      enc = self.encoder.init(k_enc, x, jnp.zeros((1, 1, self.eps_dim), jnp.float32))
    else:
      enc = self.encoder.init(k_enc, x)
    dec = self.decoder.init(k_dec, jnp.zeros((1, self.z_dim), jnp.float32))
    return {"encoder": enc, "decoder": dec}

  def gaussian_posterior(self, params, x):
    """(mean, log_std) (B, Z) of an explicit Gaussian encoder."""
    if self.implicit:
      raise ValueError("an implicit encoder has no closed-form posterior")
    return self.encoder.apply(params["encoder"], x)

  def encode(self, params, x, rng, num_particles: int = 1):
    """z (P, B, Z): P reparameterized samples of q(z | x) per example."""
    shape = (num_particles, x.shape[0])
    if self.implicit:
      eps = jax.random.normal(rng, shape + (self.eps_dim,), x.dtype)
      return self.encoder.apply(params["encoder"], x, eps)
    mean, log_std = self.gaussian_posterior(params, x)
    eps = jax.random.normal(rng, shape + (self.z_dim,), x.dtype)
    return mean + jnp.exp(log_std) * eps

  def decode(self, params, z):
    """Decoder outputs (..., D): Bernoulli logits or Gaussian means."""
    return self.decoder.apply(params["decoder"], z)

  def log_likelihood(self, params, x, z):
    """log p(x | z), (...,) for z (..., B, Z) and x (B, D)."""
    out = self.decode(params, z)
    if self.likelihood == "bernoulli":
      return objectives.bernoulli_log_likelihood(out, x)
    return objectives.gaussian_log_likelihood(out, self.decoder_log_std, x)

  def mean_image(self, params, z):
    """E[x | z] (N, D): sigmoid of the logits, or the Gaussian mean."""
    out = self.decode(params, z)
    return jax.nn.sigmoid(out) if self.likelihood == "bernoulli" else out


def build_vae(vae_config, data_shape) -> VAE:
  """The VAE vae_config describes, for examples of shape data_shape."""
  v = vae_config
  d = 1
  for s in data_shape:
    d *= int(s)
  hidden = tuple(v.hidden_sizes)
  implicit = v.encoder == "implicit"
  if v.encoder not in ("gaussian", "implicit"):
    raise ValueError(f"vae.encoder must be 'gaussian' or 'implicit', got {v.encoder!r}")
  if v.architecture == "mlp":
    decoder = networks.MLPDecoder(out_dim=d, hidden_sizes=hidden)
    encoder = (networks.ImplicitEncoder(v.z_dim, hidden) if implicit
               else networks.GaussianEncoder(v.z_dim, hidden))
  elif v.architecture == "conv":
    if len(data_shape) != 3:
      raise ValueError(f"vae.architecture='conv' needs images (H, W, C), got {data_shape}")
    decoder = conv.ConvDecoder(image_shape=tuple(data_shape), ndf=v.num_filters)
    encoder = (conv.ConvImplicitEncoder(v.z_dim, tuple(data_shape), v.num_filters) if implicit
               else conv.ConvGaussianEncoder(v.z_dim, tuple(data_shape), v.num_filters))
  else:
    raise ValueError(f"vae.architecture must be 'mlp' or 'conv', got {v.architecture!r}")
  eps_dim = v.eps_dim or v.z_dim
  return VAE(encoder=encoder, decoder=decoder, data_shape=tuple(data_shape), z_dim=v.z_dim,
             eps_dim=eps_dim, implicit=implicit, likelihood=v.likelihood,
             decoder_log_std=v.decoder_log_std)
