"""PixelCNN++ on MNIST (paper Sec. 5.3, Fig. 4): AR-CSM by CSM, or the MLE baseline.

  --config=configs/mnist_pixelcnnpp.py        AR-CSM: PixelCNN++ context + score head,
                                              CSM with per-dimension noise annealing on
                                              dequantized pixels scaled to [-1, 1].
  --config=configs/mnist_pixelcnnpp.py:mle    the same backbone with PixelCNN++'s
                                              discretized logistic mixture, trained by
                                              MLE on the 256 pixel bins (bits/dim).

Paper-size defaults (nr_filters 160, nr_resnet 5, dropout 0.5; 3 scales 28 -> 14 -> 7,
since H and W must be divisible by 2**(num_scales - 1)) are for accelerators.
CPU-size run on the prepared MNIST (tfds, offline):

  TFDS_DATA_DIR=../shared/tfds python -m csm_jax.main \\
    --config=configs/mnist_pixelcnnpp.py --workdir=/tmp/mnist_csm \\
    --config.model.nr_filters=16 --config.model.nr_resnet=1 --config.model.dropout_rate=0 \\
    --config.training.batch_size=8 --config.training.num_steps=300 \\
    --config.training.log_every=25 --config.training.eval_every=100 \\
    --config.training.checkpoint_every=100 --config.optim.warmup_steps=20 \\
    --config.eval.batch_size=50 --config.eval.num_batches=2

The MLE baseline: the same command with --config=configs/mnist_pixelcnnpp.py:mle;
its eval_bpd is the test bits/dim of the 8-bit pixels.
"""

from csm_jax.config_base import default_config

VARIANTS = ("csm", "mle")


def get_config(variant: str = "csm"):
  if variant not in VARIANTS:
    raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
  c = default_config()
  c.data.dataset = "mnist"
  c.data.scale = "symmetric"          # [-1, 1], as PixelCNN++
  c.data.logit_lambda = 0.0
  c.data.dequantize = variant == "csm"  # CSM: a density; MLE: a mass on 256 bins

  m = c.model
  m.backbone = "pixelcnnpp"
  m.nr_filters = 160
  m.nr_resnet = 5
  m.num_scales = 3                    # 28 -> 14 -> 7
  m.dropout_rate = 0.5
  m.context_size = 16
  m.head_hidden = (64, 64)
  m.num_mixtures = 10

  c.training.batch_size = 64
  c.training.num_steps = 300000
  c.training.log_every = 100
  c.training.eval_every = 5000
  c.training.checkpoint_every = 5000
  c.eval.batch_size = 100
  c.eval.num_batches = 10
  c.optim.warmup_steps = 1000
  c.optim.ema_decay = 0.9995
  c.sampling.num_samples = 16

  if variant == "csm":
    m.head = "score"
    c.loss.name = "csm"
    c.noise.enabled = True
    c.noise.sigma_max = 1.0     # ~ the spread of a 1-D conditional on [-1, 1]
    c.noise.sigma_min = 0.01    # ~ 1.3 pixel levels
    c.noise.num_scales = 10
    c.optim.learning_rate = 2e-4
    c.sampling.n_steps = 20     # per noise level and dimension (head only: cheap)
    c.sampling.step_lr = 2e-5   # alpha_L = 0.2 sigma_L^2
    c.sampling.denoise = True
  else:
    m.head = "discretized_logistic"
    c.loss.name = "mle"
    c.noise.enabled = False
    c.optim.learning_rate = 1e-3  # PixelCNN++
  return c
