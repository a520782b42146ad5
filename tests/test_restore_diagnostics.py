"""The salt-and-pepper error split (csm_jax.restore.diagnostics) against counts and sums
worked out by hand, and against the total squared error (the PSNR's)."""

import numpy as np
import pytest

from csm_jax.restore import diagnostics
from csm_jax.restore import observations as obs_lib


def test_split_of_a_hand_made_image():
  clean = np.array([[0.0, 1.0, 0.5, 0.2, 0.0, 1.0]])
  # pixel 0: pepper on black (no change: kept), 1: kept white, 2: salt on grey,
  # 3: pepper on grey, 4: salt on black, 5: kept white
  y = np.array([[0.0, 1.0, 1.0, 0.0, 1.0, 1.0]])
  restored = np.array([[0.1, 0.7, 0.4, 0.2, 0.0, 1.0]])
  out = diagnostics.salt_pepper_error_split(clean, y, restored)
  np.testing.assert_allclose(out["corrupted"], [0.1 ** 2 + 0.0 + 0.0])
  np.testing.assert_allclose(out["kept_extreme"], [0.1 ** 2 + 0.3 ** 2 + 0.0])
  np.testing.assert_allclose(out["pinned"], [0.0])
  assert [int(out[f"count_{k}"][0]) for k in diagnostics.SPLIT_PARTS] == [3, 3, 0]


def test_parts_add_up_to_the_total_and_the_input_errs_only_where_corrupted():
  rng = np.random.default_rng(0)
  clean = np.round(rng.random((5, 8, 8, 1)) * 255) / 255
  clean[:, :3] = 0.0                                    # a black background, as MNIST's
  obs = obs_lib.SaltPepper(0.3, (8, 8, 1))
  y = obs.corrupt(1, clean)
  restored = np.clip(clean + 0.1 * rng.standard_normal(clean.shape), 0, 1)
  out = diagnostics.salt_pepper_error_split(clean, y, restored)
  total = ((restored - clean) ** 2).reshape(5, -1).sum(-1)
  np.testing.assert_allclose(sum(out[k] for k in diagnostics.SPLIT_PARTS), total, rtol=1e-12)
  counts = sum(out[f"count_{k}"] for k in diagnostics.SPLIT_PARTS)
  assert np.all(counts == 64)
  changed = (np.abs(y - clean) > 1e-4).reshape(5, -1).sum(-1)   # y is float32
  np.testing.assert_array_equal(out["count_corrupted"], changed)
  # the observation itself is wrong on the corrupted pixels only
  inp = diagnostics.salt_pepper_error_split(clean, y, y)
  assert np.all(inp["kept_extreme"] == 0) and np.all(inp["pinned"] < 1e-12)   # float32 y
  np.testing.assert_allclose(inp["corrupted"], ((y - clean) ** 2).reshape(5, -1).sum(-1))


def test_mismatched_shapes_are_one_line():
  with pytest.raises(ValueError, match="one shape"):
    diagnostics.salt_pepper_error_split(np.zeros((2, 4)), np.zeros((2, 4)), np.zeros((2, 5)))
  with pytest.raises(ValueError, match="clean: expected images"):
    diagnostics.salt_pepper_error_split(np.zeros(4), np.zeros((1, 4)), np.zeros((1, 4)))
