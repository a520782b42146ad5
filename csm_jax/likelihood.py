"""Exact log-likelihoods of AR-CSM models by one-dimensional quadrature.

An AR-CSM (Meng et al., "Autoregressive Score Matching", NeurIPS 2020, Eq. 4) gives,
for every dimension d, the score s_d(x_<d, x_d) of an *unnormalized* univariate
conditional. The paper reports only samples for such models; but since each
conditional is one-dimensional, its normalized log-density is a pair of 1-D integrals:

    E_d(t)   = int_lo^t s_d(x_<d, u) du                 (energy; any anchor)
    log Z_d  = log int_lo^hi exp(E_d(u)) du
    log q(x) = sum_d [E_d(x_d) - log Z_d]

This is the exact log-density of the model whose conditionals are exp(E_d) / Z_d
restricted to the grid range [lo, hi] (a proper, normalized density on [lo, hi]^D).
The context is computed once per example (context[:, d] depends on x_<d only, so one
pass over the data gives all D of them); the quadrature runs the head alone.

Quadrature. A uniform grid of K nodes (K odd). Both integrals use the trapezoid rule
with the Euler-Maclaurin end correction -h^2/12 [f'(b) - f'(a)], where f' comes for free:
for E the integrand is s_d and s_d' = d s_d / d x_d is the quantity CSM already uses (one
jvp through the head); for Z the integrand is exp(E) with derivative s exp(E). The
rule is O(h^4) and exact for cubic scores (so for Gaussian conditionals). E(x_d) is
taken from the nearest node plus the same rule over the partial cell. Energies are
accumulated outwards from the node of highest energy so that float32 rounding
stays small where the mass is.

The reported quadrature error is the change in log q when every other node is
dropped (h -> 2h), free from the same evaluations. For an O(h^4) rule the error at h
is about 1/15 of that change, so the estimate is conservative.

The noise level fed to a noise-conditional AR-CSM head is the smallest sigma of the
training schedule (`noise_level`): the model's density is q_{sigma_min}.
"""

import dataclasses
import math
import time
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from csm_jax import noise as noise_lib


def bits_per_dim(nll_nats, dim: int):
  """Negative log-likelihood in nats (per example) -> bits per dimension."""
  return np.asarray(nll_nats, np.float64) / (dim * math.log(2.0))


def noise_level(config: Any) -> float:
  """Noise level the head is evaluated at: min of config.noise's schedule, else 1.

  Without noise annealing (config.noise.enabled False) CSM trains the head at
  sigma = 1 (`losses.csm_loss`), so that is the level its density is defined at.
  """
  sigmas = noise_lib.sigmas_from_config(config.noise)
  return 1.0 if sigmas is None else float(np.min(sigmas))


@dataclasses.dataclass(frozen=True)
class Grid:
  """Uniform quadrature grid lo = g_0 < ... < g_{K-1} = hi, K odd."""
  lo: float
  hi: float
  num_points: int

  def __post_init__(self):
    if not self.hi > self.lo:
      raise ValueError(f"grid needs hi > lo, got lo={self.lo}, hi={self.hi}")
    if self.num_points < 5 or self.num_points % 2 == 0:
      raise ValueError(f"grid num_points must be odd and >= 5 (so that halving the grid "
                       f"keeps its end points), got {self.num_points}")

  @property
  def h(self) -> float:
    return (self.hi - self.lo) / (self.num_points - 1)

  def nodes(self, dtype=jnp.float32) -> jnp.ndarray:
    return self.lo + self.h * jnp.arange(self.num_points, dtype=dtype)

  def to_dict(self) -> dict:
    return {"lo": float(self.lo), "hi": float(self.hi), "num_points": int(self.num_points),
            "h": float(self.h)}


def grid_from_data(x: np.ndarray, num_points: int = 2049, margin: float = 0.1) -> Grid:
  """A grid covering [min x, max x] widened by `margin` of the range on each side."""
  x = np.asarray(x)
  lo, hi = float(x.min()), float(x.max())
  pad = margin * max(hi - lo, 1e-6)
  return Grid(lo - pad, hi + pad, int(num_points))


def make_grid(lik_config: Any, data: Optional[np.ndarray] = None) -> Grid:
  """Grid from config.likelihood; the data range (plus margin) fills unset ends."""
  lo, hi = lik_config.grid_min, lik_config.grid_max
  if lo is None or hi is None:
    if data is None:
      raise ValueError("likelihood.grid_min/grid_max unset: pass data to take the range from")
    g = grid_from_data(data, lik_config.num_points, lik_config.margin)
    lo = g.lo if lo is None else lo
    hi = g.hi if hi is None else hi
  return Grid(float(lo), float(hi), int(lik_config.num_points))


# ------------------------------------------------------------------------------------
# Quadrature on arrays whose last axis runs over the grid nodes
# ------------------------------------------------------------------------------------


def _anchored_energy(s, ds, h):
  """E at the nodes (..., K) from scores s and derivatives ds, E = 0 at its maximum.

  Per-cell integrals by the corrected trapezoid rule; summed outwards from the node of
  highest energy (found by a first plain cumulative sum), so that E is small in
  magnitude where exp(E) matters and float32 rounding does not grow with |E_max|.
  """
  inc = 0.5 * h * (s[..., :-1] + s[..., 1:]) - (h * h / 12.0) * (ds[..., 1:] - ds[..., :-1])
  zero = jnp.zeros_like(inc[..., :1])
  first = jnp.concatenate([zero, jnp.cumsum(inc, axis=-1)], axis=-1)
  anchor = jnp.argmax(first, axis=-1)[..., None]                      # (..., 1)
  cell = jnp.arange(inc.shape[-1])
  right = jnp.concatenate([zero, jnp.cumsum(jnp.where(cell >= anchor, inc, 0.0), -1)], -1)
  rev = jnp.flip(jnp.cumsum(jnp.flip(jnp.where(cell < anchor, inc, 0.0), -1), -1), -1)
  left = jnp.concatenate([rev, zero], axis=-1)
  return right - left


def _log_partition(E, s, h):
  """log int exp(E) by the corrected trapezoid rule ((exp E)' = s exp E)."""
  k = E.shape[-1]
  logw = jnp.full((k,), math.log(h)).at[0].set(math.log(h / 2)).at[-1].set(math.log(h / 2))
  log_t = jax.nn.logsumexp(E + logw, axis=-1)
  corr = (h * h / 12.0) * (s[..., -1] * jnp.exp(E[..., -1] - log_t)
                           - s[..., 0] * jnp.exp(E[..., 0] - log_t))
  return log_t + jnp.log1p(-jnp.clip(corr, -0.5, 0.5))


def _energy_at(x, sx, dsx, E, s, ds, lo, h):
  """E(x) from the nearest node j plus the corrected trapezoid over [g_j, x]."""
  k = E.shape[-1]
  j = jnp.clip(jnp.round((x - lo) / h), 0, k - 1).astype(jnp.int32)
  take = lambda a: jnp.take_along_axis(a, j[..., None], axis=-1)[..., 0]
  delta = x - (lo + j.astype(x.dtype) * h)
  return take(E) + 0.5 * delta * (take(s) + sx) - (delta * delta / 12.0) * (dsx - take(ds))


def log_conditional_from_scores(x, sx, dsx, s, ds, lo, h):
  """Normalized log q(x_d | x_<d) from scores on the grid (..., K) and at x (...)."""
  E = _anchored_energy(s, ds, h)
  return _energy_at(x, sx, dsx, E, s, ds, lo, h) - _log_partition(E, s, h)


# ------------------------------------------------------------------------------------
# Running the head on the grid
# ------------------------------------------------------------------------------------


def _auto_node_chunk(num_rows: int, num_points: int, budget: int = 1 << 16) -> int:
  """Nodes per vmapped head call so that about `budget` head points run at once."""
  return int(max(1, min(num_points, budget // max(1, num_rows))))


def _map_nodes(f, nodes, rows, node_chunk=None):
  """f(g) -> pytree of (B, n) arrays, for every node g: -> (B, n, K), chunked vmap."""
  k = nodes.shape[0]
  kc = node_chunk or _auto_node_chunk(rows, k)
  num = -(-k // kc)
  padded = jnp.concatenate([nodes, jnp.full((num * kc - k,), nodes[-1], nodes.dtype)])
  out = jax.lax.map(jax.vmap(f, out_axes=-1), padded.reshape(num, kc))  # (num, B, n, kc)
  return jax.tree.map(
      lambda a: jnp.moveaxis(a, 0, 2).reshape(a.shape[1], a.shape[2], num * kc)[..., :k], out)


def scores_on_grid(model, params, ctx, nodes, sigma, node_chunk=None):
  """s_d and d s_d/d x_d at every node for fixed contexts: (B, n, C) -> 2 x (B, n, K).

  The head is shared over dimensions, so a (B, n, C) context with n <= D is valid
  input (the cached sampler relies on the same). Nodes go through `vmap` in chunks
  of `node_chunk` (memory: about B * n * node_chunk head activations).
  """
  b, n = ctx.shape[0], ctx.shape[1]
  sig = jnp.full((b, n), sigma, ctx.dtype)
  f = lambda g: model.score_and_diag(params, ctx, jnp.full((b, n), g, ctx.dtype), sig)
  return _map_nodes(f, nodes, b * n, node_chunk)


def log_conditionals_on_grid(model, params, ctx, grid: Grid, sigma=1.0, node_chunk=None):
  """log q(g_k | x_<d) at every node: (B, n, C) contexts -> (B, n, K).

  AR-CSM heads: normalized on the grid by quadrature of the scores. Normalized heads
  (MLE baselines): their exact log-density at the nodes, which stays right when a
  component is narrower than the grid step (quadrature of such a score is not).
  For plotting densities and for ancestral sampling on the grid.
  """
  nodes = grid.nodes(ctx.dtype)
  if model.normalized:
    b, n = ctx.shape[0], ctx.shape[1]
    f = lambda g: model.log_cond(params, ctx, jnp.full((b, n), g, ctx.dtype))
    return _map_nodes(f, nodes, b * n, node_chunk)
  s, ds = scores_on_grid(model, params, ctx, nodes, sigma, node_chunk)
  E = _anchored_energy(s, ds, grid.h)
  return E - _log_partition(E, s, grid.h)[..., None]


def _auto_batch_chunk(dim: int, num_points: int, budget: int = 1 << 23) -> int:
  """Examples per inner step so that the (b, D, K) node arrays hold ~`budget` floats."""
  return int(max(1, budget // max(1, dim * num_points)))


def make_log_likelihood_fn(model, grid: Grid, sigma: float = 1.0, batch_chunk=None,
                           node_chunk=None) -> Callable:
  """Compiled (params, x (B, D)[, sigma]) -> dict of (B, D) arrays, quadrature on `grid`.

  Keys: log_cond (log q(x_d | x_<d) at step h), log_cond_coarse (at step 2h),
  outside (x_d outside [lo, hi]), edge_density (q(lo) + q(hi), a truncation check:
  for a normalized model with tails of scale tau the mass cut off is about this * tau).
  `sigma` (default: the one given here) is a traced argument: other noise levels of a
  noise-conditional head reuse the compiled function. The batch is processed
  `batch_chunk` examples at a time (padded), bounding the (b, D, K) node arrays.
  """
  if model.kind == "mass":
    raise ValueError("a discrete (probability mass) head has no score to integrate; "
                     "use method='exact'")
  bc = batch_chunk or _auto_batch_chunk(model.dim, grid.num_points)
  lo, h = grid.lo, grid.h

  def per_chunk(params, x, sig_value):
    ctx = model.context(params, x)                  # once: context[:, d] needs x_<d only
    sig = jnp.full_like(x, sig_value)
    sx, dsx = model.score_and_diag(params, ctx, x, sig)
    s, ds = scores_on_grid(model, params, ctx, grid.nodes(x.dtype), sig_value, node_chunk)
    E = _anchored_energy(s, ds, h)
    log_z = _log_partition(E, s, h)
    fine = _energy_at(x, sx, dsx, E, s, ds, lo, h) - log_z
    coarse = log_conditional_from_scores(x, sx, dsx, s[..., ::2], ds[..., ::2], lo, 2 * h)
    outside = (x < grid.lo) | (x > grid.hi)
    log_edge = jnp.logaddexp(E[..., 0], E[..., -1]) - log_z
    return {"log_cond": fine, "log_cond_coarse": coarse, "outside": outside,
            "edge_density": jnp.exp(log_edge)}

  @jax.jit
  def fn(params, x, sig_value):
    b = x.shape[0]
    c = min(bc, b)
    num = -(-b // c)
    xp = jnp.concatenate([x, jnp.repeat(x[-1:], num * c - b, axis=0)], axis=0)
    out = jax.lax.map(lambda xc: per_chunk(params, xc, sig_value), xp.reshape(num, c, -1))
    return jax.tree.map(lambda a: a.reshape((num * c,) + a.shape[2:])[:b], out)

  def call(params, x, sig_value=None):
    return fn(params, x, jnp.float32(sigma if sig_value is None else sig_value))

  return call


def make_exact_log_likelihood_fn(model) -> Callable:
  """jit (params, x) -> log q(x_d | x_<d) (B, D) of a normalized model (MLE heads)."""
  if not model.normalized:
    raise ValueError("exact log-likelihoods need a normalized head; use quadrature")
  return jax.jit(lambda params, x: model.log_cond(params, model.context(params, x), x))


# ------------------------------------------------------------------------------------
# Evaluation over a data set
# ------------------------------------------------------------------------------------


def evaluate_nll(model, params, y, *, method: str = "quadrature", grid: Optional[Grid] = None,
                 sigma: float = 1.0, preprocessor=None, batch_size: int = 64,
                 batch_chunk=None, node_chunk=None, log: Optional[Callable] = None,
                 log_every_sec: float = 30.0, fn: Optional[Callable] = None) -> dict:
  """Test NLL of `model` on model-space data y (N, D): nats, bits/dim, quadrature error.

  method 'quadrature' (any AR model, `grid` needed) or 'exact' (normalized heads).
  With a `preprocessor` of discrete data the NLL is also given in pixel space
  (x in [0, 256)^D, dequantized), log p_pix = log q(y) + log|dy/dx|, and `bpd` is in
  pixel space (for a discrete, probability-mass head: -log P / (D ln 2), no log-det);
  otherwise `bpd` is bits/dim of the model-space density. `fn` reuses a
  compiled function from `make_log_likelihood_fn` / `make_exact_log_likelihood_fn`
  (for quadrature it is called with this `sigma`).
  """
  y = np.asarray(y, np.float32)
  n, dim = y.shape
  if method == "quadrature":
    if grid is None:
      raise ValueError("method='quadrature' needs a grid")
    fn = fn or make_log_likelihood_fn(model, grid, sigma, batch_chunk, node_chunk)
  elif method == "exact":
    fn = fn or make_exact_log_likelihood_fn(model)
  else:
    raise ValueError(f"method must be 'quadrature' or 'exact', got {method!r}")

  log_q, log_q_coarse, outside, edge = [], [], 0, []
  start = last = time.perf_counter()
  for i in range(0, n, batch_size):
    xb = y[i:i + batch_size]
    pad = batch_size - len(xb)
    xb_dev = np.concatenate([xb, np.repeat(xb[-1:], pad, 0)]) if pad else xb
    out = fn(params, xb_dev, sigma) if method == "quadrature" else fn(params, xb_dev)
    if method == "quadrature":
      lc = np.asarray(out["log_cond"], np.float64)[:len(xb)]
      log_q.append(lc.sum(-1))
      log_q_coarse.append(np.asarray(out["log_cond_coarse"], np.float64)[:len(xb)].sum(-1))
      outside += int(np.asarray(out["outside"])[:len(xb)].sum())
      edge.append(np.asarray(out["edge_density"], np.float64)[:len(xb)].mean(-1))
    else:
      log_q.append(np.asarray(out, np.float64)[:len(xb)].sum(-1))
    now = time.perf_counter()
    done = min(n, i + batch_size)
    if log is not None and (now - last > log_every_sec or done == n):
      eta = (now - start) / done * (n - done)
      log(f"  nll ({method}) {done}/{n} examples, {now - start:.0f}s, ETA {eta:.0f}s")
      last = now
  log_q = np.concatenate(log_q)
  ldj = np.zeros(n)
  discrete = preprocessor is not None and preprocessor.discrete
  if discrete and model.kind != "mass":     # a mass over the 256 bins needs no log-det
    ldj = np.asarray(preprocessor.log_det_jacobian(y), np.float64)
  nll = -log_q
  nll_out = -(log_q + ldj)                                  # pixel space if discrete
  ln2d = dim * math.log(2.0)
  res = {
      "method": method, "num_examples": int(n), "dim": int(dim),
      "space": "pixel" if discrete else "model",
      "nll_nats": float(nll.mean()),                         # model space, per example
      "nll_nats_stderr": float(nll.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan"),
      "nll_nats_per_dim": float(nll.mean() / dim),
      "nll_out_nats": float(nll_out.mean()),                 # in `space`
      "bpd": float(bits_per_dim(nll_out.mean(), dim)),
      "bpd_stderr": float(nll_out.std(ddof=1) / ln2d / math.sqrt(n)) if n > 1 else float("nan"),
      "seconds": float(time.perf_counter() - start),
  }
  if method == "quadrature":
    diff = np.abs(log_q - np.concatenate(log_q_coarse))
    res.update({
        "grid": grid.to_dict(), "sigma": float(sigma),
        "quad_error_nats": float(diff.mean()),              # per example, |h - 2h| change
        "quad_error_nats_max": float(diff.max()),
        "quad_error_nats_per_dim": float(diff.mean() / dim),
        "quad_error_bpd": float(diff.mean() / ln2d),
        "frac_outside_grid": float(outside / (n * dim)),
        "edge_density_mean": float(np.concatenate(edge).mean()),
    })
  return res


def nll_per_sigma(model, params, y, sigmas, grid: Grid, **kwargs) -> dict:
  """Quadrature NLL of a noise-conditional AR-CSM at each level of `sigmas`.

  Every q_sigma(x_d | x_<d) of the schedule defines a normalized AR density; at the
  smallest sigma the energies integrate the score through regions without data,
  where score matching leaves it unconstrained (so the relative weight of separated
  modes is not learned), while a larger sigma fills those regions. Returns
  {"sigmas": [...], "nll_nats": [...], "best_sigma": float, "results": [...]}; pick
  the level on validation data, never on the test set.
  """
  fn = kwargs.pop("fn", None) or make_log_likelihood_fn(
      model, grid, float(sigmas[0]), kwargs.pop("batch_chunk", None),
      kwargs.pop("node_chunk", None))
  results = [evaluate_nll(model, params, y, grid=grid, sigma=float(s), fn=fn, **kwargs)
             for s in sigmas]
  nll = [r["nll_nats"] for r in results]
  return {"sigmas": [float(s) for s in sigmas], "nll_nats": nll,
          "best_sigma": float(sigmas[int(np.nanargmin(nll))]), "results": results}


def nll_from_config(config, model, params, y, preprocessor=None, log: Optional[Callable] = None
             ) -> Optional[dict]:
  """Test NLL of model-space data y (N, D) as config.likelihood asks; None if disabled.

  Exact for normalized heads; for AR-CSM heads by quadrature on the grid of
  config.likelihood (its range from y where grid_min/grid_max are unset) at noise level
  likelihood.sigma (default: the smallest sigma of the training schedule).
  """
  lk = config.likelihood
  if lk.num_examples == 0:
    return None
  y = np.asarray(y if lk.num_examples < 0 else y[:lk.num_examples])
  kw = dict(preprocessor=preprocessor, batch_size=lk.batch_size, log=log)
  if model.normalized:
    return evaluate_nll(model, params, y, method="exact", **kw)
  sigma = lk.sigma if lk.sigma is not None else noise_level(config)
  return evaluate_nll(model, params, y, method="quadrature", grid=make_grid(lk, data=y),
                      sigma=sigma, batch_chunk=lk.batch_chunk, node_chunk=lk.node_chunk, **kw)
