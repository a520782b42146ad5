"""Mixed precision (model.compute_dtype='bfloat16'): bfloat16 backbone, float32 everything else.

Ground truth: the same model in float32 (same parameters, same noise), and the float32
head's own jvp for the derivative term of CSM (paper Eq. 5).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from csm_jax import config_base
from csm_jax import losses
from csm_jax import models
from csm_jax import train
from tests.helpers import tiny_model_config


def _models(cfg_kw, shape):
  f32 = models.get_model(tiny_model_config(**cfg_kw), shape)
  bf16 = models.get_model(tiny_model_config(compute_dtype="bfloat16", **cfg_kw), shape)
  return f32, bf16


def _quick_jit(fn):
  """jit with XLA's backend optimizations off on CPU: these are one-off calls, and an
  optimized compile of a convnet's loss costs far more than running it."""
  opts = {"xla_backend_optimization_level": 0} if jax.default_backend() == "cpu" else None
  return jax.jit(fn, compiler_options=opts)


def _csm_loss(model, params, x):
  config = config_base.default_config()
  config.noise.sigma_max, config.noise.sigma_min, config.noise.num_levels = 1.0, 0.05, 4
  loss_fn = losses.get_loss_fn(config, model)
  return float(_quick_jit(lambda p, y: loss_fn(p, y, jax.random.PRNGKey(3), False)[0])(
      params, x))


# Tolerance of the loss at initialization: bfloat16 keeps 8 significant bits (relative
# rounding 2^-9 = 0.2% per operand); the context's errors partly average out over the
# hidden units and the loss sums D terms, so 1% of the loss's size is a generous bound
# that a float16-sized mistake (e.g. a bfloat16 head or loss) would still meet only by luck
# while a dtype bug (bfloat16 parameters, a cast of x before the head) fails it.
INIT_RTOL = 1e-2


@pytest.mark.slow
@pytest.mark.parametrize("backbone", ["made", "pixelcnnpp"])
def test_bf16_loss_at_init_close_to_f32(backbone):
  if backbone == "made":
    kw, shape = {"hidden_sizes": (64, 64)}, (24,)
  else:
    kw = {"backbone": "pixelcnnpp", "nr_filters": 8, "nr_resnet": 1, "num_resolutions": 2,
          "dropout_rate": 0.0}
    shape = (4, 4, 3)
  f32, bf16 = _models(kw, shape)
  params = f32.init(jax.random.PRNGKey(0))
  # parameters stay float32 in both, and are interchangeable
  p16 = jax.eval_shape(bf16.init, jax.random.PRNGKey(0))
  assert jax.tree.structure(p16) == jax.tree.structure(params)
  assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(p16))
  x = jax.random.normal(jax.random.PRNGKey(1), (16, f32.dim))
  ctx = _quick_jit(bf16.context)(params, x)
  assert ctx.dtype == jnp.float32  # the head sees float32 contexts
  l32, l16 = _csm_loss(f32, params, x), _csm_loss(bf16, params, x)
  assert np.isfinite(l16) and l16 != l32  # bf16 really ran
  assert abs(l16 - l32) <= INIT_RTOL * abs(l32), (l16, l32)


def test_bf16_context_error_is_bfloat16_sized_and_head_diag_is_float32():
  f32, bf16 = _models({"hidden_sizes": (64, 64)}, (24,))
  params = f32.init(jax.random.PRNGKey(0))
  x = jax.random.normal(jax.random.PRNGKey(1), (16, 24))
  c32, c16 = f32.context(params, x), bf16.context(params, x)
  rel = float(jnp.abs(c16 - c32).max() / jnp.abs(c32).max())
  assert 1e-4 < rel < 5e-2, rel  # bfloat16 rounding, not float32 and not garbage
  # given the same context, the derivative term is the float32 head's jvp, identical
  sigma = jnp.full_like(x, 0.3)
  s16, d16 = bf16.score_and_diag(params, c16, x, sigma)
  s32, d32 = f32.score_and_diag(params, c16, x, sigma)
  assert s16.dtype == d16.dtype == jnp.float32
  np.testing.assert_array_equal(np.asarray(d16), np.asarray(d32))
  np.testing.assert_array_equal(np.asarray(s16), np.asarray(s32))


def test_bad_compute_dtype_is_refused_by_name():
  c = config_base.default_config()
  c.model.compute_dtype = "float16"
  with pytest.raises(config_base.ConfigError, match="model.compute_dtype"):
    config_base.validate(c)
  c.model.compute_dtype = "float32"
  c.model.matmul_precision = "tf32"
  with pytest.raises(config_base.ConfigError, match="model.matmul_precision"):
    config_base.validate(c)


# A 300-step MNIST run in bfloat16 reaches a test loss within this fraction of the
# float32 run's (same data, noise and initialization).
RUN_RTOL = 0.05


@pytest.mark.slow
def test_bf16_mnist_run_reaches_the_f32_test_loss(mnist_data_dir):
  out = {}
  for dt in ("float32", "bfloat16"):
    c = config_base.load_config("configs/mnist_made.py", [
        f"data.data_dir={mnist_data_dir}", f"model.compute_dtype={dt}",
        "model.hidden_sizes=(64,)", "model.context_size=4", "model.head_hidden=(16,)",
        "training.num_steps=300", "training.batch_size=32", "training.log_every=100",
        "training.eval_every=0", "optim.ema_decay=0.99", "eval.batch_size=500",
        "eval.num_batches=1"])
    s = train.setup(c)
    state, _ = train.train_loop(s, log=lambda _: None)
    evaluate = train.make_eval_fn(c, s.model, s.pre, s.arrays.test, s.mesh, s.loss_fn)
    out[dt] = (evaluate(state.params)["eval_loss"],
               evaluate(train.initial_state(s).params)["eval_loss"])
  (l32, init32), (l16, _) = out["float32"], out["bfloat16"]
  assert l32 < init32 - 0.5 * abs(init32)  # it learned: a real comparison, not two inits
  assert abs(l16 - l32) <= RUN_RTOL * abs(l32), out
