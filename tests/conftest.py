"""Shared fixtures: paths to the offline data beside the repository."""

import os
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def mnist_data_dir():
  d = os.environ.get("TFDS_DATA_DIR") or str(SHARED / "tfds")
  if not (pathlib.Path(d) / "mnist").exists():
    pytest.skip("prepared MNIST not available (set TFDS_DATA_DIR)")
  return d
