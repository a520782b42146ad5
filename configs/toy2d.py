"""2-D density estimation (Meng et al. 2020, Sec. 5.2, Fig. 3b): the two models compared.

Variant 'arcsm': a MADE context network with a noise-conditional score head (learned
log-sigma embedding, FiLM), trained by composite score matching (Eq. 5) with
per-dimension noise annealing. Variant 'mol': a MADE whose conditionals are mixtures
of 20 logistics, trained by maximum likelihood; experiments/toy2d.py widens it until it
has more parameters than the AR-CSM (unless model.hidden_sizes is set for it).

  python -m csm_jax.main --config=configs/toy2d.py:arcsm --workdir=/tmp/w \\
      --config.data.name=moons
"""

from csm_jax.config_base import default_config

VARIANTS = ("arcsm", "mol")


def get_config(variant="arcsm"):
  if variant not in VARIANTS:
    raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
  c = default_config()
  c.seed = 0
  c.data.dataset = "toy2d"
  c.data.name = "ring8"
  c.data.seed = 0
  c.data.num_train = 50000
  c.data.num_test = 5000

  c.model.backbone = "made"
  c.model.hidden_sizes = (128, 128)
  c.model.context_size = 16

  c.training.num_steps = 8000
  c.training.batch_size = 256
  c.training.log_every = 2000        # num_steps // 4
  c.optim.learning_rate = 1e-3
  c.optim.warmup_steps = 100         # min(100, num_steps // 10 + 1)
  c.optim.ema_decay = 0.995

  if variant == "arcsm":
    c.model.head = "score"
    c.model.head_hidden = (64, 64)
    c.model.head_sigma_embedding = 64
    c.model.head_sigma_film = True
    c.loss.name = "csm"
    c.noise.enabled = True
    c.noise.sigma_max = 3.0
    c.noise.sigma_min = 0.05
    c.noise.num_levels = 10
    # T = 30 steps per level at step_lr = 2 sigma_L^2: within 1.5x of the Monte Carlo
    # floor on known-conditional AR models (python -m experiments.sampler_accuracy:
    # covariance error 0.034 vs 0.022; T = 20 at step_lr 2e-3, c = 0.8, is under-mixed)
    c.sampling.num_steps = 30
    c.sampling.step_lr = 2 * c.noise.sigma_min ** 2
    c.sampling.denoise = True
    c.sampling.chunk_dims = 0        # 2 dimensions: one compiled call
  else:
    c.model.head = "logistic_mixture"
    c.model.num_mixtures = 20
    c.loss.name = "mle"
    c.noise.enabled = False
    c.sampling.sigmas = (1.0,)       # Langevin for csm_jax.main --mode=sample (the
    c.sampling.num_steps = 100       # experiment samples it exactly on a grid)
    c.sampling.step_lr = 1e-2
    c.sampling.denoise = False
  return c
