"""Side-by-side sample grids of MLE and AR-CSM models on one backbone (paper Fig. 4).

Reads two trained work directories (their config.json and latest checkpoint, as written
by `python -m csm_jax.main`), e.g. PixelCNN++ trained by MLE with the discretized
logistic mixture and by CSM with the score head:

  python -m experiments.image_samples --out /tmp/fig4 \\
      --mle_workdir /tmp/cifar_mle --csm_workdir /tmp/cifar_csm

Sampling: a model with a discretized head is sampled exactly, ancestrally (D context
passes); an AR-CSM (or any other) model with the cached-context annealed Langevin sampler
(D context passes plus D*L*T head steps; L, T, step size from its config or the flags).
Writes mle_samples.png, csm_samples.png, side_by_side.png (test data | MLE | CSM),
samples.npz (pixels in [0, 1]) and summary.json. Either work directory may be left out
(e.g. a CSM-only grid).
"""

import argparse
import json
import os
import sys
import time

import jax
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from csm_jax import checkpoints  # noqa: E402
from csm_jax import chunked  # noqa: E402
from csm_jax import noise as noise_lib  # noqa: E402
from csm_jax import plotting  # noqa: E402
from csm_jax import sampling  # noqa: E402
from csm_jax import sharding as sharding_lib  # noqa: E402
from csm_jax import train  # noqa: E402
from csm_jax.models import discretized  # noqa: E402


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--out", required=True, help="output directory")
  p.add_argument("--mle_workdir", default=None, help="MLE run (e.g. a ':mle' config)")
  p.add_argument("--csm_workdir", default=None, help="AR-CSM run")
  p.add_argument("--num_samples", type=int, default=16)
  p.add_argument("--n_steps", type=int, default=None, help="Langevin steps per noise level")
  p.add_argument("--step_lr", type=float, default=None)
  p.add_argument("--num_dims", type=int, default=None,
                 help="sample only the first k dimensions (smoke tests; the rest stay at "
                      "their initial values)")
  p.add_argument("--params", choices=("ema", "raw"), default="ema",
                 help="EMA parameters (as eval and --mode=sample) or the raw last iterate "
                      "(short runs, where the EMA still remembers the initialization)")
  p.add_argument("--chunk_dims", type=int, default=None,
                 help="dimensions per compiled call, progress and ETA after each "
                      "(default: about 20 reports; 0: one call, no progress)")
  p.add_argument("--seed", type=int, default=0)
  return p.parse_args(argv)


def load_workdir_config(workdir):
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found: train with python -m csm_jax.main first")
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def restore(config, workdir):
  """(env, state) with the latest checkpoint of workdir.

  Like train.restore_for_inference, but the target state is abstract (jax.eval_shape):
  no random initialization is run, which on CPU costs tens of seconds for PixelCNN++.
  """
  env = train.setup(config)
  repl = sharding_lib.replicated(env["mesh"])
  abstract = jax.eval_shape(lambda k: train.init_state(env["model"], env["optimizer"], k),
                            jax.random.PRNGKey(config.seed))
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=repl),
                          abstract)
  ckpt = checkpoints.Checkpointer(os.path.join(workdir, "checkpoints"),
                                  config.training.keep_checkpoints)
  try:
    if ckpt.latest_step() is None:
      raise FileNotFoundError(f"no checkpoint in {ckpt.directory}; train first")
    state = ckpt.restore_latest(abstract)
  finally:
    ckpt.close()
  return env, state


def to_unit_pixels(env, config, x):
  """Model space (B, D) -> images (B, H, W, C) in [0, 1] for plotting."""
  imgs = env["pre"].inverse(np.asarray(x))
  if config.data.get("scale", "unit") == "symmetric":
    imgs = (imgs + 1.0) / 2.0
  return np.clip(imgs, 0.0, 1.0)


def sample_workdir(workdir, args, key):
  """(samples, test images, info, config) from the latest checkpoint of `workdir`; the
  images are (N, H, W, C) in [0, 1]."""
  config = load_workdir_config(workdir)
  env, state = restore(config, workdir)
  model, n = env["model"], args.num_samples
  info = {"workdir": os.path.abspath(workdir), "step": int(state.step),
          "backbone": config.model.backbone, "head": config.model.head,
          "loss": config.loss.name}
  t = time.perf_counter()
  k = min(args.num_dims or model.dim, model.dim)
  chunk = chunked.auto_chunk_dims(k) if args.chunk_dims is None else args.chunk_dims
  log = lambda msg: print(f"[{os.path.basename(os.path.normpath(workdir))}] {msg}", flush=True)
  if discretized.is_discrete(model):
    info["sampler"] = "exact ancestral (discretized logistic mixture)"
    fn = discretized.make_ancestral_sampler(model, n, num_dims=args.num_dims, chunk_dims=chunk,
                                            log=log)
  else:
    s = config.sampling
    sigmas = s.get("sigmas") or noise_lib.sigmas_from_config(config.noise)
    if sigmas is None:
      raise ValueError(f"{workdir}: no noise schedule; set sampling.sigmas in its config")
    n_steps = args.n_steps or s.n_steps
    step_lr = args.step_lr or s.step_lr
    info.update(sampler="cached-context annealed Langevin", L=len(sigmas), T=n_steps,
                step_lr=step_lr, sigmas=[float(v) for v in sigmas])
    fn = sampling.make_sampler(model, sigmas, n, n_steps, step_lr, s.denoise,
                               num_dims=args.num_dims, chunk_dims=chunk, log=log)
  params = state.ema_params if args.params == "ema" else state.params
  info["params"] = args.params
  x = np.asarray(jax.block_until_ready(fn(params, key)))
  info["sampling_s_incl_compile"] = time.perf_counter() - t
  info["num_dims_sampled"] = model.dim if args.num_dims is None else min(args.num_dims,
                                                                          model.dim)
  data = env["arrays"].test[:n]
  data01 = (data.astype(np.float32) / 255.0 if env["arrays"].discrete
            else to_unit_pixels(env, config, data))
  return to_unit_pixels(env, config, x), data01, info, config


def _backbone_signature(config):
  m = config.model
  keys = ("backbone", "nr_filters", "nr_resnet", "num_scales", "context_size",
          "hidden_sizes")
  return {k: (list(m[k]) if isinstance(m.get(k), (list, tuple)) else m.get(k))
          for k in keys if k in m}


def save_side_by_side(path, panels, title=None):
  """panels: list of (title, images (N, H, W, C) in [0, 1])."""
  fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4.4))
  axes = np.atleast_1d(axes)
  for ax, (name, imgs) in zip(axes, panels):
    grid = plotting.image_grid(imgs)
    ax.imshow(grid[..., 0] if grid.shape[-1] == 1 else grid, cmap="gray", vmin=0, vmax=1)
    ax.set_title(name, fontsize=10)
    ax.axis("off")
  if title:
    fig.suptitle(title, fontsize=10)
  fig.savefig(path, dpi=120, bbox_inches="tight")
  plt.close(fig)


def main(argv=None):
  args = parse_args(argv)
  runs = {k: w for k, w in (("mle", args.mle_workdir), ("csm", args.csm_workdir)) if w}
  if not runs:
    raise ValueError("give --mle_workdir and/or --csm_workdir")
  os.makedirs(args.out, exist_ok=True)
  key = jax.random.PRNGKey(args.seed)
  samples, infos, configs, panels, files, data = {}, {}, {}, [], {}, None
  for i, (kind, workdir) in enumerate(runs.items()):
    samples[kind], data, infos[kind], configs[kind] = sample_workdir(
        workdir, args, jax.random.fold_in(key, i))
  shapes = {k: v.shape[1:] for k, v in samples.items()}
  if len(set(shapes.values())) != 1:
    raise ValueError(f"the models sample different shapes: {shapes}")
  shape = next(iter(shapes.values()))
  panels.append(("test data", data))
  for kind, x in samples.items():
    info = infos[kind]
    files[kind] = os.path.join(args.out, f"{kind}_samples.png")
    plotting.save_samples(files[kind], x, shape,
                          f"{kind.upper()} ({info['head']}), step {info['step']}")
    label = "MLE" if kind == "mle" else "AR-CSM"
    panels.append((f"{label}: {info['backbone']} + {info['head']}\n(step {info['step']})", x))
  files["side_by_side"] = os.path.join(args.out, "side_by_side.png")
  save_side_by_side(files["side_by_side"], panels)
  files["samples"] = os.path.join(args.out, "samples.npz")
  np.savez_compressed(files["samples"], data=data, **samples)
  sigs = {k: _backbone_signature(c) for k, c in configs.items()}
  summary = {
      "experiment": "image_samples (paper Fig. 4)",
      "num_samples": args.num_samples, "seed": args.seed,
      "same_backbone": (sigs["mle"] == sigs["csm"]) if len(sigs) == 2 else None,
      "backbone": sigs, **infos, "files": files,
  }
  with open(os.path.join(args.out, "summary.json"), "w") as f:
    json.dump(summary, f, indent=2)
  print(json.dumps({k: summary[k] for k in ("same_backbone", "files")}, indent=2))
  return summary


if __name__ == "__main__":
  main(sys.argv[1:])
