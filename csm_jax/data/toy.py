"""Synthetic densities: a correlated Gaussian and six 2-D toy densities.

All are deterministic functions of their seed / generator, so train and test sets (and
the plots of them) are reproducible.
"""

from __future__ import annotations

import numpy as np


def gaussian_covariance(dim: int, seed: int) -> np.ndarray:
  """Random full covariance Q diag(lam) Q^T, lam in [0.5, 2] (condition number <= 4).

  float64, symmetric positive definite, a deterministic function of (dim, seed).
  """
  rng = np.random.default_rng([seed, dim, 7])
  q, r = np.linalg.qr(rng.standard_normal((dim, dim)))
  q = q * np.sign(np.diag(r))
  eig = rng.uniform(0.5, 2.0, size=dim)
  cov = (q * eig) @ q.T
  return 0.5 * (cov + cov.T)


def _ring8(n, rng):
  angles = 2 * np.pi * np.arange(8) / 8
  centers = 2.0 * np.stack([np.cos(angles), np.sin(angles)], 1) * np.sqrt(2)
  return centers[rng.integers(0, 8, n)] + 0.5 / np.sqrt(2) * rng.standard_normal((n, 2))


def _moons(n, rng):
  upper = rng.random(n) < 0.5
  t = np.pi * rng.random(n)
  x = np.where(upper, np.cos(t), 1 - np.cos(t))
  y = np.where(upper, np.sin(t), 0.5 - np.sin(t))
  pts = np.stack([x, y], 1) + 0.1 * rng.standard_normal((n, 2))
  return 2 * pts + np.array([-1.0, -0.25])


def _checkerboard(n, rng):
  x1 = 4 * rng.random(n) - 2
  x2 = rng.random(n) - 2 * rng.integers(0, 2, n) + np.floor(x1) % 2
  return 2 * np.stack([x1, x2], 1)


def _spirals(n, rng):
  t = np.sqrt(rng.random(n)) * 3 * np.pi
  sign = np.where(rng.random(n) < 0.5, 1.0, -1.0)[:, None]
  pts = np.stack([-np.cos(t) * t, np.sin(t) * t], 1) + 0.5 * rng.random((n, 2))
  return sign * pts / 3 + 0.1 * rng.standard_normal((n, 2))


def _pinwheel(n, rng, num_classes=5, radial_std=0.3, tangential_std=0.1, rate=0.25):
  labels = rng.integers(0, num_classes, n)
  feats = rng.standard_normal((n, 2)) * np.array([radial_std, tangential_std])
  feats[:, 0] += 1.0
  angles = 2 * np.pi * labels / num_classes + rate * np.exp(feats[:, 0])
  c, s = np.cos(angles), np.sin(angles)
  return 2 * np.stack([c * feats[:, 0] - s * feats[:, 1],
                       s * feats[:, 0] + c * feats[:, 1]], 1)


def _rings(n, rng):
  radii = 3 * np.array([1.0, 0.75, 0.5, 0.25])
  r = radii[rng.integers(0, 4, n)]
  t = 2 * np.pi * rng.random(n)
  return r[:, None] * np.stack([np.cos(t), np.sin(t)], 1) + 0.08 * rng.standard_normal(
      (n, 2))


_TOY2D = {'ring8': _ring8, 'moons': _moons, 'checkerboard': _checkerboard,
          'spirals': _spirals, 'pinwheel': _pinwheel, 'rings': _rings}
TOY2D_NAMES = tuple(_TOY2D)


def toy2d_sample(name: str, n: int, rng: np.random.Generator) -> np.ndarray:
  """n samples (float32 (n, 2)) of a 2-D toy density, mostly inside [-4, 4]^2."""
  if name not in _TOY2D:
    raise ValueError(f'Unknown toy2d name {name!r}; valid names: {list(TOY2D_NAMES)}.')
  return np.asarray(_TOY2D[name](int(n), rng), np.float32).reshape(int(n), 2)
