"""Metrics to DIR/metrics.jsonl and TensorBoard (tensorboardX, no TensorFlow); ETA."""

import datetime
import json
import os
import time
from typing import Optional

from absl import logging
import jax
import numpy as np

from csm_jax import atomic


def read_rows(path: str):
  """(rows, skipped): the rows of a metrics.jsonl, each a JSON object with an integer
  "step", and the number of other lines (torn by a kill, or foreign) passed over."""
  rows, skipped = [], 0
  with open(path, "rb") as f:
    for raw in f:
      try:
        row = json.loads(raw.decode("utf-8"))
      except (UnicodeDecodeError, ValueError):
        row = None
      if (isinstance(row, dict) and isinstance(row.get("step"), int)
          and not isinstance(row.get("step"), bool)):
        rows.append(row)
      elif raw.strip():
        skipped += 1
  return rows, skipped


class MetricWriter:
  """Appends one JSON object per call (flushed and fsynced); on resume drops rows past
  the resumed step (all rows when a run starts again from step 0), so no step is written
  twice, and torn or foreign lines (counted in a warning).

  With several processes (multi-host) only process 0 writes; the others' writers do
  nothing (every process computes the same replicated metrics)."""

  def __init__(self, workdir: str, resume_step: int = 0):
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._f = self._tb = None
    if jax.process_index() != 0:
      return
    if os.path.exists(self.path):
      rows, skipped = read_rows(self.path)
      if skipped:
        logging.warning("%s: skipped %d torn or foreign line(s)", self.path, skipped)
      keep = [json.dumps(r) + "\n" for r in rows
              if resume_step > 0 and r["step"] <= resume_step]
      atomic.write_text(self.path, "".join(keep))
    self._f = open(self.path, "a")
    try:
      from tensorboardX import SummaryWriter
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
    except ImportError:  # TensorBoard logging is optional
      self._tb = None

  def write(self, step: int, scalars: dict):
    if self._f is None:
      return
    row = {"step": int(step), **{k: float(v) for k, v in scalars.items()}}
    atomic.append_line(self._f, json.dumps(row))  # flushed and fsynced
    if self._tb is not None:
      for k, v in scalars.items():
        self._tb.add_scalar(k, float(v), int(step))

  def write_image(self, step: int, name: str, image) -> Optional[str]:
    """Writes image (H, W, C) in [0, 1] to WORKDIR/samples/NAME_STEP.png (atomically:
    temporary file, fsync, rename) and to TensorBoard; returns the path (None off
    process 0)."""
    if self._f is None:
      return None
    from matplotlib import image as mpl_image  # pylint: disable=g-import-not-at-top
    image = np.clip(np.asarray(image, np.float32), 0.0, 1.0)
    directory = os.path.join(os.path.dirname(self.path), "samples")
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, f"{name}_{int(step):08d}.png")
    with atomic.open_atomic(path, "wb") as f:
      mpl_image.imsave(f, image[..., 0] if image.shape[-1] == 1 else image, format="png",
                       cmap="gray", vmin=0.0, vmax=1.0)
    if self._tb is not None:
      self._tb.add_image(f"samples/{name}", image, int(step), dataformats="HWC")
      self._tb.flush()
    return path

  def close(self):
    if self._f is not None:
      self._f.close()
    if self._tb is not None:
      self._tb.close()


class Progress:
  """Steps per second over the last logging window, and the ETA to num_steps."""

  def __init__(self, start_step: int, num_steps: int):
    self.num_steps = num_steps
    self._last_step, self._last_time = start_step, time.perf_counter()
    self.rate = None

  def update(self, step: int) -> dict:
    now = time.perf_counter()
    self.rate = (step - self._last_step) / max(now - self._last_time, 1e-9)
    self._last_step, self._last_time = step, now
    return {"steps_per_sec": self.rate, "eta_sec": (self.num_steps - step) / max(self.rate, 1e-9)}

  def eta_str(self, step: int) -> str:
    if not self.rate:
      return "?"
    return str(datetime.timedelta(seconds=int((self.num_steps - step) / self.rate)))
