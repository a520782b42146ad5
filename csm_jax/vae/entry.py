"""``python -m csm_jax.main --mode=train|eval|sample`` for VAE configs (a `vae` section)."""

from csm_jax import workdir as workdir_lib
from csm_jax.vae import evaluate
from csm_jax.vae import train


def run(mode: str, config, workdir: str, overrides=(), allow_config_change: bool = False):
  """train: trains (resuming); eval: validation metrics and AIS test NLL; sample: a grid
  of decoder means. Eval and sample use the workdir's recorded config with overrides of
  eval.* and sampling.* only (as the image models)."""
  if mode == "train":
    return train.train_and_evaluate(config, workdir, allow_config_change)
  config = workdir_lib.eval_config(workdir, config, overrides)
  if mode == "eval":
    return evaluate.evaluate_workdir(config, workdir)
  if mode == "sample":
    return evaluate.sample_workdir(config, workdir)
  raise ValueError(f"mode must be train, eval or sample, got {mode!r}")
