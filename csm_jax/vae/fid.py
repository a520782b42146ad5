"""FID of a VAE's decoder samples against test images, when Inception weights are given.

`--mode=eval` calls `load_inception(config)` before its slow AIS (so a bad weights file
fails at once) and `decoder_fid` after it. The samples are decoder means E[x | z],
z ~ N(0, I) (what `--mode=sample` shows), as many as reference images; the reference is
the first eval.fid_num_examples test images (-1: all). Both go to the network as
[0, 1] images (see csm_jax/inception_fid.py).
"""

import time
from typing import Callable, Optional

from absl import logging
import jax
import numpy as np

from csm_jax import inception
from csm_jax import inception_fid
from csm_jax import inception_weights
from csm_jax.vae import data as vae_data

SKIPPED = ("FID skipped: eval.inception_weights is empty (Inception weights cannot be "
           "downloaded here; pass --config.eval.inception_weights=FILE, format in "
           "csm_jax/inception_weights.py)")


def load_inception(config) -> Optional[dict]:
  """Flax variables from config.eval.inception_weights, or None when it is empty.
  Raises inception_weights.WeightsError for a missing or mismatched file."""
  path = config.eval.inception_weights
  return inception_weights.load_variables(path) if path else None


def decoder_samples(s, params, num: int, batch_size: int, key) -> np.ndarray:
  """num decoder means (num, H, W, C) in [0, 1], drawn in batches of batch_size under jit
  (batch i from fold_in(key, i))."""
  @jax.jit
  def draw(params, k):
    z = jax.random.normal(k, (batch_size, s.vae.z_dim))
    return vae_data.to_display(s.vae.mean_image(params, z), s.vae.likelihood)

  out = [np.asarray(draw(params, jax.random.fold_in(key, i)))
         for i in range(-(-num // batch_size))]
  x = np.concatenate(out, 0)[:num].reshape((num,) + tuple(s.data.shape))
  return np.clip(x, 0.0, 1.0)


def decoder_fid(s, params, variables, log: Callable[[str], None] = logging.info) -> dict:
  """{'fid', 'fid_settings'}: FID of decoder samples against test images under the
  Inception `variables` (settings from s.config.eval)."""
  e = s.config.eval
  test = s.data.test
  n = len(test) if e.fid_num_examples == -1 else min(e.fid_num_examples, len(test))
  t0 = time.perf_counter()
  reference = np.asarray(test[:n]).reshape((n,) + tuple(s.data.shape))
  samples = decoder_samples(s, params, n, e.fid_batch_size,
                            jax.random.PRNGKey(s.config.seed + 30_000))
  size = inception.INPUT_SIZE
  fid = inception_fid.inception_fid(variables, samples, reference, e.fid_batch_size, size)
  seconds = time.perf_counter() - t0
  log(f"eval: FID {fid:.3f} ({n} decoder samples vs {n} test images, {seconds:.0f} s)")
  return {"fid": fid,
          "fid_settings": {"weights": e.inception_weights, "num_samples": n,
                           "num_reference": n, "input_size": size,
                           "batch_size": e.fid_batch_size, "seconds": seconds}}
