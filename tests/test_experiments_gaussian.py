"""Smoke runs of the Sec. 5.1 experiment scripts (Fig. 1 and 2) on tiny settings."""

import json
import math

import pytest

from experiments import gaussian_convergence
from experiments import gaussian_scaling


def _finite(v):
  return isinstance(v, (int, float)) and math.isfinite(v)


@pytest.mark.slow
def test_gaussian_scaling_smoke(tmp_path):
  out = tmp_path / "scaling"
  gaussian_scaling.main(["--out", str(out), "--dims", "2,3", "--steps", "2", "--min_steps", "1",
                         "--point_budget", "0", "--batch", "4", "--hidden", "8",
                         "--head_hidden", "4", "--sm_max_dim", "2"])
  written = json.loads((out / "results.json").read_text())
  res = written["results"]
  assert set(res) == {"sm", "ssm", "dsm", "csm"}
  for method, points in res.items():
    assert set(points) == {"2", "3"}
    for d, rec in points.items():
      assert rec["params"] > 0
      if method == "sm" and d == "3":
        assert "--sm_max_dim" in rec["skipped"]  # a skipped point says why
        continue
      assert "skipped" not in rec
      assert _finite(rec["step_seconds"]) and rec["step_seconds"] > 0
      assert rec["temp_bytes"] is None or rec["temp_bytes"] >= 0
      assert _finite(rec["final_loss"])
  assert (out / "scaling.png").stat().st_size > 0
  assert "step_ratio_D3_over_D2" in written and written["args"]["dims"] == "2,3"


@pytest.mark.slow
def test_gaussian_convergence_smoke(tmp_path):
  out = tmp_path / "convergence"
  gaussian_convergence.main(["--out", str(out), "--dim", "4", "--steps", "6", "--eval_every", "3",
                             "--num_eval", "32", "--batch", "8", "--hidden", "8",
                             "--head_hidden", "4", "--nets", "made", "--dsm_sigmas", "0.1",
                             "--var_draws", "4"])
  res = json.loads((out / "results.json").read_text())
  assert set(res["runs"]) == {"csm-made", "ssm-made", "ssm_plain-made", "ssm_unit-made",
                              "ssm_unit_vr-made", "dsm_0.1-made"}
  runs = res["runs"]
  assert (runs["ssm_unit-made"]["ssm_projection"], runs["ssm_unit-made"]["ssm_variance_reduced"]
          ) == ("gaussian_unit", False)
  assert runs["ssm_unit_vr-made"]["optimum_rel_fisher"] == (1 - 1 / 4) ** 2
  assert runs["ssm-made"]["optimum_rel_fisher"] == runs["ssm_unit-made"]["optimum_rel_fisher"] == 0
  for name, r in res["runs"].items():
    assert len(r["loss"]) == 6 and all(_finite(v) for v in r["loss"])
    assert r["eval_steps"] == [0, 3, 6]
    assert len(r["eval_seconds"]) == len(r["rel_fisher"]) == 3
    assert all(_finite(v) and v >= 0 for v in r["rel_fisher"])
    assert _finite(r["final_rel_fisher"]) and _finite(r["train_seconds"])
    assert "seconds_to_threshold" in r
  assert res["runs"]["dsm_0.1-made"]["dsm_bias_floor"] == (0.01 / 0.02) ** 2
  for group in ("init", "csm_trained"):
    v = res["variance"][group]
    assert set(v) == {"csm", "ssm", "ssm_rademacher", "dsm_0.1"}
    for rec in v.values():
      assert _finite(rec["var"]) and rec["var"] >= 0 and _finite(rec["grad_var"])
  for png in ("convergence_loss.png", "convergence_error.png", "loss_variance.png"):
    assert (out / png).stat().st_size > 0


def test_gaussian_convergence_run_list():
  """--csm 0 drops the CSM run; --ssm_variants picks and orders the SSM runs."""
  args = gaussian_convergence.parse_args(["--out", "unused", "--dim", "3", "--hidden", "8",
                                          "--head_hidden", "4", "--csm", "0", "--dsm_sigmas", "",
                                          "--ssm_variants", "unit_vr,vr,sphere"])
  runs = gaussian_convergence.build_runs(args)
  assert list(runs) == ["ssm_unit_vr-made", "ssm-made", "ssm_sphere-made",
                        "ssm_unit_vr-mlp", "ssm-mlp", "ssm_sphere-mlp"]
  args.ssm_variants = "unit_normal"
  with pytest.raises(ValueError, match="--ssm_variants"):
    gaussian_convergence.build_runs(args)
