"""Smoke test of experiments.mnist_sample_quality: tiny models, classifier and samples."""

import json
import os

import pytest

from experiments import mnist_sample_quality as msq


@pytest.mark.slow
def test_mnist_sample_quality_smoke(tmp_path, mnist_data_dir, monkeypatch):
  monkeypatch.setenv("TFDS_DATA_DIR", mnist_data_dir)
  out = str(tmp_path / "msq")
  argv = ["--out", out, "--models", "sigma5", "--num_samples", "8",
          "--num_reference", "40", "--grid_points", "9", "--num_dims", "12",
          "--long_steps", "0", "--rows", "sigma5_T10,sigma5_grid", "--classifier_steps", "3", "--classifier_channels", "4",
          "--classifier_features", "6", "--num_show", "4",
          "--config.training.num_steps=2", "--config.training.checkpoint_every=2",
          "--config.model.hidden_sizes=16", "--config.model.context_size=2",
          "--config.model.head_hidden=8", "--config.training.batch_size=8",
          "--sigma5.noise.num_levels=2", "--config.model.num_mixtures=2"]
  results = msq.main(argv)
  assert set(results["rows"]) == {"data", "sigma5_T10", "sigma5_grid"}
  for row in results["rows"].values():
    assert row["fid"] >= 0 and 0 <= row["on_fraction"] <= 1 and row["num_samples"] == 8
  assert results["rows"]["sigma5_T10"]["T"] == 10 and results["rows"]["sigma5_T10"]["L"] == 2
  assert results["rows"]["sigma5_grid"]["sampler"] == "grid"
  assert 0 <= results["classifier"]["test_accuracy"] <= 1
  for f in ("results.json", "samples.png", "table.md"):
    assert os.path.getsize(os.path.join(out, f)) > 0
  with open(os.path.join(out, "results.json")) as f:
    assert json.load(f)["models"]["sigma5"]["steps"] == 2
  assert [f for f in os.listdir(os.path.join(out, "classifier")) if f.endswith(".npz")]
  args, ov = msq.parse_args(["--out", out])
  rows = {m: [r[0] for r in msq.rows_for(m, msq.model_config(m, ov), args)] for m in msq.MODELS}
  assert rows == {"sigma5": ["sigma5_T10", "sigma5_T30", "sigma5_T100", "sigma5_grid"],
                  "sigma30": ["sigma30_T30", "sigma30_T100", "sigma30_grid"],
                  "unit": ["unit_T30", "unit_T100", "unit_grid"],
                  "gaussian": ["gaussian_exact"], "mol": ["mol_exact"]}
