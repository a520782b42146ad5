"""notebooks/quickstart.ipynb runs top to bottom (nbclient), on tiny settings, and ends with
finite test NLLs for both parts (2-D and MNIST)."""

import json
import math
import os
import pathlib
import re
import sys
import time

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

REPO = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "quickstart.ipynb"
CELL_TIMEOUT_S = 600
SHARED_TFDS = REPO.parent / "shared" / "tfds"

# Tiny settings: each name is assigned in a cell tagged "parameters"; the test runs a cell
# that reassigns it right after that cell (as papermill injects parameters).
TINY = {
    # part 1, 2-D
    "NUM_STEPS": 200, "NUM_TRAIN": 500, "NUM_SAMPLES": 200, "NUM_NLL": 100, "NUM_POINTS": 65,
    # part 2, MNIST (MNIST_DATA_DIR is set by the test)
    "MNIST_STEPS": 20, "MNIST_HIDDEN": (32, 32), "MNIST_CONTEXT": 4, "MNIST_BATCH": 16,
    "MNIST_NUM_VAL": 4, "MNIST_SAMPLES": 4, "MNIST_LANGEVIN_STEPS": 2, "MNIST_NUM_NLL": 4,
    "MNIST_NUM_POINTS": 33, "TRAIN_MLE": True,
}


@pytest.fixture
def this_python_kernel(tmp_path, monkeypatch):
  """A kernelspec 'python3' that runs this interpreter (its venv and its csm_jax), first on
  JUPYTER_PATH, whatever other 'python3' kernels the machine has."""
  spec_dir = tmp_path / "jupyter" / "kernels" / "python3"
  spec_dir.mkdir(parents=True)
  spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
          "display_name": "Python 3 (csm_jax tests)", "language": "python"}
  (spec_dir / "kernel.json").write_text(json.dumps(spec))
  monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
  return "python3"


def _text_outputs(nb):
  for cell in nb.cells:
    for out in cell.get("outputs", []):
      if out.get("output_type") == "stream":
        yield out.get("text", "")
      elif "data" in out:
        yield out["data"].get("text/plain", "")


def test_committed_notebook_has_no_outputs():
  nb = nbformat.read(NOTEBOOK, as_version=4)
  nbformat.validate(nb)
  for cell in nb.cells:
    if cell.cell_type == "code":
      assert not cell.outputs and cell.execution_count is None, (
          f"cell {cell.get('id')} has stored outputs: strip them before committing")


def _mnist_data_dir() -> str:
  """Where the test's MNIST is: $TFDS_DATA_DIR, else ../shared/tfds beside the repository."""
  d = os.environ.get("TFDS_DATA_DIR") or str(SHARED_TFDS)
  if not list(pathlib.Path(d).glob("mnist/*/dataset_info.json")):
    pytest.fail(f"the notebook's MNIST part needs prepared tfds MNIST, not found in {d!r} "
                "(from $TFDS_DATA_DIR, else ../shared/tfds beside the repository): set "
                "TFDS_DATA_DIR to a tfds data dir that holds mnist/<version>/")
  return d


def inject_parameters(nb, values: dict) -> None:
  """After each cell tagged 'parameters', a cell that reassigns the names of `values`
  that cell assigns; every name must be assigned in some parameters cell."""
  left = dict(values)
  cells = []
  for cell in nb.cells:
    cells.append(cell)
    if cell.cell_type != "code" or "parameters" not in cell.metadata.get("tags", []):
      continue
    names = [k for k in left if re.search(rf"^{k}\s*=", cell.source, re.MULTILINE)]
    if names:
      cells.append(nbformat.v4.new_code_cell(
          "\n".join(f"{k} = {left.pop(k)!r}" for k in names)))
  assert not left, f"not assigned in any 'parameters' cell of the notebook: {sorted(left)}"
  nb.cells = cells


@pytest.mark.slow
def test_quickstart_notebook_runs(this_python_kernel):
  nb = nbformat.read(NOTEBOOK, as_version=4)
  inject_parameters(nb, {**TINY, "MNIST_DATA_DIR": _mnist_data_dir()})
  # the kernel must run this interpreter: first, a cell (not in the file) that says which
  nb.cells.insert(0, nbformat.v4.new_code_cell("import sys; print('KERNEL_PYTHON=' + sys.executable)"))
  client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT_S, startup_timeout=120,
                                   kernel_name=this_python_kernel,
                                   resources={"metadata": {"path": str(REPO)}})
  t0 = time.perf_counter()
  client.execute()  # raises CellExecutionError (with the traceback) if a cell fails
  seconds = time.perf_counter() - t0
  text = "".join(_text_outputs(nb))
  assert f"KERNEL_PYTHON={sys.executable}\n" in text, text[:500]
  match = re.search(r"QUICKSTART_OK nll=(\S+) mnist_bpd=(\S+) mnist_bpd_star=(\S+) "
                    r"mle_bpd=(\S+)", text)
  assert match, f"no QUICKSTART_OK line in the notebook's outputs:\n{text[-3000:]}"
  nll, bpd_min, bpd_star, bpd_mle = (float(v) for v in match.groups())
  assert all(math.isfinite(v) for v in (nll, bpd_min, bpd_star, bpd_mle)), match.group(0)
  assert "identical to the trained ones" in text
  assert f"{TINY['MNIST_SAMPLES']} samples in" in text, text[-3000:]
  print(f"quickstart notebook ran in {seconds:.1f}s: {match.group(0)}")
