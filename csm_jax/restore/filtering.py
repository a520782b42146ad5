"""Sequential (filtering) posterior sampling on the pixel grid: the AR prior's own order.

An AR prior factorizes q(x) = prod_d q(x_d | x_<d), and most observations factorize
over pixels (or small blocks). Going through the pixels in the model's order, each
pixel is drawn exactly, on the grid of its 256 possible values, from

    pi_d(x_d) proportional to q(x_d | x_<d) * prod_{f completed at d} p(y_f | x_<=d),   (*)

where a likelihood factor f is "completed at d" when d is the last of its pixels in the
order (each pixel for noise, salt-and-pepper and inpainting; the last pixel of each
pooled block for super-resolution). Pinned pixels (observed exactly) keep their value.

What (*) is: the product of the pi_d is the sequential-importance proposal that uses
every observation as soon as its pixels are known (the "locally optimal" proposal of
sequential Monte Carlo without look-ahead). It IS the exact posterior when the
observation is a suffix in the model's order (bottom-half inpainting in raster order:
no factor involves a later pixel); otherwise it ignores what later observations say
about earlier pixels (a noisy pixel below a stroke does not move the stroke above it),
and a Gibbs or Langevin finish (`posterior.Settings`) brings those in.

Why a grid and not Langevin: salt-and-pepper's likelihood is a mixture of a spike (the
pixel kept: mass (1 - p) q(bin of y)) and a flat part (p/2); on the 256 pixel values the
spike is one value and its mass is exact, so deciding "kept or corrupted" is one exact
categorical draw, which gradient steps at small noise levels cannot make.

The per-pixel conditional on the grid: exact for normalized heads (`model.log_cond`,
times each value's bin width in model space for a density; a probability-mass head,
such as PixelCNN++'s discretized logistic mixture of the MLE baseline, gives each value's
probability directly, so no width); for score heads, energies by the trapezoid rule of the head's scores between the
(possibly non-uniform, in logit space) pixel values, E_k = sum_j<k (g_{j+1} - g_j)
(s_j + s_{j+1}) / 2, weighted by each value's bin width in model space. No library
offers ancestral sampling of an AR score model under an observation, so this is written
here.

Outputs: the posterior-mean estimate Rao-Blackwellized per pixel (each chain's
conditional mean E[x_d | x_<d, y] under (*), averaged over chains: lower variance than
averaging the draws), and the draws themselves.
"""

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from csm_jax import likelihood as lik_lib
from csm_jax.restore import observations as obs_lib


def pixel_values(space: obs_lib.PixelSpace, box=None, num_values: int = 256):
  """(values in model space (K,), in image units (K,), log bin widths (K,)), float64.

  Pixel data: the 256 pixel values (u = v / 255) and the model-space width of each
  pixel's bin. Real-valued data (identity space): `num_values` uniform nodes on `box`.
  """
  if space.identity:
    if box is None:
      raise ValueError("filter: real-valued data has no pixel grid; give restore.box_min/"
                       "box_max")
    xs = np.linspace(box.lo, box.hi, int(num_values))
    return xs, xs, np.full(len(xs), np.log(xs[1] - xs[0]))
  v = np.arange(256.0)
  to_model = lambda u: np.asarray(space.from_image(jnp.asarray(u, jnp.float32)), np.float64)
  xs = to_model(v / 255.0)
  edges = to_model(np.clip(np.concatenate([[0.0], v[:-1] + 0.5, [255.0]]) / 255.0, 0, 1))
  width = np.diff(edges)
  width[0] *= 2.0   # the end bins are half-open on the grid: give them a full bin
  width[-1] *= 2.0
  return xs, v / 255.0, np.log(np.maximum(width, 1e-30))


def _node_log_density(model, params, ctx_d, xs, sigma):
  """Unnormalized log q(g_k | x_<d) at the values xs, (B, K), for one dimension
  (ctx_d (B, 1, C)); for contexts (B, D, C) of every dimension, (B, D, K)."""
  shape = ctx_d.shape[:2]
  if model.normalized:
    f = lambda g: model.log_cond(params, ctx_d, jnp.full(shape, g, ctx_d.dtype))
  else:
    sig = jnp.full(shape, sigma, ctx_d.dtype)
    f = lambda g: model.score(params, ctx_d, jnp.full(shape, g, ctx_d.dtype), sig)
  out = jax.vmap(f, out_axes=-1)(xs)                     # (B, D, K)
  if not model.normalized:   # energies: the trapezoid rule of the scores between values
    out = lik_lib._anchored_cumsum(  # pylint: disable=protected-access
        0.5 * jnp.diff(xs) * (out[..., :-1] + out[..., 1:]))
  return out[:, 0] if shape[1] == 1 else out


def reweight_split(log_p, log_p_ref, xs, split, s, lo, hi):
  """log_p (..., K) with the masses of its two sides of `split` re-estimated from
  log_p_ref, the same conditional at a larger noise level.

  Why: at a small noise level a pixel's conditional is two narrow modes (background and
  ink) far apart, and score matching fixes their relative weight only through the score
  in the gap between them, where the perturbed data hardly reach; at a larger level
  sigma_ref the modes overlap and the weight is fitted (the difficulty of NCSN's Sec. 3.2,
  Song and Ermon 2019). A smoothed density is q_ref = q * N(0, s^2), s^2 = sigma_ref^2 -
  sigma^2, so keeping the shape of log_p within each side (A: xs < split, B: the rest)
  and choosing the side weights (w_A, w_B) so that, smoothed by N(0, s^2) and restricted
  to the lattice's range [lo, hi], the mass above `split` equals log_p_ref's f:

      w_B / w_A = (f m_AA - (1 - f) m_AB) / ((1 - f) m_BB - f m_BA),

  m_XY the mass of side X's normalized shape that the smoothing moves into side Y of
  [lo, hi]. Exact when log_p_ref is log_p's shape with other side weights, smoothed;
  a negative ratio (log_p_ref inconsistent with this shape) is clipped to one side.
  Written here (no library estimates mixture weights across noise levels).
  All arguments in model space: xs (K,) lattice values; log_p and log_p_ref normalized
  over the K values.
  """
  a = xs < split
  ninf = jnp.asarray(-jnp.inf, log_p.dtype)

  def side(mask):
    lp = jnp.where(mask, log_p, ninf)
    lse = jax.nn.logsumexp(lp, axis=-1, keepdims=True)
    lse = jnp.where(jnp.isfinite(lse), lse, 0.0)
    return lp - lse                                       # log shape on the side

  la, lb = side(a), side(~a)
  ndtr = jax.scipy.special.ndtr
  below = ndtr((split - xs) / s) - ndtr((lo - xs) / s)     # (K,) lands in [lo, split)
  above = ndtr((hi - xs) / s) - ndtr((split - xs) / s)     # lands in [split, hi]
  m_aa, m_ab = jnp.exp(la) @ below, jnp.exp(la) @ above
  m_ba, m_bb = jnp.exp(lb) @ below, jnp.exp(lb) @ above
  f = jnp.sum(jnp.where(a, 0.0, jnp.exp(log_p_ref)), axis=-1)
  tiny = jnp.asarray(1e-30, log_p.dtype)
  w_b = jnp.maximum(f * m_aa - (1.0 - f) * m_ab, tiny)
  w_a = jnp.maximum((1.0 - f) * m_bb - f * m_ba, tiny)
  log_wa = jnp.log(w_a / (w_a + w_b))[..., None]
  log_wb = jnp.log(w_b / (w_a + w_b))[..., None]
  return jnp.where(a, la + log_wa, lb + log_wb)


def _split_geometry(model, space: obs_lib.PixelSpace, xs64, logw64, sigma: float,
                    mass_sigma):
  """(split, s, lo, hi) of `reweight_split` on the pixel lattice: the split at half the
  pixel range (image unit 0.5) in model space, the extra smoothing s, the lattice's
  range (its end bins' outer edges); None without mass_sigma. One-line errors where
  side masses from another level do not apply."""
  if mass_sigma is None:
    return None
  if model.normalized or getattr(model, "discrete", False):
    raise ValueError("restore.filter_mass_sigma: only a score head (a noise-conditional "
                     "AR-CSM) has a conditional at another noise level; set it to None")
  if space.identity:
    raise ValueError("restore.filter_mass_sigma: needs pixel data (its split is half "
                     "the pixel range); set it to None")
  if not mass_sigma > sigma:
    raise ValueError(f"restore.filter_mass_sigma must be > the filter's level {sigma}, "
                     f"got {mass_sigma}")
  split = float(np.asarray(space.from_image(jnp.asarray(0.5, jnp.float32))))
  w = np.exp(logw64)
  lo, hi = float(xs64[0] - 0.5 * w[0]), float(xs64[-1] + 0.5 * w[-1])
  return split, float(np.sqrt(mass_sigma ** 2 - sigma ** 2)), lo, hi


def _lattice_log_prior(model, params, x, d, xs, logw, sigma, mass_sigma, geometry):
  """The filter's normalized log q(x_d = v_k | x_<d) on the lattice, (B, K) (d None:
  every dimension, (B, D, K)); with mass_sigma, its two sides' masses from that level
  (`reweight_split`)."""
  def contexts(level):
    ctx = _context(model, params, x, level)
    return ctx if d is None else jax.lax.dynamic_index_in_dim(ctx, d, axis=1)
  ctx_sigma = contexts(sigma)

  def at(level):   # a per-dimension model's context does not depend on the level
    ctx = (contexts(level) if getattr(model, "context_sigma", False) and level != sigma
           else ctx_sigma)
    lp = _node_log_density(model, params, ctx, xs, level) + logw
    return lp - jax.nn.logsumexp(lp, axis=-1, keepdims=True)
  lp = at(sigma)
  if mass_sigma is None:
    return lp
  split, s, lo, hi = geometry
  return reweight_split(lp, at(mass_sigma), xs, split, s, lo, hi)


def make_lattice_log_probs(model, space: obs_lib.PixelSpace, sigma: float, box=None,
                           num_values: int = 256, mass_sigma=None):
  """jit (params, x (B, D) model space) -> log P(x_d = v_k | x_<d), (B, D, K).

  Each conditional of the prior on the lattice of pixel values, normalized over them,
  exactly as the filter draws from it (with the context of the clean x: one forward
  pass for every d). Its value at the true pixels is the prior's discrete
  log-likelihood on the lattice, comparable between score, density and mass heads:
  how good a prior the filter sees. `mass_sigma`: as the filter's (`make_filter`).
  """
  xs64, _, logw64 = _prior_values(model, space, box, num_values)
  geometry = _split_geometry(model, space, xs64, logw64, sigma, mass_sigma)

  @jax.jit
  def run(params, x):
    xs = jnp.asarray(xs64, x.dtype)
    logw = jnp.asarray(logw64, x.dtype)
    return _lattice_log_prior(model, params, x, None, xs, logw, sigma, mass_sigma,
                              geometry)

  return run


def lattice_bits_per_dim(model, params, images, space: obs_lib.PixelSpace, sigma: float,
                         batch: int = 4, mass_sigma=None) -> float:
  """The prior's discrete negative log-likelihood of 8-bit `images` (N, ...) in [0, 1]
  (u = pixel / 255) on the lattice (`make_lattice_log_probs`), bits per dimension."""
  fn = make_lattice_log_probs(model, space, sigma, mass_sigma=mass_sigma)
  u = np.asarray(images, np.float64).reshape(len(images), -1)
  k = np.rint(u * 255.0).astype(np.int64)
  total = 0.0
  for i in range(0, len(u), batch):
    x = space.from_image(jnp.asarray(u[i:i + batch], jnp.float32))
    lp = np.asarray(fn(params, x), np.float64)
    total += float(np.take_along_axis(lp, k[i:i + batch, :, None], axis=-1).sum())
  return -total / (u.size * np.log(2.0))


def select_mass_sigma(model, params, images, space: obs_lib.PixelSpace, sigma: float,
                      levels, batch: int = 8):
  """(the best of `levels` for `make_filter`'s mass_sigma, or None, {level: bits/dim}).

  Each candidate level (those above `sigma`) is scored by the lattice bits/dim of
  `images` (N, ...) in [0, 1] with the side masses from that level; None (`sigma`
  alone, key 'none') is a candidate too. Give images that the evaluation does not use
  (training images), so that the choice is not tuned to the test set.
  """
  table = {"none": lattice_bits_per_dim(model, params, images, space, sigma, batch)}
  for level in sorted({float(v) for v in levels if float(v) > sigma}):
    table[repr(level)] = lattice_bits_per_dim(model, params, images, space, sigma, batch,
                                              mass_sigma=level)
  best = min(table, key=table.get)
  return (None if best == "none" else float(best)), table


def _context(model, params, x, sigma):
  """Contexts (B, D, C); a smoothed-joint context network is evaluated at `sigma`."""
  if getattr(model, "context_sigma", False):
    return model.context(params, x, sigma=sigma)
  return model.context(params, x)


def completion_steps(obs, order: np.ndarray) -> Optional[np.ndarray]:
  """For super-resolution: (D,) bool, pixel d is the last of its block in `order`.
  None for per-pixel observations (every pixel completes its own factor)."""
  if not isinstance(obs, obs_lib.Downsample):
    return None
  s, f = tuple(obs.shape), obs.factor
  idx = np.arange(int(np.prod(s))).reshape(s)
  blocks = idx.reshape((s[0] // f, f, s[1] // f, f) + s[2:])
  blocks = np.moveaxis(blocks, (1, 3), (-2, -1)).reshape(-1, f * f)
  rank = np.empty(len(order), np.int64)
  rank[np.asarray(order)] = np.arange(len(order))
  last = blocks[np.arange(len(blocks)), np.argmax(rank[blocks], axis=1)]
  out = np.zeros(len(order), bool)
  out[last] = True
  return out


def _factor_log_lik(obs, y, u, d, values, completes):
  """log of the likelihood factors completed at pixel d as a function of its value,
  (B, K): y (B, Dy) observation, u (B, D) the state in image units (pixels before d in
  the order are final), values (K,) image units."""
  if isinstance(obs, obs_lib.GaussianNoise):
    r = y[:, d][:, None] - values[None, :]
    return -0.5 * r * r / obs.sigma ** 2
  if isinstance(obs, obs_lib.SaltPepper):
    # exact on the pixel values: (1 - p) [value = y] + (p / 2) [y extreme]; the
    # non-extreme pixels are pinned and never drawn
    yd = y[:, d][:, None]
    ext = obs.extreme(y)[:, d][:, None]
    same = jnp.abs(values[None, :] - yd) < 0.5 / 255.0
    kept = jnp.where(same, np.log1p(-obs.p) if obs.p < 1 else -np.inf, -np.inf)
    corr = np.log(obs.p / 2) if obs.p > 0 else -np.inf
    return jnp.where(ext, jnp.logaddexp(kept, corr), 0.0)
  if isinstance(obs, obs_lib.Missing):
    return jnp.zeros((y.shape[0], values.shape[0]), values.dtype)
  if isinstance(obs, obs_lib.Downsample):
    s, f = tuple(obs.shape), obs.factor
    c = int(np.prod(s[2:])) if len(s) > 2 else 1
    pix, ch = d // c, d % c
    i, j = pix // s[1], pix % s[1]
    low_w = s[1] // f
    b_idx = ((i // f) * low_w + j // f) * c + ch
    block_sum = obs.pool(u)[:, b_idx] * f * f - u[:, d]        # the other pixels
    mean = (block_sum[:, None] + values[None, :]) / (f * f)
    r = y[:, b_idx][:, None] - mean
    ll = -0.5 * r * r / obs.sigma ** 2
    return jnp.where(completes[d], ll, 0.0)
  raise ValueError(f"filter: no sequential likelihood for observation {type(obs).__name__}")


def _resample(key, log_w, groups: int, size: int):
  """Systematic resampling within each group of `size` particles: (B,) ancestor
  indices into the flat (groups * size) batch."""
  lw = log_w.reshape(groups, size)
  w = jax.nn.softmax(lw, axis=-1)
  cdf = jnp.cumsum(w, axis=-1)
  u = (jax.random.uniform(key, (groups, 1)) + jnp.arange(size)[None, :]) / size
  idx = jax.vmap(jnp.searchsorted)(cdf, u)
  idx = jnp.minimum(idx, size - 1)
  return (idx + size * jnp.arange(groups)[:, None]).reshape(-1)


def _check_mass(model, space: obs_lib.PixelSpace):
  """A probability-mass head needs pixel data without dequantization (its 256 values
  are the bin centres the head was trained on)."""
  if getattr(model, "discrete", False) and (space.identity or space.offset != 0.0):
    raise ValueError("filter: a probability-mass head needs its pixel data without "
                     "dequantization (data.dequantize=False), as it was trained")


def _prior_values(model, space: obs_lib.PixelSpace, box, num_values: int):
  """`pixel_values` for this prior: a mass head gives the values' probabilities
  already, so its log bin widths are 0."""
  _check_mass(model, space)
  xs, us, logw = pixel_values(space, box, num_values)
  if getattr(model, "discrete", False):
    logw = np.zeros_like(logw)
  return xs, us, logw


def make_filter(model, obs, space: obs_lib.PixelSpace, sigma: float, chains: int,
                box=None, num_values: int = 256, resample: bool = False,
                ess_fraction: float = 0.5, mass_sigma=None):
  """(params, y (B, Dy), x0 (B, D), free (B, D), rng) -> (x (B, D), estimate (B, D)).

  B = images * chains, chains consecutive. Without `resample`, each chain draws from
  the proposal (*) independently and `estimate` is its per-pixel conditional mean
  (image units). With `resample` (sequential Monte Carlo with the chains of an image as
  its particles): each particle is weighted by the incremental evidence at every pixel,
  sum_k q(g_k | x_<d) p(y_f | ..., g_k) over the grid (for a pinned pixel, the prior
  probability of its observed value), the particles are resampled systematically when
  their effective sample size falls below `ess_fraction` of `chains`, and a final
  resampling by the weights leaves equally weighted particles: as chains grows, the
  particles are draws from the exact posterior p(x | y) (up to the grid), later
  observations included. `estimate` is then only each path's filtering means (a pixel's
  conditional mean depends on its prefix, not on its drawn value, so resampling by later
  evidence does not correct it): with `resample`, average the particles instead.

  `mass_sigma` (a score head, pixel data): each conditional's background and ink masses
  (the two sides of half the pixel range) from the model's conditional at that larger
  level, its shape within each side from `sigma` (`reweight_split`); None: `sigma` alone.

  Not jitted on its own: `posterior.make_sampler` runs it inside its jit.
  """
  xs64, us64, logw64 = _prior_values(model, space, box, num_values)
  geometry = _split_geometry(model, space, xs64, logw64, sigma, mass_sigma)
  order = np.asarray(model.order)
  completes = completion_steps(obs, order)
  completes = None if completes is None else jnp.asarray(completes)
  dim = model.dim

  def run(params, y, x0, free, rng):
    xs = jnp.asarray(xs64, x0.dtype)
    us = jnp.asarray(us64, x0.dtype)
    logw = jnp.asarray(logw64, x0.dtype)
    ordr = jnp.asarray(order, jnp.int32)
    b = x0.shape[0]
    groups = b // chains

    def draw(x, d, key):
      log_prior = _lattice_log_prior(model, params, x, d, xs, logw[None], sigma,
                                     mass_sigma, geometry)                  # (B, K)
      logits = log_prior + _factor_log_lik(obs, y, space.to_image(x), d, us, completes)
      k = jax.random.categorical(key, logits, axis=-1)
      mean_u = jax.nn.softmax(logits, axis=-1) @ us
      fr = free[:, d]
      # a pinned pixel: the prior probability of its value (nearest grid value)
      kp = jnp.argmin(jnp.abs(x[:, d][:, None] - xs[None, :]), axis=-1)
      pinned_lp = jnp.take_along_axis(log_prior, kp[:, None], axis=-1)[:, 0]
      inc = jnp.where(fr, jax.nn.logsumexp(logits, axis=-1), pinned_lp)
      xd = jnp.where(fr, xs[k], x[:, d])
      return x.at[:, d].set(xd), jnp.where(fr, mean_u, space.to_image(x[:, d])), inc

    def step(carry, t):
      x, est, log_w = carry
      d = ordr[t]
      key = jax.random.fold_in(rng, t)
      k_draw, k_res = jax.random.split(key)
      if resample:
        x, m, inc = draw(x, d, k_draw)
      else:   # independent chains: pixels pinned in every chain need no evaluation
        x, m, inc = jax.lax.cond(
            jnp.any(free[:, d]), lambda z: draw(z, d, k_draw),
            lambda z: (z, space.to_image(z[:, d]), jnp.zeros(b, z.dtype)), x)
      est = est.at[:, d].set(m)
      if resample:
        log_w = log_w + inc
        lw = log_w.reshape(groups, chains)
        w = jax.nn.softmax(lw, axis=-1)
        ess = 1.0 / jnp.sum(w * w, axis=-1)                              # (groups,)
        low = jnp.repeat(ess < ess_fraction * chains, chains)            # (B,)
        anc = _resample(k_res, log_w, groups, chains)
        anc = jnp.where(low, anc, jnp.arange(b))
        x, est = x[anc], est[anc]
        log_w = jnp.where(low, 0.0, log_w)
      return (x, est, log_w), None

    est0 = jnp.zeros_like(x0)
    (x, est, log_w), _ = jax.lax.scan(step, (x0, est0, jnp.zeros(b, x0.dtype)),
                                      jnp.arange(dim))
    if resample:   # equally weighted particles at the end
      anc = _resample(jax.random.fold_in(rng, dim), log_w, groups, chains)
      x, est = x[anc], est[anc]
    return x, est

  return run


def _local_log_lik(obs, y, u, d, values):
  """log of every likelihood factor that involves pixel d, as a function of its value
  (B, K), the other pixels at their current values u (image units)."""
  if isinstance(obs, obs_lib.Downsample):
    return _factor_log_lik(obs, y, u, d, values, jnp.ones(u.shape[1], bool))
  return _factor_log_lik(obs, y, u, d, values, None)


def make_mh_sweeps(model, obs, space: obs_lib.PixelSpace, sigma: float, sweeps: int,
                   box=None, num_values: int = 256, mass_sigma=None):
  """Metropolized sweeps over the free pixels on the pixel lattice, with look-ahead.

  Target: the filter's own posterior on the lattice of pixel values,
  pi(x) proportional to prod_d P(x_d | x_<d) p(y | x), P each conditional normalized
  over the K values (`make_lattice_log_probs`, with `mass_sigma` as the filter's), so
  that the sweeps keep what the filter (and SMC, as its particles grow) samples. Each
  free pixel d in the model's order proposes x_d' from
  pi_d(v) proportional to P(v | x_<d) p(y_loc | v, x_-d) (the filter's draw, with every
  likelihood factor the pixel enters); the acceptance probability is then
      min(1, prod_{j > d} P(x_j | x'_<j) / P(x_j | x_<j)),
  the pixel's own conditional and the likelihood cancelling: it is the later
  conditionals' verdict on the new value (what the filter cannot see). A proposal
  equal to the current value is accepted without evaluating the joint; a pixel where
  every chain proposes its current value costs no joint evaluation. States are first
  moved to the nearest lattice value.

  Returns run(params, y (B, Dy), x (B, D), free (B, D), rng) -> (x, acceptance rate of
  the proposals that moved, per chain (B,)).
  """
  xs64, us64, logw64 = _prior_values(model, space, box, num_values)
  geometry = _split_geometry(model, space, xs64, logw64, sigma, mass_sigma)
  order = np.asarray(model.order)
  dim = model.dim

  def run(params, y, x, free, rng):
    xs = jnp.asarray(xs64, x.dtype)
    us = jnp.asarray(us64, x.dtype)
    logw = jnp.asarray(logw64, x.dtype)
    ordr = jnp.asarray(order, jnp.int32)
    b = x.shape[0]
    nearest = lambda v: jnp.argmin(jnp.abs(v[..., None] - xs), axis=-1)
    x = jnp.where(free, xs[nearest(x)], x)
    take = lambda a, i: jnp.take_along_axis(a, i[..., None], axis=-1)[..., 0]

    def joint(x):   # log pi's prior part: every conditional at x's lattice values, (B,)
      lp = _lattice_log_prior(model, params, x, None, xs, logw, sigma, mass_sigma,
                              geometry)                                     # (B, D, K)
      return take(lp, nearest(x)).sum(-1)

    def update(carry, d, key):
      x, lq, moved, acc = carry
      k_prop, k_acc = jax.random.split(key)
      log_prior = _lattice_log_prior(model, params, x, d, xs, logw[None], sigma,
                                     mass_sigma, geometry)                  # (B, K)
      logits = log_prior + _local_log_lik(obs, y, space.to_image(x), d, us)
      k = jax.random.categorical(k_prop, logits, axis=-1)
      cur = nearest(x[:, d])
      change = free[:, d] & (k != cur)

      def evaluate(_):
        x_new = x.at[:, d].set(jnp.where(change, xs[k], x[:, d]))
        lq_new = joint(x_new)
        log_a = lq_new - lq + take(log_prior, cur) - take(log_prior, k)
        ok = change & (jnp.log(jax.random.uniform(k_acc, (b,))) < log_a)
        return (jnp.where(ok[:, None], x_new, x), jnp.where(ok, lq_new, lq),
                moved + change, acc + ok)
      return jax.lax.cond(jnp.any(change), evaluate,
                          lambda _: (x, lq, moved, acc), None)

    def step(carry, t):
      d = ordr[t % dim]
      key = jax.random.fold_in(rng, t)
      return jax.lax.cond(jnp.any(free[:, d]), lambda c: update(c, d, key),
                          lambda c: c, carry), None

    zeros = jnp.zeros(b, jnp.float32)
    (x, _, moved, acc), _ = jax.lax.scan(step, (x, joint(x), zeros, zeros),
                                         jnp.arange(sweeps * dim))
    return x, acc / jnp.maximum(moved, 1.0)

  return run
