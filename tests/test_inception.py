"""FID's InceptionV3 on random weights (no real weights can be had here): the weights
file round trip in both formats, errors that name the file and the key, features of
shape (B, 2048) that are finite and batch-invariant, FID ~ 0 of a set against itself
and > 0 against a shifted set, and the VAE's --mode=eval adding 'fid'.

The network runs at 75 x 75 (its smallest input) instead of 299 and batches of 4, so
that every test shares one compiled network (about 12 s to compile on the 2-core CPU).
"""

import json
import os
import pickle

import numpy as np
import pytest
from flax import traverse_util

from csm_jax import data as data_lib
from csm_jax import inception
from csm_jax import inception_fid
from csm_jax import inception_weights
from csm_jax.tools import convert_inception_pickle
from csm_jax.vae import entry
from csm_jax.vae import evaluate
from tests.test_vae import tiny_arrays, tiny_vae_config
from tests.test_vae_train import shared_compilations  # pylint: disable=unused-import

SIZE = inception.MIN_INPUT_SIZE
BATCH = 4


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
  """(path of random weights saved as .npz, those variables)."""
  variables = inception_weights.random_variables(seed=0)
  path = str(tmp_path_factory.mktemp("inception") / "random_inception.npz")
  inception_weights.save_npz(variables, path)
  return path, variables


def _images(n, seed=0, shape=(16, 16, 3)):
  return np.random.default_rng(seed).random((n,) + shape).astype(np.float32)


def _assert_same_variables(a, b):
  fa, fb = inception_weights.to_flat(a), inception_weights.to_flat(b)
  assert sorted(fa) == sorted(fb)
  for k in fa:
    np.testing.assert_array_equal(fa[k], fb[k], err_msg=k)


def test_weights_file_round_trip_npz_and_jax_fid_pickle(weights, tmp_path):
  """The .npz written by save_npz loads back equal; so does the same tree as a pickle of
  nested dicts (jax-fid's layout) once converted by the restricted converter, whose
  extra keys (fc, conv/bias) are ignored. The library refuses the pickle itself."""
  path, variables = weights
  shapes = inception_weights.expected_shapes()
  assert len(shapes) == 94 * 5
  assert shapes["Mixed_7c/branch_pool/conv/kernel"] == (1, 1, 2048, 192)
  _assert_same_variables(inception_weights.load_variables(path), variables)

  flat = inception_weights.to_flat(variables)
  flat["fc/kernel"] = np.zeros((2048, 1000), np.float32)
  flat["Conv2d_1a_3x3/conv/bias"] = np.zeros((32,), np.float32)
  nested = traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in flat.items()})
  pickle_path = str(tmp_path / "inception_v3_weights_fid.pickle")
  with open(pickle_path, "wb") as f:
    pickle.dump(nested, f)
  with pytest.raises(inception_weights.WeightsError, match="not an .npz.*convert_inception"):
    inception_weights.load_variables(pickle_path)
  converted = str(tmp_path / "converted.npz")
  assert convert_inception_pickle.main(["convert", pickle_path, converted]) == 0
  _assert_same_variables(inception_weights.load_variables(converted), variables)


def test_bad_weights_files_name_the_file_and_the_key(tmp_path):
  """A missing file, a missing key, a wrong shape and a pickle that is not a dict each
  raise WeightsError naming the file (and the key)."""
  missing = str(tmp_path / "nowhere.npz")
  with pytest.raises(inception_weights.WeightsError, match="nowhere.npz does not exist"):
    inception_weights.load_variables(missing)

  first, second = list(inception_weights.expected_shapes())[:2]
  partial = str(tmp_path / "partial.npz")
  np.savez(partial, **{first: np.zeros(32, np.float32)})
  with pytest.raises(inception_weights.WeightsError) as e:
    inception_weights.load_variables(partial)
  assert partial in str(e.value) and f"missing key '{second}'" in str(e.value)

  wrong = str(tmp_path / "wrong.npz")
  np.savez(wrong, **{first: np.zeros(31, np.float32)})
  with pytest.raises(inception_weights.WeightsError) as e:
    inception_weights.load_variables(wrong)
  assert wrong in str(e.value) and f"key '{first}' has shape (31,), expected (32,)" in str(
      e.value)

  not_dict = str(tmp_path / "list.pickle")
  with open(not_dict, "wb") as f:
    pickle.dump([1, 2], f)
  with pytest.raises(inception_weights.WeightsError, match="list.pickle"):
    convert_inception_pickle.convert(not_dict, str(tmp_path / "out.npz"))

  objects = str(tmp_path / "objects.npz")   # an object array: never unpickled
  np.savez(objects, **{first: np.array([{"a": 1}], dtype=object)})
  with pytest.raises(inception_weights.WeightsError, match="objects.npz.*never loaded"):
    inception_weights.load_variables(objects)
  garbage = tmp_path / "garbage.npz"
  garbage.write_bytes(b"not a zip archive at all")
  with pytest.raises(inception_weights.WeightsError, match="garbage.npz"):
    inception_weights.load_variables(str(garbage))


def test_features_are_finite_2048_and_batch_invariant(weights):
  """(B, 2048) finite features that differ between images; a batch's features equal
  those of its two halves (each padded to the batch size); a grey image gives the
  features of its RGB copy."""
  _, variables = weights
  x = _images(BATCH)
  f = inception.features(variables, x, BATCH, SIZE)
  assert f.shape == (BATCH, inception.FEATURE_DIM) and np.all(np.isfinite(f))
  assert np.std(f, axis=0).max() > 0
  halves = np.concatenate([inception.features(variables, x[:2], BATCH, SIZE),
                           inception.features(variables, x[2:], BATCH, SIZE)])
  np.testing.assert_allclose(halves, f, rtol=1e-5, atol=1e-6)

  grey = x[..., :1]
  np.testing.assert_allclose(inception.features(variables, grey, BATCH, SIZE),
                             inception.features(variables, np.repeat(grey, 3, -1), BATCH,
                                                SIZE), rtol=1e-5, atol=1e-6)


def test_fid_from_weights_self_zero_shifted_positive(weights):
  """Through the weights file: FID of a set against itself is ~0 (relative to the trace
  of its feature covariance), against a brightened copy clearly > 0."""
  path, variables = weights
  x = _images(2 * BATCH, seed=1)
  scale = np.trace(inception_fid.inception_stats(variables, x, BATCH, SIZE)[1])
  same = inception_fid.fid_from_weights(x, x, path, BATCH, SIZE)
  shifted = inception_fid.fid_from_weights(np.clip(x + 0.3, 0, 1), x, path, BATCH, SIZE)
  assert scale > 0 and abs(same) < 1e-6 * scale
  assert shifted > 0.01 * scale


@pytest.mark.slow
def test_vae_eval_adds_fid_given_weights(weights, tmp_path, monkeypatch,
                                         shared_compilations):
  """--mode=eval of a tiny conv VAE (through vae.entry, what main.py calls) writes 'fid'
  (10 decoder samples vs the 10 test images) given eval.inception_weights, and
  'fid_skipped' without. AIS is replaced by a stub here (tests/test_vae_train.py tests
  it), the network runs at 75 x 75, and the two evaluations share one compiled
  validation function (`shared_compilations`)."""
  path, _ = weights
  arrays = tiny_arrays(shape=(8, 8, 3))
  monkeypatch.setattr(data_lib, "load_arrays", lambda data_config: arrays)
  monkeypatch.setattr(evaluate, "ais_nll", lambda *a, **k: {"nll": 0.0, "num_examples": 0})
  monkeypatch.setattr(inception, "INPUT_SIZE", SIZE)
  config = tiny_vae_config("csm", "gaussian", **{
      "vae.architecture": "conv", "vae.likelihood": "gaussian", "vae.num_filters": 2,
      "training.num_steps": 1, "training.eval_every": 0, "eval.fid_batch_size": BATCH})
  wd = str(tmp_path / "w")
  entry.run("train", config, wd)

  result = entry.run("eval", config, wd, [f"eval.inception_weights={path}"])
  assert np.isfinite(result["fid"]) and result["fid"] > 0
  assert result["fid_settings"]["num_samples"] == 10 == result["fid_settings"]["num_reference"]
  with open(os.path.join(wd, "eval_00000001.json")) as f:
    assert json.load(f)["fid"] == result["fid"]

  skipped = entry.run("eval", config, wd)
  assert skipped["fid"] is None and "eval.inception_weights is empty" in skipped["fid_skipped"]
  with pytest.raises(inception_weights.WeightsError, match="nowhere.npz"):
    entry.run("eval", config, wd, [f"eval.inception_weights={tmp_path}/nowhere.npz"])
