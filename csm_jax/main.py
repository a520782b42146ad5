"""Command-line entry point: flags and a dispatch to the library.

  python -m csm_jax.main --config=configs/mnist_made.py --workdir=/tmp/w [--mode=train|eval|sample|export|restore]
  overrides: --config.training.num_steps=300 --config.training.batch_size=64 ...
"""

from absl import app
from absl import flags
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
  cli.run(FLAGS, argv)


if __name__ == "__main__":
  app.run(main, flags_parser=lambda argv: cli.parse_flags(FLAGS, argv))
