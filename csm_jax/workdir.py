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
import hashlib
import json
import os
import signal
import socket
import sys
import tempfile
from typing import Sequence

from absl import logging
import jax

from csm_jax import atomic
from csm_jax import config_base
from csm_jax import sharding

# Sections (or single fields) whose change alters what a checkpoint means.
PROTECTED = ("seed", "data", "model", "loss", "noise", "optim", "training.batch_size",
             "vae")
# Fields eval and sample may override on top of the recorded config.
EVAL_FIELDS = ("eval", "likelihood", "sampling", "restore")


class WorkdirError(RuntimeError):
  """The workdir cannot be used as asked (owned by another run, config changed, ...)."""


def check_trainable(workdir: str):
  """One-line WorkdirError / ConfigError, before anything is created, when `workdir`
  cannot be trained in: a regular file, not writable, or a garbled config record."""
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise WorkdirError(f"--workdir {workdir} is a file, not a directory; give a directory "
                       "(it is created if missing)")
  parent = workdir
  while not os.path.exists(parent):
    parent = os.path.dirname(os.path.abspath(parent))
  if not os.path.isdir(parent):
    raise WorkdirError(f"--workdir {workdir} cannot be created: {parent} is a file")
  if not os.access(parent, os.W_OK | os.X_OK):
    raise WorkdirError(f"--workdir {workdir} is not writable ({parent} is read-only for "
                       "this user); train in a writable directory, or fix its permissions")
  if os.path.exists(record_path(workdir)):
    config_base.load_workdir_config(workdir)   # a garbled record: one ConfigError line


@contextlib.contextmanager
def lock(workdir: str):
  """Holds the exclusive training lock of workdir for the duration of the block."""
  check_trainable(workdir)
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, ".lock")
  try:
    f = open(path, "a+")
  except OSError as e:
    raise WorkdirError(f"cannot take the training lock {path} ({e.strerror}); train in a "
                       "writable --workdir") from None
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


def has_checkpoints(workdir: str) -> bool:
  """Whether workdir/checkpoints holds a step directory (readable or not)."""
  path = os.path.join(workdir, "checkpoints")
  return os.path.isdir(path) and any(n.isdigit() for n in os.listdir(path))


def record_path(workdir: str) -> str:
  return os.path.join(workdir, "config.json")


def check_config(workdir: str, config, allow_changes: bool = False) -> dict:
  """Compares config with the workdir's record; raises WorkdirError on protected changes
  unless allow_changes. Returns the changes (empty for a new workdir)."""
  if not os.path.exists(record_path(workdir)):
    if not has_checkpoints(workdir):
      return {}
    if not allow_changes:
      raise WorkdirError(
          f"{workdir} has checkpoints but no config record ({record_path(workdir)} is "
          "missing), so nothing shows which config they were trained with. Restore the "
          "record, use another --workdir, or accept this config as a new start with "
          "--allow_config_change (it is recorded in config_changes.jsonl).")
    return {"config.json": (None, "missing: this config recorded as a new start")}
  recorded = config_base.load_workdir_config(workdir)
  _check_kind(workdir, recorded, config)
  changes = config_changes(recorded, config)
  if changes and not allow_changes:
    lines = "\n".join(f"  {k}: {old!r} -> {new!r}" for k, (old, new) in changes.items())
    raise WorkdirError(
        f"this config differs from the one {workdir} was trained with ({record_path(workdir)})"
        f" in fields that change the model, the data or the optimization:\n{lines}\n"
        "Repeat the original --config.* overrides, use another --workdir, or accept the "
        "change with --allow_config_change (it is recorded in config_changes.jsonl).")
  return changes


def write_record(workdir: str, config, changes: dict = None):
  """Writes config.json (atomically) and appends accepted changes to config_changes.jsonl.

  Trainers call it only once the setup is built and the state restored or initialized
  (`loop.run`'s on_start), so a run that fails before that never rewrites the record."""
  atomic.write_text(record_path(workdir), config.to_json_best_effort(indent=2))
  if changes:
    with open(os.path.join(workdir, "config_changes.jsonl"), "a") as f:
      atomic.append_line(f, json.dumps({
          "time": datetime.datetime.now().isoformat(timespec="seconds"),
          "changes": {k: list(v) for k, v in changes.items()}}))


DATA_RECORD = "data.json"
DATA_FIELDS = ("path", "test_path")


def _checksum(path: str) -> str:
  """sha256 of a file, or of every file under a directory (relative names and bytes)."""
  h = hashlib.sha256()
  files = [path] if os.path.isfile(path) else sorted(
      os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs)
  for name in files:
    h.update(os.path.relpath(name, path).encode() + b"\0")
    with open(name, "rb") as f:
      for block in iter(lambda: f.read(1 << 23), b""):
        h.update(block)
  return h.hexdigest()


def read_data_record(workdir: str) -> dict:
  path = os.path.join(workdir, DATA_RECORD)
  if not os.path.exists(path):
    return {}
  try:
    with open(path, "rb") as f:
      record = json.loads(f.read().decode("utf-8"))
    if not isinstance(record, dict) or not all(
        isinstance(v, dict) and {"given", "path", "sha256"} <= set(v) for v in record.values()):
      raise ValueError("not a data record")
  except (OSError, ValueError) as e:
    raise config_base.ConfigError(f"data record {path} is unreadable ({e}); restore it from a "
                                  "copy, or train in a fresh --workdir") from None
  return record


def resolve_data(workdir: str, config, allow_changes: bool = False) -> dict:
  """Makes data.path / data.test_path absolute (in `config`) and checks them against the
  workdir's data record: a relative path spelled as when the run started means the
  recorded file (wherever the command runs from now), and a recorded file whose sha256
  changed is refused unless allow_changes. Returns the record to write once the run
  starts (`write_data_record`)."""
  recorded = read_data_record(workdir)
  entries = {}
  for field in DATA_FIELDS:
    if field not in config.data or not config.data[field]:
      continue
    given = str(config.data[field])
    previous = recorded.get(field)
    if os.path.isabs(given):
      path = given
    elif previous and previous["given"] == given:
      path = previous["path"]    # the file the run started with, not one beside the cwd
      if os.path.abspath(given) != path:
        logging.info("data.%s=%s: the recorded %s (the run started there)", field, given, path)
    else:
      path = os.path.abspath(given)
    config.data[field] = path
    if not os.path.exists(path):
      continue                   # the loader says what is missing
    entries[field] = {"given": given, "path": path, "sha256": _checksum(path)}
    if (previous and previous["path"] == path and previous["sha256"] != entries[field]["sha256"]
        and not allow_changes):
      raise WorkdirError(
          f"data.{field} {path} has changed since {workdir} was trained on it (sha256 "
          f"{previous['sha256'][:12]}... recorded in {os.path.join(workdir, DATA_RECORD)}, now "
          f"{entries[field]['sha256'][:12]}...); restore the file, train in another --workdir, "
          "or accept the change with --allow_config_change")
  return entries


def write_data_record(workdir: str, entries: dict):
  path = os.path.join(workdir, DATA_RECORD)
  if entries or os.path.exists(path):
    atomic.write_json(path, entries)


def _check_kind(workdir: str, recorded, config):
  """One line when a VAE workdir meets an image config, or the reverse."""
  kind = lambda c: "a VAE" if config_base.is_vae_config(c) else "an autoregressive (image)"
  if config_base.is_vae_config(recorded) != config_base.is_vae_config(config):
    raise WorkdirError(f"{workdir} was trained with {kind(recorded)} config "
                       f"({record_path(workdir)}), and --config is {kind(config)} config; "
                       "give a config of the same kind (e.g. the one it was trained with)")


def eval_config(workdir: str, config, overrides: Sequence[str]):
  """The config eval/sample use: the workdir's record (if any) with the command line's
  overrides of evaluation and sampling fields. Overrides of other fields must repeat
  the recorded values; any other value is refused."""
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise WorkdirError(f"--workdir {workdir} is a file, not a directory (a training run's "
                       "workdir)")
  if not os.path.exists(record_path(workdir)):
    return config
  recorded = config_base.load_workdir_config(workdir)
  _check_kind(workdir, recorded, config)
  evals = [o for o in overrides if _is_eval_field(o.split("=", 1)[0])]
  others = [o for o in overrides if o not in evals]
  tried = config_base.override(config_base.load_workdir_config(workdir), others)
  changed = sorted(k for k in _diff(recorded, tried) if not _is_eval_field(k))
  if changed:
    raise WorkdirError(
        f"--mode=eval/sample use the config recorded in {record_path(workdir)}; only "
        f"{', '.join(p + '.*' for p in EVAL_FIELDS)} may be changed there, not {changed}")
  config = config_base.override(recorded, evals)
  for field, entry in read_data_record(workdir).items():
    if (config.data[field] == entry["path"] and os.path.exists(entry["path"])
        and _checksum(entry["path"]) != entry["sha256"]):
      raise WorkdirError(f"data.{field} {entry['path']} has changed since {workdir} was "
                         f"trained on it (its sha256 differs from {DATA_RECORD}'s); restore "
                         "the file to evaluate on the data the run used")
  # before anything is built or restored: a bad value is one line naming the field
  if config_base.is_vae_config(config):
    return config_base.validate_vae(config)
  return config_base.validate(config)


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
