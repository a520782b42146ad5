"""The restoration benchmark at a glance: runs of `experiments.restore` side by side.

For every task of every run given, the AR-CSM posterior-mean row with the largest paired
PSNR difference to the task's best classical restorer (mean and standard error over the
same images; denoise-and-project, being a point estimate, and single samples are not
candidates), as a bar chart (right of zero: ahead) and a markdown table with, per run,
the number of tasks it is ahead on (csm_jax/restore/summary.py). It reads only the runs'
results.json files and trains nothing.

  python -m experiments.restore_summary --out DIR \
      --runs OUT,OUT6,OUT24 --labels "1500 steps,6000 steps,24000 steps"

With --pool_classical the reference of every run is the same: per task, the best
classical row of all the runs given (by mean PSNR; e.g. runs that differ only in the
denoise-and-project loop's levels, whose NLM control moves with them), each run's row
paired with it image by image. The runs must then hold the same images and corruptions
(checked); the reference's row and run are in results.json.

Writes DIR/results.json (each run's verdict per task), DIR/gap.md and DIR/gap.png.
"""

import os

from experiments import common


def flags():
  p = common.parser(__doc__, prefixes=())
  p.add_argument("--out", required=True, help="output directory")
  p.add_argument("--runs", required=True,
                 help="comma-separated experiments.restore --out directories (or their "
                      "results.json files)")
  p.add_argument("--labels", default=None,
                 help="comma-separated labels, one per run (default: the directories' names)")
  p.add_argument("--prefix", default="AR-CSM",
                 help="rows whose name starts with this are candidates (e.g. \"AR-CSM "
                      "(smoothed joint)\" for one prior, \"MLE\" for the MLE priors)")
  p.add_argument("--pool_classical", action="store_true",
                 help="one reference per task for every run: the best classical row of all "
                      "the runs (same images and corruptions, checked); default: each run's "
                      "own best classical row")
  p.add_argument("--title", default="AR-CSM posterior mean against the best classical "
                                    "restorer (bars: 2 standard errors)",
                 help="the picture's title")
  return p


def main(argv=None):
  args = flags().parse_args(argv)
  from csm_jax import atomic  # pylint: disable=g-import-not-at-top
  from csm_jax import plotting  # pylint: disable=g-import-not-at-top
  from csm_jax.restore import summary  # pylint: disable=g-import-not-at-top

  runs = [r for r in args.runs.split(",") if r]
  labels = ([s.strip() for s in args.labels.split(",")] if args.labels
            else [os.path.basename(os.path.normpath(r)) for r in runs])
  if len(labels) != len(runs):
    raise SystemExit(f"--labels: {len(labels)} labels for {len(runs)} runs")
  try:
    if args.pool_classical:
      verdicts = summary.pooled_verdict([summary.load(r) for r in runs], labels,
                                        prefix=args.prefix)
    else:
      verdicts = [summary.verdict(summary.load(r), prefix=args.prefix) for r in runs]
  except ValueError as e:
    raise SystemExit(str(e)) from None
  tasks = summary.tasks_of(verdicts)
  if not tasks:
    raise SystemExit(f"--runs: no posterior-mean row of a prior named {args.prefix!r}... "
                     f"in {', '.join(runs)}")

  out = {"what": "experiments.restore_summary", "runs": dict(zip(labels, runs)),
         "prefix": args.prefix, "pool_classical": bool(args.pool_classical),
         "verdicts": {lab: {t: {**e, "diff": list(e["diff"]), "psnr": list(e["psnr"])}
                            for t, e in v.items()} for lab, v in zip(labels, verdicts)}}
  common.write_results(args.out, out, args)
  md = summary.table(labels, verdicts)
  atomic.write_text(os.path.join(args.out, "gap.md"), md)
  plotting.save_gap_bars(os.path.join(args.out, "gap.png"), tasks,
                         {lab: {t: e["diff"] for t, e in v.items()}
                          for lab, v in zip(labels, verdicts)}, title=args.title)
  print(md, end="")
  print(f"wrote {args.out}/results.json, gap.md, gap.png")


if __name__ == "__main__":
  main()
