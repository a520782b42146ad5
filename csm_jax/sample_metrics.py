"""Sample-quality metrics for low-dimensional densities: kernel MMD^2 and histogram KL/JS.

Meng et al. (NeurIPS 2020), Sec. 5.2 / Figure 3b, compare an AR-CSM with a MADE mixture
of logistics on 2-D densities by their *samples* only. These metrics put numbers on such
a comparison, next to the test NLL that `likelihood.py` gives:

- `mmd2`: the unbiased estimator MMD^2_u of the squared maximum mean discrepancy with
  RBF kernels k_h(x, y) = exp(-|x - y|^2 / (2 h^2)) (Gretton et al., "A Kernel
  Two-Sample Test", JMLR 2012, Lemma 6), for several bandwidths h at once, with a
  standard error from the variance of a second-order U-statistic. Pairs are visited in
  square blocks, so 10^4 x 10^4 samples need a few MB.
- `median_bandwidth`: the median heuristic for h.
- `histogram_divergences`: KL(data || model) and the Jensen-Shannon divergence between
  2-D histograms on fixed bins over the range of a (large) data draw, plus an overflow
  cell for everything outside it.

Pure functions of arrays (numpy in, Python floats out); kernel blocks run under jit.
"""

from typing import Dict, Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np

DEFAULT_SCALES = (0.5, 1.0, 2.0)
DEFAULT_EPS = 1e-6


# ------------------------------------------------------------------------------------
# Kernel MMD
# ------------------------------------------------------------------------------------


def median_bandwidth(x: np.ndarray, max_points: int = 2000) -> float:
  """Median pairwise Euclidean distance among (an evenly strided subset of) the rows of x.

  Deterministic: the subset is every k-th row, k = ceil(n / max_points).
  """
  x = np.asarray(x, np.float64)
  chex.assert_rank(x, 2)
  x = x[::max(1, -(-len(x) // max_points))]
  d2 = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
  iu = np.triu_indices(len(x), 1)
  return float(np.sqrt(np.median(d2[iu])))


@jax.jit
def _block(xi, yi, xj, yj, vi, vj, same, bandwidths):
  """Row sums, column sums and the sum of squares of h_ij over one block of pairs, per bandwidth
  and, last, for the mean kernel over the bandwidths.

  h_ij = k(x_i, x_j) + k(y_i, y_j) - k(x_i, y_j) - k(y_i, x_j) (Gretton et al. 2012,
  Lemma 6); pairs with a padded point (v = 0) or i == j (`same` diagonal block) are 0.
  """
  def sqdist(a, b):
    return jnp.sum((a[:, None, :] - b[None, :, :]) ** 2, -1)

  d = jnp.stack([sqdist(xi, xj), sqdist(yi, yj), sqdist(xi, yj), sqdist(yi, xj)])
  mask = vi[:, None] * vj[None, :]
  mask = mask * jnp.where(same, 1.0 - jnp.eye(len(vi), dtype=mask.dtype), 1.0)

  def kernel_h(h):
    k = jnp.exp(-d / (2.0 * h * h))
    return (k[0] + k[1] - k[2] - k[3]) * mask

  hij = jax.vmap(kernel_h)(bandwidths)
  hij = jnp.concatenate([hij, hij.mean(0, keepdims=True)])   # last: the mean kernel
  return hij.sum(2), hij.sum(1), (hij * hij).sum((1, 2))


def mmd2(x: np.ndarray, y: np.ndarray, bandwidths: Sequence[float],
         block_size: int = 1000) -> Dict:
  """Unbiased MMD^2 between the samples x ~ P and y ~ Q (equal sizes n), RBF kernels.

  MMD^2_u = 1 / (n (n - 1)) sum_{i != j} h(z_i, z_j), z_i = (x_i, y_i),
  h(z_i, z_j) = k(x_i, x_j) + k(y_i, y_j) - k(x_i, y_j) - k(x_j, y_i)
  (Gretton et al. 2012, Lemma 6), unbiased for MMD^2(P, Q) and so slightly negative
  at times when P = Q. Its standard error is that of a U-statistic of order 2,
  Var = 4 (n - 2) / (n (n - 1)) zeta_1 + 2 / (n (n - 1)) zeta_2, with zeta_2 = Var h and
  zeta_1 = Var E[h | z_i] estimated from the row means of h (less their own
  zeta_2 / (n - 1) share, floored at 0).

  Args:
    x, y: [n, d] samples (d small: each block holds [4, B, B, d] differences).
    bandwidths: kernel bandwidths h (e.g. `median_bandwidth` of the data times
      DEFAULT_SCALES); the mean over them is the MMD^2 of the mean kernel.
    block_size: B; memory is O(B^2 d) whatever n.

  Returns:
    {"bandwidths": [...], "mmd2": [...], "stderr": [...], "mmd2_mean": float,
     "stderr_mean": float (of the mean kernel's MMD^2), "n": n}.
  """
  x, y = np.asarray(x, np.float32), np.asarray(y, np.float32)
  chex.assert_rank([x, y], 2)
  chex.assert_equal_shape([x, y])
  n = len(x)
  if n < 4:
    raise ValueError(f"need at least 4 samples per set, got {n}")
  bw = jnp.asarray(np.asarray(bandwidths, np.float32).reshape(-1))
  b = min(block_size, n)
  nb = -(-n // b)
  pad = nb * b - n
  xp = np.concatenate([x, np.zeros((pad, x.shape[1]), np.float32)])
  yp = np.concatenate([y, np.zeros((pad, y.shape[1]), np.float32)])
  v = np.concatenate([np.ones(n, np.float32), np.zeros(pad, np.float32)])
  rows = np.zeros((len(bw) + 1, nb * b), np.float64)
  sq = np.zeros(len(bw) + 1, np.float64)
  for i in range(nb):   # h is symmetric: blocks j >= i, the others by transposition
    si = slice(i * b, (i + 1) * b)
    for j in range(i, nb):
      sj = slice(j * b, (j + 1) * b)
      r, c, s = (np.asarray(a, np.float64) for a in
                 _block(xp[si], yp[si], xp[sj], yp[sj], v[si], v[sj], i == j, bw))
      rows[:, si] += r
      sq += s
      if j > i:
        rows[:, sj] += c
        sq += s
  rows = rows[:, :n]
  pairs = n * (n - 1)

  def summary(row_sums, sum_sq):
    u = row_sums.sum() / pairs
    zeta2 = max(sum_sq / pairs - u * u, 0.0)
    h1 = row_sums / (n - 1)
    zeta1 = max((h1.var() - zeta2 / (n - 1)) * (n - 1) / (n - 2), 0.0)
    var = 4.0 * (n - 2) / pairs * zeta1 + 2.0 / pairs * zeta2
    return float(u), float(np.sqrt(var))

  per = [summary(rows[k], sq[k]) for k in range(len(bw) + 1)]
  return {"bandwidths": [float(h) for h in np.asarray(bw)],
          "mmd2": [p[0] for p in per[:-1]], "stderr": [p[1] for p in per[:-1]],
          "mmd2_mean": per[-1][0], "stderr_mean": per[-1][1], "n": n}


# ------------------------------------------------------------------------------------
# Histogram divergences
# ------------------------------------------------------------------------------------


def histogram_edges(data: np.ndarray, bins: int = 64, margin: float = 0.05):
  """Per-axis bin edges: `bins` equal cells over [min, max] of data, widened by margin
  times the range on each side."""
  data = np.asarray(data, np.float64)
  chex.assert_rank(data, 2)
  lo, hi = data.min(0), data.max(0)
  pad = margin * (hi - lo)
  return [np.linspace(a - p, b + p, bins + 1) for a, b, p in zip(lo, hi, pad)]


def histogram(x: np.ndarray, edges) -> np.ndarray:
  """Probabilities of the cells of `edges` (flattened) and, last, of everything outside."""
  x = np.asarray(x, np.float64)
  chex.assert_rank(x, 2)
  counts, _ = np.histogramdd(x, bins=edges)
  counts = counts.reshape(-1)
  inside = counts.sum()
  return np.append(counts, len(x) - inside) / len(x)


def smooth(p: np.ndarray, eps: float = DEFAULT_EPS) -> np.ndarray:
  """(p + eps) / (1 + K eps): every one of the K cells gets at least eps / (1 + K eps)."""
  p = np.asarray(p, np.float64)
  return (p + eps) / (1.0 + eps * p.size)


def kl_divergence(p: np.ndarray, q: np.ndarray) -> float:
  """KL(p || q) = sum p log(p / q) in nats, over cells with p > 0 (q must be > 0 there)."""
  p, q = np.asarray(p, np.float64), np.asarray(q, np.float64)
  chex.assert_equal_shape([p, q])
  m = p > 0
  return float(np.sum(p[m] * (np.log(p[m]) - np.log(q[m]))))


def js_divergence(p: np.ndarray, q: np.ndarray) -> float:
  """Jensen-Shannon divergence (KL(p||m) + KL(q||m)) / 2, m = (p + q) / 2, in nats:
  symmetric, 0 iff p = q, at most log 2; finite without smoothing."""
  p, q = np.asarray(p, np.float64), np.asarray(q, np.float64)
  m = 0.5 * (p + q)
  return 0.5 * (kl_divergence(p, m) + kl_divergence(q, m))


def histogram_divergences(data: np.ndarray, samples: np.ndarray, bins: int = 64,
                          margin: float = 0.05, eps: float = DEFAULT_EPS) -> Dict:
  """KL(data || model) and JS(data, model) between histograms, in nats.

  Cells: `histogram_edges(data, bins, margin)` (bins^2 cells over the data draw's
  range) plus one overflow cell. KL uses both histograms smoothed by `smooth(., eps)`
  (additive constant eps = 1e-6 by default, so a data cell the samples missed costs
  p log(p / eps) rather than infinity); JS uses the raw histograms. With N samples
  and K occupied cells, sampling noise alone adds about K / (2 N) nats to the KL:
  compare models at equal N, or against a second data draw of the same size.
  """
  edges = histogram_edges(data, bins, margin)
  p, q = histogram(data, edges), histogram(samples, edges)
  return {"kl_data_model": kl_divergence(smooth(p, eps), smooth(q, eps)),
          "js": js_divergence(p, q), "bins": bins, "eps": eps,
          "sample_mass_outside": float(q[-1])}
