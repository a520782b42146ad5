"""image_quality against independent ground truth: the closed-form Frechet distance of
commuting Gaussians, a brute-force float64 sqrtm, hand-counted pixel statistics, and a
classifier on a tiny separable image set (accuracy, cache reuse, FID ordering)."""

import time

import numpy as np
import pytest
import scipy.linalg

from csm_jax import image_quality as iq
from csm_jax.data import tfds_source


def _random_spd(rng, d, scale=1.0):
  a = rng.normal(size=(d, d))
  return scale * (a @ a.T / d + 0.1 * np.eye(d))


def test_frechet_closed_form_for_diagonal_and_commuting_covariances():
  rng = np.random.default_rng(0)
  d = 6
  mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
  a, b = rng.uniform(0.1, 3.0, d), rng.uniform(0.1, 3.0, d)
  truth = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
  assert iq.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(truth, 1e-12)
  q, _ = np.linalg.qr(rng.normal(size=(d, d)))           # same eigenvectors: commuting
  c1, c2 = q @ np.diag(a) @ q.T, q @ np.diag(b) @ q.T
  assert iq.frechet_distance(mu1, c1, mu2, c2) == pytest.approx(truth, 1e-10)


def test_frechet_zero_for_identical_and_symmetric():
  rng = np.random.default_rng(1)
  mu, c = rng.normal(size=5), _random_spd(rng, 5)
  assert iq.frechet_distance(mu, c, mu, c) < 1e-10
  c_singular = np.outer(mu, mu)                           # rank 1: zero eigenvalues
  assert iq.frechet_distance(mu, c_singular, mu, c_singular) < 1e-8
  mu2, c2 = rng.normal(size=5), _random_spd(rng, 5, 3.0)
  assert iq.frechet_distance(mu, c, mu2, c2) == pytest.approx(
      iq.frechet_distance(mu2, c2, mu, c), 1e-12)


@pytest.mark.parametrize("d", [2, 10, 40])
def test_frechet_matches_brute_force_sqrtm(d):
  rng = np.random.default_rng(d)
  mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
  c1, c2 = _random_spd(rng, d), _random_spd(rng, d, 0.5)
  root = scipy.linalg.sqrtm(c1 @ c2)                     # general (non-symmetric) sqrtm
  brute = np.sum((mu1 - mu2) ** 2) + np.trace(c1) + np.trace(c2) - 2 * np.trace(root).real
  assert iq.frechet_distance(mu1, c1, mu2, c2) == pytest.approx(brute, rel=1e-9, abs=1e-9)


def test_feature_stats_and_shape_checks():
  f = np.random.default_rng(2).normal(size=(50, 3))
  mu, cov = iq.feature_stats(f)
  np.testing.assert_allclose(mu, f.mean(0))
  np.testing.assert_allclose(cov, np.cov(f.T))
  with pytest.raises(ValueError):
    iq.frechet_distance(mu, cov, mu[:2], cov[:2, :2])


@pytest.mark.parametrize("n1,n2", [(5, 9), (7, 7), (40, 12)])
def test_features_frechet_distance_equals_the_covariance_route(n1, n2):
  """The low-rank route (sets smaller than the feature size) and the covariance route
  (a set larger: `frechet_distance` of `feature_stats`) agree with the covariance
  formula; identical sets give 0. (Tolerance 1e-7: the covariance route takes square
  roots of the rank-deficient covariances' zero eigenvalues, rounding errors of 1e-16
  that become 1e-8 each.)"""
  rng = np.random.default_rng(n1 + n2)
  f1 = rng.standard_normal((n1, 16)) * np.linspace(0.5, 2.0, 16)
  f2 = rng.standard_normal((n2, 16)) + 0.3
  want = iq.frechet_distance(*iq.feature_stats(f1), *iq.feature_stats(f2))
  assert iq.features_frechet_distance(f1, f2) == pytest.approx(want, rel=1e-7)
  assert iq.features_frechet_distance(f2, f1) == pytest.approx(want, rel=1e-7)
  assert iq.features_frechet_distance(f1, f1) < 1e-9


def test_pixel_statistics_on_hand_built_images():
  img = np.zeros((2, 4, 4, 1), np.float32)
  img[0, 0, :, 0] = 1.0                   # 4 pixels fully on
  img[1, 1, 1, 0] = 0.5                   # exactly the threshold: not "on"
  img[1, 2, 2, 0] = 0.75                  # on
  assert iq.on_pixel_fraction(img) == pytest.approx(5 / 32)
  assert iq.mean_intensity(img) == pytest.approx((4 + 0.5 + 0.75) / 32)
  assert iq.on_pixel_fraction(np.zeros((3, 2, 2, 1))) == 0.0
  np.testing.assert_allclose(iq.to_unit(np.array([[0, 255]], np.uint8)),
                             [[0.5 / 256, 255.5 / 256]])


def _bars(rng, n, size=8):
  """Class k in 0..3: a bright horizontal bar on rows 2k, 2k + 1, on faint noise."""
  y = rng.integers(0, 4, n)
  x = 0.15 * rng.random((n, size, size, 1))
  for k in range(4):
    x[y == k, 2 * k:2 * k + 2] = 0.8 + 0.2 * rng.random((int(np.sum(y == k)), 2, size, 1))
  return x.astype(np.float32), y


@pytest.fixture(scope="module")
def bars_classifier(tmp_path_factory):
  rng = np.random.default_rng(3)
  xtr, ytr = _bars(rng, 512)
  xte, yte = _bars(rng, 400)
  cache = str(tmp_path_factory.mktemp("clf"))
  kw = dict(seed=0, steps=150, batch_size=32, learning_rate=3e-3, channels=(4, 8),
            features=16, num_classes=4, cache_dir=cache)
  before = iq.TRAIN_COUNT[0]
  t0 = time.perf_counter()
  clf = iq.train_classifier(xtr, ytr, xte, yte, **kw)
  first = time.perf_counter() - t0
  return clf, (xtr, ytr, xte, yte), kw, before, first


def test_classifier_learns_and_cache_is_reused(bars_classifier):
  clf, (xtr, ytr, xte, yte), kw, before, first = bars_classifier
  assert iq.TRAIN_COUNT[0] == before + 1 and not clf.info["cached"]
  assert clf.info["test_accuracy"] >= 0.95, clf.info
  t0 = time.perf_counter()
  again = iq.train_classifier(xtr, ytr, xte, yte, **kw)
  assert iq.TRAIN_COUNT[0] == before + 1                  # not retrained
  assert again.info["cached"] and time.perf_counter() - t0 < first
  assert again.info["test_accuracy"] == clf.info["test_accuracy"]
  np.testing.assert_allclose(again.features(xte[:20]), clf.features(xte[:20]), rtol=1e-6)
  other = dict(kw, steps=kw["steps"] + 1)                 # other settings: another key
  iq.train_classifier(xtr, ytr, xte, yte, **dict(other, steps=2))
  assert iq.TRAIN_COUNT[0] == before + 2


def test_fid_of_data_halves_is_far_below_noise_and_blank(bars_classifier):
  clf, (_, _, xte, _), _, _, _ = bars_classifier
  ref = iq.reference_stats(clf, xte[:200])
  same = iq.classifier_fid(clf, xte[200:], ref)
  rng = np.random.default_rng(4)
  noise = iq.classifier_fid(clf, rng.random(xte[200:].shape).astype(np.float32), ref)
  blank = iq.classifier_fid(clf, np.zeros_like(xte[200:]), xte[:200])   # images as reference
  assert same < 0.1 * noise and same < 0.1 * blank, (same, noise, blank)
  r = iq.quality_report(clf, xte[200:], ref, xte[:200])
  assert r["fid"] == pytest.approx(same) and r["num_samples"] == 200
  assert abs(r["mean_intensity"] - r["data_mean_intensity"]) < 0.05
  assert sum(r["predicted_class_counts"]) == 200


class _LabelBuilder:
  """What `_cached_labels` reads from a tfds builder (no `decoders` argument)."""
  name, version, data_path = "fake", "1.0.0", "/nowhere"

  def __init__(self, items):
    self.items, self.calls = items, 0
    split = type("Split", (), {"num_examples": len(items)})()
    self.info = type("Info", (), {"splits": {"test": split}})()

  def as_data_source(self, split):
    del split
    self.calls += 1
    return self.items


def test_labels_are_decoded_once_then_cached(tmp_path):
  builder = _LabelBuilder([{"image": None, "label": np.int64(k % 3)} for k in range(7)])
  path = str(tmp_path / "labels.npy")
  first = tfds_source._cached_labels(builder, "test", path)
  second = tfds_source._cached_labels(builder, "test", path)
  np.testing.assert_array_equal(first, [0, 1, 2, 0, 1, 2, 0])
  np.testing.assert_array_equal(second, first)
  assert builder.calls == 1 and first.dtype == np.int64
