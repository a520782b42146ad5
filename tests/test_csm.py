"""The CSM objective (paper Eq. 5) against a full-covariance Gaussian, D = 5.

With the true conditional scores s_d = -(x_d - m_d)/v_d plugged in, the estimator's
expectation is -1/2 sum_d 1/v_d; any other score raises it by 1/2 E||s' - s||^2.
Ground truth: conditionals from numpy linear algebra in float64.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from csm_jax import data as data_lib
from csm_jax import losses
from tests.helpers import float64

D = 5


def gaussian_conditionals(cov):
  """m_d = A[d] @ x (A strictly lower triangular) and v_d of x_d | x_<d."""
  a = np.zeros_like(cov)
  v = np.zeros(len(cov))
  for d in range(len(cov)):
    if d == 0:
      v[0] = cov[0, 0]
      continue
    coef = np.linalg.solve(cov[:d, :d], cov[:d, d])
    a[d, :d] = coef
    v[d] = cov[d, d] - cov[d, :d] @ coef
  return a, v


@dataclasses.dataclass(frozen=True)
class AnalyticGaussianAR:
  """Duck-typed AR model whose conditional scores are the true (noisy) ones."""
  a: np.ndarray
  v: np.ndarray
  shift: float = 0.0
  scale: float = 1.0
  noisy: bool = True  # False: ignore sigma (csm_loss passes sigma = 1 when noise is off)

  def context(self, params, x, train=False, rng=None):
    return (x @ jnp.asarray(self.a).T)[..., None]   # m_d depends on x_<d only

  def score_and_diag(self, params, ctx, x, sigma):
    var = jnp.asarray(self.v) + (sigma ** 2 if self.noisy else 0.0)
    s = -self.scale * (x - ctx[..., 0]) / var + self.shift
    return s, jnp.broadcast_to(-self.scale / var, x.shape)


def _samples(cov, n, seed):
  return np.random.default_rng(seed).multivariate_normal(np.zeros(len(cov)), cov, size=n)


def test_csm_at_true_scores_matches_analytic_optimum():
  with float64():
    cov = data_lib.gaussian_covariance(D, seed=3)
    a, v = gaussian_conditionals(cov)
    x = jnp.asarray(_samples(cov, 20000, 0))
    model = AnalyticGaussianAR(a, v, noisy=False)
    s, ds = model.score_and_diag(None, model.context(None, x), x, None)
    per_example = losses.composite_score_matching(s, ds)
    optimum = -0.5 * np.sum(1.0 / v)
    se = float(per_example.std()) / np.sqrt(len(x))
    assert abs(float(per_example.mean()) - optimum) < 4 * se
    loss, _ = losses.csm_loss(model, None, None, x, jax.random.PRNGKey(0))
    np.testing.assert_allclose(loss, per_example.mean(), rtol=1e-12)


def test_perturbed_scores_raise_the_objective_by_half_the_fisher_divergence():
  with float64():
    cov = data_lib.gaussian_covariance(D, seed=3)
    a, v = gaussian_conditionals(cov)
    x = jnp.asarray(_samples(cov, 20000, 1))
    true = AnalyticGaussianAR(a, v, noisy=False)
    for wrong in (AnalyticGaussianAR(a, v, shift=0.3, noisy=False),
                  AnalyticGaussianAR(a, v, scale=1.5, noisy=False)):
      s0, ds0 = true.score_and_diag(None, true.context(None, x), x, None)
      s1, ds1 = wrong.score_and_diag(None, wrong.context(None, x), x, None)
      diff = losses.composite_score_matching(s1, ds1) - losses.composite_score_matching(s0, ds0)
      fisher = 0.5 * ((s1 - s0) ** 2).sum(-1)
      se = float((diff - fisher).std()) / np.sqrt(len(x)) + 1e-12
      assert float(diff.mean()) > 0.0
      assert abs(float(diff.mean() - fisher.mean())) < 4 * se + 1e-9


def test_noisy_csm_at_true_noisy_scores():
  """Per-dimension annealing: x~_d = x_d + sigma eps with the clean context; at the
  true scores of q_sigma(x~_d | x_<d) the sigma^2-weighted loss has expectation
  sum_d mean_sigma[-sigma^2 / (2 (v_d + sigma^2))]."""
  with float64():
    cov = data_lib.gaussian_covariance(D, seed=5)
    a, v = gaussian_conditionals(cov)
    x = jnp.asarray(_samples(cov, 4000, 2))
    sigmas = np.array([2.0, 0.5, 0.1])
    model = AnalyticGaussianAR(a, v)
    vals = [float(losses.csm_loss(model, sigmas, None, x, jax.random.PRNGKey(k))[0])
            for k in range(20)]
    expected = np.sum(np.mean(-sigmas[:, None] ** 2 / (2 * (v[None] + sigmas[:, None] ** 2)), 0))
    se = np.std(vals) / np.sqrt(len(vals))
    assert abs(np.mean(vals) - expected) < 4 * se + 1e-3
    wrong = AnalyticGaussianAR(a, v, scale=1.3)
    worse = np.mean([float(losses.csm_loss(wrong, sigmas, None, x, jax.random.PRNGKey(k))[0])
                     for k in range(20)])
    assert worse > np.mean(vals)
