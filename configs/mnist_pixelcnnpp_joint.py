"""MNIST PixelCNN++ AR-CSM of the smoothed joint (docs/smoothed_joint.md): a convolutional
prior that anneals, the counterpart of configs/mnist_denoise_joint.py's MADE.

configs/mnist_pixelcnnpp.py's AR-CSM with noise.mode='joint': training perturbs the whole
image with one sigma per example (log-uniform between 1.0 and 0.01,
noise.levels='continuous'), the PixelCNN++ context sees the noisy image and the level
(a learned log-sigma embedding shifting every gated block, model.context_sigma_embedding),
so q_sigma approximates p * N(0, sigma^2 I) at every level: a Tweedie denoiser at any
level in the range and a prior for csm_jax.restore. Pixels in [0, 1] (data.scale='unit',
dequantized), as the MADE priors of configs/mnist_denoise*.py, so a restoration's noise
levels mean the same for both. Paper-size network; the CPU size of experiments.restore
(--priors pcnn_joint): 32 filters, 1 ResNet per block, no dropout, batch 16.

  --config=configs/mnist_pixelcnnpp_joint.py
"""

from csm_jax.config_base import pixelcnnpp_config


def get_config():
  c = pixelcnnpp_config("mnist", "csm")
  c.data.scale = "unit"
  c.noise.mode = "joint"
  c.noise.levels = "continuous"
  c.noise.sigma_max = 1.0
  c.noise.sigma_min = 0.01
  c.model.context_sigma_embedding = 64
  c.sampling.method = "level_sweeps"
  return c
