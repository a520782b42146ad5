"""VAEs on dynamically binarized MNIST (paper Sec. 6, Table 2): the runs of
experiments/vae_table.py.

The protocol of the sliced-score-matching reference (configs/vae/mnist_*.yml there): MLP
encoder and decoder of two tanh layers of 256, Bernoulli decoder, prior N(0, I), 80/20
train/validation split of the MNIST training set, batch 128, RMSProp (PyTorch defaults)
at lr 1e-3, 100k iterations. Variants:

  elbo      explicit Gaussian encoder, analytic KL (the ELBO baseline)
  csm       implicit encoder [x, eps] -> z; entropy gradient from a conditional AR-CSM
            over z given x trained by CSM (paper Eq. 5): the paper's method
  ssm_ar    the same conditional AR-CSM trained by sliced score matching
  ssm       an MLP score net s(x, z) trained by sliced score matching (Song et al. 2019)
  stein     Stein gradient estimator on 100 encoder samples per x (eta = 0.001)
  spectral  Spectral estimator on 100 encoder samples per x (99% of the spectrum)

Latent size: --config.vae.z_dim=8 | 16 (default) | 32.

  python -m csm_jax.main --config=configs/mnist_vae.py:csm --workdir=/tmp/vae_csm
  python -m csm_jax.main --config=configs/mnist_vae.py:csm --workdir=/tmp/vae_csm --mode=eval
"""

from csm_jax.config_base import vae_default_config

VARIANTS = ("elbo", "csm", "ssm_ar", "ssm", "stein", "spectral")


def get_config(variant="csm"):
  if variant not in VARIANTS:
    raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
  c = vae_default_config()
  c.data.dataset = "mnist"
  v = c.vae
  v.architecture = "mlp"
  v.likelihood = "bernoulli"
  v.hidden_sizes = (256, 256)
  v.z_dim = 16
  if variant == "elbo":
    v.encoder = "gaussian"
    v.estimator = "csm"         # unused: the Gaussian encoder's entropy is analytic
  else:
    v.encoder = "implicit"
    v.estimator = variant
  v.score_hidden = (256, 256)
  v.context_size = 16
  v.head_hidden = (32, 32)
  v.num_particles = 100
  c.optim.learning_rate = 1e-3
  c.training.batch_size = 128
  c.training.num_steps = 100000
  return c
