"""One process of tests/test_multihost.py: `python -m csm_jax.main`, then a restore.

  python -m tests.multihost_worker --restored_out=OUT.npz [python -m csm_jax.main flags]

Runs `csm_jax.main` with the given flags (training, with --multihost through
jax.distributed.initialize), then, in the same process, restores the latest checkpoint
of --workdir with `inference.restore` (the raw parameters and the EMA parameters, from
the workdir's recorded config) and saves them to OUT.npz with the restored step, so the
test can compare what every process read back with a 1-process run.
"""

from absl import app
from absl import flags
import jax
import numpy as np

from csm_jax import main as main_lib

flags.DEFINE_string("restored_out", None, "Where to save the restored parameters (.npz).")
FLAGS = flags.FLAGS


def _flat(prefix, tree):
  from csm_jax import sharding  # pylint: disable=g-import-not-at-top
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {prefix + jax.tree_util.keystr(path): sharding.to_host(leaf) for path, leaf in leaves}


def run(argv):
  main_lib.main(argv)   # trains (and initializes jax.distributed with --multihost)
  from csm_jax import config_base, inference  # pylint: disable=g-import-not-at-top
  inf = inference.build(config_base.load_workdir_config(FLAGS.workdir))
  params, step = inference.restore(inf, FLAGS.workdir, "params")
  ema, ema_step = inference.restore(inf, FLAGS.workdir, "ema_params")
  assert step == ema_step, (step, ema_step)
  np.savez(FLAGS.restored_out, step=step, process_index=jax.process_index(),
           process_count=jax.process_count(), device_count=jax.device_count(),
           **_flat("params", params), **_flat("ema_params", ema))


if __name__ == "__main__":
  flags.mark_flag_as_required("restored_out")
  app.run(run)
