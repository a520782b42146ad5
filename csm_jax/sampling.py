"""Annealed Langevin dynamics, one dimension at a time (paper Sec. 4.2).

For t = 1..D (x_{order[t]}): compute the context of that dimension once from the
already sampled x_<d, then run Langevin on the scalar x_d through sigma_1..sigma_L,
T steps each, with step alpha_i = step_lr * sigma_i^2 / sigma_L^2, running only the
head. `naive_sample` re-evaluates the whole model at every step and is the reference.
Both draw the same random numbers, so with the same rng they agree to rounding.
"""

import functools
import jax
import jax.numpy as jnp
import numpy as np


def _schedule(sigmas, n_steps, step_lr):
  """Per-step (sigma, alpha) arrays of length L*T."""
  sigmas = np.asarray(sigmas, np.float32)
  alphas = step_lr * (sigmas / sigmas[-1]) ** 2
  return (jnp.asarray(np.repeat(sigmas, n_steps)), jnp.asarray(np.repeat(alphas, n_steps)))


def _init(rng, model, num_samples, sigmas, init_scale):
  scale = float(sigmas[0]) if init_scale is None else init_scale
  return scale * jax.random.normal(rng, (num_samples, model.dim), jnp.float32)


def _langevin_1d(score_fn, xd, key, sig_steps, alpha_steps, denoise):
  """Annealed Langevin on one coordinate per example; score_fn(xd, sigma) -> (B,)."""
  def step(xd, inp):
    i, sigma, alpha = inp
    z = jax.random.normal(jax.random.fold_in(key, i), xd.shape, xd.dtype)
    xd = xd + 0.5 * alpha * score_fn(xd, jnp.full_like(xd, sigma)) + jnp.sqrt(alpha) * z
    return xd, None

  idx = jnp.arange(sig_steps.shape[0])
  xd, _ = jax.lax.scan(step, xd, (idx, sig_steps, alpha_steps))
  if denoise:
    s_last = sig_steps[-1]
    xd = xd + s_last ** 2 * score_fn(xd, jnp.full_like(xd, s_last))
  return xd


def _sample(model, params, rng, num_samples, sigmas, n_steps, step_lr, denoise,
            init_scale, cached, x_init=None, num_dims=None):
  k_init, k_run = jax.random.split(rng)
  x = _init(k_init, model, num_samples, sigmas, init_scale) if x_init is None else x_init
  sig_steps, alpha_steps = _schedule(sigmas, n_steps, step_lr)
  order = jnp.asarray(model.order)

  def per_dim(x, t):
    d = order[t]
    key = jax.random.fold_in(k_run, t)
    if cached:
      ctx_d = jax.lax.dynamic_index_in_dim(model.context(params, x), d, axis=1)  # (B,1,C)
      score_fn = lambda xd, sig: model.score(params, ctx_d, xd[:, None], sig[:, None])[:, 0]
    else:
      def score_fn(xd, sig):
        y = jax.lax.dynamic_update_index_in_dim(x, xd, d, axis=1)
        full = model.full_score(params, y, jnp.broadcast_to(sig[:, None], y.shape))
        return jax.lax.dynamic_index_in_dim(full, d, axis=1, keepdims=False)
    xd0 = jax.lax.dynamic_index_in_dim(x, d, axis=1, keepdims=False)
    xd = _langevin_1d(score_fn, xd0, key, sig_steps, alpha_steps, denoise)
    return jax.lax.dynamic_update_index_in_dim(x, xd, d, axis=1), None

  steps = model.dim if num_dims is None else min(num_dims, model.dim)
  x, _ = jax.lax.scan(per_dim, x, jnp.arange(steps))
  return x


def sample(model, params, rng, num_samples, sigmas, n_steps=10, step_lr=1e-2,
           denoise=True, init_scale=None, x_init=None, num_dims=None):
  """Cached-context 1-D annealed Langevin sampler; returns (num_samples, D).

  Cost: D context passes plus D*L*T head evaluations. Jit it (see `make_sampler`). `num_dims` stops after
  the first k dimensions of the order (for timing).
  """
  return _sample(model, params, rng, num_samples, sigmas, n_steps, step_lr, denoise,
                 init_scale, cached=True, x_init=x_init, num_dims=num_dims)


def naive_sample(model, params, rng, num_samples, sigmas, n_steps=10, step_lr=1e-2,
                 denoise=True, init_scale=None, x_init=None, num_dims=None):
  """Reference sampler: the whole model is re-evaluated at each of D*L*T steps."""
  return _sample(model, params, rng, num_samples, sigmas, n_steps, step_lr, denoise,
                 init_scale, cached=False, x_init=x_init, num_dims=num_dims)


def make_sampler(model, sigmas, num_samples, n_steps=10, step_lr=1e-2, denoise=True,
                 init_scale=None, cached=True, out_sharding=None):
  """jit-compiled (params, rng) -> samples; sharded over the batch if `out_sharding`."""
  fn = sample if cached else naive_sample
  f = functools.partial(fn, model, sigmas=tuple(np.asarray(sigmas).tolist()),
                        num_samples=num_samples, n_steps=n_steps, step_lr=step_lr,
                        denoise=denoise, init_scale=init_scale)

  def run(params, rng):
    x = f(params=params, rng=rng)
    if out_sharding is not None:
      x = jax.lax.with_sharding_constraint(x, out_sharding)
    return x
  return jax.jit(run)
