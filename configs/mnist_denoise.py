"""MNIST models for denoising (paper Sec. 5.4, Fig. 5): pixels in [0, 1], no logit.

The paper denoises MNIST corrupted by Gaussian noise of sigma = 0.6 "in the rescaled
space": here pixels scaled to [0, 1] (data.scale='unit', dequantized, no logit
transform), since Gaussian noise in [0, 1] is not Gaussian in logit space.

  --config=configs/mnist_denoise.py        AR-CSM (MADE + noise-conditional score head)
                                           by CSM; noise levels 1.0 -> 0.01 (10 levels,
                                           the second is 0.599): the largest is the width
                                           of the data range, the largest distance between
                                           two modes of a pixel's conditional (off/on), so
                                           every level up to sigma = 0.6 is trained.
  --config=configs/mnist_denoise.py:mle    the same MADE with Gaussian conditionals by MLE
                                           on noisy targets x_d + 0.6 eps (clean contexts,
                                           loss.mle_target_sigma): its exact score is the
                                           Tweedie denoiser's score at sigma = 0.6.
"""

from csm_jax.config_base import default_config

VARIANTS = ("csm", "mle")
DENOISE_SIGMA = 0.6


def get_config(variant: str = "csm"):
  if variant not in VARIANTS:
    raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
  c = default_config()
  c.data.dataset = "mnist"
  c.data.scale = "unit"
  c.data.logit_lambda = 0.0
  c.model.backbone = "made"
  c.model.hidden_sizes = (1024, 1024)
  c.model.context_size = 16
  c.training.num_steps = 20000
  c.training.batch_size = 100
  if variant == "csm":
    c.model.head = "score"
    c.loss.name = "csm"
    c.noise.sigma_max = 1.0
    c.noise.sigma_min = 0.01
    c.noise.num_levels = 10
    c.sampling.step_lr = 2 * c.noise.sigma_min ** 2   # c = 2, the default rule (config_base)
  else:
    c.model.head = "gaussian"
    c.loss.name = "mle"
    c.loss.mle_target_sigma = DENOISE_SIGMA
    c.noise.enabled = False
    c.sampling.sigmas = (1.0,)
  return c
