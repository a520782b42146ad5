"""PixelCNN++ on MNIST (paper Sec. 5.3, Fig. 4): AR-CSM by CSM, or the MLE baseline.

  --config=configs/mnist_pixelcnnpp.py        AR-CSM: PixelCNN++ context + score head,
                                              CSM with per-dimension noise annealing on
                                              dequantized pixels scaled to [-1, 1].
  --config=configs/mnist_pixelcnnpp.py:mle    the same backbone with PixelCNN++'s
                                              discretized logistic mixture, trained by
                                              MLE on the 256 pixel bins (bits/dim).

Paper-size defaults (nr_filters 160, nr_resnet 5, dropout 0.5; 3 scales 28 -> 14 -> 7,
since H and W must be divisible by 2**(num_resolutions - 1)) are for accelerators.
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

from csm_jax.config_base import pixelcnnpp_config

VARIANTS = ("csm", "mle")


def get_config(variant: str = "csm"):
  c = pixelcnnpp_config("mnist", variant)
  return c
