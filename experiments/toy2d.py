"""2-D density estimation: AR-CSM trained by CSM vs a MADE mixture of logistics by MLE.

The experiment of Meng et al. (NeurIPS 2020), Sec. 5.2 / Figure 3b: on 2-D toy
densities, an AR-CSM (MADE context + noise-conditional score head, trained by composite
score matching, Eq. 5, with per-dimension noise annealing) against a MADE whose
conditionals are mixtures of n logistics, trained by maximum likelihood, with strictly
more parameters. The paper shows samples only; here both models also get a test NLL:
exact for the MoL MADE, exact up to a reported quadrature error for the AR-CSM
(`csm_jax/likelihood.py`). The AR-CSM defines a normalized density q_sigma at every
noise level of its schedule: we report it at the smallest level sigma_min and at the
level sigma* with the best NLL on a validation set drawn separately from the test set
(at sigma_min the energy integrates the score through data-free regions, where score
matching does not fix the relative weight of separated modes). Samples: the AR-CSM by
1-D annealed Langevin dynamics (the paper's sampler, Sec. 4.2), the MoL MADE by exact
ancestral sampling on the grid (`sampling.grid_sample`).

  python -m experiments.toy2d --out /tmp/toy2d        # DIR/toy2d.json, DIR/toy2d.png
  python -m experiments.toy2d --out /tmp/toy2d --datasets ring8,moons \\
      --config.training.num_steps=2000 --arcsm.model.hidden_sizes=64,64 \\
      --mol.model.num_mixtures=10

The models are configs/toy2d.py:arcsm and :mol; ``--config.FIELD=value`` sets a field of
both, ``--arcsm.FIELD=value`` / ``--mol.FIELD=value`` of one (after --config). Derived
settings: optim.warmup_steps = min(100, num_steps // 10 + 1) and training.log_every =
num_steps // 4 follow an overridden training.num_steps unless they are set themselves;
the MoL MADE has the AR-CSM's depth and the smallest width (the AR-CSM's plus a
multiple of 8) with more parameters, all and effective, unless --mol.model.hidden_sizes
is given. data.name is set per --datasets entry; the validation set is drawn with
data.seed, the samples with seed + 7. The JSON and the figure are rewritten after each
dataset.
"""

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from csm_jax import config_base, likelihood, models, noise, plotting, sampling, train
from csm_jax import data as data_lib
from experiments import common

plt = plotting.plt
KINDS = ("arcsm", "mol")


# ------------------------------------------------------------------------------------
# Configs
# ------------------------------------------------------------------------------------


def param_counts(config):
  """count_parameters of config.model on 2-D data, from shapes only (no init)."""
  model = models.get_model(config.model, (2,))
  return models.count_parameters(jax.eval_shape(model.init, jax.random.PRNGKey(0)), model)


def match_mol_width(arcsm, mol):
  """mol with the AR-CSM's depth and the smallest width, the AR-CSM's plus a multiple
  of 8, whose parameter counts (all and effective) both exceed the AR-CSM's."""
  ref = param_counts(arcsm)
  layers, width = len(arcsm.model.hidden_sizes), max(arcsm.model.hidden_sizes)
  while True:
    mol.model.hidden_sizes = (width,) * layers
    p = param_counts(mol)
    if all(p[k] > ref[k] for k in ("parameters", "effective_parameters")):
      return mol
    width += 8


def load_configs(overrides):
  """{'arcsm': config, 'mol': config}: configs/toy2d.py with the command line's overrides."""
  configs = {}
  for kind in KINDS:
    own = overrides["config"] + overrides[kind]
    config = common.apply(config_base.load_config(f"toy2d:{kind}"), own)
    configs[kind] = common.follow_num_steps(config, own, 4)
  if not common.is_set(overrides["mol"], "model.hidden_sizes"):
    match_mol_width(configs["arcsm"], configs["mol"])
  return configs


# ------------------------------------------------------------------------------------
# Densities on a mesh
# ------------------------------------------------------------------------------------


def log_density_mesh(model, params, grid, stride, sigma=None):
  """(t, log q on the mesh t x t) with t = grid nodes[::stride]; [i, j] = (t_i, t_j).

  Exact for a normalized head; for an AR-CSM, q_sigma by quadrature: the conditional
  of the second variable in the order normalized on the grid once per value of the
  first (its context depends on that value only).
  """
  t = np.asarray(grid.nodes())[::stride]
  if model.normalized:
    mesh = np.stack(np.meshgrid(t, t, indexing="ij"), -1).reshape(-1, 2).astype(np.float32)
    fn = likelihood.make_exact_log_likelihood_fn(model)
    return t, np.asarray(fn(params, mesh)).sum(-1).reshape(len(t), len(t))
  first, second = int(model.order[0]), int(model.order[1])
  x = np.zeros((len(t), 2), np.float32)
  x[:, first] = t
  ctx = model.context(params, jnp.asarray(x))
  logq = np.asarray(likelihood.log_conditionals_on_grid(model, params, ctx, grid, sigma))
  lq = logq[:, first, ::stride][0][:, None] + logq[:, second, ::stride]   # [first, second]
  return t, lq if first == 0 else lq.T


# ------------------------------------------------------------------------------------
# Evaluation of the trained models
# ------------------------------------------------------------------------------------


def evaluate_arcsm(args, config, s, params, grid, panels, log):
  """Quadrature NLL at sigma_min and at the validation-chosen sigma*, densities at both
  on the mesh, Langevin samples. Returns (test NLL at sigma_min, dataset JSON entries)."""
  model, test, name = s.model, s.arrays.test, config.data.name
  sigma = likelihood.noise_level(config)
  fn = likelihood.make_log_likelihood_fn(model, grid, sigma)
  y_val = data_lib.toy2d_sample(name, args.num_val, np.random.default_rng([config.data.seed, 2]))
  levels = noise.sigmas_from_config(config.noise)[::-1]
  per = likelihood.nll_per_sigma(model, params, y_val, levels, grid, fn=fn, batch_size=1000)
  best = per.pop("best_sigma")
  per.pop("results")
  nll, nll_best = (likelihood.evaluate_nll(model, params, test, grid=grid, sigma=sg,
                                           batch_size=1000, fn=fn) for sg in (sigma, best))
  sampler, sampler_info = sampling.make_sampler_from_config(config, model, args.num_samples)
  panels["arcsm_samples"] = np.asarray(sampler(params, jax.random.PRNGKey(config.seed + 7)))
  for key, sg in (("arcsm_density", sigma), ("arcsm_best_density", best)):
    t, lq = log_density_mesh(model, params, grid, args.stride, sg)
    panels[key] = (t, np.exp(lq))
  log(f"[{name}/arcsm] sigma* = {best:.3g} (validation), test NLL at sigma* "
      f"{nll_best['nll_nats']:.4f} nats")
  return nll, {"arcsm_sampler": sampler_info,
               "arcsm_best_sigma": {"sigma": best, "test_nll_nats": nll_best["nll_nats"],
                                    "test_nll_stderr": nll_best["nll_nats_stderr"],
                                    "quad_error_nats": nll_best["quad_error_nats"],
                                    "validation_nll_per_sigma": per}}


def evaluate_mol(args, config, s, params, grid, panels, log):
  """Exact NLL (and a quadrature check of it), exact density on the mesh, exact samples
  on the grid. Returns (test NLL, no dataset JSON entries)."""
  del log
  model, test = s.model, s.arrays.test
  nll = likelihood.evaluate_nll(model, params, test, method="exact", batch_size=1000)
  check = likelihood.evaluate_nll(model, params, test, grid=grid, batch_size=1000)
  nll["nll_nats_quadrature_check"] = check["nll_nats"]
  nll["quad_error_nats"] = check["quad_error_nats"]
  nll["edge_density_mean"] = check["edge_density_mean"]
  rng = jax.random.PRNGKey(config.seed + 7)
  panels["mol_samples"] = np.asarray(jax.jit(lambda p, r: sampling.grid_sample(
      model, p, r, args.num_samples, grid))(params, rng))
  t, lq = log_density_mesh(model, params, grid, args.stride)
  panels["mol_density"] = (t, np.exp(lq))
  return nll, {}


EVALUATE = {"arcsm": evaluate_arcsm, "mol": evaluate_mol}


def run_model(args, kind, config, arrays, grid, panels, log):
  """Trains one model on one dataset and evaluates it: (its JSON entry, dataset entries)."""
  name = config.data.name
  s = train.setup(config, arrays=arrays)
  state, info = train.train_loop(s, log=log, label=f"{name}/{kind}", eval_every=0)
  t0 = time.perf_counter()
  nll, extra = EVALUATE[kind](args, config, s, state.ema_params, grid, panels, log)
  t, dens = panels[kind + "_density"]
  info.pop("history")
  counts = info.pop("parameters")
  res = {"test_nll_nats": nll["nll_nats"], "test_nll_stderr": nll["nll_nats_stderr"],
         "nll": nll, **info, **counts, "eval_seconds": time.perf_counter() - t0,
         "mesh_mass": float(dens.sum() * (t[1] - t[0]) ** 2),
         "config": {"hidden_sizes": list(config.model.hidden_sizes), "head": config.model.head}}
  log(f"[{name}/{kind}] test NLL {nll['nll_nats']:.4f} nats "
      f"({res['effective_parameters']} effective params)")
  return res, extra


def run_dataset(args, configs, name, log):
  """(JSON entry, plot panels) of one dataset: both models trained and evaluated."""
  configs = {k: common.apply(c.copy_and_resolve_references(), [f"data.name={name}"])
             for k, c in configs.items()}
  arrays = data_lib.load_arrays(configs["arcsm"].data)
  grid = likelihood.grid_from_data(arrays.train, args.num_points, margin=0.1)
  panels = {"data": np.asarray(arrays.test[:args.num_samples])}
  res = {}
  for kind in KINDS:
    res[kind], extra = run_model(args, kind, configs[kind], arrays, grid, panels, log)
    res.update(extra)
  res["grid"] = grid.to_dict()
  res["sigma_min"] = likelihood.noise_level(configs["arcsm"])
  return res, panels


# ------------------------------------------------------------------------------------
# Output
# ------------------------------------------------------------------------------------


COLUMNS = {"data": "data", "arcsm_samples": "AR-CSM samples (Langevin)",
           "arcsm_density": "AR-CSM density, σ_min", "arcsm_best_density": "AR-CSM density, σ*",
           "mol_samples": "MoL samples", "mol_density": "MoL density"}


def _panel(ax, key, value, res):
  """One cell of the figure: a scatter of points or a density heatmap with its NLL."""
  if not key.endswith("density"):
    ax.scatter(value[:, 0], value[:, 1], s=0.5, alpha=0.5, color="k" if key == "data" else "C0")
    return
  t, dens = value
  ax.imshow(dens.T, origin="lower", extent=(t[0], t[-1], t[0], t[-1]), cmap="viridis",
            interpolation="nearest", aspect="auto")
  nll = {"arcsm_density": res["arcsm"]["test_nll_nats"],
         "arcsm_best_density": res["arcsm_best_sigma"]["test_nll_nats"],
         "mol_density": res["mol"]["test_nll_nats"]}[key]
  label = f"NLL {nll:.3f}"
  if key == "arcsm_best_density":
    label += f", σ*={res['arcsm_best_sigma']['sigma']:.2g}"
  ax.text(0.03, 0.03, label, transform=ax.transAxes, color="w", fontsize=8)


def plot(path, panels, results):
  """Rows: datasets; columns: data, samples and densities of both models."""
  names = list(panels)
  window = max(float(np.abs(np.concatenate([panels[n]["data"] for n in names])).max()) * 1.05,
               1.0)
  fig, axes = plt.subplots(len(names), len(COLUMNS),
                           figsize=(2.6 * len(COLUMNS), 2.6 * len(names)), squeeze=False)
  for r, name in enumerate(names):
    for c, (key, title) in enumerate(COLUMNS.items()):
      ax = axes[r, c]
      _panel(ax, key, panels[name][key], results["datasets"][name])
      ax.set_xlim(-window, window)
      ax.set_ylim(-window, window)
      ax.set_xticks([])
      ax.set_yticks([])
      if r == 0:
        ax.set_title(title, fontsize=10)
      if c == 0:
        ax.set_ylabel(name)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)


def table(results):
  return {n: {"arcsm_nll": r["arcsm"]["test_nll_nats"],
              "arcsm_nll_best_sigma": r["arcsm_best_sigma"]["test_nll_nats"],
              "best_sigma": r["arcsm_best_sigma"]["sigma"],
              "mol_nll": r["mol"]["test_nll_nats"],
              "arcsm_quad_error": r["arcsm"]["nll"]["quad_error_nats"]}
          for n, r in results["datasets"].items()}


# ------------------------------------------------------------------------------------
# The experiment
# ------------------------------------------------------------------------------------


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--out", required=True, help="output directory")
  p.add_argument("--datasets", default=",".join(data_lib.TOY2D_NAMES))
  p.add_argument("--num_val", type=int, default=1000, help="validation set to pick sigma*")
  p.add_argument("--num_points", type=int, default=1025, help="quadrature nodes per dim")
  p.add_argument("--num_samples", type=int, default=2000)
  p.add_argument("--stride", type=int, default=4, help="heatmap: every k-th grid node")
  return common.parse(p, argv, prefixes=("config",) + KINDS)


def run(args, overrides):
  os.makedirs(args.out, exist_ok=True)
  names = [n for n in args.datasets.split(",") if n]
  start = time.perf_counter()

  def log(msg):
    print(f"{time.perf_counter() - start:7.1f}s {msg}", flush=True)

  configs = load_configs(overrides)
  results = {"what": "2-D density estimation (Meng et al. 2020, Sec. 5.2, Fig. 3b): AR-CSM "
                     "(MADE + score head, CSM with noise annealing; NLL by quadrature) vs "
                     "MADE mixture of logistics (MLE; exact NLL); test NLL in nats per example",
             "args": vars(args), "overrides": overrides,
             "configs": {k: c.to_dict() for k, c in configs.items()},
             "machine": common.machine(), "datasets": {}}
  panels = {}
  for i, name in enumerate(names):
    log(f"dataset {i + 1}/{len(names)}: {name}")
    results["datasets"][name], panels[name] = run_dataset(args, configs, name, log)
    results["table"] = table(results)
    results["seconds"] = time.perf_counter() - start
    common.write_json(os.path.join(args.out, "toy2d.json"), results)
    plot(os.path.join(args.out, "toy2d.png"), panels, results)
  log("test NLL (nats): dataset, AR-CSM at sigma_min (quad. err.), AR-CSM at sigma*, MoL MADE")
  for n, row in results["table"].items():
    log(f"  {n:13s} {row['arcsm_nll']:8.4f} ({row['arcsm_quad_error']:.1e})  "
        f"{row['arcsm_nll_best_sigma']:8.4f} (sigma* {row['best_sigma']:.3g})  "
        f"{row['mol_nll']:8.4f}")
  return results


def main(argv=None):
  return run(*parse_args(argv))


if __name__ == "__main__":
  main()
