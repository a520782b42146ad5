"""The denoise-and-project loop's first level, per task, on held-out images.

For each task of --tasks and each first level of --starts, runs the smoothed-joint prior's
denoise-and-project loop (restore.method=project, `csm_jax/restore/project.py`: from the
classical start, its Tweedie denoiser and the projection onto the observation in turn,
restore.project_levels levels log-spaced from the start down to restore.project_end) and
its classical control, the same loop with non-local means (as in experiments.restore),
on MNIST test images the benchmark does not score (--image_offset, default 5400), and
reports each loop's PSNR per first level and the level each loop scores best at. The
choice is made per loop: a level chosen for the model's loop is not forced on its
control.

The corruptions follow experiments.restore's rule (seed + 1000 x the task's place in
--tasks) on these images. Needs a trained smoothed-joint work directory (e.g. the one
`python -m experiments.restore --out OUT` trains in OUT/models/joint).

  python -m experiments.restore_levels --out LEV --joint_workdir OUT/models/joint

Writes LEV/results.json after every task (each image's PSNR per loop and level),
LEV/table.md and LEV/levels.png (PSNR against the first level, one panel per task).
"""

import os
import time

from experiments import common

PIN_TASKS = ("sp_0.1", "sp_0.3", "inpaint_random50", "inpaint_random80", "inpaint_centre",
             "inpaint_bottom", "superres_2")
LOOPS = ("AR-CSM loop", "NLM loop")


def parse_args(argv=None):
  p = common.parser(__doc__)
  p.add_argument("--out", required=True, help="output directory")
  p.add_argument("--joint_workdir", required=True,
                 help="work directory of a trained smoothed-joint AR-CSM "
                      "(configs/mnist_denoise_joint.py)")
  p.add_argument("--tasks", default=",".join(PIN_TASKS),
                 help="comma-separated tasks of experiments.restore that pin pixels")
  p.add_argument("--starts", default="0.05,0.1,0.2,0.3",
                 help="comma-separated first levels (pixel units) to compare, each > 0")
  p.add_argument("--num_images", type=int, default=100, help="held-out test images")
  p.add_argument("--image_offset", type=int, default=5400,
                 help="index of the first test image (default 5400: images the benchmark, "
                      "which scores test[0:100], does not see)")
  p.add_argument("--seed", type=int, default=0, help="random seed")
  args, overrides = common.parse(p, argv)
  try:
    args.start_levels = [float(s) for s in args.starts.split(",") if s.strip()]
  except ValueError:
    p.error(f"--starts: comma-separated numbers, got {args.starts!r}")
  if not args.start_levels or min(args.start_levels) <= 0:
    p.error(f"--starts: levels must be > 0, got {args.starts!r}")
  if args.num_images < 2:
    p.error(f"--num_images must be >= 2, got {args.num_images}")
  return args, overrides


common.parse_early(__name__, parse_args)  # --help and flag errors before JAX loads

import jax  # noqa: E402
import numpy as np  # noqa: E402
from csm_jax import atomic  # noqa: E402
from csm_jax import data as data_lib  # noqa: E402
from csm_jax import plotting  # noqa: E402
from csm_jax.restore import posterior  # noqa: E402
from experiments import restore as bench  # noqa: E402


def table(results: dict) -> str:
  """Markdown: per task and loop, the PSNR at each first level, the best in bold."""
  starts = results["starts"]
  lines = ["| task | loop | " + " | ".join(f"{s:g}" for s in starts) + " | chosen |",
           "|---" * (len(starts) + 3) + "|"]
  for task, entry in results["tasks"].items():
    for loop in LOOPS:
      means = entry[loop]["psnr_mean"]
      best = int(np.argmax(means))
      cells = [f"**{m:.2f}**" if i == best else f"{m:.2f}" for i, m in enumerate(means)]
      lines.append(f"| {task} | {loop} | " + " | ".join(cells) + f" | {starts[best]:g} |")
  return "\n".join(lines) + "\n"


def run(args, overrides):
  log = lambda m: print(m, flush=True)
  tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
  parsed = {t: bench.parse_task(t) for t in tasks}   # one line for an unknown task
  model, params, cfg, _ = common.train_or_restore("joint", None, args.out, log,
                                                  args.joint_workdir)
  if not getattr(model, "context_sigma", False):
    raise SystemExit(f"--joint_workdir {args.joint_workdir}: not a smoothed-joint model "
                     "(configs/mnist_denoise_joint.py); the loop needs its denoiser")
  cfg = common.apply(cfg, list(bench.RESTORE_CPU) + overrides["config"])
  arrays = data_lib.load_arrays(cfg.data)
  pre = data_lib.get_preprocessor(cfg.data, arrays)
  n, first = args.num_images, args.image_offset
  if first < 0 or first + n > len(arrays.test):
    raise SystemExit(f"--image_offset must be in [0, {len(arrays.test) - n}] for "
                     f"--num_images {n}, got {first}")
  low = min(args.start_levels)
  if low < cfg.restore.project_end:   # before any work: one line, nothing half done
    raise SystemExit(f"--starts: {low:g} is below restore.project_end "
                     f"({cfg.restore.project_end:g})")
  clean = arrays.test[first:first + n].astype(np.float32) / 255.0
  shape = tuple(arrays.shape)
  results = {"what": "experiments.restore_levels", "starts": args.start_levels,
             "images": [first, first + n], "project_end": float(cfg.restore.project_end),
             "project_levels": int(cfg.restore.project_levels),
             "sp_start": str(cfg.restore.sp_start), "tasks": {}}
  psnr = lambda out: np.asarray(
      bench.per_image_metrics(clean, np.asarray(out).reshape(clean.shape))[0], np.float64)
  t_all = time.perf_counter()
  for ti, task in enumerate(tasks):
    kind, kw = parsed[task]
    if kind not in bench.PROJECT_TASKS:
      raise SystemExit(f"--tasks: {task} pins no pixels; the loop is for "
                       + ", ".join(bench.PROJECT_TASKS))
    obs = bench.observation_for(kind, kw, shape, args.seed)
    y = obs.corrupt(args.seed + 1000 * ti, clean)
    entry = {loop: {"psnr_per_image": [], "psnr_mean": []} for loop in LOOPS}
    for s in args.start_levels:
      c = bench.method_alone(cfg, "project")
      c.restore.project_start = float(s)
      t0 = time.perf_counter()
      outs = {"NLM loop": bench.classical_project("nl_means", obs, y, c.restore),
              "AR-CSM loop": posterior.restore(model, params, c, y, kind,
                                               jax.random.PRNGKey(args.seed + ti),
                                               preprocessor=pre, observation=obs)["mean"]}
      for loop in LOOPS:
        v = psnr(outs[loop])
        entry[loop]["psnr_per_image"].append([round(float(a), 4) for a in v])
        entry[loop]["psnr_mean"].append(float(v.mean()))
      log(f"[{task}] first level {s:g}: AR-CSM loop {entry['AR-CSM loop']['psnr_mean'][-1]:.2f}"
          f", NLM loop {entry['NLM loop']['psnr_mean'][-1]:.2f} dB "
          f"({time.perf_counter() - t0:.0f}s; {time.perf_counter() - t_all:.0f}s in all)")
    for loop in LOOPS:
      entry[loop]["chosen"] = args.start_levels[int(np.argmax(entry[loop]["psnr_mean"]))]
    results["tasks"][task] = entry
    common.write_results(args.out, results, args, overrides)
    atomic.write_text(os.path.join(args.out, "table.md"), table(results))
  plotting.save_level_curves(
      os.path.join(args.out, "levels.png"), args.start_levels,
      {t: {loop: e[loop]["psnr_mean"] for loop in LOOPS} for t, e in results["tasks"].items()},
      title=f"denoise-and-project: PSNR against the first level, MNIST test"
            f"[{first}:{first + n}]")
  print(table(results), end="")
  log(f"wrote {args.out}/results.json, table.md, levels.png")
  return results


def main(argv=None):
  return run(*parse_args(argv))


if __name__ == "__main__":
  main()
