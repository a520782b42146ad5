"""Sampling AR-CSM models one dimension at a time (Meng et al. 2020, Sec. 4.2).

`sample`: for t = 1..D (x_{order[t]}), compute the context of that dimension once
from the already sampled x_<d, then run annealed Langevin dynamics on the scalar x_d
through sigma_1..sigma_L, T steps each, with step alpha_i = step_lr * sigma_i^2 /
sigma_L^2, running only the head: D context passes plus D*L*T head evaluations. With
`mh_nodes` (config sampling.mh_correction) each step is Metropolis-adjusted (MALA): the
1-D energy difference is a Gauss-Lobatto quadrature of the head along the move, so every
level's chain leaves q_sigma(x_d | x_<d) exactly invariant, at mh_nodes - 1 head
evaluations per step.
`naive_sample` re-evaluates the whole model at every step (D*L*T full passes) and is
the reference; both draw the same random numbers, so with the same rng they agree to
rounding. `grid_sample` is ancestral sampling without Langevin: each 1-D conditional
is normalized on a quadrature grid (`likelihood.py`) and sampled from it, exact up to
the grid resolution. `ancestral_sample` draws exactly from a probability-mass head
(PixelCNN++'s discretized logistic mixture). `level_sweeps_sample` is the annealed
sampler of a smoothed-joint model (noise.mode='joint'): one cached sequential sweep per
noise level, the context given that level. `make_sampler_from_config` is the one place
that chooses among them from a config.
"""

import functools
import time
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from csm_jax import chunked
from csm_jax import likelihood as likelihood_lib
from csm_jax import noise as noise_lib
from csm_jax import sharding as sharding_lib


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
  return _denoise(score_fn, xd, sig_steps, denoise)


def _denoise(score_fn, xd, sig_steps, denoise):
  if denoise:
    s_last = sig_steps[-1]
    xd = xd + s_last ** 2 * score_fn(xd, jnp.full_like(xd, s_last))
  return xd


def lobatto(n: int):
  """Gauss-Lobatto nodes u_k on [0, 1] (u_0 = 0, u_{n-1} = 1) and weights (sum 1), n >= 2.

  The Gauss-Legendre family with both end points among the nodes: the MALA ratio needs
  the score at both ends anyway, so n nodes cost n - 2 extra evaluations and integrate
  polynomials of degree 2n - 3 exactly (n = 2: trapezoid, exact for a Gaussian head).
  """
  if n < 2:
    raise ValueError(f"Gauss-Lobatto quadrature needs n >= 2 nodes, got {n}")
  p = np.polynomial.legendre.Legendre.basis(n - 1)
  t = np.concatenate([[-1.0], np.sort(p.deriv().roots().real), [1.0]]) if n > 2 else \
      np.array([-1.0, 1.0])
  w = 2.0 / (n * (n - 1) * p(t) ** 2)
  return (t + 1) / 2, w / 2


def energy_difference(score_fn, x, x_new, s_x, nodes):
  """(log q(x_new) - log q(x), score at x_new) for a 1-D score: the integral of s along
  [x, x_new] by `nodes`-point Gauss-Lobatto quadrature; s_x = score_fn(x) is reused.

  score_fn maps (B,) -> (B,); the n - 1 other nodes go through one vmapped call.
  """
  u, w = lobatto(nodes)
  pts = x + jnp.asarray(u[1:], x.dtype)[:, None] * (x_new - x)         # (n-1, B)
  s_pts = jax.vmap(score_fn)(pts)
  integral = w[0] * s_x + jnp.tensordot(jnp.asarray(w[1:], x.dtype), s_pts, axes=1)
  return (x_new - x) * integral, s_pts[-1]


def _mala_1d(score_fn, xd, key, sig_steps, alpha_steps, denoise, n_steps, nodes):
  """Metropolis-adjusted annealed Langevin on one coordinate per example (MALA).

  At each level (sigma_i, alpha_i), T steps: propose x' = x + alpha/2 s(x) + sqrt(alpha) z
  (the unadjusted step, with the same z) and accept with probability
  min(1, exp(E(x') - E(x)) q(x | x') / q(x' | x)), E = log q_sigma(. | x_<d) up to a
  constant, so the chain leaves each level's 1-D conditional invariant; E(x') - E(x) is
  `energy_difference`. Returns (xd, acceptance rate per example).
  """
  num = sig_steps.shape[0]
  sig_lv = sig_steps.reshape(-1, n_steps)[:, 0]
  alpha_lv = alpha_steps.reshape(-1, n_steps)[:, 0]

  def level(carry, inp):
    xd, acc = carry
    lv, sigma, alpha = inp
    sig = jnp.full_like(xd, sigma)
    f = lambda y: score_fn(y, sig)

    def step(c, t):
      x, s_x, acc = c
      i = lv * n_steps + t                        # the unadjusted sampler's step index
      k = jax.random.fold_in(key, i)
      z = jax.random.normal(k, x.shape, x.dtype)
      u = jax.random.uniform(jax.random.fold_in(k, 1), x.shape, x.dtype)
      prop = x + 0.5 * alpha * s_x + jnp.sqrt(alpha) * z
      d_energy, s_prop = energy_difference(f, x, prop, s_x, nodes)
      log_fwd = -0.5 * z ** 2                                          # q(x' | x)
      log_bwd = -(x - prop - 0.5 * alpha * s_prop) ** 2 / (2 * alpha)  # q(x | x')
      ok = jnp.log(u) < d_energy + log_bwd - log_fwd                   # NaN: rejected
      return (jnp.where(ok, prop, x), jnp.where(ok, s_prop, s_x), acc + ok), None

    (xd, _, acc), _ = jax.lax.scan(step, (xd, f(xd), acc), jnp.arange(n_steps))
    return (xd, acc), None

  (xd, acc), _ = jax.lax.scan(level, (xd, jnp.zeros_like(xd)),
                              (jnp.arange(sig_lv.shape[0]), sig_lv, alpha_lv))
  return _denoise(score_fn, xd, sig_steps, denoise), acc / num


def _chain_1d(score_fn, xd, key, sig_steps, alpha_steps, denoise, mh):
  """(xd, acceptance rate per example): unadjusted Langevin (mh None, rate 1) or MALA
  (mh = (T, Gauss-Lobatto nodes))."""
  if mh is None:
    return (_langevin_1d(score_fn, xd, key, sig_steps, alpha_steps, denoise),
            jnp.ones_like(xd))
  return _mala_1d(score_fn, xd, key, sig_steps, alpha_steps, denoise, *mh)


def _mh(n_steps, mh_nodes):
  """The `mh` argument of `_chain_1d` (None: unadjusted)."""
  if not mh_nodes:
    return None
  if int(mh_nodes) < 2:
    raise ValueError(f"mh_nodes (Gauss-Lobatto nodes of the MH energy difference, both ends "
                     f"included) must be >= 2, got {mh_nodes}")
  return (int(n_steps), int(mh_nodes))


def _constrain(x, sharding):
  return x if sharding is None else jax.lax.with_sharding_constraint(x, sharding)


def _langevin_chunk(model, params, x, k_run, start, length, num_dims, sig_steps,
                    alpha_steps, denoise, cached, sharding, mh=None, acc=None,
                    context_sigma=None):
  """Samples dimensions order[start:start+length] (those < num_dims) of x in place;
  returns (x, acc) with acc[d] the mean acceptance rate of dimension d (1: unadjusted).
  `context_sigma`: the level of a noise-conditional context (None: model.context_level)."""
  order = jnp.asarray(model.order)
  acc = jnp.ones((model.dim,), jnp.float32) if acc is None else acc

  def per_dim(carry, t):
    x, acc = carry
    d = order[t]
    key = jax.random.fold_in(k_run, t)
    if cached:
      ctx = (model.context(params, x) if context_sigma is None      # any AR model
             else model.context(params, x, sigma=context_sigma))
      ctx_d = jax.lax.dynamic_index_in_dim(ctx, d, axis=1)                        # (B,1,C)
      score_fn = lambda xd, sig: model.score(params, ctx_d, xd[:, None], sig[:, None])[:, 0]
    else:
      def score_fn(xd, sig):
        y = jax.lax.dynamic_update_index_in_dim(x, xd, d, axis=1)
        full = model.full_score(params, y, jnp.broadcast_to(sig[:, None], y.shape))
        return jax.lax.dynamic_index_in_dim(full, d, axis=1, keepdims=False)
    xd0 = jax.lax.dynamic_index_in_dim(x, d, axis=1, keepdims=False)
    xd, rate = _chain_1d(score_fn, xd0, key, sig_steps, alpha_steps, denoise, mh)
    x = _constrain(jax.lax.dynamic_update_index_in_dim(x, xd, d, axis=1), sharding)
    return x, acc.at[d].set(jnp.mean(rate).astype(acc.dtype))

  return chunked.scan_dims(per_dim, (x, acc), start, length, num_dims)


def _start(model, rng, num_samples, sigmas, init_scale, x_init, sharding):
  """(x at the start of sampling, key of the Langevin noise)."""
  k_init, k_run = jax.random.split(rng)
  x = _init(k_init, model, num_samples, sigmas, init_scale) if x_init is None else x_init
  return _constrain(x, sharding), k_run


def _sample(model, params, rng, num_samples, sigmas, n_steps, step_lr, denoise,
            init_scale, cached, x_init=None, num_dims=None, sharding=None, mh_nodes=0):
  """(x, acceptance rate per dimension)."""
  x, k_run = _start(model, rng, num_samples, sigmas, init_scale, x_init, sharding)
  sig_steps, alpha_steps = _schedule(sigmas, n_steps, step_lr)
  steps = chunked.dims_to_sample(model.dim, num_dims)
  return _langevin_chunk(model, params, x, k_run, 0, steps, steps, sig_steps, alpha_steps,
                         denoise, cached, sharding, _mh(n_steps, mh_nodes))


def sample(model, params, rng, num_samples, sigmas, n_steps=10, step_lr=1e-2,
           denoise=True, init_scale=None, x_init=None, num_dims=None, sharding=None,
           mh_nodes=0, return_acceptance=False):
  """Cached-context 1-D annealed Langevin sampler; returns (num_samples, D).

  Cost: D context passes plus D*L*T head evaluations. Jit it (see `make_sampler`).
  `x_init` replaces the N(0, sigma_1^2) start (init_scale overrides sigma_1);
  `num_dims` stops after the first k dimensions of the order (for timing);
  `sharding` constrains the batch layout of x throughout (data parallel).
  `mh_nodes` >= 2 makes every step Metropolis-adjusted (`_mala_1d`: MALA, energy
  differences by that many Gauss-Lobatto nodes; D*L*(1 + T*(mh_nodes - 1)) head
  evaluations); 0 (default): unadjusted. `return_acceptance`: also the (D,) mean
  acceptance rate of each dimension (ones when unadjusted).
  """
  x, acc = _sample(model, params, rng, num_samples, sigmas, n_steps, step_lr, denoise,
                   init_scale, cached=True, x_init=x_init, num_dims=num_dims,
                   sharding=sharding, mh_nodes=mh_nodes)
  return (x, acc) if return_acceptance else x


def naive_sample(model, params, rng, num_samples, sigmas, n_steps=10, step_lr=1e-2,
                 denoise=True, init_scale=None, x_init=None, num_dims=None, sharding=None,
                 mh_nodes=0, return_acceptance=False):
  """Reference sampler: the whole model is re-evaluated at each of D*L*T steps."""
  x, acc = _sample(model, params, rng, num_samples, sigmas, n_steps, step_lr, denoise,
                   init_scale, cached=False, x_init=x_init, num_dims=num_dims,
                   sharding=sharding, mh_nodes=mh_nodes)
  return (x, acc) if return_acceptance else x


def head_evaluations(dim, num_levels, n_steps, mh_nodes=0, denoise=True):
  """Head evaluations per sample of the cached sampler: D*L*T unadjusted; with MALA
  D*L*(1 + T*(mh_nodes - 1)) (the score at each level's start, then the proposal's and
  the interior quadrature nodes' per step); + D for the denoising step."""
  per_level = n_steps * (mh_nodes - 1) + 1 if mh_nodes else n_steps
  return dim * (num_levels * per_level + int(bool(denoise)))


def make_sampler(model, sigmas, num_samples, n_steps=10, step_lr=1e-2, denoise=True,
                 init_scale=None, cached=True, out_sharding=None, num_dims=None,
                 chunk_dims=None, log=None, mh_nodes=0, return_acceptance=False):
  """(params, rng) -> samples, jit-compiled; batch sharded by `out_sharding` if given.

  With `chunk_dims` the dimensions are sampled in jit-compiled chunks of that many,
  and `log(str)` (if given) reports progress and ETA after each; same samples.
  `mh_nodes` and `return_acceptance` as in `sample`.
  """
  sigmas = tuple(np.asarray(sigmas).tolist())
  mh = _mh(n_steps, mh_nodes)
  pick = (lambda out: out) if return_acceptance else (lambda out: out[0])
  if not chunk_dims:
    f = functools.partial(_sample, model, sigmas=sigmas, num_samples=num_samples,
                          n_steps=n_steps, step_lr=step_lr, denoise=denoise,
                          init_scale=init_scale, cached=cached, num_dims=num_dims,
                          sharding=out_sharding, mh_nodes=mh_nodes)
    return jax.jit(lambda params, rng: pick(f(params=params, rng=rng)))

  steps = chunked.dims_to_sample(model.dim, num_dims)
  sig_steps, alpha_steps = _schedule(sigmas, n_steps, step_lr)
  start_fn = jax.jit(lambda rng: _start(model, rng, num_samples, sigmas, init_scale, None,
                                        out_sharding))
  chunk_fn = jax.jit(lambda params, carry, k_run, start: _langevin_chunk(
      model, params, carry[0], k_run, start, chunk_dims, steps, sig_steps, alpha_steps,
      denoise, cached, out_sharding, mh, carry[1]))

  def run(params, rng):
    x, k_run = start_fn(rng)
    carry = (x, jnp.ones((model.dim,), jnp.float32))
    return pick(chunked.run_in_chunks(lambda c, t: chunk_fn(params, c, k_run, t), carry,
                                      steps, chunk_dims, log, "Langevin sampling"))
  return run


def level_sweeps_sample(model, params, rng, num_samples, sigmas, n_steps=10, step_lr=1e-2,
                        denoise=True, init_scale=None, x_init=None, mh_nodes=0,
                        sharding=None, log=None):
  """Level-by-level annealed sampler of a smoothed-joint model (noise.mode='joint').

  For each level sigma_l (l = 1..L) one sequential sweep of the cached sampler over all
  D dimensions, started from the previous sweep's sample: dimension d runs T Langevin
  steps at sigma_l (step alpha_l = step_lr sigma_l^2 / sigma_L^2) given the context of
  the current x_<d at the same level sigma_l. Each sweep is ancestral sampling of
  q_sigma_l, which the joint training fits at every level, so the chain tracks p * N(0,
  sigma_l^2 I) down to sigma_L (the denoising step after the last). Cost: L*D context
  passes, D*L*T head evaluations. Returns (num_samples, D). Not jit-able as a whole (one
  compiled sweep per call, `log(str)` after each level); see `make_level_sweeps_sampler`.
  """
  return make_level_sweeps_sampler(model, sigmas, num_samples, n_steps, step_lr, denoise,
                                   init_scale, sharding, log, mh_nodes)(params, rng, x_init)


def make_level_sweeps_sampler(model, sigmas, num_samples, n_steps=10, step_lr=1e-2,
                              denoise=True, init_scale=None, out_sharding=None, log=None,
                              mh_nodes=0, num_dims=None):
  """(params, rng[, x_init]) -> samples of `level_sweeps_sample`; one sweep compiled once
  (the level is traced) and called L times. `num_dims`: sweep the first k dimensions of
  the order only (for timing)."""
  if not getattr(model, "context_sigma", False):
    raise ValueError("the level-sweeps sampler is for smoothed-joint models (a context that "
                     "takes the noise level: noise.mode='joint'); use method='sequential'")
  sigmas = np.asarray(sigmas, np.float32)
  mh = _mh(n_steps, mh_nodes)
  dim = chunked.dims_to_sample(model.dim, num_dims)

  def sweep(params, x, key, sigma, alpha, last):
    sig_steps = jnp.full((n_steps,), sigma, jnp.float32)
    alpha_steps = jnp.full((n_steps,), alpha, jnp.float32)
    return _langevin_chunk(model, params, x, key, 0, dim, dim, sig_steps, alpha_steps,
                           denoise and last, True, out_sharding, mh,
                           context_sigma=sigma)[0]

  sweep_fn = jax.jit(sweep, static_argnums=5)
  start_fn = jax.jit(lambda rng, x_init: _start(model, rng, num_samples, sigmas, init_scale,
                                                x_init, out_sharding))

  def run(params, rng, x_init=None):
    x, k_run = start_fn(rng, x_init)
    t0 = time.perf_counter()
    for lv, sigma in enumerate(sigmas):
      alpha = step_lr * (float(sigma) / float(sigmas[-1])) ** 2
      x = sweep_fn(params, x, jax.random.fold_in(k_run, lv), sigma, np.float32(alpha),
                   lv == len(sigmas) - 1)
      if log is not None:
        jax.block_until_ready(x)
        log(f"level sweeps: level {lv + 1}/{len(sigmas)} (sigma {float(sigma):.4g}) done, "
            f"elapsed {time.perf_counter() - t0:.0f}s")
    return x
  return run


def grid_sample(model, params, rng, num_samples, grid, sigma=1.0, num_dims=None,
                node_chunk=None):
  """Ancestral sampling of an AR model on a quadrature grid; (num_samples, D).

  For each dimension in order the conditional log q(. | x_<d) is evaluated on the
  nodes of `grid` (`likelihood.log_conditionals_on_grid`: quadrature of the scores at
  noise level `sigma` for an AR-CSM head, the exact log-density for a normalized head);
  a node is drawn with probability proportional to w_k q(g_k) (trapezoid weights) and
  jittered uniformly within its cell. Exact up to the grid resolution (features
  narrower than a cell are smeared over it), with no Langevin bias; costs K head
  evaluations per dimension instead of L*T.
  """
  x = jnp.zeros((num_samples, model.dim), jnp.float32)
  order = jnp.asarray(model.order)
  k = grid.num_points
  logw = jnp.full((k,), 0.0).at[0].set(-np.log(2.0)).at[-1].set(-np.log(2.0))

  def per_dim(x, t):
    d = order[t]
    key_c, key_u = jax.random.split(jax.random.fold_in(rng, t))
    ctx_d = jax.lax.dynamic_index_in_dim(model.context(params, x), d, axis=1)   # (B,1,C)
    logq = likelihood_lib.log_conditionals_on_grid(model, params, ctx_d, grid, sigma,
                                                   node_chunk)[:, 0]            # (B,K)
    j = jax.random.categorical(key_c, logq + logw, axis=-1)
    u = jax.random.uniform(key_u, j.shape, minval=-0.5, maxval=0.5)
    # the end nodes own half cells (inside [lo, hi]):
    u = jnp.where(j == 0, jnp.abs(u), jnp.where(j == k - 1, -jnp.abs(u), u))
    xd = grid.lo + (j + u) * grid.h
    return jax.lax.dynamic_update_index_in_dim(x, xd[:, None], d, axis=1), None

  steps = chunked.dims_to_sample(model.dim, num_dims)
  x, _ = jax.lax.scan(per_dim, x, jnp.arange(steps))
  return x


# ------------------------------------------------------------------------------------
# Exact ancestral sampling of a probability-mass head (discretized logistic mixture)
# ------------------------------------------------------------------------------------


def _head_sample(module, ctx, rng):
  return module.head.sample(ctx, rng)


def _ancestral_chunk(model, params, rng, x, start, length, num_dims):
  """Draws dimensions order[start:start+length] (those < num_dims) of x."""
  order = jnp.asarray(model.order)

  def per_dim(x, t):
    d = order[t]
    ctx_d = jax.lax.dynamic_index_in_dim(model.context(params, x), d, axis=1)  # (B,1,C)
    xd = model.net.apply(params, ctx_d, jax.random.fold_in(rng, t), method=_head_sample)
    return jax.lax.dynamic_update_index_in_dim(x, xd.astype(x.dtype), d, axis=1)

  return chunked.scan_dims(per_dim, x, start, length, num_dims)


def _check_mass(model):
  """Exact ancestral sampling needs a normalized head that draws from its conditional
  (`head.sample`): the discretized mixture, and the Gaussian and logistic-mixture MADE
  heads."""
  head = getattr(getattr(model, "net", None), "head", None)
  if model.kind not in ("mass", "density") or not hasattr(head, "sample"):
    raise ValueError("ancestral_sample needs a discretized (probability mass) head or a "
                     "normalized head with exact draws (Gaussian, logistic mixture); AR-CSM "
                     "models sample with sampling.sample (Langevin) or sampling.grid_sample")


def ancestral_sample(model, params, rng, num_samples: int, num_dims=None, x_init=None):
  """Exact ancestral samples (num_samples, D) of an ARModel with a discretized head
  (values are bin centres in [-1, 1]) or a Gaussian / logistic-mixture head.

  Dimension by dimension in the model's order: the context of d is computed from the
  already drawn x_<d (D context passes), then x_d is drawn from its conditional.
  `num_dims` stops after the first k dimensions (timing).
  """
  _check_mass(model)
  x = (jnp.zeros((num_samples, model.dim), jnp.float32) if x_init is None
       else jnp.asarray(x_init))
  steps = chunked.dims_to_sample(model.dim, num_dims)
  return _ancestral_chunk(model, params, rng, x, 0, steps, steps)


def make_ancestral_sampler(model, num_samples: int, num_dims=None, chunk_dims=None,
                           log=None):
  """(params, rng) -> samples (num_samples, D), jit-compiled.

  With `chunk_dims`, sampled in jit-compiled chunks of that many dimensions with
  progress and ETA reported through `log(str)`; the samples are the same.
  """
  _check_mass(model)
  if not chunk_dims:
    return jax.jit(lambda params, rng: ancestral_sample(model, params, rng, num_samples,
                                                        num_dims=num_dims))
  steps = chunked.dims_to_sample(model.dim, num_dims)
  chunk_fn = jax.jit(lambda params, rng, x, start: _ancestral_chunk(
      model, params, rng, x, start, chunk_dims, steps))

  def run(params, rng):
    x = jnp.zeros((num_samples, model.dim), jnp.float32)
    return chunked.run_in_chunks(lambda x, t: chunk_fn(params, rng, x, t), x, steps,
                                 chunk_dims, log, "ancestral sampling")
  return run


# ------------------------------------------------------------------------------------
# Parallel sampling: the sequential sample as the fixed point of Jacobi sweeps
# ------------------------------------------------------------------------------------
#
# With the random numbers of every dimension fixed in advance (keys derived from the
# dimension's position t in the order, as above), each sequential sampler is a
# deterministic map x = F(x): F_d(x) draws dimension d given the context of x_<d.
# Its fixed point is the sequential sample, and the Jacobi iteration
# x^(k+1) = F(x^(k)) -- one context pass for all dimensions, then every dimension's
# update in parallel -- reaches it in at most D sweeps: after sweep k the first k
# dimensions of the order are exact (Song, Meng, Liao, Ermon, ICML 2021). Usually far
# fewer sweeps are needed; any start converges, a good one saves sweeps.


def _position_keys(model, key):
  """(D,) keys: dimension d gets fold_in(key, t) with t its position in the order."""
  return jax.vmap(lambda t: jax.random.fold_in(key, t))(jnp.asarray(model.rank))


def _langevin_all(model, params, x_start, k_run, sig_steps, alpha_steps, denoise, mh=None):
  """F for the cached Langevin sampler (MALA with `mh`): every dimension's 1-D chain, run
  from its start value x_start[:, d] given the context of the current iterate, in
  parallel. The accept/reject draws are fixed too, so F stays deterministic."""
  keys = _position_keys(model, k_run)

  def update(ctx, x):
    del x  # each chain restarts from x_start: only the context depends on the iterate

    def chain(ctx_d, xd0, key):  # the sequential sampler's per-dimension chain
      score_fn = lambda xd, sig: model.score(params, ctx_d[:, None], xd[:, None],
                                             sig[:, None])[:, 0]
      return _chain_1d(score_fn, xd0, key, sig_steps, alpha_steps, denoise, mh)[0]

    return jax.vmap(chain, in_axes=(1, 1, 0), out_axes=1)(ctx, x_start, keys)
  return update


def _grid_all(model, params, rng, grid, sigma, node_chunk):
  """F for `grid_sample`: every dimension's draw on the grid, in parallel."""
  keys = _position_keys(model, rng)
  k = grid.num_points
  logw = jnp.full((k,), 0.0).at[0].set(-np.log(2.0)).at[-1].set(-np.log(2.0))

  def update(ctx, x):
    del x
    logq = likelihood_lib.log_conditionals_on_grid(model, params, ctx, grid, sigma,
                                                   node_chunk)          # (B, D, K)

    def draw(logq_d, key):
      key_c, key_u = jax.random.split(key)
      j = jax.random.categorical(key_c, logq_d + logw, axis=-1)
      u = jax.random.uniform(key_u, j.shape, minval=-0.5, maxval=0.5)
      u = jnp.where(j == 0, jnp.abs(u), jnp.where(j == k - 1, -jnp.abs(u), u))
      return grid.lo + (j + u) * grid.h

    return jax.vmap(draw, in_axes=(1, 0), out_axes=1)(logq, keys)
  return update


def _ancestral_all(model, params, rng):
  """F for `ancestral_sample`: every dimension's exact draw from its mixture."""
  keys = _position_keys(model, rng)

  def update(ctx, x):
    def draw(ctx_d, key):  # (B, C) -> (B,), as the sequential sampler with ctx (B, 1, C)
      return model.net.apply(params, ctx_d[:, None], key, method=_head_sample)[:, 0]
    return jax.vmap(draw, in_axes=(1, 0), out_axes=1)(ctx, keys).astype(x.dtype)
  return update


def _sweep(model, params, update):
  """One Jacobi sweep: x -> F(x) (one context pass, every dimension updated)."""
  return lambda x: update(model.context(params, x), x)


def fixed_point_iterate(sweep, x0, max_sweeps: int, tol: float):
  """Sweeps x <- sweep(x) from x0 in a `lax.while_loop` until the largest change is at
  most `tol` or `max_sweeps` sweeps ran; returns (x, sweeps, last change). A non-finite
  change (a diverging chain) also stops it: `fixed_point_converged` says whether x is the
  sequential sample."""
  def cond(c):
    _, k, delta = c
    return (k < max_sweeps) & (delta > tol)

  def body(c):
    x, k, _ = c
    new = sweep(x)
    return new, k + 1, jnp.max(jnp.abs(new - x))

  return jax.lax.while_loop(cond, body, (x0, jnp.int32(0), jnp.asarray(jnp.inf, x0.dtype)))


def fixed_point_converged(sweeps, change, tol: float, dim: int) -> bool:
  """Whether a `fixed_point_iterate` result is the sequential sample: the last change
  is at most `tol`, or `dim` (= D) sweeps ran with a finite change -- after k sweeps
  the first k dimensions of the order are exact, so D sweeps reach the fixed point even
  when rounding leaves the last change slightly above a tolerance of 0."""
  change = float(change)
  return bool(change <= tol or (int(sweeps) >= dim and np.isfinite(change)))


def fixed_point_message(what: str, stats: dict, dim: int) -> str:
  """One log line for a fixed-point run's {'sweeps', 'max_change', 'converged'}."""
  return (f"fixed-point {what}: {stats['sweeps']} sweeps for D={dim} dimensions, largest "
          f"change in the last sweep {stats['max_change']:.3g}"
          + ("" if stats["converged"] else " -- NOT converged (sweep cap reached or a chain "
             f"diverged): not the sequential {what}"))


def _fixed_point_parts(kind, model, params, rng, num_samples, *, sigmas=None, n_steps=10,
                       step_lr=1e-2, denoise=True, init_scale=None, x_init=None, grid=None,
                       sigma=1.0, node_chunk=None, mh_nodes=0):
  """(sweep, x^(0)) of the fixed-point version of the sequential sampler `kind`
  ('langevin', 'grid' or 'ancestral'), with exactly its random numbers."""
  if kind == "langevin":
    x0, k_run = _start(model, rng, num_samples, sigmas, init_scale, x_init, None)
    sig_steps, alpha_steps = _schedule(sigmas, n_steps, step_lr)
    update = _langevin_all(model, params, x0, k_run, sig_steps, alpha_steps, denoise,
                           _mh(n_steps, mh_nodes))
  elif kind == "grid":
    x0 = jnp.zeros((num_samples, model.dim), jnp.float32) if x_init is None else x_init
    update = _grid_all(model, params, rng, grid, sigma, node_chunk)
  elif kind == "ancestral":
    _check_mass(model)
    x0 = jnp.zeros((num_samples, model.dim), jnp.float32) if x_init is None else x_init
    update = _ancestral_all(model, params, rng)
  else:
    raise ValueError(f"fixed-point sampler kind must be 'langevin', 'grid' or 'ancestral', "
                     f"got {kind!r}")
  return _sweep(model, params, update), x0


def fixed_point_sample(kind, model, params, rng, num_samples, max_sweeps=None, tol=0.0,
                       **kwargs):
  """The sample of the sequential sampler `kind` with the same rng, by Jacobi sweeps;
  returns (x (num_samples, D), sweeps used, last change). Jit-able.

  kind 'langevin' takes sampling.sample's keywords (sigmas, n_steps, step_lr, denoise,
  init_scale, x_init, mh_nodes), 'grid' grid_sample's (grid, sigma, node_chunk), 'ancestral' none.
  `max_sweeps` defaults to D (enough for the exact sample); `tol` is the largest change
  of any coordinate between two sweeps at which to stop (0: until exact).
  """
  sweep, x0 = _fixed_point_parts(kind, model, params, rng, num_samples, **kwargs)
  return fixed_point_iterate(sweep, x0, model.dim if max_sweeps is None else max_sweeps, tol)


def make_fixed_point_sampler(kind, model, num_samples, max_sweeps=None, tol=0.0, log=None,
                             **kwargs):
  """(params, rng) -> (x, {'sweeps', 'max_change', 'converged'}): `fixed_point_sample`
  compiled; 'converged' (`fixed_point_converged`) is False when a cap below D was
  reached before the tolerance, or a chain diverged (NaN).

  With `log(str)` the sweeps run one compiled call each, with the change and timing
  logged after each (same result as the single compiled loop).
  """
  cap = model.dim if max_sweeps is None else max_sweeps
  if log is None:
    fn = jax.jit(lambda params, rng: fixed_point_sample(kind, model, params, rng, num_samples,
                                                        cap, tol, **kwargs))

    def run(params, rng):
      x, k, delta = fn(params, rng)
      return x, {"sweeps": int(k), "max_change": float(delta),
                 "converged": fixed_point_converged(k, delta, tol, model.dim)}
    return run

  start = jax.jit(lambda params, rng: _fixed_point_parts(kind, model, params, rng,
                                                         num_samples, **kwargs)[1])
  one = jax.jit(lambda params, rng, x: _fixed_point_parts(kind, model, params, rng,
                                                          num_samples, **kwargs)[0](x))

  def run_logged(params, rng):
    x, delta, k, t0 = start(params, rng), float("inf"), 0, time.perf_counter()
    while k < cap and delta > tol:
      new = one(params, rng, x)
      delta, x, k = float(jnp.max(jnp.abs(new - x))), new, k + 1
      log(f"fixed-point sampling: sweep {k}, largest change {delta:.3g}, "
          f"{time.perf_counter() - t0:.1f}s")
    return x, {"sweeps": k, "max_change": delta,
               "converged": fixed_point_converged(k, delta, tol, model.dim)}
  return run_logged


# ------------------------------------------------------------------------------------
# The sampler a config asks for
# ------------------------------------------------------------------------------------


def make_sampler_from_config(config, model, num_samples: Optional[int] = None, mesh=None,
                             num_dims=None, log: Optional[Callable[[str], None]] = None,
                             cached: bool = True, **overrides):
  """(params, rng) -> samples (N, D) for `model`, as config.sampling asks; returns
  (sampler, info) where info describes the choice (for logs and result files).

  A probability-mass head is sampled exactly and ancestrally; every other model with
  the cached-context annealed Langevin sampler on config.sampling.sigmas (default: the
  training noise schedule). Keyword `overrides` replace config.sampling fields
  (num_steps, step_lr, denoise, chunk_dims, method, max_sweeps, fixed_point_tol,
  mh_correction, mh_nodes). With sampling.mh_correction every Langevin step is
  Metropolis-adjusted (MALA, `_mala_1d`) and each call records the mean and smallest
  per-dimension acceptance rate in info['acceptance_mean'] / ['acceptance_min']. With a
  `mesh` the batch is sharded over it. `cached=False` gives the naive Langevin reference
  (full passes; for benchmarks). With sampling.method='fixed_point' the same sample is
  computed by parallel sweeps (`fixed_point_sample`); each call then records the sweeps
  used and the last change in info['sweeps'] and info['max_change'] (and logs them).
  """
  s = config.sampling
  fields = ("num_steps", "step_lr", "denoise", "chunk_dims", "method", "max_sweeps",
            "fixed_point_tol", "mh_correction", "mh_nodes")
  unknown = set(overrides) - set(fields)
  if unknown:
    raise ValueError(f"unknown sampler overrides {sorted(unknown)}")
  opt = {k: s[k] for k in fields}
  opt.update({k: v for k, v in overrides.items() if v is not None})
  if opt["method"] == "fixed_point":
    if not cached or num_dims is not None:
      raise ValueError("sampling.method='fixed_point' samples all dimensions with the cached "
                       "sampler's random numbers: no cached=False or num_dims")
    return _fixed_point_from_config(config, model, s.num_samples if num_samples is None
                                    else num_samples, opt, log)
  n = s.num_samples if num_samples is None else num_samples
  if mesh is not None:
    sharding_lib.check_batch_size(n, mesh, "sampling.num_samples")
  dims = chunked.dims_to_sample(model.dim, num_dims)
  chunk = chunked.auto_chunk_dims(dims) if opt["chunk_dims"] is None else opt["chunk_dims"]
  if model.kind == "mass":
    info = {"sampler": "exact ancestral (discretized logistic mixture)"}
    return make_ancestral_sampler(model, n, num_dims=num_dims, chunk_dims=chunk, log=log), info
  sigmas = _sigmas_from_config(config)
  mh_nodes = _mh_nodes(opt)
  if opt["method"] == "level_sweeps":
    if not cached:
      raise ValueError("sampling.method='level_sweeps' runs the cached sampler: no "
                       "cached=False")
    info = {"sampler": "level sweeps (smoothed joint): one cached annealed-Langevin sweep "
                       "per noise level, contexts at that level"
                       + (" (Metropolis-adjusted)" if mh_nodes else ""),
            "method": "level_sweeps", "L": len(sigmas), "T": opt["num_steps"],
            "step_lr": opt["step_lr"], "denoise": opt["denoise"],
            "sigmas": [float(v) for v in sigmas], "mh_nodes": mh_nodes,
            "context_passes_per_sample": len(sigmas) * dims,
            "head_evaluations_per_sample": head_evaluations(
                dims, len(sigmas), opt["num_steps"], mh_nodes, opt["denoise"])}
    run = make_level_sweeps_sampler(
        model, sigmas, n, opt["num_steps"], opt["step_lr"], opt["denoise"],
        out_sharding=None if mesh is None else sharding_lib.batch_sharding(mesh), log=log,
        mh_nodes=mh_nodes, num_dims=num_dims)
    return (lambda params, rng: run(params, rng)), info
  model = at_sampling_level(model, sigmas)
  info = {"sampler": f"{'cached-context' if cached else 'naive'} annealed Langevin"
                     + (" (Metropolis-adjusted)" if mh_nodes else ""),
          "L": len(sigmas),
          "T": opt["num_steps"], "step_lr": opt["step_lr"], "denoise": opt["denoise"],
          "sigmas": [float(v) for v in sigmas], "mh_nodes": mh_nodes,
          "head_evaluations_per_sample": head_evaluations(
              dims, len(sigmas), opt["num_steps"], mh_nodes, opt["denoise"])}
  run = make_sampler(model, sigmas, n, opt["num_steps"], opt["step_lr"], opt["denoise"],
                     out_sharding=None if mesh is None else sharding_lib.batch_sharding(mesh),
                     cached=cached, num_dims=num_dims, chunk_dims=chunk, log=log,
                     mh_nodes=mh_nodes, return_acceptance=bool(mh_nodes))
  if not mh_nodes:
    return run, info          # unadjusted: nothing to record; the jitted sampler itself

  def sampler(params, rng):
    x, acc = run(params, rng)
    if mh_nodes:
      acc = np.asarray(acc)[np.asarray(model.order)[:dims]]
      info.update(acceptance_mean=float(acc.mean()), acceptance_min=float(acc.min()))
      if log is not None:
        log(f"MALA acceptance rate: mean {acc.mean():.3f}, smallest {acc.min():.3f} "
            f"(over {dims} dimensions)")
    return x
  return sampler, info


def at_sampling_level(model, sigmas):
  """A smoothed-joint model with its context at the smallest level sigma_L (the level
  whose joint approximates the data) unless it has one: the per-dimension samplers then
  run on it unchanged, annealing the head only. Other models are returned as they are."""
  if getattr(model, "context_sigma", False) and model.context_level is None:
    return model.at_level(float(np.min(np.asarray(sigmas))))
  return model


def _mh_nodes(opt) -> int:
  """Gauss-Lobatto nodes of the MH correction asked for (0: unadjusted Langevin)."""
  if not opt["mh_correction"]:
    return 0
  if not (isinstance(opt["mh_nodes"], int) and opt["mh_nodes"] >= 2):
    raise ValueError(f"sampling.mh_nodes must be an integer >= 2 (Gauss-Lobatto nodes, both "
                     f"ends included), got {opt['mh_nodes']!r}")
  return opt["mh_nodes"]


def _fixed_point_from_config(config, model, n, opt, log):
  """make_sampler_from_config for sampling.method='fixed_point'."""
  info = {"method": "fixed_point", "max_sweeps": opt["max_sweeps"] or model.dim,
          "fixed_point_tol": opt["fixed_point_tol"]}
  if model.kind == "mass":
    kind, kwargs = "ancestral", {}
    info["sampler"] = "exact ancestral (discretized logistic mixture), fixed-point sweeps"
  else:
    sigmas = _sigmas_from_config(config)
    model = at_sampling_level(model, sigmas)
    kind = "langevin"
    kwargs = dict(sigmas=tuple(float(v) for v in sigmas), n_steps=opt["num_steps"],
                  step_lr=opt["step_lr"], denoise=opt["denoise"], mh_nodes=_mh_nodes(opt))
    info.update(sampler="cached-context annealed Langevin, fixed-point sweeps",
                L=len(sigmas), T=opt["num_steps"], step_lr=opt["step_lr"],
                denoise=opt["denoise"], sigmas=list(kwargs["sigmas"]),
                mh_nodes=kwargs["mh_nodes"])
  run = make_fixed_point_sampler(kind, model, n, opt["max_sweeps"], opt["fixed_point_tol"],
                                 log=log, **kwargs)

  def sampler(params, rng):
    x, stats = run(params, rng)
    info.update(stats)
    if log is not None:
      log(fixed_point_message("sampling", stats, model.dim))
    return x
  return sampler, info


def _sigmas_from_config(config):
  sigmas = config.sampling.sigmas or noise_lib.sigmas_from_config(config.noise)
  if sigmas is None:
    raise ValueError("set sampling.sigmas (e.g. (1.0,)) for a model trained without noise "
                     "(noise.enabled=False)")
  return sigmas
