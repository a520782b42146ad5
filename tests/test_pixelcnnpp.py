"""Tests for the PixelCNN++ context network (csm_jax/models/pixelcnnpp.py).

The key property (Meng et al., 2020): context[:, d] depends only on x[:, :d]
in raster order with channels innermost. Checked exactly with a float64
Jacobian on random, everywhere non-zero parameters.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from csm_jax import derivatives
from csm_jax.models import heads
from csm_jax.models import pixelcnnpp
from csm_jax.models.ar import ARModel, ARNet
from csm_jax.models.pixelcnnpp import PixelCNNPP

SMALL = dict(context_size=3, nr_filters=4, nr_resnet=1, num_resolutions=2)


def _random_params(model, x, seed=0, init=None):
  """Random parameters with every entry non-zero (|w| in [0.2, 1], random sign).

  Flax init gives zero biases and, after weight norm, structured scales; random
  non-zero values everywhere make an accidental structural zero impossible to
  hide behind. Built with numpy from the abstract init: no compilation.
  """
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(init or model.init, jax.random.key(0), x)

  def fill(leaf):
    val = rng.uniform(0.2, 1.0, leaf.shape) * rng.choice([-1.0, 1.0], leaf.shape)
    return jnp.asarray(val, leaf.dtype)

  return jax.tree.map(fill, shapes)


# These checks are about exact zeros and float64 values, not speed: compiling without
# XLA's backend optimizations cuts the compile time (most of each test) by more than half.
_FAST_COMPILE = {"xla_backend_optimization_level": 0}


def _jit(fn, **kw):
  return jax.jit(fn, compiler_options=_FAST_COMPILE, **kw)


def _jacobian(model, params, x, **apply_kwargs):
  """d ctx[b, d, k] / d x[b', d'] as an array (B, D, K, B, D)."""
  fn = lambda p, z: model.apply(p, z, **apply_kwargs)
  return np.asarray(_jit(jax.jacfwd(fn, argnums=1))(params, x))


def _assert_autoregressive(jac):
  """Exact zeros for d' >= d and across examples; all of d' < d is used."""
  B, D, _, _, _ = jac.shape
  nz = np.any(jac != 0, axis=2)  # (B, D, B, D)
  for b in range(B):
    for b2 in range(B):
      if b2 != b:
        assert not nz[b, :, b2, :].any(), "examples in a batch interact"
    dep = nz[b, :, b, :]  # dep[d, d'] : context d depends on x_d'
    upper = np.triu(np.ones((D, D), bool))  # d' >= d, diagonal included
    bad = np.argwhere(dep & upper)
    assert bad.size == 0, f"context d depends on x_d' with d' >= d: {bad[:5]}"
    assert not dep[0].any(), "context of d=0 must be constant in x"
    # At 4x4 with two scales the receptive field covers every earlier pixel
    # (no blind spot), so every strictly-lower entry must be non-zero. This
    # also makes the test fail for a model that ignores its input.
    missing = np.argwhere(~dep & ~upper)
    assert missing.size == 0, f"context d ignores earlier x_d': {missing[:5]}"


@pytest.mark.parametrize("image_shape", [(4, 4, 3), (4, 4, 1)])
def test_autoregressive_property_exact(image_shape):
  with jax.enable_x64(True):
    model = PixelCNNPP(image_shape, dtype=jnp.float64, **SMALL)
    D = int(np.prod(image_shape))
    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, D)))
    params = _random_params(model, x)
    jac = _jacobian(model, params, x)
    assert jac.dtype == np.float64
    assert jac.shape == (2, D, SMALL["context_size"], 2, D)
    _assert_autoregressive(jac)


def test_autoregressive_property_with_dropout():
  """train=True: dropout masks are elementwise, so causality must survive."""
  with jax.enable_x64(True):
    model = PixelCNNPP((4, 4, 3), dtype=jnp.float64, dropout_rate=0.5,
                       **SMALL)
    x = jnp.asarray(np.random.default_rng(2).normal(size=(1, 48)))
    params = _random_params(model, x, seed=3)

    @_jit
    def jac_and_out(params, x, key):
      fn = lambda z: model.apply(params, z, train=True,
                                 rngs={"dropout": key})
      return jax.jacfwd(lambda z: (lambda y: (y, y))(fn(z)), has_aux=True)(x)

    jac0, out0 = jac_and_out(params, x, jax.random.key(4))
    jac0b, out0b = jac_and_out(params, x, jax.random.key(4))
    _, out1 = jac_and_out(params, x, jax.random.key(5))
    _assert_autoregressive(np.asarray(jac0))
    # Deterministic given the 'dropout' rng, and the rng matters.
    np.testing.assert_array_equal(jac0, jac0b)
    np.testing.assert_array_equal(out0, out0b)
    assert not np.allclose(out0, out1)


def test_noise_conditional_context_stays_autoregressive_and_uses_sigma():
  """sigma_embedding > 0 (smoothed-joint training): the level shifts every gated block and
  the head's features, so the context depends on sigma, per example, and still only on
  the earlier pixels (float64 Jacobian on random non-zero parameters)."""
  with jax.enable_x64(True):
    model = PixelCNNPP((4, 4, 1), dtype=jnp.float64, sigma_embedding=5, **SMALL)
    x = jnp.asarray(np.random.default_rng(8).normal(size=(2, 16)))
    sig = jnp.array([0.05, 0.4])
    params = _random_params(model, x, seed=9,
                            init=lambda k, z: model.init(k, z, sigma=sig))
    _assert_autoregressive(_jacobian(model, params, x, sigma=sig))
    both = model.apply(params, x, sigma=sig)
    low = model.apply(params, x, sigma=0.05)
    high = model.apply(params, x, sigma=0.4)
    np.testing.assert_allclose(both[0], low[0], rtol=1e-12)
    np.testing.assert_allclose(both[1], high[1], rtol=1e-12)
    assert float(jnp.max(jnp.abs(low - high))) > 1e-3
    with pytest.raises(ValueError, match="needs sigma"):
      model.apply(params, x)
    plain = PixelCNNPP((4, 4, 1), dtype=jnp.float64, **SMALL)
    with pytest.raises(ValueError, match="without a noise-conditional context"):
      plain.apply(_random_params(plain, x), x, sigma=0.1)


def test_the_pixelcnnpp_smoothed_joint_config_builds_a_noise_conditional_model():
  from csm_jax import config_base, models  # pylint: disable=g-import-not-at-top
  c = config_base.load_config("configs/mnist_pixelcnnpp_joint.py")
  config_base.validate(c)
  assert c.noise.mode == "joint" and c.noise.levels == "continuous"
  assert c.data.scale == "unit"       # the MADE priors' pixel space: the same levels
  c.unlock()
  c.model.nr_filters, c.model.nr_resnet, c.model.num_resolutions = 4, 1, 2
  model = models.get_model(c.model, (4, 4, 1))
  assert model.context_sigma
  params = model.init(jax.random.PRNGKey(0))
  x = jnp.full((2, 16), 0.5, jnp.float32)
  a = model.context(params, x, sigma=0.05)
  b = model.context(params, x, sigma=0.5)
  assert a.shape == (2, 16, c.model.context_size) and float(jnp.max(jnp.abs(a - b))) > 0


def test_shift_leak_is_detected(monkeypatch):
  """Negative control: without the causal shift, the check must fail."""
  monkeypatch.setattr(pixelcnnpp, "shift_down", lambda x: x)
  with jax.enable_x64(True):
    model = PixelCNNPP((4, 4, 1), dtype=jnp.float64, **SMALL)
    x = jnp.asarray(np.random.default_rng(5).normal(size=(1, 16)))
    jac = _jacobian(model, _random_params(model, x), x)
    with pytest.raises(AssertionError, match="d' >= d"):
      _assert_autoregressive(jac)


def test_output_shape_and_dtype():
  model = PixelCNNPP((4, 4, 3), **SMALL)
  x = jnp.asarray(np.random.default_rng(6).normal(size=(2, 48)), jnp.float32)
  params = _random_params(model, x, seed=7)
  assert all(l.dtype == jnp.float32 for l in jax.tree.leaves(params))
  out = _jit(model.apply)(params, x)  # train=False: no rng needed
  assert out.shape == (2, 48, 3) and out.dtype == jnp.float32
  assert np.all(np.isfinite(out))


@pytest.mark.parametrize("image_shape,num_resolutions",
                         [((8, 8, 3), 3), ((8, 4, 1), 3), ((6, 10, 2), 2)])
def test_output_shape_other_sizes(image_shape, num_resolutions):
  cfg = dict(SMALL, num_resolutions=num_resolutions)
  model = PixelCNNPP(image_shape, **cfg)
  D = int(np.prod(image_shape))
  x = jax.ShapeDtypeStruct((3, D), jnp.float32)
  params = jax.eval_shape(model.init, jax.random.key(0), x)
  out = jax.eval_shape(model.apply, params, x)
  assert out.shape == (3, D, cfg["context_size"])


def test_bad_num_resolutions_raises():
  model = PixelCNNPP((6, 6, 3), **dict(SMALL, num_resolutions=3))
  with pytest.raises(ValueError, match="divisible by 4"):
    jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 108)))


@pytest.mark.parametrize("shape", [(2, 47), (2, 49), (2, 4, 4, 3)])
def test_bad_input_shape_raises(shape):
  model = PixelCNNPP((4, 4, 3), **SMALL)
  with pytest.raises(ValueError, match="D = H\\*W\\*C"):
    jax.eval_shape(model.init, jax.random.key(0), jnp.zeros(shape))


def _ar_csm_model(image_shape, dtype=jnp.float64):
  """PixelCNN++ context + the AR-CSM score head, as the registry builds it."""
  backbone = PixelCNNPP(image_shape, dtype=dtype, dropout_rate=0.0, **SMALL)
  head = heads.ScoreHead(hidden_sizes=(8,), scale_by_sigma=True)
  D = int(np.prod(image_shape))
  return ARModel(net=ARNet(backbone=backbone, head=head, kind="score"), dim=D,
                 rank=np.arange(D), kind="score", data_shape=tuple(image_shape))


@pytest.mark.slow
def test_ar_csm_scores_fast_diagonal_and_causality():
  """PixelCNN++ + score head, float64: the one-jvp diagonal (AR-CSM fast path) equals
  the D one-hot jvps of the reference, and the scores' Jacobian is exactly lower
  triangular in raster/channel order (s_d depends on x_<=d only, channels included)."""
  with jax.enable_x64(True):
    model = _ar_csm_model((4, 4, 3))
    rng = np.random.default_rng(8)
    x = jnp.asarray(rng.uniform(-1, 1, size=(2, 48)))
    sigma = jnp.asarray(rng.choice([0.05, 0.3, 1.0], size=(2, 48)))
    params = _random_params(
        model, x, seed=9, init=lambda k, z: model.net.init(k, z, jnp.ones_like(z)))

    @_jit
    def run(params, x, sigma):
      fast = model.score_and_diag(params, model.context(params, x), x, sigma)
      f = lambda y: model.full_score(params, y, sigma)
      ref = derivatives.jacobian_diagonal(f, x)
      jac = jax.jacfwd(f)(x)  # (B, D, B, D)
      return fast, ref, jac

    (s, ds), (s_ref, diag_ref), jac = jax.tree.map(np.asarray, run(params, x, sigma))
    assert ds.dtype == np.float64
    np.testing.assert_allclose(s, s_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ds, diag_ref, rtol=1e-10, atol=1e-12)
    assert np.all(np.abs(ds) > 0)
    for b in range(2):
      jb = jac[b, :, b, :]
      assert not np.any(np.triu(jb, k=1)), "a score depends on a later sub-pixel"
      np.testing.assert_allclose(np.diagonal(jb), ds[b], rtol=1e-10, atol=1e-12)
      assert np.all(np.tril(jb, k=-1)[np.tril_indices(48, -1)] != 0)
    assert not np.any(jac[0, :, 1, :]) and not np.any(jac[1, :, 0, :])
