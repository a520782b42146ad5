"""A work directory's owner and its config record.

One trainer owns a workdir at a time: `lock(workdir)` takes an exclusive `flock` on
WORKDIR/.lock (released by the kernel when the process dies, even by SIGKILL, so a
dead run never leaves a stale lock on this host) and writes who holds it, so a second
trainer is refused with a message naming the owner. Eval and sample only read.
With several processes (multi-host) `training_lock` lets process 0 hold the lock (and
write the record) for all of them, and every process is refused when it is taken.

The first training writes WORKDIR/config.json; later trainings are compared against it
and refused when they change a field that changes the model, the data or the
optimization (`PROTECTED`), unless the change is explicitly accepted, which is then
recorded in WORKDIR/config_changes.jsonl. Eval and sample start from the record.
"""

import contextlib
import datetime
import fcntl
import json
import os
import signal
import socket
import sys
import tempfile
from typing import Sequence

from absl import logging
import jax

from csm_jax import config_base
from csm_jax import sharding

# Sections (or single fields) whose change alters what a checkpoint means.
PROTECTED = ("seed", "data", "model", "loss", "noise", "optim", "training.batch_size",
             "vae")
# Fields eval and sample may override on top of the recorded config.
EVAL_FIELDS = ("eval", "likelihood", "sampling", "restore")


class WorkdirError(RuntimeError):
  """The workdir cannot be used as asked (owned by another run, config changed, ...)."""


@contextlib.contextmanager
def lock(workdir: str):
  """Holds the exclusive training lock of workdir for the duration of the block."""
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, ".lock")
  f = open(path, "a+")
  try:
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      f.seek(0)
      owner = f.read().strip() or "another process"
      raise WorkdirError(f"workdir {workdir} is in use by a training run ({owner}; lock "
                         f"file {path}). Stop that run first, or train in another "
                         "--workdir.") from None
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()} on host {socket.gethostname()} since "
            f"{datetime.datetime.now().isoformat(timespec='seconds')}")
    f.flush()
    yield path
  finally:
    f.close()


@contextlib.contextmanager
def training_lock(workdir: str):
  """`lock(workdir)` held by process 0 for all processes of a (multi-host) run; when
  process 0 cannot take it, every process raises WorkdirError (none is left waiting)."""
  if jax.process_count() == 1:
    with lock(workdir) as path:
      yield path
    return
  with contextlib.ExitStack() as stack:
    error = None
    if sharding.is_main_process():
      try:
        stack.enter_context(lock(workdir))
      except WorkdirError as e:
        error = e
    if not sharding.broadcast_flag(error is None):
      raise error or WorkdirError(f"workdir {workdir} is in use by a training run (process 0 "
                                  "could not take its lock; see its log)")
    yield os.path.join(workdir, ".lock")


def _flat(config) -> dict:
  out = {}

  def walk(node, prefix):
    for k, v in node.items():
      if isinstance(v, dict):
        walk(v, prefix + k + ".")
      else:
        out[prefix + k] = list(v) if isinstance(v, tuple) else v
  walk(json.loads(config.to_json_best_effort()), "")
  return out


def _protected(field: str) -> bool:
  return any(field == p or field.startswith(p + ".") for p in PROTECTED)


def config_changes(recorded, config) -> dict:
  """{field: (recorded value, new value)} for the protected fields that differ."""
  a, b = _flat(recorded), _flat(config)
  return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b))
          if _protected(k) and a.get(k) != b.get(k)}


def record_path(workdir: str) -> str:
  return os.path.join(workdir, "config.json")


def check_config(workdir: str, config, allow_changes: bool = False) -> dict:
  """Compares config with the workdir's record; raises WorkdirError on protected changes
  unless allow_changes. Returns the changes (empty for a new workdir)."""
  if not os.path.exists(record_path(workdir)):
    return {}
  changes = config_changes(config_base.load_workdir_config(workdir), config)
  if changes and not allow_changes:
    lines = "\n".join(f"  {k}: {old!r} -> {new!r}" for k, (old, new) in changes.items())
    raise WorkdirError(
        f"this config differs from the one {workdir} was trained with ({record_path(workdir)})"
        f" in fields that change the model, the data or the optimization:\n{lines}\n"
        "Repeat the original --config.* overrides, use another --workdir, or accept the "
        "change with --allow_config_change (it is recorded in config_changes.jsonl).")
  return changes


def write_record(workdir: str, config, changes: dict = None):
  """Writes config.json (atomically) and appends accepted changes to config_changes.jsonl."""
  path = record_path(workdir)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.write(config.to_json_best_effort(indent=2))
  os.replace(tmp, path)
  if changes:
    with open(os.path.join(workdir, "config_changes.jsonl"), "a") as f:
      f.write(json.dumps({"time": datetime.datetime.now().isoformat(timespec="seconds"),
                          "changes": {k: list(v) for k, v in changes.items()}}) + "\n")


def eval_config(workdir: str, config, overrides: Sequence[str]):
  """The config eval/sample use: the workdir's record (if any) with the command line's
  overrides of evaluation and sampling fields. Overrides of other fields must repeat
  the recorded values; any other value is refused."""
  if not os.path.exists(record_path(workdir)):
    return config
  recorded = config_base.load_workdir_config(workdir)
  evals = [o for o in overrides if _is_eval_field(o.split("=", 1)[0])]
  others = [o for o in overrides if o not in evals]
  tried = config_base.override(config_base.load_workdir_config(workdir), others)
  changed = sorted(k for k in _diff(recorded, tried) if not _is_eval_field(k))
  if changed:
    raise WorkdirError(
        f"--mode=eval/sample use the config recorded in {record_path(workdir)}; only "
        f"{', '.join(p + '.*' for p in EVAL_FIELDS)} may be changed there, not {changed}")
  return config_base.override(recorded, evals)


def _is_eval_field(field: str) -> bool:
  return any(field.startswith(p + ".") for p in EVAL_FIELDS)


def _diff(a, b) -> dict:
  fa, fb = _flat(a), _flat(b)
  return {k: (fa.get(k), fb.get(k)) for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k)}


def check_writable(path: str):
  """Raises WorkdirError unless a file can be created in the directory `path` (or, if it
  does not exist yet, in its parent): run before a long computation that writes there."""
  target = path if os.path.exists(path) else os.path.dirname(os.path.abspath(path))
  try:
    if not os.path.isdir(target):
      raise NotADirectoryError(f"{target} is not a directory")
    with tempfile.NamedTemporaryFile(dir=target, prefix=".write-test-"):
      pass
  except OSError as e:
    raise WorkdirError(f"cannot write results to {path} ({e}); fix the permissions or "
                       "copy the workdir somewhere writable") from None


def require_checkpoints(workdir: str):
  """One clear error, creating nothing, when workdir has no checkpoint step directory
  (no checkpoints directory, or an empty one: a run stopped before its first save)."""
  path = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(path) or not any(n.isdigit() for n in os.listdir(path)):
    raise FileNotFoundError(f"no checkpoint in {os.path.abspath(path)}; train first "
                            "(--mode=train)")


def stop_report(error: BaseException, mode: str, workdir: str, processes: int = 1):
  """(message, exit status) for a run stopped by a signal: train.Interrupted (the training
  loop saved the step) or a KeyboardInterrupt (Ctrl-C outside the training steps)."""
  if not isinstance(error, KeyboardInterrupt):
    return str(error), 128 + error.signum
  code = 128 + signal.SIGINT
  if mode != "train":
    return f"interrupted by Ctrl-C: --mode={mode} stopped before writing its results", code
  where = os.path.join(workdir, "checkpoints")
  if processes > 1:
    return ("interrupted by Ctrl-C: a multi-host run saves on SIGTERM, not SIGINT; run the "
            f"same command again to resume from the last checkpoint in {where}"), code
  return ("interrupted by Ctrl-C outside the training steps (start-up, compilation or the "
          "step-0 evaluation), so there was no step to save; run the same command again to "
          f"start, or to resume from the checkpoints already in {where}"), code


def exit_stopped(error: BaseException, mode: str, workdir: str, processes: int = 1):
  """Logs `stop_report` as one line and exits with its status. After a KeyboardInterrupt
  the interpreter's teardown is skipped (os._exit): an XLA compilation it interrupted
  may still run in a thread and crash that teardown (SIGSEGV); every `finally` and
  context manager of the run has already closed its files by then."""
  message, code = stop_report(error, mode, workdir, processes)
  logging.warning("%s", message)
  if not isinstance(error, KeyboardInterrupt):
    sys.exit(code)
  logging.flush()
  for stream in (sys.stdout, sys.stderr):
    stream.flush()
  os._exit(code)  # pylint: disable=protected-access
