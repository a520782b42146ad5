"""The classical restorers (csm_jax/restore/classical.py) on a synthetic smooth image."""

import numpy as np
import pytest

pytest.importorskip("skimage")
pytest.importorskip("bm3d")
pytest.importorskip("cv2")

from csm_jax.restore import classical  # pylint: disable=g-import-not-at-top,wrong-import-position


def _smooth(n=2, size=32, channels=None):
  """n smooth images in [0.1, 0.9]: sinusoids and a Gaussian blob, float32."""
  u = np.linspace(0, 1, size)
  yy, xx = np.meshgrid(u, u, indexing="ij")
  imgs = []
  for i in range(n):
    a = (0.5 + 0.2 * np.sin(2 * np.pi * (xx + 0.3 * i)) * np.cos(np.pi * yy)
         + 0.2 * np.exp(-((xx - 0.5) ** 2 + (yy - 0.4 - 0.1 * i) ** 2) / 0.05))
    imgs.append(np.clip(a, 0.1, 0.9))
  x = np.stack(imgs).astype(np.float32)
  if channels:
    x = np.stack([x * (0.8 + 0.1 * c) + 0.05 * c for c in range(channels)], -1)
  return x


def _psnr(x, y):
  return float(10 * np.log10(1.0 / np.mean((np.asarray(x, np.float64) - y) ** 2)))


def _salt_pepper(x, p, rng):
  hit = rng.random(x.shape) < p
  return np.where(hit, (rng.random(x.shape) < 0.5).astype(x.dtype), x).astype(x.dtype)


def test_gaussian_restorers_improve_psnr():
  x = _smooth()
  y = (x + 0.1 * np.random.default_rng(0).standard_normal(x.shape)).astype(np.float32)
  fns = classical.restorers_for("gaussian", sigma=0.1)
  assert set(fns) == {"bm3d", "nl_means", "tv_chambolle", "wavelet", "wiener"}
  for name, fn in fns.items():
    out = fn(y)
    assert out.shape == y.shape and out.dtype == np.float32, name
    assert _psnr(x, out) > _psnr(x, y) + 3, (name, _psnr(x, out), _psnr(x, y))


def test_salt_pepper_restorers_improve_psnr():
  x = _smooth()
  y = _salt_pepper(x, 0.1, np.random.default_rng(1))
  fns = classical.restorers_for("salt_pepper", p=0.1)
  assert set(fns) == {"median3x3", "adaptive_median", "decision_median"}
  for name, fn in fns.items():
    out = fn(y)
    assert out.shape == y.shape and out.dtype == np.float32, name
    assert _psnr(x, out) > _psnr(x, y) + 10, (name, _psnr(x, out), _psnr(x, y))


def test_adaptive_median_keeps_pixels_that_are_not_extremes():
  i, j = np.meshgrid(np.arange(32), np.arange(32), indexing="ij")
  x = np.stack([0.1 + (i + 2.3 * j) / 120.0] * 2).astype(np.float32)  # no local extremes
  y = _salt_pepper(x, 0.1, np.random.default_rng(2))
  out = classical.adaptive_median(y)
  clean = (y > 0) & (y < 1)
  clean[:, [0, -1], :] = clean[:, :, [0, -1]] = False   # edges: reflected ties
  np.testing.assert_array_equal(out[clean], y[clean])
  assert _psnr(x, out) > _psnr(x, classical.median3x3(y))


def test_decision_median_replaces_only_the_extremes_by_their_window_median():
  rng = np.random.default_rng(4)
  x = np.round(rng.random((2, 6, 5, 1)) * 253 + 1) / 255     # no pixel is 0 or 255
  y = x.copy()
  y[0, 2, 3, 0], y[0, 0, 0, 0], y[1, 4, 1, 0] = 1.0, 0.0, 0.0
  out = classical.decision_median(y)
  keep = (y > 0) & (y < 1)
  np.testing.assert_array_equal(out[keep], y[keep])   # bit for bit
  # the interior impulse by hand: the median of its 3x3 window, the impulse included
  np.testing.assert_allclose(out[0, 2, 3, 0], np.median(y[0, 1:4, 2:5, 0]), rtol=1e-6)
  # the corner: scipy's reflected edge, the corner's row and column repeated
  win = np.pad(y[0, :, :, 0], 1, mode="symmetric")[0:3, 0:3]
  np.testing.assert_allclose(out[0, 0, 0, 0], np.median(win), rtol=1e-6)
  with pytest.raises(ValueError, match="odd and >= 3"):
    classical.decision_median(y, size=4)


@pytest.mark.parametrize("mask_kind", ["random", "box"])
def test_inpainting_improves_psnr_and_keeps_observed_pixels(mask_kind):
  x = _smooth()
  if mask_kind == "random":
    mask = np.random.default_rng(3).random(x.shape) < 0.5       # (N, H, W), 1: observed
  else:
    mask = np.ones(x.shape[1:], bool)
    mask[10:20, 10:20] = False                                  # (H, W), shared
  y = np.where(mask, x, 0.0).astype(np.float32)
  fns = classical.restorers_for("inpaint", mask=mask)
  assert set(fns) == {"biharmonic", "telea"}
  for name, fn in fns.items():
    out = fn(y)
    assert out.shape == y.shape and out.dtype == np.float32, name
    obs = np.broadcast_to(mask, x.shape)
    np.testing.assert_array_equal(out[obs], y[obs])
    assert _psnr(x, out) > _psnr(x, y) + 10, (name, _psnr(x, out), _psnr(x, y))


def test_superres_beats_nearest_neighbour():
  x = _smooth()
  low = x.reshape(2, 16, 2, 16, 2).mean(axis=(2, 4))             # 2x average pooling
  nearest = np.repeat(np.repeat(low, 2, axis=1), 2, axis=2)
  fns = classical.restorers_for("superres", factor=2)
  assert set(fns) == {"bicubic", "bilinear"}
  for name, fn in fns.items():
    out = fn(low)
    assert out.shape == x.shape and out.dtype == np.float32, name
    assert _psnr(x, out) > _psnr(x, nearest), name


@pytest.mark.parametrize("task,kwargs", [
    ("gaussian", {"sigma": 0.1}), ("salt_pepper", {"p": 0.1}),
    ("inpaint", {"mask": np.ones((16, 16), bool)}), ("superres", {"factor": 2})])
def test_colour_images_keep_shape_and_dtype(task, kwargs):
  x = _smooth(n=1, size=16, channels=3)
  for name, fn in classical.restorers_for(task, **kwargs).items():
    out = fn(x.astype(np.float64))
    scale = 2 if task == "superres" else 1
    assert out.shape == (1, 16 * scale, 16 * scale, 3), name
    assert out.dtype == np.float64 and np.all((out >= 0) & (out <= 1)), name


def test_bad_arguments_are_one_line_naming_them():
  with pytest.raises(ValueError, match="sigma"):
    classical.restorers_for("gaussian", sigma=0.0)
  with pytest.raises(ValueError, match="p "):
    classical.restorers_for("salt_pepper", p=1.5)
  with pytest.raises(ValueError, match="mask"):
    classical.restorers_for("inpaint")["biharmonic"](_smooth())
  with pytest.raises(ValueError, match="mask"):
    classical.inpaint_biharmonic(_smooth(), np.ones((5, 5)))
  with pytest.raises(ValueError, match="factor"):
    classical.restorers_for("superres", factor=1.5)
  with pytest.raises(ValueError, match="task"):
    classical.restorers_for("deblur")
  with pytest.raises(ValueError, match="shape"):
    classical.median3x3(np.zeros((4, 4)))
  # the bm3d package crashes the process on an 8x8 image: refused before it is called
  with pytest.raises(ValueError, match="8x8 blocks, got 8x8"):
    classical.bm3d_denoise(np.zeros((1, 8, 8, 1), np.float32), 0.1)
