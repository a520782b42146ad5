"""Side-by-side sample grids of MLE and AR-CSM models on one backbone (paper Fig. 4).

Reads two trained work directories (their config.json and latest checkpoint, as written
by `python -m csm_jax.main`), e.g. PixelCNN++ trained by MLE with the discretized
logistic mixture and by CSM with the score head:

  python -m experiments.image_samples --out /tmp/fig4 \\
      --mle_workdir /tmp/cifar_mle --csm_workdir /tmp/cifar_csm \\
      [--config.sampling.num_steps=20 --config.sampling.step_lr=2e-5]

Sampling is what each work directory's config asks for (`sampling.make_sampler_from_config`,
with the --config.* overrides applied to both configs): a model with a discretized head
exactly and ancestrally (D context passes); an AR-CSM with the cached-context annealed
Langevin sampler (D context passes plus D*L*T head steps). Writes KIND_samples.png as
each model is sampled, then side_by_side.png (test data | MLE | CSM), samples.npz
(pixels in [0, 1]) and results.json. Either work directory may be left out.
"""

import json
import os
import sys
import time

from experiments import common


WHICH = {"ema": "ema_params", "raw": "params"}


def parse_args(argv=None):
  p = common.parser(__doc__.split("\n\n")[0], ("config",))
  p.add_argument("--out", required=True, help="output directory")
  p.add_argument("--mle_workdir", default=None, help="MLE run (e.g. a ':mle' config)")
  p.add_argument("--csm_workdir", default=None, help="AR-CSM run")
  p.add_argument("--num_samples", type=int, default=16, help="samples per model")
  p.add_argument("--num_dims", type=int, default=None,
                 help="sample only the first k dimensions (smoke tests; the rest stay at "
                      "their initial values)")
  p.add_argument("--params", choices=tuple(WHICH), default="ema",
                 help="EMA parameters (as eval and --mode=sample) or the raw last iterate "
                      "(short runs, where the EMA still remembers the initialization)")
  p.add_argument("--seed", type=int, default=0, help="random seed")
  return common.parse(p, argv, prefixes=("config",))


common.parse_early(__name__, parse_args)  # --help and flag errors before JAX loads

import jax  # noqa: E402
import matplotlib  # noqa: E402
matplotlib.use("Agg")  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from csm_jax import config_base  # noqa: E402
from csm_jax import inference  # noqa: E402
from csm_jax import plotting  # noqa: E402
from csm_jax import sampling  # noqa: E402


BACKBONE_FIELDS = ("backbone", "nr_filters", "nr_resnet", "num_resolutions", "context_size",
                   "hidden_sizes")


def sample_workdir(workdir, args, overrides, key):
  """(samples, test images, info, config) from the latest checkpoint of `workdir`; the
  images are (N, H, W, C) in [0, 1]."""
  config = common.apply(config_base.load_workdir_config(workdir), overrides)
  inf = inference.build(config)
  params, step = inference.restore(inf, workdir, WHICH[args.params])
  name = os.path.basename(os.path.normpath(workdir))
  t = time.perf_counter()
  sampler, info = sampling.make_sampler_from_config(
      config, inf.model, args.num_samples, num_dims=args.num_dims,
      log=lambda msg: print(f"[{name}] {msg}", flush=True))
  x = np.asarray(jax.block_until_ready(sampler(params, key)))
  info.update(workdir=os.path.abspath(workdir), step=step, backbone=config.model.backbone,
              head=config.model.head, loss=config.loss.name, params=args.params,
              sampling_s_incl_compile=time.perf_counter() - t,
              num_dims_sampled=min(args.num_dims or inf.model.dim, inf.model.dim))
  data = inf.pre.to_display(inf.pre(inf.arrays.test[:args.num_samples]))
  return inf.pre.to_display(x), data, info, config


def _backbone_signature(config):
  m = config.model
  return {k: list(m[k]) if isinstance(m[k], tuple) else m[k] for k in BACKBONE_FIELDS}


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


def _check_shapes(samples):
  shapes = {k: v.shape[1:] for k, v in samples.items()}
  if len(set(shapes.values())) != 1:
    raise ValueError(f"the models sample different shapes: {shapes}")


def write_summary(args, infos, configs, files):
  sigs = {k: _backbone_signature(c) for k, c in configs.items()}
  summary = {
      "experiment": "image_samples (paper Fig. 4)",
      "num_samples": args.num_samples, "seed": args.seed,
      "same_backbone": (sigs["mle"] == sigs["csm"]) if len(sigs) == 2 else None,
      "backbone": sigs, **infos, "files": files,
  }
  common.write_results(args.out, summary, args)
  return summary


def main(argv=None):
  args, ov = parse_args(argv)
  runs = {k: w for k, w in (("mle", args.mle_workdir), ("csm", args.csm_workdir)) if w}
  if not runs:
    raise ValueError("give --mle_workdir and/or --csm_workdir")
  os.makedirs(args.out, exist_ok=True)
  key = jax.random.PRNGKey(args.seed)
  samples, infos, configs, files, panels = {}, {}, {}, {}, []
  for i, (kind, workdir) in enumerate(runs.items()):
    x, data, info, configs[kind] = sample_workdir(workdir, args, ov["config"],
                                                  jax.random.fold_in(key, i))
    samples[kind], infos[kind] = x, info
    files[kind] = os.path.join(args.out, f"{kind}_samples.png")
    plotting.save_samples(files[kind], x, x.shape[1:],
                          f"{kind.upper()} ({info['head']}), step {info['step']}")
    label = "MLE" if kind == "mle" else "AR-CSM"
    panels.append((f"{label}: {info['backbone']} + {info['head']}\n(step {info['step']})", x))
    write_summary(args, infos, configs, files)
  _check_shapes(samples)
  files["side_by_side"] = os.path.join(args.out, "side_by_side.png")
  save_side_by_side(files["side_by_side"], [("test data", data)] + panels)
  files["samples"] = os.path.join(args.out, "samples.npz")
  np.savez_compressed(files["samples"], data=data, **samples)
  summary = write_summary(args, infos, configs, files)
  print(json.dumps({k: summary[k] for k in ("same_backbone", "files")}, indent=2))
  return summary


if __name__ == "__main__":
  main(sys.argv[1:])
