"""Shared fixtures: paths to the offline data beside the repository.

Float32 comparisons in these tests mean float32: the matmul precision is pinned to
'highest' for the test process and its subprocesses (GPUs otherwise run float32 matmuls
in TF32, 10-bit mantissas; TPUs in bfloat16 passes). CPUs compute float32 either way,
so nothing changes there; the library's own choice is model.matmul_precision.
"""

import os
import pathlib

os.environ.setdefault("JAX_DEFAULT_MATMUL_PRECISION", "highest")

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position

jax.config.update("jax_default_matmul_precision",
                  os.environ["JAX_DEFAULT_MATMUL_PRECISION"])

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def mnist_data_dir():
  d = os.environ.get("TFDS_DATA_DIR") or str(SHARED / "tfds")
  if not (pathlib.Path(d) / "mnist").exists():
    pytest.skip("prepared MNIST not available (set TFDS_DATA_DIR)")
  return d


def pytest_configure(config):
  config.addinivalue_line("markers", "slow: trains a model first (deselect with -m 'not slow')")
