"""Smoke test of experiments.mnist_workdir_quality: a tiny trained workdir, two sampler
settings, a tiny classifier and a few samples of a few dimensions."""

import json
import os

import pytest

from csm_jax import config_base
from csm_jax import train
from csm_jax import workdir as workdir_lib
from experiments import mnist_workdir_quality as mwq

CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs",
                      "mnist_made.py")
TINY = ["training.num_steps=2", "training.checkpoint_every=2", "training.eval_every=0",
        "training.log_every=1", "training.batch_size=8", "model.hidden_sizes=(16, 16)",
        "model.context_size=2", "model.head_hidden=(8,)", "noise.num_levels=2"]


def test_parse_setting():
  assert mwq.parse_setting("new=") == ("new", [])
  assert mwq.parse_setting("old=sampling.num_steps=10, sampling.step_lr=0.002") == (
      "old", ["sampling.num_steps=10", "sampling.step_lr=0.002"])
  assert mwq.parse_setting("s=sampling.sigmas=(1.0, 0.5),sampling.num_steps=3") == (
      "s", ["sampling.sigmas=(1.0, 0.5)", "sampling.num_steps=3"])
  with pytest.raises(ValueError):
    mwq.parse_setting("sampling.num_steps")


@pytest.mark.slow
def test_mnist_workdir_quality_smoke(tmp_path, mnist_data_dir, monkeypatch):
  monkeypatch.setenv("TFDS_DATA_DIR", mnist_data_dir)
  w, out = str(tmp_path / "w"), str(tmp_path / "out")
  train.train_and_evaluate(config_base.load_config(CONFIG, TINY), w)
  argv = ["--workdir", w, "--out", out, "--num_samples", "8", "--num_reference", "40",
          "--num_dims", "12", "--classifier_steps", "3", "--classifier_channels", "4",
          "--classifier_features", "6", "--num_show", "4", "--sample_seed", "1",
          "--setting", "old=sampling.num_steps=2,sampling.step_lr=0.002", "--setting", "new="]
  results = mwq.main(argv)
  rows = results["rows"]
  assert list(rows) == ["data", "old", "new"]
  for row in rows.values():
    assert row["fid"] >= 0 and 0 <= row["on_fraction"] <= 1 and row["num_samples"] == 8
  assert (rows["old"]["T"], rows["old"]["step_lr"], rows["old"]["L"]) == (2, 0.002, 2)
  assert (rows["new"]["T"], rows["new"]["step_lr"]) == (30, 2 * 0.05 ** 2)
  assert "T=30" in rows["new"]["label"] and "c=2" in rows["new"]["label"]
  assert results["models"]["workdir"]["steps"] == 2
  for f in ("results.json", "samples.png", "table.md", "samples/old.npy"):
    assert os.path.getsize(os.path.join(out, f)) > 0
  with open(os.path.join(out, "results.json")) as f:
    assert json.load(f)["settings"] == {"old": ["sampling.num_steps=2",
                                                "sampling.step_lr=0.002"], "new": []}
  # A setting may change only evaluation and sampling fields (as --mode=sample).
  with pytest.raises(workdir_lib.WorkdirError):
    mwq.setting_configs(w, {"bad": ["model.context_size=3"]})
  with pytest.raises(SystemExit):
    mwq.parse_args(["--workdir", w, "--out", out, "--setting", "a=", "--setting", "a="])
