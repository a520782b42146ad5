"""One process of tests/test_multihost.py: `python -m csm_jax.main`, more training, restores.

  python -m tests.multihost_worker --restored_out=OUT.npz [--host_pipeline_workdir=W2] \
      [python -m csm_jax.main flags]

1. Runs `csm_jax.main` with the given flags (training; with --multihost it initializes
   jax.distributed): the default input pipeline, the device-resident one on small data.
2. With --host_pipeline_workdir, trains the same config again in this process with
   `train.train_and_evaluate` into W2, with the host pipeline and 2 steps per dispatch
   (checkpoints every 2 steps, no periodic evaluation).
3. Restores the latest checkpoint of each workdir with `inference.restore` (raw and EMA
   parameters, from the workdir's recorded config) and saves them to OUT.npz with the
   restored steps, so the test can compare what every process read back.
"""

from absl import app
from absl import flags
import jax
import numpy as np

from csm_jax import main as main_lib

flags.DEFINE_string("restored_out", None, "Where to save the restored parameters (.npz).")
flags.DEFINE_string("host_pipeline_workdir", None, "Also train with the host pipeline here.")
FLAGS = flags.FLAGS


def _restored(workdir, name):
  from csm_jax import config_base, inference, sharding  # pylint: disable=g-import-not-at-top
  inf = inference.build(config_base.load_workdir_config(workdir))
  out = {}
  for which in ("params", "ema_params"):
    params, step = inference.restore(inf, workdir, which)
    out[f"{name}/step/{which}"] = step
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
      out[f"{name}/{which}{jax.tree_util.keystr(path)}"] = sharding.to_host(leaf)
  return out


def run(argv):
  main_lib.main(argv)
  from csm_jax import config_base, train  # pylint: disable=g-import-not-at-top
  out = _restored(FLAGS.workdir, "device")
  if FLAGS.host_pipeline_workdir:
    config = config_base.override(config_base.load_workdir_config(FLAGS.workdir), [
        "data.pipeline=host", "training.steps_per_dispatch=2", "training.eval_every=0",
        "training.checkpoint_every=2"])   # one dispatch length: one compilation
    train.train_and_evaluate(config, FLAGS.host_pipeline_workdir)
    out.update(_restored(FLAGS.host_pipeline_workdir, "host"))
  np.savez(FLAGS.restored_out, process_index=jax.process_index(),
           process_count=jax.process_count(), device_count=jax.device_count(), **out)


if __name__ == "__main__":
  flags.mark_flag_as_required("restored_out")
  app.run(run)
