"""Annealed importance sampling (Neal 2001) of log p(x) for latent-variable models.

The evaluation of the VAEs of paper Sec. 6 (Table 2), as in Wu et al. (2017) and
Song et al. (2019): anneal from the prior p(z) = N(0, I) to the unnormalized posterior
p(z) p(x | z) along

    pi_t(z) ∝ p(z) p(x | z)^beta_t,     0 = beta_0 < beta_1 < ... < beta_T = 1,

with HMC transitions leaving each pi_t invariant. Each chain's weight
log w = sum_t (beta_t - beta_{t-1}) log p(x | z_{t-1}) satisfies E[w] = p(x); K chains are
combined by log-mean-exp, a stochastic lower bound on log p(x) (Jensen) whose gap
shrinks as T and K grow. Everything runs in one `lax.scan`, batched over examples.
"""

from typing import Callable, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np

LogLikelihood = Callable[[jax.Array, jax.Array], jax.Array]   # (x (N, ...), z (N, Z)) -> (N,)


def sigmoid_schedule(num_steps: int, rad: float = 4.0) -> np.ndarray:
  """beta_0 = 0 < ... < beta_T = 1, a sigmoid of a uniform grid on [-rad, rad], rescaled.

  Denser steps near both ends, where the intermediate distributions change fastest
  (Grosse et al. 2013; Wu et al. 2017).
  """
  if num_steps < 1:
    raise ValueError(f"AIS needs num_steps >= 1, got {num_steps}")
  s = 1.0 / (1.0 + np.exp(-np.linspace(-rad, rad, num_steps + 1)))
  return (s - s[0]) / (s[-1] - s[0])


class AISResult(NamedTuple):
  """log_px (B,): log-mean-exp of the chains' log weights, the AIS estimate of log p(x);
  log_weights (K, B); accept_rate (B,): mean HMC acceptance probability over steps and
  chains; step_size (B,): the adapted HMC step sizes at the end."""
  log_px: jax.Array
  log_weights: jax.Array
  accept_rate: jax.Array
  step_size: jax.Array


def _log_prior(z):
  return -0.5 * jnp.sum(z ** 2 + jnp.log(2 * jnp.pi), axis=-1)


def _hmc_step(rng, z, step_size, log_target, num_leapfrog):
  """One HMC transition per row with its own step size; returns (z', accept_prob).

  Each leapfrog position's log target and gradient come from one vjp and are carried
  to the next half step: L + 1 evaluations per transition instead of 2L + 2.
  """
  def value_and_grad(q):
    lp, vjp = jax.vjp(log_target, q)      # rows are independent
    return lp, vjp(jnp.ones_like(lp))[0]

  k_p, k_u = jax.random.split(rng)
  p0 = jax.random.normal(k_p, z.shape, z.dtype)
  eps = step_size[:, None]
  lp0, g0 = value_and_grad(z)

  def leapfrog(carry, _):
    q, p, _, g = carry
    p = p + 0.5 * eps * g
    q = q + eps * p
    lp, g = value_and_grad(q)
    p = p + 0.5 * eps * g
    return (q, p, lp, g), None

  (q, p, lp, _), _ = jax.lax.scan(leapfrog, (z, p0, lp0, g0), None, length=num_leapfrog)
  log_ratio = (lp - 0.5 * jnp.sum(p ** 2, -1)) - (lp0 - 0.5 * jnp.sum(p0 ** 2, -1))
  log_ratio = jnp.where(jnp.isfinite(log_ratio), log_ratio, -jnp.inf)
  accept_prob = jnp.exp(jnp.minimum(log_ratio, 0.0))
  accept = jax.random.uniform(k_u, accept_prob.shape, accept_prob.dtype) < accept_prob
  return jnp.where(accept[:, None], q, z), accept_prob


def ais(log_likelihood: LogLikelihood, x, z_dim: int, rng, *, num_steps: int = 1000,
        num_chains: int = 16, num_leapfrog: int = 10, step_size: float = 0.05,
        target_accept: float = 0.65, adapt_rate: float = 0.02, schedule=None) -> AISResult:
  """AIS estimate of log p(x) = log E_{p(z)} p(x | z) for every example of a batch.

  Args:
    log_likelihood: (x (N, ...), z (N, z_dim)) -> log p(x | z) (N,), row by row; any
      decoder (Bernoulli, Gaussian, ...) closed over its parameters.
    x: (B, ...) the examples.
    z_dim: dimension of z; the prior is N(0, I).
    rng: PRNG key.
    num_steps: T, the number of intermediate distributions (ignored if `schedule`).
    num_chains: K independent chains per example.
    num_leapfrog: L leapfrog steps per HMC transition.
    step_size: initial leapfrog step size, then adapted per example after every
      transition: multiplied by 1 + adapt_rate when the acceptance probability averaged
      over the example's K chains exceeds `target_accept`, divided by it otherwise.
    schedule: optional betas (T + 1,) from 0 to 1; default `sigmoid_schedule(num_steps)`.
  """
  betas = np.asarray(sigmoid_schedule(num_steps) if schedule is None else schedule)
  if betas.ndim != 1 or betas[0] != 0.0 or betas[-1] != 1.0 or np.any(np.diff(betas) < 0):
    raise ValueError("the AIS schedule must be non-decreasing from 0 to 1")
  batch = x.shape[0]
  n = num_chains * batch
  xs = jnp.broadcast_to(x[None], (num_chains,) + x.shape).reshape((n,) + x.shape[1:])
  dtype = jnp.result_type(float)
  loglik = lambda z: log_likelihood(xs, z)

  k_init, k_steps = jax.random.split(rng)
  z0 = jax.random.normal(k_init, (n, z_dim), dtype)
  ll0 = loglik(z0)
  chex.assert_shape(ll0, (n,))

  def body(carry, inputs):
    z, ll, log_w, eps, acc_sum = carry
    beta_prev, beta, key = inputs
    log_w = log_w + (beta - beta_prev) * ll   # ll = log p(x | z) at the current state
    log_target = lambda z: _log_prior(z) + beta * loglik(z)
    z, accept_prob = _hmc_step(key, z, jnp.tile(eps, num_chains), log_target, num_leapfrog)
    # one step size per example, from the acceptance averaged over its K chains: a step
    # size driven by a chain's own acceptance biases that chain's weight upwards
    mean_accept = accept_prob.reshape(num_chains, batch).mean(0)
    up = jnp.where(mean_accept > target_accept, 1.0 + adapt_rate, 1.0 / (1.0 + adapt_rate))
    return (z, loglik(z), log_w, eps * up, acc_sum + accept_prob), None

  init = (z0, ll0, jnp.zeros(n, dtype), jnp.full((batch,), step_size, dtype),
          jnp.zeros(n, dtype))
  betas_j = jnp.asarray(betas, dtype)
  keys = jax.random.split(k_steps, len(betas) - 1)
  (_, _, log_w, eps, acc_sum), _ = jax.lax.scan(body, init, (betas_j[:-1], betas_j[1:], keys))

  log_w = log_w.reshape(num_chains, batch)
  log_px = jax.nn.logsumexp(log_w, axis=0) - jnp.log(num_chains)
  accept_rate = (acc_sum / (len(betas) - 1)).reshape(num_chains, batch).mean(0)
  return AISResult(log_px, log_w, accept_rate, eps)


def ais_log_likelihood(log_likelihood: LogLikelihood, x, z_dim: int, rng, **kwargs):
  """log p(x) (B,) by `ais` (same arguments)."""
  return ais(log_likelihood, x, z_dim, rng, **kwargs).log_px


def log_mean_exp_stderr(log_weights):
  """Delta-method standard error of log mean_k w_k over axis 0: std(w) / (mean(w) sqrt(K))."""
  k = log_weights.shape[0]
  w = jnp.exp(log_weights - log_weights.max(axis=0, keepdims=True))
  return w.std(axis=0, ddof=1) / (w.mean(axis=0) * jnp.sqrt(k))


def bernoulli_log_likelihood(decode: Callable[[jax.Array], jax.Array]) -> LogLikelihood:
  """log p(x | z) for binary x (N, ...) under Bernoulli(sigmoid(decode(z))), logits shaped as x."""
  def f(x, z):
    logits = decode(z)
    chex.assert_equal_shape([logits, x])
    ll = x * jax.nn.log_sigmoid(logits) + (1 - x) * jax.nn.log_sigmoid(-logits)
    return ll.reshape(x.shape[0], -1).sum(-1)
  return f


def gaussian_log_likelihood(decode: Callable[[jax.Array], jax.Array], scale) -> LogLikelihood:
  """log p(x | z) for x (N, ...) under N(decode(z), scale^2 I), `scale` a scalar or shaped as x."""
  def f(x, z):
    mean = decode(z)
    chex.assert_equal_shape([mean, x])
    s = jnp.broadcast_to(jnp.asarray(scale, mean.dtype), x.shape)
    ll = -0.5 * ((x - mean) / s) ** 2 - jnp.log(s) - 0.5 * jnp.log(2 * jnp.pi)
    return ll.reshape(x.shape[0], -1).sum(-1)
  return f
