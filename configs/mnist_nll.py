"""MNIST likelihoods (Meng et al. 2020, Sec. 5.2, Fig. 3a): the runs of experiments/mnist_nll.py.

A small MADE on dequantized, logit-transformed MNIST (lambda = 1e-6, as in MAF), CPU
sized (1500 steps). Variants 'gaussian_{mle,csm,dsm,ssm}': Gaussian conditionals (a
normalized AR model) trained by maximum likelihood, composite score matching (Eq. 5,
no noise), denoising score matching (loss.dsm_sigma; the experiment sets it per
--dsm_sigmas entry) or sliced score matching. 'arcsm_csm': the unnormalized AR-CSM
(score head) trained by CSM with per-dimension noise annealing. 'mol_mle': mixture of
logistics conditionals, maximum likelihood.

  python -m csm_jax.main --config=configs/mnist_nll.py:arcsm_csm --workdir=/tmp/w
"""

from csm_jax.config_base import default_config

VARIANTS = ("gaussian_mle", "gaussian_csm", "gaussian_dsm", "gaussian_ssm", "arcsm_csm",
            "mol_mle")


def get_config(variant="gaussian_mle"):
  if variant not in VARIANTS:
    raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
  head, loss = variant.split("_")
  c = default_config()
  c.seed = 0
  c.data.dataset = "mnist"
  c.data.dequantize = True
  c.data.logit_lambda = 1e-6

  c.model.backbone = "made"
  c.model.head = {"gaussian": "gaussian", "arcsm": "score", "mol": "logistic_mixture"}[head]
  c.model.hidden_sizes = (256,)
  c.model.context_size = 4
  c.model.head_hidden = (32, 32)
  c.model.num_mixtures = 10
  c.loss.name = loss
  c.loss.dsm_sigma = 0.1

  c.noise.enabled = head == "arcsm"
  c.noise.sigma_max = 5.0
  c.noise.sigma_min = 0.05
  c.noise.num_levels = 10
  if head == "arcsm":
    # T = 30 steps per level at step_lr = 2 sigma_L^2: within 1.5x of the Monte Carlo
    # floor on known-conditional AR models (python -m experiments.sampler_accuracy:
    # covariance error 0.034 vs 0.022; T = 10, step_lr 2e-3 gave 0.26). 235k head
    # evaluations per sample (D*L*T), 3x the former T = 10.
    c.sampling.num_steps = 30
    c.sampling.step_lr = 2 * c.noise.sigma_min ** 2
    c.sampling.denoise = True
  else:                              # Langevin for csm_jax.main --mode=sample (the
    c.sampling.sigmas = (1.0,)       # experiment samples these exactly on a grid)
    c.sampling.num_steps = 100
    c.sampling.step_lr = 1e-2
    c.sampling.denoise = False

  c.training.num_steps = 1500
  c.training.batch_size = 64
  c.training.log_every = 250         # num_steps // 6
  c.training.eval_every = 150        # test NLL curve of the normalized models
  c.optim.learning_rate = 1e-3
  c.optim.warmup_steps = 100         # min(100, num_steps // 10 + 1)
  c.optim.ema_decay = 0.99
  return c
