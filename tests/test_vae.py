"""VAEs with implicit encoders (paper Sec. 6): estimators, objectives, data, optimizer,
every method's training step. Tiny shapes; ground truths independent of the code under
test (closed forms, float64 numpy, a hand-written PyTorch update). The training loop's
exact resume, eval and sample: tests/test_vae_train.py."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from csm_jax import config_base
from csm_jax import data as data_lib
from csm_jax.vae import data as vae_data
from csm_jax.vae import estimators
from csm_jax.vae import kernel
from csm_jax.vae import loss as loss_lib
from csm_jax.vae import model as model_lib
from csm_jax.vae import networks
from csm_jax.vae import objectives
from csm_jax.vae import optim
from csm_jax.vae import train as vae_train
from tests.helpers import float64


# ------------------------------------------------------------------------------------
# Kernel score estimators
# ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["stein", "spectral"])
def test_kernel_estimator_recovers_gaussian_score(name):
  """On 64 independent sets of 100 draws of N(0, diag(s^2)) the estimates, regressed
  on z, give -diag(1/s^2) within 10% (measured: within 1-5%: the kernel estimators
  shrink the score slightly), with off-diagonal terms below 0.1/s^2."""
  scale = np.array([0.6, 1.5])
  z = np.random.default_rng(0).standard_normal((64, 100, 2)) * scale
  fn = {"stein": lambda s: kernel.stein_scores(s, eta=1e-3),
        "spectral": lambda s: kernel.spectral_scores(s, threshold=0.99)}[name]
  est = np.asarray(fn(jnp.asarray(z, jnp.float32)))
  assert est.shape == z.shape and np.all(np.isfinite(est))
  a = np.linalg.lstsq(z.reshape(-1, 2), est.reshape(-1, 2), rcond=None)[0]
  scaled = a * scale[None] * scale[:, None]          # -I for the true score
  np.testing.assert_allclose(np.diag(scaled), -1.0, atol=0.1)
  assert abs(scaled[0, 1]) < 0.1 and abs(scaled[1, 0]) < 0.1
  if name == "spectral":  # pointwise accuracy (Stein at eta = 1e-3 is noisy pointwise)
    true = -z / scale ** 2
    inner = (np.abs(z / scale) < 1).all(-1)
    rel = np.sqrt(((est - true) ** 2).sum(-1)[inner].mean() / (true ** 2).sum(-1)[inner].mean())
    assert rel < 0.6, rel                          # measured 0.48


def test_median_bandwidth_is_the_references_topk_median():
  x = np.random.default_rng(1).standard_normal((7, 3)).astype(np.float32)
  d = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1)).ravel()
  want = -np.sort(-d)[d.size // 2 - 1]   # torch.topk(d, k=M*M//2)[0][-1]
  np.testing.assert_allclose(float(kernel.median_bandwidth(jnp.asarray(x))), want, rtol=1e-6)


def test_kernel_estimator_treats_sets_separately_and_reads_particles_on_axis_0():
  est = estimators.kernel_estimator("stein", num_particles=5)
  z = jax.random.normal(jax.random.PRNGKey(0), (5, 3, 2))     # (P, B, Z)
  s = jax.jit(est.score)({}, z, jnp.zeros((3, 4)))
  one = jax.jit(kernel.stein_scores)
  for b in range(3):
    np.testing.assert_allclose(s[:, b], one(z[:, b]), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------
# Objectives
# ------------------------------------------------------------------------------------


def _tiny_gaussian_vae(data_dim=6, z_dim=2, hidden=(5,)):
  return model_lib.VAE(encoder=networks.GaussianEncoder(z_dim, hidden),
                       decoder=networks.MLPDecoder(data_dim, hidden), data_shape=(data_dim,),
                       z_dim=z_dim, eps_dim=z_dim, implicit=False)


def test_entropy_surrogate_gradient_is_the_entropy_gradient_given_the_exact_score():
  """Gaussian encoder, exact score -(z - mean)/std^2: the gradient of the surrogate
  through z = mean + std eps equals d/dphi of the analytic entropy sum log std. With eps
  standardized over the samples (mean 0, variance 1 exactly) the identity is exact."""
  with float64():
    vae = _tiny_gaussian_vae(data_dim=3)
    params = jax.tree.map(lambda a: a.astype(jnp.float64), vae.init(jax.random.PRNGKey(0)))
    x = jnp.asarray(np.random.default_rng(0).random((2, 3)))
    eps = np.random.default_rng(1).standard_normal((1000, 2, 2))
    eps = (eps - eps.mean(0)) / eps.std(0)

    def surrogate(p):
      mean, log_std = vae.gaussian_posterior(p, x)
      z = mean + jnp.exp(log_std) * eps
      score = -(z - mean) / jnp.exp(2 * log_std)
      return objectives.entropy_surrogate(z, score).mean()

    def entropy(p):
      return objectives.gaussian_entropy(vae.gaussian_posterior(p, x)[1]).mean()

    g_sur, g_ent = jax.jit(jax.grad(surrogate))(params), jax.jit(jax.grad(entropy))(params)
    for a, b in zip(jax.tree.leaves(g_sur), jax.tree.leaves(g_ent)):
      np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    assert max(float(jnp.abs(a).max()) for a in jax.tree.leaves(g_ent)) > 1e-2  # non-trivial


def _np_mlp(layers, h, final_linear=True):
  """float64 numpy forward pass through Dense layers (dicts with kernel, bias), tanh."""
  for i, layer in enumerate(layers):
    h = h @ np.asarray(layer["kernel"], np.float64) + np.asarray(layer["bias"], np.float64)
    if i < len(layers) - 1 or not final_linear:
      h = np.tanh(h)
  return h


def test_gaussian_elbo_matches_float64_numpy():
  """gaussian_elbo (float32) = a numpy float64 computation with the same eps; and the
  analytic KL equals a 10^6-sample Monte Carlo estimate of E_q[log q - log p]."""
  vae = _tiny_gaussian_vae()
  params = vae.init(jax.random.PRNGKey(3))
  rng = np.random.default_rng(0)
  x = (rng.random((4, 6)) < 0.5).astype(np.float32)
  key = jax.random.PRNGKey(7)
  loss, m = jax.jit(lambda p, x, k: loss_lib.gaussian_elbo(vae, p, x, k))(params, x, key)

  enc, dec = params["encoder"]["params"], params["decoder"]["params"]
  h = _np_mlp([enc["dense_0"]], x.astype(np.float64), final_linear=False)
  mean = _np_mlp([enc["mean"]], h)
  log_std = _np_mlp([enc["log_std"]], h)
  eps = np.asarray(jax.random.normal(key, mean.shape), np.float64)
  z = mean + np.exp(log_std) * eps
  logits = _np_mlp([dec["dense_0"], dec["dense_out"]], z)
  loglik = (x * -np.logaddexp(0, -logits) + (1 - x) * -np.logaddexp(0, logits)).sum(-1)
  kl = (0.5 * (np.exp(2 * log_std) + mean ** 2) - log_std - 0.5).sum(-1)
  np.testing.assert_allclose(float(loss), np.mean(kl - loglik), rtol=1e-5)
  np.testing.assert_allclose(float(m["kl"]), kl.mean(), rtol=1e-5)

  # KL against Monte Carlo of log q(z) - log p(z), z ~ q, example 0
  zs = mean[0] + np.exp(log_std[0]) * rng.standard_normal((10 ** 6, 2))
  log_q = (-0.5 * ((zs - mean[0]) / np.exp(log_std[0])) ** 2 - log_std[0]).sum(-1)
  log_p = (-0.5 * zs ** 2).sum(-1)
  diff = log_q - log_p
  assert abs(diff.mean() - kl[0]) < 4 * diff.std() / 1e3


# ------------------------------------------------------------------------------------
# Data and optimizer
# ------------------------------------------------------------------------------------


def test_dynamic_binarization_is_fresh_every_step_and_a_function_of_seed_and_step():
  grey = jnp.asarray(np.random.default_rng(0).integers(0, 256, (32, 50)), jnp.uint8)

  def batch(seed, step):
    return np.asarray(vae_data.prepare(grey, vae_data.batch_keys(seed, step)[0], "bernoulli"))

  a = batch(0, 5)
  np.testing.assert_array_equal(a, batch(0, 5))                   # pure in (seed, step)
  assert (a != batch(0, 6)).mean() > 0.1                           # fresh every step
  assert (a != batch(1, 5)).mean() > 0.1
  assert set(np.unique(a)) <= {0.0, 1.0}
  g = np.asarray(grey)
  assert np.all(a[g == 0] == 0) and np.all(a[g == 255] == 1)
  means = np.mean([batch(0, s) for s in range(200)], axis=0)     # E[x] = pixel / 255
  assert np.abs(means - g / 255).max() < 0.15                     # 200 draws: sd <= 0.035
  # jitted with a traced step (as in the train step) gives the same draws
  traced = jax.jit(lambda st: vae_data.prepare(grey, vae_data.batch_keys(0, st)[0], "bernoulli"))
  np.testing.assert_array_equal(np.asarray(traced(5)), a)


def test_train_validation_split_and_batches():
  train = np.arange(100, dtype=np.uint8).reshape(100, 1, 1, 1)
  arrays = data_lib.Arrays(train, train[:10], (1, 1, 1), True)
  d = vae_data.split(arrays, 0.2, seed=2019)
  assert len(d.train) == 80 and len(d.validation) == 20
  assert sorted(np.concatenate([d.train, d.validation]).ravel().tolist()) == list(range(100))
  np.testing.assert_array_equal(vae_data.train_batch(d, 16, 7, 0), vae_data.train_batch(d, 16, 7, 0))
  assert not np.array_equal(vae_data.train_batch(d, 16, 7, 0), vae_data.train_batch(d, 16, 8, 0))


def test_rmsprop_matches_pytorch_update():
  """optim.torch_rmsprop = torch.optim.RMSprop(lr, alpha=0.99, eps=1e-8), written out:
  v = alpha v + (1 - alpha) g^2 (v_0 = 0), p -= lr g / (sqrt(v) + eps). optax's default
  rmsprop (decay 0.9, eps inside the sqrt) does not match."""
  rng = np.random.default_rng(0)
  p0 = rng.standard_normal(5)
  grads = [rng.standard_normal(5) * 10.0 ** rng.integers(-5, 1, 5) for _ in range(6)]
  lr, alpha, eps = 1e-3, 0.99, 1e-8
  p, v = p0.copy(), np.zeros(5)
  for g in grads:
    v = alpha * v + (1 - alpha) * g * g
    p = p - lr * g / (np.sqrt(v) + eps)

  def run(opt):
    with float64():
      q = jnp.asarray(p0)
      state = opt.init(q)
      for g in grads:
        u, state = opt.update(jnp.asarray(g), state, q)
        q = optax.apply_updates(q, u)
      return np.asarray(q)

  np.testing.assert_allclose(run(optim.torch_rmsprop(lr)), p, rtol=1e-12, atol=1e-14)
  assert np.abs(run(optax.rmsprop(lr)) - p).max() > 1e-4


# ------------------------------------------------------------------------------------
# Training loop, resume, eval and sample
# ------------------------------------------------------------------------------------


def tiny_vae_config(estimator="csm", encoder="implicit", **overrides):
  c = config_base.vae_default_config()
  c.vae.encoder = encoder
  c.vae.estimator = estimator
  c.vae.z_dim = 2
  c.vae.hidden_sizes = (8,)
  c.vae.score_hidden = (8,)
  c.vae.context_size = 2
  c.vae.head_hidden = (4,)
  c.vae.num_particles = 4
  c.training.batch_size = 8
  c.training.num_steps = 6
  c.training.log_every = 2
  c.training.eval_every = 3
  c.training.checkpoint_every = 3
  c.eval.batch_size = 8
  c.eval.num_batches = 1
  c.eval.ais_num_examples = 4
  c.eval.ais_batch_size = 2
  c.eval.ais_steps = 5
  c.eval.ais_chains = 2
  c.eval.ais_leapfrog = 2
  c.sampling.num_samples = 4
  return config_base.override(c, [f"{k}={v}" for k, v in overrides.items()])


def tiny_arrays(n=40, shape=(3, 3, 1)):
  rng = np.random.default_rng(0)
  return data_lib.Arrays(rng.integers(0, 256, (n,) + shape).astype(np.uint8),
                         rng.integers(0, 256, (10,) + shape).astype(np.uint8), shape, True)


@pytest.mark.parametrize("estimator,encoder,arch", [
    ("csm", "implicit", "mlp"), ("ssm_ar", "implicit", "mlp"), ("ssm", "implicit", "mlp"),
    ("stein", "implicit", "mlp"), ("spectral", "implicit", "mlp"), ("csm", "gaussian", "mlp"),
    ("csm", "implicit", "conv"), ("csm", "gaussian", "conv")])
def test_every_method_traces_one_step(estimator, encoder, arch):
  """The whole step (score update + VAE update) traces for every method with the shapes
  and metrics expected (jax.eval_shape: nothing is compiled)."""
  if arch == "conv":   # CelebA-like: 8x8 RGB, Gaussian likelihood
    config = tiny_vae_config(estimator, encoder, **{"vae.architecture": "conv",
                                                    "vae.likelihood": "gaussian",
                                                    "vae.num_filters": 2})
    arrays = tiny_arrays(shape=(8, 8, 3))
  else:
    config, arrays = tiny_vae_config(estimator, encoder), tiny_arrays()
  s = vae_train.setup(config, arrays=arrays)
  state = jax.eval_shape(lambda: vae_train.init_state(s))
  images = jax.ShapeDtypeStruct((8, s.vae.data_dim), jnp.uint8)
  new, metrics = jax.eval_shape(vae_train.make_train_step(s), state, images)
  assert jax.tree.map(lambda a: a.shape, new) == jax.tree.map(lambda a: a.shape, state)
  want = {"loss", "recon", "grad_norm"}
  if encoder == "gaussian":
    want |= {"neg_elbo", "kl"}
  if estimator in ("csm", "ssm_ar", "ssm") and encoder == "implicit":
    want |= {"score_loss", "score_grad_norm"}
    assert jax.tree.leaves(state.score_params)
  else:
    assert not jax.tree.leaves(state.score_params)
  assert want <= set(metrics)
