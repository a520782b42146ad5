"""Out-of-distribution statistics (csm_jax/ood.py, paper Sec. 5.5, Table 1)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from csm_jax import config_base, ood
from csm_jax.data import tfds_source
from tests.test_sampling import GaussianAR, _gaussian_ar


@dataclasses.dataclass(frozen=True)
class GaussianARModel(GaussianAR):
  discrete = False


def test_auroc_identical_and_separated_sets():
  rng = np.random.default_rng(0)
  a = rng.standard_normal(500)
  assert ood.auroc(a, a) == pytest.approx(0.5)
  assert ood.auroc(a + 100.0, a) == 1.0          # larger = in-distribution (positive)
  assert ood.auroc(a, a + 100.0) == 0.0
  with pytest.raises(ValueError, match="non-finite"):
    ood.auroc(np.array([np.nan, 1.0]), a)


def test_score_statistics_of_an_analytic_gaussian_ar_model():
  g = _gaussian_ar()
  model = GaussianARModel(g.bmat, g.c, g.v)
  y = jax.random.normal(jax.random.PRNGKey(0), (7, 3))
  sigma = 0.3
  m = np.asarray(y) @ g.bmat.T + g.c
  s = -(np.asarray(y) - m) / (g.v + sigma ** 2)        # N(m_d, v_d + sigma^2) scores
  np.testing.assert_allclose(ood.score_sum(model, None, y, sigma), s.sum(-1), rtol=1e-5)
  np.testing.assert_allclose(ood.score_norm_sq(model, None, y, sigma), (s ** 2).sum(-1),
                             rtol=1e-5)
  stats = ood.score_stats(ood.make_score_stats_fn(model), None, np.asarray(y), sigma,
                          batch_size=3)                  # padded last batch
  np.testing.assert_allclose(stats["h"], s.sum(-1), rtol=1e-5)


def test_sign_convention_is_the_documented_one():
  """Typicality: values near the held-out median score higher (in-distribution), on
  either side; in-distribution data against shifted data of either sign gives AUROC > 0.9."""
  rng = np.random.default_rng(1)
  ref, test_in = rng.standard_normal(2000), rng.standard_normal(500)
  t = ood.typicality(np.array([0.0, 3.0, -3.0]), ref)
  assert t[0] > t[1] and t[0] > t[2] and t[1] == pytest.approx(t[2], rel=0.05)
  for shift in (4.0, -4.0):
    out = rng.standard_normal(500) + shift
    assert ood.auroc(ood.typicality(test_in, ref), ood.typicality(out, ref)) > 0.95
  # log-likelihood is one-sided: the true density's log-likelihood ranks its own samples
  # above those of a wider Gaussian: AUROC = P(|Z| < 3 |Z'|) = (2 / pi) arctan 3
  logp = lambda x: -0.5 * x ** 2
  wide = 3.0 * rng.standard_normal(500)
  assert ood.auroc(logp(test_in), logp(wide)) == pytest.approx(2 / np.pi * np.arctan(3),
                                                               abs=0.04)


def test_choose_sigma_uses_relative_spread():
  rng = np.random.default_rng(2)
  held = {1.0: 10 + rng.standard_normal(300), 0.1: 10 + 20 * rng.standard_normal(300)}
  assert ood.choose_sigma(held) == 1.0


def test_synthetic_sets_and_conversions():
  rng = np.random.default_rng(3)
  c = ood.constant_uniform(rng, 50, (32, 32, 3))
  assert c.dtype == np.uint8 and c.shape == (50, 32, 32, 3)
  assert np.all(c == c[:, :1, :1, :])                    # constant per image and channel
  assert len(np.unique(c[:, 0, 0, :])) > 40              # values differ between images
  u = ood.uniform(rng, 20, (28, 28, 1))
  assert u.dtype == np.uint8 and abs(u.mean() - 127.5) < 3 and u.min() < 3 and u.max() > 252
  mnist_like = rng.integers(0, 256, (4, 28, 28, 1)).astype(np.uint8)
  rgb = ood.convert(mnist_like, (32, 32, 3))
  assert rgb.shape == (4, 32, 32, 3)
  np.testing.assert_array_equal(rgb[:, 2:30, 2:30, 1], mnist_like[..., 0])
  assert rgb[:, :2].max() == 0
  gray = ood.convert(rgb, (28, 28, 1))                  # luma of equal channels is the value
  assert gray.shape == (4, 28, 28, 1)
  const = np.full((2, 32, 32, 3), 77, np.uint8)
  np.testing.assert_array_equal(ood.convert(const, (28, 28, 1)), 77)


def test_svhn_path_under_mock_data(tmp_path, monkeypatch):
  tfds = pytest.importorskip("tensorflow_datasets")
  monkeypatch.setattr(tfds_source, "_is_prepared", lambda builder: True)
  cfg = config_base.default_config().data
  cfg.dataset = "svhn"
  cfg.data_dir = str(tmp_path / "tfds")
  cfg.cache_dir = str(tmp_path / "cache")
  with tfds.testing.mock_data(num_examples=6, policy=tfds.testing.MockPolicy.USE_CODE):
    images = ood.load_image_set("svhn", cfg, 4)
  assert images.shape == (4, 32, 32, 3) and images.dtype == np.uint8
  assert ood.convert(images, (28, 28, 1)).shape == (4, 28, 28, 1)


def test_table1_aurocs_and_markdown():
  """experiments/ood.py: typicality where a held-out reference exists, one-sided
  otherwise; the average row is over the OOD sets; the Markdown table has every row."""
  from experiments import ood as ood_exp
  rng = np.random.default_rng(4)
  inn, ref = rng.standard_normal(300), rng.standard_normal(1000)
  stats = {"h": {"in": inn, "far": inn + 10.0, "same": rng.standard_normal(300)},
           "loglik": {"in": -inn ** 2, "far": -(inn + 10.0) ** 2, "same": -inn ** 2}}
  table = ood_exp.aurocs(stats, {"h": ref}, "in")
  assert table["far"]["h"] == 1.0 and abs(table["same"]["h"] - 0.5) < 0.1
  assert table["far"]["loglik"] > 0.99 and table["same"]["loglik"] == pytest.approx(0.5)
  assert table["average"]["h"] == pytest.approx((table["far"]["h"] + table["same"]["h"]) / 2)
  md = ood_exp.markdown({"paper": ood_exp.PAPER, "settings": {"s": {
      "in_distribution": "in", "columns": ["h", "loglik"], "auroc": table}}})
  assert "| far | 1.00 |" in md and "| average |" in md and "AR-CSM 0.68/0.57/0.95" in md
