"""AR models with exactly known conditionals, for measuring samplers (not trainable).

Both expose the duck-typed `ARModel` interface the samplers use (dim, order, kind,
normalized, context, score, score_and_diag, full_score), with an exact noise-conditional
head: as for an AR-CSM (paper Sec. 4.2), the context is computed from the CLEAN x_<d and
only x_d is noised, so the head at level sigma is the score of
q_sigma(x_d | x_<d) = p(. | x_<d) * N(0, sigma^2). `exact_sample` draws from p itself
(ancestrally, exactly), which gives the reference samples and the Monte Carlo floor.

  GaussianAR   x_d | x_<d ~ N(b_d + w_d . x_<d, v_d)            (joint Gaussian, known)
  MixtureAR    x_d | x_<d ~ pi_d N(m_d - delta_d, v_d) + (1 - pi_d) N(m_d + delta_d, v_d),
               m_d = b_d + w_d . x_<d                             (bimodal conditionals)
  SmoothedGaussian  N(mu, cov + sigma^2 I) at level sigma: a known smoothed joint (its
               context takes the level, as noise.mode='joint' models')

Convolving a component N(mu, v) with N(0, sigma^2) gives N(mu, v + sigma^2): the scores
are analytic at every level.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np


class _KnownAR:
  """What the samplers see of an ARModel; the context is (B, D, C) per-dimension params."""
  kind = "score"
  normalized = False
  discrete = False

  @property
  def dim(self) -> int:
    return len(self.b)

  @property
  def order(self) -> np.ndarray:
    return np.arange(self.dim)

  @property
  def rank(self) -> np.ndarray:
    return np.arange(self.dim)

  def _mean(self, x):
    """m_d = b_d + (W x)_d, W strictly lower triangular: depends on x_<d only."""
    return x @ jnp.asarray(self.w, x.dtype).T + jnp.asarray(self.b, x.dtype)

  def score_and_diag(self, params, ctx, x, sigma):
    return jax.jvp(lambda y: self.score(params, ctx, y, sigma), (x,), (jnp.ones_like(x),))

  def full_score(self, params, x, sigma, train=False, rng=None):
    return self.score(params, self.context(params, x), x, sigma)


@dataclasses.dataclass(frozen=True, eq=False)
class GaussianAR(_KnownAR):
  """x = W x + b + e, e ~ N(0, diag(v)), W strictly lower triangular."""
  w: np.ndarray
  b: np.ndarray
  v: np.ndarray

  def context(self, params, x, train=False, rng=None):
    m = self._mean(x)
    return jnp.stack([m, jnp.broadcast_to(jnp.asarray(self.v, x.dtype), m.shape)], -1)

  def score(self, params, ctx, x, sigma):
    return -(x - ctx[..., 0]) / (ctx[..., 1] + sigma ** 2)

  def joint(self):
    """Exact mean and covariance of x."""
    a = np.linalg.inv(np.eye(self.dim) - self.w)
    return a @ self.b, a @ np.diag(self.v) @ a.T

  def exact_sample(self, rng, n):
    mean, cov = self.joint()
    return np.random.default_rng(rng).multivariate_normal(mean, cov, size=n)


@dataclasses.dataclass(frozen=True, eq=False)
class MixtureAR(_KnownAR):
  """Two-component conditionals: weights pi, means m_d -/+ delta_d, variance v_d."""
  w: np.ndarray
  b: np.ndarray
  v: np.ndarray
  delta: np.ndarray
  pi: np.ndarray

  def context(self, params, x, train=False, rng=None):
    m = self._mean(x)
    per_dim = [jnp.broadcast_to(jnp.asarray(a, x.dtype), m.shape)
               for a in (self.v, self.delta, self.pi)]
    return jnp.stack([m] + per_dim, -1)

  def score(self, params, ctx, x, sigma):
    m, v, delta, pi = (ctx[..., k] for k in range(4))
    var = v + sigma ** 2
    mu = jnp.stack([m - delta, m + delta], -1)
    logw = jnp.stack([jnp.log(pi), jnp.log1p(-pi)], -1) - (x[..., None] - mu) ** 2 / (2 * var[..., None])
    resp = jax.nn.softmax(logw, -1)
    return -jnp.sum(resp * (x[..., None] - mu), -1) / var

  def mode_split(self, x):
    """(N, D) bool: x_d above the midpoint m_d(x_<d) of its two modes (component 2)."""
    return np.asarray(x) > np.asarray(self._mean(jnp.asarray(x, jnp.float32)))

  def exact_sample(self, rng, n):
    gen = np.random.default_rng(rng)
    x = np.zeros((n, self.dim))
    for d in range(self.dim):
      m = self.b[d] + x @ self.w[d]
      upper = gen.random(n) >= self.pi[d]
      x[:, d] = m + np.where(upper, self.delta[d], -self.delta[d]) + np.sqrt(self.v[d]) * \
          gen.standard_normal(n)
    return x


@dataclasses.dataclass(frozen=True, eq=False)
class SmoothedGaussian(_KnownAR):
  """The smoothed joint of x ~ N(mu, cov) as an AR model with a level-aware context: at
  level sigma, q_sigma = N(mu, cov + sigma^2 I) = p * N(0, sigma^2 I) factorized in the
  natural order (what a smoothed-joint AR-CSM, noise.mode='joint', learns; the per-dim
  models above noise x_d alone). With C = L L^T (Cholesky), x_d | x_<d has mean
  mu_d + [(I - diag(L) L^-1)(x - mu)]_d (strictly lower triangular) and variance L_dd^2.
  The level is a scalar (one for the whole batch)."""
  mu: np.ndarray
  cov: np.ndarray
  context_sigma = True    # the context takes the level (as models.ar's smoothed joint)

  @property
  def b(self):
    return self.mu

  def context(self, params, x, train=False, rng=None, sigma=None):
    s2 = 0.0 if sigma is None else jnp.asarray(sigma, x.dtype) ** 2
    eye = jnp.eye(self.dim, dtype=x.dtype)
    chol = jnp.linalg.cholesky(jnp.asarray(self.cov, x.dtype) + s2 * eye)
    diag = jnp.diagonal(chol)
    w = eye - diag[:, None] * jax.scipy.linalg.solve_triangular(chol, eye, lower=True)
    mu = jnp.asarray(self.mu, x.dtype)
    m = mu + (x - mu) @ w.T
    return jnp.stack([m, jnp.broadcast_to(diag * diag, m.shape)], -1)

  def score(self, params, ctx, x, sigma):   # the level is in the context
    return -(x - ctx[..., 0]) / ctx[..., 1]


def random_gaussian_ar(dim: int, seed: int = 0, std_range=(0.05, 1.0)) -> GaussianAR:
  """A GaussianAR with conditional standard deviations log-uniform in `std_range` and
  moderate couplings (W_dk ~ N(0, 0.5^2 / d)), so that the marginals stay O(1)."""
  gen = np.random.default_rng(seed)
  w = np.tril(gen.normal(0, 1, (dim, dim)), -1) * 0.5 / np.sqrt(np.maximum(np.arange(dim), 1))[:, None]
  std = np.exp(gen.uniform(np.log(std_range[0]), np.log(std_range[1]), dim))
  return GaussianAR(w, gen.normal(0, 0.5, dim), std ** 2)


def random_mixture_ar(dim: int, seed: int = 0) -> MixtureAR:
  """A MixtureAR with well separated modes (2 delta / sqrt(v) between 5 and 8) and
  unequal weights (pi in [0.2, 0.8])."""
  gen = np.random.default_rng(seed)
  w = np.tril(gen.normal(0, 1, (dim, dim)), -1) * 0.3 / np.sqrt(np.maximum(np.arange(dim), 1))[:, None]
  std = gen.uniform(0.15, 0.4, dim)
  return MixtureAR(w, gen.normal(0, 0.5, dim), std ** 2,
                   gen.uniform(2.5, 4.0, dim) * std, gen.uniform(0.2, 0.8, dim))
