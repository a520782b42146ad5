"""Helpers shared by experiment scripts: timing and JSON output."""

import json
import os
import time

import jax
import numpy as np


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


def write_json(path: str, obj: dict):
  os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
  with open(path, "w") as f:
    json.dump(obj, f, indent=2)


def machine() -> dict:
  d = jax.devices()[0]
  return {"backend": jax.default_backend(), "device": getattr(d, "device_kind", str(d)),
          "device_count": jax.device_count(), "jax": jax.__version__, "cpu_count": os.cpu_count()}
