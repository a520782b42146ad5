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
1-D annealed Langevin dynamics (the paper's sampler), the MoL MADE by exact ancestral
sampling on the grid (`sampling.grid_sample`).

  python experiments/toy2d.py --out /tmp/toy2d        # DIR/toy2d.json, DIR/toy2d.png
"""

import argparse
import os
import pathlib
import sys
import time

if __package__ in (None, ""):  # run as a script: make the repository importable
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax
import jax.numpy as jnp
import numpy as np

from csm_jax import datasets, likelihood, metrics, models, noise, plotting, sampling, sharding, train
from csm_jax.config_base import default_config
from csm_jax.models import made as made_lib
from experiments import common

plt = plotting.plt


# ------------------------------------------------------------------------------------
# A lean in-process training loop (reused by experiments/mnist_nll.py)
# ------------------------------------------------------------------------------------


def fit(config, env, log=print, eval_fn=None, eval_every=0, label=""):
  """Trains env's model for config.training.num_steps with train.make_train_step.

  Returns (state, info): info has compile/train seconds (training only, evaluation
  excluded) and, if `eval_fn(params) -> dict` is given, a history of evaluations of
  the EMA parameters every `eval_every` steps (and at steps 0 and the end), each with
  the step and the training seconds so far.
  """
  model, optimizer, batcher = env["model"], env["optimizer"], env["batcher"]
  repl = sharding.replicated(env["mesh"])
  n = int(config.training.num_steps)
  state = jax.device_put(train.init_state(model, optimizer, jax.random.PRNGKey(config.seed)),
                         repl)
  base_rng = jax.device_put(jax.random.PRNGKey(config.seed + 1), repl)
  step_fn = jax.jit(train.make_train_step(env["loss_fn"], optimizer, config.optim.ema_decay),
                    donate_argnums=(0,))
  batch = batcher.train(0)
  t0 = time.perf_counter()
  step_fn = step_fn.lower(state, batch, base_rng).compile()
  compile_s = time.perf_counter() - t0
  history, train_s = [], 0.0

  def evaluate(step):
    row = {"step": step, "seconds": train_s}
    row.update(eval_fn(state.ema_params))
    history.append(row)
    log(f"[{label}] step {step}/{n} eval " + ", ".join(
        f"{k} {v:.4g}" for k, v in row.items() if isinstance(v, float) and k != "seconds"))

  if eval_fn is not None and eval_every:
    evaluate(0)
  progress = metrics.Progress(0, n)
  log_every = max(1, int(config.training.log_every))
  tick = time.perf_counter()
  loss = float("nan")
  for step in range(n):
    state, m = step_fn(state, batch, base_rng)
    done = step + 1
    if done < n:
      batch = batcher.train(done)
    is_eval = eval_fn is not None and eval_every and (done % eval_every == 0 or done == n)
    if done % log_every == 0 or done == n or is_eval:
      loss = float(m["loss"])                                  # waits for the step
      if int(state.bad_step) >= 0:
        raise FloatingPointError(f"[{label}] non-finite loss at step {int(state.bad_step)}")
    if done % log_every == 0 or done == n:
      progress.update(done)
      log(f"[{label}] step {done}/{n} loss {loss:.4f} {progress.rate:.1f} steps/s "
          f"ETA {progress.eta_str(done)}")
    if is_eval:
      train_s += time.perf_counter() - tick
      evaluate(done)
      tick = time.perf_counter()
  jax.block_until_ready(state)
  train_s += time.perf_counter() - tick
  return state, {"compile_seconds": compile_s, "train_seconds": train_s,
                 "steps": n, "final_loss": loss, "history": history}


def count_parameters(model, params, model_config=None) -> dict:
  """All parameter entries, and 'effective' ones: MADE kernel entries masked to 0 left out."""
  total = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(params))
  masked_out = 0
  if model_config is not None and model_config.backbone == "made":
    masks = made_lib.made_masks(np.asarray(model.rank), tuple(model_config.hidden_sizes),
                                model_config.context_size)
    masked_out = int(sum((m == 0).sum() for m in masks))
  return {"parameters": total, "effective_parameters": total - masked_out}


# ------------------------------------------------------------------------------------
# Configs
# ------------------------------------------------------------------------------------


def _base_config(args, name):
  c = default_config()
  c.seed = args.seed
  c.data.dataset = "toy2d"
  c.data.name = name
  c.data.seed = args.seed
  c.data.num_train = args.num_train
  c.data.num_test = args.num_test
  c.model.backbone = "made"
  c.model.context_size = args.context_size
  c.training.num_steps = args.steps
  c.training.batch_size = args.batch_size
  c.training.log_every = max(1, args.steps // 4)
  c.optim.learning_rate = args.lr
  c.optim.warmup_steps = min(100, args.steps // 10 + 1)
  c.optim.ema_decay = args.ema_decay
  return c


def arcsm_config(args, name):
  """AR-CSM: MADE + noise-conditional score head, CSM with per-dimension annealing."""
  c = _base_config(args, name)
  c.model.head = "score"
  c.model.hidden_sizes = (args.hidden,) * args.layers
  c.model.head_hidden = tuple(int(h) for h in args.head_hidden.split(","))
  c.model.head_sigma_embedding = args.head_sigma_embedding
  c.model.head_sigma_film = bool(args.head_sigma_film)
  c.loss.name = "csm"
  c.noise.enabled = True
  c.noise.sigma_max, c.noise.sigma_min, c.noise.num_scales = (
      args.sigma_max, args.sigma_min, args.num_scales)
  return c


def mol_config(args, name, hidden):
  """MADE with a mixture of `num_mixtures` logistics per conditional, MLE."""
  c = _base_config(args, name)
  c.model.head = "logistic_mixture"
  c.model.num_mixtures = args.num_mixtures
  c.model.hidden_sizes = (hidden,) * args.layers
  c.loss.name = "mle"
  c.noise.enabled = False
  return c


def _params_of(config):
  model = models.get_model(config.model, (2,))
  return count_parameters(model, model.init(jax.random.PRNGKey(0)), config.model)


def mol_hidden(args):
  """The MoL MADE's width: --mol_hidden, or the smallest multiple of 8 with strictly more
  parameters (all and effective) than the AR-CSM."""
  ref = _params_of(arcsm_config(args, "ring8"))
  if args.mol_hidden:
    return args.mol_hidden
  h = args.hidden
  while True:
    p = _params_of(mol_config(args, "ring8", h))
    if p["parameters"] > ref["parameters"] and p["effective_parameters"] > ref["effective_parameters"]:
      return h
    h += 8


# ------------------------------------------------------------------------------------
# Densities on a mesh
# ------------------------------------------------------------------------------------


def log_density_mesh(model, params, grid, sigma, stride, method):
  """log q on the mesh nodes[::stride]^2, array [i, j] = (x_1 = t_i, x_2 = t_j).

  Quadrature: the conditional of the second variable in the order is normalized on the
  grid once per value of the first (its context depends on that value only).
  """
  t = np.asarray(grid.nodes())[::stride]
  if method == "exact":
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
# The experiment
# ------------------------------------------------------------------------------------


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--out", required=True, help="output directory")
  p.add_argument("--datasets", default=",".join(datasets.TOY2D_NAMES))
  p.add_argument("--steps", type=int, default=8000)
  p.add_argument("--batch_size", type=int, default=256)
  p.add_argument("--lr", type=float, default=1e-3)
  p.add_argument("--ema_decay", type=float, default=0.995)
  p.add_argument("--layers", type=int, default=2)
  p.add_argument("--hidden", type=int, default=128, help="AR-CSM MADE width")
  p.add_argument("--context_size", type=int, default=16)
  p.add_argument("--head_hidden", default="64,64")
  p.add_argument("--head_sigma_embedding", type=int, default=64,
                 help="width of the head's log-sigma embedding (0: log sigma as an input only)")
  p.add_argument("--head_sigma_film", type=int, default=1,
                 help="1: the embedding scales and shifts every head layer; 0: shifts only")
  p.add_argument("--sigma_max", type=float, default=3.0)
  p.add_argument("--sigma_min", type=float, default=0.05)
  p.add_argument("--num_scales", type=int, default=10)
  p.add_argument("--num_mixtures", type=int, default=20, help="n logistics (MoL MADE)")
  p.add_argument("--mol_hidden", type=int, default=0, help="0: smallest width with more params")
  p.add_argument("--num_train", type=int, default=50000)
  p.add_argument("--num_test", type=int, default=5000)
  p.add_argument("--num_val", type=int, default=1000, help="validation set to pick sigma*")
  p.add_argument("--num_points", type=int, default=1025, help="quadrature nodes per dim")
  p.add_argument("--num_samples", type=int, default=2000)
  p.add_argument("--n_steps", type=int, default=20, help="Langevin steps per noise level")
  p.add_argument("--step_lr", type=float, default=2e-3)
  p.add_argument("--stride", type=int, default=4, help="heatmap: every k-th grid node")
  p.add_argument("--seed", type=int, default=0)
  return p.parse_args(argv)


def run_dataset(args, name, mol_width, log):
  res = {}
  cfg_a, cfg_m = arcsm_config(args, name), mol_config(args, name, mol_width)
  env_a, env_m = train.setup(cfg_a), train.setup(cfg_m)
  arrays = env_a["arrays"]
  grid = likelihood.grid_from_data(arrays.train, args.num_points, margin=0.1)
  sigma = likelihood.noise_level(cfg_a)
  rng = jax.random.PRNGKey(args.seed + 7)
  out = {"data": np.asarray(arrays.test[:args.num_samples])}
  for kind, cfg, env in (("arcsm", cfg_a, env_a), ("mol", cfg_m, env_m)):
    model = env["model"]
    state, info = fit(cfg, env, log=log, label=f"{name}/{kind}")
    params = state.ema_params
    t0 = time.perf_counter()
    if kind == "arcsm":
      sigmas = noise.sigmas_from_config(cfg.noise)
      fn = likelihood.make_log_likelihood_fn(model, grid, sigma)
      y_val = datasets.toy2d_sample(name, args.num_val, np.random.default_rng([args.seed, 2]))
      per = likelihood.nll_per_sigma(model, params, y_val, sigmas[::-1], grid, fn=fn,
                                     batch_size=1000)
      best = per.pop("best_sigma")
      per.pop("results")
      nll = likelihood.evaluate_nll(model, params, arrays.test, grid=grid, sigma=sigma,
                                    batch_size=1000, fn=fn)
      nll_best = likelihood.evaluate_nll(model, params, arrays.test, grid=grid, sigma=best,
                                         batch_size=1000, fn=fn)
      smp = sampling.make_sampler(model, sigmas, args.num_samples, args.n_steps,
                                  args.step_lr, denoise=True)(params, rng)
      t, lq = log_density_mesh(model, params, grid, sigma, args.stride, "quadrature")
      _, lq_best = log_density_mesh(model, params, grid, best, args.stride, "quadrature")
      out["arcsm_best_density"] = (t, np.exp(lq_best))
      res["arcsm_best_sigma"] = {"sigma": best, "test_nll_nats": nll_best["nll_nats"],
                                 "test_nll_stderr": nll_best["nll_nats_stderr"],
                                 "quad_error_nats": nll_best["quad_error_nats"],
                                 "validation_nll_per_sigma": per}
    else:
      nll = likelihood.evaluate_nll(model, params, arrays.test, method="exact", batch_size=1000)
      check = likelihood.evaluate_nll(model, params, arrays.test, grid=grid, batch_size=1000)
      nll["nll_nats_quadrature_check"] = check["nll_nats"]
      nll["quad_error_nats"] = check["quad_error_nats"]
      nll["edge_density_mean"] = check["edge_density_mean"]
      smp = jax.jit(lambda p, r: sampling.grid_sample(model, p, r, args.num_samples, grid))(
          params, rng)
      t, lq = log_density_mesh(model, params, grid, sigma, args.stride, "exact")
    mass = float(np.exp(lq).sum() * (t[1] - t[0]) ** 2)
    res[kind] = {"test_nll_nats": nll["nll_nats"], "test_nll_stderr": nll["nll_nats_stderr"],
                 "nll": nll, **info,
                 **count_parameters(model, params, cfg.model), "eval_seconds":
                 time.perf_counter() - t0, "mesh_mass": mass,
                 "config": {"hidden_sizes": list(cfg.model.hidden_sizes),
                            "head": cfg.model.head}}
    res[kind].pop("history")
    out[kind + "_samples"] = np.asarray(smp)
    out[kind + "_density"] = (t, np.exp(lq))
    log(f"[{name}/{kind}] test NLL {nll['nll_nats']:.4f} nats "
        f"({res[kind]['effective_parameters']} effective params)")
    if kind == "arcsm":
      log(f"[{name}/{kind}] sigma* = {best:.3g} (validation), test NLL at sigma* "
          f"{nll_best['nll_nats']:.4f} nats")
  res["grid"] = grid.to_dict()
  res["sigma_min"] = sigma
  return res, out


def plot(path, names, panels, window, results):
  cols = ["data", "AR-CSM samples (Langevin)", "AR-CSM density, σ_min",
          "AR-CSM density, σ*", "MoL samples", "MoL density"]
  keys = ["data", "arcsm_samples", "arcsm_density", "arcsm_best_density", "mol_samples",
          "mol_density"]
  fig, axes = plt.subplots(len(names), len(keys), figsize=(2.6 * len(keys), 2.6 * len(names)),
                           squeeze=False)
  for r, name in enumerate(names):
    p = panels[name]
    res = results["datasets"][name]
    nll = {"arcsm_density": res["arcsm"]["test_nll_nats"],
           "arcsm_best_density": res["arcsm_best_sigma"]["test_nll_nats"],
           "mol_density": res["mol"]["test_nll_nats"]}
    for c, key in enumerate(keys):
      ax = axes[r, c]
      if key.endswith("density"):
        t, dens = p[key]
        ax.imshow(dens.T, origin="lower", extent=(t[0], t[-1], t[0], t[-1]), cmap="viridis",
                  interpolation="nearest", aspect="auto")
        label = f"NLL {nll[key]:.3f}"
        if key == "arcsm_best_density":
          label += f", σ*={res['arcsm_best_sigma']['sigma']:.2g}"
        ax.text(0.03, 0.03, label, transform=ax.transAxes, color="w", fontsize=8)
      else:
        pts = p[key]
        ax.scatter(pts[:, 0], pts[:, 1], s=0.5, alpha=0.5, color="k" if key == "data" else "C0")
      ax.set_xlim(-window, window)
      ax.set_ylim(-window, window)
      ax.set_xticks([])
      ax.set_yticks([])
      if r == 0:
        ax.set_title(cols[c], fontsize=10)
      if c == 0:
        ax.set_ylabel(name)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)


def run(args):
  os.makedirs(args.out, exist_ok=True)
  names = [n for n in args.datasets.split(",") if n]
  start = time.perf_counter()

  def log(msg):
    print(f"{time.perf_counter() - start:7.1f}s {msg}", flush=True)

  width = mol_hidden(args)
  results = {"what": "2-D density estimation (Meng et al. 2020, Sec. 5.2, Fig. 3b): AR-CSM "
                     "(MADE + score head, CSM with noise annealing; NLL by quadrature) vs "
                     "MADE mixture of logistics (MLE; exact NLL); test NLL in nats per example",
             "args": vars(args), "machine": common.machine(), "datasets": {}}
  panels = {}
  for i, name in enumerate(names):
    log(f"dataset {i + 1}/{len(names)}: {name}")
    res, panels[name] = run_dataset(args, name, width, log)
    results["datasets"][name] = res
    results["table"] = {n: {"arcsm_nll": r["arcsm"]["test_nll_nats"],
                            "arcsm_nll_best_sigma": r["arcsm_best_sigma"]["test_nll_nats"],
                            "best_sigma": r["arcsm_best_sigma"]["sigma"],
                            "mol_nll": r["mol"]["test_nll_nats"],
                            "arcsm_quad_error": r["arcsm"]["nll"]["quad_error_nats"]}
                        for n, r in results["datasets"].items()}
    results["seconds"] = time.perf_counter() - start
    common.write_json(os.path.join(args.out, "toy2d.json"), results)
  window = max(abs(np.concatenate([panels[n]["data"] for n in names])).max() * 1.05, 1.0)
  plot(os.path.join(args.out, "toy2d.png"), names, panels, float(window), results)
  log("test NLL (nats): dataset, AR-CSM at sigma_min (quad. err.), AR-CSM at sigma*, MoL MADE")
  for n, row in results["table"].items():
    log(f"  {n:13s} {row['arcsm_nll']:8.4f} ({row['arcsm_quad_error']:.1e})  "
        f"{row['arcsm_nll_best_sigma']:8.4f} (sigma* {row['best_sigma']:.3g})  {row['mol_nll']:8.4f}")
  return results


def main(argv=None):
  return run(parse_args(argv))


if __name__ == "__main__":
  main()
