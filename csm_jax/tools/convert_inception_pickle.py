"""Converts the jax-fid Inception weights pickle to the .npz that csm_jax reads.

  python -m csm_jax.tools.convert_inception_pickle inception_v3_weights_fid.pickle OUT.npz

matthias-wright/jax-fid distributes its FID Inception weights (converted from
pytorch-fid) as a pickle of nested dicts of numpy arrays. The library itself never
unpickles anything; this script, run once by you, reads that file with a restricted
unpickler whose `find_class` accepts only what such a file needs to rebuild numpy arrays
(numpy's ndarray, dtype, scalar and buffer constructors, `_codecs.encode` for byte strings,
OrderedDict) and refuses every other global, so a pickle whose objects would call
os.system or any other function is refused before anything runs. The arrays are then
checked against the network's keys and shapes and written as OUT.npz (format:
`csm_jax.inception_weights`), which `eval.inception_weights` accepts.
"""

import importlib
import io
import pickle
import sys
from typing import Dict

import numpy as np

# (module, name) of every global a pickle of dicts of numpy arrays refers to.
ALLOWED_GLOBALS = frozenset({
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),  # protocol 5
    ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),                  # bytes in protocol-2 pickles
    ("collections", "OrderedDict"),
})
_PLAIN = (dict, list, tuple, str, bytes, int, float, bool, type(None), np.ndarray,
          np.generic)


class RefusedPickle(pickle.UnpicklingError):
  """A pickle that refers to a global outside ALLOWED_GLOBALS (or holds other objects)."""


class RestrictedUnpickler(pickle.Unpickler):
  """An Unpickler that resolves only ALLOWED_GLOBALS; every other global is refused."""

  def find_class(self, module, name):
    if (module, name) in ALLOWED_GLOBALS:
      if module.startswith("numpy.core.") and hasattr(np, "_core"):
        module = "numpy._core." + module[len("numpy.core."):]  # numpy 2 renamed it
      elif module.startswith("numpy._core.") and not hasattr(np, "_core"):
        module = "numpy.core." + module[len("numpy._core."):]
      return getattr(importlib.import_module(module), name)
    raise RefusedPickle(f"refused global {module}.{name}: only numpy arrays, dicts, lists, "
                        "strings and numbers are read")

  def persistent_load(self, pid):
    raise RefusedPickle("refused a persistent id: only plain data is read")


def _check_plain(obj, path="<root>"):
  if isinstance(obj, np.ndarray) and obj.dtype.hasobject:
    raise RefusedPickle(f"{path}: an array of Python objects (dtype object) is refused")
  if not isinstance(obj, _PLAIN):
    raise RefusedPickle(f"{path}: a {type(obj).__name__} is refused")
  if isinstance(obj, dict):
    for k, v in obj.items():
      _check_plain(k, f"{path}/key")
      _check_plain(v, f"{path}/{k}")
  elif isinstance(obj, (list, tuple)):
    for i, v in enumerate(obj):
      _check_plain(v, f"{path}/{i}")


def restricted_loads(data: bytes):
  """The plain data (numpy arrays, dicts, lists, strings, numbers) of a pickle; raises
  RefusedPickle for anything else, before any other code can run."""
  obj = RestrictedUnpickler(io.BytesIO(data)).load()
  _check_plain(obj)
  return obj


def read_pickle(path: str) -> Dict[str, np.ndarray]:
  """{key: array} of a jax-fid weights pickle (nested dicts of arrays), restricted."""
  from flax import traverse_util  # pylint: disable=g-import-not-at-top
  from csm_jax import inception_weights  # pylint: disable=g-import-not-at-top
  try:
    with open(path, "rb") as f:
      tree = restricted_loads(f.read())
  except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError) as e:
    raise inception_weights.WeightsError(f"cannot convert {path}: {e}") from None
  if not isinstance(tree, dict):
    raise inception_weights.WeightsError(
        f"{path}: the pickle must hold nested dicts of arrays, got {type(tree).__name__}")
  return {"/".join(str(p) for p in k): np.asarray(v)
          for k, v in traverse_util.flatten_dict(dict(tree)).items()}


def convert(src: str, dst: str):
  """Reads the pickle `src` (restricted), checks it fits the network, writes `dst` (.npz)."""
  from csm_jax import inception_weights  # pylint: disable=g-import-not-at-top
  variables = inception_weights.from_flat(read_pickle(src), src)
  inception_weights.save_npz(variables, dst)


def main(argv):
  if len(argv) != 3 or not argv[2].endswith(".npz"):
    print("usage: python -m csm_jax.tools.convert_inception_pickle IN.pickle OUT.npz",
          file=sys.stderr)
    return 2
  from csm_jax import inception_weights  # pylint: disable=g-import-not-at-top
  try:
    convert(argv[1], argv[2])
  except inception_weights.WeightsError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(f"wrote {argv[2]}")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
