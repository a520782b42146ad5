"""One process of tests/test_multihost.py: `python -m csm_jax.main`, then a restore.

  python -m tests.multihost_worker --restored_out=OUT.npz [python -m csm_jax.main flags]

Runs `csm_jax.main` with the given flags (training; with --multihost it initializes
jax.distributed first), then, in the same process, restores the latest checkpoint of
--workdir with `inference.restore` (the raw and the EMA parameters, from the workdir's
recorded config) and saves them to OUT.npz with the restored step, so the test can
compare what every process read back.
"""

from absl import app
from absl import flags
import jax
import numpy as np

from csm_jax import main as main_lib

flags.DEFINE_string("restored_out", None, "Where to save the restored parameters (.npz).")
FLAGS = flags.FLAGS


def run(argv):
  main_lib.main(argv)
  from csm_jax import config_base, inference, sharding  # pylint: disable=g-import-not-at-top
  inf = inference.build(config_base.load_workdir_config(FLAGS.workdir))
  out = {}
  for which in ("params", "ema_params"):
    params, step = inference.restore(inf, FLAGS.workdir, which)
    out[f"step/{which}"] = step
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
      out[which + jax.tree_util.keystr(path)] = sharding.to_host(leaf)
  np.savez(FLAGS.restored_out, process_index=jax.process_index(),
           process_count=jax.process_count(), device_count=jax.device_count(), **out)


if __name__ == "__main__":
  flags.mark_flag_as_required("restored_out")
  app.run(run)
