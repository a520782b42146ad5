"""Orbax checkpoints: keep the last K, written atomically, restored onto the mesh."""

import os

import jax
import orbax.checkpoint as ocp


class Checkpointer:
  """A thin wrapper around `ocp.CheckpointManager` for one train-state pytree."""

  def __init__(self, directory: str, keep: int = 3):
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           cleanup_tmp_directories=True,
                                           enable_async_checkpointing=False)
    self._mgr = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self):
    return self._mgr.latest_step()

  def save(self, step: int, state):
    self._mgr.save(step, args=ocp.args.StandardSave(state), force=True)
    self._mgr.wait_until_finished()

  def restore_latest(self, like):
    """Restores the latest checkpoint with the shapes, dtypes and shardings of `like`."""
    step = self._mgr.latest_step()
    if step is None:
      return like
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    try:
      return self._mgr.restore(step, args=ocp.args.StandardRestore(abstract))
    except ValueError as e:
      raise ValueError(
          f"the checkpoint {self.directory}/{step} does not fit the model built from this "
          "config; run with the same config and --config.* overrides it was trained with "
          f"(orbax: {e})") from None

  def restore_latest_partial(self, target: dict) -> dict:
    """Only the top-level fields of the saved state named in `target` (a dict of
    abstract arrays with shardings), from the latest checkpoint: e.g. the EMA
    parameters without the optimizer state."""
    step = self._mgr.latest_step()
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    path = os.path.join(self.directory, str(step), "default")  # the manager's one item
    if not os.path.isdir(path):
      raise FileNotFoundError(f"checkpoint {self.directory}/{step} has no state directory "
                              f"{path}: incomplete or written by another tool")
    restore_args = ocp.checkpoint_utils.construct_restore_args(target)
    try:
      return ocp.PyTreeCheckpointer().restore(
          path, args=ocp.args.PyTreeRestore(item=target, restore_args=restore_args,
                                            partial_restore=True))
    except ValueError as e:
      raise ValueError(
          f"the checkpoint {self.directory}/{step} does not fit the model built from this "
          "config; run with the same config and --config.* overrides it was trained with "
          f"(orbax: {e})") from None

  def close(self):
    self._mgr.wait_until_finished()
    self._mgr.close()
