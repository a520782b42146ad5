"""The model's joint log-density log q(x) and its score grad_x log q(x), at a noise level.

An AR model's joint is the sum of its conditionals, log q(x) = sum_d log q(x_d | x_<d),
and it is differentiable in x: through x_d and through the contexts (x_<d enters the
context of every later d). Its gradient, the *joint score*, carries the cross terms
that the conditional scores s_d alone lack, and it is what a posterior sampler needs.

  normalized heads (Gaussian, logistic-mixture MADE): log q_d is exact (`model.log_cond`).
  score heads (AR-CSM): log q_d = E_d(x_d) - log Z_d by quadrature of the head's score,
    normalized on a box [lo, hi] (`Box`) around the data: for bounded data (pixels) the
    box is the support, so there are no improper tails and no masked branches, and the
    gradient is finite everywhere (the NLL's quadrature over R in likelihood.py is
    accurate for values but its tail branches are not safe to differentiate).

Box quadrature (K uniform nodes g_k, step h): E at the nodes by the trapezoid rule of
the scores (optionally with the Euler-Maclaurin end correction -h^2/12 [s'(b) - s'(a)],
which needs d s/d x_d: one jvp), log Z_d = log of the trapezoid rule of exp(E) (the same
correction with (exp E)' = s exp E), and the own term E(x_d) from the nearest node plus
the partial cell, whose far end uses the score at x_d itself. The energies are summed
outwards from their maximum (`likelihood._anchored_cumsum`). With the box the density
is q restricted to [lo, hi] and renormalized; points outside the box get the energy of
the partial cell from the nearest end node (finite, continuous, decaying with the
model's score), so a chain that steps out of the box sees a finite gradient.

Memory: the K node evaluations of the head for all (example, dimension) pairs are the
largest arrays; the batch is processed `batch_chunk` examples at a time (lax.map, the
gradient taken inside each chunk), so a batch of 64 MNIST images stays in a few hundred
MB at K = 33 (see docs/restoration.md for the measured numbers).
"""

import dataclasses
from typing import Any, Callable, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from csm_jax import likelihood as lik_lib


@dataclasses.dataclass(frozen=True)
class Box:
  """The interval [lo, hi] (model space) the score head's conditionals are normalized
  on, with `num_points` uniform nodes (>= 3) and the trapezoid rule (`corrected`: with
  the Euler-Maclaurin end correction, O(h^4), one extra jvp per node)."""
  lo: float
  hi: float
  num_points: int = 33
  corrected: bool = False

  def __post_init__(self):
    if not self.hi > self.lo:
      raise ValueError(f"box needs hi > lo, got lo={self.lo}, hi={self.hi}")
    if int(self.num_points) < 3:
      raise ValueError(f"box num_points must be >= 3, got {self.num_points}")

  @property
  def h(self) -> float:
    return (self.hi - self.lo) / (self.num_points - 1)

  def nodes(self, dtype=jnp.float32):
    return self.lo + self.h * jnp.arange(self.num_points, dtype=dtype)


def default_box(preprocessor=None, num_points: int = 33, corrected: bool = False,
                margin: float = 0.2) -> Box:
  """The data's box in model space, widened by `margin` of its width on each side.

  Pixel data in 'unit' scale: [-0.2, 1.2]; 'symmetric': [-1.4, 1.4]; logit space: the
  logits of the extreme dequantized pixels, widened. Real-valued data has no box: pass
  one (or use a normalized head).
  """
  if preprocessor is None or not preprocessor.discrete:
    raise ValueError("default_box needs the preprocessor of pixel data; give a Box for "
                     "real-valued data")
  ends = preprocessor.from_pixels(np.array([0.0, preprocessor.pixel_range]), np.float64)
  lo, hi = float(ends[0]), float(ends[1])
  pad = margin * (hi - lo)
  return Box(lo - pad, hi + pad, int(num_points), bool(corrected))


def _map_node_scores(model, params, ctx, nodes, sigma, with_diag):
  """Scores (and d s/d x_d) of every (example, dim) at every node: (B, D, K) each."""
  b, n = ctx.shape[0], ctx.shape[1]
  sig = jnp.full((b, n), sigma, ctx.dtype)

  def at(g):
    x = jnp.full((b, n), g, ctx.dtype)
    if with_diag:
      return model.score_and_diag(params, ctx, x, sig)
    return model.score(params, ctx, x, sig), jnp.zeros_like(x)
  s, ds = jax.vmap(at, out_axes=-1)(nodes)
  return s, ds


def box_log_conditionals(model, params, x, sigma, box: Box):
  """log q_sigma(x_d | x_<d) normalized on `box`, (B, D), differentiable in x.

  Score heads only (see `log_conditionals` for the dispatch).
  """
  if getattr(model, "context_sigma", False):   # a smoothed-joint context takes the level
    ctx = model.context(params, x, sigma=sigma)
  else:
    ctx = model.context(params, x)
  nodes = box.nodes(x.dtype)
  h, k = box.h, box.num_points
  s, ds = _map_node_scores(model, params, ctx, nodes, sigma, box.corrected)
  sig = jnp.full_like(x, sigma)
  if box.corrected:
    sx, dsx = model.score_and_diag(params, ctx, x, sig)
    inc = lik_lib._cell_integrals(s, ds, h)  # pylint: disable=protected-access
  else:
    sx, dsx = model.score(params, ctx, x, sig), jnp.zeros_like(x)
    inc = 0.5 * h * (s[..., :-1] + s[..., 1:])
  E = lik_lib._anchored_cumsum(inc)  # pylint: disable=protected-access
  logw = np.full((k,), np.log(h))
  logw[0] = logw[-1] = np.log(h / 2)
  log_z = jax.nn.logsumexp(E + jnp.asarray(logw, x.dtype), axis=-1)
  if box.corrected:   # end correction of int exp(E): -h^2/12 [s e^E]_lo^hi / Z
    corr = (h * h / 12.0) * (s[..., -1] * jnp.exp(E[..., -1] - log_z)
                             - s[..., 0] * jnp.exp(E[..., 0] - log_z))
    log_z = log_z + jnp.log1p(-jnp.clip(corr, -0.5, 0.5))
  j = jnp.clip(jnp.round((x - box.lo) / h), 0, k - 1).astype(jnp.int32)
  take = lambda a: jnp.take_along_axis(a, j[..., None], axis=-1)[..., 0]
  delta = x - (box.lo + j.astype(x.dtype) * h)
  energy = take(E) + 0.5 * delta * (take(s) + sx)
  if box.corrected:
    energy = energy - (delta * delta / 12.0) * (dsx - take(ds))
  return energy - log_z


def log_conditionals(model, params, x, sigma, box: Optional[Box] = None,
                     method: str = "auto"):
  """log q(x_d | x_<d), (B, D): exact for normalized heads, box quadrature for score heads.

  method 'auto' (exact where the head is normalized), 'exact' or 'box' (quadrature of
  the head's score on `box`, any head with a score: a normalized head's score is the
  derivative of its log-density). sigma: the noise level of a score head (ignored by
  normalized heads, whose density has none).
  """
  if method not in ("auto", "exact", "box"):
    raise ValueError(f"method must be 'auto', 'exact' or 'box', got {method!r}")
  if getattr(model, "kind", "score") == "mass":
    raise ValueError("model: a discrete (probability mass) head has no density in x to "
                     "be a prior for continuous restoration")
  exact = method == "exact" or (method == "auto" and model.normalized)
  if exact:
    if not model.normalized:
      raise ValueError("method='exact' needs a normalized head; use method='box'")
    return model.log_cond(params, model.context(params, x), x)
  if box is None:
    raise ValueError("box: a score head's conditionals need a Box to be normalized on")
  return box_log_conditionals(model, params, x, sigma, box)


def auto_batch_chunk(dim: int, num_points: int, budget: int = 1 << 20) -> int:
  """Examples per chunk so that (chunk, D, K) node arrays hold about `budget` entries."""
  return int(max(1, budget // max(1, dim * num_points)))


@dataclasses.dataclass(frozen=True)
class Joint:
  """Compiled joint log-density and score of one model at a traced noise level.

  log_prob(params, x (B, D), sigma) -> (B,)
  value_and_grad(params, x, sigma) -> ((B,), (B, D))   grad_x log q_sigma(x)
  grad(params, x, sigma) -> (B, D)
  `fn(params, x, sigma)` is the uncompiled per-chunk value-and-grad, for use inside
  other jitted code (`value_and_grad_fn`).
  """
  log_prob: Callable
  value_and_grad: Callable
  grad: Callable
  value_and_grad_fn: Callable
  log_prob_fn: Callable
  box: Optional[Box]
  batch_chunk: int


def _chunked(f, x, chunk):
  """f over the batch `chunk` examples at a time (padded), outputs concatenated."""
  b = x.shape[0]
  c = min(chunk, b)
  num = -(-b // c)
  xp = jnp.concatenate([x, jnp.repeat(x[-1:], num * c - b, axis=0)], axis=0)
  out = jax.lax.map(f, xp.reshape((num, c) + x.shape[1:]))
  return jax.tree.map(lambda a: a.reshape((num * c,) + a.shape[2:])[:b], out)


def make_joint(model, box: Optional[Box] = None, method: str = "auto",
               batch_chunk: Optional[int] = None) -> Joint:
  """The joint log q_sigma(x) and its score, chunked over the batch, jit-compiled.

  Box: needed for score heads (see `default_box`); ignored for exact normalized heads.
  """
  k = box.num_points if box is not None else 1
  chunk = int(batch_chunk or auto_batch_chunk(model.dim, k))

  def lp_chunk(params, xc, sigma):
    return log_conditionals(model, params, xc, sigma, box, method).sum(-1)

  def vg_fn(params, x, sigma):
    def f(xc):  # each example's log q depends on its own x only: one vjp gives all
      vals, pull = jax.vjp(lambda z: lp_chunk(params, z, sigma), xc)
      return vals, pull(jnp.ones_like(vals))[0]
    return _chunked(f, x, chunk)

  def lp_fn(params, x, sigma):
    return _chunked(lambda xc: lp_chunk(params, xc, sigma), x, chunk)

  vg = jax.jit(vg_fn)
  lp = jax.jit(lp_fn)
  as_sigma = lambda s, x: jnp.asarray(1.0 if s is None else s, x.dtype)
  return Joint(
      log_prob=lambda params, x, sigma=None: lp(params, x, as_sigma(sigma, x)),
      value_and_grad=lambda params, x, sigma=None: vg(params, x, as_sigma(sigma, x)),
      grad=lambda params, x, sigma=None: vg(params, x, as_sigma(sigma, x))[1],
      value_and_grad_fn=vg_fn, log_prob_fn=lp_fn, box=box, batch_chunk=chunk)


def grid_error(model, params, x, sigma, box: Box, fine_points: int = 2049,
               batch_chunk: Optional[int] = None) -> dict:
  """Error of `box`'s grid against the same box with `fine_points` nodes (corrected).

  Returns per-example mean and max |log q coarse - log q fine| (nats, whole image) and
  the relative error of the joint score, ||g_coarse - g_fine|| / ||g_fine|| (mean, max).
  """
  fine = Box(box.lo, box.hi, int(fine_points), True)
  jc = make_joint(model, box, "box", batch_chunk)
  jf = make_joint(model, fine, "box", max(1, (batch_chunk or jc.batch_chunk) * box.num_points
                                          // fine_points))
  vc, gc = jc.value_and_grad(params, x, sigma)
  vf, gf = jf.value_and_grad(params, x, sigma)
  dv = np.abs(np.asarray(vc, np.float64) - np.asarray(vf, np.float64))
  gc, gf = np.asarray(gc, np.float64), np.asarray(gf, np.float64)
  rel = np.linalg.norm(gc - gf, axis=-1) / np.maximum(np.linalg.norm(gf, axis=-1), 1e-30)
  return {"coarse_points": box.num_points, "coarse_corrected": box.corrected,
          "fine_points": int(fine_points), "logq_abs_err_mean": float(dv.mean()),
          "logq_abs_err_max": float(dv.max()), "score_rel_err_mean": float(rel.mean()),
          "score_rel_err_max": float(rel.max()),
          "finite": bool(np.isfinite(gc).all() and np.isfinite(vc).all())}
