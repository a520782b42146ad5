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


def _pooled_run(nlm, model, corrupted=(10.0, 11.0, 12.0)):
  """One task, three images: per-image PSNR of the corrupted input, a median, the NLM loop
  (its level differs between runs) and an AR-CSM posterior mean."""
  row = lambda kind, v: {"kind": kind, "psnr": [sum(v) / len(v), 0.1],
                         "psnr_per_image": list(v)}
  mean = row("posterior", model)
  mean["psnr_minus_best_classical"] = [0.0, 0.0]   # its own run's; pooling ignores it
  return {"tasks": {"sp_0.3": {"rows": {
      "corrupted": row("input", corrupted), "median": row("classical", (18.0, 18.0, 18.0)),
      "nl_means denoise-and-project": row("classical", nlm),
      "AR-CSM (smoothed joint), posterior mean, annealed from denoise-and-project": mean}}}}


def test_pooled_verdict_pairs_every_run_with_the_best_classical_row_of_all():
  a = _pooled_run(nlm=(19.0, 20.0, 21.0), model=(20.0, 21.0, 23.0))   # NLM loop 20.0
  b = _pooled_run(nlm=(21.0, 22.0, 23.5), model=(21.0, 21.5, 22.0))   # NLM loop 22.17
  va, vb = summary.pooled_verdict([a, b], ["a", "b"])
  # the reference is run b's NLM loop for both runs; differences image by image
  want_a = [20.0 - 21.0, 21.0 - 22.0, 23.0 - 23.5]
  m = sum(want_a) / 3
  se = (sum((d - m) ** 2 for d in want_a) / 2 / 3) ** 0.5
  assert va["sp_0.3"]["diff"] == pytest.approx((m, se))
  assert va["sp_0.3"]["best_classical"] == ("nl_means denoise-and-project (b)",
                                           pytest.approx(66.5 / 3))
  assert not va["sp_0.3"]["ahead"] and not vb["sp_0.3"]["ahead"]
  assert vb["sp_0.3"]["diff"][0] == pytest.approx((0.0 - 0.5 - 1.5) / 3)
  # alone, run a is paired with its own NLM loop, and ahead
  alone, = summary.pooled_verdict([a], ["a"])
  assert alone["sp_0.3"]["diff"][0] == pytest.approx(4.0 / 3) and alone["sp_0.3"]["ahead"]
  # other corruptions, or a missing per-image list, are one line naming the run
  c = _pooled_run(nlm=(1.0, 2.0, 3.0), model=(1.0, 2.0, 3.0), corrupted=(10.0, 11.0, 12.5))
  with pytest.raises(ValueError, match=r"^c: task sp_0.3 has other images") as e:
    summary.pooled_verdict([a, c], ["a", "c"])
  assert "\n" not in str(e.value)
  del b["tasks"]["sp_0.3"]["rows"]["nl_means denoise-and-project"]["psnr_per_image"]
  with pytest.raises(ValueError, match=r"^b: field tasks.sp_0.3.rows\['nl_means denoise"):
    summary.pooled_verdict([a, b], ["a", "b"])


def test_the_command_pools_the_classical_rows(tmp_path):
  a = _write(tmp_path / "a.json", _pooled_run(nlm=(19.0, 20.0, 21.0), model=(20.0, 21.0, 23.0)))
  b = _write(tmp_path / "b.json", _pooled_run(nlm=(21.0, 22.0, 23.5), model=(21.0, 21.5, 22.0)))
  out = tmp_path / "out"
  restore_summary.main(["--out", str(out), "--runs", f"{a},{b}", "--pool_classical"])
  r = json.loads((out / "results.json").read_text())
  assert r["pool_classical"] is True
  assert r["verdicts"]["a.json"]["sp_0.3"]["best_classical"][0] == (
      "nl_means denoise-and-project (b.json)")
  assert "| ahead on | 0 of 1 | 0 of 1 |" in (out / "gap.md").read_text()
