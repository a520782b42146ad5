"""Command-line entry point: flags and a dispatch to the library.

  python -m csm_jax.main --config=configs/mnist_made.py --workdir=/tmp/w [--mode=train|eval|sample]
  overrides: --config.training.num_steps=300 --config.training.batch_size=64 ...
"""

import logging as logging_std

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Path to a config file (configs/*.py).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and samples.")
flags.DEFINE_enum("mode", "train", ["train", "eval", "sample"], "What to do.")
flags.DEFINE_bool("multihost", False, "Call jax.distributed.initialize() (TPU pods, multi-node GPU).")
flags.mark_flags_as_required(["config", "workdir"])


class _QuietLibraries(logging_std.Filter):
  """Drops INFO chatter from orbax (and other libraries) from our progress log."""

  def filter(self, record):
    return record.levelno >= logging_std.WARNING or "orbax" not in record.pathname


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.get_absl_handler().addFilter(_QuietLibraries())
  import jax  # pylint: disable=g-import-not-at-top
  if FLAGS.multihost:
    jax.distributed.initialize()
  logging.info("JAX %s, backend %s, %d devices (%d local), process %d/%d", jax.__version__,
               jax.default_backend(), jax.device_count(), jax.local_device_count(),
               jax.process_index(), jax.process_count())
  from csm_jax import inference, train  # pylint: disable=g-import-not-at-top
  run = {"train": train.train_and_evaluate, "eval": inference.evaluate_workdir,
         "sample": inference.sample_workdir}[FLAGS.mode]
  run(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
  app.run(main)
