"""Smoke run of the Table 2 experiment (VAEs with implicit encoders, AIS NLL)."""

import json
import math
import os

import pytest

from experiments import vae_table


@pytest.mark.slow
def test_vae_table_smoke(tmp_path, mnist_data_dir):
  argv = ["--out", str(tmp_path), "--latents", "2", "--methods", "elbo,csm", "--steps", "2",
          "--ais_examples", "2", "--ais_steps", "3", "--ais_chains", "2", "--ais_batch", "2",
          "--ais_check_examples", "1", "--ais_check_steps", "4", "--ais_check_chains", "2",
          "--num_samples", "2", "--eval_every", "-1", f"--config.data.data_dir={mnist_data_dir}",
          "--config.vae.hidden_sizes=8", "--config.vae.score_hidden=8",
          "--config.vae.context_size=2", "--config.vae.head_hidden=4",
          "--config.training.batch_size=8", "--config.eval.batch_size=8",
          "--config.eval.num_batches=1"]
  vae_table.main(argv)
  r = json.loads((tmp_path / "results.json").read_text())
  assert set(r["results"]["2"]) == {"elbo", "csm"}
  for row in r["results"]["2"].values():
    assert math.isfinite(row["nll"]) and row["nll"] > 0 and row["num_examples"] == 2
    assert row["steps"] == 2 and row["step_seconds"] > 0
  assert r["mode"] == "cpu_defaults" and r["protocol_differences"]
  assert math.isfinite(r["ais_check"]["2"]["gap"])
  md = (tmp_path / "table2.md").read_text()
  assert "| CSM |" in md and "| ELBO |" in md
  for name in ("vae_curves.png", "samples_z2.png"):
    assert os.path.getsize(tmp_path / name) > 0
  # a rerun skips training and reuses the cached AIS
  vae_table.main(argv)
  r2 = json.loads((tmp_path / "results.json").read_text())
  assert r2["results"]["2"]["csm"]["nll"] == r["results"]["2"]["csm"]["nll"]
