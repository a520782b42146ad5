"""The user's own corrupted images for `--mode=restore` (config.restore.input).

Two formats, neither of which can carry code:
  .npz  (read with allow_pickle=False): `y`, the corrupted images, (N, *shape) or one
        image of `shape` (a grayscale model also takes (N, H, W)); uint8 pixels or floats
        in pixel / 255 units. Optional `mask` (inpainting; True or 1 = observed; one mask
        of the image shape or one per image) and `truth` (the clean images, same layout
        as `y`'s full-resolution shape), with which PSNR is reported.
  .png  one 8-bit image (grayscale for a one-channel model, RGB for three channels),
        of the model's size (the low-resolution size for super-resolution). An
        inpainting mask comes from config.restore.input_mask, a PNG of the image size
        (non-zero = observed), else from config.restore.mask.
The noise level, rate or factor is config.restore's (sigma, p, sr_factor, sr_sigma).
Every problem is one ConfigError naming the field and the file.
"""

import dataclasses
import os
import zipfile
from typing import Optional

import numpy as np

from csm_jax import config_base

NPZ_KEYS = ("y", "mask", "truth")


@dataclasses.dataclass
class UserInput:
  y: np.ndarray                   # (N, *y_shape) float64, pixel / 255
  mask: Optional[np.ndarray]      # bool, image shape or (N, *shape); inpainting only
  truth: Optional[np.ndarray]     # (N, *shape) float64 in [0, 1], or None
  source: str


def _fail(field, path, what):
  raise config_base.ConfigError(f"restore.{field} {path}: {what}")


def _as_unit(a, field, path, key):
  """uint8 pixels -> / 255; floats kept; anything else refused."""
  a = np.asarray(a)
  if a.dtype == np.uint8:
    return a.astype(np.float64) / 255.0
  if a.dtype.kind == "f":
    a = a.astype(np.float64)
    if not np.isfinite(a).all():
      _fail(field, path, f"'{key}' has non-finite values")
    return a
  _fail(field, path, f"'{key}' must be uint8 pixels or floats in pixel / 255 units, "
        f"got dtype {a.dtype}")


def _fit(a, shape, field, path, key):
  """a as (N, *shape): a single image gets N = 1; (N, H, W) fits (H, W, 1)."""
  shape = tuple(shape)
  if a.shape == shape:
    return a[None]
  if a.shape[1:] == shape:
    return a
  if len(shape) == 3 and shape[-1] == 1 and a.shape[-2:] == shape[:2]:
    return _fit(a[..., None], shape, field, path, key)
  want = "x".join(map(str, shape))
  _fail(field, path, f"'{key}' has shape {a.shape}; this model needs images of "
        f"{want} (one image or a batch (N, {', '.join(map(str, shape))}))")


def _read_png(path, field, shape):
  from PIL import Image, UnidentifiedImageError  # pylint: disable=g-import-not-at-top
  channels = shape[-1] if len(shape) == 3 else 1
  try:
    with Image.open(path) as im:
      im.load()
      if im.mode not in ("L", "RGB", "RGBA", "P", "LA", "1", "I;16", "I"):
        _fail(field, path, f"unsupported PNG mode {im.mode}")
      im = im.convert("L" if channels == 1 else "RGB")
      a = np.asarray(im, np.uint8)
  except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
    if isinstance(e, config_base.ConfigError):
      raise
    _fail(field, path, f"not a readable PNG image ({type(e).__name__}: {e})")
  return a


def load(rc, image_shape, y_shape) -> UserInput:
  """Reads config.restore.input (and input_mask) for images of `image_shape`.

  y_shape is the observation's shape (the low-resolution one for super-resolution).
  """
  path = os.path.abspath(os.path.expanduser(rc.input))
  if not os.path.isfile(path):
    _fail("input", path, "no such file")
  ext = os.path.splitext(path)[1].lower()
  mask = truth = None
  if ext == ".npz":
    try:
      with np.load(path, allow_pickle=False) as z:
        keys = list(z.keys())
        extra = [k for k in keys if k not in NPZ_KEYS]
        if extra:
          _fail("input", path, f"unexpected arrays {extra}; expected 'y' and optionally "
                "'mask', 'truth'")
        if "y" not in keys:
          _fail("input", path, f"no array 'y' (the corrupted images); it has {keys}")
        arrays = {k: z[k] for k in keys}
    except config_base.ConfigError:
      raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
      _fail("input", path, f"not a readable npz file ({type(e).__name__}: {e})")
    y = _fit(_as_unit(arrays["y"], "input", path, "y"), y_shape, "input", path, "y")
    if "truth" in arrays:
      truth = _fit(_as_unit(arrays["truth"], "input", path, "truth"), image_shape, "input",
                   path, "truth")
      if len(truth) != len(y):
        _fail("input", path, f"'truth' has {len(truth)} images, 'y' {len(y)}")
      if truth.min() < 0 or truth.max() > 1:
        _fail("input", path, "'truth' must lie in [0, 1] (pixel / 255)")
    if "mask" in arrays:
      m = np.asarray(arrays["mask"])
      if m.dtype != bool and not np.isin(m, (0, 1)).all():
        _fail("input", path, "'mask' must be boolean or 0/1 (1: observed)")
      m = m.astype(bool)
      if m.shape != tuple(image_shape):
        m = _fit(m, image_shape, "input", path, "mask")
        if len(m) != len(y):
          _fail("input", path, f"'mask' has {len(m)} images, 'y' {len(y)}")
      mask = m
  elif ext == ".png":
    a = _read_png(path, "input", y_shape)
    y = _fit(a.astype(np.float64) / 255.0, y_shape, "input", path, "y")
  else:
    _fail("input", path, "must be a .png or .npz file")
  if rc.get("input_mask"):
    mpath = os.path.abspath(os.path.expanduser(rc.input_mask))
    if not os.path.isfile(mpath):
      _fail("input_mask", mpath, "no such file")
    if os.path.splitext(mpath)[1].lower() != ".png":
      _fail("input_mask", mpath, "must be a .png file (non-zero: observed)")
    m = _read_png(mpath, "input_mask", image_shape)
    m = _fit(m > 0, image_shape, "input_mask", mpath, "mask")[0]
    mask = m
  if mask is not None and rc.task != "inpaint":
    _fail("input" if rc.get("input_mask") is None else "input_mask", path,
          f"a mask is only used by task 'inpaint' (restore.task is {rc.task!r})")
  return UserInput(y=y, mask=mask, truth=truth, source=path)
