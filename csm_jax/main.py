"""Command-line entry point: flags and a dispatch to the library.

  python -m csm_jax.main --config=configs/mnist_made.py --workdir=/tmp/w [--mode=train|eval|sample|export|restore]
  overrides: --config.training.num_steps=300 --config.training.batch_size=64 ...
"""

import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from csm_jax import cli

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Path to a config file (configs/*.py).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and samples.")
flags.DEFINE_enum("mode", "train", ["train", "eval", "sample", "export", "restore"],
                  "train (or resume); eval: test loss and NLL of the latest checkpoint; "
                  "sample; export: the EMA parameters and the config alone, to WORKDIR/export; "
                  "restore: corrupt test images as config.restore says and restore them.")
flags.DEFINE_bool("multihost", False, "Call jax.distributed.initialize() (TPU pods, multi-node "
                  "GPU): one process per host, all with the same command.")
flags.DEFINE_string("coordinator_address", None, "--multihost: host:port of process 0 (default: "
                    "$JAX_COORDINATOR_ADDRESS, or detected on Cloud TPU, SLURM, Open MPI).")
flags.DEFINE_integer("num_processes", None, "--multihost: number of processes (default: detected).")
flags.DEFINE_integer("process_id", None, "--multihost: this process's index in 0..num_processes-1 "
                     "(default: detected).")
flags.DEFINE_string("export_dir", None, "--mode=export: where to write (default WORKDIR/export).")
flags.DEFINE_bool("allow_config_change", False, "Train on a workdir whose recorded config "
                  "differs in model/data/optimization fields (the change is recorded).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.get_absl_handler().addFilter(cli.QuietLibraries())
  import jax  # pylint: disable=g-import-not-at-top
  if FLAGS.multihost:
    from csm_jax import sharding  # pylint: disable=g-import-not-at-top
    sharding.initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes,
                                    FLAGS.process_id)
  elif any(f is not None for f in (FLAGS.coordinator_address, FLAGS.num_processes,
                                   FLAGS.process_id)):
    raise app.UsageError("--coordinator_address, --num_processes and --process_id need "
                         "--multihost")
  logging.info("JAX %s, backend %s, %d devices (%d local), process %d/%d", jax.__version__,
               jax.default_backend(), jax.device_count(), jax.local_device_count(),
               jax.process_index(), jax.process_count())
  from csm_jax import checkpoints, config_base, data, inference, train, workdir  # pylint: disable=g-import-not-at-top
  try:
    overrides = config_base.command_line_overrides(sys.argv[1:])
    if config_base.is_vae_config(FLAGS.config) and FLAGS.mode != "export":  # csm_jax/vae
      from csm_jax.vae import entry  # pylint: disable=g-import-not-at-top
      entry.run(FLAGS.mode, FLAGS.config, FLAGS.workdir, overrides, FLAGS.allow_config_change)
    elif FLAGS.mode == "train":
      train.train_and_evaluate(FLAGS.config, FLAGS.workdir, FLAGS.allow_config_change)
    elif FLAGS.mode == "export":
      from csm_jax import export  # pylint: disable=g-import-not-at-top
      export.export_workdir(workdir.eval_config(FLAGS.workdir, FLAGS.config, overrides),
                            FLAGS.workdir, FLAGS.export_dir)
    else:  # the workdir's recorded config, with evaluation/sampling overrides only
      config = workdir.eval_config(FLAGS.workdir, FLAGS.config, overrides)
      if FLAGS.mode == "restore":
        from csm_jax.restore import entry as restore_entry  # pylint: disable=g-import-not-at-top
        run = restore_entry.restore_workdir
      else:
        run = inference.evaluate_workdir if FLAGS.mode == "eval" else inference.sample_workdir
      run(config, FLAGS.workdir)
  except (train.Interrupted, KeyboardInterrupt) as e:  # SIGINT / SIGTERM: a clean stop
    workdir.exit_stopped(e, FLAGS.mode, FLAGS.workdir, jax.process_count())
  except (workdir.WorkdirError, checkpoints.ConfigMismatchError, FileNotFoundError,
          FloatingPointError, config_base.ConfigError, data.DataNotFoundError,
          data.CorruptDataError) as e:
    logging.error("%s", e)  # one clear line (a problem with the inputs, not a crash)
    sys.exit(1)


if __name__ == "__main__":
  app.run(main, flags_parser=lambda argv: cli.parse_flags(FLAGS, argv))
