"""The terms of the VAE objective (per example, summed over dimensions).

For an implicit encoder z = g_phi(x, eps) the entropy H[q(z | x)] = -E_q log q(z | x) has
no closed form, but its gradient does, given the score of q (paper Sec. 6; Song et al.
2019, Sec. 4.3): with z reparameterized,

    d/dphi H = -E_eps[ grad_z log q(z | x) . dz/dphi ]

(the term E_q[d/dphi log q_phi(z)] at fixed z vanishes). `entropy_surrogate` is a function
of z whose gradient is exactly that, once the score is an estimate s(z | x) held fixed.
"""

import jax
import jax.numpy as jnp


def log_prior(z):
  """log N(z; 0, I), summed over the last axis."""
  return -0.5 * jnp.sum(z ** 2 + jnp.log(2 * jnp.pi), axis=-1)


def bernoulli_log_likelihood(logits, x):
  """log Bernoulli(x; sigmoid(logits)), summed over the last axis (x in {0, 1})."""
  return jnp.sum(x * jax.nn.log_sigmoid(logits) + (1 - x) * jax.nn.log_sigmoid(-logits), -1)


def gaussian_log_likelihood(mean, log_std, x):
  """log N(x; mean, exp(2 log_std)), summed over the last axis."""
  log_std = jnp.broadcast_to(jnp.asarray(log_std, mean.dtype), mean.shape)
  return jnp.sum(-0.5 * ((x - mean) * jnp.exp(-log_std)) ** 2 - log_std
                 - 0.5 * jnp.log(2 * jnp.pi), axis=-1)


def gaussian_entropy(log_std):
  """H[N(mean, diag(exp(2 log_std)))] = sum log_std + Z/2 (1 + log 2 pi)."""
  z_dim = log_std.shape[-1]
  return jnp.sum(log_std, -1) + 0.5 * z_dim * (1.0 + jnp.log(2 * jnp.pi))


def gaussian_kl(mean, log_std):
  """KL(N(mean, diag(exp(2 log_std))) || N(0, I)), summed over the last axis."""
  return jnp.sum(0.5 * (jnp.exp(2 * log_std) + mean ** 2) - log_std - 0.5, axis=-1)


def entropy_surrogate(z, score):
  """-sg(score) . z: its gradient through a reparameterized z is the entropy gradient
  -E[score . dz/dphi] when `score` is grad_z log q(z | x). Its value is not the entropy."""
  return -jnp.sum(jax.lax.stop_gradient(score) * z, axis=-1)
