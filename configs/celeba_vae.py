"""VAEs on CelebA faces (paper Sec. 6, Table 2's CelebA column): convolutional encoder and
decoder of the sliced-score-matching reference (csm_jax/vae/conv.py), Gaussian likelihood
with the reference's fixed log std (-0.602) on pixels in [-1, 1] dequantized by
U(-1/256, 1/256), latent 32, 64 filters, RMSProp (PyTorch defaults) at lr 1e-4, batch 128.

Variants as configs/mnist_vae.py: elbo, csm (default), ssm_ar, ssm (the MLP score net
s(x, z) on flattened pixels; the reference's is convolutional), stein, spectral.

Defaults read CelebA through tfds (celeb_a, centre crop 140, 32x32). Offline, on the
5000-face subset (the npz source holds out its last 10% as the test split; the VAE
then holds out 20% of the rest for validation), CPU-sized:

  python -m csm_jax.main --config=configs/celeba_vae.py:csm --workdir=/tmp/celeba_vae \\
    --config.data.source=npz \\
    --config.data.path=../shared/data/celeba32_subset/celeba32_first5000.npz \\
    --config.vae.num_filters=16 --config.training.num_steps=2000 \\
    --config.training.batch_size=64 \\
    --config.eval.ais_num_examples=50 --config.eval.ais_steps=200 --config.eval.ais_chains=8
  python -m csm_jax.main --config=configs/celeba_vae.py:csm --workdir=/tmp/celeba_vae --mode=sample

--mode=eval reports the validation reconstruction and the AIS estimate of the test NLL,
and the FID of decoder samples against the test images when given Inception weights
(none can be downloaded here; format in csm_jax/inception_weights.py):

  python -m csm_jax.main --config=configs/celeba_vae.py:csm --workdir=/tmp/celeba_vae \
    --mode=eval --config.eval.inception_weights=/path/to/inception_fid.npz
"""

from csm_jax.config_base import vae_default_config

VARIANTS = ("elbo", "csm", "ssm_ar", "ssm", "stein", "spectral")


def get_config(variant="csm"):
  if variant not in VARIANTS:
    raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
  c = vae_default_config()
  c.data.dataset = "celeba"
  c.data.image_size = 32
  c.data.crop = 140
  v = c.vae
  v.architecture = "conv"
  v.likelihood = "gaussian"
  v.decoder_log_std = -0.602
  v.num_filters = 64          # nef = ndf of the reference's celeba_*.yml
  v.z_dim = 32
  v.encoder = "gaussian" if variant == "elbo" else "implicit"
  v.estimator = "csm" if variant == "elbo" else variant
  v.score_hidden = (256, 256)
  v.context_size = 16
  v.head_hidden = (32, 32)
  v.num_particles = 100
  c.optim.learning_rate = 1e-4
  c.training.batch_size = 128
  c.training.num_steps = 100000
  c.eval.batch_size = 100
  c.sampling.num_samples = 64
  return c
