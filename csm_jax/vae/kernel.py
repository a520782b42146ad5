"""Kernel score estimators: the Stein and Spectral baselines of paper Table 2.

Both estimate grad log q at M samples of q from the samples alone, with an RBF kernel
k(a, b) = exp(-||a - b||^2 / (2 w^2)) whose width w is the median heuristic. Functions
take particle sets (..., M, Z), one set per x, and treat the sets separately.

  stein_scores     Li & Turner (2018): g = -(K + eta I)^{-1} <grad, K>.
  spectral_scores  Shi, Sun & Zhu (2018): Nystrom eigenfunctions of the kernel,
                   truncated to the top eigenvalues that hold `threshold` of the total.
"""

import jax
import jax.numpy as jnp
import numpy as np


def _sq_dists(a, b):
  return jnp.sum((a[:, None, :] - b[None, :, :]) ** 2, axis=-1)


def median_bandwidth(samples):
  """Median heuristic width: the middle of all M^2 pairwise distances (the upper middle
  one, the M zeros of the diagonal included, as in the sliced-score-matching code).

  Sorted, those M^2 values are the M zeros, then each of the M(M-1)/2 distances of the
  upper triangle twice; so only the upper triangle is sorted (half the work).
  """
  m = samples.shape[0]
  rows, cols = np.triu_indices(m, 1)
  upper = jnp.sqrt(jnp.sum((samples[rows] - samples[cols]) ** 2, axis=-1))
  idx = m * m - (m * m) // 2             # ascending position among all M^2 values
  return jax.lax.stop_gradient(jnp.sort(upper)[(idx - m) // 2])


def rbf_gram(samples, width):
  """K (M, M) and G (M, M, Z) with G[i, j] = d k(x_i, x_j) / d x_j = K_ij (x_i - x_j) / w^2."""
  diff = samples[:, None, :] - samples[None, :, :]
  k = jnp.exp(-jnp.sum(diff ** 2, -1) / (2.0 * width ** 2))
  return k, k[..., None] * diff / width ** 2


def stein_scores(samples, eta: float = 1e-3):
  """Stein gradient estimator at the samples (..., M, Z) -> (..., M, Z), each set of M
  on its own."""
  samples = jax.lax.stop_gradient(samples)
  lead, (m, zdim) = samples.shape[:-2], samples.shape[-2:]

  def one(x):
    k, grad_k2 = rbf_gram(x, median_bandwidth(x))
    h = grad_k2.sum(axis=1)                    # sum_j d k(x_i, x_j) / d x_j
    return -jnp.linalg.solve(k + eta * jnp.eye(m, dtype=k.dtype), h)

  return jax.vmap(one)(samples.reshape((-1, m, zdim))).reshape(lead + (m, zdim))


def spectral_num_eigen(eigenvalues, threshold: float):
  """Number of leading eigenvalues kept: those before the cumulative share of the
  (batch-averaged, descending) spectrum reaches `threshold`, and at least one."""
  lam = eigenvalues.reshape(-1, eigenvalues.shape[-1]).mean(0)[::-1]
  share = jnp.cumsum(lam / lam.sum())
  return jnp.maximum(jnp.sum(share < threshold), 1)


def spectral_scores(samples, threshold: float = 0.99, eta=None, num_eigen=None):
  """Spectral (Nystrom) score estimator at the samples (..., M, Z) -> (..., M, Z).

  psi_j(x) = sqrt(M) / lambda_j sum_m u_jm k(x, x_m) are the eigenfunctions of the kernel
  operator estimated from the Gram matrix K = U diag(lambda) U^T of each set; the score
  is expanded as sum_j beta_j psi_j with beta_j = -E_q[grad psi_j]. Only the top
  `num_eigen` terms are kept, by default `spectral_num_eigen` of the spectra averaged
  over the leading (batch) axes, one number for the whole batch as in the reference.
  (The reference fixes that number at its first call, for the rest of training; here it
  is recomputed for every batch.)
  """
  samples = jax.lax.stop_gradient(samples)
  lead, (m, zdim) = samples.shape[:-2], samples.shape[-2:]
  flat = samples.reshape((-1, m, zdim))

  def gram(x):
    k, grad_k2 = rbf_gram(x, median_bandwidth(x))
    if eta is not None:
      k = k + eta * jnp.eye(m, dtype=k.dtype)
    return k, grad_k2

  k, grad_k2 = jax.vmap(gram)(flat)
  lam, u = jnp.linalg.eigh(k)                 # ascending
  n = spectral_num_eigen(lam, threshold) if num_eigen is None else num_eigen

  def one(k, grad_k2, lam, u):
    keep = jnp.arange(m) >= m - n               # the n largest eigenvalues
    inv = jnp.where(keep, 1.0 / jnp.where(keep, lam, 1.0), 0.0)
    ext = jnp.sqrt(m) * (k @ u) * inv           # psi_j(x_i), (M, M)
    grad_k1_avg = -grad_k2.mean(axis=0)         # mean_i d k(x_i, x_j) / d x_i, (M, Z)
    beta = -jnp.sqrt(m) * (u.T @ grad_k1_avg) * inv[:, None]
    return ext @ beta

  return jax.vmap(one)(k, grad_k2, lam, u).reshape(lead + (m, zdim))
