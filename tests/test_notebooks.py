"""notebooks/quickstart.ipynb runs top to bottom (nbclient) and ends with a finite test NLL."""

import json
import math
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


def test_quickstart_notebook_runs(this_python_kernel):
  nb = nbformat.read(NOTEBOOK, as_version=4)
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
  match = re.search(r"QUICKSTART_OK nll=(\S+)", text)
  assert match, f"no QUICKSTART_OK line in the notebook's outputs:\n{text[-3000:]}"
  assert math.isfinite(float(match.group(1))), match.group(0)
  assert "identical to the trained ones" in text
  print(f"quickstart notebook ran in {seconds:.1f}s: {match.group(0)}")
