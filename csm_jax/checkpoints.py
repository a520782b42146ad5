"""Orbax checkpoints: keep the last K, written atomically, restored onto the mesh.

Restoring survives damage: the newest checkpoint that reads back is used, and each
newer one that does not is skipped with a warning naming it and why (training moves
it aside to checkpoints.damaged/ so that it is not overwritten or retried). A checkpoint
whose arrays do not have the shapes of the model built from the config is a config
mismatch, not damage, and is reported as such.

Each saved step carries STEP/manifest.json (`MANIFEST`): every array's path, shape,
dtype and CRC-32 of its bytes, and the config fields that shape the model with their
hash. A restore checks the model being built against it (another shape, another
dtype, an array missing or left over is a config mismatch naming the fields that differ,
e.g. `model.hidden_sizes: checkpoint (64, 64), config (64,)`; a partial restore never
reads a subset of a part silently) and the restored bytes against the checksums (a
mismatch marks the step damaged, naming the array, and the previous step is used). A
step whose directory disappears while it is read (a trainer's rotation beside a
reader) is not damage: the newest remaining step is read instead.

Multi-host: every process calls save and restore with the same (replicated) state;
orbax writes each array once and process 0 commits the step, so the directory must be
one that all hosts see at the same path (NFS, Filestore, a gcsfuse mount).
"""

import collections
import errno
import hashlib
import json
import os
import shutil
import sys
import time
import zlib

from absl import logging
from etils import epath
import jax
import numpy as np
import orbax.checkpoint as ocp

from csm_jax import atomic
from csm_jax import sharding
from csm_jax import workdir as workdir_lib

MANIFEST = "manifest.json"
# config fields (prefixes) that decide the shapes of a model's arrays
MODEL_FIELDS = ("model.", "vae.", "data.dataset", "data.dim", "data.image_size", "data.source",
                "data.path")


class ConfigMismatchError(ValueError):
  """A checkpoint holds arrays of other shapes than the model the config builds."""


class NoSpaceError(workdir_lib.WorkdirError):
  """The disk filled up during a save; the partial save was removed."""


def _is_no_space(error: BaseException) -> bool:
  seen = 0
  while error is not None and seen < 10:
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
      return True
    if "No space left on device" in str(error) or "ENOSPC" in str(error):
      return True
    error, seen = error.__cause__ or error.__context__, seen + 1
  return False


def _drop_closed_loop_reports(hook):
  """An unraisable-exception hook that drops RuntimeError('Event loop is closed').

  Orbax runs each checkpoint read in an asyncio loop of its own and closes it as soon as
  one array read fails (a truncated file); TensorStore then completes the other reads
  of that step and its callbacks find the loop closed, which Python would print as one
  traceback per array (dozens) although the error itself is reported and handled.
  Every other unraisable exception goes to `hook`.
  """
  def quiet(unraisable):
    e = unraisable.exc_value
    if isinstance(e, RuntimeError) and str(e) == "Event loop is closed":
      return
    hook(unraisable)
  quiet.csm_jax_quiet = True
  return quiet


def _install_quiet_hook():
  if not getattr(sys.unraisablehook, "csm_jax_quiet", False):
    sys.unraisablehook = _drop_closed_loop_reports(sys.unraisablehook)


def _damage(step_dir: str, error: Exception) -> str:
  """Why a step directory could not be read, for the warning that skips it."""
  files = [f for _, _, fs in os.walk(step_dir) for f in fs]
  if not files:
    return "an empty step directory (a save that never finished)"
  detail = f"{type(error).__name__}: {str(error)[:200]}"
  if isinstance(error, FileNotFoundError):
    return f"partly written, files are missing ({detail})"
  return f"truncated or corrupt files ({detail})"


def model_fields(config) -> dict:
  """{field: value} of the config fields that shape the model (MODEL_FIELDS)."""
  out = {}

  def walk(node, prefix):
    for k, v in node.items():
      if isinstance(v, dict):
        walk(v, prefix + k + ".")
      elif any((prefix + k).startswith(p) for p in MODEL_FIELDS):
        out[prefix + k] = v
  walk(json.loads(config.to_json_best_effort()), "")
  return out


def _key_name(k) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(k, attr):
      return str(getattr(k, attr))
  return str(k)


def flat_arrays(tree) -> dict:
  """{'a/b/c': leaf} of a pytree (attribute, dict and sequence keys alike)."""
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {"/".join(_key_name(k) for k in path): leaf for path, leaf in leaves}


def _host(leaf) -> np.ndarray:
  if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
    leaf = leaf.addressable_data(0)   # replicated: every process holds the whole array
  a = np.asarray(jax.device_get(leaf))
  return a if a.flags.c_contiguous else a.copy(order="C")   # (ascontiguousarray: ndim >= 1)


def _crc(a: np.ndarray) -> int:
  return zlib.crc32(a.tobytes()) if a.size else 0


def manifest(step: int, state, fields: dict = None) -> dict:
  """The manifest of a saved state (the module docstring)."""
  arrays = {}
  for path, leaf in flat_arrays(state).items():
    a = _host(leaf)
    arrays[path] = {"shape": list(a.shape), "dtype": str(a.dtype), "crc32": _crc(a)}
  fields = fields or {}
  return {"format": 1, "step": int(step), "arrays": arrays, "model_fields": fields,
          "model_fields_sha256": hashlib.sha256(
              json.dumps(fields, sort_keys=True).encode()).hexdigest()}


def _show(v):
  return tuple(v) if isinstance(v, list) else v


def _fit_problems(like, man: dict) -> list:
  """Differences between the arrays of `like` (what the model being built needs) and a
  manifest: under each top-level part of `like`, the same paths, shapes and dtypes."""
  want = flat_arrays(like)
  parts = {p.split("/", 1)[0] for p in want}
  have = {p: v for p, v in man["arrays"].items() if p.split("/", 1)[0] in parts}
  problems = []
  for path in sorted(set(want) | set(have)):
    if path not in have:
      problems.append(f"array {path}: not in the checkpoint")
    elif path not in want:
      problems.append(f"array {path}: in the checkpoint, not in this model")
    else:
      a, saved = want[path], have[path]
      shape, dtype = tuple(getattr(a, "shape", ())), str(getattr(a, "dtype", ""))
      if shape != tuple(saved["shape"]) or (dtype and dtype != saved["dtype"]):
        problems.append(f"array {path}: checkpoint {tuple(saved['shape'])} {saved['dtype']}, "
                        f"model {shape} {dtype}")
  return problems


def _verify(restored, man: dict):
  """The path of the first restored array whose bytes differ from the manifest's CRC."""
  for path, leaf in flat_arrays(restored).items():
    entry = man["arrays"].get(path)
    if entry is not None and _crc(_host(leaf)) != entry["crc32"]:
      return path
  return None


def _shape_counts(tree):
  return collections.Counter(tuple(getattr(a, "shape", ())) for a in jax.tree.leaves(tree))


class Checkpointer:
  """A thin wrapper around `ocp.CheckpointManager` for one train-state pytree."""

  def __init__(self, directory: str, keep: int = 3, create: bool = True,
               fields: dict = None):
    """`create=False`: a reader (eval, sample) of a directory that must exist; it never
    creates, deletes or cleans up anything there, so it may run beside a trainer.
    `fields`: the config fields that shape the model (`model_fields`), recorded in each
    manifest and compared with it when the shapes do not fit."""
    self.fields = fields or {}
    if keep < 1:
      raise ValueError(f"training.keep_checkpoints must be >= 1, got {keep}")
    self.directory = os.path.abspath(directory)
    if not create and not os.path.isdir(self.directory):
      raise FileNotFoundError(f"no checkpoint in {self.directory}; train first (--mode=train)")
    self._keep = keep
    self._writer = create
    _install_quiet_hook()
    self._mgr = self._manager()
    self.skipped = []   # (step, reason) of damaged checkpoints passed over by a restore

  def _manager(self):
    # Only the trainer (which holds the workdir lock) removes the temporary directories
    # of unfinished saves: a reader doing so could delete a running trainer's save.
    options = ocp.CheckpointManagerOptions(max_to_keep=self._keep, create=self._writer,
                                           cleanup_tmp_directories=self._writer,
                                           enable_async_checkpointing=False)
    return ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self):
    return self._mgr.latest_step()

  def save(self, step: int, state):
    """Saves `step` with its manifest. A full disk on the way raises NoSpaceError (one
    line naming the newest intact checkpoint) after removing the partial save."""
    try:
      self._mgr.save(step, args=ocp.args.StandardSave(state), force=True)
      self._mgr.wait_until_finished()
      if sharding.is_main_process():
        atomic.write_json(os.path.join(self.directory, str(step), MANIFEST),
                          manifest(step, state, self.fields), indent=None)
    except Exception as e:  # pylint: disable=broad-except
      if not _is_no_space(e):
        raise
      self._remove_partial(step)
      intact = [s for s in self._steps_on_disk() if s != step]
      left = (f"checkpoint {intact[0]} is intact" if intact else "no checkpoint was written "
              "before it")
      raise NoSpaceError(f"no space left in {os.path.dirname(self.directory)}: checkpoint "
                         f"{step} not written; {left}. Free space and run the same command "
                         "again to resume") from None

  def _remove_partial(self, step):
    """Removes what an unfinished save of `step` left (its temporary or final directory)."""
    if not sharding.is_main_process():
      return
    for name in os.listdir(self.directory):
      if name == str(step) or name.startswith(f"{step}.orbax-checkpoint-tmp"):
        shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)
    try:
      self._mgr.close()
    except Exception:  # pylint: disable=broad-except  (its own state may be half-written)
      pass
    self._mgr = self._manager()

  def _manifest(self, step):
    """The step's manifest; None for a step saved without one (an older version)."""
    path = os.path.join(self.directory, str(step), MANIFEST)
    if not os.path.exists(path):
      return None
    with open(path, "rb") as f:
      man = json.loads(f.read().decode("utf-8"))
    if not isinstance(man, dict) or not isinstance(man.get("arrays"), dict):
      raise ValueError(f"{path} is not a checkpoint manifest")
    return man

  def _mismatch(self, step, problems, man):
    fields = (man or {}).get("model_fields") or {}
    differ = [f"{k}: checkpoint {_show(fields.get(k))}, config {_show(self.fields.get(k))}"
              for k in sorted(set(fields) | set(self.fields))
              if k in fields and k in self.fields and fields.get(k) != self.fields.get(k)]
    what = "; ".join(differ) if differ else "; ".join(problems[:3]) + (
        f" (and {len(problems) - 3} more)" if len(problems) > 3 else "")
    return ConfigMismatchError(
        f"config mismatch: the checkpoint {self.directory}/{step} does not fit the model "
        f"built from this config ({what}); run with the config and --config.* overrides it "
        "was trained with (the workdir's config.json)")

  def _steps_on_disk(self):
    try:
      names = os.listdir(self.directory)
    except FileNotFoundError:
      return []
    return sorted((int(n) for n in names if n.isdigit()), reverse=True)

  def _item_path(self, step):
    return os.path.join(self.directory, str(step), "default")  # the manager's one item

  def _restore_first_good(self, like, read):
    """read(step) of the newest step that reads back and matches its manifest; damaged
    newer ones are skipped, and a step removed while it is read (rotation by a trainer
    beside this reader) is passed over for the newest one left."""
    if not self._steps_on_disk():
      raise FileNotFoundError(f"no checkpoint in {self.directory}; train first (--mode=train)")
    tried = set()
    while True:
      steps = [s for s in self._steps_on_disk() if s not in tried]
      if not steps:
        break
      step = steps[0]
      tried.add(step)
      step_dir = os.path.join(self.directory, str(step))
      try:  # the item's own handler: it raises on damage (the step-level reader warns)
        meta = ocp.PyTreeCheckpointHandler().metadata(epath.Path(self._item_path(step)))
        meta = getattr(meta, "tree", meta)            # its tree of array metadata
        man = self._manifest(step)
      except Exception as e:  # pylint: disable=broad-except  (missing or unreadable files)
        if not os.path.isdir(step_dir):
          continue                                    # removed by a trainer's rotation
        self._skip(step, _damage(step_dir, e))
        continue
      if not isinstance(meta, dict) or not jax.tree.leaves(meta):
        self._skip(step, "no arrays in it (a partly written step directory)")
        continue
      if like is not None:
        if man is not None:
          problems = _fit_problems(like, man)
          if problems:
            raise self._mismatch(step, problems, man)
        elif not _shape_counts(like) <= _shape_counts(meta):
          raise self._mismatch(step, ["its arrays have other shapes"], None)
      try:
        restored = read(step)
      except Exception as e:  # pylint: disable=broad-except  (truncated or corrupt arrays)
        if not os.path.isdir(step_dir):
          continue
        self._skip(step, _damage(step_dir, e))
        continue
      if man is None:
        logging.warning("checkpoint %s has no %s (saved by an older version): its arrays "
                        "are not verified", step_dir, MANIFEST)
      else:
        bad = _verify(restored, man)
        if bad is not None:
          self._skip(step, f"checksum mismatch in array {bad}: its bytes changed after the "
                     "save")
          continue
      return step, restored
    raise FileNotFoundError(f"every checkpoint in {self.directory} is damaged: {self.skipped}")

  def _skip(self, step, reason):
    self.skipped.append((step, reason))
    logging.warning("skipping damaged checkpoint %s/%s (%s)", self.directory, step, reason)

  def quarantine_skipped(self):
    """Moves the damaged checkpoints found by a restore to checkpoints.damaged/."""
    if not self.skipped:
      return
    if sharding.is_main_process():  # multi-host: one process moves, the others wait
      target = self.directory.rstrip("/") + ".damaged"
      os.makedirs(target, exist_ok=True)
      for step, _ in self.skipped:
        src = os.path.join(self.directory, str(step))
        if os.path.exists(src):
          dst = os.path.join(target, f"{step}-{time.strftime('%Y%m%d-%H%M%S')}")
          shutil.move(src, dst)
          logging.warning("moved damaged checkpoint %s to %s", src, dst)
    sharding.sync("csm_jax_quarantine_damaged_checkpoints")
    self._mgr.close()
    self._mgr = self._manager()

  def restore_latest(self, like):
    """The newest readable checkpoint with the shapes, dtypes and shardings of `like`
    (`like` itself when there is none); damaged newer ones are moved aside."""
    if not self._mgr.all_steps():
      return like
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    _, state = self._restore_first_good(
        like, lambda step: self._mgr.restore(step, args=ocp.args.StandardRestore(abstract)))
    self.quarantine_skipped()
    return state

  def restore_latest_partial(self, target: dict):
    """(step, fields): only the top-level fields of the saved state named in `target` (a
    dict of abstract arrays with shardings), from the newest readable checkpoint: e.g.
    the EMA parameters without the optimizer state. Read-only: nothing is moved."""
    restore_args = ocp.checkpoint_utils.construct_restore_args(target)
    read = lambda step: ocp.PyTreeCheckpointer().restore(
        self._item_path(step), args=ocp.args.PyTreeRestore(
            item=target, restore_args=restore_args, partial_restore=True))
    return self._restore_first_good(target, read)

  def close(self):
    self._mgr.wait_until_finished()
    self._mgr.close()


def restore_partial(directory: str, target: dict, keep: int = 3, fields: dict = None):
  """(step, fields) of the newest readable checkpoint in `directory`, read-only: only
  the top-level fields named in `target` (`Checkpointer.restore_latest_partial`), each
  in full. `fields`: `model_fields(config)`, to name what differs on a mismatch."""
  ckpt = Checkpointer(directory, keep, create=False, fields=fields)
  try:
    return ckpt.restore_latest_partial(target)
  finally:
    ckpt.close()
