"""Exact log-likelihoods of AR-CSM models by one-dimensional quadrature.

An AR-CSM (Meng et al., "Autoregressive Score Matching", NeurIPS 2020, Eq. 4) gives,
for every dimension d, the score s_d(x_<d, x_d) of an *unnormalized* univariate
conditional (trained by the composite score matching objective, Eq. 5). The paper
reports only samples for such models; but since each conditional is one-dimensional,
its normalized log-density is a pair of 1-D integrals over the real line:

    E_d(t)   = int_lo^t s_d(x_<d, u) du                 (energy; any anchor)
    log Z_d  = log int_R exp(E_d(u)) du
    log q(x) = sum_d [E_d(x_d) - log Z_d]

Z_d is split in three: a fine grid [lo, hi] over the training data, outer nodes past
each end, and an analytic tail past the last of them. Nothing is truncated: leaving the
mass beyond [lo, hi] out (as this module once did) normalizes the model on [lo, hi]
instead of R and overstates log q by -log(1 - that mass) per dimension.

Interior quadrature. A uniform grid of K nodes (K odd). Both integrals use the trapezoid
rule with the Euler-Maclaurin end correction -h^2/12 [f'(b) - f'(a)], where f' comes for
free: for E the integrand is s_d and s_d' = d s_d / d x_d is the quantity CSM already
uses (one jvp through the head); for Z the integrand is exp(E) with derivative s exp(E).
The rule is O(h^4) and exact for cubic scores (so for Gaussian conditionals). E(x_d)
is taken from the nearest node plus the same rule over the partial cell. Energies are
accumulated outwards from the node of highest energy so that float32 rounding stays
small where the mass is.

Outer nodes (from the model). M nodes per side (`Grid.outer_points`) at outward
distances t(u) = A expm1(beta u) / beta, u = j / M: cells grow geometrically from h out
to `outer_reach` grid widths. The same corrected rule runs in u (integrands s t' and
exp(E) t', derivatives from s, ds and t'' = beta t'). They carry what a local tail
model cannot: conditionals that an outlying x_<d moved partly past the grid (a logistic
mixture's, say), and test values outside the grid. About 2M/K more head evaluations.

Tail model (past the last node). The energy continues as its second-order Taylor
expansion there, in the outward distance t >= 0:

    E(end + t) = E(end) + a t - c t^2 / 2,   a = outward score, c = max(-ds, 0),

a Gaussian tail where the energy is concave at the end (c > 0), else its tangent (an
exponential tail). The tail mass exp(E(end)) int_0^inf exp(a t - c t^2/2) dt is closed
form. Why quadratic and not only the tangent: it is exact for Gaussian conditionals
(Gaussian heads, and the asymptotically affine scores of a swish score head), while the
tangent overstates a Gaussian tail at z standard deviations by a relative 1/z^2. For
log-concave tails between Gaussian and exponential (a logistic's, say) the exact mass
lies between the two models (the tangent bounds a concave energy from above; the
quadratic bounds from below an energy whose curvature fades outwards), so their
difference is reported as the tail's error (the whole tail where only one is defined).
For a logistic u scales beyond its mean both are off by a relative e^-u, about the
square of the tail mass. With a > 0 (the energy still rising: a mode further out) the
quadratic is a guess: the outer nodes are there so that this happens only for
conditionals far outside the data. A side where neither tail decays (a >= 0 and
ds >= 0) has no finite tail: the model is not normalizable; it is cut at the last node
and the conditional is counted as `improper_tail` (its NLL depends on the cut).

Points outside the grid are counted per dimension. Within the outer nodes their
energy comes from the nearest outer node plus the partial cell (as inside); past the
last node from the tail model, so q(x_d | x_<d) is the normalized density whose mass
the tail adds to Z (not an extrapolation of the nearest cell); the gap to a two-sided
corrected-trapezoid step from the last node to x_d (which also uses s, ds at x_d) is
added to the reported error.

Reported error: the change in log q when every other node is dropped (h -> 2h, and
every other outer node; free from the same evaluations; for an O(h^4) rule the error
at h is about 1/15 of it, so the estimate is conservative) plus the tail and
outside-point model differences above. It can miss a conditional component much
narrower than h (neither level resolves it).

The grid range comes from training data (or the config), never from the test set.
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

from csm_jax import data as data_lib
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


OUTER_POINTS = 128   # default nodes per side beyond the grid ends
OUTER_REACH = 8.0    # default distance they reach past each end, in grid widths


def _stretch_rate(ratio: float) -> float:
  """beta > 0 with expm1(beta) / beta = ratio (0 if ratio <= 1), by bisection."""
  if ratio <= 1.0 + 1e-9:
    return 0.0
  lo, hi = 0.0, 1.0
  while math.expm1(hi) / hi < ratio:
    hi *= 2.0
  for _ in range(200):
    mid = 0.5 * (lo + hi)
    lo, hi = (mid, hi) if math.expm1(mid) / mid < ratio else (lo, mid)
  return 0.5 * (lo + hi)


@dataclasses.dataclass(frozen=True)
class Grid:
  """Quadrature nodes: a uniform interior lo = g_0 < ... < g_{K-1} = hi (K odd), and on
  each side `outer_points` (M, even) nodes out to `outer_reach` grid widths past the end.

  Outer nodes sit at outward distances t(u) = A expm1(beta u) / beta, u = j / M, from the
  end: cells grow geometrically from the interior step h (beta set so that the first
  cell is h and t(1) = outer_reach (hi - lo); beta = 0, uniform cells, if M cells of h
  already reach that far). They carry the conditionals' mass beyond [lo, hi], and
  outlying test points, with the model's own scores; an analytic tail closes each side
  past the last node (see the module docstring). M = 0: analytic tails at lo and hi.
  """
  lo: float
  hi: float
  num_points: int
  outer_points: int = OUTER_POINTS
  outer_reach: float = OUTER_REACH

  def __post_init__(self):
    if not self.hi > self.lo:
      raise ValueError(f"grid needs hi > lo, got lo={self.lo}, hi={self.hi}")
    if self.num_points < 5 or self.num_points % 2 == 0:
      raise ValueError(f"grid num_points must be odd and >= 5 (so that halving the grid "
                       f"keeps its end points), got {self.num_points}")
    if self.outer_points < 0 or self.outer_points % 2:
      raise ValueError(f"grid outer_points must be even and >= 0 (halving keeps the last "
                       f"node), got {self.outer_points}")
    if self.outer_points and not self.outer_reach > 0:
      raise ValueError(f"grid outer_reach must be > 0, got {self.outer_reach}")

  @property
  def h(self) -> float:
    return (self.hi - self.lo) / (self.num_points - 1)

  @property
  def outer_beta(self) -> float:
    """Growth rate of the outer cells in u (0: uniform)."""
    if not self.outer_points:
      return 0.0
    return _stretch_rate(self.outer_reach * (self.num_points - 1) / self.outer_points)

  @property
  def outer_slope(self) -> float:
    """A = dt/du at the grid end."""
    reach, beta = self.outer_reach * (self.hi - self.lo), self.outer_beta
    return reach * beta / math.expm1(beta) if beta else reach

  def outer_offsets(self) -> np.ndarray:
    """Outward distances t_j of the outer nodes, j = 0..M (t_0 = 0: the end), float64."""
    u = np.arange(self.outer_points + 1) / max(self.outer_points, 1)
    beta, a = self.outer_beta, self.outer_slope
    return a * np.expm1(beta * u) / beta if beta else a * u

  def nodes(self, dtype=jnp.float32) -> jnp.ndarray:
    """The K interior nodes."""
    return self.lo + self.h * jnp.arange(self.num_points, dtype=dtype)

  def all_nodes(self, dtype=jnp.float32) -> jnp.ndarray:
    """Lower outer, interior and upper outer nodes, ascending: (K + 2M,)."""
    t = self.outer_offsets()[1:]
    inner = self.lo + self.h * np.arange(self.num_points)
    return jnp.asarray(np.concatenate([self.lo - t[::-1], inner, self.hi + t]), dtype)

  def to_dict(self) -> dict:
    t_far = float(self.outer_offsets()[-1]) if self.outer_points else 0.0
    return {"lo": float(self.lo), "hi": float(self.hi), "num_points": int(self.num_points),
            "h": float(self.h), "outer_points": int(self.outer_points),
            "outer_reach": float(self.outer_reach),
            "covered": [float(self.lo - t_far), float(self.hi + t_far)]}


def grid_from_data(x: np.ndarray, num_points: int = 2049, margin: float = 0.1,
                   outer_points: int = OUTER_POINTS, outer_reach: float = OUTER_REACH) -> Grid:
  """A grid covering [min x, max x] widened by `margin` of the range on each side.

  x should be training data (`grid_training_data`): a grid from the test set lets the
  test data shape its own evaluation. Nothing is lost beyond the grid (outer nodes and
  tails), so the range sets only where the fine interior rule works.
  """
  x = np.asarray(x)
  lo, hi = float(x.min()), float(x.max())
  pad = margin * max(hi - lo, 1e-6)
  return Grid(lo - pad, hi + pad, int(num_points), int(outer_points), float(outer_reach))


def make_grid(lik_config: Any, data: Optional[np.ndarray] = None) -> Grid:
  """Grid from config.likelihood; the range of `data` (plus margin) fills unset ends.

  Pass training data (`grid_training_data`), never the test set.
  """
  lo, hi = lik_config.grid_min, lik_config.grid_max
  if lo is None or hi is None:
    if data is None:
      raise ValueError("likelihood.grid_min/grid_max unset: pass data to take the range from")
    g = grid_from_data(data, lik_config.num_points, lik_config.margin)
    lo = g.lo if lo is None else lo
    hi = g.hi if hi is None else hi
  return Grid(float(lo), float(hi), int(lik_config.num_points),
              int(lik_config.outer_points), float(lik_config.outer_reach))


# ------------------------------------------------------------------------------------
# Quadrature on arrays whose last axis runs over the grid nodes
# ------------------------------------------------------------------------------------


def _cell_integrals(f, df, step):
  """Corrected trapezoid integrals of f over consecutive cells: (..., n) -> (..., n-1).

  step/2 (f_i + f_{i+1}) - step^2/12 (f'_{i+1} - f'_i): O(step^5) per cell.
  """
  return (0.5 * step * (f[..., :-1] + f[..., 1:])
          - (step * step / 12.0) * (df[..., 1:] - df[..., :-1]))


def _anchored_cumsum(inc):
  """Node values (..., n+1) with the given increments (..., n), 0 at their maximum.

  Summed outwards from the node of highest value (found by a first plain cumulative
  sum), so that energies are small in magnitude where exp(E) matters and float32
  rounding does not grow with |E_max|.
  """
  zero = jnp.zeros_like(inc[..., :1])
  first = jnp.concatenate([zero, jnp.cumsum(inc, axis=-1)], axis=-1)
  anchor = jnp.argmax(first, axis=-1)[..., None]                      # (..., 1)
  cell = jnp.arange(inc.shape[-1])
  right = jnp.concatenate([zero, jnp.cumsum(jnp.where(cell >= anchor, inc, 0.0), -1)], -1)
  rev = jnp.flip(jnp.cumsum(jnp.flip(jnp.where(cell < anchor, inc, 0.0), -1), -1), -1)
  left = jnp.concatenate([rev, zero], axis=-1)
  return right - left


def _anchored_energy(s, ds, h):
  """E at uniform nodes (..., K) from scores s and derivatives ds, E = 0 at its maximum."""
  return _anchored_cumsum(_cell_integrals(s, ds, h))


def _log_integral(log_g, dlog_g, step):
  """log of the corrected trapezoid rule for g = exp(log_g) on uniform nodes (..., n);
  dlog_g = g'/g gives the end correction."""
  k = log_g.shape[-1]
  logw = jnp.full((k,), math.log(step)).at[0].set(math.log(step / 2))
  logw = logw.at[-1].set(math.log(step / 2))
  log_t = jax.nn.logsumexp(log_g + logw, axis=-1)
  corr = (step * step / 12.0) * (dlog_g[..., -1] * jnp.exp(log_g[..., -1] - log_t)
                                 - dlog_g[..., 0] * jnp.exp(log_g[..., 0] - log_t))
  return log_t + jnp.log1p(-jnp.clip(corr, -0.5, 0.5))


def _log_partition(E, s, h):
  """log int_lo^hi exp(E) by the corrected trapezoid rule ((exp E)' = s exp E)."""
  return _log_integral(E, s, h)


def log_tail_mass(a, c):
  """log int_0^inf exp(a t - c t^2 / 2) dt, elementwise; c >= 0.

  The mass past the last node of the tail model E(end + t) = E(end) + a t - c t^2 / 2,
  relative to exp(E(end)); a is the score pointing outwards. c > 0 (Gaussian tail):
  sqrt(2 pi / c) exp(a^2 / 2c) Phi(a / sqrt c), written with the scaled complementary
  error function erfcx(y) = exp(y^2) erfc(y) so that no large terms cancel when
  a / sqrt c is very negative (it then tends to the exponential tail). c = 0
  (exponential tail): 1 / (-a) for a < 0, +inf (no finite tail) for a >= 0.
  """
  gauss = c > 0
  cs = jnp.where(gauss, c, 1.0)
  z = a / jnp.sqrt(cs)
  zn, zp = jnp.minimum(z, 0.0), jnp.maximum(z, 0.0)
  # log(Phi(z) exp(z^2 / 2)): erfcx(-z / sqrt 2) / 2 for z < 0, direct for z >= 0
  log_scaled = jnp.where(z < 0, jnp.log(0.5 * jax.scipy.special.erfcx(-zn / math.sqrt(2.0))),
                         0.5 * zp * zp + jax.scipy.special.log_ndtr(zp))
  log_gauss = 0.5 * jnp.log(2.0 * math.pi / cs) + log_scaled
  log_exp = jnp.where(a < 0, -jnp.log(jnp.where(a < 0, -a, 1.0)), jnp.inf)
  return jnp.where(gauss, log_gauss, log_exp)


@dataclasses.dataclass(frozen=True)
class _Geometry:
  """Static numbers of one quadrature level (the grid at step h, or every other node)."""
  lo: float
  hi: float
  h: float                 # interior step
  outer: int               # outer cells per side
  beta: float              # t(u) = slope expm1(beta u) / beta, u in [0, 1]
  slope: float

  @classmethod
  def of(cls, grid: Grid, stride: int = 1):
    return cls(grid.lo, grid.hi, grid.h * stride, grid.outer_points // stride,
               grid.outer_beta, grid.outer_slope)

  def dt(self, u):
    """t'(u) of the outer map t(u) = slope expm1(beta u) / beta."""
    return self.slope * jnp.exp(self.beta * u) if self.beta else self.slope + 0.0 * u

  def u(self, t):
    """Its inverse: the outer parameter of outward distance t."""
    return jnp.log1p(self.beta * t / self.slope) / self.beta if self.beta else t / self.slope

  @property
  def t_far(self) -> float:
    if not self.outer:
      return 0.0
    return self.slope * math.expm1(self.beta) / self.beta if self.beta else self.slope


def _outward_integrands(a, ds, geo: _Geometry, u):
  """On an outer side, in u: f = dE/du = a t' and df/du = ds t'^2 + a t'' (t'' = beta t'),
  for outward scores a and ds = d^2 E / dx^2 at outward parameters u."""
  tp = geo.dt(u)
  return a * tp, ds * tp * tp + a * geo.beta * tp, tp


def _tail_energy(e_end, a_end, ds_end, tau):
  """Energy of the tail model at outward distance tau >= 0 past a last node."""
  return e_end + a_end * tau - 0.5 * jnp.maximum(-ds_end, 0.0) * tau * tau


def _quadrature(x, sx, dsx, s, ds, s_out, ds_out, geo: _Geometry):
  """log q(x_d | x_<d) over R from scores at the nodes; a dict of (...) arrays.

  s, ds: (..., K) at the interior nodes; s_out, ds_out: pairs (lower, upper) of (..., M)
  at the outer nodes in outward order, without the end node (None where M = 0).
  Keys: log_cond, tail_nats (log Z - log Z over [lo, hi]: -log(1 - mass beyond the
  grid)), tail_error (|change of log Z| when each analytic tail is swapped for its
  alternative: the exponential tail where the Gaussian one is used, else none),
  outside_error (|tail model - extrapolation| for points past the last node), improper
  (a side without a finite tail: cut at its last node), beyond (x past the last node),
  edge_density (q(lo) + q(hi)).
  """
  m, k = geo.outer, s.shape[-1]
  u_nodes = jnp.arange(m + 1, dtype=s.dtype) / max(m, 1)
  sides = []          # lower, upper: outward score a and ds at outer nodes j = 0..m
  for i, (sign, end) in enumerate(((-1.0, 0), (1.0, k - 1))):
    a_end, ds_end = sign * s[..., end:end + 1], ds[..., end:end + 1]
    if m:
      a_end = jnp.concatenate([a_end, sign * s_out[i]], -1)
      ds_end = jnp.concatenate([ds_end, ds_out[i]], -1)
    sides.append((a_end, ds_end) + _outward_integrands(a_end, ds_end, geo, u_nodes))
  inc_in = _cell_integrals(s, ds, geo.h)
  if m:   # one anchored sum over all nodes in ascending x
    inc_lo, inc_hi = (_cell_integrals(f, df, 1.0 / m) for _, _, f, df, _ in sides)
    E_all = _anchored_cumsum(jnp.concatenate([-jnp.flip(inc_lo, -1), inc_in, inc_hi], -1))
    E = E_all[..., m:m + k]
    E_side = [jnp.flip(E_all[..., :m + 1], -1), E_all[..., m + k - 1:]]
  else:
    E = _anchored_cumsum(inc_in)
    E_side = [E[..., :1], E[..., -1:]]

  log_zi = _log_partition(E, s, geo.h)
  parts, improper, err_terms = [log_zi], jnp.zeros(log_zi.shape, bool), []
  for (a, d, f, _, tp), e in zip(sides, E_side):
    if m:    # int exp(E) t' du; (exp(E) t')' / (exp(E) t') = f + beta
      parts.append(_log_integral(e + jnp.log(tp), f + geo.beta, 1.0 / m))
    a_far, ds_far, e_far = a[..., -1], d[..., -1], e[..., -1]
    c_far = jnp.maximum(-ds_far, 0.0)
    lt = log_tail_mass(a_far, c_far)
    bad = ~jnp.isfinite(lt)
    improper = improper | bad
    parts.append(jnp.where(bad, -jnp.inf, e_far + lt))
    alt = jnp.where((c_far > 0) & (a_far < 0) & ~bad,
                    e_far - jnp.log(jnp.where(a_far < 0, -a_far, 1.0)), -jnp.inf)
    err_terms.append((parts[-1], alt))
  log_z = jax.nn.logsumexp(jnp.stack(parts, 0), axis=0)
  tail_error = 0.0
  for lt, alt in err_terms:
    tail_error = tail_error + jnp.abs(jnp.log1p(jnp.exp(jnp.minimum(alt - log_z, 60.0))
                                                - jnp.exp(lt - log_z)))

  # energy at x: interior cell, outer cell (in u), or the tail model past the last node
  j = jnp.clip(jnp.round((x - geo.lo) / geo.h), 0, k - 1).astype(jnp.int32)
  take = lambda arr, idx: jnp.take_along_axis(arr, idx[..., None], axis=-1)[..., 0]
  delta = x - (geo.lo + j.astype(x.dtype) * geo.h)
  energy = (take(E, j) + 0.5 * delta * (take(s, j) + sx)
            - (delta * delta / 12.0) * (dsx - take(ds, j)))
  outside_error = jnp.zeros_like(x)
  beyond = jnp.zeros(x.shape, bool)
  t_far = geo.t_far
  for (a, d, f, df, _), e, sign, t in zip(sides, E_side, (-1.0, 1.0),
                                         (geo.lo - x, x - geo.hi)):
    ax = sign * sx
    if m:
      uq = geo.u(jnp.clip(t, 0.0, t_far))
      jq = jnp.clip(jnp.round(uq * m), 0, m).astype(jnp.int32)
      du = uq - jq.astype(x.dtype) / m
      fx, dfx, _ = _outward_integrands(ax, dsx, geo, uq)
      e_out = (take(e, jq) + 0.5 * du * (take(f, jq) + fx)
               - (du * du / 12.0) * (dfx - take(df, jq)))
      energy = jnp.where(t > 0, e_out, energy)
    tau = jnp.maximum(t - t_far, 0.0)
    past = t > t_far
    e_tail = _tail_energy(e[..., -1], a[..., -1], d[..., -1], tau)
    e_ext = (e[..., -1] + 0.5 * tau * (a[..., -1] + ax)
             - (tau * tau / 12.0) * (dsx - d[..., -1]))
    energy = jnp.where(past, e_tail, energy)
    outside_error = jnp.where(past, jnp.abs(e_tail - e_ext), outside_error)
    beyond = beyond | past
  log_edge = jnp.logaddexp(E[..., 0], E[..., -1]) - log_z
  return {"log_cond": energy - log_z, "tail_nats": log_z - log_zi, "tail_error": tail_error,
          "outside_error": outside_error, "improper": improper, "beyond": beyond,
          "edge_density": jnp.exp(log_edge)}


def split_node_values(a, grid: Grid):
  """(interior (..., K), (lower, upper) outer (..., M) in outward order or None) from
  values at `grid.all_nodes()` (..., K + 2M)."""
  m, k = grid.outer_points, grid.num_points
  if not m:
    return a, None
  return a[..., m:m + k], (jnp.flip(a[..., :m], -1), a[..., m + k:])


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

  AR-CSM heads: normalized on [lo, hi] by quadrature of the scores, without the tails
  (the conditional restricted to the grid: what ancestral sampling on the grid draws
  from; `make_log_likelihood_fn` normalizes over R instead). Normalized heads (MLE
  baselines): their exact log-density at the nodes, which stays right when a
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

  Keys: log_cond (log q(x_d | x_<d) normalized over R: interior at step h, outer nodes,
  analytic tails), log_cond_coarse (the same with every other node: steps 2h), outside
  (x_d outside [lo, hi]), beyond_reach (x_d past the last outer node), tail_nats (what
  the mass beyond [lo, hi] adds to log Z_d: -log(1 - that mass)), tail_error and
  outside_error (analytic-tail uncertainty, nats; see the module docstring),
  improper_tail (a side with no finite tail: cut at its last node) and edge_density
  (q(lo) + q(hi)).
  `sigma` (default: the one given here) is a traced argument: other noise levels of a
  noise-conditional head reuse the compiled function. The batch is processed
  `batch_chunk` examples at a time (padded), bounding the (b, D, K + 2M) node arrays.
  """
  if model.kind == "mass":
    raise ValueError("a discrete (probability mass) head has no score to integrate; "
                     "use method='exact'")
  num_nodes = grid.num_points + 2 * grid.outer_points
  bc = batch_chunk or _auto_batch_chunk(model.dim, num_nodes)
  fine_geo, coarse_geo = _Geometry.of(grid, 1), _Geometry.of(grid, 2)

  def per_chunk(params, x, sig_value):
    ctx = model.context(params, x)                  # once: context[:, d] needs x_<d only
    sig = jnp.full_like(x, sig_value)
    sx, dsx = model.score_and_diag(params, ctx, x, sig)
    s_all, ds_all = scores_on_grid(model, params, ctx, grid.all_nodes(x.dtype), sig_value,
                                   node_chunk)
    (s, s_out), (ds, ds_out) = split_node_values(s_all, grid), split_node_values(ds_all, grid)
    fine = _quadrature(x, sx, dsx, s, ds, s_out, ds_out, fine_geo)
    half = lambda pair: None if pair is None else tuple(v[..., 1::2] for v in pair)
    coarse = _quadrature(x, sx, dsx, s[..., ::2], ds[..., ::2], half(s_out), half(ds_out),
                         coarse_geo)
    return {"log_cond": fine["log_cond"], "log_cond_coarse": coarse["log_cond"],
            "outside": (x < grid.lo) | (x > grid.hi), "beyond_reach": fine["beyond"],
            "tail_nats": fine["tail_nats"], "tail_error": fine["tail_error"],
            "outside_error": fine["outside_error"], "improper_tail": fine["improper"],
            "edge_density": fine["edge_density"]}

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
                 log_every_sec: float = 30.0, fn: Optional[Callable] = None,
                 per_example: bool = False) -> dict:
  """Test NLL of `model` on model-space data y (N, D): nats, bits/dim, quadrature error.

  per_example: also return res['per_example'] = {'log_lik': (N,) float64 log-likelihood
  in `space` (pixel space for discrete data), 'error': (N,) quadrature error (zeros for
  'exact')} as numpy arrays (for per-image statistics such as OOD scores; not JSON).

  method 'quadrature' (any AR model, `grid` needed: take its range from training data,
  never from y) or 'exact' (normalized heads).
  With a `preprocessor` of discrete data the NLL is also given in pixel space
  (x in [0, 256)^D, dequantized), log p_pix = log q(y) + log|dy/dx|, and `bpd` is in
  pixel space (for a discrete, probability-mass head: -log P / (D ln 2), no log-det);
  otherwise `bpd` is bits/dim of the model-space density. `fn` reuses a
  compiled function from `make_log_likelihood_fn` / `make_exact_log_likelihood_fn`
  (for quadrature it is called with this `sigma`).

  Quadrature adds (per example unless said otherwise): quad_error_nats (interior h vs
  2h change + tail_error + outside_error: the reported error), tail_nats_per_dim (what
  the tails beyond the grid add to log Z, in the NLL: the bias a grid-truncated
  normalization would have), tail_mass_mean / tail_mass_max (mass of a conditional
  beyond the grid ends, over all examples and dimensions), outside_per_dim (test values
  outside [lo, hi] per dimension, D counts), frac_outside_grid, frac_improper_tail
  (conditionals with a grid end that has no finite tail, cut there) and
  edge_density_mean.
  """
  y = np.asarray(y)
  # float32 on device; float64 data stay float64 where x64 is on (for exactness checks)
  y = y.astype(np.float64 if y.dtype == np.float64 and jax.config.jax_enable_x64
               else np.float32)
  n, dim = y.shape
  if method == "quadrature":
    if grid is None:
      raise ValueError("method='quadrature' needs a grid")
    fn = fn or make_log_likelihood_fn(model, grid, sigma, batch_chunk, node_chunk)
  elif method == "exact":
    fn = fn or make_exact_log_likelihood_fn(model)
  else:
    raise ValueError(f"method must be 'quadrature' or 'exact', got {method!r}")

  log_q, parts = [], {k: [] for k in ("coarse", "tail_nats", "tail_share_max", "tail_share",
                                      "tail_error", "outside_error", "edge", "improper",
                                      "beyond")}
  outside = np.zeros(dim, np.int64)
  start = last = time.perf_counter()
  for i in range(0, n, batch_size):
    xb = y[i:i + batch_size]
    nb, pad = len(xb), batch_size - len(xb)
    xb_dev = np.concatenate([xb, np.repeat(xb[-1:], pad, 0)]) if pad else xb
    out = fn(params, xb_dev, sigma) if method == "quadrature" else fn(params, xb_dev)
    if method == "quadrature":
      get = lambda k: np.asarray(out[k], np.float64)[:nb]
      log_q.append(get("log_cond").sum(-1))
      parts["coarse"].append(get("log_cond_coarse").sum(-1))
      tail_nats = get("tail_nats")
      share = -np.expm1(-tail_nats)                         # mass beyond the grid ends
      parts["tail_nats"].append(tail_nats.sum(-1))
      parts["tail_share"].append(share.mean(-1))
      parts["tail_share_max"].append(share.max(-1))
      parts["tail_error"].append(get("tail_error").sum(-1))
      parts["outside_error"].append(get("outside_error").sum(-1))
      parts["edge"].append(get("edge_density").mean(-1))
      parts["improper"].append(get("improper_tail").mean(-1))
      parts["beyond"].append(get("beyond_reach").mean(-1))
      outside += np.asarray(out["outside"])[:nb].sum(0)
    else:
      log_q.append(np.asarray(out, np.float64)[:nb].sum(-1))
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
  if per_example:
    res["per_example"] = {"log_lik": log_q + ldj, "error": np.zeros(n)}
  if method == "quadrature":
    cat = {k: np.concatenate(v) for k, v in parts.items()}
    interior = np.abs(log_q - cat["coarse"])                # |h - 2h| change, per example
    err = interior + cat["tail_error"] + cat["outside_error"]
    if per_example:
      res["per_example"]["error"] = err
    res.update({
        "grid": grid.to_dict(), "sigma": float(sigma),
        "quad_error_nats": float(err.mean()),               # per example, all parts
        "quad_error_nats_max": float(err.max()),
        "quad_error_nats_per_dim": float(err.mean() / dim),
        "quad_error_bpd": float(err.mean() / ln2d),
        "interior_error_nats": float(interior.mean()),
        "tail_error_nats": float(cat["tail_error"].mean()),
        "outside_error_nats": float(cat["outside_error"].mean()),
        "tail_nats_per_dim": float(cat["tail_nats"].mean() / dim),
        "tail_mass_mean": float(cat["tail_share"].mean()),
        "tail_mass_max": float(cat["tail_share_max"].max()),
        "frac_outside_grid": float(outside.sum() / (n * dim)),
        "outside_per_dim": [int(v) for v in outside],
        "frac_beyond_reach": float(cat["beyond"].mean()),
        "frac_improper_tail": float(cat["improper"].mean()),
        "edge_density_mean": float(cat["edge"].mean()),
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


def grid_training_data(config, train, preprocessor=None) -> np.ndarray:
  """Model-space training examples whose range sets an unset grid end (N, D).

  The first likelihood.grid_num_train examples of `train` (as stored: through
  `preprocessor` with a fixed dequantization rng, dequant_rng(seed + 3, 0), so every
  evaluation of a run gets the same grid; model space already if `preprocessor` is
  None). Test data never sets the grid: it would let the test set shape its own
  evaluation.
  """
  train = train[:config.likelihood.grid_num_train]
  if preprocessor is None:
    return np.asarray(train, np.float32).reshape(len(train), -1)
  return preprocessor(train, data_lib.dequant_rng(config.seed + 3, 0))


def nll_from_config(config, model, params, y, preprocessor=None, log: Optional[Callable] = None,
                    train=None, per_example: bool = False) -> Optional[dict]:
  """Test NLL of model-space data y (N, D) as config.likelihood asks; None if disabled.

  Exact for normalized heads; for AR-CSM heads by quadrature over R (grid interior plus
  analytic tails) at noise level likelihood.sigma (default: the smallest sigma of the
  training schedule). The grid ends are likelihood.grid_min/grid_max where set, else
  the range of the training examples `train` (as stored, see `grid_training_data`)
  widened by likelihood.margin; the test data y never sets them. The result records
  where the grid came from (`grid_source`).
  """
  lk = config.likelihood
  if lk.num_examples == 0:
    return None
  y = np.asarray(y if lk.num_examples < 0 else y[:lk.num_examples])
  kw = dict(preprocessor=preprocessor, batch_size=lk.batch_size, log=log,
            per_example=per_example)
  if model.normalized:
    return evaluate_nll(model, params, y, method="exact", **kw)
  data, source = None, "config (likelihood.grid_min, grid_max)"
  if lk.grid_min is None or lk.grid_max is None:
    if train is None:
      raise ValueError("likelihood.grid_min/grid_max unset: pass the training data (train=) "
                       "to take the grid range from; the test set never sets the grid")
    data = grid_training_data(config, train, preprocessor)
    source = (f"range of {len(data)} training examples + {lk.margin:g} of it on each side"
              + (", config for the set end" if lk.grid_min is not None
                 or lk.grid_max is not None else ""))
  sigma = lk.sigma if lk.sigma is not None else noise_level(config)
  res = evaluate_nll(model, params, y, method="quadrature", grid=make_grid(lk, data=data),
                     sigma=sigma, batch_chunk=lk.batch_chunk, node_chunk=lk.node_chunk, **kw)
  res["grid_source"] = source
  return res
