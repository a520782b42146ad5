"""Nothing read from disk runs code; every write is atomic; torn or foreign lines are
skipped. Fast: nothing here trains."""

import json
import os
import pathlib
import pickle
import re
import subprocess
import sys

import numpy as np
import pytest

from csm_jax import atomic
from csm_jax import metrics as metrics_lib
from csm_jax.tools import convert_inception_pickle

REPO = pathlib.Path(__file__).resolve().parents[1]
# The one module allowed to unpickle: its find_class refuses everything but plain data.
_RESTRICTED = REPO / "csm_jax" / "tools" / "convert_inception_pickle.py"
_FORBIDDEN = re.compile(r"pickle\.loads?\b|allow_pickle\s*=\s*True|(?<![\w.])eval\(|"
                        r"(?<![\w.])exec\(|\bmarshal\.loads?\b|\bshelve\b|torch\.load|"
                        r"yaml\.load\(|\bdill\b|\bcloudpickle\b")


def test_no_code_is_loaded_from_disk_anywhere_in_the_library():
  """No pickle.load(s), allow_pickle=True, eval( or exec( in csm_jax/ (the restricted
  unpickler of the converter is the only module that unpickles at all)."""
  hits = []
  for path in sorted((REPO / "csm_jax").rglob("*.py")):
    if path == _RESTRICTED:
      continue
    for i, line in enumerate(path.read_text().splitlines(), 1):
      if _FORBIDDEN.search(line.split("#", 1)[0]):
        hits.append(f"{path.relative_to(REPO)}:{i}: {line.strip()}")
  assert not hits, "\n".join(hits)
  text = _RESTRICTED.read_text()
  assert "pickle.load(" not in text and "pickle.loads(" not in text
  assert "allow_pickle=True" not in text


class _Boom:
  def __reduce__(self):
    return (os.system, ("echo pwned > PWNED",))


class _Indirect:
  def __reduce__(self):
    return (compile, ("__import__('os').system('echo pwned > PWNED')", "x", "single"))


@pytest.mark.parametrize("payload", [_Boom(), {"w": _Boom()}, [_Indirect()],
                                     dict, np.random.default_rng])
def test_restricted_unpickler_refuses_everything_but_plain_data(tmp_path, monkeypatch,
                                                                payload):
  monkeypatch.chdir(tmp_path)
  data = pickle.dumps(payload)
  with pytest.raises(convert_inception_pickle.RefusedPickle, match="refused"):
    convert_inception_pickle.restricted_loads(data)
  assert not (tmp_path / "PWNED").exists()
  # through the command line: one line, status 1, nothing written, nothing run
  src = tmp_path / "evil.pickle"
  src.write_bytes(data)
  out = subprocess.run([sys.executable, "-m", "csm_jax.tools.convert_inception_pickle",
                        str(src), str(tmp_path / "out.npz")], cwd=REPO, capture_output=True,
                       text=True, timeout=120, env=dict(os.environ, PYTHONPATH=str(REPO)))
  assert out.returncode == 1, out.stderr
  assert "Traceback" not in out.stderr and "refused" in out.stderr
  assert len(out.stderr.strip().splitlines()) == 1, out.stderr
  assert not (tmp_path / "out.npz").exists() and not (tmp_path / "PWNED").exists()


def test_restricted_unpickler_reads_plain_data():
  tree = {"a": {"b": np.arange(6, dtype=np.float32).reshape(2, 3)}, "n": [1, 2.5, "x"],
          "s": np.float32(3.0), "t": (True, None, b"raw")}
  for protocol in range(2, pickle.HIGHEST_PROTOCOL + 1):
    back = convert_inception_pickle.restricted_loads(pickle.dumps(tree, protocol=protocol))
    np.testing.assert_array_equal(back["a"]["b"], tree["a"]["b"])
    assert back["n"] == [1, 2.5, "x"] and back["t"] == (True, None, b"raw")
  objects = pickle.dumps({"o": np.array([1, "x"], dtype=object)})
  with pytest.raises(convert_inception_pickle.RefusedPickle, match="dtype object"):
    convert_inception_pickle.restricted_loads(objects)


@pytest.mark.parametrize("write,read", [
    (lambda p: atomic.write_json(p, {"a": 1}), lambda p: json.load(open(p))),
    (lambda p: atomic.write_text(p, "hello"), lambda p: open(p).read()),
    (lambda p: atomic.save_npy(p, np.arange(3)), lambda p: np.load(p).tolist()),
])
def test_atomic_writes_keep_the_old_file_on_failure(tmp_path, monkeypatch, write, read):
  path = str(tmp_path / "out")
  write(path)
  before = read(path)
  real = os.fsync

  def full_disk(fd):
    raise OSError(28, "No space left on device")
  monkeypatch.setattr(os, "fsync", full_disk)
  with pytest.raises(OSError, match="No space"):
    write(path)
  monkeypatch.setattr(os, "fsync", real)
  assert read(path) == before
  assert os.listdir(tmp_path) == ["out"]   # no temporary file left behind


def test_atomic_figure_and_png(tmp_path):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from csm_jax import plotting  # pylint: disable=g-import-not-at-top
  plotting.save_samples(str(tmp_path / "s.png"), np.random.rand(4, 28 * 28), (28, 28, 1))
  atomic.save_png(str(tmp_path / "p.png"), np.zeros((4, 4), np.uint8))
  for name in ("s.png", "p.png"):
    assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert sorted(os.listdir(tmp_path)) == ["p.png", "s.png"]


def test_torn_and_foreign_metric_lines_are_skipped_and_counted(tmp_path, caplog):
  path = tmp_path / "metrics.jsonl"
  path.write_bytes(b'{"step": 10, "loss": 1.0}\n[1, 2]\n{"loss": 3}\n\xff\xfe\n'
                   b'{"step": 20, "loss": 0.5}\n{"step": 30, "lo')
  rows, skipped = metrics_lib.read_rows(str(path))
  assert [r["step"] for r in rows] == [10, 20] and skipped == 4
  with caplog.at_level("WARNING"):
    writer = metrics_lib.MetricWriter(str(tmp_path), resume_step=20)
  writer.write(30, {"loss": 0.25})
  writer.close()
  assert "skipped 4 torn or foreign line(s)" in caplog.text
  rows, skipped = metrics_lib.read_rows(str(path))
  assert [r["step"] for r in rows] == [10, 20, 30] and skipped == 0


# ------------------------------------------------------------------------------------
# Data verifies itself
# ------------------------------------------------------------------------------------

class _Builder:
  """What tfds_source._cached_split reads from a tfds builder, with a shard file."""
  name, version = "fake", "1.0.0"

  def __init__(self, data_path, images):
    self.data_path, self.images = str(data_path), images
    split = type("Split", (), {"num_examples": len(images)})()
    self.info = type("Info", (), {"splits": {"train": split}})()
    self.decoded = 0

  def as_data_source(self, split):
    del split
    self.decoded += 1
    return [{"image": im} for im in self.images]


def test_npy_cache_is_rebuilt_when_its_contents_or_source_change(tmp_path, caplog):
  from csm_jax.data import tfds_source  # pylint: disable=g-import-not-at-top
  shards = tmp_path / "prepared"
  shards.mkdir()
  (shards / "fake-train.array_record-00000-of-00001").write_bytes(b"shard v1")
  images = [np.full((2, 2, 1), i + 1, np.uint8) for i in range(3)]
  builder = _Builder(shards, images)
  cache = tmp_path / "cache" / "c.npy"
  first = tfds_source._cached_split(builder, "train", str(cache), None)  # pylint: disable=protected-access
  assert builder.decoded == 1 and json.loads(cache.with_suffix(".json").read_text())[
      "array_sha256"]
  tfds_source._cached_split(builder, "train", str(cache), None)  # pylint: disable=protected-access
  assert builder.decoded == 1                                  # fresh: read from the cache
  # zero-filled at the same size: same shape, dtype and length, other contents
  raw = bytearray(cache.read_bytes())
  header = len(raw) - first.nbytes
  raw[header:] = bytes(first.nbytes)
  cache.write_bytes(bytes(raw))
  assert np.load(cache).max() == 0
  with caplog.at_level("WARNING", logger=tfds_source.__name__):
    again = tfds_source._cached_split(builder, "train", str(cache), None)  # pylint: disable=protected-access
  assert builder.decoded == 2 and again.max() == 3 and "differ from the checksum" in caplog.text
  np.testing.assert_array_equal(np.load(cache), first)          # rebuilt
  # the prepared dataset changed: rebuilt from it
  (shards / "fake-train.array_record-00000-of-00001").write_bytes(b"shard v2")
  caplog.clear()
  with caplog.at_level("WARNING", logger=tfds_source.__name__):
    tfds_source._cached_split(builder, "train", str(cache), None)  # pylint: disable=protected-access
  assert builder.decoded == 3 and "has changed" in caplog.text
  # a cache without its record (an older version, or a kill between the two writes)
  os.remove(cache.with_suffix(".json"))
  tfds_source._cached_split(builder, "train", str(cache), None)  # pylint: disable=protected-access
  assert builder.decoded == 4 and cache.with_suffix(".json").exists()
