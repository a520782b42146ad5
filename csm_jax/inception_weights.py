"""The file of FID Inception weights the user supplies, and random weights for tests.

The format is a numpy archive (.npz) of float arrays, one per key (below), read with
allow_pickle=False: loading it cannot run code. `save_npz` writes it. The library never
unpickles anything: the pickle of nested dicts of arrays that matthias-wright/jax-fid
distributes (inception_v3_weights_fid.pickle, converted from pytorch-fid's FID
Inception) is converted once, on purpose, by

  python -m csm_jax.tools.convert_inception_pickle inception_v3_weights_fid.pickle OUT.npz

which reads it with a restricted unpickler (numpy arrays, dicts, lists, strings and
numbers only; any other object is refused before it can run).

Keys: for each of the 94 convolutions of `csm_jax.inception.FIDInceptionV3`, at its
path LAYER (e.g. `Conv2d_1a_3x3`, `Mixed_6b/branch7x7dbl_3`; `expected_shapes()` lists
all), five arrays:

  LAYER/conv/kernel  (kh, kw, in, out), Flax's HWIO layout (a torch OIHW weight w
                     becomes w.transpose(2, 3, 1, 0))
  LAYER/bn/scale, LAYER/bn/bias, LAYER/bn/mean, LAYER/bn/var   (out,): batch norm's
                     gamma, beta, running mean and running variance (eps 1e-3)

Other keys (the classifier `fc`, `AuxLogits`, a `conv/bias`) are ignored. A missing key
or a wrong shape raises `WeightsError` naming the file and the key.
"""

import functools
import os
import zipfile
from typing import Dict, Mapping, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from csm_jax import config_base
from csm_jax import inception

BATCH_STATS = ("mean", "var")     # leaf names that live in the 'batch_stats' collection


class WeightsError(config_base.ConfigError):
  """A weights file that is missing, unreadable or does not fit the network (bad input
  named by eval.inception_weights: one line, like a ConfigError)."""


def expected_shapes() -> Dict[str, Tuple[int, ...]]:
  """{key: shape} of every array the network needs (sorted by key)."""
  return dict(_expected_shapes())


@functools.lru_cache(maxsize=None)
def _expected_shapes() -> Tuple[Tuple[str, Tuple[int, ...]], ...]:
  size = inception.MIN_INPUT_SIZE
  variables = jax.eval_shape(inception.FIDInceptionV3().init, jax.random.PRNGKey(0),
                             jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32))
  flat = {}
  for collection in ("params", "batch_stats"):
    for path, leaf in traverse_util.flatten_dict(dict(variables[collection])).items():
      flat["/".join(path)] = tuple(leaf.shape)
  return tuple(sorted(flat.items()))


CONVERT = "python -m csm_jax.tools.convert_inception_pickle IN OUT.npz"


def read_flat(path: str) -> Dict[str, np.ndarray]:
  """{key: array} of every array in the .npz file (no checks against the network)."""
  if not os.path.isfile(path):
    raise WeightsError(f"Inception weights file {path} does not exist")
  if not path.endswith(".npz"):
    raise WeightsError(f"Inception weights file {path} is not an .npz: weights are read only "
                       "from .npz files (never unpickled); convert a jax-fid pickle once with "
                       f"`{CONVERT}`")
  try:
    with np.load(path, allow_pickle=False) as z:
      return {k: z[k] for k in z.files}
  except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
    reason = ("holds an array of Python objects (dtype object), which is never loaded"
              if "pickle" in str(e) else f"{type(e).__name__}: {e}")
    raise WeightsError(f"cannot read Inception weights file {path}: {reason}") from None


def from_flat(flat: Mapping[str, np.ndarray], path: str = "<arrays>") -> dict:
  """Flax variables {'params', 'batch_stats'} of `FIDInceptionV3` from {key: array},
  float32; every key of `expected_shapes()` must be there with its shape (`path` names
  the file in the error)."""
  params, stats = {}, {}
  for key, shape in expected_shapes().items():
    if key not in flat:
      raise WeightsError(f"Inception weights file {path}: missing key '{key}' (shape "
                         f"{shape})")
    value = np.asarray(flat[key])
    if value.shape != shape:
      raise WeightsError(f"Inception weights file {path}: key '{key}' has shape "
                         f"{value.shape}, expected {shape}")
    if not np.issubdtype(value.dtype, np.floating):
      raise WeightsError(f"Inception weights file {path}: key '{key}' has dtype "
                         f"{value.dtype}, expected floats")
    target = stats if key.rsplit("/", 1)[-1] in BATCH_STATS else params
    target[tuple(key.split("/"))] = jnp.asarray(value, jnp.float32)
  return {"params": traverse_util.unflatten_dict(params),
          "batch_stats": traverse_util.unflatten_dict(stats)}


def load_variables(path: str) -> dict:
  """Flax variables of `FIDInceptionV3` from a weights file (formats above)."""
  return from_flat(read_flat(path), path)


def to_flat(variables) -> Dict[str, np.ndarray]:
  """{key: array} of Flax variables {'params', 'batch_stats'}: the file's keys."""
  flat = {}
  for collection in ("params", "batch_stats"):
    for p, leaf in traverse_util.flatten_dict(dict(variables[collection])).items():
      flat["/".join(p)] = np.asarray(jax.device_get(leaf), np.float32)
  return flat


def save_npz(variables, path: str):
  """Writes variables as the .npz format (atomically: a temporary file, then a rename)."""
  if not path.endswith(".npz"):
    raise ValueError(f"an .npz path is needed, got {path}")
  from csm_jax import atomic  # pylint: disable=g-import-not-at-top
  atomic.save_npz(path, **to_flat(variables))


def random_variables(seed: int = 0) -> dict:
  """Random variables of the right shapes (no use for FID itself: for tests and dry
  runs). Kernels are He-normal, so activations keep their scale through the depth; batch
  norm starts as scale 1, bias 0.1 (not a no-op), mean 0, var 1."""
  rng = np.random.default_rng(seed)
  flat = {}
  for key, shape in expected_shapes().items():
    leaf = key.rsplit("/", 1)[-1]
    if leaf == "kernel":
      fan_in = int(np.prod(shape[:-1]))
      flat[key] = (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
    else:
      fill = {"scale": 1.0, "bias": 0.1, "mean": 0.0, "var": 1.0}[leaf]
      flat[key] = np.full(shape, fill, np.float32)
  return from_flat(flat, f"random_variables(seed={seed})")
