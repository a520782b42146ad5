"""Where a restoration's error lies: its squared error split by what the observation said.

Salt-and-pepper (`observations.SaltPepper`) replaces a share p of the pixels by 0 or 255.
Its observation sorts every pixel into one of three sets, and a restoration's error on
each tells a different story:

  corrupted       y != x: an impulse to detect and a value to fill in;
  kept extreme    y == x and y is 0 or 255: a true black or white pixel that no
                  restorer can tell from an impulse by its value alone (MNIST's
                  background is 0, its strokes often 255), so it is at risk too;
  pinned          y neither 0 nor 255: observed exactly, kept by every restoration that
                  projects onto the observation.

The PSNR of an image is 10 log10(1 / (total / D)), total the sum of the three parts, so
the parts say which set a PSNR difference between two restorers comes from. Needs the
clean images, so it is a benchmark diagnostic, not a restoration step.
Written here: a few lines of masking; no library splits an error by an observation model.
"""

import numpy as np

from csm_jax.restore import observations as obs_lib


SPLIT_PARTS = ("corrupted", "kept_extreme", "pinned")


def _flat(a, name):
  a = np.asarray(a, np.float64)
  if a.ndim < 2:
    raise ValueError(f"{name}: expected images (N, ...), got shape {a.shape}")
  return a.reshape(len(a), -1)


def salt_pepper_error_split(clean, y, restored) -> dict:
  """Per-image sums of squared error (image units, [0, 1]) over the three pixel sets.

  clean, y, restored: (N, ...) images in [0, 1] of one shape (y: the salt-and-pepper
  observation of `clean`). Returns {part: (N,) float64} for SPLIT_PARTS and
  {'count_' + part: (N,) int} (how many pixels each set holds); the three sums add up
  to each image's total squared error.
  """
  c, o, r = _flat(clean, "clean"), _flat(y, "y"), _flat(restored, "restored")
  if not (c.shape == o.shape == r.shape):
    raise ValueError(f"clean, y and restored must have one shape, got {c.shape}, "
                     f"{o.shape} and {r.shape}")
  extreme = obs_lib.is_extreme(o, np)
  # a corruption that wrote the pixel's own value (a black pixel hit by pepper) changed
  # nothing and is counted as kept: no restorer could see it
  corrupted = extreme & (np.abs(o - c) > 0.5 / 255.0)
  sets = {"corrupted": corrupted, "kept_extreme": extreme & ~corrupted,
          "pinned": ~extreme}
  err = (r - c) ** 2
  out = {k: np.where(m, err, 0.0).sum(-1) for k, m in sets.items()}
  out.update({f"count_{k}": m.sum(-1) for k, m in sets.items()})
  return out
