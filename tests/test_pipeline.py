"""The device-resident input pipeline and several train steps per dispatch.

Ground truth: the float64 numpy preprocessing of `Preprocessor.from_pixels` fed the same
dequantization noise, the host pipeline's batch order, and the one-step-per-dispatch loop.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from csm_jax import config_base
from csm_jax import data as data_lib
from csm_jax import pipeline
from csm_jax import sharding
from csm_jax import train
from tests.helpers import tiny_train_config


@pytest.mark.parametrize("scale,logit,dequantize", [
    ("unit", 1e-6, True), ("unit", 0.05, True), ("unit", 0.0, True),
    ("symmetric", 0.0, True), ("symmetric", 0.0, False)])
def test_device_forward_matches_float64_host_map(scale, logit, dequantize):
  pre = data_lib.Preprocessor(shape=(3, 4, 1), discrete=True, dequantize=dequantize,
                              scale=scale, logit_lambda=logit)
  rng = np.random.default_rng(0)
  x = rng.integers(0, 256, size=(64, 3, 4, 1)).astype(np.uint8)
  x[0], x[1] = 0, 255                          # the extremes, where logit is steepest
  u = rng.random((64, 12)).astype(np.float32)
  u[0], u[1] = 0.0, np.float32(1 - 2 ** -24)   # noise at its ends too
  want = pre.from_pixels(x.reshape(64, -1).astype(np.float64)
                         + (u.astype(np.float64) if dequantize else 0.0), np.float64)
  got = np.asarray(jax.jit(pre.device_forward)(jnp.asarray(x), jnp.asarray(u)),
                   np.float64)
  assert got.shape == (64, 12) and got.dtype == np.float64
  # float32 rounding of a value of size |want| (logit reaches about 14 at lambda 1e-6)
  np.testing.assert_allclose(got, want, rtol=2e-6, atol=2e-6)
  if not dequantize:  # no noise: the numpy map of the stored pixels
    np.testing.assert_allclose(got, pre(x), rtol=1e-6, atol=1e-6)


def _mnist_like(n=40, seed=0):
  rng = np.random.default_rng(seed)
  train_x = rng.integers(0, 256, size=(n, 4, 4, 1)).astype(np.uint8)
  test_x = rng.integers(0, 256, size=(8, 4, 4, 1)).astype(np.uint8)
  return data_lib.Arrays(train=train_x, test=test_x, shape=(4, 4, 1), discrete=True)


def _config(**kw):
  return tiny_train_config(**{"training.batch_size": 8, **kw})


def test_auto_picks_device_for_small_arrays_and_host_for_large():
  arrays = _mnist_like()
  c = _config()
  assert pipeline.choose(c.data, arrays) == "device"
  c.data.device_max_mb = arrays.train.nbytes / 2 ** 20 * 0.5
  assert pipeline.choose(c.data, arrays) == "host"
  c.data.pipeline = "device"
  assert pipeline.choose(c.data, arrays) == "device"
  c.data.pipeline = "gpu"
  with pytest.raises(config_base.ConfigError, match="data.pipeline"):
    pipeline.choose(c.data, arrays)


def test_device_batches_follow_the_host_order_with_their_own_noise():
  arrays = _mnist_like()
  c = _config(**{"data.pipeline": "device", "data.logit_lambda": 1e-6})
  pre = data_lib.get_preprocessor(c.data, arrays)
  mesh = sharding.data_mesh()
  dev = pipeline.DevicePipeline(c, arrays, pre, mesh)
  host = pipeline.HostPipeline(c, arrays, pre, mesh)
  for step in (0, 3, 7):  # 40 examples, batch 8: step 7 is in the second epoch
    idx = data_lib.batch_indices(40, 8, step, c.seed)
    np.testing.assert_array_equal(dev.indices(step)[0], idx)
    got = np.asarray(dev.train(step), np.float64)
    # invert the noise from the batch: pixel + u = sigmoid-inverse of the logit map
    lam = 1e-6
    p = 1.0 / (1.0 + np.exp(-got))
    pix = (p - lam) / (1 - 2 * lam) * 256.0
    u = pix - arrays.train[idx].reshape(8, -1)
    assert np.all(u > -1e-3) and np.all(u < 1 + 1e-3), (u.min(), u.max())
    want_mid = host.pre.from_pixels(arrays.train[idx].reshape(8, -1) + u, np.float64)
    np.testing.assert_allclose(got, want_mid, rtol=1e-5, atol=1e-5)
    # a pure function of the step: a new pipeline gives the same bits
    again = pipeline.DevicePipeline(c, arrays, pre, mesh).train(step)
    np.testing.assert_array_equal(np.asarray(again), np.asarray(dev.train(step)))
  # the noise differs between steps and is uniform-looking
  u_all = []
  for step in range(5):
    idx = data_lib.batch_indices(40, 8, step, c.seed)
    y = np.asarray(dev.train(step), np.float64)
    p = 1.0 / (1.0 + np.exp(-y))
    u_all.append(((p - 1e-6) / (1 - 2e-6) * 256.0 - arrays.train[idx].reshape(8, -1)).ravel())
  u_all = np.concatenate(u_all)
  assert abs(u_all.mean() - 0.5) < 0.05 and abs(u_all.var() - 1 / 12) < 0.02


def test_chunk_length_stops_at_every_boundary():
  assert pipeline.chunk_length(0, 10, (50, 100, 0), 1000) == 10
  assert pipeline.chunk_length(45, 10, (50, 100, 0), 1000) == 5
  assert pipeline.chunk_length(95, 10, (50, 30, 0), 97) == 2
  assert pipeline.chunk_length(7, 1, (5,), 100) == 1
  # every dispatch of a run from 0 ends where one would start after a resume
  ends, step = [], 0
  while step < 137:
    step += pipeline.chunk_length(step, 8, (20, 30), 137)
    ends.append(step)
  assert {20, 30, 40, 60, 80, 90, 100, 120, 137} <= set(ends)
  assert all(b - a <= 8 for a, b in zip([0] + ends, ends))


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["host", "device"])
def test_several_steps_per_dispatch_equal_one_per_dispatch(kind):
  arrays = _mnist_like(n=64)
  out = {}
  for k in (1, 4):
    c = _config(**{"data.pipeline": kind, "training.steps_per_dispatch": k,
                   "training.num_steps": 12, "training.log_every": 6,
                   "training.eval_every": 0, "data.logit_lambda": 1e-6})
    s = train.setup(c, arrays=arrays)
    assert s.batcher.kind == kind
    state, info = train.train_loop(s, log=lambda _: None)
    assert int(state.step) == 12 and info["pipeline"] == kind
    out[k] = state
  for a, b in zip(jax.tree.leaves(out[1].params), jax.tree.leaves(out[4].params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_bench_step_reports_loop_efficiency_and_flops(tmp_path):
  from experiments import bench_step  # pylint: disable=g-import-not-at-top
  out = tmp_path / "bench"
  bench_step.main([f"--out={out}", "--repeats=1", "--inner=1", "--loop_steps=4",
                   "--loop_examples=64", "--steps_per_dispatch=2",
                   "--config.model.hidden_sizes=(16,)", "--config.model.context_size=2",
                   "--config.model.head_hidden=(8,)", "--config.training.batch_size=8"])
  import json  # pylint: disable=g-import-not-at-top
  r = json.loads((out / "results.json").read_text())
  assert set(r["loop"]["runs"]) == {"host_k1", "device_k1", "device_k2"}
  for run in r["loop"]["runs"].values():
    assert run["loop_seconds_per_step"] > 0 and run["efficiency"] > 0
  assert r["loop"]["step_alone_seconds"] > 0
  for name in ("csm", "forward_backward", "mle"):
    assert r["flops_per_step"][name] > 0 and r["flops_per_sec"][name] > 0
  # CSM's derivative term costs flops on top of the forward-backward pass
  assert r["flops_per_step"]["csm"] > r["flops_per_step"]["forward_backward"]
