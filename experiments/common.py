"""Helpers shared by experiment scripts: flags with config overrides, timing, JSON output.

Experiment flags are argparse flags for what is the experiment's own (output directory,
which datasets, how many evaluation points); everything that is a config field is set
the way `python -m csm_jax.main` sets it, with ``--config.FIELD=value`` (and, where an
experiment trains several models, ``--NAME.FIELD=value`` for one of them only).
"""

import argparse
import json
import os
import time
from typing import Optional, Sequence

import jax
import numpy as np

from csm_jax import config_base


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


def apply(config, overrides: Sequence[str]):
  """The config with 'a.b=value' overrides applied (unknown fields fail loudly)."""
  return config_base.override(config, overrides)


def block(tree):
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
  os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
  with open(path, "w") as f:
    json.dump(obj, f, indent=2)


def machine() -> dict:
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
  from csm_jax import inference, train  # pylint: disable=g-import-not-at-top
  if params not in PARAMS:
    raise ValueError(f"params must be one of {sorted(PARAMS)}, got {params!r}")
  if workdir:
    config = config_base.load_workdir_config(workdir)
    inf = inference.build(config)
    values, step = inference.restore(inf, workdir, PARAMS[params])
    log(f"[{name}] restored step {step} ({params} parameters) from {workdir}")
    return inf.model, values, config, {"workdir": workdir, "steps": step, "trained": False,
                                       "params": params}
  path = os.path.join(out_dir, "models", name)
  s = train.setup(config, arrays=arrays)
  state, info = train.train_loop(s, workdir=path, log=log, label=name)
  info = {k: v for k, v in info.items() if k != "history"}
  values = state.ema_params if params == "ema" else state.params
  return s.model, values, config, dict(info, workdir=path, trained=True, params=params)
