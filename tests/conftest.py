"""Shared fixtures (paths to the offline data beside the repository) and the two tiers.

Tests marked `slow` (training runs, training subprocesses, the notebook, multi-host,
experiment scripts) are deselected by default: `python -m pytest -q` is the fast tier,
`-m slow` runs the slow tier only and `--runslow` runs both. An explicit `-m` wins.

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

# Compiled programs persist between test runs (JAX's own compilation cache, in the
# gitignored .pytest_cache): most of the fast tier's time is XLA compilation, so a second
# run of the suite is much faster than the first. CSM_TEST_JAX_CACHE=0 turns it off; the
# environment variable carries the setting to the subprocesses that tests start.
if os.environ.get("CSM_TEST_JAX_CACHE", "1") != "0":
  os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                        str(REPO / ".pytest_cache" / "jax"))
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.1")
  jax.config.update("jax_compilation_cache_dir",
                    os.environ["JAX_COMPILATION_CACHE_DIR"])
  jax.config.update("jax_persistent_cache_min_compile_time_secs",
                    float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def mnist_data_dir():
  d = os.environ.get("TFDS_DATA_DIR") or str(SHARED / "tfds")
  if not (pathlib.Path(d) / "mnist").exists():
    pytest.skip("prepared MNIST not available (set TFDS_DATA_DIR)")
  return d


def pytest_addoption(parser):
  parser.addoption("--runslow", action="store_true", default=False,
                   help="run the slow tier too (tests marked slow)")


def pytest_collection_modifyitems(config, items):
  if config.getoption("--runslow") or config.getoption("-m"):
    return
  keep, slow = [], []
  for item in items:
    (slow if item.get_closest_marker("slow") else keep).append(item)
  if slow:
    config.hook.pytest_deselected(items=slow)
    items[:] = keep
