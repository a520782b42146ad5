"""The VAE training loop (csm_jax/vae/train.py) through vae.entry, what main.py calls:
exact resume with two parameter sets and two optimizer states, the workdir's config
record, --mode=eval (AIS) and --mode=sample."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from csm_jax import data as data_lib
from csm_jax.vae import entry
from csm_jax.vae import train as vae_train
from tests.test_vae import tiny_arrays, tiny_vae_config


@pytest.fixture
def shared_compilations(monkeypatch):
  """Runs of one config that differ only in training.* fields (other than the batch
  size) share one initial state, one compiled step and one validation function: the
  compiled code is the same, so this only saves test time."""
  steps, evals, inits = {}, {}, {}
  compile_step, make_eval = vae_train.compile_train_step, vae_train.make_eval_fn
  init_state = vae_train.init_state

  def key(s):
    c = json.loads(s.config.to_json_best_effort())
    bs = c["training"]["batch_size"]
    c["training"] = {"batch_size": bs}
    return json.dumps(c, sort_keys=True)

  def cached_step(s, state, images):
    if key(s) not in steps:
      steps[key(s)] = compile_step(s, state, images)
    return steps[key(s)]

  def cached_eval(s):
    if key(s) not in evals:
      evals[key(s)] = make_eval(s)
    return evals[key(s)]

  def cached_init(s):   # a copy: the compiled step donates (deletes) its input state
    if key(s) not in inits:
      state = init_state(s)
      if isinstance(state.step, jax.core.Tracer):   # inside eval_shape: do not keep
        return state
      inits[key(s)] = state
    return jax.tree.map(jnp.copy, inits[key(s)])

  monkeypatch.setattr(vae_train, "init_state", cached_init)
  monkeypatch.setattr(vae_train, "compile_train_step", cached_step)
  monkeypatch.setattr(vae_train, "make_eval_fn", cached_eval)
  return steps


@pytest.mark.slow
def test_resume_is_exact_and_eval_sample_run(tmp_path, monkeypatch, shared_compilations):
  """3 + 3 steps through a checkpoint = 6 steps in one go (bitwise), with a learned
  score model (two parameter sets, two optimizer states); --mode=eval writes the AIS
  NLL, --mode=sample a PNG (through vae.entry, what main.py calls)."""
  arrays = tiny_arrays()
  monkeypatch.setattr(data_lib, "load_arrays", lambda data_config: arrays)
  config = tiny_vae_config("csm")
  straight, _ = vae_train.train_loop(vae_train.setup(config, arrays=arrays))

  wd = str(tmp_path / "w")
  entry.run("train", tiny_vae_config("csm", **{"training.num_steps": 3}), wd)
  with pytest.raises(Exception, match="differs"):   # a protected field changed
    entry.run("train", tiny_vae_config("csm", **{"vae.z_dim": 3}), wd)
  resumed = entry.run("train", config, wd)          # num_steps 3 -> 6 (not protected)
  assert len(shared_compilations) == 1
  assert jax.tree.leaves(resumed.score_params) and int(resumed.step) == 6
  for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  rows = [json.loads(l) for l in open(os.path.join(wd, "metrics.jsonl"))]
  assert [r["step"] for r in rows if "loss" in r] == [2, 3, 4, 6]
  assert [r["step"] for r in rows if "val_recon" in r] == [0, 3, 6]

  result = entry.run("eval", config, wd, ["eval.ais_steps=4"])
  assert result["step"] == 6 and result["ais"]["num_examples"] == 4
  assert np.isfinite(result["ais"]["nll"]) and result["ais"]["settings"]["num_steps"] == 4
  assert os.path.exists(os.path.join(wd, "eval_00000006.json"))
  base = entry.run("sample", config, wd)
  assert os.path.getsize(base + ".png") > 0 and np.load(base + ".npy").shape == (4, 3, 3, 1)
