"""The one source of config truth: every field the code reads, with its default.

Files in configs/ start from `default_config()` and override fields (score_sde style);
the config is locked, so a misspelled field (in a file, an experiment or a
``--config.x=`` override) fails loudly instead of being ignored. `load_config` reads a
config file the way ``--config=path[:variant]`` does, for experiments and notebooks.
"""

import importlib.util
import json
import os
from typing import Optional, Sequence

import ml_collections

REPO_CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                            "configs")


# losses.PROJECTIONS, repeated here so that configs load without JAX (a test keeps them equal).
_SSM_PROJECTIONS = ("gaussian", "rademacher", "sphere", "gaussian_unit")


class ConfigError(ValueError):
  """A config value that cannot work (the message names the field)."""


# "section.field" -> its declared range, written beside the defaults by `_declare` and
# checked by `check_ranges` before anything is built. A range is one or more
# alternatives joined by " or ": "int" (any integer), "int >= 1", "> 0", ">= 0",
# "[0, 1)", "(0, 0.5)" (intervals, ends open or closed), "each ..." (every element of a
# tuple), "None (meaning)", a number with its meaning ("-1 (the whole test split)"), or
# "any number".
RANGES = {}


def _declare(section: str, **ranges):
  for name, spec in ranges.items():
    RANGES[f"{section}.{name}" if section else name] = spec


def _number(value) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def _satisfies(value, alternative: str) -> bool:
  import math  # pylint: disable=g-import-not-at-top
  import re  # pylint: disable=g-import-not-at-top
  alt = alternative.strip()
  if alt.startswith("each "):
    return (isinstance(value, (tuple, list)) and len(value) >= 1
            and all(_satisfies(v, alt[len("each "):]) for v in value))
  if alt.startswith("None"):
    return value is None
  if not _number(value) or (isinstance(value, float) and math.isnan(value)):
    return False
  if alt == "any number":
    return math.isfinite(value)
  if alt.startswith("int"):
    if not isinstance(value, int):
      return False
    alt = alt[len("int"):].strip()
    if not alt:
      return True
  m = re.fullmatch(r"(>=|<=|>|<)\s*(-?[\d.e+-]+)", alt)
  if m:
    bound = float(m.group(2))
    return {">=": value >= bound, "<=": value <= bound, ">": value > bound,
            "<": value < bound}[m.group(1)]
  m = re.fullmatch(r"([\[(])\s*(-?[\d.e+-]+)\s*,\s*(-?[\d.e+-]+)\s*([\])])", alt)
  if m:
    lo, hi = float(m.group(2)), float(m.group(3))
    return ((value >= lo if m.group(1) == "[" else value > lo)
            and (value <= hi if m.group(4) == "]" else value < hi))
  m = re.fullmatch(r"(-?[\d.e+-]+)\s*(\(.*\))?", alt)
  if m:
    return value == float(m.group(1))
  raise ValueError(f"unparsable range {alternative!r}")


def check_ranges(config) -> ml_collections.ConfigDict:
  """ConfigError naming the first field (of RANGES, in config) outside its declared range."""
  for field, spec in RANGES.items():
    node = config
    for part in field.split("."):
      if part not in node:
        break
      node = node[part]
    else:
      if not any(_satisfies(node, alt) for alt in spec.split(" or ")):
        raise ConfigError(f"config field {field} must be {spec}, got {node!r}")
  return config


def _ref(field_type):
  """An optional field: None until set, then only values of `field_type`."""
  return ml_collections.FieldReference(None, field_type=field_type)


NOISE_MODES = ("per_dim", "joint")
NOISE_LEVELS = ("discrete", "continuous")
SAMPLING_METHODS = ("sequential", "fixed_point", "level_sweeps")


def default_config() -> ml_collections.ConfigDict:
  """Every config field with its default; the returned config is locked."""
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.data = d = ml_collections.ConfigDict()
  d.dataset = "mnist"  # mnist | cifar10 | celeba | svhn | npz | gaussian | toy2d
  d.source = "auto"    # image sets: 'auto'/'tfds', or 'npz' to read data.path instead
  d.data_dir = _ref(str)   # tfds data dir (None: $TFDS_DATA_DIR, else ~/tensorflow_datasets)
  d.path = ""              # npz file or directory
  d.test_path = ""
  d.cache_dir = _ref(str)  # decoded tfds arrays (None: ~/.cache/csm_jax)
  d.dequantize = True
  d.scale = "unit"         # 'unit': [0, 1]; 'symmetric': [-1, 1]
  d.logit_lambda = 1e-6    # > 0: logit(lambda + (1 - 2 lambda) x) as in MAF
  d.name = "ring8"         # toy2d density
  d.dim = 2                # gaussian: D
  d.seed = 0               # synthetic data (gaussian, toy2d)
  d.num_train = 50000      # synthetic data sizes
  d.num_test = 5000
  d.image_size = 32        # celeba: resized to image_size x image_size
  d.crop = 140             # celeba: centre crop before resizing
  # Training batches: 'device' keeps the raw training array on every device and builds
  # each batch inside the jitted step; 'host' builds it in numpy; 'auto': 'device' when
  # the array takes at most device_max_mb MiB (csm_jax/pipeline.py).
  d.pipeline = "auto"
  d.device_max_mb = 2048.0
  _declare("data", seed="int", dim="int >= 1", num_train="int >= 1", num_test="int >= 1",
           image_size="int >= 1", crop="int >= 1", device_max_mb=">= 0",
           logit_lambda="0 (off) or (0, 0.5)")

  c.model = m = ml_collections.ConfigDict()
  m.backbone = "made"          # made | pixelcnnpp
  m.head = "score"             # score | gaussian | logistic_mixture | discretized_logistic
  m.hidden_sizes = (1024, 1024)
  m.context_size = 16
  m.order = "natural"          # natural | reverse | random
  m.order_seed = 0
  m.head_hidden = (32, 32)
  m.scale_by_sigma = True
  m.head_sigma_embedding = 0   # > 0: width of a learned log-sigma embedding in the score head
  m.head_sigma_film = False    # the embedding scales and shifts each head layer (else shifts)
  # > 0: width of a learned log-sigma embedding in the context network (MADE), which then
  # takes the noise level too: needed by noise.mode='joint'; 0: the context sees no sigma
  m.context_sigma_embedding = 0
  m.num_mixtures = 10
  m.num_bins = 256             # discretized_logistic: pixel levels
  m.nr_filters = 160           # PixelCNN++
  m.nr_resnet = 5
  m.num_resolutions = 3        # PixelCNN++: 32 -> 16 -> 8 for 3
  m.dropout_rate = 0.5
  # Mixed precision: 'bfloat16' runs the backbone's matmuls and convolutions on bfloat16
  # operands (parameters, optimizer state, loss and the head stay float32).
  m.compute_dtype = "float32"
  # Matmul precision of a float32 backbone: 'highest' (true float32 everywhere; no TF32
  # on NVIDIA GPUs, no bf16 passes on TPU), 'high' or 'default' (the backend's choice:
  # TF32 on Ampere and later). The head always runs at 'highest'.
  m.matmul_precision = "highest"
  _declare("model", hidden_sizes="each int >= 1", context_size="int >= 1",
           order_seed="int", head_hidden="each int >= 1", head_sigma_embedding="int >= 0",
           context_sigma_embedding="int >= 0", num_mixtures="int >= 1", num_bins="int >= 2",
           nr_filters="int >= 1", nr_resnet="int >= 1", num_resolutions="int >= 1",
           dropout_rate="[0, 1)")

  c.loss = l = ml_collections.ConfigDict()
  l.name = "csm"               # csm | mle | sm | ssm | dsm
  l.num_projections = 1        # ssm
  l.projection = "gaussian"    # ssm: gaussian | rademacher | sphere | gaussian_unit (E vv^T = I/D)
  l.variance_reduced = True    # ssm
  l.dsm_sigma = 0.1
  l.sm_chunk_size = _ref(int)  # sm: one-hot jvps per chunk (None: all D at once)
  l.mle_target_sigma = 0.0     # mle: fit q(x_d + sigma eps | x_<d) (clean contexts), the
                               # noisy conditional of Tweedie denoising; 0: plain MLE
  _declare("loss", num_projections="int >= 1", dsm_sigma="> 0",
           sm_chunk_size="None (all at once) or int >= 1", mle_target_sigma=">= 0")

  c.noise = n = ml_collections.ConfigDict()
  n.enabled = True
  n.sigma_max = 5.0
  n.sigma_min = 0.05
  n.num_levels = 10            # L, geometric from sigma_max to sigma_min
  # 'per_dim': each (example, dimension) its own sigma, only the target x_d perturbed,
  # contexts from the clean x (q_sigma(x~_d | x_<d)); 'joint': one sigma per example, the
  # whole x perturbed, contexts from the noisy x and given sigma
  # (model.context_sigma_embedding > 0): the model learns the smoothed joint
  # p * N(0, sigma^2 I) at every level (docs/smoothed_joint.md)
  n.mode = "per_dim"
  # where a training level comes from: 'discrete' (the L schedule levels, uniformly) or
  # 'continuous' (log sigma uniform on [sigma_min, sigma_max]: also the levels between
  # the schedule's, e.g. a restoration's noise level); samplers anneal over the schedule
  n.levels = "discrete"
  _declare("noise", sigma_max="> 0", sigma_min="> 0", num_levels="int >= 1")

  c.optim = o = ml_collections.ConfigDict()
  o.learning_rate = 1e-3
  o.warmup_steps = 100
  o.grad_clip = 1.0
  o.b1 = 0.9
  o.b2 = 0.999
  o.weight_decay = 0.0
  o.ema_decay = 0.999
  _declare("optim", learning_rate="> 0", warmup_steps="int >= 0", grad_clip=">= 0",
           b1="[0, 1)", b2="[0, 1)", weight_decay=">= 0", ema_decay="[0, 1)")

  c.training = t = ml_collections.ConfigDict()
  t.num_steps = 20000
  t.batch_size = 100
  t.log_every = 50
  t.eval_every = 1000
  # Image data: a grid of this many samples at each evaluation after step 0 (cached
  # sampler, config.sampling), written to WORKDIR/samples/train_<step>.png and, with
  # TensorBoard logging, as an image summary. 0: off (the default; image configs set 16).
  t.eval_samples = 0
  t.checkpoint_every = 1000
  t.checkpoint_every_secs = 600.0  # also save when this much time passed (0: off)
  t.keep_checkpoints = 3
  t.steps_per_dispatch = 1  # k > 1: k train steps per jitted call (lax.scan)
  _declare("training", num_steps="int >= 1", batch_size="int >= 1", log_every="int >= 1",
           eval_every="int >= 0", checkpoint_every="int >= 1", checkpoint_every_secs=">= 0",
           keep_checkpoints="int >= 1", steps_per_dispatch="int >= 1", eval_samples="int >= 0")

  c.eval = e = ml_collections.ConfigDict()
  e.batch_size = 500
  e.num_batches = 4  # periodic eval; --mode=eval uses the whole test split
  _declare("eval", batch_size="int >= 1", num_batches="int >= 1")

  # Test NLL in --mode=eval: exact for normalized heads, 1-D quadrature for AR-CSM heads
  # (grid interior, outer nodes and analytic tails beyond it: nothing truncated).
  c.likelihood = lk = ml_collections.ConfigDict()
  lk.num_examples = 500        # test examples (0: skip; -1: the whole test split)
  lk.num_points = 2049         # K, odd (the coarse grid of the error estimate has (K+1)/2)
  lk.grid_min = _ref(float)    # None: the training data range widened by `margin`
  lk.grid_max = _ref(float)
  lk.margin = 0.1              # fraction of the data range added on each side
  lk.grid_num_train = 10000    # training examples whose range sets unset ends (never test)
  lk.outer_points = 128        # M, even: nodes per side past the grid, cells growing from h
  lk.outer_reach = 8.0         # ... out to this many grid widths (then analytic tails)
  lk.batch_size = 64
  lk.batch_chunk = _ref(int)   # examples per inner quadrature step (None: auto)
  lk.node_chunk = _ref(int)    # grid nodes per vmapped head call (None: auto)
  lk.sigma = _ref(float)       # noise level of the head (None: the smallest sigma)
  _declare("likelihood", num_examples="-1 (the whole test split) or int >= 0",
           num_points="int >= 5", grid_min="None (from the data) or any number",
           grid_max="None (from the data) or any number", margin=">= 0",
           grid_num_train="int >= 1", outer_points="int >= 0", outer_reach="> 0",
           batch_size="int >= 1", batch_chunk="None (auto) or int >= 1",
           node_chunk="None (auto) or int >= 1", sigma="None (the smallest sigma) or > 0")

  c.sampling = s = ml_collections.ConfigDict()
  s.num_samples = 16
  # Langevin steps per noise level and dimension, and step_lr = alpha_L: alpha_i =
  # step_lr * sigma_i^2 / sigma_L^2. On AR models with known conditionals (python -m
  # experiments.sampler_accuracy, README "Sampler accuracy") c = step_lr / sigma_L^2 = 2
  # with T = 30 is the cheapest unadjusted setting within 1.5x of the Monte Carlo floor
  # (covariance error 0.034, floor 0.022; T = 10 at c = 0.8, the former default: 0.26).
  # 5e-3 is c = 2 for the default sigma_L = 0.05: keep step_lr = 2 sigma_L^2 if you
  # change noise.sigma_min. Cost: D * L * T head evaluations per sample.
  s.num_steps = 30
  s.step_lr = 5e-3
  s.denoise = True
  s.sigmas = _ref(tuple)       # None: the noise schedule
  # dimensions per compiled call, progress and ETA logged after each (None: ~20 reports;
  # 0: the whole sampler in one call)
  s.chunk_dims = _ref(int)
  # 'sequential': dimension after dimension (D stages); 'fixed_point': the same sample by
  # Jacobi sweeps, every dimension at once per sweep, until the largest change of a
  # coordinate between sweeps is <= fixed_point_tol (0: exactly) or max_sweeps (None: D).
  # 'level_sweeps' (smoothed-joint models, noise.mode='joint'): one sequential sweep per
  # noise level, sigma_1 .. sigma_L, each from the last one's sample, the context and the
  # head at that level, num_steps Langevin steps per dimension (L*D context passes).
  # 'sequential' on such a model evaluates the context at sigma_L throughout.
  s.method = "sequential"
  s.max_sweeps = _ref(int)
  s.fixed_point_tol = 1e-4
  # Metropolis-adjusted Langevin (MALA): each step accepted or rejected so that every
  # level's chain leaves its 1-D conditional exactly invariant; the energy difference is
  # integrated from the head's scores with mh_nodes Gauss-Lobatto nodes (both ends
  # included; cost mh_nodes - 1 head evaluations per step instead of 1).
  s.mh_correction = False
  s.mh_nodes = 3
  _declare("sampling", num_samples="int >= 1", num_steps="int >= 1", step_lr="> 0",
           sigmas="None (the noise schedule) or each > 0",
           chunk_dims="None (about 20 reports) or int >= 0",
           max_sweeps="None (D) or int >= 1", fixed_point_tol=">= 0", mh_nodes="int >= 2")
  _declare("", seed="int")

  # Restoration with the model as a prior (csm_jax/restore, docs/restoration.md): the
  # observation (task and its settings, in pixel units u = pixel / 255) and the sampler.
  c.restore = r = ml_collections.ConfigDict()
  r.task = "gaussian"          # gaussian | salt_pepper | inpaint | superres
  r.sigma = 0.3                # gaussian: noise std, > 0
  r.p = 0.1                    # salt_pepper: rate in [0, 1]
  r.sp_tau = _ref(float)       # salt_pepper: kept-pixel window, > 0 (None: one bin)
  r.mask = "random50"          # inpaint: random50 | random80 | centre | bottom
  r.mask_seed = 0
  r.sr_factor = 2              # superres: average-pool factor >= 1
  r.sr_sigma = 0.02            # superres: noise std of the low-resolution image, > 0
  r.method = "annealed"        # annealed | filter (+ MALA / Gibbs finish) | mala | gibbs
                               # | tweedie (gaussian task, smoothed-joint model: the
                               # posterior mean in one gradient of the joint)
                               # | project (inpaint, superres, salt_pepper; smoothed-
                               # joint model: denoise-and-project from a classical start)
  r.sigmas = _ref(tuple)       # annealing levels (None: the noise schedule)
  r.num_levels = _ref(int)     # >= 1: only the last num_levels of them
  r.steps_per_level = 10       # >= 1
  r.step_lr = _ref(float)      # > 0: Langevin step alpha_L at the last level, alpha_i =
                               # step_lr sigma_i^2 / sigma_L^2 (None: sigma_L^2 / 2, the
                               # better of /2 and /10 on MNIST, docs/restoration.md;
                               # NCSN's 2e-5 at sigma_L = 0.01 is sigma_L^2 / 5)
  r.noise_pins = False         # annealed: pinned (observed) pixels carry each level's
                               # extra noise, tied to their value by N(y, s^2 - s_L^2),
                               # so a smoothed-joint context sees a whole noisy image
  r.init = "observation"       # annealed / mala / gibbs: the chains' start before the
                               # first level's noise: 'observation' (its own fill-in),
                               # 'classical' (the classical restoration project starts
                               # from; gaussian: BM3D at restore.sigma) or 'project'
                               # (the denoise-and-project estimate; smoothed-joint
                               # model; inpaint, superres, salt_pepper)
  r.project_start = 0.1        # project: first denoiser level (image units), > 0
  r.project_end = 0.02         # project: last level, > 0 and <= project_start
  r.project_levels = 5         # project: levels, log-spaced, int >= 1
  r.sp_start = "adaptive_median"   # salt_pepper: the loop's and init=classical's start:
                                   # adaptive_median | decision_median
  r.mala_steps = 0             # >= 0: MALA steps at sigma_min (exact log q)
  r.mala_step = _ref(float)    # > 0 (None: step_lr)
  r.mh_sweeps = 0              # >= 0: Metropolized sweeps on the pixel values, each pixel
                               # proposed from its filter conditional (look-ahead through
                               # the joint; one joint evaluation per moved pixel)
  r.filter_mass_sigma = _ref(float)  # filter/smc, score heads: each conditional's
                               # background and ink masses from the model at this larger
                               # level, its shape from sigma_min (None: sigma_min alone)
  r.gibbs_sweeps = 0           # >= 0: exact grid-Gibbs sweeps at sigma_min (costly)
  r.gibbs_values = 33          # >= 2: grid values per pixel
  r.chains = 4                 # >= 1: chains per image; 'mean' averages them
  r.map_steps = 0              # >= 0: gradient-ascent MAP steps (0: no MAP)
  r.map_lr = _ref(float)       # > 0 (None: step_lr / 2)
  r.grid_points = 33           # >= 3: box quadrature nodes of a score head's joint
  r.grid_corrected = False     # Euler-Maclaurin end correction (O(h^4); one more jvp)
  r.box_min = _ref(float)      # None: the data's box (pixels: [-0.2, 1.2] in unit scale)
  r.box_max = _ref(float)
  r.batch_chunk = _ref(int)    # examples per joint evaluation chunk (None: auto)
  r.batch_size = 16            # images per compiled sampler call (0: all at once)
  r.num_images = 16            # --mode=restore: held-out test images
  r.input = _ref(str)          # --mode=restore: the user's corrupted images instead of
                               # test images (.npz with y [, mask, truth], or one .png)
  r.input_mask = _ref(str)     # inpaint with a .png input: mask PNG (non-zero: observed)
  _declare("restore", sigma="> 0", p="[0, 1]", sp_tau="None (one bin) or > 0",
           mask_seed="int", sr_factor="int >= 1", sr_sigma="> 0",
           sigmas="None (the noise schedule) or each > 0",
           num_levels="None (all levels) or int >= 1", steps_per_level="int >= 1",
           step_lr="None (sigma_L^2 / 2) or > 0", mala_steps="int >= 0",
           mala_step="None (step_lr) or > 0", mh_sweeps="int >= 0",
           filter_mass_sigma="None (off) or > the last level",
           project_start="> 0", project_end="> 0",
           project_levels="int >= 1", gibbs_sweeps="int >= 0", gibbs_values="int >= 2",
           chains="int >= 1", map_steps="int >= 0", map_lr="None (step_lr / 2) or > 0",
           grid_points="int >= 3", box_min="None (the data's box) or any number",
           box_max="None (the data's box) or any number",
           batch_chunk="None (auto) or int >= 1", batch_size="0 (all at once) or int >= 1",
           num_images="int >= 1")
  c.lock()
  return c


def vae_default_config() -> ml_collections.ConfigDict:
  """Every field of a VAE config (paper Sec. 6, `csm_jax.vae`), with its default; locked.

  A config is a VAE config when it has a `vae` section. The defaults are the MNIST
  protocol of the sliced-score-matching reference the paper follows: MLPs of two tanh
  layers of 256, dynamically binarized MNIST split 80/20 into train/validation, batch
  128, RMSProp with PyTorch's defaults at lr 1e-3, 100k iterations.
  """
  c = ml_collections.ConfigDict()
  c.seed = 0
  # the image-data fields the loaders read; dequantize / scale / logit_lambda do not
  # apply: vae.likelihood decides (bernoulli: binarized; gaussian: [-1, 1], dequantized)
  c.data = default_config().data
  c.vae = v = ml_collections.ConfigDict()
  v.encoder = "implicit"       # implicit | gaussian (the ELBO baseline, analytic entropy)
  v.estimator = "csm"          # implicit encoders: csm | ssm_ar | ssm | stein | spectral
  v.architecture = "mlp"       # mlp (MNIST) | conv (CelebA, DCGAN-like)
  v.likelihood = "bernoulli"   # bernoulli (binarized x) | gaussian (x in [-1, 1], dequantized)
  v.decoder_log_std = -0.602   # gaussian likelihood: fixed log std (the reference's)
  v.z_dim = 16
  v.eps_dim = 0                # implicit encoder noise size (0: z_dim)
  v.hidden_sizes = (256, 256)  # mlp encoder/decoder
  v.num_filters = 16           # conv: nef = ndf of the reference
  v.score_hidden = (256, 256)  # ssm: MLP s(x, z); csm / ssm_ar: conditional MADE
  v.context_size = 16          # csm / ssm_ar: conditional MADE context per dimension
  v.head_hidden = (32, 32)     # csm / ssm_ar: score head
  v.ssm_projections = 1        # ssm / ssm_ar: projections per sample
  v.num_particles = 100        # stein / spectral: encoder samples per x
  v.stein_eta = 1e-3
  v.spectral_threshold = 0.99  # share of the kernel spectrum kept
  v.validation_fraction = 0.2  # of the training split, held out (reference: 80/20)
  v.split_seed = 2019          # permutation of that split (the reference's seed)
  _declare("vae", decoder_log_std="any number", z_dim="int >= 1", eps_dim="int >= 0",
           hidden_sizes="each int >= 1", num_filters="int >= 1", score_hidden="each int >= 1",
           context_size="int >= 1", head_hidden="each int >= 1", ssm_projections="int >= 1",
           num_particles="int >= 1", stein_eta="> 0", spectral_threshold="(0, 1]",
           validation_fraction="(0, 1)", split_seed="int")

  c.optim = o = ml_collections.ConfigDict()
  o.learning_rate = 1e-3       # RMSProp as torch.optim.RMSprop's defaults (vae/optim.py)
  o.rms_decay = 0.99
  o.rms_eps = 1e-8
  o.score_learning_rate = 0.0  # the score model's (0: optim.learning_rate)
  _declare("optim", rms_decay="[0, 1)", rms_eps=">= 0", score_learning_rate=">= 0")

  c.training = t = ml_collections.ConfigDict()
  t.num_steps = 100000
  t.batch_size = 128
  t.log_every = 100
  t.eval_every = 2000
  t.checkpoint_every = 5000
  t.checkpoint_every_secs = 600.0
  t.keep_checkpoints = 3

  c.eval = e = ml_collections.ConfigDict()
  e.batch_size = 500           # periodic validation batches (reconstruction, ELBO)
  e.num_batches = 2
  e.ais_num_examples = 1000    # --mode=eval: AIS on this many test images (-1: all)
  e.ais_batch_size = 100
  e.ais_steps = 1000           # annealing distributions (sigmoid schedule)
  e.ais_chains = 16
  e.ais_leapfrog = 10
  e.ais_step_size = 0.05       # initial HMC step, adapted towards 0.65 acceptance
  # --mode=eval FID of decoder samples vs test images in FID's InceptionV3 features, from
  # a weights file the user supplies (format: csm_jax/inception_weights.py); "" skips it
  e.inception_weights = ""
  e.fid_num_examples = -1      # test images as reference, as many samples (-1: all)
  e.fid_batch_size = 50        # images per Inception batch
  _declare("eval", ais_num_examples="-1 (the whole test split) or int >= 1",
           ais_batch_size="int >= 1", ais_steps="int >= 1", ais_chains="int >= 1",
           ais_leapfrog="int >= 1", ais_step_size="> 0",
           fid_num_examples="-1 (the whole test split) or int >= 2", fid_batch_size="int >= 1")

  c.sampling = s = ml_collections.ConfigDict()
  s.num_samples = 100
  c.lock()
  return c


def is_vae_config(config) -> bool:
  return "vae" in config


_VAE_ESTIMATORS = ("csm", "ssm_ar", "ssm", "stein", "spectral")


def validate_vae(config) -> ml_collections.ConfigDict:
  """`validate` for VAE configs; the message names the field."""
  def need(ok, field, value, what):
    if not ok:
      raise ConfigError(f"config field {field} must be {what}, got {value!r}")

  for field in ("training.num_steps", "training.batch_size", "training.log_every",
                "training.checkpoint_every", "training.keep_checkpoints", "eval.batch_size",
                "eval.num_batches", "eval.ais_batch_size", "eval.ais_steps",
                "eval.ais_chains", "eval.ais_leapfrog", "sampling.num_samples",
                "vae.z_dim", "vae.num_particles", "vae.ssm_projections", "vae.context_size",
                "vae.num_filters"):
    section, name = field.split(".")
    value = config[section][name]
    need(isinstance(value, int) and value >= 1, field, value, "an integer >= 1")
  for field in ("training.eval_every", "training.checkpoint_every_secs", "vae.eps_dim",
                "optim.score_learning_rate"):
    section, name = field.split(".")
    need(config[section][name] >= 0, field, config[section][name], ">= 0 (0: off/default)")
  v = config.vae
  need(v.encoder in ("implicit", "gaussian"), "vae.encoder", v.encoder,
       "'implicit' or 'gaussian'")
  if v.encoder == "implicit":
    need(v.estimator in _VAE_ESTIMATORS, "vae.estimator", v.estimator,
         "one of " + ", ".join(_VAE_ESTIMATORS))
  need(v.architecture in ("mlp", "conv"), "vae.architecture", v.architecture,
       "'mlp' or 'conv'")
  need(v.likelihood in ("bernoulli", "gaussian"), "vae.likelihood", v.likelihood,
       "'bernoulli' or 'gaussian'")
  need(v.estimator not in ("stein", "spectral") or v.num_particles >= 2, "vae.num_particles",
       v.num_particles, ">= 2 for a kernel estimator")
  need(0 < v.validation_fraction < 1, "vae.validation_fraction", v.validation_fraction,
       "in (0, 1)")
  need(v.stein_eta > 0, "vae.stein_eta", v.stein_eta, "> 0")
  need(0 < v.spectral_threshold <= 1, "vae.spectral_threshold", v.spectral_threshold,
       "in (0, 1]")
  for field in ("vae.hidden_sizes", "vae.score_hidden", "vae.head_hidden"):
    value = v[field.split(".")[1]]
    need(len(value) >= 1 and all(h >= 1 for h in value), field, value, "positive widths")
  o = config.optim
  need(o.learning_rate > 0, "optim.learning_rate", o.learning_rate, "> 0")
  need(0 <= o.rms_decay < 1, "optim.rms_decay", o.rms_decay, "in [0, 1)")
  need(o.rms_eps >= 0, "optim.rms_eps", o.rms_eps, ">= 0")
  e = config.eval
  need(isinstance(e.ais_num_examples, int) and (e.ais_num_examples >= 1
                                                or e.ais_num_examples == -1),
       "eval.ais_num_examples", e.ais_num_examples, ">= 1 or -1 (the whole test split)")
  need(e.ais_step_size > 0, "eval.ais_step_size", e.ais_step_size, "> 0")
  need(isinstance(e.fid_num_examples, int) and (e.fid_num_examples >= 2
                                                or e.fid_num_examples == -1),
       "eval.fid_num_examples", e.fid_num_examples, ">= 2 or -1 (the whole test split)")
  need(isinstance(e.fid_batch_size, int) and e.fid_batch_size >= 1, "eval.fid_batch_size",
       e.fid_batch_size, "an integer >= 1")
  need(isinstance(e.inception_weights, str), "eval.inception_weights", e.inception_weights,
       "a file path ('' skips FID)")
  return check_ranges(config)  # the fields it shares with image configs


def pixelcnnpp_config(dataset: str, variant: str = "csm") -> ml_collections.ConfigDict:
  """PixelCNN++ on 8-bit images (paper Sec. 5.3): AR-CSM by CSM (variant 'csm') or the
  discretized-logistic MLE baseline (variant 'mle'); paper-size network."""
  if variant not in ("csm", "mle"):
    raise ValueError(f"variant must be 'csm' or 'mle', got {variant!r}")
  c = default_config()
  c.data.dataset = dataset
  c.data.scale = "symmetric"          # [-1, 1], as PixelCNN++
  c.data.logit_lambda = 0.0
  c.data.dequantize = variant == "csm"  # CSM: a density; MLE: a mass on 256 bins

  m = c.model
  m.backbone = "pixelcnnpp"
  m.nr_filters = 160
  m.nr_resnet = 5
  m.num_resolutions = 3
  m.dropout_rate = 0.5
  m.context_size = 16
  m.head_hidden = (64, 64)
  m.num_mixtures = 10

  c.training.batch_size = 64
  c.training.num_steps = 300000
  c.training.log_every = 100
  c.training.eval_every = 5000
  c.training.eval_samples = 16
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
    c.noise.num_levels = 10
    c.optim.learning_rate = 2e-4
    # T = 30 per level and dimension (head only) at alpha_L = 2 sigma_L^2: within 1.5x of
    # the Monte Carlo floor on known-conditional AR models (python -m
    # experiments.sampler_accuracy: covariance error 0.034 vs floor 0.022); the former
    # T = 20 at 2e-5 (alpha_L = 0.2 sigma_L^2) is under-mixed (error 1.4 at T = 10 and
    # 0.28 at T = 30 there). Cost D*L*T = 3072*10*30 head evaluations per CIFAR-10 sample.
    c.sampling.num_steps = 30
    c.sampling.step_lr = 2 * c.noise.sigma_min ** 2
    c.sampling.denoise = True
  else:
    m.head = "discretized_logistic"
    c.loss.name = "mle"
    c.noise.enabled = False
    c.optim.learning_rate = 1e-3  # PixelCNN++
  return c


def _parse_value(text: str):
  """A command-line value: a Python literal if it parses as one, else the string."""
  import ast  # pylint: disable=g-import-not-at-top
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def override(config: ml_collections.ConfigDict, overrides: Sequence[str]):
  """Applies 'a.b.c=value' strings (as ``--config.a.b.c=value``) to a locked config.

  An unknown field raises AttributeError naming it; a value of the wrong type raises
  TypeError. Returns the config.
  """
  for item in overrides:
    item = item[len("--config."):] if item.startswith("--config.") else item
    if "=" not in item:
      raise ValueError(f"config override {item!r} must look like field.path=value")
    path, text = item.split("=", 1)
    *parents, last = path.split(".")
    node = config
    for p in parents:
      if p not in node:
        raise AttributeError(f"config has no field {path!r} (no {p!r})")
      node = node[p]
    if last not in node:
      raise AttributeError(f"config has no field {path!r}")
    value = _parse_value(text)
    if isinstance(node[last], tuple) and isinstance(value, (int, float)):
      value = (value,)
    if isinstance(node[last], str) and not isinstance(value, str):
      value = text
    if isinstance(node[last], bool) and isinstance(value, str):   # as absl: true/false
      value = {"true": True, "false": False}.get(value.strip().lower(), value)
    try:
      node[last] = value
    except TypeError:
      raise TypeError(f"config field {path}: {text!r} is not of type "
                      f"{type(node[last]).__name__}") from None
  return config


def load_config(spec: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
  """The config of ``configs/NAME.py[:variant]`` (a path, or a name in configs/), locked.

  The same as ``--config=spec`` followed by ``--config.x=...`` overrides.
  """
  path, _, variant = spec.partition(":")
  if not os.path.exists(path):
    name = os.path.basename(path)
    candidate = os.path.join(REPO_CONFIGS, name if name.endswith(".py") else name + ".py")
    if not os.path.exists(candidate):
      raise FileNotFoundError(f"config file {path!r} not found (nor {candidate!r})")
    path = candidate
  name = os.path.splitext(os.path.basename(path))[0]
  module_spec = importlib.util.spec_from_file_location(f"csm_jax_config_{name}", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  config = module.get_config(variant) if variant else module.get_config()
  config.lock()
  return override(config, overrides)


def command_line_overrides(argv: Sequence[str]) -> list:
  """The 'a.b=value' overrides among ``--config.a.b=value`` arguments of argv.

  A field given twice is refused: absl would silently combine the two (for tuples it
  concatenates them).
  """
  out, seen = [], set()
  args = list(argv)
  for i, item in enumerate(args):
    if not item.startswith("--config."):
      continue
    body = item[len("--config."):]
    if "=" not in body and i + 1 < len(args):
      body = f"{body}={args[i + 1]}"
    field = body.split("=", 1)[0]
    if field in seen:
      raise ConfigError(f"--config.{field} is given more than once; give it once")
    seen.add(field)
    out.append(body)
  return out


def validate(config) -> ml_collections.ConfigDict:
  """Checks every count, interval, size and noise level before anything runs or is
  written; the message names the field. Returns the config."""
  def need(ok, field, value, what):
    if not ok:
      raise ConfigError(f"config field {field} must be {what}, got {value!r}")

  for field in ("training.num_steps", "training.batch_size", "training.log_every",
                "training.checkpoint_every", "training.keep_checkpoints", "eval.batch_size",
                "eval.num_batches", "likelihood.batch_size", "sampling.num_samples",
                "sampling.num_steps", "model.context_size", "data.num_train", "data.num_test",
                "data.dim", "model.num_mixtures", "loss.num_projections"):
    section, name = field.split(".")
    value = config[section][name]
    need(isinstance(value, int) and value >= 1, field, value, "an integer >= 1")
  for field in ("training.eval_every", "optim.warmup_steps", "training.checkpoint_every_secs",
                "training.eval_samples"):
    section, name = field.split(".")
    need(config[section][name] >= 0, field, config[section][name], ">= 0 (0: off)")
  need(isinstance(config.training.steps_per_dispatch, int)
       and config.training.steps_per_dispatch >= 1, "training.steps_per_dispatch",
       config.training.steps_per_dispatch, "an integer >= 1")
  need(config.data.pipeline in ("auto", "host", "device"), "data.pipeline",
       config.data.pipeline, "'auto', 'host' or 'device'")
  need(config.data.device_max_mb >= 0, "data.device_max_mb", config.data.device_max_mb,
       ">= 0")
  m = config.model
  need(m.compute_dtype in ("float32", "bfloat16"), "model.compute_dtype", m.compute_dtype,
       "'float32' or 'bfloat16'")
  need(m.matmul_precision in ("highest", "high", "default"), "model.matmul_precision",
       m.matmul_precision, "'highest', 'high' or 'default'")
  need(all(h >= 1 for h in m.hidden_sizes), "model.hidden_sizes", m.hidden_sizes,
       "positive widths")
  need(all(h >= 1 for h in m.head_hidden), "model.head_hidden", m.head_hidden,
       "positive widths")
  lo = config.loss
  need(lo.projection in _SSM_PROJECTIONS, "loss.projection", lo.projection,
       "one of " + ", ".join(_SSM_PROJECTIONS))
  need(isinstance(lo.variance_reduced, bool), "loss.variance_reduced", lo.variance_reduced,
       "True or False")
  o = config.optim
  need(o.learning_rate > 0, "optim.learning_rate", o.learning_rate, "> 0")
  need(0 <= o.ema_decay < 1, "optim.ema_decay", o.ema_decay, "in [0, 1)")
  need(o.grad_clip >= 0, "optim.grad_clip", o.grad_clip, ">= 0 (0: no clipping)")
  n = config.noise
  need(n.mode in NOISE_MODES, "noise.mode", n.mode, "one of " + ", ".join(map(repr, NOISE_MODES)))
  need(n.get("levels", "discrete") in NOISE_LEVELS, "noise.levels", n.get("levels"),
       "one of " + ", ".join(map(repr, NOISE_LEVELS)))
  if n.mode == "joint":
    need(n.enabled, "noise.enabled", n.enabled, "True with noise.mode='joint'")
    need(config.loss.name == "csm", "loss.name", config.loss.name,
         "'csm' with noise.mode='joint'")
    need(m.context_sigma_embedding >= 1, "model.context_sigma_embedding",
         m.context_sigma_embedding, ">= 1 with noise.mode='joint' (the context takes sigma)")
  else:
    need(m.context_sigma_embedding == 0, "model.context_sigma_embedding",
         m.context_sigma_embedding, "0 unless noise.mode='joint' (per-dimension noise has "
         "no single level for the context)")
  if n.enabled:
    need(n.sigma_min > 0, "noise.sigma_min", n.sigma_min, "> 0")
    need(n.sigma_max >= n.sigma_min, "noise.sigma_max", n.sigma_max,
         f">= noise.sigma_min ({n.sigma_min})")
    need(isinstance(n.num_levels, int) and n.num_levels >= 1, "noise.num_levels",
         n.num_levels, "an integer >= 1")
  need(config.loss.mle_target_sigma >= 0, "loss.mle_target_sigma",
       config.loss.mle_target_sigma, ">= 0 (0: plain MLE)")
  s = config.sampling
  need(s.step_lr > 0, "sampling.step_lr", s.step_lr, "> 0")
  need(s.method in SAMPLING_METHODS, "sampling.method", s.method,
       "one of " + ", ".join(map(repr, SAMPLING_METHODS)))
  need(s.max_sweeps is None or s.max_sweeps >= 1, "sampling.max_sweeps", s.max_sweeps,
       ">= 1 (None: D)")
  need(s.fixed_point_tol >= 0, "sampling.fixed_point_tol", s.fixed_point_tol, ">= 0")
  need(isinstance(s.mh_correction, bool), "sampling.mh_correction", s.mh_correction,
       "True or False")
  need(isinstance(s.mh_nodes, int) and not isinstance(s.mh_nodes, bool) and s.mh_nodes >= 2,
       "sampling.mh_nodes", s.mh_nodes, "an integer >= 2 (Gauss-Lobatto nodes, both ends)")
  if s.sigmas is not None:
    need(len(s.sigmas) >= 1 and all(v > 0 for v in s.sigmas), "sampling.sigmas", s.sigmas,
         "positive noise levels")
  r = config.restore
  need(r.task in ("gaussian", "salt_pepper", "inpaint", "superres"), "restore.task", r.task,
       "one of gaussian, salt_pepper, inpaint, superres")
  need(r.method in ("annealed", "filter", "smc", "mala", "gibbs", "tweedie", "project"),
       "restore.method", r.method,
       "'annealed', 'filter', 'smc', 'mala', 'gibbs', 'tweedie' or 'project'")
  need(r.init in ("observation", "classical", "project"), "restore.init", r.init,
       "'observation', 'classical' or 'project'")
  need(r.init == "observation" or r.method in ("annealed", "mala", "gibbs"), "restore.init",
       r.init, f"'observation' for restore.method {r.method!r} (a start applies to "
       "'annealed', 'mala' and 'gibbs')")
  need(r.sp_start in ("adaptive_median", "decision_median"), "restore.sp_start", r.sp_start,
       "'adaptive_median' or 'decision_median'")
  need(r.project_start > 0, "restore.project_start", r.project_start, "> 0")
  need(0 < r.project_end <= r.project_start, "restore.project_end", r.project_end,
       f"> 0 and <= restore.project_start ({r.project_start})")
  need(r.mask in ("random50", "random80", "centre", "bottom"), "restore.mask", r.mask,
       "one of random50, random80, centre, bottom")
  need(0 <= r.p <= 1, "restore.p", r.p, "in [0, 1]")
  for field in ("sigma", "sr_sigma", "step_lr", "sp_tau", "mala_step", "map_lr",
                "filter_mass_sigma"):
    need(r[field] is None or r[field] > 0, f"restore.{field}", r[field], "> 0")
  for field, low in (("steps_per_level", 1), ("chains", 1), ("sr_factor", 1),
                     ("gibbs_values", 2), ("grid_points", 3), ("mala_steps", 0),
                     ("project_levels", 1),
                     ("mh_sweeps", 0), ("gibbs_sweeps", 0), ("map_steps", 0),
                     ("batch_size", 0),
                     ("num_images", 1)):
    need(isinstance(r[field], int) and r[field] >= low, f"restore.{field}", r[field],
         f"an integer >= {low}")
  need(r.num_levels is None or r.num_levels >= 1, "restore.num_levels", r.num_levels, ">= 1")
  need(not r.input or r.input.lower().endswith((".npz", ".png")), "restore.input", r.input,
       "None or a .npz / .png file")
  need(not r.input_mask or r.input_mask.lower().endswith(".png"), "restore.input_mask",
       r.input_mask, "None or a .png file (inpaint: non-zero = observed)")
  if r.box_min is not None and r.box_max is not None:
    need(r.box_max > r.box_min, "restore.box_max", r.box_max, f"> restore.box_min ({r.box_min})")
  lk = config.likelihood
  need(lk.num_points >= 5 and lk.num_points % 2 == 1, "likelihood.num_points",
       lk.num_points, "odd and >= 5")
  need(lk.margin >= 0, "likelihood.margin", lk.margin, ">= 0")
  need(isinstance(lk.grid_num_train, int) and lk.grid_num_train >= 1,
       "likelihood.grid_num_train", lk.grid_num_train, "an integer >= 1")
  need(isinstance(lk.outer_points, int) and lk.outer_points >= 0 and lk.outer_points % 2 == 0,
       "likelihood.outer_points", lk.outer_points, "an even integer >= 0 (0: tails at the ends)")
  need(lk.outer_reach > 0, "likelihood.outer_reach", lk.outer_reach, "> 0")
  if lk.grid_min is not None and lk.grid_max is not None:
    need(lk.grid_max > lk.grid_min, "likelihood.grid_max", lk.grid_max,
         f"> likelihood.grid_min ({lk.grid_min})")
  return check_ranges(config)  # every numeric field against its declared range


def load_workdir_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a training run wrote to WORKDIR/config.json, on the current defaults.

  A record that cannot be read back as it was written (empty, truncated, not a JSON
  object, a field this version does not know, a value of the wrong type) is a
  ConfigError of one line naming the file and what is wrong.
  """
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found: train with python -m csm_jax.main first")

  def bad(what):
    return ConfigError(f"config record {path} {what}; restore it from a copy, or train in "
                       "a fresh --workdir")

  try:
    with open(path, "rb") as f:
      text = f.read().decode("utf-8")
  except (OSError, UnicodeDecodeError) as e:
    raise bad(f"cannot be read ({e})") from None
  if not text.strip():
    raise bad("is empty")
  try:
    saved = json.loads(text)
  except ValueError as e:
    raise bad(f"is not valid JSON (truncated or hand-edited?): {e}") from None
  if not isinstance(saved, dict):
    raise bad(f"must hold a JSON object of config sections, not a {type(saved).__name__}")
  config = vae_default_config() if "vae" in saved else default_config()
  unknown = []

  def merge(node, values, prefix):
    for k, v in values.items():
      if k not in node:
        unknown.append(prefix + k)
      elif isinstance(node[k], ml_collections.ConfigDict):
        if not isinstance(v, dict):
          raise bad(f"field {prefix + k} must be a section (a JSON object), not {v!r}")
        merge(node[k], v, prefix + k + ".")
      else:
        try:
          node[k] = tuple(v) if isinstance(v, list) else v
        except (TypeError, ValueError) as e:
          raise bad(f"field {prefix + k} has a value of the wrong type: {v!r} "
                    f"({str(e).splitlines()[0]})") from None

  merge(config, saved, "")
  if unknown:
    raise bad(f"has fields this version does not know: {', '.join(unknown)}")
  return config


def config_variants(path: str) -> Optional[Sequence[str]]:
  """The variants a config file declares in VARIANTS (None: no variant argument)."""
  name = os.path.splitext(os.path.basename(path))[0]
  module_spec = importlib.util.spec_from_file_location(f"csm_jax_config_{name}", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return getattr(module, "VARIANTS", None)
