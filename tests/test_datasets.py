"""Tests for csm_jax.data: tfds loading and caching, npz, synthetic, preprocessing."""

import os
import re
import sys
import time

import numpy as np
import pytest

from csm_jax import data as data_lib
from csm_jax.config_base import default_config
from csm_jax.data import tfds_source

SHARED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      '..', 'shared')
SHARED = os.path.abspath(SHARED) if os.path.isdir(SHARED) else '/work/shared'
SHARED_TFDS = os.path.join(SHARED, 'tfds')
CIFAR_DIR = os.path.join(SHARED, 'data', 'cifar10_subset')
CELEBA_NPZ = os.path.join(SHARED, 'data', 'celeba32_subset', 'celeba32_first5000.npz')


def _cfg(**overrides):
  """The full default data config (as the code reads it) with `overrides` applied."""
  c = default_config().data
  c.update(overrides)
  return c


# ----------------------------------------------------------------------------- tfds


@pytest.mark.skipif(not os.path.isfile(
    os.path.join(SHARED_TFDS, 'mnist', '3.0.1', 'dataset_info.json')),
                    reason='prepared MNIST not available')
@pytest.mark.slow
def test_mnist_loads_and_caches(tmp_path, monkeypatch):
  monkeypatch.setenv('TFDS_DATA_DIR', SHARED_TFDS)  # data_dir=None -> env var
  cfg = _cfg(dataset='mnist', data_dir=None, cache_dir=str(tmp_path / 'cache'))
  arrays = data_lib.load_arrays(cfg)
  assert arrays.shape == (28, 28, 1)
  assert arrays.discrete
  assert arrays.train.shape == (60000, 28, 28, 1) and arrays.train.dtype == np.uint8
  assert arrays.test.shape == (10000, 28, 28, 1) and arrays.test.dtype == np.uint8
  assert arrays.train.max() == 255 and arrays.train.min() == 0
  cached = sorted(os.listdir(tmp_path / 'cache'))   # each .npy with its checksum record
  assert len(cached) == 4 and sorted(f[:-5] + '.npy' for f in cached if f.endswith('.json')
                                     ) == [f for f in cached if f.endswith('.npy')], cached

  def no_decode(*a, **k):
    raise AssertionError('second load must come from the cache')

  monkeypatch.setattr(tfds_source, '_decode_source', no_decode)
  t0 = time.time()
  again = data_lib.load_arrays(cfg)
  assert time.time() - t0 < 1.0
  np.testing.assert_array_equal(again.train, arrays.train)
  np.testing.assert_array_equal(again.test, arrays.test)


def test_no_data_no_network_raises_fast(tmp_path, monkeypatch):
  monkeypatch.setattr(tfds_source, '_network_available', lambda *a, **k: False)
  empty = tmp_path / 'empty_tfds'
  empty.mkdir()
  cfg = _cfg(dataset='mnist', data_dir=str(empty), cache_dir=str(tmp_path / 'c'))
  t0 = time.time()
  with pytest.raises(data_lib.DataNotFoundError) as e:
    data_lib.load_arrays(cfg)
  assert time.time() - t0 < 5.0
  msg = str(e.value)
  assert 'TFDS_DATA_DIR' in msg and str(empty) in msg and 'npz' in msg
  assert isinstance(e.value, RuntimeError)


def test_no_data_network_but_no_tensorflow(tmp_path, monkeypatch):
  monkeypatch.setattr(tfds_source, '_network_available', lambda *a, **k: True)
  monkeypatch.setitem(sys.modules, 'tensorflow', None)  # import tensorflow fails
  empty = tmp_path / 'empty_tfds'
  empty.mkdir()
  with pytest.raises(data_lib.DataNotFoundError, match='prepare'):
    data_lib.load_arrays(_cfg(dataset='cifar10', data_dir=str(empty),
                              cache_dir=str(tmp_path / 'c')))


def test_resolve_data_dir(monkeypatch, tmp_path):
  monkeypatch.setenv('TFDS_DATA_DIR', str(tmp_path / 'env'))
  assert data_lib.resolve_data_dir(str(tmp_path / 'cfg')) == str(tmp_path / 'cfg')
  assert data_lib.resolve_data_dir(None) == str(tmp_path / 'env')
  monkeypatch.delenv('TFDS_DATA_DIR')
  assert data_lib.resolve_data_dir(None) == os.path.expanduser('~/tensorflow_datasets')


@pytest.mark.skipif(not os.path.isfile(
    os.path.join(SHARED_TFDS, 'mnist', '3.0.1', 'dataset_info.json')),
                    reason='prepared MNIST not available')
def test_truncated_tfds_shard_names_split_and_dir(tmp_path):
  """A truncated array_record shard: an error naming split and data dir, no cache."""
  src = os.path.join(SHARED_TFDS, 'mnist', '3.0.1')
  dst = tmp_path / 'tfds' / 'mnist' / '3.0.1'
  dst.mkdir(parents=True)
  for name in os.listdir(src):
    if name.endswith('.json'):
      (dst / name).write_bytes(open(os.path.join(src, name), 'rb').read())
    elif '-test.' in name:
      os.symlink(os.path.join(src, name), dst / name)   # intact, not read first
    else:                                               # train: the first half only
      with open(os.path.join(src, name), 'rb') as f:
        (dst / name).write_bytes(f.read(os.path.getsize(os.path.join(src, name)) // 2))
  cfg = _cfg(dataset='mnist', data_dir=str(tmp_path / 'tfds'),
             cache_dir=str(tmp_path / 'cache'))
  t0 = time.time()
  with pytest.raises(data_lib.CorruptDataError) as e:
    data_lib.load_arrays(cfg)
  assert time.time() - t0 < 10.0
  msg = str(e.value)
  assert "split 'train'" in msg and str(dst) in msg and 'mnist' in msg, msg
  assert '3.0.1' in msg and 'TFDS_DATA_DIR' in msg and 're-prepare' in msg, msg
  assert e.value.__cause__ is not None                  # the reader's own error, chained
  assert not (tmp_path / 'cache').exists() or not os.listdir(tmp_path / 'cache')


class _FakeBuilder:
  """Just what `_cached_split` reads from a tfds builder."""
  name, version = 'fake', '1.0.0'

  def __init__(self, data_path, source):
    self.data_path, self._source = data_path, source
    split = type('Split', (), {'num_examples': len(source)})()
    self.info = type('Info', (), {'splits': {'train': split}})()

  def as_data_source(self, split):
    del split
    return self._source


class _BrokenSource:
  def __len__(self):
    return 4

  def __getitems__(self, indices):
    raise RuntimeError('Corrupted Riegeli/records file')

  def __getitem__(self, i):
    raise RuntimeError('Corrupted Riegeli/records file')


def test_unreadable_tfds_source_is_reported_with_its_dir(tmp_path):
  builder = _FakeBuilder(str(tmp_path / 'fake' / '1.0.0'), _BrokenSource())
  with pytest.raises(data_lib.CorruptDataError) as e:
    tfds_source._cached_split(builder, 'train', str(tmp_path / 'c.npy'), None)
  msg = str(e.value)
  assert "'fake' 1.0.0, split 'train'" in msg and str(tmp_path / 'fake') in msg, msg
  assert 'Corrupted Riegeli/records file' in msg and 'TFDS_DATA_DIR' in msg
  assert isinstance(e.value.__cause__, RuntimeError)
  assert not os.path.exists(tmp_path / 'c.npy')


@pytest.mark.parametrize('damage', ['random', 'truncated', 'object'])
def test_corrupt_npy_cache_is_ignored_and_redecoded(tmp_path, caplog, damage):
  images = [{'image': np.full((2, 2, 1), i, np.uint8)} for i in range(3)]
  builder = _FakeBuilder(str(tmp_path), images)
  cache = tmp_path / 'c.npy'
  if damage == 'random':
    cache.write_bytes(np.random.default_rng(0).bytes(300))
  elif damage == 'truncated':
    np.save(cache, np.zeros((3, 2, 2, 1), np.uint8))
    cache.write_bytes(cache.read_bytes()[:-5])  # data cut short
  else:
    np.save(cache, np.array([None, 1], dtype=object))
  with caplog.at_level('WARNING', logger=tfds_source.__name__):
    array = tfds_source._cached_split(builder, 'train', str(cache), None)
  assert array.shape == (3, 2, 2, 1) and array[2].max() == 2
  assert str(cache) in caplog.text and 'Ignoring unreadable cache' in caplog.text
  assert 'allow_pickle' not in caplog.text
  np.testing.assert_array_equal(np.load(cache), array)  # rewritten, readable again


def test_celeba_pipeline_with_mock_data(tmp_path, monkeypatch):
  tfds = pytest.importorskip('tensorflow_datasets')
  monkeypatch.setattr(tfds_source, '_is_prepared', lambda builder: True)
  cfg = _cfg(dataset='celeba', data_dir=str(tmp_path / 'tfds'),
             cache_dir=str(tmp_path / 'cache'), image_size=32, crop=140)
  with tfds.testing.mock_data(num_examples=5,
                              policy=tfds.testing.MockPolicy.USE_CODE):
    arrays = data_lib.load_arrays(cfg)
  assert arrays.shape == (32, 32, 3) and arrays.discrete
  assert arrays.train.shape == (5, 32, 32, 3) and arrays.train.dtype == np.uint8
  assert any('crop140-size32' in f for f in os.listdir(tmp_path / 'cache'))


def test_celeba_transform_centre_crop():
  img = np.zeros((218, 178, 3), np.uint8)
  img[39:179, 19:159] = 200                       # exactly the centre 140x140
  out = data_lib.celeba_transform(img, crop=140, size=32)
  assert out.shape == (32, 32, 3) and out.dtype == np.uint8
  assert np.all(out == 200)


# ----------------------------------------------------------------------------- npz


@pytest.mark.skipif(not os.path.isdir(CIFAR_DIR), reason='cifar10 subset missing')
def test_npz_shared_cifar_subset():
  arrays = data_lib.load_arrays(_cfg(
      dataset='npz', path=os.path.join(CIFAR_DIR, 'train_first4000.npz'),
      test_path=os.path.join(CIFAR_DIR, 'test_first1000.npz')))
  assert arrays.train.shape == (4000, 32, 32, 3) and arrays.test.shape == (1000, 32, 32, 3)
  assert arrays.discrete and arrays.shape == (32, 32, 3) and arrays.dim == 3072
  # A directory with train*.npz and test*.npz works too.
  from_dir = data_lib.load_arrays(_cfg(dataset='npz', path=CIFAR_DIR))
  np.testing.assert_array_equal(from_dir.test, arrays.test)


def test_named_image_set_from_npz_checks_the_shape(tmp_path):
  """data.source='npz' reads a named image set from a file and refuses a wrong shape."""
  rng = np.random.default_rng(0)
  good, bad = tmp_path / 'good.npz', tmp_path / 'bad.npz'
  np.savez(good, x=rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8))
  np.savez(bad, x=rng.integers(0, 256, (20, 28, 28, 1), dtype=np.uint8))
  arrays = data_lib.load_arrays(_cfg(dataset='cifar10', source='npz', path=str(good)))
  assert arrays.shape == (32, 32, 3) and len(arrays.train) == 18 and len(arrays.test) == 2
  celeba = data_lib.load_arrays(_cfg(dataset='celeba', source='npz', path=str(good),
                                     image_size=32))
  np.testing.assert_array_equal(celeba.train, arrays.train)
  with pytest.raises(ValueError, match=r"expects uint8 images of shape \(32, 32, 3\)"):
    data_lib.load_arrays(_cfg(dataset='cifar10', source='npz', path=str(bad)))
  with pytest.raises(ValueError, match=r'\(28, 28, 1\)'):
    data_lib.load_arrays(_cfg(dataset='mnist', source='npz', path=str(good)))
  with pytest.raises(ValueError, match='needs data.path'):
    data_lib.load_arrays(_cfg(dataset='cifar10', source='npz'))
  with pytest.raises(ValueError, match="data.source must be"):
    data_lib.load_arrays(_cfg(dataset='cifar10', source='hdf5', path=str(good)))
  with pytest.raises(ValueError, match='applies to the image datasets'):
    data_lib.load_arrays(_cfg(dataset='gaussian', source='npz'))


@pytest.mark.skipif(not os.path.isfile(CELEBA_NPZ), reason='celeba subset missing')
def test_npz_shared_celeba_subset_holdout():
  arrays = data_lib.load_arrays(_cfg(dataset='npz', path=CELEBA_NPZ))
  assert arrays.train.shape == (4500, 32, 32, 3) and arrays.test.shape == (500, 32, 32, 3)
  full = np.load(CELEBA_NPZ)['x']
  np.testing.assert_array_equal(arrays.test, full[-500:])


def test_npz_tmp_files_and_errors(tmp_path):
  rng = np.random.default_rng(0)
  imgs = rng.integers(0, 256, (20, 4, 4, 1), dtype=np.uint8)
  p = tmp_path / 'tt.npz'
  np.savez(p, train=imgs[:15], test=imgs[15:])
  a = data_lib.load_npz(str(p))
  assert a.discrete and a.shape == (4, 4, 1) and len(a.train) == 15 and len(a.test) == 5

  real = rng.standard_normal((30, 3)).astype(np.float64)
  p = tmp_path / 'real.npz'
  np.savez(p, x=real)
  a = data_lib.load_arrays(_cfg(dataset='npz', path=str(p)))
  assert not a.discrete and a.shape == (3,) and a.train.dtype == np.float32
  assert len(a.train) == 27 and len(a.test) == 3

  def err(match, **arrays):
    q = tmp_path / 'bad.npz'
    np.savez(q, **arrays)
    with pytest.raises(ValueError, match=match):
      data_lib.load_npz(str(q))

  err(r"found keys \['images', 'labels'\]", images=imgs, labels=np.zeros(20))
  err('N, H, W, C', x=imgs[..., 0])                         # wrong ndim
  err('NaN or inf', x=np.array([[0.0, np.nan]] * 10))
  err('NaN or inf', train=real, test=np.full((2, 3), np.inf))
  err('differ', train=imgs, test=imgs[:, :3])               # mismatched shapes
  err('differ', train=real.astype(np.float32), test=imgs)   # mismatched kinds
  err('dtype', x=np.zeros((10, 3), np.int64))
  with pytest.raises(FileNotFoundError):
    data_lib.load_npz(str(tmp_path / 'missing.npz'))


def _damaged_npz(tmp_path, damage):
  """A file named *.npz damaged in the way `damage` says; returns its path."""
  p = tmp_path / f'{damage}.npz'
  good = np.arange(2000, dtype=np.float64).reshape(100, 20)
  if damage == 'random':                 # numpy would call it pickled data
    p.write_bytes(np.random.default_rng(0).bytes(1000))
  elif damage == 'truncated':            # a valid npz cut at half its size
    np.savez(p, x=good)
    p.write_bytes(p.read_bytes()[:p.stat().st_size // 2])
  elif damage == 'object':               # np.savez pickles object arrays by default
    np.savez(p, x=np.array([1, 'a', None], dtype=object))
  elif damage == 'member_truncated':     # zip intact, the array's data cut short
    import io, zipfile  # pylint: disable=g-import-not-at-top,multiple-imports
    buf = io.BytesIO()
    np.save(buf, good)
    with zipfile.ZipFile(p, 'w') as z:
      z.writestr('x.npy', buf.getvalue()[:500])
  elif damage == 'bad_crc':              # bytes flipped inside the array data
    np.savez(p, x=good)
    raw = bytearray(p.read_bytes())
    raw[300:400] = bytes(b ^ 0xff for b in raw[300:400])
    p.write_bytes(bytes(raw))
  elif damage == 'not_npy_member':       # a zip whose member has no .npy header
    import zipfile  # pylint: disable=g-import-not-at-top
    with zipfile.ZipFile(p, 'w') as z:
      z.writestr('x.npy', b'these are not array bytes' * 8)
  elif damage == 'text':
    p.write_text('not an archive\n')
  elif damage == 'npy':                  # a single .npy renamed to .npz
    with open(p, 'wb') as f:
      np.save(f, good)
  elif damage == 'empty':
    p.write_bytes(b'')
  return p


@pytest.mark.parametrize('damage, what', [
    ('random', 'not a valid .npz archive'),
    ('truncated', 'truncated or damaged'),
    ('object', 'dtype object'),
    ('member_truncated', "array 'x' is truncated or damaged"),
    ('bad_crc', "array 'x' is truncated or damaged"),
    ('not_npy_member', "member 'x' is not a .npy array"),
    ('text', 'not a zip file'),
    ('npy', 'not a .npz archive'),
    ('empty', 'empty'),
])
def test_damaged_npz_names_the_file_and_never_suggests_pickles(tmp_path, damage, what):
  p = _damaged_npz(tmp_path, damage)
  for load in (lambda: data_lib.load_npz(str(p)),
               lambda: data_lib.load_arrays(_cfg(dataset='npz', path=str(p)))):
    with pytest.raises(data_lib.CorruptDataError) as e:
      load()
    assert isinstance(e.value, ValueError)
    msg = str(e.value)
    assert str(p) in msg and what in msg, msg
    # Never advice to load unsafely, neither here nor in a chained cause.
    for text in (msg, str(e.value.__cause__ or '')):
      assert 'allow_pickle' not in text and 'pickle.load' not in text, text
  # As a separate test file, too.
  good = tmp_path / 'good.npz'
  np.savez(good, x=np.zeros((10, 3), np.float32))
  with pytest.raises(data_lib.CorruptDataError, match=re.escape(str(p))):
    data_lib.load_npz(str(good), str(p))


# ----------------------------------------------------------------------------- synthetic


@pytest.mark.parametrize('name', data_lib.TOY2D_NAMES)
def test_toy2d(name):
  x = data_lib.toy2d_sample(name, 1001, np.random.default_rng(0))
  assert x.shape == (1001, 2) and x.dtype == np.float32
  assert np.all(np.isfinite(x))
  assert np.mean(np.abs(x) <= 4.0) > 0.99
  assert 0.3 < x.std() < 3.0
  y = data_lib.toy2d_sample(name, 1001, np.random.default_rng(0))
  np.testing.assert_array_equal(x, y)


def test_toy2d_unknown_and_config():
  with pytest.raises(ValueError, match='ring8'):
    data_lib.toy2d_sample('nope', 3, np.random.default_rng(0))
  a = data_lib.load_arrays(_cfg(dataset='toy2d', name='moons', num_train=100,
                                num_test=50, seed=1))
  assert a.train.shape == (100, 2) and a.test.shape == (50, 2) and not a.discrete


def test_gaussian():
  cov = data_lib.gaussian_covariance(5, 3)
  np.testing.assert_allclose(cov, cov.T)
  eig = np.linalg.eigvalsh(cov)
  assert eig.min() > 0.4 and eig.max() / eig.min() < 5
  assert abs(cov - np.diag(np.diag(cov))).max() > 1e-2      # full, not diagonal
  np.testing.assert_array_equal(cov, data_lib.gaussian_covariance(5, 3))
  a = data_lib.load_arrays(_cfg(dataset='gaussian', dim=5, seed=3, num_train=20000,
                                num_test=10))
  assert a.train.shape == (20000, 5) and a.shape == (5,) and not a.discrete
  np.testing.assert_allclose(np.cov(a.train.T), cov, atol=0.1)


def test_unknown_dataset():
  with pytest.raises(ValueError, match='toy2d'):
    data_lib.load_arrays(_cfg(dataset='imagenet'))


# ----------------------------------------------------------------------------- preprocessing


def _arrays(shape=(2, 3, 2)):
  x = np.random.default_rng(0).integers(0, 256, (4,) + shape, dtype=np.uint8)
  x[0] = 0
  x[1] = 255
  return data_lib.Arrays(x, x, shape, True)


@pytest.mark.parametrize('scale,lo,hi', [('unit', 0.0, 1.0), ('symmetric', -1.0, 1.0)])
@pytest.mark.parametrize('dequantize', [True, False])
def test_preprocess_ranges(scale, lo, hi, dequantize):
  arrays = _arrays()
  pre = data_lib.get_preprocessor(
      _cfg(dequantize=dequantize, scale=scale, logit_lambda=0.0), arrays)
  y = pre(arrays.train, np.random.default_rng(1))
  assert y.shape == (4, 12) and y.dtype == np.float32
  assert y.min() >= lo and y.max() <= hi
  if not dequantize:
    assert y.min() == lo and y.max() == hi
  # C-order flattening: channels innermost.
  x0 = arrays.train[2].astype(np.float64)
  mid = pre(arrays.train, None)
  if dequantize:
    want = (x0 + 0.5) / 256
  else:
    want = x0 / 255
  want = want if scale == 'unit' else 2 * want - 1
  np.testing.assert_allclose(mid[2], want.reshape(-1), rtol=1e-6, atol=1e-6)
  # inverse back to the configured scale, (B, *shape), clipped.
  back = pre.inverse(mid)
  assert back.shape == (4, 2, 3, 2)
  np.testing.assert_allclose(back[2], want.reshape(2, 3, 2), atol=1e-6)
  wild = pre.inverse(np.full((1, 12), 10.0))
  assert wild.max() == hi


def test_preprocess_logit_and_inverse():
  arrays = _arrays()
  pre = data_lib.get_preprocessor(_cfg(dequantize=True, logit_lambda=1e-6), arrays)
  y = pre(arrays.train, np.random.default_rng(0))
  assert np.all(np.isfinite(y)) and y.dtype == np.float32
  assert y.min() < -5 and y.max() > 5
  mid = pre(arrays.train, None)
  np.testing.assert_allclose(pre.inverse(mid).reshape(4, -1),
                             (arrays.train.reshape(4, -1) + 0.5) / 256, atol=1e-5)
  assert np.all(np.isfinite(pre.inverse(np.array([[1e4, -1e4] * 6]))))



@pytest.mark.parametrize('cfg', [
    dict(dequantize=False, scale='symmetric', logit_lambda=0.0),
    dict(dequantize=True, scale='symmetric', logit_lambda=0.0),
    dict(dequantize=True, scale='unit', logit_lambda=0.0),
    dict(dequantize=True, scale='unit', logit_lambda=1e-6),
    dict(dequantize=True, scale='symmetric', logit_lambda=1e-6),
])
def test_to_display(cfg):
  """Model space -> (B, H, W, C) in [0, 1]: pixel x_pix shows as x_pix / pixel_range."""
  arrays = _arrays()
  pre = data_lib.get_preprocessor(_cfg(**cfg), arrays)
  shown = pre.to_display(pre(arrays.train, None))
  assert shown.shape == (4, 2, 3, 2) and shown.dtype == np.float32
  assert shown.min() >= 0.0 and shown.max() <= 1.0
  if not cfg['dequantize']:
    np.testing.assert_array_equal(shown[0], 0.0)    # pixel 0
    np.testing.assert_array_equal(shown[1], 1.0)    # pixel 255
    np.testing.assert_allclose(shown, arrays.train / 255.0, atol=1e-6)
  else:   # pixels k + 1/2 round-trip to (k + 1/2) / 256
    np.testing.assert_allclose(shown, (arrays.train + 0.5) / 256.0, atol=1e-5)
  wild = pre.to_display(np.array([[1e4, -1e4] * 6]))
  assert wild.min() == 0.0 and wild.max() == 1.0


def test_to_display_real_valued_is_not_clipped():
  pre = data_lib.Preprocessor(shape=(2, 1, 1), discrete=False)
  y = np.array([[-3.0, 7.5]])
  shown = pre.to_display(y)
  assert shown.dtype == np.float32
  np.testing.assert_array_equal(shown, y.reshape(1, 2, 1, 1))

def test_dequantization_is_uniform_within_bins():
  arrays = _arrays()
  pre = data_lib.get_preprocessor(_cfg(dequantize=True, logit_lambda=0.0), arrays)
  y = pre(np.repeat(arrays.train[2:3], 2000, 0), np.random.default_rng(0))
  pix = y * 256 - arrays.train[2].reshape(-1)
  assert pix.min() >= 0 and pix.max() < 1 + 1e-4
  assert abs(pix.mean() - 0.5) < 0.02


@pytest.mark.parametrize('cfg', [
    dict(dequantize=True, logit_lambda=1e-6),
    dict(dequantize=True, logit_lambda=0.05),
    dict(dequantize=True, scale='unit', logit_lambda=0.0),
    dict(dequantize=True, scale='symmetric', logit_lambda=0.0),
    dict(dequantize=False, scale='symmetric', logit_lambda=0.0),
    dict(dequantize=False, logit_lambda=0.01),
])
def test_log_det_jacobian_matches_finite_differences(cfg):
  arrays = _arrays()
  pre = data_lib.get_preprocessor(_cfg(**cfg), arrays)
  rng = np.random.default_rng(0)
  hi = pre.pixel_range
  pix = rng.uniform(0.5, hi - 0.5, (5, pre.dim))
  pix[0, :3] = [0.6, hi - 0.6, 128.0]
  eps = 1e-4
  deriv = (pre.from_pixels(pix + eps, np.float64) -
           pre.from_pixels(pix - eps, np.float64)) / (2 * eps)
  want = np.log(np.abs(deriv)).sum(-1)
  got = pre.log_det_jacobian(pre.from_pixels(pix, np.float64))
  assert got.dtype == np.float64 and got.shape == (5,)
  np.testing.assert_allclose(got, want, rtol=1e-7, atol=1e-5)


def test_log_det_jacobian_autodiff():
  jax = pytest.importorskip('jax')
  jnp = jax.numpy
  pre = data_lib.Preprocessor(shape=(3,), discrete=True, logit_lambda=1e-6)
  lam = pre.logit_lambda

  def fwd(pix):  # the documented forward map, elementwise
    p = lam + (1 - 2 * lam) * pix / 256.0
    return jnp.log(p) - jnp.log1p(-p)

  pix = np.array([[0.3, 100.2, 255.9]], np.float32)
  grads = jax.vmap(jax.grad(lambda v: fwd(v)))(pix[0])
  want = np.log(np.abs(np.asarray(grads, np.float64))).sum()
  got = pre.log_det_jacobian(pre.from_pixels(pix, np.float64))
  np.testing.assert_allclose(got[0], want, rtol=1e-4)
  np.testing.assert_allclose(pre.from_pixels(pix, np.float64),
                             np.asarray(fwd(pix), np.float64), rtol=1e-4)


def test_continuous_preprocessing():
  a = data_lib.load_arrays(_cfg(dataset='toy2d', name='ring8', num_train=10, num_test=4))
  pre = data_lib.get_preprocessor(_cfg(dequantize=True, logit_lambda=1e-6), a)
  y = pre(a.train, np.random.default_rng(0))
  np.testing.assert_array_equal(y, a.train)
  np.testing.assert_array_equal(pre.log_det_jacobian(y), np.zeros(10))
  np.testing.assert_array_equal(pre.inverse(y), a.train)
  # TODO bits_per_dim moved: its check, bits_per_dim(784 log(2) 3, 784) == 3, went with it.


def test_preprocessor_bad_config():
  with pytest.raises(ValueError, match='scale'):
    data_lib.get_preprocessor(_cfg(scale='minus_one_one', logit_lambda=0.0), _arrays())
  with pytest.raises(ValueError, match='logit_lambda'):
    data_lib.get_preprocessor(_cfg(logit_lambda=0.7), _arrays())


# ----------------------------------------------------------------------------- batching


def test_batch_indices_deterministic_and_epoch_cover():
  n, bs = 103, 10
  a = data_lib.batch_indices(n, bs, 7, seed=5)
  np.testing.assert_array_equal(a, data_lib.batch_indices(n, bs, 7, seed=5))
  assert not np.array_equal(a, data_lib.batch_indices(n, bs, 7, seed=6))
  assert a.shape == (bs,) and a.dtype == np.int64
  # The stream over many steps = concatenated per-epoch permutations.
  stream = np.concatenate([data_lib.batch_indices(n, bs, s, 5) for s in range(40)])
  for e in range(3):
    epoch = stream[e * n:(e + 1) * n]
    np.testing.assert_array_equal(np.sort(epoch), np.arange(n))
    np.testing.assert_array_equal(epoch, np.random.default_rng([5, e]).permutation(n))
  # Step 10 covers positions 100..109: crosses from epoch 0 into epoch 1.
  crossing = data_lib.batch_indices(n, bs, 10, 5)
  p0, p1 = (np.random.default_rng([5, e]).permutation(n) for e in (0, 1))
  np.testing.assert_array_equal(crossing, np.concatenate([p0[100:], p1[:7]]))


def test_batch_indices_batch_larger_than_dataset():
  idx = data_lib.batch_indices(4, 10, 1, 0)  # positions 10..19: epochs 2, 3, 4
  perms = [np.random.default_rng([0, e]).permutation(4) for e in range(5)]
  np.testing.assert_array_equal(idx, np.concatenate(perms)[10:20])


def test_dequant_rng():
  a = data_lib.dequant_rng(3, 11).random(5)
  np.testing.assert_array_equal(a, data_lib.dequant_rng(3, 11).random(5))
  assert not np.array_equal(a, data_lib.dequant_rng(3, 12).random(5))
