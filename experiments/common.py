"""Helpers shared by experiment scripts: flags with config overrides, timing, JSON output.

Experiment flags are argparse flags for what is the experiment's own (output directory,
which datasets, how many evaluation points); everything that is a config field is set
the way `python -m csm_jax.main` sets it, with ``--config.FIELD=value`` (and, where an
experiment trains several models, ``--NAME.FIELD=value`` for one of them only).

This module imports no JAX at import time: every experiment defines and parses its flags
(`parser`, `parse`, `parse_early`) before it imports JAX, so ``--help`` answers at once.
Every experiment writes into its ``--out`` directory: results.json (the results, with the
arguments and the machine inside) and its pictures.
"""

import argparse
import json
import os
import sys
import textwrap
import time
from typing import Optional, Sequence

RESULTS = "results.json"


def data_path(name: str) -> str:
  """A prepared .npz file (docs/usage.md, python -m csm_jax.data.make_npz): in
  $CSM_DATA_DIR, else ./data."""
  return os.path.join(os.environ.get("CSM_DATA_DIR", "data"), name)


CIFAR_NPZ = (data_path("cifar10_train_first4000.npz"), data_path("cifar10_test_first1000.npz"))
CELEBA_NPZ = data_path("celeba32_first5000.npz")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
  """Keeps the description's layout and appends each flag's default to its help."""

  def _get_help_string(self, action):
    text = action.help or ""
    default = action.default
    if ("default" not in text.lower() and default not in (None, False, argparse.SUPPRESS)
        and not action.required and action.option_strings):
      text += " (default: %(default)s)" if default != "" else " (default: empty)"
    return text


def parser(doc: str, prefixes: Sequence[str] = ("config",)) -> argparse.ArgumentParser:
  """The experiment's ArgumentParser: `doc` (its module docstring) as description, each
  flag's default in --help, and an epilog naming the --PREFIX.FIELD=value overrides."""
  names = ", ".join(f"--{p}.FIELD=value" for p in prefixes)
  epilog = ((f"Config fields are set with {names} (as python -m csm_jax.main "
             "--config.FIELD=value; an unknown field is an error)"
             + (f"; --NAME.FIELD=value sets a field of model NAME only "
                f"({', '.join(prefixes[1:])})" if len(prefixes) > 1 else "") + ". ")
            if prefixes else "")
  epilog += "Results go to the --out directory: results.json and the pictures."
  script = os.path.splitext(os.path.basename(sys.argv[0] or ""))[0]
  prog = f"python -m experiments.{script}" if script and script != "__main__" else None
  return argparse.ArgumentParser(prog=prog, description=doc.strip(),
                                 epilog=textwrap.fill(epilog, 79),
                                 formatter_class=HelpFormatter)


def parse(parser: argparse.ArgumentParser, argv=None, prefixes: Sequence[str] = ("config",)):
  """(args, overrides): argparse flags, and {prefix: ['a.b=value', ...]} from the
  ``--PREFIX.a.b=value`` flags; anything else is an error naming it."""
  args, rest = parser.parse_known_args(argv)
  overrides = {p: [] for p in prefixes}
  bad = []
  it = iter(rest)
  for item in it:
    prefix = item[2:].split(".", 1)[0] if item.startswith("--") else None
    if prefix not in overrides or "." not in item:
      bad.append(item)
      continue
    body = item[len(prefix) + 3:]
    if "=" not in body:  # --config.a.b value
      body = f"{body}={next(it, '')}"
    overrides[prefix].append(body)
  if bad:
    parser.error(f"unrecognized arguments: {' '.join(bad)} (config fields are set with "
                 f"{', '.join('--' + p + '.FIELD=value' for p in prefixes)})")
  return args, overrides


def parse_early(module_name: str, parse_fn):
  """Parses sys.argv with `parse_fn` when the experiment runs as a script (module_name ==
  '__main__'), so that --help and flag errors answer before JAX is imported; the
  experiment's main() parses again (cheap)."""
  if module_name == "__main__":
    parse_fn(sys.argv[1:])


def helper_module(module_name: str, name: str):
  """Called by helper modules: running one as a script says so and exits 1."""
  if module_name == "__main__":
    print(f"experiments.{name} is a helper module, not an experiment (the experiments: "
          "python -m experiments.NAME --help, docs/usage.md)", file=sys.stderr)
    sys.exit(1)


def apply(config, overrides: Sequence[str]):
  """The config with 'a.b=value' overrides applied; an unknown field or a value of the
  wrong type is one line naming it (SystemExit)."""
  from csm_jax import config_base  # pylint: disable=g-import-not-at-top
  try:
    return config_base.override(config, overrides)
  except (AttributeError, TypeError, ValueError) as e:
    raise SystemExit(f"config override: {e}") from None


def block(tree):
  import jax  # pylint: disable=g-import-not-at-top
  return jax.tree.map(lambda a: a.block_until_ready() if hasattr(a, "block_until_ready") else a, tree)


def time_interleaved(fns: dict, repeats: int = 10, inner: int = 3) -> dict:
  """Median seconds per call of each (already compiled) thunk, timed round-robin.

  Interleaving makes the ratios robust to machine noise (other processes, clocks).
  """
  times = {k: [] for k in fns}
  for _ in range(repeats):
    for k, f in fns.items():
      t0 = time.perf_counter()
      for _ in range(inner):
        out = f()
      block(out)
      times[k].append((time.perf_counter() - t0) / inner)
  import numpy as np  # pylint: disable=g-import-not-at-top
  return {k: float(np.median(v)) for k, v in times.items()}, times


def xla_flops(compiled) -> Optional[float]:
  """Floating-point operations of one call of a compiled function, from XLA's cost
  analysis (None where the backend does not report them)."""
  try:
    ca = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except
    return None
  if isinstance(ca, (list, tuple)):
    ca = ca[0] if ca else None
  if not ca or "flops" not in ca:
    return None
  return float(ca["flops"])


def write_json(path: str, obj: dict):
  """Writes obj as JSON, atomically (a temporary file renamed over `path`)."""
  os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
  with open(path + ".tmp", "w") as f:
    json.dump(obj, f, indent=2)
  os.replace(path + ".tmp", path)


def results_path(out: str) -> str:
  """OUT/results.json (OUT, the experiment's --out, must be a directory)."""
  if os.path.isfile(out):
    raise SystemExit(f"--out {out} is a file; --out is a directory (it gets {RESULTS} and "
                     "the pictures)")
  os.makedirs(out, exist_ok=True)
  return os.path.join(out, RESULTS)


def write_results(out: str, obj: dict, args=None, overrides=None) -> str:
  """Writes OUT/results.json: obj plus 'arguments' (the flags), 'config_overrides' and
  'machine' where obj does not have them; returns the path."""
  obj = dict(obj)
  if args is not None and "args" not in obj:
    obj.setdefault("arguments", dict(vars(args)))
  if overrides is not None:
    obj.setdefault("config_overrides", overrides)
  if "machine" not in obj:
    obj["machine"] = machine()
  path = results_path(out)
  write_json(path, obj)
  return path


def machine() -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  d = jax.devices()[0]
  return {"backend": jax.default_backend(), "device": getattr(d, "device_kind", str(d)),
          "device_count": jax.device_count(), "jax": jax.__version__, "cpu_count": os.cpu_count()}


def is_set(overrides: Sequence[str], field: str) -> bool:
  """Whether the 'a.b=value' overrides set `field` ('a.b')."""
  return any(o.split("=", 1)[0] == field for o in overrides)


def follow_num_steps(config, overrides: Sequence[str], log_reports: int):
  """Warm-up (min(100, steps/10 + 1)) and logging cadence (about `log_reports` lines)
  derived from training.num_steps, unless the overrides set them; returns the config."""
  n = config.training.num_steps
  if not is_set(overrides, "optim.warmup_steps"):
    config.optim.warmup_steps = min(100, n // 10 + 1)
  if not is_set(overrides, "training.log_every"):
    config.training.log_every = max(1, n // log_reports)
  return config


PARAMS = {"ema": "ema_params", "raw": "params"}


def train_or_restore(name: str, config, out_dir: str, log, workdir=None, arrays=None,
                     params: str = "ema"):
  """(model, parameters, config, info) of one model an experiment needs.

  `params`: 'ema' (the EMA of the iterates, what eval and sampling use) or 'raw' (the
  last iterate: for short runs, where an EMA with a long horizon still remembers the
  initialization).

  With `workdir` (a run of `python -m csm_jax.main`): its recorded config and latest
  checkpoint, nothing trained. Otherwise trained by the library's loop in
  OUT_DIR/models/NAME, which a rerun resumes (or skips, when finished); `arrays`
  replaces the config's dataset (e.g. a training split with held-out images removed).
  """
  # pylint: disable=g-import-not-at-top
  from csm_jax import checkpoints, config_base, inference, sharding, train
  from csm_jax import workdir as workdir_lib
  if params not in PARAMS:
    raise ValueError(f"params must be one of {sorted(PARAMS)}, got {params!r}")
  bad_workdir = (OSError, config_base.ConfigError, workdir_lib.WorkdirError,
                 checkpoints.ConfigMismatchError)
  if workdir:
    try:
      config = config_base.load_workdir_config(workdir)
      inf = inference.build(config)
      values, step = inference.restore(inf, workdir, PARAMS[params])
    except bad_workdir as e:   # one line naming the model and the directory
      raise SystemExit(f"[{name}] work directory {workdir}: {e}") from None
    log(f"[{name}] restored step {step} ({params} parameters) from {workdir}")
    return inf.model, values, config, {"workdir": workdir, "steps": step, "trained": False,
                                       "params": params}
  # OUT/models/NAME is a work directory like python -m csm_jax.main's: locked while it
  # trains, its config recorded once training starts (so that --NAME_workdir can reuse
  # it), and a rerun that changes the model, data or optimization fields refused.
  path = os.path.join(out_dir, "models", name)
  try:
    with workdir_lib.training_lock(path):
      changes = workdir_lib.check_config(path, config)
      s = train.setup(config, arrays=arrays)

      def record():
        if sharding.is_main_process():
          workdir_lib.write_record(path, config, changes)
      state, info = train.train_loop(s, workdir=path, log=log, label=name, on_start=record)
  except (config_base.ConfigError, workdir_lib.WorkdirError) as e:
    raise SystemExit(f"[{name}] {path}: {e}") from None
  info = {k: v for k, v in info.items() if k != "history"}
  values = state.ema_params if params == "ema" else state.params
  return s.model, values, config, dict(info, workdir=path, trained=True, params=params)


def add_sample_scoring_flags(p):
  """The flags of the scoring every row of experiments.mnist_sample_quality shares
  (sample count, reference set, classifier, figure, seed); experiments.
  mnist_workdir_quality uses the same, so that its numbers compare with that one's."""
  p.add_argument("--out", required=True, help="output directory")
  p.add_argument("--num_samples", type=int, default=200, help="samples per row")
  p.add_argument("--num_reference", type=int, default=5000,
                 help="test images of the reference statistics (the floor row uses the "
                      "next --num_samples test images)")
  p.add_argument("--num_dims", type=int, default=None,
                 help="sample only the first k dimensions (smoke tests)")
  p.add_argument("--classifier_dir", default=None,
                 help="cache of the FID classifier (default OUT/classifier)")
  p.add_argument("--classifier_steps", type=int, default=2000,
                 help="training steps of the FID classifier")
  p.add_argument("--classifier_channels", default="32,64",
                 help="conv channels of the FID classifier, comma-separated")
  p.add_argument("--classifier_features", type=int, default=128,
                 help="width of the classifier's feature layer (the FID features)")
  p.add_argument("--num_show", type=int, default=16, help="samples per row of the figure")
  p.add_argument("--seed", type=int, default=0, help="random seed")


helper_module(__name__, "common")
