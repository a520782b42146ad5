"""The sequential filter and sequential Monte Carlo samplers of csm_jax/restore/filtering.

Ground truth: the analytic Gaussian posterior (and the filter's own analytic marginal
of the first pixel), the exact conditional for a suffix mask, and brute-force
enumeration over every pair of 8-bit pixel values for salt-and-pepper.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from csm_jax.models import known
from csm_jax.restore import filtering
from csm_jax.restore import joint as joint_lib
from csm_jax.restore import observations as obs_lib
from csm_jax.restore import posterior

IDENTITY = obs_lib.PixelSpace()
BOX = joint_lib.Box(-6.0, 6.0, 33)


def _sample(m, obs, y, method, chains, space=IDENTITY, sigma=1e-3, box=BOX, seed=1):
  st = posterior.Settings(sigmas=(sigma,), method=method, chains=chains)
  sampler = posterior.make_sampler(m, joint_lib.make_joint(m, box), obs, space, st)
  return sampler(None, jnp.asarray(np.asarray(y, np.float32)[None]),
                 jax.random.PRNGKey(seed))


def _gaussian(dim=3, seed=0):
  m = known.random_gaussian_ar(dim, seed=seed, std_range=(0.3, 0.8))
  a = np.linalg.inv(np.eye(dim) - m.w)
  return m, a @ m.b, a @ np.diag(m.v + 1e-6) @ a.T


def _noisy_gaussian(s=0.4):
  """The 3-dimensional Gaussian AR model observed with N(0, s^2) noise at a fixed y, and
  its analytic posterior mean and covariance."""
  m, mu, cov = _gaussian()
  y = np.array([1.2, -0.6, 0.9])
  obs = obs_lib.GaussianNoise(s, (3,), bounded=False)
  post_cov = np.linalg.inv(np.linalg.inv(cov) + np.eye(3) / s ** 2)
  post_mean = post_cov @ (np.linalg.solve(cov, mu) + y / s ** 2)
  return m, mu, cov, s, y, obs, post_mean, post_cov


def test_completion_steps_mark_the_last_pixel_of_each_block():
  obs = obs_lib.Downsample(2, 0.1, (4, 4))
  np.testing.assert_array_equal(np.flatnonzero(filtering.completion_steps(obs, np.arange(16))),
                                [5, 7, 13, 15])
  np.testing.assert_array_equal(
      np.flatnonzero(filtering.completion_steps(obs, np.arange(16)[::-1])), [0, 2, 8, 10])
  assert filtering.completion_steps(obs_lib.GaussianNoise(0.1, (4, 4)), np.arange(16)) is None


def test_the_filter_is_the_exact_posterior_for_a_suffix_mask():
  """Observed x_0 (a prefix of the order): the filter draws x_1, x_2 from the exact
  conditional p(x_1, x_2 | x_0)."""
  m, mu, cov = _gaussian()
  mask = np.array([True, False, False])
  obs = obs_lib.Missing(mask, (3,), bounded=False)
  y = np.array([0.7, 0.0, 0.0], np.float32)
  x0 = float(np.asarray(jnp.float32(0.7)))
  out = _sample(m, obs, y, "filter", chains=4000)
  x = np.asarray(out["chains"][0], np.float64)
  assert np.all(x[:, 0] == np.float32(0.7))
  nodes = np.asarray(filtering.pixel_values(IDENTITY, BOX, 256)[0])
  # conditional of a Gaussian; the grid draws are on nodes (spacing h: + h^2 / 12)
  c_mean = mu[1:] + cov[1:, :1] @ np.linalg.solve(cov[:1, :1], [x0 - mu[0]])
  c_cov = cov[1:, 1:] - cov[1:, :1] @ np.linalg.solve(cov[:1, :1], cov[:1, 1:])
  h = nodes[1] - nodes[0]
  se = np.sqrt(np.diag(c_cov) / len(x))
  assert np.all(np.abs(x[:, 1:].mean(0) - c_mean) < 5 * se), (x[:, 1:].mean(0), c_mean)
  emp = np.cov(x[:, 1:].T)
  assert np.abs(emp - c_cov - h * h / 12 * np.eye(2)).max() < 0.1 * c_cov.max(), (emp, c_cov)
  # the Rao-Blackwellized estimate: the same mean, with a smaller error
  assert np.all(np.abs(np.asarray(out["mean"][0, 1:]) - c_mean) < 5 * se)


def test_smc_reaches_the_analytic_posterior_and_the_filter_its_own_marginal():
  """Gaussian noise on every pixel: the filter's x_0 follows p(x_0 | y_0) only (it does
  not look ahead); SMC's particles follow p(x | y_0, y_1, y_2)."""
  m, mu, cov, s, y, obs, post_mean, post_cov = _noisy_gaussian()
  v0 = cov[0, 0]
  f_var = 1.0 / (1.0 / v0 + 1.0 / s ** 2)
  f_mean0 = f_var * (mu[0] / v0 + y[0] / s ** 2)
  assert abs(f_mean0 - post_mean[0]) > 0.05      # the look-ahead matters here

  filt = _sample(m, obs, y, "filter", chains=4000)
  x = np.asarray(filt["chains"][0], np.float64)
  assert abs(x[:, 0].mean() - f_mean0) < 5 * np.sqrt(f_var / len(x))
  assert abs(float(filt["mean"][0, 0]) - f_mean0) < 1e-3   # its exact conditional mean

  smc = _sample(m, obs, y, "smc", chains=4000)
  x = np.asarray(smc["chains"][0], np.float64)
  # resampling costs effective samples: allow for an effective size of a quarter
  se = np.sqrt(np.diag(post_cov) / (len(x) / 4))
  assert np.all(np.abs(x.mean(0) - post_mean) < 5 * se), (x.mean(0), post_mean)
  np.testing.assert_allclose(np.asarray(smc["mean"][0]), x.mean(0), rtol=1e-4, atol=1e-5)
  assert np.abs(np.cov(x.T) - post_cov).max() < 0.15 * np.diag(post_cov).max()


def test_salt_and_pepper_on_pixels_matches_enumeration():
  """Two 8-bit pixels near black, both observed 0: kept or corrupted? The posterior
  over the 256 x 256 values by enumeration (the conditionals' densities at the pixel
  values times the bins' widths, the exact discrete likelihood) against SMC, and the
  filter's first pixel against its own enumerated marginal q(x_0) p(y_0 | x_0), which
  does not see y_1."""
  b0, v0, v1, sig2, p = 0.01, 4e-4, 2e-5, 1e-4, 0.3   # x_1 | x_0 ~ N(x_0, v1)
  m = known.GaussianAR(w=np.array([[0.0, 0.0], [1.0, 0.0]]), b=np.array([b0, 0.0]),
                       v=np.array([v0, v1]))
  space = obs_lib.PixelSpace(False, 256.0, 0.5, "unit", 0.0)
  obs = obs_lib.SaltPepper(p, (2,))
  y = np.array([0.0, 0.0])
  xs, us, logw = filtering.pixel_values(space)
  logn = lambda x, mean, var: -0.5 * (x - mean) ** 2 / var - 0.5 * np.log(var)
  # the sampler's level sigma = 0.01 widens each conditional by sig2
  l0 = logn(xs, b0, v0 + sig2) + logw
  l1 = logn(xs[None, :], xs[:, None], v1 + sig2) + logw[None, :]
  l1 = l1 - np.logaddexp.reduce(l1, axis=1, keepdims=True)
  lik = np.log((1 - p) * (np.abs(us - 0.0) < 0.5 / 255) + p / 2)
  logpost = (l0 - np.logaddexp.reduce(l0))[:, None] + l1 + lik[:, None] + lik[None, :]
  post = np.exp(logpost - np.logaddexp.reduce(logpost.ravel()))
  mean = np.array([post.sum(1) @ us, post.sum(0) @ us])
  sd = np.sqrt(np.array([post.sum(1) @ us ** 2, post.sum(0) @ us ** 2]) - mean ** 2)
  kept_true = np.array([post[0].sum(), post[:, 0].sum()])     # value 0 is y's bin
  f0 = np.exp(l0 + lik - np.logaddexp.reduce(l0 + lik))
  assert kept_true[0] - f0[0] > 0.1     # y_1 = 0 makes x_0 = 0 likelier: look-ahead
  box = joint_lib.Box(-0.2, 1.2, 33)

  smc = _sample(m, obs, y, "smc", chains=4000, space=space, sigma=0.01, box=box)
  x = np.asarray(smc["chains"][0], np.float64)
  n_eff = len(x) / 4
  assert np.all(np.abs(x.mean(0) - mean) < 5 * sd / np.sqrt(n_eff)), (x.mean(0), mean)
  kept = np.isclose(x, 0.0, atol=1e-4).mean(0)
  assert np.all(np.abs(kept - kept_true)
                < 5 * np.sqrt(kept_true * (1 - kept_true) / n_eff)), (kept, kept_true)

  filt = _sample(m, obs, y, "filter", chains=4000, space=space, sigma=0.01, box=box)
  x0 = np.asarray(filt["chains"][0, :, 0], np.float64)
  assert abs(np.isclose(x0, 0.0, atol=1e-4).mean() - f0[0]) < 5 * np.sqrt(
      f0[0] * (1 - f0[0]) / len(x0))
  assert abs(float(filt["mean"][0, 0]) - f0 @ us) < 2e-4


@pytest.mark.slow
def test_metropolized_sweeps_reach_and_keep_the_analytic_posterior():
  """Gaussian noise: from the filter (which misses the look-ahead) Metropolized sweeps
  reach p(x | y) (single-site moves on a correlated posterior: a dozen sweeps); started
  in p(x | y) they stay there. Lattice of 256 values on the box: its spacing adds
  h^2 / 12 to each variance."""
  m, _, _, _, y, obs, post_mean, post_cov = _noisy_gaussian()
  box = joint_lib.Box(-6.0, 6.0, 97, True)
  nodes = np.asarray(filtering.pixel_values(IDENTITY, box, 256)[0])
  h2 = (nodes[1] - nodes[0]) ** 2 / 12
  joint = joint_lib.make_joint(m, box)

  def check(out):
    x = np.asarray(out["chains"][0], np.float64)
    se = np.sqrt(np.diag(post_cov) / len(x))
    assert np.all(np.abs(x.mean(0) - post_mean) < 5 * se + 0.01), (x.mean(0), post_mean)
    emp = np.cov(x.T)
    assert np.abs(emp - post_cov - h2 * np.eye(3)).max() < 0.12 * np.diag(post_cov).max(), (
        emp, post_cov)
    assert 0.2 < float(out["mh_accept"]) <= 1.0

  st = posterior.Settings(sigmas=(1e-3,), method="filter", chains=3000, mh_sweeps=12)
  sampler = posterior.make_sampler(m, joint, obs, IDENTITY, st)
  check(sampler(None, jnp.asarray(y[None], jnp.float32), jax.random.PRNGKey(2)))
  x0 = np.random.default_rng(5).multivariate_normal(post_mean, post_cov, size=3000)
  st = posterior.Settings(sigmas=(1e-3,), method="mala", chains=3000, mh_sweeps=2)
  sampler = posterior.make_sampler(m, joint, obs, IDENTITY, st)
  check(sampler(None, jnp.asarray(y[None], jnp.float32), jax.random.PRNGKey(3),
                jnp.asarray(x0[None], jnp.float32)))



def test_a_probability_mass_prior_in_the_filter_matches_enumeration():
  """A discretized-logistic (probability mass) MADE on 3 pixels as the prior, pixel data
  without dequantization. Pixels 1 and 2 missing (a suffix): each chain's conditional
  means are the head's own probabilities over the 256 values, enumerated through full
  images, and its draws follow them; salt-and-pepper on pixel 0: q(k) p(y_0 | k)
  enumerated. Other samplers refuse a mass head, naming the field."""
  from csm_jax import config_base
  from tests import helpers
  m = helpers.tiny_model(3, head="discretized_logistic")
  params = m.init(jax.random.PRNGKey(4))
  space = obs_lib.PixelSpace(False, 255.0, 0.0, "symmetric", 0.0)
  us = np.arange(256) / 255.0
  vals = (-1.0 + 2.0 * us).astype(np.float32)              # the head's bin centres

  def probs(prefix, d):
    """P(x_d = k | x_<d = prefix), (256,), from 256 full images through the model."""
    x = np.zeros((256, 3), np.float32)
    x[:, :d] = prefix
    x[:, d] = vals
    xj = jnp.asarray(x)
    lp = np.asarray(m.log_cond(params, m.context(params, xj), xj), np.float64)[:, d]
    assert abs(np.logaddexp.reduce(lp)) < 1e-4             # a mass: sums to one
    return np.exp(lp - np.logaddexp.reduce(lp))

  chains = 400
  obs = obs_lib.Missing(np.array([True, False, False]), (3,))
  y = np.tile(np.array([100 / 255.0, 0.0, 0.0], np.float32), (chains, 1))
  x0 = jnp.asarray(np.tile([vals[100], 0.0, 0.0], (chains, 1)), jnp.float32)
  free = jnp.asarray(np.tile([False, True, True], (chains, 1)))
  x, est = filtering.make_filter(m, obs, space, 0.01, chains)(
      params, jnp.asarray(y), x0, free, jax.random.PRNGKey(0))
  x, est = np.asarray(x, np.float64), np.asarray(est, np.float64)
  np.testing.assert_array_equal(x[:, 0], vals[100])
  p1 = probs([vals[100]], 1)
  np.testing.assert_allclose(est[:, 1], p1 @ us, atol=2e-4)
  sd1 = np.sqrt(p1 @ us ** 2 - (p1 @ us) ** 2)
  # the draws: on the bin centres, with the conditional's mean
  np.testing.assert_allclose((x[:, 1] + 1) / 2 * 255, np.round((x[:, 1] + 1) / 2 * 255),
                             atol=1e-3)
  assert abs(((x[:, 1] + 1) / 2).mean() - p1 @ us) < 5 * sd1 / np.sqrt(chains)
  for c in range(4):
    np.testing.assert_allclose(est[c, 2], probs([vals[100], x[c, 1]], 2) @ us, atol=2e-4)

  obs = obs_lib.SaltPepper(0.3, (3,))
  y = np.array([0.0, 1.0, 0.0], np.float32)
  st = posterior.Settings(sigmas=(0.01,), method="filter", chains=4)
  out = posterior.make_sampler(m, joint_lib.make_joint(m, None), obs, space, st)(
      params, jnp.asarray(y[None]), jax.random.PRNGKey(1))
  post0 = probs([], 0) * ((1 - 0.3) * (us == 0.0) + 0.15)
  np.testing.assert_allclose(float(out["mean"][0, 0]), post0 @ us / post0.sum(), atol=2e-4)

  # the lattice log-probabilities of the mass prior are its own, at every pixel
  xt = jnp.asarray(np.array([[vals[100], vals[3], vals[250]]], np.float32))
  lat = np.asarray(filtering.make_lattice_log_probs(m, space, 0.01)(params, xt))
  own = np.asarray(m.log_cond(params, m.context(params, xt), xt))[0]
  np.testing.assert_allclose(lat[0, [0, 1, 2], [100, 3, 250]], own, atol=1e-4)
  bpd = filtering.lattice_bits_per_dim(m, params, np.array([[100, 3, 250]]) / 255.0,
                                       space, 0.01)
  np.testing.assert_allclose(bpd, -own.sum() / (3 * np.log(2)), rtol=1e-5)

  c = config_base.default_config()
  with pytest.raises(ValueError, match="restore.method"):
    posterior.restore(m, params, c, y[None], "salt_pepper")
  c.restore.method, c.restore.mala_steps = "filter", 3
  with pytest.raises(ValueError, match="restore.mala_steps"):
    posterior.restore(m, params, c, y[None], "salt_pepper")
  with pytest.raises(ValueError, match="dequantization"):
    filtering.make_filter(m, obs, obs_lib.PixelSpace(False, 256.0, 0.5, "symmetric", 0.0),
                          0.01, 2)


def test_lattice_log_probs_of_a_score_head_are_its_discretized_conditionals():
  """A Gaussian AR model (score head view, sigma widening each conditional) on 8-bit
  pixels: the lattice log-probabilities are the Gaussian densities at the pixel values
  times their bin widths, normalized over the 256 values (the trapezoid rule integrates
  the linear score exactly)."""
  sig = 0.01
  m = known.GaussianAR(w=np.array([[0.0, 0.0], [0.8, 0.0]]), b=np.array([0.4, 0.1]),
                       v=np.array([0.01, 0.004]))
  space = obs_lib.PixelSpace(False, 256.0, 0.5, "unit", 0.0)
  xs, _, logw = filtering.pixel_values(space)
  x = jnp.asarray([[xs[90], xs[120]]], jnp.float32)
  lat = np.asarray(filtering.make_lattice_log_probs(m, space, sig)(None, x), np.float64)
  for d, mean in ((0, 0.4), (1, 0.1 + 0.8 * float(x[0, 0]))):
    ref = -0.5 * (xs - mean) ** 2 / (m.v[d] + sig ** 2) + logw
    ref -= np.logaddexp.reduce(ref)
    np.testing.assert_allclose(lat[0, d], ref, atol=2e-3)


def _smooth_on_lattice(p, xs, logw, s):
  """p (K,) on the lattice, smoothed by N(0, s^2) and restricted to the lattice: each
  value's density times its bin width, normalized (float64 reference)."""
  dens = np.exp(-0.5 * ((xs[:, None] - xs[None, :]) / s) ** 2) @ p
  q = dens * np.exp(logw)
  return q / q.sum()


def test_reweight_split_recovers_the_side_masses_from_a_smoothed_level():
  """Two narrow modes (background at 0.03, ink at 0.9) with the wrong weights (0.9, 0.1)
  at the small level; the larger level is the true mixture (0.35, 0.65) smoothed by
  N(0, s^2) on the lattice. Reweighting gives back the true conditional: the side masses
  and every value's probability."""
  space = obs_lib.PixelSpace(False, 256.0, 0.5, "unit", 0.0)
  xs, _, logw = filtering.pixel_values(space)
  comp = lambda mu, sd: np.exp(-0.5 * ((xs - mu) / sd) ** 2 + logw)
  a, b = comp(0.03, 0.01), comp(0.9, 0.02)
  a, b = a / a.sum(), b / b.sum()
  truth = 0.35 * a + 0.65 * b
  wrong = 0.9 * a + 0.1 * b
  w = np.exp(logw)
  lo, hi = xs[0] - 0.5 * w[0], xs[-1] + 0.5 * w[-1]
  for s in (0.1, 0.3):
    ref = _smooth_on_lattice(truth, xs, logw, s)
    out = filtering.reweight_split(jnp.log(jnp.asarray(np.stack([wrong, truth]))),
                                   jnp.log(jnp.asarray(np.stack([ref, ref]))),
                                   jnp.asarray(xs), 0.5, s, lo, hi)
    out = np.exp(np.asarray(out, np.float64))
    for row in out:
      assert abs(row[xs >= 0.5].sum() - 0.65) < 2e-3, (s, row[xs >= 0.5].sum())
      np.testing.assert_allclose(row, truth, atol=1e-4)
    # the reference alone (no reweighting) is far from the truth at this s
    assert np.abs(ref - truth).max() > 1e-2


def test_filter_mass_sigma_is_the_identity_for_a_consistently_smoothed_model():
  """A Gaussian AR model's score head at level sigma is the clean conditional smoothed by
  N(0, sigma^2) exactly, so side masses taken from a larger level change nothing: the
  lattice log-probabilities with and without filter_mass_sigma agree."""
  sig = 0.01
  m = known.GaussianAR(w=np.array([[0.0, 0.0], [0.8, 0.0]]), b=np.array([0.45, -0.2]),
                       v=np.array([0.04, 0.01]))
  space = obs_lib.PixelSpace(False, 256.0, 0.5, "unit", 0.0)
  xs, _, _ = filtering.pixel_values(space)
  x = jnp.asarray([[xs[90], xs[200]], [xs[150], xs[10]]], jnp.float32)
  plain = np.asarray(filtering.make_lattice_log_probs(m, space, sig)(None, x))
  for ms in (0.1, 0.3):
    re = np.asarray(filtering.make_lattice_log_probs(m, space, sig, mass_sigma=ms)(None, x))
    np.testing.assert_allclose(np.exp(re), np.exp(plain), atol=2e-3)
  # and the filter runs with it (salt-and-pepper, every pixel extreme: all drawn)
  obs = obs_lib.SaltPepper(0.2, (2,))
  filt = filtering.make_filter(m, obs, space, sig, chains=2, mass_sigma=0.2)
  y = jnp.asarray([[0.0, 1.0], [0.0, 1.0]], jnp.float32)
  out, est = filt(None, y, space.from_image(y), jnp.ones((2, 2), bool), jax.random.PRNGKey(0))
  assert np.isfinite(np.asarray(est)).all() and np.asarray(est).min() >= 0


def test_filter_mass_sigma_refuses_what_it_cannot_do():
  m = known.GaussianAR(w=np.zeros((2, 2)), b=np.zeros(2), v=np.ones(2))
  space = obs_lib.PixelSpace(False, 256.0, 0.5, "unit", 0.0)
  with pytest.raises(ValueError, match="filter_mass_sigma must be > the filter's level"):
    filtering.make_lattice_log_probs(m, space, 0.1, mass_sigma=0.05)
  with pytest.raises(ValueError, match="filter_mass_sigma: needs pixel data"):
    filtering.make_lattice_log_probs(m, IDENTITY, 0.1, box=BOX, mass_sigma=0.5)
  with pytest.raises(ValueError, match="filter_mass_sigma must be None or > the last"):
    posterior.Settings(sigmas=(1.0, 0.1), method="filter", filter_mass_sigma=0.1)


def test_metropolized_sweeps_reach_the_enumerated_lattice_posterior():
  """Pixel 0 missing, pixel 1 observed (not a suffix: the filter draws x_0 from its prior
  alone). The sweeps target the filter's lattice posterior, side masses from
  filter_mass_sigma included: pi(x_0 = v) proportional to P(v) P(y_1 | v), enumerated
  on the 256 values with the lattice conditionals themselves."""
  sig, ms = 0.01, 0.2
  m = known.GaussianAR(w=np.array([[0.0, 0.0], [0.9, 0.0]]), b=np.array([0.45, -0.05]),
                       v=np.array([0.04, 0.005]))
  space = obs_lib.PixelSpace(False, 256.0, 0.5, "unit", 0.0)
  xs, us, _ = filtering.pixel_values(space)
  y = np.array([0.0, us[100]], np.float32)                 # pixel 1 observed at 100/255
  lp = filtering.make_lattice_log_probs(m, space, sig, mass_sigma=ms)
  grid = jnp.asarray(np.stack([xs, np.full(256, xs[100])], 1), jnp.float32)
  tab = np.asarray(lp(None, grid), np.float64)             # (256 states, 2, 256)
  log_pi = tab[:, 0, :].diagonal() + tab[:, 1, 100]
  pi = np.exp(log_pi - log_pi.max())
  pi /= pi.sum()
  mean_true = pi @ us
  obs = obs_lib.Missing(np.array([False, True]), (2,))
  chains = 2000

  def run(sweeps):
    st = posterior.Settings(sigmas=(sig,), method="filter", chains=chains,
                            mh_sweeps=sweeps, filter_mass_sigma=ms)
    sampler = posterior.make_sampler(m, joint_lib.make_joint(m, None), obs, space, st)
    return sampler(None, jnp.asarray(y[None]), jax.random.PRNGKey(4))

  sd = np.sqrt(pi @ us ** 2 - mean_true ** 2)
  se = sd / np.sqrt(chains)
  x0 = np.asarray(run(0)["chains"][0, :, 0], np.float64)
  assert abs(x0.mean() - mean_true) > 10 * se               # no look-ahead: far off
  out = run(6)
  x0 = np.asarray(out["chains"][0, :, 0], np.float64)
  assert abs(x0.mean() - mean_true) < 5 * se, (x0.mean(), mean_true)
  assert abs(x0.std() - sd) < 0.1 * sd, (x0.std(), sd)
  assert np.all(np.asarray(out["chains"][0, :, 1]) == y[1])  # the observed pixel kept
  assert 0.2 < float(out["mh_accept"]) <= 1.0
