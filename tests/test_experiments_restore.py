"""Smoke run of the restoration benchmark's command line (real CLI, subprocess, MNIST):
tiny priors trained for a few steps, two tasks, two images; the rows, the paired
differences, the table and the pictures must all be written."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_restore_experiment_writes_every_row(tmp_path, mnist_data_dir):
  env = dict(os.environ, TFDS_DATA_DIR=mnist_data_dir, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_backend_optimization_level=0", PYTHONPATH=str(REPO))
  out = tmp_path / "out"
  cmd = [sys.executable, "-m", "experiments.restore", "--out", str(out),
         "--tasks", "gaussian_0.6,inpaint_bottom", "--priors", "csm,mle_gauss",
         "--num_images", "2", "--steps", "3", "--classifier_steps", "2", "--num_show", "2",
         "--csm.model.hidden_sizes=(16,)", "--mle_gauss.model.hidden_sizes=(16,)",
         "--config.restore.num_levels=2", "--config.restore.steps_per_level=1",
         "--mle_gauss.restore.gibbs_sweeps=1"]
  p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
  assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
  with open(out / "results.json") as f:
    res = json.load(f)
  assert res["models"]["mle_gauss"]["config"]["restore"]["method"] == "gibbs"
  assert res["models"]["csm"]["config"]["restore"]["method"] == "annealed"
  for task in ("gaussian_0.6", "inpaint_bottom"):
    rows = res["tasks"][task]["rows"]
    for name in ("AR-CSM (per-dim), posterior mean", "MLE Gaussian MADE, posterior mean"):
      assert rows[name]["kind"] == "posterior" and "psnr_minus_best_classical" in rows[name]
    assert res["tasks"][task]["best_classical"] in rows
    assert (out / f"{task}.png").stat().st_size > 0
  assert "AR-CSM Tweedie autoregressive" in res["tasks"]["gaussian_0.6"]["rows"]
  assert "gaussian_0.6" in (out / "table.md").read_text()
