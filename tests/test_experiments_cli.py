"""The experiments' command lines: --help answers fast (flags are parsed before JAX is
imported) and shows every flag's help and default, names the --config.FIELD=value
overrides, shows no machine path; --out is a directory with results.json; the helper
modules refuse to run as scripts."""

import json
import os
import pathlib
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO

ENV = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
HELPERS = ("common", "matched_sizes")
EXPERIMENTS = sorted(p.stem for p in (REPO / "experiments").glob("*.py")
                     if p.stem not in HELPERS + ("__init__",))
# no config file behind them
NO_CONFIG_FLAGS = ("gaussian_convergence", "gaussian_scaling", "restore_summary")

# Runs each experiment's --help in one fresh interpreter (as `python -m` does) and reports
# its parser's flags and whether --help imported JAX or Flax.
_PROBE = r"""
import argparse, io, json, contextlib, runpy, sys
report = {}
for name in sys.argv[1:]:
  parsers = []
  orig = argparse.ArgumentParser.parse_known_args
  def spy(self, *a, **k):
    parsers.append(self)
    return orig(self, *a, **k)
  argparse.ArgumentParser.parse_known_args = spy
  sys.argv = [f"experiments/{name}.py", "--help"]
  out = io.StringIO()
  code = None
  with contextlib.redirect_stdout(out):
    try:
      runpy.run_module(f"experiments.{name}", run_name="__main__", alter_sys=True)
    except SystemExit as e:
      code = e.code
  argparse.ArgumentParser.parse_known_args = orig
  p = parsers[0]
  flags = [{"flags": a.option_strings, "help": a.help, "required": a.required,
            "default": a.default if isinstance(a.default, (str, int, float, bool, type(None)))
            else repr(a.default)}
           for a in p._actions if a.option_strings and a.dest != "help"]
  report[name] = {"code": code, "help": out.getvalue(), "flags": flags,
                  "heavy": sorted(m for m in ("jax", "flax", "optax", "matplotlib")
                                  if m in sys.modules)}
print(json.dumps(report))
"""


@pytest.fixture(scope="module")
def probe():
  p = subprocess.run([sys.executable, "-c", _PROBE, *EXPERIMENTS], cwd=REPO, env=ENV,
                     capture_output=True, text=True, timeout=120)
  assert p.returncode == 0, p.stderr[-3000:]
  return json.loads(p.stdout.splitlines()[-1])


def test_every_experiment_is_listed():
  assert len(EXPERIMENTS) >= 14 and "toy2d" in EXPERIMENTS and "bench_step" in EXPERIMENTS


def test_usage_lists_every_experiment():
  text = (REPO / "docs" / "usage.md").read_text()
  listed = text.split("with NAME one of", 1)[1].split(". `--help`", 1)[0]
  names = sorted(n.strip() for n in " ".join(listed.split()).split(","))
  assert names == EXPERIMENTS


def test_help_imports_no_jax(probe):
  for name in EXPERIMENTS:
    assert probe[name]["code"] == 0, name
    assert probe[name]["heavy"] == [], (name, probe[name]["heavy"])


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_help_answers_in_under_two_seconds(name):
  t0 = time.perf_counter()
  p = subprocess.run([sys.executable, "-m", f"experiments.{name}", "--help"], cwd=REPO,
                     env=ENV, capture_output=True, text=True, timeout=60)
  seconds = time.perf_counter() - t0
  assert p.returncode == 0, p.stderr[-2000:]
  assert f"python -m experiments.{name}" in p.stdout
  assert seconds < 2.0, f"{name} --help took {seconds:.2f}s"


def test_every_flag_has_help_and_shows_its_default(probe):
  for name in EXPERIMENTS:
    text = " ".join(probe[name]["help"].split())
    packed = "".join(text.split())   # argparse may wrap inside a long default
    for f in probe[name]["flags"]:
      assert f["help"], (name, f["flags"])
      shown = f["default"] not in (None, False) and not f["required"]
      if shown and "default" not in f["help"].lower():
        want = f"(default: {f['default'] if f['default'] != '' else 'empty'})"
        assert "".join(want.split()) in packed, (name, f["flags"])
    assert "(default:" in text, name
    assert "--out" in text and "results.json" in text, name


def test_help_names_the_config_overrides(probe):
  for name in EXPERIMENTS:
    text = " ".join(probe[name]["help"].split())
    assert ("--config.FIELD=value" in text) == (name not in NO_CONFIG_FLAGS), name


def test_no_machine_paths_in_defaults(probe):
  for name in EXPERIMENTS:
    for f in probe[name]["flags"]:
      d = f["default"]
      if isinstance(d, str):
        assert not os.path.isabs(d) and "shared" not in d, (name, f["flags"], d)
    assert str(REPO) not in probe[name]["help"], name
    assert str(REPO.parent) not in probe[name]["help"], name


def test_every_experiment_takes_out_as_a_directory(probe):
  for name in EXPERIMENTS:
    outs = [f for f in probe[name]["flags"] if "--out" in f["flags"]]
    assert outs and "directory" in outs[0]["help"], name
  text = {p.stem: p.read_text() for p in (REPO / "experiments").glob("*.py")}
  for name in EXPERIMENTS:   # no experiment writes a JSON of its own name any more
    for old in (f"{name}.json", "_meta.json", "summary.json", "table1.json",
                "table2.json", "sample_quality.json"):
      assert f'"{old}"' not in text[name], (name, old)


def test_results_json_holds_the_arguments(tmp_path):
  import argparse  # pylint: disable=g-import-not-at-top
  from experiments import common  # pylint: disable=g-import-not-at-top
  args = argparse.Namespace(out=str(tmp_path / "o"), steps=3)
  path = common.write_results(args.out, {"value": 1.5}, args, ["training.num_steps=3"])
  assert path == str(tmp_path / "o" / "results.json")
  r = json.loads(pathlib.Path(path).read_text())
  assert r["value"] == 1.5 and r["arguments"]["steps"] == 3
  assert r["config_overrides"] == ["training.num_steps=3"] and "backend" in r["machine"]
  (tmp_path / "file").write_text("x")
  with pytest.raises(SystemExit, match="is a directory"):
    common.results_path(str(tmp_path / "file"))


@pytest.mark.parametrize("name", HELPERS)
def test_helper_modules_are_not_scripts(name):
  p = subprocess.run([sys.executable, "-m", f"experiments.{name}", "--help"], cwd=REPO,
                     env=ENV, capture_output=True, text=True, timeout=60)
  assert p.returncode == 1
  assert "is a helper module, not an experiment" in p.stderr


def test_toy2d_dataset_names_match_the_library():
  from csm_jax import data as data_lib  # pylint: disable=g-import-not-at-top
  from experiments import toy2d  # pylint: disable=g-import-not-at-top
  assert toy2d.DATASETS == data_lib.TOY2D_NAMES
