"""experiments.restore_levels: the denoise-and-project loop's first level per task and
per loop on held-out images (flags refused in one line, the table's choice, the picture,
and a smoke run of the real command line on a tiny smoothed joint)."""

import json
import os
import pathlib
import subprocess
import sys

import matplotlib.image as mpimg
import pytest

from csm_jax import plotting
from experiments import restore_levels

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("starts, msg", [("0.1,x", "comma-separated numbers"),
                                         ("0.1,0", "levels must be > 0"), ("", "> 0")])
def test_bad_starts_are_refused_in_one_line(starts, msg, capsys):
  with pytest.raises(SystemExit):
    restore_levels.parse_args(["--out", "o", "--joint_workdir", "w", "--starts", starts])
  err = capsys.readouterr().err.strip().splitlines()[-1]
  assert "--starts" in err and msg in err


def test_table_marks_each_loops_best_level():
  res = {"starts": [0.05, 0.1, 0.2], "tasks": {"sp_0.1": {
      "AR-CSM loop": {"psnr_mean": [26.7, 26.8, 26.6]},
      "NLM loop": {"psnr_mean": [26.2, 26.7, 28.8]}}}}
  lines = restore_levels.table(res).splitlines()
  assert lines[0] == "| task | loop | 0.05 | 0.1 | 0.2 | chosen |"
  assert lines[2] == "| sp_0.1 | AR-CSM loop | 26.70 | **26.80** | 26.60 | 0.1 |"
  assert lines[3] == "| sp_0.1 | NLM loop | 26.20 | 26.70 | **28.80** | 0.2 |"


def test_level_curves_picture(tmp_path):
  path = tmp_path / "levels.png"
  plotting.save_level_curves(str(path), [0.05, 0.1, 0.2],
                             {"a": {"x": [1.0, 2.0, 1.5], "y": [0.5, 0.4, 0.3]},
                              "b": {"x": [1.0, 1.0, 1.0]}}, title="t")
  img = mpimg.imread(str(path))
  assert img.ndim == 3 and img.shape[0] > 50 and img.shape[1] > 100


def _train(workdir, config, env):
  cmd = [sys.executable, "-m", "csm_jax.main", f"--config={config}", f"--workdir={workdir}",
         "--config.model.hidden_sizes=(16,)", "--config.training.batch_size=8",
         "--config.training.num_steps=3", "--config.training.eval_every=0",
         "--config.training.checkpoint_every=3", "--config.optim.warmup_steps=1"]
  p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]


@pytest.mark.slow
def test_the_command_writes_every_loop_and_level(tmp_path, mnist_data_dir):
  env = dict(os.environ, TFDS_DATA_DIR=mnist_data_dir, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_backend_optimization_level=0", PYTHONPATH=str(REPO))
  joint = tmp_path / "joint"
  _train(joint, "configs/mnist_denoise_joint.py", env)
  out = tmp_path / "out"
  cmd = [sys.executable, "-m", "experiments.restore_levels", "--out", str(out),
         "--joint_workdir", str(joint), "--tasks", "sp_0.1,superres_2",
         "--starts", "0.05,0.1", "--num_images", "2", "--image_offset", "7",
         "--config.restore.project_levels=2"]
  p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
  assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
  res = json.loads((out / "results.json").read_text())
  assert res["images"] == [7, 9] and res["starts"] == [0.05, 0.1]
  assert res["project_levels"] == 2
  for task in ("sp_0.1", "superres_2"):
    for loop in restore_levels.LOOPS:
      e = res["tasks"][task][loop]
      assert len(e["psnr_per_image"]) == 2 and all(len(v) == 2 for v in e["psnr_per_image"])
      means = [sum(v) / 2 for v in e["psnr_per_image"]]
      assert means == pytest.approx(e["psnr_mean"], abs=1e-3)
      assert e["chosen"] == res["starts"][means.index(max(means))]
  assert (out / "levels.png").stat().st_size > 1000
  assert "| superres_2 | NLM loop |" in (out / "table.md").read_text()
  # a model without a denoiser of the whole image is refused in one line
  perdim = tmp_path / "perdim"
  _train(perdim, "configs/mnist_denoise.py:csm", env)
  p = subprocess.run(cmd[:6] + [str(perdim)] + cmd[7:], cwd=REPO, env=env,
                     capture_output=True, text=True, timeout=600)
  assert p.returncode != 0
  last = p.stderr.strip().splitlines()[-1]
  assert "not a smoothed-joint model" in last and str(perdim) in last
