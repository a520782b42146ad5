"""Orbax checkpoints: keep the last K, written atomically, restored onto the mesh.

Restoring survives damage: the newest checkpoint that reads back is used, and each
newer one that does not is skipped with a warning naming it and why (training moves
it aside to checkpoints.damaged/ so that it is not overwritten or retried). A checkpoint
whose arrays do not have the shapes of the model built from the config is a config
mismatch, not damage, and is reported as such.

Multi-host: every process calls save and restore with the same (replicated) state;
orbax writes each array once and process 0 commits the step, so the directory must be
one that all hosts see at the same path (NFS, Filestore, a gcsfuse mount).
"""

import collections
import os
import shutil
import sys
import time

from absl import logging
from etils import epath
import jax
import orbax.checkpoint as ocp

from csm_jax import sharding


class ConfigMismatchError(ValueError):
  """A checkpoint holds arrays of other shapes than the model the config builds."""


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


def _shape_counts(tree):
  return collections.Counter(tuple(getattr(a, "shape", ())) for a in jax.tree.leaves(tree))


class Checkpointer:
  """A thin wrapper around `ocp.CheckpointManager` for one train-state pytree."""

  def __init__(self, directory: str, keep: int = 3, create: bool = True):
    """`create=False`: a reader (eval, sample) of a directory that must exist; it never
    creates, deletes or cleans up anything there, so it may run beside a trainer."""
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
    self._mgr.save(step, args=ocp.args.StandardSave(state), force=True)
    self._mgr.wait_until_finished()

  def _item_path(self, step):
    return os.path.join(self.directory, str(step), "default")  # the manager's one item

  def _restore_first_good(self, like, read):
    """read(step) of the newest step that reads back; damaged newer ones are skipped."""
    steps = sorted(self._mgr.all_steps(), reverse=True)
    if not steps:
      raise FileNotFoundError(f"no checkpoint in {self.directory}; train first (--mode=train)")
    for step in steps:
      try:  # the item's own handler: it raises on damage (the step-level reader warns)
        meta = ocp.PyTreeCheckpointHandler().metadata(epath.Path(self._item_path(step)))
        meta = getattr(meta, "tree", meta)            # its tree of array metadata
      except Exception as e:  # pylint: disable=broad-except  (missing or unreadable files)
        self._skip(step, _damage(os.path.join(self.directory, str(step)), e))
        continue
      if not isinstance(meta, dict) or not jax.tree.leaves(meta):
        self._skip(step, "no arrays in it (a partly written step directory)")
        continue
      if like is not None and not _shape_counts(like) <= _shape_counts(meta):
        raise ConfigMismatchError(
            f"the checkpoint {self.directory}/{step} does not fit the model built from this "
            "config (its arrays have other shapes); run with the config and --config.* "
            "overrides it was trained with (the workdir's config.json)")
      try:
        return step, read(step)
      except Exception as e:  # pylint: disable=broad-except  (truncated or corrupt arrays)
        self._skip(step, _damage(os.path.join(self.directory, str(step)), e))
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


def restore_partial(directory: str, target: dict, keep: int = 3):
  """(step, fields) of the newest readable checkpoint in `directory`, read-only: only
  the top-level fields named in `target` (`Checkpointer.restore_latest_partial`)."""
  ckpt = Checkpointer(directory, keep, create=False)
  try:
    return ckpt.restore_latest_partial(target)
  finally:
    ckpt.close()
