"""Encoder, decoder and score networks of the VAEs of paper Sec. 6 (MNIST MLPs).

The architectures of the sliced-score-matching reference (Song et al. 2019, the setup
the paper follows): two tanh layers of 256 units everywhere, PyTorch's default
`nn.Linear` initialization (weights and biases uniform in +-1/sqrt(fan_in)).

Networks whose first layer reads a concatenation [x, u] (the implicit encoder's
[x, eps], the score net's [x, z]) keep one weight matrix for the concatenation, as the
reference, but apply it as x @ W_x + u @ W_u: with P particles per example the x part
(784 inputs) is computed once per example instead of P times.
"""

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


def torch_uniform(fan_in: int):
  """PyTorch nn.Linear's default init for weights and biases: U(-1/sqrt(fan_in), +)."""
  bound = 1.0 / math.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


def dense(features: int, fan_in: int, name: str = None) -> nn.Dense:
  """nn.Dense with PyTorch's default initialization."""
  return nn.Dense(features, kernel_init=torch_uniform(fan_in),
                  bias_init=torch_uniform(fan_in), name=name)


class ConcatInputLayer(nn.Module):
  """Dense(concat([x, u])) as x @ W[:X] + u @ W[X:] + b, with x (B, X) and u (..., B, U).

  The x part broadcasts over any leading particle axes of u.
  """
  features: int

  @nn.compact
  def __call__(self, x, u):
    nx, nu = x.shape[-1], u.shape[-1]
    init = torch_uniform(nx + nu)
    kernel = self.param("kernel", init, (nx + nu, self.features))
    bias = self.param("bias", init, (self.features,))
    return x @ kernel[:nx] + u @ kernel[nx:] + bias


def _mlp_tail(h, hidden_sizes: Sequence[int], out: int, prefix: str = "dense"):
  """tanh, then Dense+tanh for each further hidden width, then a linear Dense(out)."""
  h = jnp.tanh(h)
  widths = list(hidden_sizes)
  for i, w in enumerate(widths[1:]):
    h = jnp.tanh(dense(w, widths[i], name=f"{prefix}_{i + 1}")(h))
  return dense(out, widths[-1], name=f"{prefix}_out")(h)


class MLPDecoder(nn.Module):
  """z (..., Z) -> (..., D) outputs: Bernoulli logits (MNIST) or Gaussian means."""
  out_dim: int
  hidden_sizes: Sequence[int] = (256, 256)

  @nn.compact
  def __call__(self, z):
    h = dense(self.hidden_sizes[0], z.shape[-1], name="dense_0")(z)
    return _mlp_tail(h, self.hidden_sizes, self.out_dim)


class GaussianEncoder(nn.Module):
  """x (B, D) -> (mean, log_std) (B, Z) of q(z | x) = N(mean, diag(exp(2 log_std)))."""
  z_dim: int
  hidden_sizes: Sequence[int] = (256, 256)

  @nn.compact
  def __call__(self, x):
    h = jnp.tanh(dense(self.hidden_sizes[0], x.shape[-1], name="dense_0")(x))
    widths = list(self.hidden_sizes)
    for i, w in enumerate(widths[1:]):
      h = jnp.tanh(dense(w, widths[i], name=f"dense_{i + 1}")(h))
    mean = dense(self.z_dim, widths[-1], name="mean")(h)
    log_std = dense(self.z_dim, widths[-1], name="log_std")(h)
    return mean, log_std


class ImplicitEncoder(nn.Module):
  """z = g(x, eps): x (B, D), eps (..., B, E) ~ N(0, I) -> z (..., B, Z).

  An implicit q(z | x): sampling is easy, its density and score are intractable.
  """
  z_dim: int
  hidden_sizes: Sequence[int] = (256, 256)

  @nn.compact
  def __call__(self, x, eps):
    h = ConcatInputLayer(self.hidden_sizes[0], name="dense_0")(x, eps)
    return _mlp_tail(h, self.hidden_sizes, self.z_dim)


class MLPScoreNet(nn.Module):
  """s(z | x): x (B, D), z (B, Z) -> (B, Z), an unconstrained estimate of
  d/dz log q(z | x) (the SSM score model of the reference)."""
  z_dim: int
  hidden_sizes: Sequence[int] = (256, 256)

  @nn.compact
  def __call__(self, x, z):
    h = ConcatInputLayer(self.hidden_sizes[0], name="dense_0")(x, z)
    return _mlp_tail(h, self.hidden_sizes, self.z_dim)
