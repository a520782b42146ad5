"""Writes the first N images of a tfds split to an `.npz` file (uint8 images `x`, labels `y`).

The PixelCNN++ and VAE commands of the docs run on small subsets of CIFAR-10 and CelebA
given as `--config.data.source=npz --config.data.path=FILE`; this makes them from a
prepared tensorflow-datasets directory (`$TFDS_DATA_DIR`, `--data_dir`, else
`~/tensorflow_datasets`), exactly as the training code reads tfds:

    python -m csm_jax.data.make_npz --dataset cifar10 --split train --limit 4000 --out F.npz

CelebA images are centre-cropped (140 x 140 of the aligned 178 x 218 faces) and resized to
32 x 32 with Lanczos, the transform `data.dataset=celeba` applies. The file is written
atomically (temporary file, fsync, rename).
"""

import os
import sys
import tempfile

from absl import app
from absl import flags

_DATASET = flags.DEFINE_enum("dataset", None, ["mnist", "cifar10", "celeb_a"],
                             "tfds dataset to read.")
_SPLIT = flags.DEFINE_string("split", "train", "tfds split: train or test (CelebA also "
                             "validation).")
_LIMIT = flags.DEFINE_integer("limit", 0, "Keep the first LIMIT images (0: all).", lower_bound=0)
_OUT = flags.DEFINE_string("out", None, "Output .npz file.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Prepared tfds directory (default: "
                                "$TFDS_DATA_DIR, else ~/tensorflow_datasets).")
_CROP = flags.DEFINE_integer("crop", 140, "CelebA centre crop (pixels of the aligned image).",
                             lower_bound=1)
_SIZE = flags.DEFINE_integer("image_size", 32, "CelebA output size.", lower_bound=1)


def subset(dataset: str, split: str, limit: int, data_dir=None, crop: int = 140,
           size: int = 32):
  """(x, y): the first `limit` images of a prepared tfds split (all if 0), y None if unlabelled."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from csm_jax.data import tfds_source  # pylint: disable=g-import-not-at-top
  builder = tfds_source._ensure_prepared(dataset, tfds_source.resolve_data_dir(data_dir))  # pylint: disable=protected-access
  known = sorted(builder.info.splits) or ["train", "test"] + (["validation"] if dataset == "celeb_a" else [])
  if split not in known:
    raise ValueError(f"--split={split!r}: {dataset} has splits {known}")
  source = builder.as_data_source(split=split)
  n = len(source) if not limit else min(limit, len(source))
  items = tfds_source._getitems(source, range(n))  # pylint: disable=protected-access
  images = [np.asarray(item["image"]) for item in items]
  if dataset == "celeb_a":
    images = [tfds_source.celeba_transform(im, crop=crop, size=size) for im in images]
  x = np.stack(images).astype(np.uint8)
  y = (np.asarray([int(np.asarray(item["label"])) for item in items], np.int64)
       if "label" in items[0] else None)
  return x, y


def save_npz_atomic(path: str, **arrays) -> None:
  """np.savez to a temporary file beside `path`, fsync, then rename onto it."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".npz")
  try:
    with os.fdopen(fd, "wb") as f:
      np.savez(f, **arrays)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def main(argv):
  del argv
  if not _DATASET.value or not _OUT.value:
    sys.exit("--dataset and --out are required (see --help)")
  from csm_jax.data import sources  # pylint: disable=g-import-not-at-top
  try:
    x, y = subset(_DATASET.value, _SPLIT.value, _LIMIT.value, _DATA_DIR.value,
                  _CROP.value, _SIZE.value)
  except (ValueError, sources.DataNotFoundError) as e:
    sys.exit(f"error: {e}")
  arrays = {"x": x} if y is None else {"x": x, "y": y}
  save_npz_atomic(_OUT.value, **arrays)
  print(f"wrote {_OUT.value}: x {x.shape} {x.dtype}" + ("" if y is None else f", y {y.shape}"))


if __name__ == "__main__":
  app.run(main)
