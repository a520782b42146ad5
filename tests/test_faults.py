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


@pytest.mark.slow   # a training run
def test_a_second_trainer_is_refused(tmp_path):
  with workdir_lib.lock(str(tmp_path)):
    with pytest.raises(workdir_lib.WorkdirError, match="in use by a training run .*pid"):
      train.train_and_evaluate(_config(), str(tmp_path))
  assert not (tmp_path / "checkpoints").exists()
  train.train_and_evaluate(_config(), str(tmp_path))  # the lock is free again
  assert (tmp_path / "checkpoints" / "30").exists()


@pytest.mark.slow
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


@pytest.mark.slow
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
    ("noise.sigma_min", -1.0), ("likelihood.num_points", 100),
    ("optim.b2", 2.0), ("optim.b1", 1.0), ("optim.weight_decay", -100.0),
    ("likelihood.num_examples", -5), ("data.logit_lambda", 0.5),
    ("sampling.chunk_dims", -3), ("model.dropout_rate", 1.0), ("loss.dsm_sigma", 0.0),
    ("optim.learning_rate", float("nan")), ("training.num_steps", True)])
def test_bad_values_are_refused_up_front_with_the_field(tmp_path, field, value):
  with pytest.raises(config_base.ConfigError, match=field.replace(".", r"\.")):
    train.train_and_evaluate(_config(**{field: value}), str(tmp_path / "w"))
  assert not (tmp_path / "w").exists() or os.listdir(tmp_path / "w") == []


@pytest.mark.parametrize("field", ["model.head", "model.backbone", "loss.name", "data.dataset",
                                   "noise.mode"])
def test_unknown_names_are_config_errors_naming_the_field(tmp_path, field):
  """A misspelled choice is a ConfigError (main.py prints it as one line), naming the
  field and the valid values, and no config record is written."""
  with pytest.raises(config_base.ConfigError, match=field.replace(".", r"\.") + ".*bogus"):
    train.train_and_evaluate(_config(**{field: "bogus"}), str(tmp_path / "w"))
  assert not (tmp_path / "w" / "config.json").exists()


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_unwritable_samples_fail_before_sampling(tmp_path):
  w = str(tmp_path)
  train.train_and_evaluate(_config(), w)
  (tmp_path / "samples").write_text("a file where the samples directory should be")
  t0 = time.perf_counter()
  with pytest.raises(workdir_lib.WorkdirError, match="cannot write results"):
    inference.sample_workdir(_config(), w)
  assert time.perf_counter() - t0 < 5.0


@pytest.mark.slow   # a training run
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


@pytest.mark.slow
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


@pytest.mark.slow
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


# ------------------------------------------------------------------------------------
# The config record is the truth
# ------------------------------------------------------------------------------------

_GARBLED = {
    "truncated": lambda text: text[:len(text) // 2],
    "empty": lambda text: "",
    "unknown_field": lambda text: json.dumps({**json.loads(text), "bogus_field": 1}),
    "wrong_type": lambda text: json.dumps(
        {**json.loads(text), "training": {**json.loads(text)["training"], "num_steps": "many"}}),
    "a_list": lambda text: json.dumps([json.loads(text)]),
    "section_not_object": lambda text: json.dumps({**json.loads(text), "model": 3}),
    "not_utf8": lambda text: "\udcff",
}
_GARBLED_WHAT = {"truncated": "not valid JSON", "empty": "is empty",
                 "unknown_field": "bogus_field", "wrong_type": "training.num_steps",
                 "a_list": "not a list", "section_not_object": "field model",
                 "not_utf8": "cannot be read"}


@pytest.mark.parametrize("damage", sorted(_GARBLED))
def test_garbled_config_record_is_one_line_naming_the_file(tmp_path, damage):
  """A record cut short or hand-edited: one ConfigError line naming the file and what is
  wrong, in train and in eval, and nothing in the workdir changes."""
  w = str(tmp_path)
  workdir_lib.write_record(w, _config())
  record = tmp_path / "config.json"
  record.write_bytes(_GARBLED[damage](record.read_text()).encode("utf-8", "surrogateescape"))
  before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
  for call in (lambda: config_base.load_workdir_config(w),
               lambda: workdir_lib.eval_config(w, _config(), []),
               lambda: train.train_and_evaluate(_config(), w)):
    with pytest.raises(config_base.ConfigError) as e:
      call()
    message = str(e.value)
    assert str(record) in message and _GARBLED_WHAT[damage] in message, message
    assert "\n" not in message, message
  assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


@pytest.mark.slow
def test_checkpoints_without_a_record_refuse_to_train(tmp_path):
  """config.json deleted, then a resume with another learning rate: refused; accepted
  only with --allow_config_change, which records the config as a new start."""
  w = str(tmp_path)
  train.train_and_evaluate(_config(), w)
  os.remove(tmp_path / "config.json")
  other = _config(**{"optim.learning_rate": 3e-3, "training.num_steps": 40})
  with pytest.raises(workdir_lib.WorkdirError, match="checkpoints but no config record"):
    train.train_and_evaluate(other, w)
  assert not (tmp_path / "config.json").exists()
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["10", "20", "30"]
  train.train_and_evaluate(other, w, allow_config_change=True)
  assert config_base.load_workdir_config(w).optim.learning_rate == 3e-3
  change = json.loads(open(tmp_path / "config_changes.jsonl").read().splitlines()[-1])
  assert "new start" in change["changes"]["config.json"][1]


@pytest.mark.slow
def test_a_failed_config_change_never_rewrites_the_record(tmp_path):
  """--allow_config_change with a model the checkpoints do not fit fails at the restore;
  the record stays, and the original config still trains and evaluates."""
  w = str(tmp_path)
  train.train_and_evaluate(_config(), w)
  record = (tmp_path / "config.json").read_bytes()
  other = _config(**{"model.hidden_sizes": (8,), "training.num_steps": 40})
  with pytest.raises((workdir_lib.WorkdirError, checkpoints.ConfigMismatchError)):
    train.train_and_evaluate(other, w, allow_config_change=True)
  assert (tmp_path / "config.json").read_bytes() == record
  assert not (tmp_path / "config_changes.jsonl").exists()
  train.train_and_evaluate(_config(**{"training.num_steps": 40}), w)
  assert (tmp_path / "checkpoints" / "40").exists()


# ------------------------------------------------------------------------------------
# Declared ranges
# ------------------------------------------------------------------------------------

@pytest.mark.parametrize("defaults", ["default_config", "vae_default_config"])
def test_every_numeric_field_has_a_declared_range(defaults):
  """Each int / float / tuple-of-numbers field of the default configs (and each optional
  numeric one) has a range in config_base.RANGES, and the defaults are inside it."""
  c = getattr(config_base, defaults)()
  missing = []

  def walk(node, prefix):
    for k in node.keys():
      v = node[k]
      if hasattr(v, "keys"):
        walk(v, prefix + k + ".")
        continue
      ref = node.get_ref(k)
      numeric = (isinstance(v, (int, float)) and not isinstance(v, bool)) or (
          isinstance(v, tuple) and all(isinstance(x, (int, float)) for x in v)) or (
          v is None and ref.get_type() in (int, float, tuple))
      if numeric and prefix + k not in config_base.RANGES:
        missing.append(prefix + k)
  walk(c, "")
  assert not missing, missing
  config_base.check_ranges(c)
  field = "optim.rms_decay" if config_base.is_vae_config(c) else "optim.b2"
  with pytest.raises(config_base.ConfigError,
                     match=rf"^config field {field.replace('.', '[.]')} must be \[0, 1\)"):
    config_base.check_ranges(config_base.override(c, [f"{field}=2.0"]))


def test_eval_overrides_out_of_range_are_refused_before_the_restore(tmp_path):
  """sampling.chunk_dims=-3 on --mode=sample: refused by eval_config, naming the field,
  before any model is built or checkpoint read."""
  w = str(tmp_path)
  workdir_lib.write_record(w, _config())
  for field, value in (("sampling.chunk_dims", -3), ("likelihood.num_examples", -5)):
    with pytest.raises(config_base.ConfigError, match=field.replace(".", r"\.")):
      workdir_lib.eval_config(w, _config(), [f"{field}={value}"])
  assert os.listdir(tmp_path) == ["config.json"]


# ------------------------------------------------------------------------------------
# Checkpoints verify themselves
# ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained40(tmp_path_factory):
  """A workdir trained to step 40 (checkpoints 20, 30, 40) with its record."""
  w = tmp_path_factory.mktemp("trained40") / "w"
  train.train_and_evaluate(_config(**{"training.num_steps": 40}), str(w))
  return w


def _copy(src, dst):
  shutil.copytree(src, dst)
  return dst


def _array_files(step_dir):
  return sorted((p for p in (step_dir / "default").rglob("*") if p.is_file()
                 and p.parent.name == "d"), key=lambda p: p.stat().st_size)


@pytest.mark.slow
def test_each_checkpoint_carries_a_manifest(trained40):
  man = json.loads((trained40 / "checkpoints" / "40" / checkpoints.MANIFEST).read_text())
  assert man["step"] == 40 and man["model_fields"]["model.hidden_sizes"] == [16, 16]
  assert len(man["model_fields_sha256"]) == 64
  entry = man["arrays"]["params/context/MaskedDense_0/kernel"] if (
      "params/context/MaskedDense_0/kernel" in man["arrays"]) else next(
          v for k, v in man["arrays"].items() if k.startswith("params/"))
  assert set(entry) == {"shape", "dtype", "crc32"}
  assert man["arrays"]["step"] == {"shape": [], "dtype": "int32", "crc32": man["arrays"]["step"]["crc32"]}


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["rewritten", "flipped"])
def test_changed_checkpoint_bytes_fall_back_to_the_previous_step(trained40, tmp_path, caplog,
                                                                 damage):
  """Arrays of the newest step changed after its save (other values of the same shapes,
  or bytes flipped in its data file): the step is damaged, named with the array (or the
  file error), eval uses the previous step, and a resume from it is bit-exact."""
  w = _copy(trained40, tmp_path / "w")
  newest = w / "checkpoints" / "40"
  if damage == "rewritten":
    state = ocp.StandardCheckpointer().restore(newest / "default")
    for part in ("params", "ema_params"):
      state[part] = jax.tree.map(lambda a: np.asarray(a) + 1.0, state[part])
    shutil.rmtree(newest / "default")
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(newest / "default", state)
    ckptr.wait_until_finished()
  else:   # every data file: which file holds which arrays varies from save to save
    for target in _array_files(newest):
      data = bytearray(target.read_bytes())
      for i in range(len(data) // 7, len(data), 97):
        for j in range(i, min(i + 16, len(data))):
          data[j] ^= 0xFF
      target.write_bytes(bytes(data))
  c = _config(**{"training.num_steps": 40})
  with caplog.at_level("WARNING"):
    params, step = inference.restore(inference.build(c), str(w))
  assert step == 30
  skipped = [r.getMessage() for r in caplog.records if "skipping damaged" in r.getMessage()]
  assert skipped and "/40" in skipped[0], skipped
  if damage == "rewritten":
    assert "checksum mismatch in array ema_params/" in skipped[0], skipped[0]
  assert jax.tree.leaves(params) and all(np.isfinite(np.asarray(a)).all()
                                         for a in jax.tree.leaves(params))
  if damage == "rewritten":   # the trainer falls back too and redoes 30 -> 40 exactly
    caplog.clear()
    with caplog.at_level("WARNING"):
      train.train_and_evaluate(c, str(w))
    assert any("checksum mismatch in array params/" in r.getMessage() for r in caplog.records)
    _assert_same(_params(w, 40), _params(trained40, 40))
    assert os.listdir(w / "checkpoints.damaged")[0].startswith("40-")


@pytest.mark.slow
def test_a_bigger_models_checkpoint_is_a_config_mismatch_naming_the_field(trained40, tmp_path):
  """Checkpoints of (16, 16) read with a (16,) config: eval and train both refuse with the
  field and both values; eval never restores the matching subset."""
  w = _copy(trained40, tmp_path / "w")
  smaller = _config(**{"training.num_steps": 40, "model.hidden_sizes": (16,)})
  want = r"model\.hidden_sizes: checkpoint \(16, 16\), config \(16,\)"
  with pytest.raises(checkpoints.ConfigMismatchError, match=want):
    inference.restore(inference.build(smaller), str(w))
  os.remove(w / "config.json")   # no record to compare with: the manifest still tells
  with pytest.raises(checkpoints.ConfigMismatchError, match=want):
    train.train_and_evaluate(smaller, str(w), allow_config_change=True)
  assert not (w / "config.json").exists()
  assert sorted(os.listdir(w / "checkpoints")) == ["20", "30", "40"]


@pytest.mark.slow
def test_a_reader_retries_when_rotation_removes_its_step(trained40, tmp_path, monkeypatch):
  """A trainer's rotation removes the step an eval is reading: the eval reads the newest
  step left, and calls nothing damaged."""
  w = _copy(trained40, tmp_path / "w")
  real = ocp.PyTreeCheckpointer.restore
  calls = []

  def racing(self, directory, *args, **kwargs):
    calls.append(str(directory))
    if len(calls) == 1:
      shutil.rmtree(w / "checkpoints" / "40")
      raise FileNotFoundError(f"{directory}/d/abc")
    return real(self, directory, *args, **kwargs)
  monkeypatch.setattr(ocp.PyTreeCheckpointer, "restore", racing)
  ckpt = checkpoints.Checkpointer(str(w / "checkpoints"), create=False)
  c = _config()
  target = {"ema_params": jax.eval_shape(inference.build(c).model.init, jax.random.PRNGKey(0))}
  step, _ = ckpt.restore_latest_partial(target)
  ckpt.close()
  assert step == 30 and not ckpt.skipped and len(calls) == 2


@pytest.mark.slow
def test_relative_data_path_is_recorded_absolute_and_checked(tmp_path, monkeypatch):
  """A relative data.path becomes absolute when the run starts and is recorded; a resume
  from another directory uses the recorded file, not the one beside it; a recorded file
  whose bytes changed is refused (train and eval)."""
  rng = np.random.default_rng(0)
  for d in ("a", "b"):
    (tmp_path / d).mkdir()
    np.savez(tmp_path / d / "data.npz", train=rng.normal(size=(512, 4)).astype(np.float32),
             test=rng.normal(size=(64, 4)).astype(np.float32))
  w = str(tmp_path / "w")
  c = lambda n: _config(**{"data.dataset": "npz", "data.path": "data.npz",
                           "training.num_steps": n})
  monkeypatch.chdir(tmp_path / "a")
  train.train_and_evaluate(c(20), w)
  recorded = config_base.load_workdir_config(w).data.path
  assert recorded == str(tmp_path / "a" / "data.npz")
  monkeypatch.chdir(tmp_path / "b")
  resumed = c(30)
  train.train_and_evaluate(resumed, w)
  assert resumed.data.path == recorded and (tmp_path / "w" / "checkpoints" / "30").exists()
  x = dict(np.load(tmp_path / "a" / "data.npz"))
  x["train"][0] += 1.0
  np.savez(tmp_path / "a" / "data.npz", **x)
  record = (tmp_path / "w" / "config.json").read_bytes()
  with pytest.raises(workdir_lib.WorkdirError, match=r"data\.path .*a/data\.npz has changed"):
    train.train_and_evaluate(c(40), w)
  with pytest.raises(workdir_lib.WorkdirError, match=r"data\.path .*has changed"):
    workdir_lib.eval_config(w, c(40), [])
  assert (tmp_path / "w" / "config.json").read_bytes() == record
  assert not (tmp_path / "w" / "checkpoints" / "40").exists()


# ------------------------------------------------------------------------------------
# Signals and disks
# ------------------------------------------------------------------------------------

@pytest.mark.slow
def test_sighup_saves_like_sigterm(tmp_path):
  """The terminal closed (SIGHUP) during training: the step is saved, Interrupted names
  the signal, the exit status is 129, and the run resumes from there."""
  c = _config(**{"training.num_steps": 30})
  hup = lambda step, state, row: step == 10 and os.kill(os.getpid(), signal.SIGHUP)
  with pytest.raises(train.Interrupted, match="SIGHUP received: stopped at step 11") as e:
    train.train_loop(train.setup(c), workdir=str(tmp_path), callbacks=[hup])
  assert (tmp_path / "checkpoints" / "11").exists()
  assert workdir_lib.stop_report(e.value, "train", str(tmp_path))[1] == 129
  train.train_loop(train.setup(c), workdir=str(tmp_path))
  assert (tmp_path / "checkpoints" / "30").exists()


@pytest.mark.slow
def test_full_disk_during_a_save_is_one_line_and_removes_the_partial_save(tmp_path,
                                                                          monkeypatch):
  real = ocp.CheckpointManager.save

  def full(self, step, *args, **kwargs):
    if step == 20:
      partial = pathlib.Path(self.directory) / "20.orbax-checkpoint-tmp-1700000000000000"
      (partial / "default").mkdir(parents=True)
      (partial / "default" / "d").write_bytes(b"x" * 1000)
      raise ValueError("Error writing local file: [OS error: No space left on device]")
    return real(self, step, *args, **kwargs)
  monkeypatch.setattr(ocp.CheckpointManager, "save", full)
  w = tmp_path / "w"
  with pytest.raises(checkpoints.NoSpaceError) as e:
    train.train_and_evaluate(_config(), str(w))
  assert str(e.value).startswith(f"no space left in {w}: checkpoint 20 not written; "
                                 "checkpoint 10 is intact"), str(e.value)
  assert "\n" not in str(e.value)
  assert os.listdir(w / "checkpoints") == ["10"]
  monkeypatch.setattr(ocp.CheckpointManager, "save", real)   # space freed: resumes
  train.train_and_evaluate(_config(), str(w))
  assert sorted(os.listdir(w / "checkpoints")) == ["10", "20", "30"]


# ------------------------------------------------------------------------------------
# One line for every input problem
# ------------------------------------------------------------------------------------

def _vae_record(w):
  c = config_base.vae_default_config()
  workdir_lib.write_record(str(w), c)


def _main_cases(tmp_path):
  """{case: (argv, what the one line names)}; each sets up its inputs under tmp_path."""
  (tmp_path / "a_file").write_text("not a workdir")
  vae_w, img_w = tmp_path / "vae_w", tmp_path / "img_w"
  vae_w.mkdir()
  img_w.mkdir()
  _vae_record(vae_w)
  workdir_lib.write_record(str(img_w), config_base.load_config("configs/mnist_made.py"))
  np.savez(tmp_path / "bad.npz", x=np.arange(10.0))        # 1-D: no examples axis
  np.savez(tmp_path / "nan.npz", x=np.full((8, 3), np.nan))
  bad_record = tmp_path / "bad_record"
  bad_record.mkdir()
  (bad_record / "config.json").write_text('{"model": {"hidden_sizes": [64, 6')
  made = "--config=configs/mnist_made.py"
  npz = ["--config.data.dataset=npz", "--config.training.num_steps=2"]
  return {
      "workdir_is_a_file": ([made, f"--workdir={tmp_path / 'a_file'}"], "is a file"),
      "workdir_is_a_file_eval": ([made, f"--workdir={tmp_path / 'a_file'}", "--mode=eval"],
                                 "is a file"),
      "vae_workdir_image_config": ([made, f"--workdir={vae_w}", "--mode=eval"],
                                   "trained with a VAE config"),
      "image_workdir_vae_config": (["--config=configs/mnist_vae.py", f"--workdir={img_w}",
                                    "--mode=sample"], "trained with an autoregressive"),
      "bad_npz_contents": ([made, f"--workdir={tmp_path / 'w1'}", *npz,
                            f"--config.data.path={tmp_path / 'bad.npz'}"], "bad.npz"),
      "nan_npz_contents": ([made, f"--workdir={tmp_path / 'w2'}", *npz,
                            f"--config.data.path={tmp_path / 'nan.npz'}"], "NaN"),
      "garbled_record": ([made, f"--workdir={bad_record}"], "bad_record/config.json"),
      "out_of_range": ([made, f"--workdir={tmp_path / 'w3'}", "--config.optim.b2=2.0"],
                       "optim.b2"),
  }


@pytest.mark.slow   # a subprocess each (no training)
@pytest.mark.parametrize("case", ["workdir_is_a_file", "workdir_is_a_file_eval",
                                  "vae_workdir_image_config", "image_workdir_vae_config",
                                  "bad_npz_contents", "nan_npz_contents", "garbled_record",
                                  "out_of_range"])
def test_bad_inputs_are_one_line_and_status_1(tmp_path, case):
  argv, names = _main_cases(tmp_path)[case]
  before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
  before_bytes = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
  out = subprocess.run([sys.executable, "-m", "csm_jax.main", *argv], cwd=REPO,
                       capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert out.returncode == 1, out.stderr[-3000:]
  assert "Traceback" not in out.stderr, out.stderr[-3000:]
  errors = [l for l in out.stderr.splitlines() if l.startswith("E")]
  assert len(errors) == 1 and names in errors[0], out.stderr[-3000:]
  after = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
  created = sorted(set(after) - set(before))
  assert all(c.startswith("w") and (c.count("/") == 0 or c.endswith(".lock"))
             for c in created), created   # at most an empty workdir and its lock
  assert {p: p.read_bytes() for p in before_bytes} == before_bytes


def test_unwritable_or_uncreatable_workdir_is_one_line(tmp_path, monkeypatch):
  (tmp_path / "f").write_text("x")
  with pytest.raises(workdir_lib.WorkdirError, match="cannot be created: .*f is a file"):
    train.train_and_evaluate(_config(), str(tmp_path / "f" / "w"))
  real = os.access
  monkeypatch.setattr(os, "access", lambda p, m: False if str(p).startswith(str(tmp_path))
                      else real(p, m))
  with pytest.raises(workdir_lib.WorkdirError, match="is not writable"):
    train.train_and_evaluate(_config(), str(tmp_path / "ro"))
  assert sorted(os.listdir(tmp_path)) == ["f"]
