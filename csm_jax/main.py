"""Command-line entry point.

  python -m csm_jax.main --config=configs/mnist_made.py --workdir=/tmp/w [--mode=train|eval|sample]
  overrides: --config.training.num_steps=300 --config.training.batch_size=64 ...
"""

import json
import logging as logging_std
import os

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Path to a config file (configs/*.py).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and samples.")
flags.DEFINE_enum("mode", "train", ["train", "eval", "sample"], "What to do.")
flags.DEFINE_bool("multihost", False, "Call jax.distributed.initialize() (TPU pods, multi-node GPU).")
flags.mark_flags_as_required(["config", "workdir"])


def _sample(config, workdir):
  import jax
  import numpy as np
  from csm_jax import chunked, noise, plotting, sampling, sharding, train
  env, state = train.restore_for_inference(config, workdir)
  from csm_jax.models import discretized
  s = config.sampling
  n = s.num_samples
  sharding.check_batch_size(n, env["mesh"], "sampling.num_samples")
  chunk = s.get("chunk_dims")
  chunk = chunked.auto_chunk_dims(env["model"].dim) if chunk is None else chunk
  if discretized.is_discrete(env["model"]):  # exact ancestral sampling of the mixture
    sampler = discretized.make_ancestral_sampler(env["model"], n, chunk_dims=chunk,
                                                 log=logging.info)
  else:
    sigmas = s.sigmas or noise.sigmas_from_config(config.noise)
    if sigmas is None:
      raise ValueError("set sampling.sigmas (e.g. (1.0,)) for a model trained without noise")
    sampler = sampling.make_sampler(env["model"], sigmas, n, s.n_steps, s.step_lr, s.denoise,
                                    out_sharding=sharding.batch_sharding(env["mesh"]),
                                    chunk_dims=chunk, log=logging.info)
  x = np.asarray(sampler(state.ema_params, jax.random.PRNGKey(config.seed + 20_000)))
  step = int(state.step)
  os.makedirs(os.path.join(workdir, "samples"), exist_ok=True)
  base = os.path.join(workdir, "samples", f"samples_{step:08d}")
  np.save(base + ".npy", x)
  pixels = env["pre"].inverse(x) if env["arrays"].discrete else x
  if env["arrays"].discrete and config.data.get("scale", "unit") == "symmetric":
    pixels = (pixels + 1.0) / 2.0
  plotting.save_samples(base + ".png", pixels, env["arrays"].shape, f"step {step}")
  logging.info("wrote %s.png", base)


def _test_nll(config, env, state):
  """Test NLL: exact for normalized heads, by quadrature of the scores for AR-CSM."""
  import numpy as np
  from csm_jax import datasets, likelihood
  lk = likelihood.get_config(config)
  n = lk.get("num_examples", 500)
  test = env["arrays"].test
  if n == 0:
    return None
  test = test if n < 0 else test[:n]
  y = env["pre"](test, datasets.dequant_rng(config.seed + 2, 0))
  model = env["model"]
  kw = dict(preprocessor=env["pre"], batch_size=lk.batch_size, log=logging.info)
  if model.normalized:
    return likelihood.evaluate_nll(model, state.ema_params, y, method="exact", **kw)
  sigma = lk.sigma if lk.sigma is not None else likelihood.noise_level(config)
  grid = likelihood.make_grid(lk, data=np.asarray(y))
  return likelihood.evaluate_nll(model, state.ema_params, y, method="quadrature", grid=grid,
                                 sigma=sigma, batch_chunk=lk.batch_chunk,
                                 node_chunk=lk.node_chunk, **kw)


def _eval(config, workdir):
  from csm_jax import train
  env, state = train.restore_for_inference(config, workdir)
  bs = config.eval.batch_size
  nb = max(1, len(env["arrays"].test) // bs)
  result = train.make_eval_fn(config, env)(state.ema_params, num_batches=nb)
  result["step"] = int(state.step)
  result["likelihood"] = _test_nll(config, env, state)
  path = os.path.join(workdir, f"eval_{int(state.step):08d}.json")
  with open(path, "w") as f:
    json.dump(result, f, indent=2)
  logging.info("eval %s -> %s", json.dumps(result), path)


class _QuietLibraries(logging_std.Filter):
  """Drops INFO chatter from orbax (and other libraries) from our progress log."""

  def filter(self, record):
    return record.levelno >= logging_std.WARNING or "orbax" not in record.pathname


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.get_absl_handler().addFilter(_QuietLibraries())
  import jax
  if FLAGS.multihost:
    jax.distributed.initialize()
  config = FLAGS.config
  logging.info("JAX %s, backend %s, %d devices (%d local), process %d/%d", jax.__version__,
               jax.default_backend(), jax.device_count(), jax.local_device_count(),
               jax.process_index(), jax.process_count())
  if FLAGS.mode == "train":
    from csm_jax import train
    train.train_and_evaluate(config, FLAGS.workdir)
  elif FLAGS.mode == "eval":
    _eval(config, FLAGS.workdir)
  else:
    _sample(config, FLAGS.workdir)


if __name__ == "__main__":
  app.run(main)
