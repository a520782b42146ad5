"""python -m csm_jax.main as a newcomer meets it: one-line errors for a bad config, a short
eval summary, 'nothing to do' on a finished run, no TPU-probe line, the training sample
grid, and --mode=export with its loader (fast: tiny models, a few steps)."""

import json
import logging
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from csm_jax import export, inference, train
from csm_jax import cli as cli_lib
from tests.conftest import REPO
from tests.helpers import tiny_train_config

ENV = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")


def _main(*args, cwd):
  return subprocess.run([sys.executable, "-m", "csm_jax.main", *args], cwd=cwd, env=ENV,
                        capture_output=True, text=True, timeout=120)


def _lines(text):
  return [line for line in text.splitlines() if line.strip()]


def test_misspelled_field_is_one_line_and_creates_nothing(tmp_path):
  w = tmp_path / "W"
  p = _main(f"--config={REPO}/configs/mnist_made.py", f"--workdir={w}",
            "--config.training.num_stepz=3", cwd=tmp_path)
  assert p.returncode == 1
  out = _lines(p.stdout + p.stderr)
  assert len(out) == 1, out
  assert "training.num_stepz" in out[0] and "Did you mean 'num_steps'" in out[0]
  assert not w.exists()


@pytest.mark.parametrize("kind", ["missing", "directory", "syntax"])
def test_bad_config_file_is_one_line_naming_it(tmp_path, kind):
  path = {"missing": tmp_path / "nope.py", "directory": tmp_path,
          "syntax": tmp_path / "bad.py"}[kind]
  if kind == "syntax":
    path.write_text("def get_config(:\n")
  w = tmp_path / "W"
  p = _main(f"--config={path}", f"--workdir={w}", cwd=tmp_path)
  assert p.returncode == 1
  out = _lines(p.stdout + p.stderr)
  assert len(out) == 1, out
  assert str(path) in out[0]
  assert {"missing": "no such file", "directory": "Is a directory",
          "syntax": "syntax error at line 1"}[kind] in out[0]
  assert not w.exists()


def test_tpu_probe_line_is_filtered():
  f = cli_lib.QuietLibraries()
  rec = lambda msg, level=logging.INFO: logging.LogRecord(
      "jax._src.xla_bridge", level, "xla_bridge.py", 1, msg, (), None)
  assert not f.filter(rec("Unable to initialize backend 'tpu': INTERNAL: Failed to open "
                          "libtpu.so"))
  assert f.filter(rec("JAX 0.x, backend cpu"))
  assert f.filter(rec("Unable to initialize backend 'tpu': ...", logging.WARNING))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """A finished 4-step run of a tiny AR-CSM: (config, workdir)."""
  w = str(tmp_path_factory.mktemp("run") / "w")
  config = tiny_train_config(**{"training.num_steps": 4, "training.log_every": 2,
                                "training.eval_every": 4, "training.checkpoint_every": 4,
                                "likelihood.num_examples": 8, "likelihood.num_points": 65})
  train.train_and_evaluate(config, w)
  return config, w


@pytest.mark.slow
def test_finished_run_says_nothing_to_do(run):
  config, w = run
  lines = []
  state, info = train.train_loop(train.setup(config), workdir=w, log=lines.append)
  assert "already at step 4 of 4; nothing to do" in lines
  assert not any("resumed" in line for line in lines)
  assert info["steps_run"] == 0 and int(state.step) == 4


@pytest.mark.slow
def test_eval_logs_a_summary_and_keeps_the_dict_in_the_file(run):
  config, w = run
  lines = []
  result = inference.evaluate_workdir(config, w, log=lines.append)
  summary = [line for line in lines if line.startswith("step 4: test loss")]
  assert len(summary) == 1 and len(summary[0]) < 400, lines
  assert "test NLL" in summary[0] and "bits/dim" in summary[0] and "±" in summary[0]
  assert "eval_00000004.json" in summary[0]
  assert not any("{" in line for line in lines)           # no JSON dump in the log
  saved = json.load(open(os.path.join(w, "eval_00000004.json")))
  assert saved["likelihood"]["bpd"] == pytest.approx(result["likelihood"]["bpd"])
  assert "outside_per_dim" in saved["likelihood"]


@pytest.mark.slow
def test_export_round_trip_and_size(run, tmp_path):
  config, w = run
  lines = []
  out = export.export_workdir(config, w, str(tmp_path / "exp"), log=lines.append)
  assert sorted(os.listdir(out)) == ["config.json", "params.npz"]
  assert any("MB" in line and "exported step 4" in line for line in lines), lines
  inf = inference.build(config)
  want, step = inference.restore(inf, w)
  model, got, loaded_config = export.load(out)
  assert model.dim == inf.model.dim and loaded_config.model.to_dict() == config.model.to_dict()
  assert jax.tree.structure(got) == jax.tree.structure(want)
  assert all(np.array_equal(a, np.asarray(b))
             for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)))
  again, step2 = inference.restore(inf, out)              # an export reads like a workdir
  assert step2 == step == 4
  assert all(np.array_equal(np.asarray(a), np.asarray(b))
             for a, b in zip(jax.tree.leaves(again), jax.tree.leaves(want)))
  with np.load(os.path.join(out, "params.npz"), allow_pickle=False) as z:   # no pickle
    assert "__meta__" in z.files
  ckpt = os.path.join(w, "checkpoints", "4")
  ckpt_bytes = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(ckpt)
                   for f in fs)
  assert os.path.getsize(os.path.join(out, "params.npz")) < ckpt_bytes / 2
  # a config that builds another model is refused, naming the arrays
  cfg = json.load(open(os.path.join(out, "config.json")))
  cfg["model"]["hidden_sizes"] = [8, 8]
  json.dump(cfg, open(os.path.join(out, "config.json"), "w"))
  with pytest.raises(ValueError, match="does not match the model"):
    export.load(out)


@pytest.mark.slow
def test_training_writes_a_sample_grid_for_images(tmp_path):
  rng = np.random.default_rng(0)
  np.savez(tmp_path / "img.npz", train=rng.integers(0, 256, (64, 4, 4, 1), dtype=np.uint8),
           test=rng.integers(0, 256, (32, 4, 4, 1), dtype=np.uint8))
  config = tiny_train_config(**{"data.dataset": "npz", "data.path": str(tmp_path / "img.npz"),
                                "training.num_steps": 2, "training.log_every": 2,
                                "training.eval_every": 2, "training.checkpoint_every": 2,
                                "training.batch_size": 16, "eval.batch_size": 16,
                                "eval.num_batches": 1, "training.eval_samples": 4,
                                "sampling.num_steps": 2})
  w = tmp_path / "w"
  train.train_and_evaluate(config, str(w))
  png = w / "samples" / "train_00000002.png"
  assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert sorted(os.listdir(w / "samples")) == ["train_00000002.png"]  # none at step 0
  if (w / "tensorboard").exists():
    events = b"".join(p.read_bytes() for p in (w / "tensorboard").iterdir())
    assert b"samples/train" in events
