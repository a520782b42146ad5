"""csm_jax.data.make_npz: the npz subsets the PixelCNN++ and VAE commands read."""

import numpy as np
import pytest

from csm_jax.data import make_npz
from csm_jax.data import tfds_source


@pytest.mark.parametrize("dataset,shape,labelled", [("cifar10", (32, 32, 3), True),
                                                    ("celeb_a", (32, 32, 3), False)])
def test_subset_from_mock_tfds(tmp_path, monkeypatch, dataset, shape, labelled):
  tfds = pytest.importorskip("tensorflow_datasets")
  monkeypatch.setattr(tfds_source, "_is_prepared", lambda builder: True)
  with tfds.testing.mock_data(num_examples=6, policy=tfds.testing.MockPolicy.USE_CODE):
    x, y = make_npz.subset(dataset, "train", 4, data_dir=str(tmp_path / "tfds"))
    with pytest.raises(ValueError, match="--split='nope'"):
      make_npz.subset(dataset, "nope", 4, data_dir=str(tmp_path / "tfds"))
  assert x.shape == (4,) + shape and x.dtype == np.uint8
  assert (y is not None) == labelled and (y is None or y.shape == (4,))
  out = tmp_path / "sub.npz"
  make_npz.save_npz_atomic(str(out), x=x)
  np.testing.assert_array_equal(np.load(out, allow_pickle=False)["x"], x)
  assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp-")] == []
