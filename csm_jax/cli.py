"""The command line's plumbing (csm_jax.main holds the flags): the dispatch to the library
(`run`), one line for a config file that does not load or an unknown --config.FIELD, and a
log filter for the libraries' chatter."""

import logging as logging_std
import os
import re
import sys

from absl import app as absl_app
from absl import flags
from absl import logging


class QuietLibraries(logging_std.Filter):
  """Drops INFO chatter from orbax (and other libraries) from our progress log."""

  def filter(self, record):
    if record.levelno >= logging_std.WARNING:
      return True
    # JAX probing for a TPU on a CPU/GPU host is not news.
    return ("orbax" not in record.pathname
            and not str(record.msg).startswith("Unable to initialize backend 'tpu'"))


def config_error(e: Exception, argv) -> str:
  """One line for a config file that does not load or an unknown --config.FIELD."""
  text = " ".join(str(e).replace("\\n", " ").replace("\\'", "'").split())
  overrides = [a.split("=", 1)[0][len("--config."):] for a in argv if a.startswith("--config.")]
  key = (re.findall(r"\w+", text) or ["?"])[0]
  field = next((o for o in overrides if key in o.split(".")), None)
  if isinstance(e, (AttributeError, KeyError)) and field:
    hint = re.search(r'Did you mean "(\w+)"', text)
    return (f"unknown config field {field!r} (--config.{field})"
            + (f". Did you mean {hint.group(1)!r}?" if hint else ""))
  path = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
  if path is None and "--config" in argv[:-1]:
    path = argv[argv.index("--config") + 1]
  while e.__cause__ is not None or (e.__context__ is not None and not e.__suppress_context__):
    e = e.__cause__ or e.__context__
  if path and not os.path.exists(path.split(":")[0]):
    why = "no such file"
  elif isinstance(e, SyntaxError):
    why = f"syntax error at line {e.lineno}: {e.msg}"
  elif isinstance(e, OSError) and e.strerror:
    why = e.strerror
  else:
    why = f"{type(e).__name__}: " + " ".join(str(e).split())
  return f"cannot load config file {path}: {why}"


def parse_flags(FLAGS, argv):  # pylint: disable=invalid-name
  """absl's flag parsing; a config file that does not load, or an unknown config field,
  is one line naming it (exit 1) instead of a traceback, before anything is created."""
  try:
    rest = FLAGS(argv)
    "training" in FLAGS.config  # pylint: disable=pointless-statement  (loads the file now)
    return rest
  except flags.Error as e:  # a bad flag value; for a config file, the traceback's last line
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    print(f"error: {' '.join(lines[:1] + lines[1:][-1:])} (--helpfull lists the flags)",
          file=sys.stderr)
  except Exception as e:  # pylint: disable=broad-except
    print(f"error: {config_error(e, argv)}", file=sys.stderr)
  sys.exit(1)


def run(FLAGS, argv):  # pylint: disable=invalid-name
  """csm_jax.main's body: multi-host start-up, the mode's library call, and one line (exit
  1) for a problem with the inputs; a stop (Ctrl-C, SIGTERM) ends cleanly, resumable."""
  if len(argv) > 1:
    raise absl_app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.get_absl_handler().addFilter(QuietLibraries())
  import jax  # pylint: disable=g-import-not-at-top
  if FLAGS.multihost:
    from csm_jax import sharding  # pylint: disable=g-import-not-at-top
    sharding.initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes,
                                    FLAGS.process_id)
  elif any(f is not None for f in (FLAGS.coordinator_address, FLAGS.num_processes,
                                   FLAGS.process_id)):
    raise absl_app.UsageError("--coordinator_address, --num_processes and --process_id "
                              "need --multihost")
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
