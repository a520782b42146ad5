"""Train-step cost of CSM (paper Eq. 5, AR-CSM fast diagonal) next to its baselines.

Times, side by side in one process, jit-compiled train steps (loss, gradient, the
config's Adam update; `train.make_update_step`) on MNIST-sized random data of
  csm:               the AR-CSM MADE of configs/mnist_made.py, its CSM loss with the
                     one-jvp diagonal and noise annealing (paper Sec. 3-4);
  forward_backward:  the same network and noise, loss 1/2 sum s_d^2 (no derivative term);
  mle:               the Gaussian MADE on the same backbone, exact NLL.
Defaults: MADE 2x1024, context 16, head (32, 32), batch 100, the config's noise schedule.

  python -m experiments.bench_step --out bench_step.json \\
      [--config.model.hidden_sizes='(1024,1024)' --config.training.batch_size=100]
"""

import argparse
import functools
import math
import sys

import jax

from csm_jax import config_base
from csm_jax import data as data_lib
from csm_jax import losses
from csm_jax import models
from csm_jax import noise
from csm_jax import train
from experiments import common

CONFIG = "mnist_made"  # configs/mnist_made.py


def score_only_loss(model, sigmas, params, x, rng, is_training=True):
  """Same forward pass and noise as CSM, without the d s_d / d x_d term."""
  del is_training  # MADE has no dropout
  k_sig, k_eps = jax.random.split(rng)
  sigma = noise.sample_sigmas(k_sig, x.shape, sigmas)
  xt, _ = noise.perturb(k_eps, x, sigma)
  s = model.score(params, model.context(params, x), xt, sigma)
  loss = (sigma ** 2 * 0.5 * s ** 2).sum(-1).mean()
  return loss, {"loss": loss}


def mle_config(config):
  """The same config with Gaussian conditionals trained by exact NLL (the MLE baseline)."""
  return common.apply(config.copy_and_resolve_references(),
                      ["model.head=gaussian", "loss.name=mle"])


def step_setups(config, shape):
  """{name: (model, loss_fn)} of the three timed steps."""
  ar = models.get_model(config.model, shape)
  mle = mle_config(config)
  gauss = models.get_model(mle.model, shape)
  sigmas = noise.sigmas_from_config(config.noise)
  return {"csm": (ar, losses.get_loss_fn(config, ar)),
          "forward_backward": (ar, functools.partial(score_only_loss, ar, sigmas)),
          "mle": (gauss, losses.get_loss_fn(mle, gauss))}


def compiled_thunk(model, loss_fn, optimizer, x, rng):
  """(thunk, parameter count): each call runs one update step on its own state."""
  params = model.init(jax.random.PRNGKey(2))
  count = models.count_parameters(params, model)["parameters"]
  step = jax.jit(train.make_update_step(loss_fn, optimizer), donate_argnums=(0, 1))
  state = {"p": params, "o": optimizer.init(params)}

  def thunk():
    state["p"], state["o"], loss = step(state["p"], state["o"], x, rng)
    return loss

  common.block(thunk())  # compile
  return thunk, count


def setting(config, shape, args):
  m = config.model
  return {"dim": math.prod(shape), "batch": config.training.batch_size,
          "hidden": tuple(m.hidden_sizes), "context_size": m.context_size,
          "head_hidden": tuple(m.head_hidden), "noise": config.noise.to_dict(),
          "loss": config.loss.name, "repeats": args.repeats, "inner": args.inner}


def run(args, config):
  shape = data_lib.image_shape(config.data, config.data.dataset)
  optimizer = train.make_optimizer(config.optim)
  x = jax.random.normal(jax.random.PRNGKey(0), (config.training.batch_size, math.prod(shape)))
  rng = jax.random.PRNGKey(1)
  out = {"setting": setting(config, shape, args), "params": {}, "machine": common.machine()}
  thunks = {}
  for name, (model, loss_fn) in step_setups(config, shape).items():
    thunks[name], out["params"][name] = compiled_thunk(model, loss_fn, optimizer, x, rng)
    print(f"compiled {name}", flush=True)
  common.write_json(args.out, out)
  med, raw = common.time_interleaved(thunks, repeats=args.repeats, inner=args.inner)
  out.update(csm_over_forward_backward=med["csm"] / med["forward_backward"],
             csm_over_mle=med["csm"] / med["mle"], median_step_seconds=med,
             raw_step_seconds=raw)
  common.write_json(args.out, out)
  print({k: round(v, 3) for k, v in out.items() if k.startswith("csm_")}, med)
  return out


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--out", required=True, help="output JSON file")
  p.add_argument("--repeats", type=int, default=15, help="interleaved timing rounds")
  p.add_argument("--inner", type=int, default=3, help="steps per timing")
  args, ov = common.parse(p, argv, prefixes=("config",))
  return run(args, common.apply(config_base.load_config(CONFIG), ov["config"]))


if __name__ == "__main__":
  main(sys.argv[1:])
