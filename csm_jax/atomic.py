"""Atomic file writes: a reader sees the old file or the new one, never a torn one.

Each writer goes to a temporary file in the destination's directory (same file system),
flushes and fsyncs it, renames it onto the destination (`os.replace`, atomic on POSIX)
and fsyncs the directory, so that the rename itself survives a crash. A failure on the
way (a full disk, a kill) leaves the destination as it was and removes the temporary
file. Used for config.json, evaluation JSON, sample arrays and pictures, weights files.
"""

import contextlib
import io
import json
import os
import tempfile

import numpy as np


def fsync_dir(directory: str):
  """fsync a directory (its entries: a rename, a new file); a no-op where unsupported."""
  try:
    fd = os.open(directory or ".", os.O_RDONLY)
  except OSError:
    return
  try:
    os.fsync(fd)
  except OSError:
    pass
  finally:
    os.close(fd)


@contextlib.contextmanager
def open_atomic(path: str, mode: str = "wb"):
  """Yields a file object whose contents replace `path` when the block ends normally."""
  path = os.fspath(path)
  directory = os.path.dirname(os.path.abspath(path))
  fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".",
                             suffix=".tmp")
  try:
    with os.fdopen(fd, mode) as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(OSError):
      os.unlink(tmp)
    raise
  fsync_dir(directory)


def write_bytes(path: str, data: bytes):
  with open_atomic(path, "wb") as f:
    f.write(data)


def write_text(path: str, text: str):
  write_bytes(path, text.encode("utf-8"))


def write_json(path: str, obj, indent: int = 2):
  write_text(path, json.dumps(obj, indent=indent) + "\n")


def save_npy(path: str, array):
  """np.save, atomically (`path` is used as given: name it .npy)."""
  with open_atomic(path, "wb") as f:
    np.save(f, np.asarray(array), allow_pickle=False)


def save_npz(path: str, **arrays):
  """np.savez, atomically (`path` is used as given: name it .npz)."""
  with open_atomic(path, "wb") as f:
    np.savez(f, **arrays)


def save_figure(path: str, fig, **kwargs):
  """fig.savefig(path) atomically; the format is taken from the name's extension."""
  buf = io.BytesIO()
  fmt = os.path.splitext(path)[1].lstrip(".") or "png"
  fig.savefig(buf, format=fmt, **kwargs)
  write_bytes(path, buf.getvalue())


def save_png(path: str, image):
  """An (H, W) or (H, W, C) uint8 array as a PNG, atomically."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  buf = io.BytesIO()
  Image.fromarray(np.asarray(image)).save(buf, format="PNG")
  write_bytes(path, buf.getvalue())


def append_line(f, line: str):
  """Appends one line to the open text file f and makes it durable (flush + fsync)."""
  f.write(line if line.endswith("\n") else line + "\n")
  f.flush()
  os.fsync(f.fileno())
