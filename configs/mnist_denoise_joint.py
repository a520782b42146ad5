"""MNIST AR-CSM of the smoothed joint (docs/smoothed_joint.md): configs/mnist_denoise.py
with noise.mode='joint'.

Training perturbs the whole image with one sigma per example (log-uniform between 1.0
and 0.01, noise.levels='continuous': also the levels between the schedule's 10, where a
restoration's noise level may fall), the MADE context sees the noisy image and the level
(a learned log-sigma embedding, model.context_sigma_embedding), so q_sigma approximates
p * N(0, sigma^2 I) at every level: a prior that anneals (posterior sampling of a
restoration) and a Tweedie denoiser at any level in the range. CSM (paper Eq. 5)
applies unchanged to that joint. Sampling runs one cached sequential sweep per level
(sampling.method='level_sweeps'); 'sequential' also works (contexts at the smallest level).

  --config=configs/mnist_denoise_joint.py
"""

import importlib.util
import os


def _mnist_denoise():
  """configs/mnist_denoise.py beside this file (configs are loaded by path, not package)."""
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mnist_denoise.py")
  spec = importlib.util.spec_from_file_location("csm_jax_config_mnist_denoise", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def get_config():
  c = _mnist_denoise().get_config("csm")
  c.noise.mode = "joint"
  c.noise.levels = "continuous"
  c.model.context_sigma_embedding = 64
  c.sampling.method = "level_sweeps"
  return c
