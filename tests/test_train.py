"""The training entry point: metrics, resume after SIGKILL, NaN guard, several devices."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from csm_jax import data as data_lib
from csm_jax import train
from tests.helpers import tiny_train_config

REPO = pathlib.Path(__file__).resolve().parents[1]


def _rows(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(l) for l in f]


@pytest.mark.slow   # a training run
def test_train_and_evaluate_writes_metrics_and_lowers_test_loss(tmp_path):
  config = tiny_train_config(**{"training.num_steps": 200, "training.eval_every": 100,
                                "training.checkpoint_every": 100})
  train.train_and_evaluate(config, str(tmp_path))
  rows = _rows(tmp_path)
  logged = [r for r in rows if "loss" in r]
  assert [r["step"] for r in logged] == list(range(10, 201, 10))
  assert all({"step", "loss", "steps_per_sec", "eta_sec"} <= set(r) for r in logged)
  evals = [r for r in rows if "eval_loss" in r]
  assert [r["step"] for r in evals] == [0, 100, 200]
  assert evals[-1]["eval_loss"] < evals[0]["eval_loss"]
  # the first logged step (10) is checkpointed early; then every 100 steps
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["10", "100", "200"]
  assert any(n.startswith("events") for n in os.listdir(tmp_path / "tensorboard"))


@pytest.mark.slow   # a training run
def test_nan_loss_stops_with_the_step_and_keeps_last_good_checkpoint(tmp_path):
  """A poisoned training example makes the loss inf at a known step."""
  rng = np.random.default_rng(0)
  n = 4096  # one epoch is 128 steps: the poisoned example is seen once, at step `bad`
  config = tiny_train_config(**{"data.dataset": "npz", "data.path": str(tmp_path / "data.npz"),
                                "training.num_steps": 100, "eval.batch_size": 32})
  bad = 30
  poison = data_lib.batch_indices(n, 32, bad, config.seed)[5]
  x = rng.normal(size=(n, 4)).astype(np.float32)
  x[poison] = 3e38
  np.savez(tmp_path / "data.npz", train=x, test=rng.normal(size=(64, 4)).astype(np.float32))
  assert bad == next(s for s in range(100) if poison in data_lib.batch_indices(n, 32, s, config.seed))
  assert bad > config.training.checkpoint_every  # so that a good checkpoint exists
  with pytest.raises(FloatingPointError, match=f"step {bad} "):
    train.train_and_evaluate(config, str(tmp_path / "w"))
  steps = sorted(int(s) for s in os.listdir(tmp_path / "w" / "checkpoints"))
  assert steps and max(steps) <= bad
  restored = ocp.StandardCheckpointer().restore(tmp_path / "w" / "checkpoints" / str(max(steps)) / "default")
  assert all(np.isfinite(a).all() for a in jax.tree.leaves(restored["params"]))


def _main(workdir, *extra):
  return [sys.executable, "-m", "csm_jax.main", "--config=configs/mnist_made.py",
          f"--workdir={workdir}", "--config.model.hidden_sizes=(128,128)",
          "--config.model.context_size=4", "--config.training.batch_size=32",
          "--config.training.num_steps=300", "--config.training.checkpoint_every=20",
          "--config.training.log_every=20", "--config.training.eval_every=150",
          "--config.eval.batch_size=100", "--config.eval.num_batches=1", *extra]


def _final_params(workdir):
  ckpt = pathlib.Path(workdir) / "checkpoints"
  last = max(int(s) for s in os.listdir(ckpt) if s.isdigit())
  assert last == 300
  return ocp.StandardCheckpointer().restore(ckpt / str(last) / "default")


@pytest.mark.slow
def test_sigkill_and_restart_gives_the_uninterrupted_parameters(tmp_path, mnist_data_dir):
  env = dict(os.environ, TFDS_DATA_DIR=mnist_data_dir, PYTHONUNBUFFERED="1")
  killed = tmp_path / "killed"
  proc = subprocess.Popen(_main(killed), cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  first = killed / "checkpoints" / "20"
  deadline = time.time() + 240
  while not first.exists() and proc.poll() is None and time.time() < deadline:
    time.sleep(0.005)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert first.exists(), "the run never wrote its first checkpoint"
  at_kill = max(int(s) for s in os.listdir(killed / "checkpoints") if s.isdigit())
  assert at_kill < 300, "the run finished before it could be killed"
  subprocess.run(_main(killed), cwd=REPO, env=env, check=True, capture_output=True)
  straight = tmp_path / "straight"
  subprocess.run(_main(straight), cwd=REPO, env=env, check=True, capture_output=True)
  a, b = _final_params(killed), _final_params(straight)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)
  # The metrics of the resumed run have one row per logged step, none duplicated.
  steps = [r["step"] for r in _rows(killed) if "loss" in r]
  assert steps == list(range(20, 301, 20))
  # eval and sample modes read the final checkpoint.
  subprocess.run(_main(killed, "--mode=eval", "--config.likelihood.num_examples=8",
                       "--config.likelihood.num_points=257"), cwd=REPO, env=env, check=True,
                 capture_output=True)
  ev = json.load(open(killed / "eval_00000300.json"))
  assert ev["step"] == 300 and np.isfinite(ev["eval_loss"])
  assert ev["likelihood"]["num_examples"] == 8 and np.isfinite(ev["likelihood"]["bpd"])
  subprocess.run(_main(killed, "--mode=sample", "--config.sampling.num_samples=4",
                       "--config.sampling.num_steps=1"), cwd=REPO, env=env, check=True,
                 capture_output=True)
  assert (killed / "samples" / "samples_00000300.png").stat().st_size > 1000


_MULTI = r"""
import jax, numpy as np
from csm_jax import sharding, train
from tests.helpers import tiny_train_config
assert jax.device_count() == 8, jax.device_count()
config = tiny_train_config(**{"training.batch_size": 64})
out = []
for devices in (jax.devices()[:1], jax.devices()):
  s = train.setup(config, mesh=sharding.data_mesh(devices))
  mesh = s.mesh
  repl = sharding.replicated(mesh)
  state = jax.device_put(train.init_state(s.model, s.optimizer, jax.random.PRNGKey(0)), repl)
  step = jax.jit(train.make_train_step(s.loss_fn, s.optimizer, 0.99),
                 in_shardings=(repl, sharding.batch_sharding(mesh), repl), out_shardings=(repl, repl))
  batch = s.batcher.train(0)
  assert len(batch.sharding.device_set) == len(devices)
  for _ in range(2):
    state, _ = step(state, batch, jax.device_put(jax.random.PRNGKey(1), repl))
  out.append(jax.tree.map(np.asarray, state.params))
diff = max(float(np.abs(a - b).max()) for a, b in zip(jax.tree.leaves(out[0]), jax.tree.leaves(out[1])))
scale = max(float(np.abs(a).max()) for a in jax.tree.leaves(out[0]))
print("MAXDIFF", diff, scale)
"""


@pytest.mark.slow
def test_eight_device_step_matches_one_device():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu")
  res = subprocess.run([sys.executable, "-c", _MULTI], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=300)
  assert res.returncode == 0, res.stderr[-3000:]
  diff, scale = map(float, res.stdout.split("MAXDIFF")[1].split())
  assert diff <= 1e-5 * max(scale, 1.0), (diff, scale)
