"""The file of FID Inception weights the user supplies, and random weights for tests.

Two formats, told apart by the file name:

  *.npz             a numpy archive of float arrays, one per key (below); read with
                    allow_pickle=False, so it cannot run code. `save_npz` writes it.
  anything else     a pickle of nested dicts of arrays whose paths are the keys
                    (`{'Mixed_5b': {'branch1x1': {'conv': {'kernel': ...}, ...}}}`):
                    the format of the weights file matthias-wright/jax-fid distributes
                    (inception_v3_weights_fid.pickle, converted from pytorch-fid's FID
                    Inception), loadable as it is. Unpickling runs code: load only
                    files you trust, or convert once to .npz
                    (`save_npz(load_variables(PICKLE), NPZ)`).

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
import pickle
from typing import Dict, Mapping, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from csm_jax import inception

BATCH_STATS = ("mean", "var")     # leaf names that live in the 'batch_stats' collection


class WeightsError(ValueError):
  """A weights file that is missing, unreadable or does not fit the network."""


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


def _flatten(tree, path: str) -> Dict[str, np.ndarray]:
  if not isinstance(tree, Mapping):
    raise WeightsError(f"{path}: the pickle must hold nested dicts of arrays, got "
                       f"{type(tree).__name__}")
  flat = {}
  for path_tuple, leaf in traverse_util.flatten_dict(dict(tree)).items():
    flat["/".join(str(p) for p in path_tuple)] = leaf
  return flat


def read_flat(path: str) -> Dict[str, np.ndarray]:
  """{key: array} of every array in the file (no checks against the network)."""
  if not os.path.isfile(path):
    raise WeightsError(f"Inception weights file {path} does not exist")
  try:
    if path.endswith(".npz"):
      with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}
    with open(path, "rb") as f:
      tree = pickle.load(f)
  except (OSError, ValueError, pickle.UnpicklingError, EOFError) as e:
    raise WeightsError(f"cannot read Inception weights file {path}: {e}") from None
  return _flatten(tree, path)


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
  tmp = path[:-4] + ".tmp.npz"
  np.savez(tmp, **to_flat(variables))
  os.replace(tmp, path)


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
