"""Multi-host training on localhost: 2 processes against 1, through the real entry point.

Two processes (2 CPU devices each, `jax.distributed.initialize` with a coordinator on
127.0.0.1, gloo CPU collectives) train the MNIST MADE (configs/mnist_made_mle.py: Gaussian
conditionals, exact bits/dim in the periodic evaluation; the CSM step compiles about twice
as slowly and shares all the multi-host code) on a tiny uint8 npz set with
`python -m csm_jax.main --multihost` (device-resident input pipeline, 2 steps per
dispatch), each process feeding its part of the global batch; one process with 4 CPU
devices does the same run. Then every process restores the last checkpoint
(tests/multihost_worker.py). Checked: the parameters equal the 1-process ones (float32
tolerance), both processes read back the same checkpoint, each checkpoint step is written
once (one directory per step, committed, nothing left over), and the metrics, config
record and TensorBoard log are written once. And: a workdir locked by another run stops
both processes with one error (none is left waiting for the other); SIGTERM to one
process stops both after the same step, saved once, and the same command resumes there.
"""

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
TIMEOUT = 300   # seconds for all processes together (generous: the machine may be shared)
STEPS = 6


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env(num_devices):
  env = {k: v for k, v in os.environ.items()
         if k.lower() not in ("http_proxy", "https_proxy", "all_proxy", "grpc_proxy")}
  env.update(JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES=str(num_devices), PYTHONUNBUFFERED="1",
             PYTHONPATH=os.pathsep.join([str(REPO)] + ([env["PYTHONPATH"]]
                                                         if env.get("PYTHONPATH") else [])))
  return env


def _run_all(jobs, tmp_path, check=True, timeout=TIMEOUT):
  """Starts every (name, argv, env) at once and waits for all; with `check`, a failure
  kills the others. Killed at the timeout (which fails the test). {name: (rc, log)}."""
  procs = {}
  for name, argv, env in jobs:
    log = open(tmp_path / f"{name}.log", "w")
    procs[name] = (subprocess.Popen(argv, cwd=REPO, env=env, stdout=log,
                                    stderr=subprocess.STDOUT), log)
  deadline, failed, late = time.time() + timeout, None, False
  while any(p.poll() is None for p, _ in procs.values()):
    failed = next((n for n, (p, _) in procs.items() if p.poll() not in (None, 0)), None)
    late = time.time() > deadline
    if (check and failed) or late:
      break
    time.sleep(0.2)
  for p, log in procs.values():
    if p.poll() is None:
      p.send_signal(signal.SIGKILL)   # (JAX's preemption service catches SIGTERM)
    p.wait()
    log.close()
  out = {n: (p.returncode, (tmp_path / f"{n}.log").read_text()) for n, (p, _) in procs.items()}
  if late or (check and any(rc for rc, _ in out.values())):
    report = "\n".join(f"--- {n} (exit {rc}) ---\n{text[-4000:]}" for n, (rc, text) in out.items())
    why = f"timed out after {timeout} s" if late else f"process {failed} failed"
    pytest.fail(f"{why}:\n{report}")
  return out


def _tiny_images(tmp_path):
  rng = np.random.default_rng(0)
  x = (255 * rng.random((96, 8, 8, 1)) ** 3).astype(np.uint8)   # MNIST-like: mostly dark
  np.savez(tmp_path / "train.npz", x=x[:64])
  np.savez(tmp_path / "test.npz", x=x[64:])


def _main_flags(tmp_path, workdir):
  return ["--config=configs/mnist_made_mle.py", f"--workdir={workdir}",
          "--config.data.dataset=npz", f"--config.data.path={tmp_path / 'train.npz'}",
          f"--config.data.test_path={tmp_path / 'test.npz'}",
          "--config.model.hidden_sizes=32,32", "--config.model.context_size=4",
          "--config.training.batch_size=8", f"--config.training.num_steps={STEPS}",
          "--config.training.log_every=2", "--config.training.checkpoint_every=2",
          "--config.training.eval_every=2", "--config.training.steps_per_dispatch=2",
          "--config.eval.batch_size=8", "--config.eval.num_batches=2",
          "--config.data.pipeline=device"]


@pytest.mark.slow
def test_two_processes_train_like_one(tmp_path):
  _tiny_images(tmp_path)
  worker = [sys.executable, "-m", "tests.multihost_worker"]
  port = _free_port()
  runs = {"reference": (1, 4), "process0": (2, 2), "process1": (2, 2)}  # processes, devices
  jobs = []
  for name, (processes, devices) in runs.items():
    argv = worker + [f"--restored_out={tmp_path / name}.npz"]
    if processes > 1:
      argv += ["--multihost", f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
               f"--process_id={name[-1]}"]
    jobs.append((name, argv + _main_flags(tmp_path, tmp_path / f"{processes}_processes"),
                 _env(devices)))
  _run_all(jobs, tmp_path)

  ref = np.load(tmp_path / "reference.npz")
  assert (int(ref["process_count"]), int(ref["device_count"])) == (1, 4)
  keys = [k for k in ref.files if k.startswith(("params", "ema_params"))]
  assert keys
  for i in range(2):
    got = np.load(tmp_path / f"process{i}.npz")
    assert (int(got["process_index"]), int(got["process_count"]),
            int(got["device_count"])) == (i, 2, 4)
    assert sorted(got.files) == sorted(ref.files)
    assert int(got["step/params"]) == int(got["step/ema_params"]) == STEPS
    for k in keys:   # same global batches, same updates: equal up to float32 reductions
      np.testing.assert_allclose(got[k], ref[k], rtol=1e-5, atol=1e-6, err_msg=k)
    if i:            # both processes read back the same checkpoint
      first = np.load(tmp_path / "process0.npz")
      for k in keys:
        np.testing.assert_array_equal(got[k], first[k], err_msg=k)

  # Written once: each checkpoint step (committed; no temporary or per-process copies),
  # the config record, the data record (the npz file's absolute path and checksum), the
  # TensorBoard log, each metrics row, each sample grid.
  rows = {}
  for w in (tmp_path / "1_processes", tmp_path / "2_processes"):
    assert sorted(os.listdir(w)) == [".lock", "checkpoints", "config.json", "data.json",
                                     "metrics.jsonl", "samples", "tensorboard"], w
    assert sorted(os.listdir(w / "samples")) == [   # training.eval_samples: no temporaries
        f"train_{s:08d}.png" for s in (2, 4, 6)], w
    steps = sorted(os.listdir(w / "checkpoints"), key=int)
    assert steps == ["2", "4", "6"], (w, steps)
    for s in steps:
      assert (w / "checkpoints" / s / "commit_success.txt").exists()
    assert len(os.listdir(w / "tensorboard")) == 1
    rows[w.name] = [json.loads(line) for line in open(w / "metrics.jsonl")]
    assert [r["step"] for r in rows[w.name]] == [0, 2, 2, 4, 4, 6, 6], w
  for a, b in zip(rows["2_processes"], rows["1_processes"]):
    for k in ("loss", "eval_loss", "eval_bpd"):
      if k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-5, err_msg=f"step {a['step']} {k}")
  assert (json.load(open(tmp_path / "2_processes" / "config.json"))
          == json.load(open(tmp_path / "1_processes" / "config.json")))


@pytest.mark.slow
def test_a_taken_workdir_refuses_every_process(tmp_path):
  """Process 0 holds the lock for all; when it cannot, none of them is left waiting."""
  from csm_jax import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  _tiny_images(tmp_path)
  taken = tmp_path / "taken"
  port = _free_port()
  main = [sys.executable, "-m", "csm_jax.main", "--multihost",
          f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2"]
  with workdir_lib.lock(str(taken)):
    out = _run_all([(f"process{i}", main + [f"--process_id={i}"] + _main_flags(tmp_path, taken),
                     _env(1)) for i in range(2)], tmp_path, check=False, timeout=90)
  assert [rc for rc, _ in out.values()] == [1, 1], out
  assert "is in use by a training run (pid" in out["process0"][1]
  assert "process 0 could not take its lock" in out["process1"][1]
  assert sorted(os.listdir(taken)) == [".lock"]


@pytest.mark.slow
def test_sigterm_to_one_process_saves_one_step_on_all_and_resumes(tmp_path):
  """Preemption of one host: JAX's preemption service picks one step for all processes,
  every process saves it (one committed checkpoint) and exits 143; the same command
  resumes from that step."""
  _tiny_images(tmp_path)
  w = tmp_path / "preempted"

  def jobs(num_steps, port):
    flags = [f for f in _main_flags(tmp_path, w) if "num_steps" not in f
             and "checkpoint_every" not in f and "eval_every" not in f]
    flags += [f"--config.training.num_steps={num_steps}",
              "--config.training.checkpoint_every=100000", "--config.training.eval_every=0"]
    main = [sys.executable, "-m", "csm_jax.main", "--multihost",
            f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2"]
    return [(f"process{i}", main + [f"--process_id={i}"] + flags, _env(2)) for i in range(2)]

  procs = []
  for name, argv, env in jobs(100000, _free_port()):
    log = open(tmp_path / f"{name}.log", "w")
    procs.append((subprocess.Popen(argv, cwd=REPO, env=env, stdout=log,
                                   stderr=subprocess.STDOUT), log))
  deadline = time.time() + TIMEOUT
  while (not (w / "checkpoints" / "2").exists() and time.time() < deadline
         and all(p.poll() is None for p, _ in procs)):
    time.sleep(0.05)
  procs[1][0].send_signal(signal.SIGTERM)   # one host is preempted
  for p, log in procs:
    try:
      p.wait(timeout=120)
    except subprocess.TimeoutExpired:
      p.kill()
      p.wait()
    log.close()
  logs = [(tmp_path / f"process{i}.log").read_text() for i in range(2)]
  assert [p.returncode for p, _ in procs] == [143, 143], "\n".join(l[-3000:] for l in logs)
  stopped = {int(l.split("stopped at step ")[1].split()[0]) for l in logs}
  assert len(stopped) == 1, stopped       # the same step on both processes
  step = stopped.pop()
  assert (w / "checkpoints" / str(step) / "commit_success.txt").exists()
  out = _run_all(jobs(step + 4, _free_port()), tmp_path)
  for _, text in out.values():
    assert f"resumed from checkpoint at step {step}" in text
  assert (w / "checkpoints" / str(step + 4) / "commit_success.txt").exists()
  steps = [json.loads(line)["step"] for line in open(w / "metrics.jsonl")]
  assert steps == sorted(set(steps)) and steps[-1] == step + 4   # no row twice


def test_only_process_0_writes_metrics(tmp_path, monkeypatch):
  from csm_jax import metrics  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(metrics.jax, "process_index", lambda: 1)
  writer = metrics.MetricWriter(str(tmp_path))
  writer.write(1, {"loss": 1.0})
  writer.close()
  assert not os.listdir(tmp_path)
