"""sample_metrics against independent ground truth: closed-form Gaussian MMD^2, analytic
KL of Gaussians, and the defining properties of JS."""

import math

import numpy as np
import pytest

from csm_jax import sample_metrics as sm


def _gauss_mmd2(mu, s, h, d):
  """Population MMD^2 between N(0, s^2 I_d) and N(mu, s^2 I_d) for the RBF kernel of
  bandwidth h: E k(x, x') = (h^2 / (h^2 + 2 s^2))^(d/2) exp(-|a - a'|^2 / (2 (h^2 + 2 s^2)))
  for x ~ N(a, s^2 I), x' ~ N(a', s^2 I) (a Gaussian integral), so
  MMD^2 = 2 c (1 - exp(-|mu|^2 / (2 (h^2 + 2 s^2)))), c = (h^2 / (h^2 + 2 s^2))^(d/2)."""
  v = h * h + 2 * s * s
  return 2 * (h * h / v) ** (d / 2) * (1 - math.exp(-float(np.sum(np.square(mu))) / (2 * v)))


def test_mmd2_same_distribution_is_zero_within_stderr():
  rng = np.random.default_rng(0)
  x, y = rng.normal(size=(1500, 2)), rng.normal(size=(1500, 2))
  r = sm.mmd2(x, y, [0.5, 1.0, 2.0], block_size=400)   # padded last block
  for m, se in zip(r["mmd2"] + [r["mmd2_mean"]], r["stderr"] + [r["stderr_mean"]]):
    assert se > 0 and abs(m) < 4 * se


def test_mmd2_matches_closed_form_for_shifted_gaussians():
  rng = np.random.default_rng(1)
  s, d, mu = 0.7, 2, np.array([0.6, -0.3])
  hs = [0.5, 1.0, 2.0]
  n = 2000
  x = s * rng.normal(size=(n, d))
  y = mu + s * rng.normal(size=(n, d))
  r = sm.mmd2(x, y, hs, block_size=512)
  truth = [_gauss_mmd2(mu, s, h, d) for h in hs]
  for m, se, t in zip(r["mmd2"], r["stderr"], truth):
    assert m > 5 * se                      # clearly positive
    assert abs(m - t) < 4 * se, (m, t, se)
  assert abs(r["mmd2_mean"] - np.mean(truth)) < 4 * r["stderr_mean"]


def test_mmd2_stderr_is_calibrated():
  """The reported standard error matches the spread over independent repetitions."""
  rng = np.random.default_rng(2)
  vals, ses = [], []
  for _ in range(30):
    x, y = rng.normal(size=(200, 2)), 0.3 + rng.normal(size=(200, 2))
    r = sm.mmd2(x, y, [1.0])
    vals.append(r["mmd2"][0])
    ses.append(r["stderr"][0])
  assert 0.6 < np.std(vals) / np.mean(ses) < 1.6


def test_median_bandwidth():
  rng = np.random.default_rng(3)
  x = rng.normal(size=(3000, 2))
  # |x - x'|^2 / 2 ~ chi^2_2 / ... : |x - x'| is Rayleigh with scale sqrt(2); median
  # sqrt(2) * sqrt(2 log 2).
  assert sm.median_bandwidth(x) == pytest.approx(2 * math.sqrt(math.log(2)), rel=0.03)


def test_js_properties():
  rng = np.random.default_rng(4)
  p, q = rng.dirichlet(np.ones(50)), rng.dirichlet(np.ones(50))
  assert sm.js_divergence(p, p) == pytest.approx(0.0, abs=1e-12)
  assert sm.js_divergence(p, q) == pytest.approx(sm.js_divergence(q, p), rel=1e-12)
  assert 0 < sm.js_divergence(p, q) <= math.log(2)
  a, b = np.array([0.5, 0.5, 0, 0]), np.array([0, 0, 0.5, 0.5])   # disjoint supports
  assert sm.js_divergence(a, b) == pytest.approx(math.log(2), rel=1e-12)


def _normal_cdf(z):
  return 0.5 * (1 + np.vectorize(math.erf)(z / math.sqrt(2)))


@pytest.mark.parametrize("bins", [40, 400])
def test_kl_of_discretized_gaussians_approaches_analytic(bins):
  """KL(N(m1, s1^2) x N(0,1) || N(m2, s2^2) x N(0,1)) = log(s2/s1) + (s1^2 + (m1-m2)^2)
  / (2 s2^2) - 1/2; discretized by CDF differences on [-8, 8]^2."""
  m1, s1, m2, s2 = 0.0, 1.0, 0.5, 1.3
  truth = math.log(s2 / s1) + (s1 ** 2 + (m1 - m2) ** 2) / (2 * s2 ** 2) - 0.5
  e = np.linspace(-8, 8, bins + 1)
  p1 = np.diff(_normal_cdf((e - m1) / s1))
  p2 = np.diff(_normal_cdf((e - m2) / s2))
  p0 = np.diff(_normal_cdf(e))
  p, q = np.outer(p1, p0).ravel(), np.outer(p2, p0).ravel()
  kl = sm.kl_divergence(sm.smooth(p, 1e-12), sm.smooth(q, 1e-12))
  tol = 2e-2 if bins == 40 else 2e-4   # discretization error is O(h^2)
  assert kl == pytest.approx(truth, abs=tol)


def test_histogram_divergences_on_samples():
  rng = np.random.default_rng(5)
  data = rng.normal(size=(100000, 2))
  same = sm.histogram_divergences(data, rng.normal(size=(10000, 2)), bins=32)
  shifted = sm.histogram_divergences(data, 1.0 + rng.normal(size=(10000, 2)), bins=32)
  assert same["kl_data_model"] < 0.1 and same["js"] < 0.03
  assert shifted["kl_data_model"] > 0.5 and shifted["js"] > 0.1
  assert shifted["sample_mass_outside"] > same["sample_mass_outside"]
  p = sm.histogram(np.array([[0.0, 0.0], [100.0, 0.0]]), sm.histogram_edges(data, 4))
  assert p.shape == (17,) and p[-1] == 0.5 and p.sum() == pytest.approx(1.0)
