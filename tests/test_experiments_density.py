"""Smoke runs of the sampling benchmark and the density-estimation experiments."""

import json
import math
import os

import pytest

from experiments import bench_sampling, mnist_nll, toy2d


def _finite(x):
  return isinstance(x, (int, float)) and math.isfinite(x)


@pytest.mark.slow
def test_bench_sampling_smoke(tmp_path):
  out = tmp_path / "bench"
  bench_sampling.main(["--out", str(out), "--config.model.hidden_sizes=16",
                       "--config.model.context_size=2", "--image_size", "3", "--fixed_point_batches", "1,2",
                       "--config.sampling.num_samples=2", "--config.noise.num_levels=2",
                       "--config.sampling.num_steps=2", "--naive_dims", "2", "--repeats", "1"])
  r = json.loads((out / "results.json").read_text())
  assert _finite(r["speedup_over_naive"]) and r["speedup_over_naive"] > 0
  assert r["naive_dims_timed"] == 2 and "scaled" in r["naive_scaling"]
  assert r["max_rel_diff_naive_vs_cached_first_k"] < 1e-4
  assert [row["batch"] for row in r["fixed_point"]] == [1, 2]
  for row in r["fixed_point"]:
    assert 1 <= row["sweeps"] <= r["dim"] + 1 and row["max_abs_diff_to_sequential"] < 1e-3
    assert row["head_evaluations"]["fixed_point"] == (
        row["sweeps"] * row["head_evaluations"]["sequential"])


@pytest.mark.slow
def test_toy2d_smoke(tmp_path):
  toy2d.main(["--out", str(tmp_path), "--datasets", "ring8",
              "--config.training.num_steps=20", "--config.training.batch_size=32",
              "--config.model.context_size=4", "--config.data.num_train=500",
              "--config.data.num_test=100", "--arcsm.model.hidden_sizes=16,16",
              "--arcsm.model.head_hidden=8", "--arcsm.sampling.num_steps=2",
              "--arcsm.noise.num_levels=3", "--mol.model.num_mixtures=3", "--num_val", "50",
              "--num_points", "65", "--num_samples", "50", "--stride", "2",
              "--seeds", "0,1", "--num_metric_samples", "60", "--num_hist_data", "500",
              "--hist_bins", "8", "--mmd_block", "32"])
  r = json.loads((tmp_path / "results.json").read_text())
  row = r["table"]["ring8"]
  assert row["num_seeds"] == 2 and set(r["runs"]["ring8"]) == {"0", "1"}
  for key in ("arcsm_mmd2", "mol_mmd2", "arcsm_kl", "mol_kl", "arcsm_js", "mol_js",
              "floor_kl", "floor_js", "arcsm_nll"):
    assert _finite(row[key]) and _finite(row[key + "_std"])
  assert 0 <= row["mol_js"] <= math.log(2)
  assert all(_finite(row[k]) for k in ("arcsm_nll", "mol_nll", "arcsm_quad_error"))
  assert _finite(row["arcsm_nll_best_sigma"]) and _finite(row["best_sigma"])
  d = r["datasets"]["ring8"]
  assert d["mol"]["effective_parameters"] > d["arcsm"]["effective_parameters"]
  assert d["mol"]["parameters"] > d["arcsm"]["parameters"]
  assert os.path.getsize(tmp_path / "toy2d.png") > 0


@pytest.mark.slow
def test_mnist_nll_smoke(tmp_path, mnist_data_dir):
  mnist_nll.main(["--out", str(tmp_path), f"--config.data.data_dir={mnist_data_dir}",
                  "--config.model.hidden_sizes=8", "--config.model.context_size=2",
                  "--config.model.head_hidden=4", "--config.model.num_mixtures=2",
                  "--num_steps", "4", "--eval_every", "2",
                  "--config.training.batch_size=8",
                  "--dsm_sigmas", "0.1", "--num_eval", "16", "--num_final", "16",
                  "--num_quadrature", "2", "--num_points", "17", "--quad_batch", "2",
                  "--num_samples", "2", "--num_train", "256", "--num_val", "2"])
  r = json.loads((tmp_path / "results.json").read_text())
  assert set(r["table_fig3a"]) == {"gaussian_mle", "gaussian_csm", "gaussian_dsm_0.1",
                                   "gaussian_ssm"}
  for row in r["table_fig3a"].values():
    assert _finite(row["bpd"]) and _finite(row["train_seconds"])
  hist = r["runs"]["gaussian_mle"]["history"]
  assert [h["step"] for h in hist] == [0, 2, 4]
  gaps = r["gap_vs_steps"]
  assert [g["step"] for g in gaps] == [2, 4, "final"]
  for g in gaps:
    assert math.isclose(g["gap"], g["gaussian_csm"] - g["gaussian_mle"], abs_tol=1e-12)
  assert gaps[-1]["gaussian_mle"] == r["table_fig3a"]["gaussian_mle"]["bpd"]
  assert set(r["table_arcsm"]) == {"arcsm_csm", "arcsm_csm_best_sigma", "gaussian_mle",
                                   "mol_mle"}
  assert r["table_arcsm"]["arcsm_csm_best_sigma"]["sigma"] in (
      r["arcsm_comparison"]["validation_per_sigma"]["sigmas"])
  assert _finite(r["table_arcsm"]["arcsm_csm"]["quad_error_bpd"])
  assert all(_finite(v["bpd"]) for v in r["table_arcsm"].values())
  check = r["arcsm_comparison"]["quadrature_check_gaussian_mle"]
  for key in ("wide_grid", "same_grid"):
    assert _finite(check[key]["error_nats_per_dim"]) and _finite(check[key]["quadrature_bpd"])
  for png in ("mnist_nll_curves.png", "mnist_nll_arcsm.png", "mnist_samples.png"):
    assert os.path.getsize(tmp_path / png) > 0
