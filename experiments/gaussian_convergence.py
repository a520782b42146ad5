"""Convergence of score-matching objectives on N(0, 0.1^2 I_100) (paper Fig. 2 and 1b).

Trains one network per run from the same initialization on the same data stream:

  csm-made             noise-free CSM on a MADE AR-CSM (fast diagonal, paper Eq. 5)
  ssm-NET              sliced score matching, 1 Gaussian projection, variance reduced
  ssm_plain-NET        the same, plain: 1/2 (v^T s)^2 instead of 1/2 ||s||^2
  ssm_unit-NET         plain SSM with a unit-length projection v = g / ||g|| (the
                       convention of the reference code's plain SSM); estimates SM / D
  ssm_unit_vr-NET      variance-reduced SSM with a unit-length projection; estimates
                       1/2 ||s||^2 + tr(ds/dx) / D, minimized by s / D, not by the score
  dsm_SIGMA-NET        denoising score matching at SIGMA in {0.01, 0.05, 0.1}

where NET is `made` (the very same AR-CSM network, so only the objective differs) or
`mlp` (a 3-hidden-layer MLP score net with a comparable parameter count). Besides each
run's own loss curve (the paper's Fig. 2) we record the quantity that makes them
comparable, the relative Fisher divergence to the true score s(x) = -x / 0.01,

    E ||s_theta(x) - s(x)||^2 / E ||s(x)||^2     on held-out samples,

against step and against training wall-clock seconds (compile and evaluation excluded).
For the AR-CSM the learned object is the vector of conditional scores, whose true
value is also -x / 0.01 (the coordinates are independent). DSM is evaluated at clean x;
its optimum, the score of the noisy data -x / (0.01 + sigma^2), has relative error
(sigma^2 / (0.01 + sigma^2))^2, recorded as `dsm_bias_floor`. Likewise each SSM run
records `optimum_rel_fisher`, the relative error of its objective's minimizer: 0, except
(1 - 1/D)^2 for ssm_unit_vr (see losses.ssm_loss).

Loss variance (Fig. 1b): at fixed parameters of the MADE AR-CSM (its initialization, and
the CSM-trained parameters), the variance of each objective's minibatch estimate over
repeated independent draws of the batch and of the projections / noise, and the total
variance of its gradient. (Exact SM equals noise-free CSM draw by draw on an AR-CSM, at
~D times the cost; --variance_sm 1 includes it.)

  python -m experiments.gaussian_convergence --out /tmp/convergence
  python -m experiments.gaussian_convergence --out /tmp/ssm_conv --steps 20000 \
      --eval_every 200 --csm 0 --dsm_sigmas "" --ssm_variants unit_vr,unit,plain,vr
                                                      # the SSM discrepancy (README)
"""

import functools
import math
import os
import sys
import time

from experiments import common


# --ssm_variants: name -> (run name prefix, projection distribution, variance_reduced).
SSM_VARIANTS = {
    "vr": ("ssm", "gaussian", True),
    "plain": ("ssm_plain", "gaussian", False),
    "unit": ("ssm_unit", "gaussian_unit", False),
    "unit_vr": ("ssm_unit_vr", "gaussian_unit", True),
    "sphere": ("ssm_sphere", "sphere", False),
    "sphere_vr": ("ssm_sphere_vr", "sphere", True),
}


def parse_args(argv=None):
  p = common.parser(__doc__.split("\n\n")[0], ())
  p.add_argument("--out", required=True, help="output directory")
  p.add_argument("--dim", type=int, default=100, help="data dimension D")
  p.add_argument("--std", type=float, default=0.1, help="data are N(0, std^2 I)")
  p.add_argument("--steps", type=int, default=3000, help="training steps per run")
  p.add_argument("--batch", type=int, default=128, help="training batch size")
  p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
  p.add_argument("--eval_every", type=int, default=50,
                 help="steps between evaluations of the error")
  p.add_argument("--num_eval", type=int, default=2000, help="held-out samples")
  p.add_argument("--dsm_sigmas", default="0.01,0.05,0.1",
                 help="comma-separated DSM noise levels (one run each)")
  p.add_argument("--nets", default="made,mlp",
                 help="networks for SSM and DSM (CSM trains the MADE AR-CSM)")
  p.add_argument("--ssm_variants", default="vr,plain,unit,unit_vr",
                 help="SSM runs per network, from " + ",".join(SSM_VARIANTS) + " (see the "
                      "docstring); empty: no SSM")
  p.add_argument("--csm", type=int, default=1,
                 help="train the CSM run and do the loss-variance study at its parameters (0/1)")
  p.add_argument("--hidden", type=int, default=128, help="MADE hidden width (3 layers)")
  p.add_argument("--context_size", type=int, default=4,
                 help="MADE context features per dimension")
  p.add_argument("--head_hidden", default="32,32",
                 help="score-head hidden widths, comma-separated")
  p.add_argument("--activation", default="softplus", help="MLP score-net activation")
  p.add_argument("--threshold", type=float, default=0.05,
                 help="relative Fisher divergence for the time-to-threshold report")
  p.add_argument("--var_draws", type=int, default=100,
                 help="independent minibatch draws for the loss / gradient variance")
  p.add_argument("--grad_var", type=int, default=1, help="also the gradient variance (0/1)")
  p.add_argument("--variance_sm", type=int, default=0,
                 help="include exact SM in the variance study (0/1); on an AR-CSM it equals "
                      "noise-free CSM draw by draw, at ~D times the cost")
  p.add_argument("--seed", type=int, default=0, help="random seed")
  return p.parse_args(argv)


common.parse_early(__name__, parse_args)  # --help and flag errors before JAX loads

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.flatten_util import ravel_pytree  # noqa: E402
from csm_jax import losses  # noqa: E402
from csm_jax import models  # noqa: E402
from csm_jax import train  # noqa: E402
from experiments import matched_sizes  # noqa: E402


def ssm_optimum_rel_fisher(distribution, variance_reduced, dim):
  """Relative Fisher error of the minimizer of the SSM variant's expected objective:
  s / D for variance-reduced SSM with unit-length projections, else the score itself."""
  return (1.0 - 1.0 / dim) ** 2 if (distribution == "gaussian_unit" and variance_reduced) else 0.0


def _head_hidden(args):
  return tuple(int(h) for h in args.head_hidden.split(",") if h)


def rel_fisher(model, params, x, var):
  """E||s_theta(x) - s(x)||^2 / E||s(x)||^2 for the true score s(x) = -x / var."""
  s = model.full_score(params, x, jnp.ones_like(x), False, None)
  true = -x / var
  return ((s - true) ** 2).sum(-1).mean() / (true ** 2).sum(-1).mean()


def build_runs(args):
  """{run name: (objective, net, model, loss_fn)}; CSM first."""
  ar, mlp = matched_sizes.matched_pair(args.dim, args.hidden, args.context_size,
                                       _head_hidden(args), args.activation)
  nets = {"made": ar, "mlp": mlp}
  runs = {}
  if args.csm:
    runs["csm-made"] = ("csm", "made", ar, functools.partial(losses.csm_loss, ar, None))
  for net in [n for n in args.nets.split(",") if n]:
    if net not in nets:
      raise ValueError(f"unknown net {net!r}; known: {sorted(nets)}")
    m = nets[net]
    for variant in [v for v in args.ssm_variants.split(",") if v]:
      if variant not in SSM_VARIANTS:
        raise ValueError(f"unknown --ssm_variants entry {variant!r}; known: {list(SSM_VARIANTS)}")
      prefix, dist, vr = SSM_VARIANTS[variant]
      runs[f"{prefix}-{net}"] = (prefix, net, m, functools.partial(
          losses.ssm_loss, m, num_projections=1, distribution=dist, variance_reduced=vr))
    for sigma in [float(s) for s in args.dsm_sigmas.split(",") if s]:
      runs[f"dsm_{sigma:g}-{net}"] = (f"dsm_{sigma:g}", net, m,
                                       functools.partial(losses.dsm_loss, m, sigma=sigma))
  return runs


def make_step(loss_fn, optimizer, batch, dim, std, data_key, loss_key):
  """Step i: the library's update on a fresh batch x_i ~ N(0, std^2 I) (the same stream
  for every run) with loss randomness from step i."""
  update = train.make_update_step(loss_fn, optimizer)

  def step(params, opt_state, i):
    x = std * jax.random.normal(jax.random.fold_in(data_key, i), (batch, dim))
    return update(params, opt_state, x, jax.random.fold_in(loss_key, i))

  return step


def _compiled_step(loss_fn, args, params):
  """(jitted step(params, opt_state, i), opt_state); no donation: the initial parameters
  are shared by every run that trains this network."""
  key = jax.random.key(args.seed)
  optimizer = optax.adam(args.lr)
  opt_state = optimizer.init(params)
  step = jax.jit(make_step(loss_fn, optimizer, args.batch, args.dim, args.std,
                           jax.random.fold_in(key, 1), jax.random.fold_in(key, 2)))
  return step.lower(params, opt_state, jnp.zeros((), jnp.int32)).compile(), opt_state


def _summary(curve, step_losses, args):
  """The run's record from its evaluation curve (steps, seconds, errors) and losses."""
  eval_steps, eval_seconds, errors = curve
  hit = next((k for k, e in enumerate(errors) if e <= args.threshold), None)
  return {
      "eval_steps": eval_steps, "eval_seconds": eval_seconds, "rel_fisher": errors,
      # device_get of the list, not jnp.stack: stacking 20k scalars compiles for minutes
      "loss": np.asarray(jax.device_get(step_losses), np.float64).tolist(),
      "final_rel_fisher": errors[-1], "min_rel_fisher": float(min(errors)),
      "train_seconds": eval_seconds[-1],
      "seconds_per_step": eval_seconds[-1] / max(1, args.steps),
      "threshold": args.threshold,
      "steps_to_threshold": eval_steps[hit] if hit is not None else None,
      "seconds_to_threshold": eval_seconds[hit] if hit is not None else None,
  }


def train_run(name, model, loss_fn, params, evaluate, args, progress):
  """Trains one run from `params`, evaluating every args.eval_every steps (evaluation
  and compile not timed); returns its record and final parameters."""
  step, opt_state = _compiled_step(loss_fn, args, params)
  curve = ([0], [0.0], [float(evaluate(params))])
  step_losses, train_seconds = [], 0.0
  report_every = max(1, args.steps // 5)
  for start in range(0, args.steps, args.eval_every):
    t0 = time.perf_counter()
    done = min(start + args.eval_every, args.steps)
    for i in range(start, done):
      params, opt_state, loss = step(params, opt_state, jnp.asarray(i, jnp.int32))
      step_losses.append(loss)
    jax.block_until_ready(params)
    train_seconds += time.perf_counter() - t0
    for values, v in zip(curve, (done, train_seconds, float(evaluate(params)))):
      values.append(v)
    if done // report_every != start // report_every or done == args.steps:
      progress(name, done, float(step_losses[-1]), curve[2][-1], train_seconds)
  rec = dict(_summary(curve, step_losses, args),
             params=models.count_parameters(params, model)["parameters"])
  return rec, params


def variance_objectives(model, dsm_sigmas, include_sm=False):
  """Objectives that all apply to the same AR-CSM parameters."""
  objs = {"sm": functools.partial(losses.sm_loss, model)} if include_sm else {}
  objs.update({
      "csm": functools.partial(losses.csm_loss, model, None),
      "ssm": functools.partial(losses.ssm_loss, model, num_projections=1),
      "ssm_rademacher": functools.partial(losses.ssm_loss, model, num_projections=1,
                                          distribution="rademacher"),
  })
  for sigma in dsm_sigmas:
    objs[f"dsm_{sigma:g}"] = functools.partial(losses.dsm_loss, model, sigma=sigma)
  return objs


def loss_variance(model, param_sets, objectives, args, key):
  """Per objective and parameter set: mean and variance of the minibatch loss over
  independent draws of (batch, projections / noise), and the total variance
  E||g - E g||^2 of its gradient. Every objective sees the same batches."""
  keys = jax.random.split(key, args.var_draws)
  out = {g: {} for g in param_sets}
  for name, loss_fn in objectives.items():

    def draws(params, keys, loss_fn=loss_fn):
      def one(k):
        kx, kl = jax.random.split(k)
        x = args.std * jax.random.normal(kx, (args.batch, args.dim))
        if not args.grad_var:
          return loss_fn(params, x, kl, False)[0], jnp.zeros(())
        loss, g = jax.value_and_grad(lambda p: loss_fn(p, x, kl, False)[0])(params)
        return loss, ravel_pytree(g)[0]
      return jax.lax.map(one, keys)

    draws = jax.jit(draws)
    for g, params in param_sets.items():
      vals, grads = jax.device_get(draws(params, keys))
      vals = np.asarray(vals, np.float64)
      rec = {"mean": float(vals.mean()), "var": float(vals.var(ddof=1)),
             "std": float(vals.std(ddof=1)), "draws": int(len(vals))}
      if args.grad_var:
        grads = np.asarray(grads, np.float64)
        rec["grad_var"] = float(((grads - grads.mean(0)) ** 2).sum(1).mean()
                                * len(grads) / (len(grads) - 1))
        rec["grad_mean_sq_norm"] = float((grads.mean(0) ** 2).sum())
      out[g][name] = rec
  return out


def plot(results, out_dir):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  runs = results["runs"]
  names = list(runs)
  # Each objective's own loss curve (their scales differ: one panel each).
  ncols = min(4, len(names))
  nrows = int(math.ceil(len(names) / ncols))
  fig, axes = plt.subplots(nrows, ncols, figsize=(4 * ncols, 3 * nrows), squeeze=False)
  for ax, name in zip(axes.flat, names):
    loss = np.asarray(runs[name]["loss"])
    ax.plot(np.arange(1, len(loss) + 1), loss, lw=0.5, alpha=0.5)
    w = max(1, len(loss) // 50)
    if len(loss) >= w:
      ax.plot(np.arange(w, len(loss) + 1), np.convolve(loss, np.ones(w) / w, "valid"), lw=1.5)
    ax.set_title(name, fontsize=10)
    ax.set_xlabel("step")
  for ax in list(axes.flat)[len(names):]:
    ax.axis("off")
  fig.suptitle("Training loss of each objective (cf. Meng et al. 2020, Fig. 2)")
  fig.tight_layout()
  fig.savefig(os.path.join(out_dir, "convergence_loss.png"), dpi=100)
  plt.close(fig)

  # Relative Fisher divergence to the true score vs step and vs seconds.
  fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
  for name in names:
    r = runs[name]
    style = "-" if name.endswith("made") else "--"
    for ax, xkey in zip(axes, ("eval_steps", "eval_seconds")):
      ax.semilogy(r[xkey], r["rel_fisher"], style, label=name)
  for ax, xlabel in zip(axes, ("step", "training wall-clock seconds")):
    ax.axhline(results["config"]["threshold"], color="k", lw=0.8, ls=":")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("E||s_theta - s||^2 / E||s||^2 (held out)")
    ax.grid(True, which="both", alpha=0.3)
  axes[1].legend(fontsize=8)
  fig.suptitle(f"Learning N(0, {results['config']['std']:g}^2 I_{results['config']['dim']}): "
               "relative score error (dotted: threshold)")
  fig.tight_layout()
  fig.savefig(os.path.join(out_dir, "convergence_error.png"), dpi=100)
  plt.close(fig)

  # Loss (and gradient) variance at fixed parameters.
  var = results["variance"]
  if not var:  # --csm 0: no variance study
    return
  groups = list(var)
  objs = list(var[groups[0]])
  panels = [("var", "variance of the minibatch loss")]
  if "grad_var" in var[groups[0]][objs[0]]:
    panels.append(("grad_var", "total variance of the minibatch gradient"))
  fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
  width = 0.8 / len(groups)
  for ax, (key, label) in zip(axes[0], panels):
    for gi, g in enumerate(groups):
      vals = [max(var[g][o][key], 1e-30) for o in objs]
      ax.bar(np.arange(len(objs)) + gi * width, vals, width, label=f"params: {g}")
    ax.set_yscale("log")
    ax.set_xticks(np.arange(len(objs)) + width * (len(groups) - 1) / 2)
    ax.set_xticklabels(objs, rotation=30, ha="right")
    ax.set_title(label, fontsize=10)
  axes[0][0].legend(fontsize=8)
  fig.suptitle(f"Estimator variance on the same AR-CSM (batch {results['config']['batch']}; "
               "cf. Meng et al. 2020, Fig. 1b)")
  fig.tight_layout()
  fig.savefig(os.path.join(out_dir, "loss_variance.png"), dpi=100)
  plt.close(fig)


def _progress(k, num_runs, args, t_start):
  """Prints one run's progress with an ETA over all runs."""

  def report(run_name, step, loss, err, secs):
    elapsed = time.time() - t_start
    frac = (k + step / args.steps) / num_runs
    eta = elapsed / frac * (1 - frac) if frac > 0 else float("nan")
    print(f"[run {k + 1}/{num_runs} {run_name:>14s}] step {step:6d}/{args.steps}  "
          f"loss {loss:12.4g}  rel err {err:8.4f}  train {secs:6.1f}s  "
          f"(elapsed {elapsed:5.0f}s, ETA ~{eta:5.0f}s)", flush=True)

  return report


def train_all(runs, args, results, write, t_start):
  """Trains every run into results['runs'] (writing after each); returns
  ({name: (model, final params)}, {net: initial params})."""
  x_eval = args.std * jax.random.normal(jax.random.key(args.seed + 12345),
                                        (args.num_eval, args.dim))
  init_key = jax.random.fold_in(jax.random.key(args.seed), 0)
  inits, evaluators, trained = {}, {}, {}
  for k, (name, (objective, net, model, loss_fn)) in enumerate(runs.items()):
    if net not in inits:  # one initialization and one compiled evaluator per network
      inits[net] = model.init(init_key)
      evaluators[net] = jax.jit(functools.partial(rel_fisher, model, x=x_eval,
                                                  var=args.std ** 2))
    rec, params = train_run(name, model, loss_fn, inits[net], evaluators[net], args,
                            _progress(k, len(runs), args, t_start))
    rec.update(objective=objective, net=net)
    ssm = {prefix: (dist, vr) for prefix, dist, vr in SSM_VARIANTS.values()}.get(objective)
    if ssm is not None:
      rec.update(ssm_projection=ssm[0], ssm_variance_reduced=ssm[1],
                 optimum_rel_fisher=ssm_optimum_rel_fisher(*ssm, args.dim))
    if objective.startswith("dsm_"):
      sigma = float(objective[4:])
      rec.update(dsm_sigma=sigma, dsm_bias_floor=(sigma ** 2 / (args.std ** 2 + sigma ** 2)) ** 2)
    results["runs"][name] = rec
    trained[name] = (model, params)
    write(results)
  return trained, inits


def variance_study(ar_model, ar_init, ar_trained, args):
  """loss_variance at the AR-CSM's initialization and at its CSM-trained parameters."""
  objectives = variance_objectives(
      ar_model, [float(s) for s in args.dsm_sigmas.split(",") if s], bool(args.variance_sm))
  fixed = {"init": ar_init, "csm_trained": ar_trained}
  out = loss_variance(ar_model, fixed, objectives, args, jax.random.key(args.seed + 777))
  for g in fixed:
    print(f"  params={g}: " + ", ".join(f"{o} var {v['var']:.3g}"
                                         for o, v in out[g].items()), flush=True)
  return out


def _print_table(results, threshold):
  print(f"\n{'run':>16s} {'final rel err':>14s} {'s/step':>9s} {'to ' + str(threshold):>14s}")
  for name, r in results["runs"].items():
    hit = (f"{r['seconds_to_threshold']:.1f}s (step {r['steps_to_threshold']})"
           if r["seconds_to_threshold"] is not None else "never")
    print(f"{name:>16s} {r['final_rel_fisher']:14.4g} {r['seconds_per_step']:9.4f} {hit:>14s}")


def run(args):
  os.makedirs(args.out, exist_ok=True)
  t_start = time.time()
  write = lambda r: common.write_results(args.out, r, args)
  runs = build_runs(args)
  results = {"config": dict(vars(args), **common.machine()), "runs": {}, "variance": {}}
  print(f"{len(runs)} runs x {args.steps} steps, D={args.dim}, batch={args.batch}", flush=True)
  trained, inits = train_all(runs, args, results, write, t_start)
  if "csm-made" in trained:
    print("loss variance at fixed AR-CSM parameters ...", flush=True)
    ar_model, ar_trained = trained["csm-made"]
    results["variance"] = variance_study(ar_model, inits["made"], ar_trained, args)
  results["wall_seconds"] = time.time() - t_start
  write(results)
  plot(results, args.out)
  _print_table(results, args.threshold)
  pngs = "convergence_loss.png, convergence_error.png" + (
      ", loss_variance.png" if results["variance"] else "")
  print(f"wrote {args.out}/results.json, {pngs} in {results['wall_seconds']:.0f}s", flush=True)
  return results


def main(argv=None):
  return run(parse_args(argv))


if __name__ == "__main__":
  main(sys.argv[1:])
