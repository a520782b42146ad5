"""Smoke run of the restoration benchmark's command line (real CLI, subprocess, MNIST):
tiny priors trained for a few steps, two tasks, two images; the rows, the paired
differences, the table and the pictures must all be written."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_restore_experiment_writes_every_row(tmp_path, mnist_data_dir):
  env = dict(os.environ, TFDS_DATA_DIR=mnist_data_dir, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_backend_optimization_level=0", PYTHONPATH=str(REPO))
  out = tmp_path / "out"
  cmd = [sys.executable, "-m", "experiments.restore", "--out", str(out),
         "--tasks", "gaussian_0.6,inpaint_bottom", "--priors", "csm,joint,mle_gauss",
         "--num_images", "2", "--image_offset", "3", "--steps", "3", "--classifier_steps", "2",
         "--num_show", "2", "--csm.model.hidden_sizes=(16,)", "--mle_gauss.model.hidden_sizes=(16,)",
         "--joint.model.hidden_sizes=(16,)", "--joint.restore.project_start=0.05",
         "--config.restore.num_levels=2", "--config.restore.steps_per_level=1",
         "--mle_gauss.restore.gibbs_sweeps=1", "--filter_mass_sigma", "auto",
         "--mass_sigma_images", "2"]
  p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
  assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
  with open(out / "results.json") as f:
    res = json.load(f)
  assert res["models"]["mle_gauss"]["config"]["restore"]["method"] == "gibbs"
  assert res["args"]["image_offset"] == 3   # test images 3 and 4
  assert res["models"]["csm"]["config"]["restore"]["method"] == "annealed"
  for name in ("csm", "mle_gauss"):
    assert 0 < res["models"][name]["lattice_bits_per_dim"] < 16, res["models"][name]
  for task in ("gaussian_0.6", "inpaint_bottom"):
    rows = res["tasks"][task]["rows"]
    for name in ("AR-CSM (per-dim), posterior mean", "MLE Gaussian MADE, posterior mean"):
      assert rows[name]["kind"] == "posterior" and "psnr_minus_best_classical" in rows[name]
    assert res["tasks"][task]["best_classical"] in rows
    assert (out / f"{task}.png").stat().st_size > 0
  assert "AR-CSM Tweedie autoregressive" in res["tasks"]["gaussian_0.6"]["rows"]
  # the smoothed joint's Tweedie posterior mean: on Gaussian noise only
  tw = "AR-CSM (smoothed joint), Tweedie posterior mean"
  assert res["tasks"]["gaussian_0.6"]["rows"][tw]["settings"]["method"] == "tweedie"
  assert tw not in res["tasks"]["inpaint_bottom"]["rows"]
  # and its annealed posterior from the BM3D estimate, from GAUSS_WARM_START
  g_rows = res["tasks"]["gaussian_0.6"]["rows"]
  gw = g_rows["AR-CSM (smoothed joint), posterior mean, annealed from bm3d"]
  assert gw["kind"] == "posterior" and gw["settings"]["init"] == "classical"
  np.testing.assert_allclose(gw["settings"]["sigmas"][::4], [0.02 * 255 / 256, 0.01], rtol=1e-6)
  assert gw["seconds_per_image"] > g_rows["bm3d"]["seconds_per_image"]   # BM3D's included
  assert "AR-CSM (smoothed joint), posterior sample, annealed from bm3d" in g_rows
  assert not any("annealed from bm3d" in k for k in res["tasks"]["inpaint_bottom"]["rows"])
  # denoise-and-project: the smoothed joint's row and its classical control, not on
  # Gaussian noise
  dp = "AR-CSM (smoothed joint), denoise-and-project from biharmonic"
  bottom_rows = res["tasks"]["inpaint_bottom"]["rows"]
  assert bottom_rows[dp]["kind"] == "point" and "psnr_minus_best_classical" in bottom_rows[dp]
  assert bottom_rows[dp]["settings"]["method"] == "project"
  assert bottom_rows["nl_means denoise-and-project"]["kind"] == "classical"
  # the control runs the loop the smoothed joint runs: its levels, not the base config's
  assert bottom_rows[dp]["settings"]["project_start"] == 0.05
  assert bottom_rows["nl_means denoise-and-project"]["settings"] == {
      "project_start": 0.05, "project_end": 0.02, "project_levels": 5,
      "sp_start": "adaptive_median"}
  assert not any("denoise-and-project" in k for k in res["tasks"]["gaussian_0.6"]["rows"])
  # the annealed posterior from that estimate: 5 levels from PIN_WARM_START (0.01 in pixel
  # units, 0.01 * 255 / 256 in the dequantized model's, below its last level 0.01: all at
  # the last level)
  warm = bottom_rows["AR-CSM (smoothed joint), posterior mean, annealed from denoise-and-project"]
  assert warm["kind"] == "posterior" and warm["settings"]["init"] == "project"
  assert warm["settings"]["chains"] == 4 and len(warm["settings"]["sigmas"]) == 5   # default
  assert warm["start_level"] == 0.01
  # it starts from the estimate of the row before it, and its time includes that one's
  assert warm["seconds_per_image"] > bottom_rows[dp]["seconds_per_image"]
  np.testing.assert_allclose(warm["settings"]["sigmas"], [0.01] * 5, rtol=1e-6)
  assert "AR-CSM (smoothed joint), posterior sample, annealed from denoise-and-project" in bottom_rows
  assert "gaussian_0.6" in (out / "table.md").read_text()
  # the sequential filter's rows: on the default --filter_tasks (the bottom half), not
  # on Gaussian noise
  bottom = res["tasks"]["inpaint_bottom"]["rows"]
  for name in ("AR-CSM (per-dim), filter mean", "MLE Gaussian MADE, filter mean"):
    assert bottom[name]["settings"]["method"] == "filter"
    assert bottom[name]["settings"]["chains"] == 8
  assert "AR-CSM (per-dim), filter mean" not in res["tasks"]["gaussian_0.6"]["rows"]
  # --filter_mass_sigma auto: the score head's level chosen on training images among
  # its noise levels (or none), and used by its filter rows; the MLE prior has one level
  ms = res["models"]["csm"]["filter_mass_sigma"]
  table = ms["train_bits_per_dim"]
  assert "none" in table and len(table) == 10, table     # sigma_min alone + 9 levels
  best = min(table, key=table.get)
  assert ms["chosen"] == (None if best == "none" else float(best))
  assert bottom["AR-CSM (per-dim), filter mean"]["settings"]["filter_mass_sigma"] == ms["chosen"]
  assert "filter_mass_sigma" not in res["models"]["mle_gauss"]
  assert bottom["MLE Gaussian MADE, filter mean"]["settings"]["filter_mass_sigma"] is None


def test_restore_experiment_refuses_a_bad_filter_mass_sigma(tmp_path):
  """A bad --filter_mass_sigma is one line naming the flag, before any data or training."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
  for bad in ("-0.1", "often"):
    p = subprocess.run([sys.executable, "-m", "experiments.restore", "--out",
                        str(tmp_path / "out"), "--filter_mass_sigma", bad], cwd=REPO,
                       env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode != 0
    assert "--filter_mass_sigma must be 'none', 'auto' or a level > 0" in p.stderr, p.stderr
    assert "Traceback" not in p.stderr


def test_restore_experiment_refuses_an_image_range_outside_the_test_set(tmp_path,
                                                                      mnist_data_dir):
  """--image_offset: negative, or past the last test image with --num_images, is one
  line naming the flag and the range, before any training."""
  env = dict(os.environ, TFDS_DATA_DIR=mnist_data_dir, JAX_PLATFORMS="cpu",
             PYTHONPATH=str(REPO))
  for offset, msg in (("-1", "--image_offset must be >= 0, got -1"),
                      ("9950", "--image_offset must be in [0, 9900] for --num_images 100")):
    p = subprocess.run([sys.executable, "-m", "experiments.restore", "--out",
                        str(tmp_path / "out"), "--image_offset", offset, "--num_images", "100"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode != 0
    assert msg in p.stderr.strip().splitlines()[-1], p.stderr[-2000:]
    assert "Traceback" not in p.stderr
    assert not (tmp_path / "out" / "models").exists()   # nothing trained


def test_restore_experiment_refuses_a_skipped_task_not_in_tasks(tmp_path, mnist_data_dir):
  """--skip_tasks names tasks of --tasks only: another is one line, before any training."""
  env = dict(os.environ, TFDS_DATA_DIR=mnist_data_dir, JAX_PLATFORMS="cpu",
             PYTHONPATH=str(REPO))
  p = subprocess.run([sys.executable, "-m", "experiments.restore", "--out",
                      str(tmp_path / "out"), "--tasks", "sp_0.1,sp_0.3", "--skip_tasks",
                      "sp_0.3,gaussian_0.3"], cwd=REPO, env=env, capture_output=True,
                     text=True, timeout=300)
  assert p.returncode != 0
  assert ("--skip_tasks: gaussian_0.3 not in --tasks (sp_0.1, sp_0.3)"
          in p.stderr.strip().splitlines()[-1]), p.stderr[-2000:]
  assert "Traceback" not in p.stderr
  assert not (tmp_path / "out" / "models").exists()   # nothing trained


def test_restore_experiment_refuses_a_bad_warm_start_level(tmp_path):
  """A --warm_start_level <= 0 is one line naming the flag, before any data or training."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
  p = subprocess.run([sys.executable, "-m", "experiments.restore", "--out",
                      str(tmp_path / "out"), "--warm_start_level", "0"], cwd=REPO,
                     env=env, capture_output=True, text=True, timeout=300)
  assert p.returncode != 0
  assert "--warm_start_level must be > 0, got 0.0" in p.stderr, p.stderr
  assert "Traceback" not in p.stderr


@pytest.mark.slow
def test_restore_experiment_mnist_pixelcnnpp_priors(tmp_path, mnist_data_dir):
  """--priors pcnn,pcnn_mle: the PixelCNN++ AR-CSM and its MLE baseline (a probability
  mass: filter rows only), each in its own pixel space ([-1, 1]; the MLE one not
  dequantized)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  env = dict(os.environ, TFDS_DATA_DIR=mnist_data_dir, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_backend_optimization_level=0", PYTHONPATH=str(REPO))
  out = tmp_path / "out"
  cmd = [sys.executable, "-m", "experiments.restore", "--out", str(out),
         "--tasks", "inpaint_bottom", "--priors", "pcnn,pcnn_mle", "--num_images", "2",
         "--steps", "2", "--classifier_steps", "2", "--num_show", "2", "--filter_chains", "2",
         "--pcnn.model.nr_filters=4", "--pcnn_mle.model.nr_filters=4",
         "--config.restore.num_levels=2", "--config.restore.steps_per_level=1",
         "--filter_mass_sigma", "none"]
  p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
  assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
  with open(out / "results.json") as f:
    res = json.load(f)
  assert res["models"]["pcnn_mle"]["config"]["model"]["head"] == "discretized_logistic"
  assert res["models"]["pcnn_mle"]["config"]["data"]["dequantize"] is False
  for name in ("pcnn", "pcnn_mle"):   # a discrete NLL of normalized probabilities: > 0
    bpd = res["models"][name]["lattice_bits_per_dim"]
    assert np.isfinite(bpd) and bpd > 0, (name, bpd)
  rows = res["tasks"]["inpaint_bottom"]["rows"]
  assert "AR-CSM PixelCNN++, posterior mean" in rows
  assert not any(k.startswith("MLE PixelCNN++, posterior") for k in rows)
  for name in ("AR-CSM PixelCNN++, filter mean", "MLE PixelCNN++, filter mean"):
    assert rows[name]["settings"]["method"] == "filter", name
    assert np.all(np.isfinite(rows[name]["psnr"])) and "psnr_minus_best_classical" in rows[name]
  assert (out / "inpaint_bottom.png").stat().st_size > 0


@pytest.mark.slow
def test_restore_experiment_pixelcnnpp_smoothed_joint(tmp_path, mnist_data_dir):
  """--priors pcnn_joint: the noise-conditional PixelCNN++ gets the smoothed joint's rows
  (Tweedie on Gaussian noise, denoise-and-project and the posterior from it on
  salt-and-pepper); --annealed 0 drops the annealed posterior from the observation."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  env = dict(os.environ, TFDS_DATA_DIR=mnist_data_dir, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_backend_optimization_level=0", PYTHONPATH=str(REPO))
  out = tmp_path / "out"
  cmd = [sys.executable, "-m", "experiments.restore", "--out", str(out),
         "--tasks", "gaussian_0.3,inpaint_bottom,sp_0.1", "--skip_tasks", "inpaint_bottom",
         "--priors", "pcnn_joint", "--num_images", "2",
         "--steps", "2", "--classifier_steps", "2", "--num_show", "2", "--earlier", "0",
         "--filter_tasks", "none", "--annealed", "0", "--warm_chains", "1",
         "--pcnn_joint.model.nr_filters=4", "--config.restore.num_levels=2",
         "--config.restore.steps_per_level=1", "--config.restore.project_levels=2"]
  p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
  assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
  with open(out / "results.json") as f:
    res = json.load(f)
  cfg = res["models"]["pcnn_joint"]["config"]
  assert cfg["model"]["backbone"] == "pixelcnnpp" and cfg["noise"]["mode"] == "joint"
  assert cfg["model"]["context_sigma_embedding"] > 0 and cfg["data"]["scale"] == "unit"
  assert set(res["tasks"]) == {"gaussian_0.3", "sp_0.1"}       # --skip_tasks
  label = "AR-CSM PixelCNN++ (smoothed joint)"
  want = {"gaussian_0.3": (f"{label}, Tweedie posterior mean",
                           f"{label}, posterior mean, annealed from bm3d"),
          "sp_0.1": (f"{label}, denoise-and-project from adaptive_median",
                     f"{label}, posterior mean, annealed from denoise-and-project")}
  for task, names in want.items():
    rows = res["tasks"][task]["rows"]
    assert f"{label}, posterior mean" not in rows, task     # --annealed 0
    for name in names:
      assert np.all(np.isfinite(rows[name]["psnr"])), (task, name)
      assert "psnr_minus_best_classical" in rows[name], (task, name)


@pytest.mark.slow
def test_restore_experiment_cifar10_pixelcnnpp(tmp_path):
  """--dataset cifar10: a PixelCNN++ AR-CSM prior on salt-and-pepper (paper Fig. 5), read
  from npz files under $CSM_DATA_DIR (random 8-bit images here), no classifier."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  data = tmp_path / "data"
  data.mkdir()
  for name, n in (("cifar10_train_first4000.npz", 16), ("cifar10_test_first1000.npz", 4)):
    np.savez(data / name, x=rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
             y=rng.integers(0, 10, (n,), dtype=np.uint8))
  env = dict(os.environ, CSM_DATA_DIR=str(data), JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_backend_optimization_level=0", PYTHONPATH=str(REPO))
  out = tmp_path / "out"
  cmd = [sys.executable, "-m", "experiments.restore", "--out", str(out), "--dataset",
         "cifar10", "--num_images", "2", "--steps", "2", "--num_show", "2",
         "--csm.model.nr_filters=4", "--config.restore.num_levels=2",
         "--config.restore.steps_per_level=1", "--sp_start_sigma", "0.02"]
  p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
  assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
  with open(out / "results.json") as f:
    res = json.load(f)
  assert res["models"]["csm"]["config"]["model"]["backbone"] == "pixelcnnpp"
  rows = res["tasks"]["sp_0.1"]["rows"]
  assert res["tasks"]["sp_0.1"]["best_classical"] in ("median3x3", "adaptive_median",
                                                     "decision_median")
  assert "decision_median" in rows
  post = rows["AR-CSM PixelCNN++ (per-dim), posterior mean"]
  assert post["accuracy"] is None and "psnr_minus_best_classical" in post
  assert np.isfinite(post["psnr"][0])
  assert "AR-CSM Langevin from corrupted" in rows
  filt = rows["AR-CSM PixelCNN++ (per-dim), filter mean"]     # the default --filter_tasks
  assert filt["settings"]["method"] == "filter" and filt["settings"]["chains"] == 4
  assert np.isfinite(filt["psnr"][0])
  assert (out / "sp_0.1.png").stat().st_size > 0
  # where each row's error lies: the input errs on the corrupted pixels only; the sets'
  # sizes cover the image; the table shows the split
  split = rows["corrupted"]["sse_split"]
  assert split["kept_extreme"][0] == 0 and split["pinned"][0] < 1e-9 < split["corrupted"][0]
  assert abs(sum(split["pixels"].values()) - 32 * 32 * 3) < 1e-9
  assert all("sse_split" in r for r in rows.values())
  assert "| sp_0.1 | (pixels per image) |" in (out / "table.md").read_text()
  # a prior PixelCNN++ cannot be is refused in one line
  bad = subprocess.run(cmd[:-2] + ["--priors", "joint"], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=300)
  assert bad.returncode != 0
  assert "joint not available for --dataset cifar10" in bad.stderr.strip().splitlines()[-1]
  # OUT/models/csm is a work directory with its config record: --csm_workdir reuses it
  # without training, and a directory that is not one is a line naming it.
  assert (out / "models" / "csm" / "config.json").is_file()
  reuse = cmd[:4] + [str(tmp_path / "out2")] + cmd[5:] + [
      "--csm_workdir", str(out / "models" / "csm"), "--earlier", "0", "--filter_tasks",
      "none", "--config.restore.sp_tau=0.05"]
  p = subprocess.run(reuse, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
  assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
  with open(tmp_path / "out2" / "results.json") as f:
    again = json.load(f)
  assert again["models"]["csm"]["trained"] is False
  assert again["models"]["csm"]["steps"] == res["models"]["csm"]["steps"]
  mean = "AR-CSM PixelCNN++ (per-dim), posterior mean"   # restore.sp_tau reaches the likelihood
  assert abs(post["sp_window"] - 1 / (255 * np.sqrt(2 * np.pi))) < 1e-9
  assert again["tasks"]["sp_0.1"]["rows"][mean]["sp_window"] == 0.05
  empty = tmp_path / "empty"
  empty.mkdir()
  bad = subprocess.run(reuse[:-7] + ["--csm_workdir", str(empty)], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=300)
  assert bad.returncode != 0 and "Traceback" not in bad.stderr, bad.stderr[-2000:]
  last = bad.stderr.strip().splitlines()[-1]
  assert str(empty) in last and "config.json not found" in last, last


def test_restore_init_by_flag_reaches_the_sampler_rows_only():
  """--config.restore.init=classical starts the priors' sampler rows from the classical
  restoration; the point estimates and the filter take no start, so their copies of the
  config keep the observation's own (otherwise their Settings would refuse the run)."""
  from csm_jax import config_base   # pylint: disable=import-outside-toplevel
  from csm_jax.restore import posterior   # pylint: disable=import-outside-toplevel
  from experiments import restore as experiment   # pylint: disable=import-outside-toplevel
  cfg = config_base.default_config()
  cfg.restore.init = "classical"
  for method in ("project", "tweedie", "filter", "smc"):
    assert experiment.method_alone(cfg, method).restore.init == "observation"
  assert experiment.method_alone(cfg, "annealed").restore.init == "classical"
  warm = experiment.warm_config(cfg, 1.0, chains=4)
  assert warm.restore.init == "project" and warm.restore.method == "annealed"
  gw = experiment.warm_config(cfg, 0.5, 4, start_level=0.05, init="classical")
  assert gw.restore.init == "classical" and gw.restore.chains == 4
  s_min = posterior.settings_from_config(cfg).sigma_min
  np.testing.assert_allclose(gw.restore.sigmas, np.geomspace(0.1, s_min, 5), rtol=1e-6)
  # a first level at or below the last one: every level is the last one
  low = experiment.warm_config(cfg, 1.0, 4, start_level=0.5 * s_min)
  np.testing.assert_allclose(low.restore.sigmas, [s_min] * 5, rtol=1e-6)
  assert cfg.restore.init == "classical" and cfg.restore.method == "annealed"  # a copy
