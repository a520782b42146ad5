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

  python -m experiments.toy2d --out /tmp/toy2d        # DIR/results.json, DIR/toy2d.png
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
data.seed, the samples with seed + 7. --seeds 0,1,2 runs each (dataset, model) once per
seed, with seed and data.seed set to it; the table holds the mean and (sample) standard
deviation over seeds.

Sample quality (the paper's own yardstick for Fig. 3b), `csm_jax/sample_metrics.py`:
num_metric_samples samples of each model against as many fresh data points (rng
[data.seed, 3], apart from train / test / validation): the unbiased MMD^2 with RBF
kernels of bandwidths 0.5, 1, 2 times the median heuristic of the held-out data (the
same for both models), averaged over the three (the MMD^2 of the mean kernel); and
KL(data || model) and JS between histograms of hist_bins^2 cells over the range of a
large data draw (num_hist_data points, rng [data.seed, 4]). "data floor" is the same
histogram comparison for the held-out data draw itself: the part of KL and JS that is
sampling noise at this sample size. The JSON is rewritten after each (dataset, model,
seed), the figure after each (dataset, seed); it shows the first seed.
"""

import os
import time

from experiments import common


KINDS = ("arcsm", "mol")
# csm_jax.data.TOY2D_NAMES, repeated so that --help needs no JAX (a test keeps them equal).
DATASETS = ("ring8", "moons", "checkerboard", "spirals", "pinwheel", "rings")


def parse_args(argv=None):
  p = common.parser(__doc__.splitlines()[0], ("config",) + KINDS)
  p.add_argument("--out", required=True, help="output directory")
  p.add_argument("--datasets", default=",".join(DATASETS),
                 help="comma-separated toy densities")
  p.add_argument("--num_val", type=int, default=1000, help="validation set to pick sigma*")
  p.add_argument("--num_points", type=int, default=1025, help="quadrature nodes per dim")
  p.add_argument("--num_samples", type=int, default=2000,
                 help="model samples per (dataset, model) for the figures")
  p.add_argument("--stride", type=int, default=4, help="heatmap: every k-th grid node")
  p.add_argument("--seeds", default="",
                 help="comma-separated seeds: each (dataset, model) is run once per seed, "
                      "with seed and data.seed set to it (default: the configs' seeds)")
  p.add_argument("--num_metric_samples", type=int, default=10000,
                 help="model samples and held-out data points for the sample metrics "
                      "(0: none)")
  p.add_argument("--num_hist_data", type=int, default=200000,
                 help="data draw whose histogram the samples' histogram is compared with")
  p.add_argument("--hist_bins", type=int, default=64, help="histogram bins per axis")
  p.add_argument("--mmd_block", type=int, default=256, help="MMD: pairs per block side")
  return common.parse(p, argv, prefixes=("config",) + KINDS)


common.parse_early(__name__, parse_args)  # --help and flag errors before JAX loads

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from csm_jax import (config_base, likelihood, models, noise, plotting, sample_metrics,  # noqa: E402
                     sampling, train)
from csm_jax import data as data_lib  # noqa: E402


plt = plotting.plt


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
  sampler, sampler_info = sampling.make_sampler_from_config(config, model, num_drawn(args))
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
      model, p, r, num_drawn(args), grid))(params, rng))
  t, lq = log_density_mesh(model, params, grid, args.stride)
  panels["mol_density"] = (t, np.exp(lq))
  return nll, {}


EVALUATE = {"arcsm": evaluate_arcsm, "mol": evaluate_mol}


def num_drawn(args):
  """Model samples drawn: enough for the figure and for the sample metrics."""
  return max(args.num_samples, args.num_metric_samples)


def reference_draws(args, name, data_seed):
  """Fresh data for the sample metrics, independent of train ([seed, 0]), test ([seed, 1])
  and validation ([seed, 2]): num_metric_samples held-out points ([seed, 3]) for MMD and
  num_hist_data points ([seed, 4]) whose histogram stands for the density."""
  held_out = data_lib.toy2d_sample(name, args.num_metric_samples,
                                   np.random.default_rng([data_seed, 3]))
  large = data_lib.toy2d_sample(name, args.num_hist_data, np.random.default_rng([data_seed, 4]))
  return held_out, large


def sample_quality(args, samples, held_out, large, bandwidths):
  """MMD^2 (unbiased, RBF kernels of the given bandwidths) between samples and the held-out
  data, and histogram KL(data || samples) and JS against the large data draw."""
  samples = np.asarray(samples[:args.num_metric_samples], np.float64)
  mmd = sample_metrics.mmd2(samples, held_out, bandwidths, block_size=args.mmd_block)
  hist = sample_metrics.histogram_divergences(large, samples, bins=args.hist_bins)
  return {"mmd2_mean": mmd["mmd2_mean"], "mmd2_stderr": mmd["stderr_mean"],
          "kl_data_model": hist["kl_data_model"], "js": hist["js"], "mmd": mmd, "hist": hist}


def run_model(args, kind, config, arrays, grid, panels, log, reference=None):
  """Trains one model on one dataset and evaluates it: (its JSON entry, dataset entries).
  With reference = (held-out data, large data draw, bandwidths), also the sample metrics
  of num_metric_samples of its samples."""
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
  samples = panels[kind + "_samples"]
  if reference is not None:
    t0 = time.perf_counter()
    res["samples"] = sample_quality(args, samples, *reference)
    res["samples"]["seconds"] = time.perf_counter() - t0
    q = res["samples"]
    log(f"[{name}/{kind}] samples: MMD^2 {q['mmd2_mean']:.2e} +- {q['mmd2_stderr']:.1e}, "
        f"KL(data||model) {q['kl_data_model']:.4f}, JS {q['js']:.4f} nats")
  panels[kind + "_samples"] = samples[:args.num_samples]
  return res, extra


def run_dataset(args, configs, name, log, seed=None, save=lambda res: None):
  """(JSON entry, plot panels) of one dataset: both models trained and evaluated, with
  seed and data.seed set to `seed` unless it is None; save(partial entry) after each."""
  extra_overrides = [f"data.name={name}"]
  if seed is not None:
    extra_overrides += [f"seed={seed}", f"data.seed={seed}"]
  configs = {k: common.apply(c.copy_and_resolve_references(), extra_overrides)
             for k, c in configs.items()}
  arrays = data_lib.load_arrays(configs["arcsm"].data)
  grid = likelihood.grid_from_data(arrays.train, args.num_points, margin=0.1)
  panels = {"data": np.asarray(arrays.test[:args.num_samples])}
  res = {"grid": grid.to_dict(), "sigma_min": likelihood.noise_level(configs["arcsm"]),
         "seed": configs["arcsm"].seed, "data_seed": configs["arcsm"].data.seed}
  reference = None
  if args.num_metric_samples > 0:
    held_out, large = reference_draws(args, name, configs["arcsm"].data.seed)
    bandwidths = [sample_metrics.median_bandwidth(held_out) * c
                  for c in sample_metrics.DEFAULT_SCALES]
    reference = (held_out, large, bandwidths)
    # The floor: a data draw of the models' sample size against the large draw.
    floor = sample_metrics.histogram_divergences(large, held_out, bins=args.hist_bins)
    res["data_floor"] = {"kl_data_model": floor["kl_data_model"], "js": floor["js"]}
  for kind in KINDS:
    res[kind], extra = run_model(args, kind, configs[kind], arrays, grid, panels, log,
                                 reference)
    res.update(extra)
    save(res)
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
    q = res.get(key.split("_")[0], {}).get("samples")
    if q is not None:
      ax.text(0.03, 0.03, f"MMD² {q['mmd2_mean']:.1e}, KL {q['kl_data_model']:.2f}",
              transform=ax.transAxes, fontsize=7)
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


def _row(r):
  """The numbers of one complete (dataset, seed) entry."""
  row = {"arcsm_nll": r["arcsm"]["test_nll_nats"],
         "arcsm_nll_best_sigma": r["arcsm_best_sigma"]["test_nll_nats"],
         "best_sigma": r["arcsm_best_sigma"]["sigma"],
         "mol_nll": r["mol"]["test_nll_nats"],
         "arcsm_quad_error": r["arcsm"]["nll"]["quad_error_nats"]}
  for kind in KINDS:
    q = r[kind].get("samples")
    if q is not None:
      row.update({f"{kind}_mmd2": q["mmd2_mean"], f"{kind}_kl": q["kl_data_model"],
                  f"{kind}_js": q["js"]})
  if "data_floor" in r:
    row.update({"floor_kl": r["data_floor"]["kl_data_model"], "floor_js": r["data_floor"]["js"]})
  return row


def table(results):
  """Per dataset, the mean over the seeds run so far (both models done) of each number,
  its sample standard deviation as KEY_std (None for one seed) and num_seeds."""
  out = {}
  for name, runs in results["runs"].items():
    rows = [_row(r) for r in runs.values() if all(k in r for k in KINDS)]
    if not rows:
      continue
    out[name] = {"num_seeds": len(rows)}
    for key in rows[0]:
      v = np.array([row[key] for row in rows], np.float64)
      out[name][key] = float(v.mean())
      out[name][key + "_std"] = float(v.std(ddof=1)) if len(v) > 1 else None
  return out


def _pm(row, key, fmt):
  std = row.get(key + "_std")
  return format(row[key], fmt) + ("" if std is None else " ± " + format(std, fmt))


def log_table(results, log):
  log("test NLL (nats): dataset, AR-CSM at sigma_min (quad. err.), AR-CSM at sigma*, MoL MADE")
  for n, row in results["table"].items():
    log(f"  {n:13s} {row['arcsm_nll']:8.4f} ({row['arcsm_quad_error']:.1e})  "
        f"{row['arcsm_nll_best_sigma']:8.4f} (sigma* {row['best_sigma']:.3g})  "
        f"{row['mol_nll']:8.4f}")
  if not any("arcsm_mmd2" in row for row in results["table"].values()):
    return
  log("samples (mean ± std over seeds): dataset, MMD^2 AR-CSM / MoL, KL(data||model) "
      "AR-CSM / MoL / data floor, JS AR-CSM / MoL / data floor")
  for n, row in results["table"].items():
    log(f"  {n:13s} seeds {row['num_seeds']}  MMD^2 {_pm(row, 'arcsm_mmd2', '.2e')} / "
        f"{_pm(row, 'mol_mmd2', '.2e')}  KL {_pm(row, 'arcsm_kl', '.3f')} / "
        f"{_pm(row, 'mol_kl', '.3f')} / {_pm(row, 'floor_kl', '.3f')}  "
        f"JS {_pm(row, 'arcsm_js', '.4f')} / {_pm(row, 'mol_js', '.4f')} / "
        f"{_pm(row, 'floor_js', '.4f')}")


# ------------------------------------------------------------------------------------
# The experiment
# ------------------------------------------------------------------------------------


def run(args, overrides):
  os.makedirs(args.out, exist_ok=True)
  names = [n for n in args.datasets.split(",") if n]
  start = time.perf_counter()

  def log(msg):
    print(f"{time.perf_counter() - start:7.1f}s {msg}", flush=True)

  configs = load_configs(overrides)
  results = {"what": "2-D density estimation (Meng et al. 2020, Sec. 5.2, Fig. 3b): AR-CSM "
                     "(MADE + score head, CSM with noise annealing; NLL by quadrature) vs "
                     "MADE mixture of logistics (MLE; exact NLL); test NLL in nats per example; "
                     "sample metrics: unbiased MMD^2 (mean RBF kernel), histogram "
                     "KL(data||model) and JS in nats",
             "args": vars(args), "overrides": overrides,
             "configs": {k: c.to_dict() for k, c in configs.items()},
             "machine": common.machine(), "datasets": {}}
  results["runs"] = {}
  seeds = [int(x) for x in args.seeds.split(",") if x.strip()] or [None]
  panels = {}
  json_path = common.results_path(args.out)

  def save(name, key, res):
    results["runs"].setdefault(name, {})[key] = res
    if key == next(iter(results["runs"][name])):
      results["datasets"][name] = res      # the first seed: the figure's
    results["table"] = table(results)
    results["seconds"] = time.perf_counter() - start
    common.write_json(json_path, results)

  for i, name in enumerate(names):
    for seed in seeds:
      key = str(configs["arcsm"].seed if seed is None else seed)
      log(f"dataset {i + 1}/{len(names)}: {name}, seed {key}")
      res, p = run_dataset(args, configs, name, log, seed,
                           save=lambda r, name=name, key=key: save(name, key, r))
      panels.setdefault(name, p)
      plot(os.path.join(args.out, "toy2d.png"), panels, results)
  log_table(results, log)
  return results


def main(argv=None):
  return run(*parse_args(argv))


if __name__ == "__main__":
  main()
