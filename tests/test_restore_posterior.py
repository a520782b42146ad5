"""Observation models and posterior samplers of csm_jax/restore."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from csm_jax import config_base
from csm_jax.data import preprocess
from csm_jax.models import known
from csm_jax.restore import joint as joint_lib
from csm_jax.restore import observations as obs_lib
from csm_jax.restore import posterior
from tests.helpers import tiny_model

SPACE = obs_lib.PixelSpace()          # identity: model space is image space


def _gaussian_setup(sigma_min=0.3, sigma_y=0.4, dim=3, seed=0):
  m = known.random_gaussian_ar(dim, seed=seed, std_range=(0.3, 0.8))
  a = np.linalg.inv(np.eye(dim) - m.w)
  mu0, s0 = a @ m.b, a @ np.diag(m.v + sigma_min ** 2) @ a.T     # prior q_{sigma_min}
  y = np.random.default_rng(seed).multivariate_normal(mu0, s0 + sigma_y ** 2 * np.eye(dim))
  prec = np.linalg.inv(s0) + np.eye(dim) / sigma_y ** 2
  cov = np.linalg.inv(prec)
  mean = cov @ (np.linalg.solve(s0, mu0) + y / sigma_y ** 2)
  obs = obs_lib.GaussianNoise(sigma_y, (dim,), bounded=False)
  joint = joint_lib.make_joint(m, joint_lib.Box(-8.0, 8.0, 97, True))
  return m, joint, obs, y.astype(np.float32), mean, cov


def _check_moments(samples, mean, cov, n_se=5.0, cov_tol=0.12):
  """Sample mean within n_se standard errors; covariance within cov_tol (relative to
  the largest variance) of the analytic one."""
  n = len(samples)
  se = np.sqrt(np.diag(cov) / n)
  assert np.all(np.abs(samples.mean(0) - mean) < n_se * se + 1e-3), (samples.mean(0), mean)
  emp = np.cov(samples.T)
  assert np.abs(emp - cov).max() < cov_tol * np.diag(cov).max(), (emp, cov)


def _run(m, joint, obs, y, x_init=None, **kw):
  st = posterior.Settings(**kw)
  sampler = posterior.make_sampler(m, joint, obs, SPACE, st)
  return sampler(None, jnp.asarray(y[None]), jax.random.PRNGKey(1),
                 None if x_init is None else jnp.asarray(x_init[None], jnp.float32))


@pytest.mark.slow
def test_annealed_langevin_matches_the_analytic_gaussian_posterior():
  m, joint, obs, y, mean, cov = _gaussian_setup()
  out = _run(m, joint, obs, y, sigmas=(1.0, 0.6, 0.3), steps_per_level=150, step_lr=4e-3,
             chains=1000)
  _check_moments(np.asarray(out["chains"][0], np.float64), mean, cov)
  np.testing.assert_allclose(out["mean"][0], np.asarray(out["chains"][0]).mean(0), rtol=1e-5)


@pytest.mark.slow
def test_mala_from_the_observation_converges_and_keeps_the_exact_posterior():
  m, joint, obs, y, mean, cov = _gaussian_setup()
  out = _run(m, joint, obs, y, sigmas=(0.3,), method="mala", mala_steps=100,
             mala_step=0.05, chains=1000)
  _check_moments(np.asarray(out["chains"][0], np.float64), mean, cov)
  assert 0.3 < float(out["accept"]) < 1.0
  # started in the exact posterior with a large step, it stays there
  x0 = np.random.default_rng(3).multivariate_normal(mean, cov, size=1000)
  out = _run(m, joint, obs, y, x_init=x0, sigmas=(0.3,), method="mala", mala_steps=10,
             mala_step=0.3, chains=1000)
  _check_moments(np.asarray(out["chains"][0], np.float64), mean, cov)
  assert float(out["accept"]) < 0.9


@pytest.mark.slow
def test_grid_gibbs_keeps_and_reaches_the_analytic_posterior():
  m, joint, obs, y, mean, cov = _gaussian_setup()
  x0 = np.random.default_rng(4).multivariate_normal(mean, cov, size=1000)
  out = _run(m, joint, obs, y, x_init=x0, sigmas=(0.3,), method="gibbs", gibbs_sweeps=1,
             gibbs_values=97, chains=1000)
  _check_moments(np.asarray(out["chains"][0], np.float64), mean, cov)
  out = _run(m, joint, obs, y, sigmas=(0.3,), method="gibbs", gibbs_sweeps=3,
             gibbs_values=97, chains=1000)
  _check_moments(np.asarray(out["chains"][0], np.float64), mean, cov)


def test_map_is_the_posterior_mode():
  m, joint, obs, y, mean, _ = _gaussian_setup()
  out = _run(m, joint, obs, y, sigmas=(0.3,), method="mala", chains=1, map_steps=3000,
             map_lr=0.02)
  np.testing.assert_allclose(out["map"][0], mean, atol=2e-3)   # Gaussian: mode = mean


@pytest.mark.slow
def test_salt_and_pepper_posterior_matches_brute_force_enumeration():
  """2 pixels, both observed extreme: the corruption indicators and x by enumeration of
  c in {kept, corrupted}^2 and integration over the sampler's own value grid. (The
  window couples the pixels strongly: grid Gibbs needs ~15 sweeps to forget its start.)"""
  m = known.GaussianAR(np.array([[0.0, 0.0], [0.6, 0.0]]), np.array([0.4, 0.2]),
                       np.array([0.09, 0.04]))
  box = joint_lib.Box(-1.5, 2.5, 81, True)
  joint = joint_lib.make_joint(m, box)
  obs = obs_lib.SaltPepper(0.3, (2,), tau=0.08)
  y = np.array([0.0, 1.0], np.float32)
  sigma = 0.05
  g = np.linspace(box.lo, box.hi, 81)
  xx = np.stack(np.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
  log_prior = np.asarray(joint.log_prob(None, jnp.asarray(xx, jnp.float32), sigma), np.float64)
  window = np.exp(-(y - xx) ** 2 / (2 * 0.08 ** 2))
  post = {}
  for c in np.ndindex(2, 2):       # 0 kept, 1 corrupted
    f = np.where(np.array(c) == 0, 0.7 * window, 0.15).prod(-1)
    post[c] = np.exp(log_prior - log_prior.max()) * f
  z = sum(v.sum() for v in post.values())
  p_corrupt = [sum(v.sum() for c, v in post.items() if c[i] == 1) / z for i in range(2)]
  mean_x = sum((v[:, None] * xx).sum(0) for v in post.values()) / z
  out = _run(m, joint, obs, y, sigmas=(sigma,), method="gibbs", gibbs_sweeps=20,
             gibbs_values=81, chains=2000)
  chains = np.asarray(out["chains"][0], np.float64)
  rb = np.asarray(obs.corruption_probability(jnp.asarray(y[None]), jnp.asarray(chains)))
  np.testing.assert_allclose(rb.mean(0), p_corrupt, atol=0.03)
  np.testing.assert_allclose(chains.mean(0), mean_x, atol=4 * chains.std(0).max() / np.sqrt(2000))
  assert 0.05 < min(p_corrupt) and max(p_corrupt) < 0.95   # both really ambiguous


def _tiny_image_setup(shape=(4, 4, 1)):
  config = config_base.default_config()
  config.unlock()
  model = tiny_model(int(np.prod(shape)))
  model = model.__class__(**{**model.__dict__, "data_shape": shape})
  pre = preprocess.Preprocessor(shape=shape, discrete=True, dequantize=True, scale="unit",
                                logit_lambda=0.0)
  params = model.init(jax.random.PRNGKey(0))
  config.noise.sigma_max, config.noise.sigma_min, config.noise.num_levels = 0.5, 0.05, 3
  config.restore.steps_per_level = 3
  config.restore.chains = 2
  config.restore.step_lr = 1e-3
  images = np.random.default_rng(0).integers(0, 256, (3,) + shape) / 255.0
  return config, model, params, pre, images


# One mask in the fast tier; the others in the slow tier.
@pytest.mark.parametrize("mask", [
    m if m == "bottom" else pytest.param(m, marks=pytest.mark.slow)
    for m in obs_lib.MASKS])
def test_inpainting_keeps_every_observed_pixel_exactly(mask):
  config, model, params, pre, images = _tiny_image_setup()
  config.restore.task, config.restore.mask = "inpaint", mask
  config.restore.map_steps = 2
  obs = obs_lib.from_config(config.restore, images.shape[1:])
  y = obs.corrupt(0, images)
  res = posterior.restore(model, params, config, y, rng=0, preprocessor=pre)
  keep = obs_lib.make_mask(mask, images.shape[1:])
  assert 0 < keep.sum() < keep.size
  for key in ("mean", "sample", "map"):
    assert res[key].shape == images.shape
    np.testing.assert_array_equal(res[key][:, keep], y[:, keep])
    assert np.isfinite(res[key]).all()


@pytest.mark.parametrize("task", [    # the whole pipeline: one task in the fast tier
    "gaussian", pytest.param("salt_pepper", marks=pytest.mark.slow),
    pytest.param("superres", marks=pytest.mark.slow)])
def test_restore_library_call_runs_every_task(task):
  config, model, params, pre, images = _tiny_image_setup()
  config.restore.mala_steps = 2
  obs = obs_lib.from_config(config.restore if task == "gaussian" else
                            _with(config.restore, task=task), images.shape[1:])
  y = obs.corrupt(1, images)
  res = posterior.restore(model, params, config, y, task=task, rng=0, preprocessor=pre)
  assert res["mean"].shape == images.shape and np.isfinite(res["mean"]).all()
  assert 0.0 <= res["mean"].min() and res["mean"].max() <= 1.0
  assert 0.0 <= res["accept"] <= 1.0
  if task == "salt_pepper":   # pixels that are neither 0 nor 255 were kept: pinned
    kept = (y > 0) & (y < 1)
    np.testing.assert_array_equal(res["sample"][kept], y[kept])


def _with(rc, **kw):
  import types
  return types.SimpleNamespace(**{**dict(rc.items()), **kw})


def test_pixel_space_round_trip():
  for pre in (preprocess.Preprocessor((2, 2), True, True, "unit", 0.0),
              preprocess.Preprocessor((2, 2), True, False, "symmetric", 0.0),
              preprocess.Preprocessor((2, 2), True, True, "unit", 1e-6)):
    space = obs_lib.PixelSpace.from_preprocessor(pre)
    pix = np.array([[0, 1, 128, 255]])
    x = pre(pix)                                   # dequantization midpoint
    np.testing.assert_allclose(space.from_image(jnp.asarray(pix / 255.0)), x, rtol=1e-4,
                               atol=1e-5)
    np.testing.assert_allclose(space.to_image(jnp.asarray(x)), pix / 255.0, atol=1e-5)


def test_downsample_pools_and_its_likelihood_peaks_at_the_truth():
  obs = obs_lib.Downsample(2, 0.01, (4, 4))
  img = np.random.default_rng(0).random((2, 4, 4))
  y = obs.corrupt(0, img)
  assert y.shape == (2, 2, 2)
  np.testing.assert_allclose(y, img.reshape(2, 2, 2, 2, 2).mean((2, 4)), atol=0.05)
  u = jnp.asarray(img.reshape(2, -1), jnp.float32)
  g = jax.grad(lambda v: obs.log_likelihood(jnp.asarray(y), v).sum())(u)
  assert np.isfinite(g).all()


BAD = [
    (lambda: obs_lib.Missing(np.ones((3, 3), bool), (4, 4)), "mask"),
    (lambda: obs_lib.SaltPepper(1.5, (4, 4)), "p"),
    (lambda: obs_lib.SaltPepper(-0.1, (4, 4)), "p"),
    (lambda: obs_lib.GaussianNoise(0.0, (4, 4)), "sigma"),
    (lambda: obs_lib.GaussianNoise(-1.0, (4, 4)), "sigma"),
    (lambda: obs_lib.Downsample(2, 0.0, (4, 4)), "sigma"),
    (lambda: obs_lib.Downsample(3, 0.1, (4, 4)), "shape"),
    (lambda: obs_lib.GaussianNoise(0.1, (4, 4)).corrupt(0, np.full((1, 4, 4), 1.5)), "images"),
    (lambda: obs_lib.GaussianNoise(0.1, (4, 4)).corrupt(0, np.zeros((1, 5, 4))), "images"),
    (lambda: obs_lib.check_observation(obs_lib.Missing(np.ones((4, 4), bool), (4, 4)),
                                       np.zeros((2, 3))), "y"),
    (lambda: obs_lib.make_mask("left", (4, 4)), "mask"),
    (lambda: posterior.Settings(sigmas=(0.1,), method="hmc"), "method"),
    (lambda: posterior.restore(tiny_model(4, head="discretized_logistic"), None,
                               config_base.default_config(), np.zeros((1, 4))),
     "restore.method"),
    (lambda: posterior.restore(tiny_model(4), None, config_base.default_config(),
                               np.zeros((1, 4)), task="deblur"), "task"),
]


@pytest.mark.parametrize("call,word", BAD)
def test_bad_inputs_raise_one_line_errors_naming_the_argument(call, word):
  with pytest.raises(ValueError) as e:
    call()
  msg = str(e.value)
  assert "\n" not in msg and msg.startswith(word), msg


def _bad_user_inputs(tmp):
  """(file contents writer, expected words): each must be one ConfigError line."""
  good = np.zeros((2, 4, 4, 1), np.uint8)

  def npz(name, **arrays):
    np.savez(tmp / name, **arrays)
    return tmp / name

  def raw(name, data):
    (tmp / name).write_bytes(data)
    return tmp / name

  return [
      (tmp / "absent.npz", "no such file"),
      (raw("notes.txt", b"hello"), ".png or .npz"),
      (raw("torn.npz", b"PK\x03\x04 not really a zip"), "not a readable npz"),
      (raw("torn.png", b"\x89PNG\r\n\x1a\n broken"), "not a readable PNG"),
      (npz("obj.npz", y=np.array([{"a": 1}], dtype=object)), "not a readable npz"),
      (npz("noy.npz", images=good), "unexpected arrays"),
      (npz("noy2.npz"), "no array 'y'"),
      (npz("shape.npz", y=np.zeros((2, 5, 4), np.uint8)), "shape"),
      (npz("dtype.npz", y=good.astype(np.int64)), "dtype"),
      (npz("nan.npz", y=np.full((4, 4), np.nan)), "non-finite"),
      (npz("truthn.npz", y=good, truth=good[:1]), "'truth' has 1 images"),
      (npz("mask01.npz", y=good, mask=np.full((4, 4, 1), 3)), "'mask' must be boolean"),
  ]


def test_user_input_files_are_read_safely_and_bad_ones_are_one_line(tmp_path):
  """config.restore.input: npz (no pickles) or PNG; each bad file is one ConfigError line
  naming restore.input and the file."""
  from PIL import Image
  from csm_jax.restore import inputs
  rc = config_base.default_config().restore
  shape = (4, 4, 1)
  for path, words in _bad_user_inputs(tmp_path):
    rc.input = str(path)
    with pytest.raises(config_base.ConfigError) as e:
      inputs.load(rc, shape, shape)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("restore.input ") and str(path) in msg, msg
    assert words in msg, msg
  # Good files: uint8 and float npz, one image or a batch; a grayscale (H, W) batch.
  img = np.random.default_rng(0).integers(0, 256, (3, 4, 4, 1)).astype(np.uint8)
  np.savez(tmp_path / "u8.npz", y=img, truth=img)
  rc.input = str(tmp_path / "u8.npz")
  got = inputs.load(rc, shape, shape)
  np.testing.assert_allclose(got.y, img / 255.0)
  np.testing.assert_allclose(got.truth, img / 255.0)
  np.savez(tmp_path / "f.npz", y=img[..., 0] / 255.0)
  rc.input = str(tmp_path / "f.npz")
  np.testing.assert_allclose(inputs.load(rc, shape, shape).y, img / 255.0)
  Image.fromarray(img[1, ..., 0]).save(tmp_path / "a.png")
  rc.input = str(tmp_path / "a.png")
  np.testing.assert_array_equal(inputs.load(rc, shape, shape).y, img[1:2] / 255.0)
  Image.fromarray(np.zeros((5, 4), np.uint8)).save(tmp_path / "big.png")
  rc.input = str(tmp_path / "big.png")
  with pytest.raises(config_base.ConfigError, match="restore.input .*shape"):
    inputs.load(rc, shape, shape)
  # A mask belongs to inpainting only; a mask PNG must exist.
  rc.input, rc.input_mask = str(tmp_path / "a.png"), str(tmp_path / "a.png")
  with pytest.raises(config_base.ConfigError, match="only used by task 'inpaint'"):
    inputs.load(rc, shape, shape)
  rc.task, rc.input_mask = "inpaint", str(tmp_path / "nomask.png")
  with pytest.raises(config_base.ConfigError, match="restore.input_mask .*no such file"):
    inputs.load(rc, shape, shape)
  rc.input_mask = str(tmp_path / "a.png")
  np.testing.assert_array_equal(inputs.load(rc, shape, shape).mask, img[1] > 0)


def test_restore_config_fields_are_validated():
  for field, value in (("p", 1.5), ("sigma", 0.0), ("method", "hmc"), ("chains", 0),
                       ("mask", "left"), ("task", "deblur")):
    c = config_base.default_config()
    c.restore[field] = value
    with pytest.raises(config_base.ConfigError, match=f"restore.{field}"):
      config_base.validate(c)
  config_base.validate(config_base.default_config())


@pytest.mark.slow
def test_mode_restore_writes_png_and_json(tmp_path):
  """A tiny image model trained for a few steps; --mode=restore's library entry writes
  W/restore/restore_<task>_<step>.{png,json} with PSNRs."""
  import json
  import os
  from csm_jax import train
  from csm_jax.restore import entry
  from tests.helpers import tiny_train_config
  rng = np.random.default_rng(0)
  imgs = (rng.random((256, 4, 4, 1)) < 0.3).astype(np.uint8) * 255
  np.savez(tmp_path / "data.npz", train=imgs, test=imgs[:32])
  config = tiny_train_config(**{"data.dataset": "npz", "data.path": str(tmp_path / "data.npz"),
                                "data.logit_lambda": 0.0, "training.num_steps": 20,
                                "likelihood.num_examples": 0, "eval.batch_size": 32})
  wd = str(tmp_path / "w")
  train.train_and_evaluate(config, wd)
  config.restore.task, config.restore.mask = "inpaint", "bottom"
  config.restore.num_images, config.restore.steps_per_level = 4, 2
  config.restore.map_steps = 2
  m = entry.restore_workdir(config, wd, log=lambda s: None)
  # the trained model's joint has finite gradients at every level, in and out of the box
  from csm_jax import inference, noise as noise_lib
  inf = inference.build(config)
  params, _ = inference.restore(inf, wd)
  j = joint_lib.make_joint(inf.model, joint_lib.default_box(inf.pre))
  x = jnp.asarray(inf.pre(imgs[:8], np.random.default_rng(0)))
  x = x.at[0].set(-3.0).at[1].set(4.0)
  for s in noise_lib.sigmas_from_config(config.noise):
    v, g = j.value_and_grad(params, x, float(s))
    assert np.isfinite(v).all() and np.isfinite(g).all()
  files = sorted(os.listdir(os.path.join(wd, "restore")))
  assert files == ["restore_inpaint_00000020.json", "restore_inpaint_00000020.npz",
                   "restore_inpaint_00000020.png"]
  with open(os.path.join(wd, "restore", files[0])) as f:
    saved = json.load(f)
  for key in ("psnr_corrupted", "psnr_mean", "psnr_sample", "psnr_map"):
    assert np.isfinite(saved[key]["mean"]) and saved[key] == m[key]

  # The user's own images: an npz with its own mask per image and the truth, then a PNG
  # with a mask PNG (no truth: no PSNR). Observed pixels come back exactly.
  from PIL import Image
  truth = imgs[40:43]
  masks = rng.random(truth.shape) < 0.5
  y = np.where(masks, truth, 0).astype(np.uint8)
  np.savez(tmp_path / "mine.npz", y=y, mask=masks, truth=truth)
  config.restore.input = str(tmp_path / "mine.npz")
  mine = entry.restore_workdir(config, wd, log=lambda s: None)
  assert mine["images"] == "input" and mine["num_images"] == 3
  assert np.isfinite(mine["psnr_mean"]["mean"])
  with np.load(os.path.join(wd, "restore", "restore_inpaint_input_00000020.npz")) as z:
    out = {k: z[k] for k in z}
  for key in ("mean", "sample", "map"):
    assert out[key].shape == (3, 4, 4, 1)
    np.testing.assert_array_equal(out[key][masks], (y / 255.0).astype(np.float32)[masks])
  Image.fromarray(y[0, ..., 0]).save(tmp_path / "one.png")
  Image.fromarray(masks[0, ..., 0].astype(np.uint8) * 255).save(tmp_path / "one_mask.png")
  config.restore.input = str(tmp_path / "one.png")
  config.restore.input_mask = str(tmp_path / "one_mask.png")
  one = entry.restore_workdir(config, wd, log=lambda s: None)
  assert one["num_images"] == 1 and "psnr_mean" not in one
  with np.load(os.path.join(wd, "restore", "restore_inpaint_input_00000020.npz")) as z:
    np.testing.assert_array_equal(z["mean"][0][masks[0]],
                                  (y[0] / 255.0).astype(np.float32)[masks[0]])


@pytest.mark.parametrize("task,method", [   # each sampler once in the fast tier
    pytest.param("inpaint_suffix", "mala", marks=pytest.mark.slow),
    ("inpaint_suffix", "gibbs"), ("superres", "mala")])
def test_linear_observations_match_the_analytic_posterior(task, method):
  """A GaussianAR on a 2x2 image: the bottom half missing (a suffix of the order: the
  exact posterior is the model's conditional given the observed prefix, what the
  sequential sampler draws) and 2x super-resolution (y = mean of the 4 pixels + noise)
  have Gaussian posteriors; MALA's chains, and grid Gibbs's (which skips the pinned
  pixels), match their mean and covariance."""
  m = known.random_gaussian_ar(4, seed=2, std_range=(0.3, 0.6))
  sigma_min = 0.3
  a = np.linalg.inv(np.eye(4) - m.w)
  mu0, s0 = a @ m.b, a @ np.diag(m.v + sigma_min ** 2) @ a.T
  joint = joint_lib.make_joint(m, joint_lib.Box(-8.0, 8.0, 97, True))
  truth = np.random.default_rng(5).multivariate_normal(mu0, s0)
  if task == "inpaint_suffix":
    keep = np.array([[True, True], [False, False]])
    obs = obs_lib.Missing(keep, (2, 2), bounded=False)
    y = np.where(keep.ravel(), truth, 0.0)
    o, f = np.arange(2), np.arange(2, 4)
    mean = np.concatenate([y[o], mu0[f] + s0[np.ix_(f, o)] @ np.linalg.solve(
        s0[np.ix_(o, o)], y[o] - mu0[o])])
    cov = np.zeros((4, 4))
    cov[np.ix_(f, f)] = s0[np.ix_(f, f)] - s0[np.ix_(f, o)] @ np.linalg.solve(
        s0[np.ix_(o, o)], s0[np.ix_(o, f)])
  else:
    obs = obs_lib.Downsample(2, 0.2, (2, 2))
    amat = np.full((1, 4), 0.25)
    y = amat @ truth + 0.1
    prec = np.linalg.inv(s0) + amat.T @ amat / 0.04
    cov = np.linalg.inv(prec)
    mean = cov @ (np.linalg.solve(s0, mu0) + amat.T @ y / 0.04)
  if method == "mala":
    out = _run(m, joint, obs, y.astype(np.float32), sigmas=(sigma_min,), method="mala",
               mala_steps=150, mala_step=0.05, chains=1000)
  else:
    out = _run(m, joint, obs, y.astype(np.float32), sigmas=(sigma_min,), method="gibbs",
               gibbs_sweeps=6, gibbs_values=97, chains=1000)
  chains = np.asarray(out["chains"][0], np.float64)
  if task == "inpaint_suffix":
    np.testing.assert_array_equal(chains[:, :2], np.broadcast_to(y[:2].astype(np.float32),
                                                                 (1000, 2)))
  _check_moments(chains, mean, cov)
  if task == "superres":   # the restored image, downsampled, is within the noise of y
    assert abs(float(chains.mean(0).mean()) - float(y[0])) < 2 * 0.2
