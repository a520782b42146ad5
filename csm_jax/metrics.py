"""Metrics to DIR/metrics.jsonl and TensorBoard (tensorboardX, no TensorFlow); ETA."""

import datetime
import json
import os
import time
from typing import Optional

import jax
import numpy as np


class MetricWriter:
  """Appends one JSON object per call; on resume drops rows past the resumed step (all
  rows when a run starts again from step 0), so no step is written twice.

  With several processes (multi-host) only process 0 writes; the others' writers do
  nothing (every process computes the same replicated metrics)."""

  def __init__(self, workdir: str, resume_step: int = 0):
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._f = self._tb = None
    if jax.process_index() != 0:
      return
    if os.path.exists(self.path):
      keep = []
      with open(self.path) as f:
        for line in f:
          try:
            row = json.loads(line)
          except json.JSONDecodeError:
            continue  # a line cut by a kill
          if resume_step > 0 and row.get("step", 0) <= resume_step:
            keep.append(line if line.endswith("\n") else line + "\n")
      with open(self.path + ".tmp", "w") as f:
        f.writelines(keep)
      os.replace(self.path + ".tmp", self.path)
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
    self._f.write(json.dumps(row) + "\n")
    self._f.flush()
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
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
      mpl_image.imsave(f, image[..., 0] if image.shape[-1] == 1 else image, format="png",
                       cmap="gray", vmin=0.0, vmax=1.0)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
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
