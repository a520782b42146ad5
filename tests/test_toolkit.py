"""The toolkit pieces experiments and notebooks call: registry contract, parameter
counts, the training loop's record, partial restore for inference, config files."""

import json
import os

import jax
import numpy as np
import pytest

from csm_jax import config_base
from csm_jax import inference
from csm_jax import models
from csm_jax import train
from csm_jax.models import made as made_lib
from tests.helpers import tiny_model, tiny_train_config


def test_registry_sets_the_kind_and_refuses_duplicates():
  assert tiny_model(4).kind == "score" and not tiny_model(4).normalized
  assert tiny_model(4, head="gaussian").kind == "density"
  assert tiny_model(4, head="discretized_logistic").discrete
  with pytest.raises(ValueError, match="already registered"):
    models.register_head("gaussian", kind="density")(lambda cfg: None)
  with pytest.raises(ValueError, match="already registered"):
    models.register_backbone("made")(lambda cfg, shape: None)
  with pytest.raises(ValueError, match="kind"):
    models.register_head("new_head", kind="energy")


def test_effective_parameters_leave_out_masked_made_weights():
  """Effective count = stored entries minus the kernel entries masks fix at zero, counted
  here from the masks MADE uses."""
  model = tiny_model(5, hidden=(7, 6), order="random", context_size=3)
  params = model.init(jax.random.PRNGKey(0))
  counts = models.count_parameters(params, model)
  leaves = jax.tree.leaves(params)
  assert counts["parameters"] == sum(a.size for a in leaves)
  masks = made_lib.made_masks(np.asarray(model.rank), (7, 6), 3)
  zeros = sum(int((m == 0).sum()) for m in masks)
  assert zeros > 0 and counts["effective_parameters"] == counts["parameters"] - zeros
  assert models.count_parameters(params)["effective_parameters"] == counts["parameters"]


@pytest.mark.slow   # a training run
def test_train_loop_record_and_partial_restore(tmp_path):
  config = tiny_train_config(**{"training.num_steps": 20, "training.eval_every": 10,
                                "training.checkpoint_every": 10})
  s = train.setup(config)
  evals = []
  eval_fn = lambda p: evals.append(1) or {"n": float(len(evals))}
  lines = []
  state, info = train.train_loop(s, workdir=str(tmp_path), eval_fn=eval_fn, log=lines.append)
  assert [h["step"] for h in info["history"]] == [0, 10, 20]
  assert info["steps"] == 20 and np.isfinite(info["final_loss"])
  assert info["train_seconds"] > 0 and info["compile_seconds"] > 0
  assert any("ETA" in line for line in lines)
  rows = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  assert {r["step"] for r in rows if "n" in r} == {0, 10, 20}

  inf = inference.build(config)
  for which, want in (("ema_params", state.ema_params), ("params", state.params)):
    params, step = inference.restore(inf, str(tmp_path), which)
    assert step == 20
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(want)):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_bad_cadence_is_refused_by_setup():
  with pytest.raises(config_base.ConfigError, match="training.log_every"):
    train.setup(tiny_train_config(**{"training.log_every": 0}))


def test_workdir_config_round_trip(tmp_path):
  config = config_base.load_config("mnist_made", ["training.num_steps=7",
                                                  "model.hidden_sizes=(32, 16)"])
  assert config.training.num_steps == 7 and config.model.hidden_sizes == (32, 16)
  with open(os.path.join(tmp_path, "config.json"), "w") as f:
    f.write(config.to_json_best_effort(indent=2))
  back = config_base.load_workdir_config(str(tmp_path))
  assert back.to_dict() == config.to_dict()
  with pytest.raises(AttributeError):
    back.training.num_stepz = 1
  with pytest.raises(TypeError, match="training.num_steps: 'many' is not of type int"):
    config_base.override(back, ["training.num_steps=many"])
  config_base.override(back, ["restore.noise_pins=true"])     # absl's spelling of bools
  assert back.restore.noise_pins is True
  config_base.override(back, ["restore.noise_pins=False"])
  assert back.restore.noise_pins is False
