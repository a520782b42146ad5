"""Train-step cost of CSM (paper Eq. 5, AR-CSM fast diagonal) next to its baselines.

Times, side by side in one process, jit-compiled train steps (loss, gradient, the
config's Adam update; `train.make_update_step`) on MNIST-sized random data of
  csm:               the AR-CSM MADE of configs/mnist_made.py, its CSM loss with the
                     one-jvp diagonal and noise annealing (paper Sec. 3-4);
  forward_backward:  the same network and noise, loss 1/2 sum s_d^2 (no derivative term);
  mle:               the Gaussian MADE on the same backbone, exact NLL.
Defaults: MADE 2x1024, context 16, head (32, 32), batch 100, the config's noise schedule.

Then the training loop's own rate (`train.train_loop`, compile excluded) next to the
rate of its compiled step fed one resident batch (loop efficiency = step alone / loop
per step), for the host pipeline, the device-resident pipeline, and the device pipeline
with --steps_per_dispatch steps per call. FLOP/s from XLA's cost analysis.

  python -m experiments.bench_step --out /tmp/bench_step \\
      [--config.model.hidden_sizes='(1024,1024)' --config.training.batch_size=100]
      [--config.model.compute_dtype=bfloat16] [--loop_steps 2000]
"""

import functools
import math
import sys
import time

from experiments import common


def parse_args(argv=None):
  p = common.parser(__doc__.splitlines()[0], ("config",))
  p.add_argument("--out", required=True, help="output directory (results.json)")
  p.add_argument("--repeats", type=int, default=15, help="interleaved timing rounds")
  p.add_argument("--inner", type=int, default=3, help="steps per timing")
  p.add_argument("--loop_steps", type=int, default=30,
                 help="steps of each timed training loop (0: skip the loop efficiency)")
  p.add_argument("--loop_examples", type=int, default=60000,
                 help="training images of the loop runs (random uint8, MNIST-shaped)")
  p.add_argument("--steps_per_dispatch", type=int, default=10,
                 help="k of the device pipeline's several-steps-per-dispatch loop run")
  return common.parse(p, argv, prefixes=("config",))


common.parse_early(__name__, parse_args)  # --help and flag errors before JAX loads

import jax  # noqa: E402
import numpy as np  # noqa: E402
from csm_jax import config_base  # noqa: E402
from csm_jax import data as data_lib  # noqa: E402
from csm_jax import losses  # noqa: E402
from csm_jax import models  # noqa: E402
from csm_jax import noise  # noqa: E402
from csm_jax import sharding as sharding_lib  # noqa: E402
from csm_jax import train  # noqa: E402


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
  """(thunk, parameter count, XLA flops per step): each call runs one update step."""
  params = model.init(jax.random.PRNGKey(2))
  count = models.count_parameters(params, model)["parameters"]
  state = {"p": params, "o": optimizer.init(params)}
  step = jax.jit(train.make_update_step(loss_fn, optimizer), donate_argnums=(0, 1))
  step = step.lower(state["p"], state["o"], x, rng).compile()

  def thunk():
    state["p"], state["o"], loss = step(state["p"], state["o"], x, rng)
    return loss

  common.block(thunk())
  return thunk, count, common.xla_flops(step)


def synthetic_arrays(shape, num_train, seed=0):
  """Uniform random uint8 images of `shape`: the input pipeline's cost without tfds."""
  rng = np.random.default_rng(seed)
  return data_lib.Arrays(train=rng.integers(0, 256, (num_train,) + shape, dtype=np.uint8),
                         test=rng.integers(0, 256, (500,) + shape, dtype=np.uint8),
                         shape=shape, discrete=True)


def time_step_alone(s, num_steps):
  """Seconds per call of the compiled train step (`train.make_train_step`: loss, gradient,
  Adam, EMA, NaN guard) fed one device-resident batch over and over: the rate the
  training loop could reach if feeding it cost nothing."""
  repl = sharding_lib.replicated(s.mesh)
  state = train.initial_state(s)
  batch = s.batcher.train(0)
  rng = jax.device_put(jax.random.PRNGKey(1), repl)
  step = jax.jit(train.make_train_step(s.loss_fn, s.optimizer, s.config.optim.ema_decay),
                 donate_argnums=(0,)).lower(state, batch, rng).compile()
  state, _ = step(state, batch, rng)
  common.block(state)
  t0 = time.perf_counter()
  for _ in range(num_steps):
    state, metrics = step(state, batch, rng)
  common.block((state, metrics))
  return (time.perf_counter() - t0) / num_steps, common.xla_flops(step)


def time_loop(config, arrays, num_steps, pipeline, k):
  """Seconds per step of `train.train_loop` itself (compile and evaluation excluded)."""
  c = common.apply(config.copy_and_resolve_references(), [
      f"training.num_steps={num_steps}", f"training.log_every={num_steps}",
      "training.eval_every=0", f"data.pipeline={pipeline}",
      f"training.steps_per_dispatch={k}"])
  s = train.setup(c, arrays=arrays)
  _, info = train.train_loop(s, log=lambda _: None)  # train_seconds: compile excluded
  return info["train_seconds"] / num_steps, s


def loop_efficiency(config, args):
  """The training loop's rate next to its compiled step's, per input pipeline."""
  shape = data_lib.image_shape(config.data, config.data.dataset)
  arrays = synthetic_arrays(shape, args.loop_examples)
  out = {"num_steps": args.loop_steps, "data": f"{args.loop_examples} random uint8 images "
         f"of shape {list(shape)} (the cost of real data)", "runs": {}}
  base = None
  k_many = args.steps_per_dispatch
  num_steps = -(-args.loop_steps // k_many) * k_many  # whole dispatches: one compile each
  out["num_steps"] = num_steps
  for pipeline, k in (("host", 1), ("device", 1), ("device", k_many)):
    name = f"{pipeline}_k{k}"
    if name in out["runs"]:
      continue
    loop_s, s = time_loop(config, arrays, num_steps, pipeline, k)
    if base is None:
      base = time_step_alone(s, num_steps)
      out["step_alone_seconds"], out["step_flops"] = base
      out["step_alone_flops_per_sec"] = (base[1] / base[0]) if base[1] else None
    out["runs"][name] = {"pipeline": pipeline, "steps_per_dispatch": k,
                         "loop_seconds_per_step": loop_s,
                         "loop_steps_per_sec": 1.0 / loop_s,
                         "efficiency": base[0] / loop_s}
    print(f"loop {name}: {1e3 * loop_s:.3f} ms/step, step alone {1e3 * base[0]:.3f} ms: "
          f"efficiency {base[0] / loop_s:.2f}", flush=True)
  return out


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
  out = {"setting": setting(config, shape, args), "params": {}, "flops_per_step": {},
         "machine": common.machine(), "compute_dtype": config.model.compute_dtype,
         "matmul_precision": config.model.matmul_precision}
  thunks = {}
  for name, (model, loss_fn) in step_setups(config, shape).items():
    thunks[name], out["params"][name], out["flops_per_step"][name] = compiled_thunk(
        model, loss_fn, optimizer, x, rng)
    print(f"compiled {name}", flush=True)
  common.write_results(args.out, out, args)
  med, raw = common.time_interleaved(thunks, repeats=args.repeats, inner=args.inner)
  out.update(csm_over_forward_backward=med["csm"] / med["forward_backward"],
             csm_over_mle=med["csm"] / med["mle"], median_step_seconds=med,
             raw_step_seconds=raw,
             flops_per_sec={k: (out["flops_per_step"][k] / med[k]
                                if out["flops_per_step"][k] else None) for k in med})
  common.write_results(args.out, out, args)
  print({k: round(v, 3) for k, v in out.items() if k.startswith("csm_")}, med, flush=True)
  if args.loop_steps:
    out["loop"] = loop_efficiency(config, args)
    common.write_results(args.out, out, args)
  return out


def main(argv=None):
  args, ov = parse_args(argv)
  return run(args, common.apply(config_base.load_config(CONFIG), ov["config"]))


if __name__ == "__main__":
  main(sys.argv[1:])
