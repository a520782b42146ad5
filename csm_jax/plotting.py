"""PNG output: image grids and 2-D scatter plots (matplotlib).

The backend is left to matplotlib (Agg without a display, inline in a notebook), so
importing the library never takes plots away from a notebook.
"""

import math

import matplotlib.pyplot as plt
import matplotlib.ticker
import numpy as np

from csm_jax import atomic


def image_grid(images: np.ndarray, ncols: int = None) -> np.ndarray:
  """(N, H, W, C) in [0, 1] -> one (rows*H, cols*W, C) mosaic with 1-pixel gaps."""
  n, h, w, c = images.shape
  ncols = ncols or int(math.ceil(math.sqrt(n)))
  nrows = int(math.ceil(n / ncols))
  grid = np.ones((nrows * (h + 1) + 1, ncols * (w + 1) + 1, c), np.float32)
  for i in range(n):
    r, q = divmod(i, ncols)
    grid[1 + r * (h + 1):1 + r * (h + 1) + h, 1 + q * (w + 1):1 + q * (w + 1) + w] = images[i]
  return grid


def save_samples(path: str, samples: np.ndarray, data_shape: tuple, title: str = ""):
  """Writes samples as an image grid (image data) or a scatter plot (2-D data)."""
  samples = np.asarray(samples, np.float32)
  fig = plt.figure(figsize=(6, 6))
  if len(data_shape) == 3:
    imgs = np.clip(samples.reshape((-1,) + tuple(data_shape)), 0.0, 1.0)
    grid = image_grid(imgs)
    plt.imshow(grid[..., 0] if grid.shape[-1] == 1 else grid, cmap="gray", vmin=0, vmax=1)
    plt.axis("off")
  else:
    flat = samples.reshape(len(samples), -1)
    plt.scatter(flat[:, 0], flat[:, 1] if flat.shape[1] > 1 else np.zeros(len(flat)), s=2)
  if title:
    plt.title(title)
  try:
    atomic.save_figure(path, fig, dpi=100, bbox_inches="tight")
  finally:
    plt.close(fig)


def save_image_rows(path: str, rows: dict, title: str = ""):
  """One labelled row of images per entry of `rows` {label: (N, H, W, C) in [0, 1]}."""
  labels = list(rows)
  fig, axes = plt.subplots(len(labels), 1, figsize=(1.1 * len(rows[labels[0]]) + 1.5,
                                                     1.2 * len(labels) + 0.4), squeeze=False)
  for ax, label in zip(axes[:, 0], labels):
    imgs = np.clip(np.asarray(rows[label], np.float32), 0.0, 1.0)
    grid = image_grid(imgs, ncols=len(imgs))
    ax.imshow(grid[..., 0] if grid.shape[-1] == 1 else grid, cmap="gray", vmin=0, vmax=1)
    ax.set_yticks([])
    ax.set_xticks([])
    ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
  if title:   # above the first row (a figure title would sit above the rows' slack)
    axes[0, 0].set_title(title, fontsize=9)
  try:
    atomic.save_figure(path, fig, dpi=100, bbox_inches="tight")
  finally:
    plt.close(fig)


def save_gap_bars(path: str, tasks: list, series: dict, title: str = "",
                  xlabel: str = "PSNR difference to the best classical restorer (dB)"):
  """Horizontal bars, one group per task, one bar per entry of `series`
  {label: {task: (mean, standard error)}} with its error bar (2 standard errors), and a
  line at 0: right of it the entry is ahead. A task an entry lacks gets no bar."""
  labels = list(series)
  n, k = len(tasks), max(len(labels), 1)
  height = 0.8 / k
  fig, ax = plt.subplots(figsize=(7, 0.45 * n * max(k, 2) / 2 + 1.2))
  for j, label in enumerate(labels):
    ys, ms, es = [], [], []
    for i, t in enumerate(tasks):
      if t in series[label]:
        m, se = series[label][t]
        ys.append(i - 0.4 + height * (j + 0.5))
        ms.append(m)
        es.append(2 * se)
    ax.barh(ys, ms, height=height * 0.9, xerr=es, label=label, capsize=2)
  ax.axvline(0.0, color="black", linewidth=0.8)
  ax.set_yticks(range(n))
  ax.set_yticklabels(tasks, fontsize=8)
  ax.invert_yaxis()
  ax.set_xlabel(xlabel, fontsize=8)
  ax.tick_params(axis="x", labelsize=8)
  ax.grid(axis="x", alpha=0.3)
  if len(labels) > 1:
    ax.legend(fontsize=7, loc="best")
  if title:
    ax.set_title(title, fontsize=9)
  try:
    atomic.save_figure(path, fig, dpi=100, bbox_inches="tight")
  finally:
    plt.close(fig)


def save_level_curves(path: str, levels: list, curves: dict, title: str = "",
                      ylabel: str = "PSNR (dB)"):
  """One small panel per entry of `curves` {panel: {label: [value per level]}}: each
  label's values against `levels` (log x axis), its best level marked."""
  panels = list(curves)
  ncols = min(len(panels), 4) or 1
  nrows = int(math.ceil(len(panels) / ncols)) or 1
  fig, axes = plt.subplots(nrows, ncols, figsize=(3.0 * ncols, 2.4 * nrows), squeeze=False)
  for ax in axes.flat[len(panels):]:
    ax.axis("off")
  for ax, panel in zip(axes.flat, panels):
    for label, values in curves[panel].items():
      line, = ax.plot(levels, values, marker="o", markersize=3, label=label)
      best = int(np.argmax(values))
      ax.plot([levels[best]], [values[best]], marker="*", markersize=10,
              color=line.get_color())
    ax.set_xscale("log")
    ax.set_xticks(levels)
    ax.set_xticklabels([f"{v:g}" for v in levels])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_title(panel, fontsize=9)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    ax.set_ylabel(ylabel, fontsize=7)
  axes.flat[0].legend(fontsize=7, loc="best")
  if title:
    fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  try:
    atomic.save_figure(path, fig, dpi=100, bbox_inches="tight")
  finally:
    plt.close(fig)
