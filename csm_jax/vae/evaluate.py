"""A trained VAE's test NLL by AIS (paper Table 2), its FID when Inception weights are
given (paper Table 2's CelebA column, csm_jax/vae/fid.py) and its samples; restore from
a workdir.

`evaluate_workdir` / `sample_workdir` are what ``python -m csm_jax.main --mode=eval|sample``
run for a VAE config. Test images are the first eval.ais_num_examples of the test split,
example i binarized with a key fixed by (seed, i), so every method is scored on the
same binary images.
"""

import os
import time
from typing import Callable

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from csm_jax import ais as ais_lib
from csm_jax import atomic
from csm_jax import checkpoints
from csm_jax import plotting
from csm_jax import workdir as workdir_lib
from csm_jax.vae import data as vae_data
from csm_jax.vae import fid as fid_lib
from csm_jax.vae import train as vae_train


def test_inputs(s: vae_train.VAESetup, num_examples: int) -> jax.Array:
  """The first num_examples (-1: all) test images as model inputs, example i prepared
  with the key fold_in(PRNGKey(seed + 3), i)."""
  images = s.data.test if num_examples == -1 else s.data.test[:num_examples]
  base = jax.random.PRNGKey(s.config.seed + 3)
  keys = jax.vmap(lambda i: jax.random.fold_in(base, i))(jnp.arange(len(images)))
  prep = jax.vmap(lambda im, k: vae_data.prepare(im[None], k, s.vae.likelihood)[0])
  return prep(jnp.asarray(images), keys)


def ais_nll(s: vae_train.VAESetup, params, x, log: Callable[[str], None] = logging.info,
            **overrides) -> dict:
  """-log p(x) by AIS (csm_jax.ais, settings from config.eval, `overrides` replacing
  them: num_steps, num_chains, num_leapfrog, step_size, batch_size) for inputs x (N, D),
  in batches; per-example values in 'per_example'."""
  e = s.config.eval
  kw = dict(num_steps=e.ais_steps, num_chains=e.ais_chains, num_leapfrog=e.ais_leapfrog,
            step_size=e.ais_step_size, batch_size=e.ais_batch_size)
  kw.update(overrides)
  bs = kw.pop("batch_size")

  @jax.jit
  def run(params, xb, key):
    loglik = lambda xx, z: s.vae.log_likelihood(params, xx, z)
    r = ais_lib.ais(loglik, xb, s.vae.z_dim, key, **kw)
    return r.log_px, ais_lib.log_mean_exp_stderr(r.log_weights), r.accept_rate

  n = x.shape[0]
  bs = min(bs, n)
  log_px, chain_se, acc = [], [], []
  t0 = time.perf_counter()
  for i in range(0, n, bs):
    xb = x[i:i + bs]
    pad = bs - xb.shape[0]
    if pad:  # keep one compiled shape
      xb = jnp.concatenate([xb, jnp.repeat(xb[-1:], pad, axis=0)])
    key = jax.random.fold_in(jax.random.PRNGKey(s.config.seed + 4), i // bs)
    lp, se, ac = jax.device_get(run(params, xb, key))
    keep = bs - pad
    log_px.append(lp[:keep])
    chain_se.append(se[:keep])
    acc.append(ac[:keep])
    done = min(i + bs, n)
    log(f"AIS {done}/{n} examples: NLL so far {-np.mean(np.concatenate(log_px)):.3f} "
        f"({time.perf_counter() - t0:.0f} s)")
  log_px, chain_se, acc = map(np.concatenate, (log_px, chain_se, acc))
  return {"nll": float(-log_px.mean()),
          "nll_stderr_over_examples": float(log_px.std(ddof=1) / np.sqrt(n)) if n > 1 else 0.0,
          "mean_chain_stderr": float(chain_se.mean()), "accept_rate": float(acc.mean()),
          "num_examples": int(n), "seconds": time.perf_counter() - t0,
          "settings": dict(kw, batch_size=bs), "per_example": (-log_px).tolist()}


def sample_images(s: vae_train.VAESetup, params, num: int, rng) -> np.ndarray:
  """num decoder means E[x | z], z ~ N(0, I), as (num, H, W, C) images in [0, 1]."""
  z = jax.random.normal(rng, (num, s.vae.z_dim))
  x = vae_data.to_display(s.vae.mean_image(params, z), s.vae.likelihood)
  return np.clip(np.asarray(x).reshape((num,) + tuple(s.data.shape)), 0.0, 1.0)


def restore(s: vae_train.VAESetup, workdir: str):
  """(params, score_params, step) of the latest checkpoint in workdir (read-only)."""
  workdir_lib.require_checkpoints(workdir)
  like = vae_train.abstract_state(s)
  target = {"params": like.params, "score_params": like.score_params, "step": like.step}
  if not jax.tree.leaves(target["score_params"]):
    del target["score_params"]
  _, r = checkpoints.restore_partial(os.path.join(workdir, "checkpoints"), target,
                                    s.config.training.keep_checkpoints,
                                    checkpoints.model_fields(s.config))
  return r["params"], r.get("score_params", {}), int(r["step"])


def evaluate_workdir(config, workdir: str, log: Callable[[str], None] = logging.info) -> dict:
  """Validation metrics, the AIS test NLL and, given eval.inception_weights, the FID of
  decoder samples (csm_jax/vae/fid.py) of the latest checkpoint; written to
  workdir/eval_<step>.json (without weights: 'fid' null and 'fid_skipped' says why)."""
  workdir_lib.require_checkpoints(workdir)
  workdir_lib.check_writable(workdir)
  inception_vars = fid_lib.load_inception(config)   # before AIS: a bad file fails now
  s = vae_train.setup(config)
  params, score_params, step = restore(s, workdir)
  result = {"step": step}
  result.update(vae_train.make_eval_fn(s)(params, score_params))
  x = test_inputs(s, config.eval.ais_num_examples)
  result["ais"] = ais_nll(s, params, x, log)
  if inception_vars is None:
    log(fid_lib.SKIPPED)
    result.update(fid=None, fid_skipped=fid_lib.SKIPPED)
  else:
    result.update(fid_lib.decoder_fid(s, params, inception_vars, log))
  path = os.path.join(workdir, f"eval_{step:08d}.json")
  atomic.write_json(path, result)
  log(f"eval: test NLL {result['ais']['nll']:.3f} nats on {result['ais']['num_examples']} "
      f"examples (AIS) -> {path}")
  return result


def sample_workdir(config, workdir: str, log: Callable[[str], None] = logging.info) -> str:
  """sampling.num_samples decoder means of z ~ N(0, I) from the latest checkpoint:
  workdir/samples/samples_<step>.npy and .png; returns the base path."""
  workdir_lib.require_checkpoints(workdir)
  workdir_lib.check_writable(os.path.join(workdir, "samples"))
  s = vae_train.setup(config)
  params, _, step = restore(s, workdir)
  imgs = sample_images(s, params, config.sampling.num_samples,
                       jax.random.PRNGKey(config.seed + 20_000))
  os.makedirs(os.path.join(workdir, "samples"), exist_ok=True)
  base = os.path.join(workdir, "samples", f"samples_{step:08d}")
  atomic.save_npy(base + ".npy", imgs)
  plotting.save_samples(base + ".png", imgs, s.data.shape, f"step {step}")
  log(f"wrote {base}.png")
  return base
