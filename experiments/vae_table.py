"""Paper Table 2 (MNIST column): VAEs with implicit encoders, test NLL by AIS.

Meng et al. (NeurIPS 2020), Sec. 6: the entropy term of a VAE whose encoder is implicit
is trained through an estimate of the encoder's score; the estimate comes from Stein or
Spectral kernel estimators, an MLP score net trained by sliced score matching (SSM), a
conditional AR-CSM trained by SSM (SSM-AR) or by composite score matching (CSM, the
paper's method); the ELBO baseline has an explicit Gaussian encoder. Each method is
trained at latent sizes 8 and 16 (configs/mnist_vae.py:METHOD, --config.vae.z_dim) and
scored by the AIS estimate of -log p(x) on the same dynamically binarized MNIST test
images (csm_jax/ais.py).

  python -m experiments.vae_table --out /tmp/vae_table           # CPU defaults, ~75 min
  python -m experiments.vae_table --out DIR --full                # the paper's protocol (GPU)

CPU defaults (a 2-core machine): 4000 iterations per run instead of 100k, 32 particles
for the kernel estimators instead of 100, AIS with 200 annealing steps and 8 chains
instead of 1000 and 16, on the first 100 test images instead of all 10000; and an AIS
check: the ELBO run's first --ais_check_examples images are also scored with the full
AIS (1000 steps, 16 chains), giving the gap of the cheaper AIS. --full restores the
protocol (100k iterations, 100 particles, all test images, 1000 steps, 16 chains). Every
setting used is recorded in results.json. ``--config.FIELD=value`` sets a field of every
run (e.g. --config.data.data_dir=DIR); --steps, --kernel_particles, --ais_* override
the defaults of either mode.

Writes, after each run: DIR/results.json and DIR/table2.md (the paper's layout, its
numbers beside ours); at the end DIR/vae_curves.png (training curves) and
DIR/samples_z{8,16}.png (decoder means of z ~ N(0, I), one row per method). Runs train
in DIR/models/METHOD_zZ (a rerun resumes or skips them; AIS results are cached there).
"""

import json
import os
import time

from experiments import common


METHODS = ("elbo", "stein", "spectral", "ssm", "ssm_ar", "csm")


# CPU defaults, chosen from step times measured on the 2-core machine (shared, load ~6;
# seconds per step at z = 8 / 16): elbo 0.017 / 0.010, csm 0.035 / 0.025, ssm 0.024 /
# 0.015, ssm_ar 0.042 / 0.051, stein (32 particles) 0.135 / 0.123, spectral (32) 0.133 /
# 0.136; with 100 particles stein 0.84 / 1.2 and spectral 3.4 / 11.6. AIS: 0.8 s per
# image at 200 steps x 8 chains, 9 s at 1000 x 16. Total ~72 min at that load.
CPU = {"steps": 4000, "kernel_particles": 32, "ais_examples": 100, "ais_steps": 200,
       "ais_chains": 8, "ais_check_examples": 8}


FULL = {"steps": 100000, "kernel_particles": 100, "ais_examples": -1, "ais_steps": 1000,
        "ais_chains": 16, "ais_check_examples": 0}


def parse_args(argv=None):
  p = common.parser(__doc__.splitlines()[0])
  p.add_argument("--out", required=True, help="output directory")
  p.add_argument("--full", action="store_true", help="the paper's protocol (GPU)")
  p.add_argument("--methods", default=",".join(METHODS),
                 help="comma-separated: elbo, stein, spectral, ssm, ssm_ar, csm")
  p.add_argument("--latents", default="8,16", help="latent sizes (32 too, if wanted)")
  p.add_argument("--steps", type=int, help="training iterations per run")
  p.add_argument("--kernel_particles", type=int, help="Stein / Spectral particles per x")
  p.add_argument("--ais_examples", type=int, help="test images scored (-1: all 10000)")
  p.add_argument("--ais_steps", type=int, help="AIS annealing distributions")
  p.add_argument("--ais_chains", type=int, help="AIS chains per image")
  p.add_argument("--ais_batch", type=int, default=50, help="test images per AIS call")
  p.add_argument("--ais_check_examples", type=int,
                 help="images of the ELBO run also scored with the full AIS (0: no check)")
  p.add_argument("--ais_check_steps", type=int, default=1000,
                 help="AIS annealing distributions of the check")
  p.add_argument("--ais_check_chains", type=int, default=16,
                 help="AIS chains per image of the check")
  p.add_argument("--eval_every", type=int, default=0,
                 help="validation every this many steps (0: steps // 10; -1: none)")
  p.add_argument("--num_samples", type=int, default=10, help="samples per method in the grids")
  args, overrides = common.parse(p, argv)
  defaults = FULL if args.full else CPU
  for k, v in defaults.items():
    if getattr(args, k) is None:
      setattr(args, k, v)
  args.methods = [m for m in args.methods.split(",") if m]
  bad = [m for m in args.methods if m not in METHODS]
  if bad:
    p.error(f"unknown methods {bad}; known: {','.join(METHODS)}")
  args.latents = [int(z) for z in args.latents.split(",") if z]
  return args, overrides["config"]


common.parse_early(__name__, parse_args)  # --help and flag errors before JAX loads

import jax  # noqa: E402
import numpy as np  # noqa: E402
from csm_jax import config_base  # noqa: E402
from csm_jax import data as data_lib  # noqa: E402
from csm_jax import plotting  # noqa: E402
from csm_jax.vae import evaluate as vae_eval  # noqa: E402
from csm_jax.vae import train as vae_train  # noqa: E402


plt = plotting.plt

LABELS = {"elbo": "ELBO", "stein": "Stein", "spectral": "Spectral", "ssm": "SSM",
          "ssm_ar": "SSM-AR", "csm": "CSM"}
# Meng et al. 2020, Table 2: MNIST negative log-likelihood (nats), AIS.
PAPER = {8: {"elbo": 96.74, "stein": 96.90, "spectral": 96.85, "ssm": 95.61, "ssm_ar": 95.85,
             "csm": 95.02},
         16: {"elbo": 91.82, "stein": 88.86, "spectral": 88.76, "ssm": 88.44, "ssm_ar": 88.98,
              "csm": 88.42}}


def run_config(args, overrides, method, z_dim):
  """configs/mnist_vae.py:METHOD at latent z_dim with the experiment's settings."""
  c = config_base.load_config(f"mnist_vae.py:{method}")
  c.vae.z_dim = z_dim
  c.vae.num_particles = args.kernel_particles
  t = c.training
  t.num_steps = args.steps
  t.eval_every = 0 if args.eval_every < 0 else (args.eval_every or max(1, args.steps // 10))
  t.log_every = max(1, min(100, args.steps // 20))
  t.checkpoint_every = max(1, args.steps // 4)
  c.eval.ais_steps = args.ais_steps
  c.eval.ais_chains = args.ais_chains
  c.eval.ais_num_examples = args.ais_examples
  c.eval.ais_batch_size = args.ais_batch
  return common.apply(c, overrides)


def read_metrics(workdir):
  from csm_jax import metrics as metrics_lib  # pylint: disable=g-import-not-at-top
  path = os.path.join(workdir, "metrics.jsonl")
  return metrics_lib.read_rows(path)[0] if os.path.exists(path) else []  # torn rows skipped


def paired(rows, per_example, z):
  """NLL minus the ELBO baseline's on the same images: mean and its standard error over
  images (the methods share test images and binarizations, so the paired difference is
  much tighter than either NLL's own standard error)."""
  base = per_example.get(("elbo", z))
  if base is None:
    return
  for m, row in rows.items():
    d = per_example[(m, z)] - base
    row["minus_elbo"] = float(d.mean())
    row["minus_elbo_stderr"] = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else 0.0


def ais_check(args, s, params, ais, workdir, log):
  """The default AIS against a longer one (--ais_check_steps x --ais_check_chains) on the
  first --ais_check_examples images: the part of the NLL that is AIS's own bias."""
  key = {"steps": args.steps, "examples": args.ais_check_examples, "ais_steps": args.ais_steps,
         "chains": args.ais_chains, "check_steps": args.ais_check_steps,
         "check_chains": args.ais_check_chains}
  path = os.path.join(workdir, "ais_check.json")
  cached = json.load(open(path)) if os.path.exists(path) else None
  if cached and cached.get("key") == key:
    return cached["check"]
  x = vae_eval.test_inputs(s, args.ais_check_examples)
  log(f"AIS check on {x.shape[0]} images at {args.ais_check_steps} steps x "
      f"{args.ais_check_chains} chains")
  full = vae_eval.ais_nll(s, params, x, log, num_steps=args.ais_check_steps,
                          num_chains=args.ais_check_chains)
  cheap = float(np.mean(ais["per_example"][:x.shape[0]]))
  check = {"examples": int(x.shape[0]), "nll_default_ais": cheap, "nll_full_ais": full["nll"],
           "gap": cheap - full["nll"], "seconds": full["seconds"],
           "full_ais": {"steps": args.ais_check_steps, "chains": args.ais_check_chains}}
  common.write_json(path, {"key": key, "check": check})
  return check


def markdown(results, latents):
  """The paper's layout: one row per method, NLL at each latent size, ours | paper."""
  head = "| Method | " + " | ".join(f"z={z} ours | z={z} paper" for z in latents) + " |"
  lines = [head, "|---" * (1 + 2 * len(latents)) + "|"]
  for m in METHODS:
    cells = []
    for z in latents:
      r = results.get(str(z), {}).get(m)
      ours = f"{r['nll']:.2f} ± {r['nll_stderr']:.2f}" if r else "-"
      cells += [ours, f"{PAPER[z][m]:.2f}" if z in PAPER else "-"]
    lines.append(f"| {LABELS[m]} | " + " | ".join(cells) + " |")
  lines += ["", "NLL minus the ELBO baseline's on the same test images (paired; ours):", "",
            "| Method | " + " | ".join(f"z={z}" for z in latents) + " |",
            "|---" * (1 + len(latents)) + "|"]
  for m in METHODS:
    cells = []
    for z in latents:
      r = results.get(str(z), {}).get(m)
      cells.append(f"{r['minus_elbo']:+.2f} ± {r['minus_elbo_stderr']:.2f}"
                   if r and "minus_elbo" in r else "-")
    lines.append(f"| {LABELS[m]} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def plot_curves(path, runs, latents, methods):
  fig, axes = plt.subplots(1, len(latents), figsize=(5.5 * len(latents), 4), squeeze=False)
  for ax, z in zip(axes[0], latents):
    for m in methods:
      rows = runs.get((m, z), [])
      tr = [(r["step"], r["recon"]) for r in rows if "recon" in r]
      va = [(r["step"], r["val_recon"]) for r in rows if "val_recon" in r and r["step"] > 0]
      if tr:
        line, = ax.plot(*zip(*tr), alpha=0.5, lw=1)
        if va:
          ax.plot(*zip(*va), "o-", color=line.get_color(), label=LABELS[m], lw=1.5, ms=3)
    ax.set_title(f"z = {z}: reconstruction -log p(x | z) (line: train, dots: validation)",
                 fontsize=8)
    ax.set_xlabel("iteration")
    ax.set_ylabel("nats")
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def run(args, overrides):
  os.makedirs(args.out, exist_ok=True)
  start = time.perf_counter()

  def log(msg):
    print(f"{time.perf_counter() - start:7.1f}s {msg}", flush=True)

  shared = common.apply(config_base.load_config("mnist_vae.py:elbo"), overrides)
  arrays = data_lib.load_arrays(shared.data)
  results = {"what": "MNIST test NLL (nats, AIS) of VAEs with implicit encoders whose "
                     "entropy gradient comes from each score estimator (Meng et al. 2020, "
                     "Table 2); ELBO: explicit Gaussian encoder",
             "mode": "full" if args.full else "cpu_defaults",
             "settings": {k: getattr(args, k) for k in
                          ("steps", "kernel_particles", "ais_examples", "ais_steps",
                           "ais_chains", "ais_batch", "ais_check_examples", "ais_check_steps",
                           "ais_check_chains", "latents",
                           "methods")},
             "protocol_differences": [] if args.full else [
                 f"{args.steps} training iterations per run (paper protocol: 100000)",
                 f"{args.kernel_particles} particles for Stein/Spectral (protocol: 100)",
                 f"AIS: {args.ais_steps} steps x {args.ais_chains} chains (protocol: 1000 x 16)",
                 f"AIS on the first {args.ais_examples} test images (protocol: all 10000)"],
             "overrides": overrides, "paper": {str(z): v for z, v in PAPER.items()},
             "machine": common.machine(), "results": {}, "ais_check": {}}
  json_path = common.results_path(args.out)

  def save():
    common.write_json(json_path, dict(results, seconds=time.perf_counter() - start))
    with open(os.path.join(args.out, "table2.md"), "w") as f:
      f.write(markdown(results["results"], args.latents))

  runs, samples, per_example = {}, {}, {}
  for z in args.latents:
    for m in args.methods:
      name = f"{m}_z{z}"
      config = run_config(args, overrides, m, z)
      workdir = os.path.join(args.out, "models", name)
      log(f"{name}: training {config.training.num_steps} steps")
      s = vae_train.setup(config, arrays=arrays)
      state, info = vae_train.train_loop(s, workdir=workdir, log=log, label=name)
      runs[(m, z)] = read_metrics(workdir)
      ais_path = os.path.join(workdir, "ais.json")
      ais_key = {"steps": args.steps, "examples": args.ais_examples, "ais_steps": args.ais_steps,
                 "chains": args.ais_chains}
      cached = json.load(open(ais_path)) if os.path.exists(ais_path) else None
      if cached and cached.get("key") == ais_key:
        ais = cached["ais"]
        log(f"{name}: AIS from {ais_path}")
      else:
        x = vae_eval.test_inputs(s, args.ais_examples)
        log(f"{name}: AIS on {x.shape[0]} test images ({args.ais_steps} steps, "
            f"{args.ais_chains} chains)")
        ais = vae_eval.ais_nll(s, state.params, x, log)
        common.write_json(ais_path, {"key": ais_key, "ais": ais})
      timing_path = os.path.join(workdir, "timing.json")
      if info["steps_run"]:   # timing of the steps this call ran (not of a resumed tail)
        common.write_json(timing_path, {k: info[k] for k in ("train_seconds", "step_seconds",
                                                             "compile_seconds")})
      if os.path.exists(timing_path):
        info.update(json.load(open(timing_path)))
      step_s = info.get("step_seconds")
      results["results"].setdefault(str(z), {})[m] = {
          "nll": ais["nll"], "nll_stderr": ais["nll_stderr_over_examples"],
          "ais_chain_stderr": ais["mean_chain_stderr"], "ais_accept_rate": ais["accept_rate"],
          "ais_seconds": ais["seconds"], "num_examples": ais["num_examples"],
          "train_seconds": info["train_seconds"], "step_seconds": step_s,
          "compile_seconds": info["compile_seconds"], "steps": config.training.num_steps,
          "parameters": info["parameters"],
          "final_validation": next((r for r in reversed(runs[(m, z)]) if "val_recon" in r), {}),
          "full_protocol_cpu_hours_estimate": (step_s * 100000 / 3600) if step_s else None}
      per_example[(m, z)] = np.asarray(ais["per_example"])
      paired(results["results"][str(z)], per_example, z)
      samples[(m, z)] = vae_eval.sample_images(s, state.params, args.num_samples,
                                               jax.random.PRNGKey(config.seed + 20_000))
      if m == "elbo" and args.ais_check_examples:
        results["ais_check"][str(z)] = ais_check(args, s, state.params, ais, workdir, log)
      save()
      log(f"{name}: NLL {ais['nll']:.2f} ± {ais['nll_stderr_over_examples']:.2f}")
  plot_curves(os.path.join(args.out, "vae_curves.png"), runs, args.latents, args.methods)
  for z in args.latents:
    rows = {LABELS[m]: samples[(m, z)] for m in args.methods if (m, z) in samples}
    plotting.save_image_rows(os.path.join(args.out, f"samples_z{z}.png"), rows,
                             f"decoder means, z ~ N(0, I), latent {z}")
  save()
  log("table (NLL in nats):\n" + markdown(results["results"], args.latents))
  return results


def main(argv=None):
  return run(*parse_args(argv))


if __name__ == "__main__":
  main()
