"""Runs that never lose work: fault injection against the training entry points.

Concurrent trainers, damaged checkpoints, SIGTERM and SIGINT, bad config values,
changed configs, missing checkpoints, unwritable outputs, repeated overrides.
"""

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time
import types

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from csm_jax import checkpoints
from csm_jax import config_base
from csm_jax import data as data_lib
from csm_jax import inference
from csm_jax import train
from csm_jax import workdir as workdir_lib
from tests.helpers import tiny_train_config

REPO = pathlib.Path(__file__).resolve().parents[1]


def _config(**kw):
  base = {"training.num_steps": 30, "training.checkpoint_every": 10,
          "training.log_every": 10, "training.eval_every": 0}
  base.update(kw)
  return tiny_train_config(**base)


def _params(workdir, step):
  return ocp.StandardCheckpointer().restore(
      pathlib.Path(workdir) / "checkpoints" / str(step) / "default")["params"]


def _assert_same(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_a_second_trainer_is_refused(tmp_path):
  with workdir_lib.lock(str(tmp_path)):
    with pytest.raises(workdir_lib.WorkdirError, match="in use by a training run .*pid"):
      train.train_and_evaluate(_config(), str(tmp_path))
  assert not (tmp_path / "checkpoints").exists()
  train.train_and_evaluate(_config(), str(tmp_path))  # the lock is free again
  assert (tmp_path / "checkpoints" / "30").exists()


def test_damaged_newest_checkpoint_falls_back_and_resumes_exactly(tmp_path, caplog, capfd):
  straight = tmp_path / "straight"   # checkpoints 20, 30, 40 (keep 3)
  train.train_and_evaluate(_config(**{"training.num_steps": 40}), str(straight))
  reasons = {"empty": "an empty step directory",           # a save that never started
             "truncated": "truncated or corrupt files",        # metadata cut short too
             "arrays": "truncated or corrupt files (ValueError: OUT_OF_RANGE"}  # data only
  for damage, reason in reasons.items():
    w = tmp_path / damage
    shutil.copytree(straight, w)
    shutil.rmtree(w / "checkpoints" / "40")
    newest = w / "checkpoints" / "30" / "default"
    if damage == "empty":
      for p in newest.parent.iterdir():
        subprocess.run(["rm", "-rf", str(p)], check=True)
    else:
      for p in newest.rglob("*"):
        if (p.is_file() and p.stat().st_size > 100
            and (damage == "truncated" or p.parent.name == "d")):
          with open(p, "r+b") as f:
            f.truncate(p.stat().st_size // 2)
    caplog.clear()
    with caplog.at_level("WARNING"):
      train.train_and_evaluate(_config(**{"training.num_steps": 40}), str(w))
    _assert_same(_params(w, 40), _params(straight, 40))
    moved = os.listdir(tmp_path / damage / "checkpoints.damaged")
    assert len(moved) == 1 and moved[0].startswith("30-")
    skipped = [r.getMessage() for r in caplog.records if "skipping damaged" in r.getMessage()]
    assert len(skipped) == 1 and str(w / "checkpoints" / "30") in skipped[0], skipped
    assert reason in skipped[0], skipped[0]
    # nothing else: no orbax warning about healthy checkpoints, no closed-loop tracebacks
    assert not any("Metadata file does not exist" in r.getMessage() and "/20/" in
                   r.getMessage() for r in caplog.records)
    assert "Event loop is closed" not in capfd.readouterr().err


def test_closed_event_loop_reports_are_dropped_and_others_kept():
  seen = []
  hook = checkpoints._drop_closed_loop_reports(seen.append)  # pylint: disable=protected-access
  for message in ("Event loop is closed", "something else"):
    hook(types.SimpleNamespace(exc_value=RuntimeError(message)))
  hook(types.SimpleNamespace(exc_value=ValueError("Event loop is closed")))
  assert [str(u.exc_value) for u in seen] == ["something else", "Event loop is closed"]
  checkpoints._install_quiet_hook()  # pylint: disable=protected-access  (by Checkpointer)
  installed = sys.unraisablehook
  checkpoints._install_quiet_hook()  # pylint: disable=protected-access
  assert sys.unraisablehook is installed and installed.csm_jax_quiet  # installed once


def test_checkpoint_of_another_model_is_a_config_mismatch(tmp_path):
  train.train_and_evaluate(_config(), str(tmp_path))
  other = _config(**{"model.hidden_sizes": (8,)})
  with pytest.raises(workdir_lib.WorkdirError, match="model.hidden_sizes"):
    train.train_and_evaluate(other, str(tmp_path))
  with pytest.raises(checkpoints.ConfigMismatchError, match="does not fit"):
    inference.restore(inference.build(other), str(tmp_path))


@pytest.mark.parametrize("field,value", [
    ("training.keep_checkpoints", 0), ("training.checkpoint_every", 0),
    ("eval.batch_size", 0), ("training.batch_size", 0), ("training.num_steps", 0),
    ("noise.sigma_min", -1.0), ("likelihood.num_points", 100)])
def test_bad_values_are_refused_up_front_with_the_field(tmp_path, field, value):
  with pytest.raises(config_base.ConfigError, match=field.replace(".", r"\.")):
    train.train_and_evaluate(_config(**{field: value}), str(tmp_path / "w"))
  assert not (tmp_path / "w").exists() or os.listdir(tmp_path / "w") == []


@pytest.mark.parametrize("field", ["model.head", "model.backbone", "loss.name", "data.dataset"])
def test_unknown_names_are_config_errors_naming_the_field(tmp_path, field):
  """A misspelled choice is a ConfigError (main.py prints it as one line), naming the
  field and the valid values, and no config record is written."""
  with pytest.raises(config_base.ConfigError, match=field.replace(".", r"\.") + ".*bogus"):
    train.train_and_evaluate(_config(**{field: "bogus"}), str(tmp_path / "w"))
  assert not (tmp_path / "w" / "config.json").exists()


def test_config_record_refuses_changes_unless_accepted(tmp_path):
  w = str(tmp_path)
  train.train_and_evaluate(_config(), w)
  record = open(tmp_path / "config.json").read()
  with pytest.raises(workdir_lib.WorkdirError, match=r"optim.learning_rate: 0.001 -> 0.003"):
    train.train_and_evaluate(_config(**{"optim.learning_rate": 3e-3}), w)
  assert open(tmp_path / "config.json").read() == record
  # a config that fails to build never replaces the record
  with pytest.raises(Exception):
    train.train_and_evaluate(_config(**{"model.head": "no_such_head",
                                        "training.num_steps": 40}), w)
  assert open(tmp_path / "config.json").read() == record
  # fields that do not change the model may change (a longer run)
  train.train_and_evaluate(_config(**{"training.num_steps": 40}), w)
  train.train_and_evaluate(_config(**{"training.num_steps": 50, "optim.learning_rate": 3e-3}),
                           w, allow_config_change=True)
  change = json.loads(open(tmp_path / "config_changes.jsonl").read().splitlines()[-1])
  assert change["changes"]["optim.learning_rate"] == [0.001, 0.003]
  assert config_base.load_workdir_config(w).optim.learning_rate == 3e-3


def test_eval_and_sample_use_the_record(tmp_path):
  w = str(tmp_path)
  train.train_and_evaluate(_config(**{"model.hidden_sizes": (8, 8)}), w)
  default = tiny_train_config()                      # the model fields differ from the record
  c = workdir_lib.eval_config(w, default, ["sampling.num_samples=4",
                                           "model.hidden_sizes=(8, 8)"])  # a repeat is fine
  assert c.model.hidden_sizes == (8, 8) and c.sampling.num_samples == 4
  with pytest.raises(workdir_lib.WorkdirError, match="model.hidden_sizes"):
    workdir_lib.eval_config(w, default, ["model.hidden_sizes=(16,)"])


def test_eval_without_checkpoint_is_one_line_and_creates_nothing(tmp_path):
  w = tmp_path / "never_trained"
  for run in (inference.evaluate_workdir, inference.sample_workdir):
    with pytest.raises(FileNotFoundError, match="no checkpoint .* train first"):
      run(_config(), str(w))
  assert not w.exists()
  (w / "checkpoints").mkdir(parents=True)   # a run stopped before its first save
  for run in (inference.evaluate_workdir, inference.sample_workdir):
    with pytest.raises(FileNotFoundError, match="no checkpoint .* train first"):
      run(_config(), str(w))
  assert os.listdir(w) == ["checkpoints"] and not os.listdir(w / "checkpoints")


def test_a_reader_leaves_a_running_trainers_unfinished_save_alone(tmp_path):
  """Eval/sample may run beside a trainer: they never clean up its temporary save."""
  c = _config()
  train.train_and_evaluate(c, str(tmp_path))
  unfinished = tmp_path / "checkpoints" / "40.orbax-checkpoint-tmp-1700000000000000"
  (unfinished / "default").mkdir(parents=True)
  (unfinished / "default" / "_METADATA").write_text("{}")
  params, step = inference.restore(inference.build(c), str(tmp_path))
  assert step == 30 and jax.tree.leaves(params)
  time.sleep(1.0)   # orbax cleans up in a thread of its own
  assert (unfinished / "default" / "_METADATA").exists()
  ckpt = checkpoints.Checkpointer(str(tmp_path / "checkpoints"))  # the trainer's does
  deadline = time.time() + 20
  while unfinished.exists() and time.time() < deadline:
    time.sleep(0.05)
  ckpt.close()
  assert not unfinished.exists()


def test_unwritable_samples_fail_before_sampling(tmp_path):
  w = str(tmp_path)
  train.train_and_evaluate(_config(), w)
  (tmp_path / "samples").write_text("a file where the samples directory should be")
  t0 = time.perf_counter()
  with pytest.raises(workdir_lib.WorkdirError, match="cannot write results"):
    inference.sample_workdir(_config(), w)
  assert time.perf_counter() - t0 < 5.0


def test_nan_before_the_first_checkpoint_says_none_was_written(tmp_path):
  """A poisoned example at step 2, before the first (step-10) checkpoint."""
  rng = np.random.default_rng(0)
  n, bad = 1024, 2
  c = _config(**{"data.dataset": "npz", "data.path": str(tmp_path / "data.npz")})
  poison = data_lib.batch_indices(n, 32, bad, c.seed)[0]
  assert bad == next(s for s in range(10) if poison in data_lib.batch_indices(n, 32, s, c.seed))
  x = rng.normal(size=(n, 4)).astype(np.float32)
  x[poison] = 3e38
  np.savez(tmp_path / "data.npz", train=x, test=rng.normal(size=(64, 4)).astype(np.float32))
  with pytest.raises(FloatingPointError, match=f"at step {bad} .*no checkpoint written") as e:
    train.train_and_evaluate(c, str(tmp_path / "w"))
  assert "None" not in str(e.value)
  assert not os.listdir(tmp_path / "w" / "checkpoints")


def test_ctrl_c_outside_the_training_steps_is_one_line():
  """Ctrl-C during start-up or compilation: one line, status 130, no traceback."""
  code = ("import sys\n"
          "from absl import app\n"
          "from csm_jax import main, train\n"
          "def stop(*args, **kwargs):\n"
          "  raise KeyboardInterrupt\n"
          "train.train_and_evaluate = stop\n"
          "sys.argv = ['main', '--config=configs/mnist_made.py', '--workdir=/nonexistent/w']\n"
          "app.run(main.main)\n")
  out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                       timeout=120)
  assert out.returncode == 130, out.stderr[-2000:]
  assert "Traceback" not in out.stderr and "KeyboardInterrupt" not in out.stderr, out.stderr
  assert "interrupted by Ctrl-C outside the training steps" in out.stderr
  assert "/nonexistent/w/checkpoints" in out.stderr
  message, status = workdir_lib.stop_report(KeyboardInterrupt(), "sample", "w")
  assert status == 130 and "--mode=sample stopped before writing" in message


def test_wall_clock_checkpoints(tmp_path):
  """training.checkpoint_every_secs saves between the step-count checkpoints (here every
  step, the interval being tiny); 0 turns it off."""
  for secs, expected in ((1e-9, ["3", "4", "5"]), (0.0, ["5"])):
    w = tmp_path / str(secs)
    c = _config(**{"training.num_steps": 5, "training.checkpoint_every_secs": secs})
    train.train_loop(train.setup(c), workdir=str(w))
    assert sorted(os.listdir(w / "checkpoints")) == expected   # keep_checkpoints: 3


def test_repeated_override_is_refused():
  argv = ["--config.model.hidden_sizes=(64,)", "--config.training.num_steps=3",
          "--config.model.hidden_sizes=64"]
  with pytest.raises(config_base.ConfigError, match="more than once"):
    config_base.command_line_overrides(argv)
  assert config_base.command_line_overrides(argv[:2]) == ["model.hidden_sizes=(64,)",
                                                          "training.num_steps=3"]


def test_restart_from_zero_does_not_duplicate_metrics(tmp_path):
  w = str(tmp_path)
  c = _config(**{"training.eval_every": 10, "training.num_steps": 5,
                 "training.log_every": 10})
  s = train.setup(c)
  for _ in range(2):   # no checkpoint is written before step 5: both runs start at 0
    train.train_loop(s, workdir=w, eval_fn=lambda p: {"e": 1.0})
    (tmp_path / "checkpoints" / "5").exists() and subprocess.run(
        ["rm", "-rf", str(tmp_path / "checkpoints")], check=True)
  rows = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  assert [r["step"] for r in rows if "e" in r] == [0, 5]


_MAIN = ["-m", "csm_jax.main", "--config=configs/mnist_made.py",
         "--config.model.hidden_sizes=(128,128)", "--config.model.context_size=4",
         "--config.training.batch_size=32", "--config.training.num_steps=300",
         "--config.training.checkpoint_every=100", "--config.training.log_every=20",
         "--config.training.eval_every=150", "--config.eval.batch_size=100",
         "--config.eval.num_batches=1"]


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_stop_signal_saves_the_step_and_resumes_exactly(tmp_path, mnist_data_dir, sig):
  env = dict(os.environ, TFDS_DATA_DIR=mnist_data_dir, PYTHONUNBUFFERED="1")
  w = tmp_path / "stopped"
  cmd = [sys.executable] + _MAIN + [f"--workdir={w}"]
  proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  first = w / "checkpoints" / "20"          # the first logged step is checkpointed
  deadline = time.time() + 240
  while not first.exists() and proc.poll() is None and time.time() < deadline:
    time.sleep(0.01)
  proc.send_signal(sig)
  out, _ = proc.communicate(timeout=120)
  assert proc.returncode == 128 + sig, out[-3000:]
  assert "run the same command again to resume" in out
  steps = sorted(int(s) for s in os.listdir(w / "checkpoints") if s.isdigit())
  assert steps[-1] not in (20, 100, 200, 300), steps   # the step at the signal was saved
  subprocess.run(cmd, cwd=REPO, env=env, check=True, capture_output=True)
  if sig == signal.SIGTERM:   # one uninterrupted reference run is enough for both
    straight = tmp_path / "straight"
    subprocess.run([sys.executable] + _MAIN + [f"--workdir={straight}"], cwd=REPO, env=env,
                   check=True, capture_output=True)
    _assert_same(_params(w, 300), _params(straight, 300))
  rows = [json.loads(l)["step"] for l in open(w / "metrics.jsonl") if '"loss"' in l]
  assert rows == list(range(20, 301, 20))
