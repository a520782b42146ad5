"""The shared default config; files in configs/ override it (score_sde style)."""

import ml_collections


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.data = d = ml_collections.ConfigDict()
  d.dataset = "mnist"
  d.source = "auto"   # image sets: 'auto'/'tfds', or 'npz' to read data.path instead
  d.data_dir = ml_collections.FieldReference(None, field_type=str)
  d.path = ""
  d.test_path = ""
  d.cache_dir = ml_collections.FieldReference(None, field_type=str)
  d.dequantize = True
  d.scale = "unit"
  d.logit_lambda = 1e-6
  d.name = "ring8"
  d.dim = 2
  d.num_train = 50000
  d.num_test = 5000
  d.image_size = 32
  d.crop = 140

  c.model = m = ml_collections.ConfigDict()
  m.backbone = "made"
  m.head = "score"
  m.hidden_sizes = (1024, 1024)
  m.context_size = 16
  m.order = "natural"
  m.order_seed = 0
  m.head_hidden = (32, 32)
  m.scale_by_sigma = True
  m.head_sigma_embedding = 0   # > 0: width of a learned log-sigma embedding in the score head
  m.head_sigma_film = False    # the embedding scales and shifts each head layer (else shifts)
  m.num_mixtures = 10
  m.nr_filters = 160
  m.nr_resnet = 5
  m.num_scales = 3
  m.dropout_rate = 0.5

  c.loss = l = ml_collections.ConfigDict()
  l.name = "csm"
  l.n_projections = 1
  l.projection = "gaussian"
  l.variance_reduced = True
  l.dsm_sigma = 0.1
  l.sm_chunk_size = ml_collections.FieldReference(None, field_type=int)

  c.noise = n = ml_collections.ConfigDict()
  n.enabled = True
  n.sigma_max = 5.0
  n.sigma_min = 0.05
  n.num_scales = 10

  c.optim = o = ml_collections.ConfigDict()
  o.learning_rate = 1e-3
  o.warmup_steps = 100
  o.grad_clip = 1.0
  o.b1 = 0.9
  o.b2 = 0.999
  o.weight_decay = 0.0
  o.ema_decay = 0.999

  c.training = t = ml_collections.ConfigDict()
  t.num_steps = 20000
  t.batch_size = 100
  t.log_every = 50
  t.eval_every = 1000
  t.checkpoint_every = 1000
  t.keep_checkpoints = 3

  c.eval = e = ml_collections.ConfigDict()
  e.batch_size = 500
  e.num_batches = 4  # periodic eval; --mode=eval uses the whole test split

  # Test NLL in --mode=eval: exact for normalized heads, 1-D quadrature for AR-CSM heads
  # (fields of likelihood.default_config(); None = that default).
  c.likelihood = lk = ml_collections.ConfigDict()
  lk.num_examples = 500        # test examples (0: skip; -1: the whole test split)
  lk.num_points = 2049
  lk.batch_size = 64
  lk.sigma = ml_collections.FieldReference(None, field_type=float)  # None: smallest sigma

  c.sampling = s = ml_collections.ConfigDict()
  s.num_samples = 16
  s.n_steps = 10
  s.step_lr = 2e-3
  s.denoise = True
  s.sigmas = ml_collections.FieldReference(None, field_type=tuple)  # None: the noise schedule
  # dimensions per compiled call, progress and ETA logged after each (None: ~20 reports;
  # 0: the whole sampler in one call)
  s.chunk_dims = ml_collections.FieldReference(None, field_type=int)
  return c


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
  m.num_scales = 3
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
