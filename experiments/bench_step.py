"""Train-step cost of CSM (paper Eq. 5, AR-CSM fast diagonal) next to its baselines.

Times, side by side in one process, jit-compiled train steps (gradient + Adam) of
  csm:               AR-CSM MADE, CSM loss with the one-jvp diagonal and noise annealing;
  forward_backward:  the same network and noise, loss 1/2 sum s_d^2 (no derivative term);
  mle:               the Gaussian MADE on the same backbone, exact NLL.
Usage: python experiments/bench_step.py --out bench_step.json [--batch 100 --hidden 1024,1024]
"""

import argparse
import functools
import pathlib
import sys

if __package__ in (None, ""):  # run as a script: make the repository importable
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax
import jax.numpy as jnp
import ml_collections
import optax

from csm_jax import losses, models, noise, train
from csm_jax.config_base import default_config
from experiments import common


def _step_fn(loss_fn, optimizer):
  def step(params, opt_state, x, rng):
    (loss, _), g = jax.value_and_grad(loss_fn, has_aux=True)(params, x, rng, True)
    updates, opt_state = optimizer.update(g, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss
  return jax.jit(step, donate_argnums=(0, 1))


def score_only_loss(model, sigmas, params, x, rng, train=True):
  """Same forward pass and noise as CSM, without the d s_d / d x_d term."""
  k_sig, k_eps = jax.random.split(rng)
  sigma = noise.sample_sigmas(k_sig, x.shape, sigmas)
  xt, _ = noise.perturb(k_eps, x, sigma)
  s = model.score(params, model.context(params, x), xt, sigma)
  loss = (sigma ** 2 * 0.5 * s ** 2).sum(-1).mean()
  return loss, {"loss": loss}


def run(args):
  cfg = default_config()
  cfg.model.hidden_sizes = tuple(int(h) for h in args.hidden.split(","))
  cfg.model.context_size = args.context_size
  cfg.model.head_hidden = tuple(int(h) for h in args.head_hidden.split(","))
  shape = (784,)
  sigmas = noise.sigmas_from_config(cfg.noise)
  opt = train.make_optimizer(cfg.optim)
  ar = models.get_model(cfg.model, shape)
  mle_cfg = ml_collections.ConfigDict(cfg.model.to_dict())
  mle_cfg.head = "gaussian"
  gauss = models.get_model(mle_cfg, shape)
  x = jax.random.normal(jax.random.PRNGKey(0), (args.batch,) + shape)
  rng = jax.random.PRNGKey(1)
  setups = {
      "csm": (ar, functools.partial(losses.csm_loss, ar, sigmas)),
      "forward_backward": (ar, functools.partial(score_only_loss, ar, sigmas)),
      "mle": (gauss, functools.partial(losses.mle_loss, gauss)),
  }
  thunks, params_count = {}, {}
  for name, (model, loss_fn) in setups.items():
    params = model.init(jax.random.PRNGKey(2))
    params_count[name] = int(sum(p.size for p in jax.tree.leaves(params)))
    step = _step_fn(loss_fn, opt)
    state = {"p": params, "o": opt.init(params)}

    def thunk(step=step, state=state):
      state["p"], state["o"], loss = step(state["p"], state["o"], x, rng)
      return loss
    common.block(thunk())  # compile
    thunks[name] = thunk
    print(f"compiled {name}", flush=True)
  med, raw = common.time_interleaved(thunks, repeats=args.repeats, inner=args.inner)
  out = {
      "csm_over_forward_backward": med["csm"] / med["forward_backward"],
      "csm_over_mle": med["csm"] / med["mle"],
      "median_step_seconds": med, "raw_step_seconds": raw, "params": params_count,
      "setting": {"dim": 784, "batch": args.batch, "hidden": cfg.model.hidden_sizes,
                  "context_size": args.context_size, "head_hidden": cfg.model.head_hidden,
                  "repeats": args.repeats, "inner": args.inner},
      "machine": common.machine(),
  }
  common.write_json(args.out, out)
  print({k: round(v, 3) for k, v in out.items() if k.startswith("csm_")}, med)
  return out


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--out", required=True)
  p.add_argument("--batch", type=int, default=100)
  p.add_argument("--hidden", default="1024,1024")
  p.add_argument("--context_size", type=int, default=16)
  p.add_argument("--head_hidden", default="32,32")
  p.add_argument("--repeats", type=int, default=15)
  p.add_argument("--inner", type=int, default=3)
  return run(p.parse_args(argv))


if __name__ == "__main__":
  main(sys.argv[1:])
