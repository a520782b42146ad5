"""The benchmark's verdict per task (csm_jax/restore/summary.py) and its command
(experiments.restore_summary): which row counts, and one-line refusals of bad files."""

import json

import matplotlib.image as mpimg
import pytest

from csm_jax import plotting
from csm_jax.restore import summary
from experiments import restore_summary


def _row(kind, psnr, diff=None):
  r = {"kind": kind, "psnr": [psnr, 0.1]}
  if diff is not None:
    r["psnr_minus_best_classical"] = [diff, 0.05]
  return r


def _results(shift=0.0):
  """Two tasks. On sp_0.1 the best model rows by paired difference are a point estimate,
  a sample and an MLE prior's mean; the AR-CSM posterior means are behind."""
  return {"tasks": {
      "sp_0.1": {"rows": {
          "corrupted": _row("input", 13.0),
          "median_3x3": _row("classical", 20.0),
          "nlm loop": _row("classical", 25.0),
          "AR-CSM (smoothed joint), denoise-and-project": _row("point", 26.0, 1.0),
          "AR-CSM (smoothed joint), posterior sample": _row("posterior", 25.5, 0.5),
          "MLE Gaussian MADE, posterior mean": _row("posterior", 25.8, 0.8),
          "AR-CSM Tweedie autoregressive": _row("earlier", 25.9, 0.9),
          "AR-CSM (per-dim), posterior mean": _row("posterior", 20.0, -5.0 + shift),
          "AR-CSM (smoothed joint), posterior mean, annealed from project":
              _row("posterior", 24.5, -0.5 + shift)}},
      "inpaint_centre": {"rows": {
          "biharmonic": _row("classical", 13.4),
          "AR-CSM (per-dim), posterior mean": _row("posterior", 13.7, 0.3 + shift),
          "AR-CSM (per-dim), filter sample": _row("posterior", 16.0, 2.6),
          "AR-CSM (per-dim), filter mean": _row("posterior", 15.9, 2.5 + shift)}},
  }}


def _write(path, obj):
  path.write_text(json.dumps(obj))
  return path


def test_verdict_takes_the_best_ar_csm_posterior_mean_and_nothing_else():
  v = summary.verdict(_results())
  assert v["sp_0.1"]["row"] == "AR-CSM (smoothed joint), posterior mean, annealed from project"
  assert v["sp_0.1"]["diff"] == (-0.5, 0.05) and not v["sp_0.1"]["ahead"]
  assert v["sp_0.1"]["best_classical"] == ("nlm loop", 25.0)
  assert v["inpaint_centre"]["row"] == "AR-CSM (per-dim), filter mean"
  assert v["inpaint_centre"]["ahead"] and v["inpaint_centre"]["psnr"] == (15.9, 0.1)
  mle = summary.verdict(_results(), prefix="MLE")
  assert list(mle) == ["sp_0.1"] and mle["sp_0.1"]["diff"] == (0.8, 0.05)


def test_table_counts_the_tasks_each_run_is_ahead_on():
  md = summary.table(["a", "b"], [summary.verdict(_results()),
                                  summary.verdict(_results(shift=1.0))])
  lines = md.splitlines()
  assert lines[0] == "| task | a | b |"
  assert "| sp_0.1 | -0.50 ± 0.05 | +0.50 ± 0.05 |" in lines
  assert lines[-1] == "| ahead on | 1 of 2 | 2 of 2 |"


def test_load_reads_a_run_directory_and_refuses_bad_files_in_one_line(tmp_path):
  run = tmp_path / "run"
  run.mkdir()
  _write(run / "results.json", _results())
  assert summary.load(str(run))["tasks"].keys() == {"sp_0.1", "inpaint_centre"}
  cases = {
      "missing": None,
      "torn": '{"tasks": {"sp_0.1": {"rows": ',
      "pickle": b"\x80\x04\x95",
      "foreign": json.dumps({"runs": []}),
      "nan": json.dumps({"tasks": {"t": {"rows": {"r": {"kind": "classical",
                                                          "psnr": [float("nan"), 0.1]}}}}}),
      "pair": json.dumps({"tasks": {"t": {"rows": {"r": {
          "kind": "posterior", "psnr": [1.0, 0.1], "psnr_minus_best_classical": [1.0]}}}}}),
      "kind": json.dumps({"tasks": {"t": {"rows": {"r": {"psnr": [1.0, 0.1]}}}}}),
  }
  want = {"missing": "no such file", "torn": "not a readable JSON", "pickle":
          "not a readable JSON", "foreign": "field 'tasks'", "nan": "tasks.t.rows['r'].psnr",
          "pair": "rows['r'].psnr_minus_best_classical", "kind": "rows['r'].kind"}
  for name, content in cases.items():
    path = tmp_path / f"{name}.json"
    if isinstance(content, bytes):
      path.write_bytes(content)
    elif content is not None:
      path.write_text(content)
    with pytest.raises(ValueError) as e:
      summary.load(str(path))
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg and want[name] in msg, (name, msg)


def test_gap_bars_picture(tmp_path):
  path = tmp_path / "gap.png"
  plotting.save_gap_bars(str(path), ["a", "b", "c"],
                         {"x": {"a": (0.5, 0.1), "b": (-1.0, 0.2)}, "y": {"c": (0.1, 0.0)}},
                         title="t")
  img = mpimg.imread(str(path))
  assert img.ndim == 3 and img.shape[0] > 50 and img.shape[1] > 100


def test_the_command_writes_table_picture_and_json(tmp_path, capsys):
  a, b = tmp_path / "a.json", tmp_path / "b"
  b.mkdir()
  _write(a, _results())
  _write(b / "results.json", _results(shift=1.0))
  out = tmp_path / "out"
  restore_summary.main(["--out", str(out), "--runs", f"{a},{b}", "--labels", "short,long"])
  assert "| ahead on | 1 of 2 | 2 of 2 |" in (out / "gap.md").read_text()
  r = json.loads((out / "results.json").read_text())
  assert r["verdicts"]["long"]["sp_0.1"]["diff"] == [0.5, 0.05]
  assert r["runs"] == {"short": str(a), "long": str(b)}
  assert (out / "gap.png").stat().st_size > 1000
  assert "ahead on" in capsys.readouterr().out
  with pytest.raises(SystemExit, match="2 runs"):
    restore_summary.main(["--out", str(out), "--runs", f"{a},{b}", "--labels", "one"])
  restore_summary.main(["--out", str(out), "--runs", str(a), "--prefix", "MLE"])
  assert json.loads((out / "results.json").read_text())["verdicts"]["a.json"]["sp_0.1"][
      "row"] == "MLE Gaussian MADE, posterior mean"
  with pytest.raises(SystemExit, match="no posterior-mean row"):
    restore_summary.main(["--out", str(out), "--runs", str(a), "--prefix", "PixelCNN"])
  bad = _write(tmp_path / "bad.json", {"tasks": {}})
  with pytest.raises(SystemExit) as e:
    restore_summary.main(["--out", str(out), "--runs", str(bad)])
  assert str(bad) in str(e.value) and "\n" not in str(e.value)
