"""The restoration benchmark's verdict per task, read from `experiments.restore` runs.

The goal of the benchmark (docs/restoration.md) is per task: an AR-CSM posterior mean
ahead of the task's best classical restorer in PSNR. Each run's results.json holds, for
every model row, the paired difference to that restorer over the same images (mean and
standard error, `psnr_minus_best_classical`). This module reads those files (JSON only,
every field checked; a bad file is one line naming the file and the field) and picks, per
task, the AR-CSM posterior-mean row with the largest paired difference, so runs of
different training lengths or settings can be set side by side (`plotting.save_gap_bars`).

Point estimates (denoise-and-project, kind 'point'), the earlier restorations (kind
'earlier') and single samples are not posterior means and are never picked.
Written here: a few lines of bookkeeping over our own results format.
"""

import json
import math
import os
import re
from typing import Dict, List, Optional

RESULTS = "results.json"
PRIOR_PREFIX = "AR-CSM"


def _pair(value, where: str):
  """[mean, standard error] as two finite floats, else ValueError naming `where`."""
  ok = (isinstance(value, (list, tuple)) and len(value) == 2
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                for v in value))
  if not ok:
    raise ValueError(f"{where}: expected [mean, standard error] of two finite numbers, "
                     f"got {str(value)[:60]}")
  return float(value[0]), float(value[1])


def load(path: str) -> dict:
  """results.json of an `experiments.restore` run (`path`: the file or its directory),
  checked: a dict 'tasks' of tasks, each with a dict 'rows' of rows, each row with a
  string 'kind' and a 'psnr' pair; a model row's 'psnr_minus_best_classical', where
  present, a pair too. ValueError in one line naming the file and the field."""
  if os.path.isdir(path):
    path = os.path.join(path, RESULTS)
  try:
    with open(path, "rb") as f:
      data = json.loads(f.read().decode("utf-8"))
  except FileNotFoundError:
    raise ValueError(f"{path}: no such file (an experiments.restore --out directory "
                     "or its results.json)") from None
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ValueError(f"{path}: not a readable JSON file ({type(e).__name__}: "
                     f"{str(e).splitlines()[0][:80]})") from None
  tasks = data.get("tasks") if isinstance(data, dict) else None
  if not isinstance(tasks, dict) or not tasks:
    raise ValueError(f"{path}: field 'tasks' missing or empty: not the results of "
                     "python -m experiments.restore")
  for task, entry in tasks.items():
    rows = entry.get("rows") if isinstance(entry, dict) else None
    if not isinstance(rows, dict):
      raise ValueError(f"{path}: field tasks.{task}.rows missing or not a mapping")
    for name, row in rows.items():
      where = f"{path}: field tasks.{task}.rows[{name!r}]"
      if not isinstance(row, dict) or not isinstance(row.get("kind"), str):
        raise ValueError(f"{where}.kind missing or not a string")
      _pair(row.get("psnr"), f"{where}.psnr")
      if "psnr_minus_best_classical" in row:
        _pair(row["psnr_minus_best_classical"], f"{where}.psnr_minus_best_classical")
  return data


def is_prior_mean(name: str, row: dict, prefix: str = PRIOR_PREFIX) -> bool:
  """A posterior-mean row of a `prefix` prior (the default: the AR-CSMs): kind
  'posterior', a 'mean' and no 'sample' in its name ("posterior mean", the filter's
  Rao-Blackwellized "filter mean", "Tweedie posterior mean", "posterior mean, annealed
  from ...")."""
  return (row["kind"] == "posterior" and name.startswith(prefix)
          and re.search(r"\bmean\b", name) is not None and "sample" not in name
          and "psnr_minus_best_classical" in row)


def best_classical(entry: dict) -> Optional[str]:
  """The task's best classical row by mean PSNR (the reference of the paired
  differences), or None if the task has none."""
  rows = {n: r for n, r in entry["rows"].items() if r["kind"] == "classical"}
  return max(rows, key=lambda n: rows[n]["psnr"][0]) if rows else None


def verdict(results: dict, prefix: str = PRIOR_PREFIX) -> Dict[str, dict]:
  """Per task: the `prefix` posterior-mean row with the largest paired difference to the
  best classical row. {task: {'row', 'diff': (mean, se), 'psnr': (mean, se),
  'best_classical': (name, psnr mean), 'ahead': diff mean > 0}}; tasks without such a
  row are left out."""
  out = {}
  for task, entry in results["tasks"].items():
    cands = {n: r for n, r in entry["rows"].items() if is_prior_mean(n, r, prefix)}
    if not cands:
      continue
    name = max(cands, key=lambda n: cands[n]["psnr_minus_best_classical"][0])
    diff = tuple(cands[name]["psnr_minus_best_classical"])
    ref = best_classical(entry)
    out[task] = {"row": name, "diff": diff, "psnr": tuple(cands[name]["psnr"]),
                 "best_classical": (ref, entry["rows"][ref]["psnr"][0]) if ref else None,
                 "ahead": diff[0] > 0}
  return out


def _per_image(row: dict, where: str) -> List[float]:
  v = row.get("psnr_per_image")
  if not (isinstance(v, list) and v and all(isinstance(a, (int, float))
                                            and not isinstance(a, bool) and math.isfinite(a)
                                            for a in v)):
    raise ValueError(f"{where}.psnr_per_image missing or not a list of finite numbers")
  return [float(a) for a in v]


def _fingerprint(entry: dict, where: str):
  """What a task's observation looks like per image, from rows that depend on it alone:
  the 'corrupted' row, else the first classical row that is not a denoise-and-project
  loop (super-resolution has no corrupted row; its upsamplers read y only)."""
  for name, row in entry["rows"].items():
    if row["kind"] == "input" or (row["kind"] == "classical"
                                  and "denoise-and-project" not in name):
      return name, _per_image(row, f"{where}.rows[{name!r}]")
  return None, None


def _mean_se(d: List[float]):
  """(mean, standard error of the mean) of paired differences."""
  m = sum(d) / len(d)
  if len(d) < 2:
    return m, 0.0
  return m, math.sqrt(sum((a - m) ** 2 for a in d) / (len(d) - 1) / len(d))


def pooled_verdict(runs: List[dict], names: List[str],
                   prefix: str = PRIOR_PREFIX) -> List[Dict[str, dict]]:
  """verdict() with one reference per task for all runs: the best classical row of any
  run by mean PSNR (e.g. runs that differ in a classical loop's settings), each run's best
  `prefix` posterior-mean row paired with it image by image. The runs must hold the same
  images and corruptions (checked on the rows that depend on the observation alone);
  ValueError in one line naming the run (`names`) otherwise."""
  out = [{} for _ in runs]
  tasks = []
  for r in runs:
    tasks += [t for t in r["tasks"] if t not in tasks]
  for task in tasks:
    have = [(i, r["tasks"][task]) for i, r in enumerate(runs) if task in r["tasks"]]
    ref_name, ref_vals, ref_run, ref_mean = None, None, None, -math.inf
    fp_name, fp, fp_run = None, None, None
    for i, entry in have:
      where = f"{names[i]}: field tasks.{task}"
      if fp_run is None:
        fp_name, fp = _fingerprint(entry, where)
        fp_run = names[i]
      elif fp_name is not None:
        row = entry["rows"].get(fp_name)
        if row is None or _per_image(row, f"{where}.rows[{fp_name!r}]") != fp:
          raise ValueError(f"{names[i]}: task {task} has other images or corruptions than "
                           f"{fp_run} (its {fp_name!r} row is missing or differs image by "
                           "image)")
      for name, row in entry["rows"].items():
        if row["kind"] == "classical" and row["psnr"][0] > ref_mean:
          ref_name, ref_run, ref_mean = name, names[i], row["psnr"][0]
          ref_vals = _per_image(row, f"{where}.rows[{name!r}]")
    if ref_vals is None:
      continue
    for i, entry in have:
      cands = {n: r for n, r in entry["rows"].items() if is_prior_mean(n, r, prefix)}
      best = None
      for n, row in cands.items():
        vals = _per_image(row, f"{names[i]}: field tasks.{task}.rows[{n!r}]")
        if len(vals) != len(ref_vals):
          raise ValueError(f"{names[i]}: task {task} has {len(vals)} images, "
                           f"{ref_run} {len(ref_vals)}")
        m, se = _mean_se([a - b for a, b in zip(vals, ref_vals)])
        if best is None or m > best["diff"][0]:
          best = {"row": n, "diff": (m, se), "psnr": tuple(row["psnr"]),
                  "best_classical": (f"{ref_name} ({ref_run})", ref_mean),
                  "ahead": m > 0}
      if best is not None:
        out[i][task] = best
  return out


def tasks_of(verdicts: List[Dict[str, dict]]) -> List[str]:
  """The tasks of several runs' verdicts, each once, in the order they first appear."""
  tasks = []
  for v in verdicts:
    tasks += [t for t in v if t not in tasks]
  return tasks


def table(labels: List[str], verdicts: List[Dict[str, dict]]) -> str:
  """Markdown: one line per task, per run the best posterior mean's paired difference
  (mean ± standard error) and, last, how many tasks each run is ahead on."""
  tasks = tasks_of(verdicts)
  lines = ["| task | " + " | ".join(labels) + " |", "|---" * (len(labels) + 1) + "|"]
  for t in tasks:
    cells = []
    for v in verdicts:
      if t in v:
        m, se = v[t]["diff"]
        cells.append(f"{m:+.2f} ± {se:.2f}")
      else:
        cells.append("-")
    lines.append(f"| {t} | " + " | ".join(cells) + " |")
  lines.append("| ahead on | " + " | ".join(
      f"{sum(e['ahead'] for e in v.values())} of {len(v)}" for v in verdicts) + " |")
  return "\n".join(lines) + "\n"
