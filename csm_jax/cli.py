"""The command line's plumbing (csm_jax.main holds the flags and the dispatch): one line for
a config file that does not load or an unknown --config.FIELD, and a log filter for the
libraries' chatter."""

import logging as logging_std
import os
import re
import sys

from absl import flags


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
