"""MLE baseline on MNIST: the same MADE backbone with Gaussian conditionals (exact NLL).

--config.model.head=logistic_mixture gives the mixture-of-logistics MADE.
"""

from csm_jax.config_base import default_config


def get_config():
  c = default_config()
  c.data.dataset = "mnist"
  c.data.logit_lambda = 1e-6
  c.model.backbone = "made"
  c.model.head = "gaussian"
  c.loss.name = "mle"
  c.noise.enabled = False
  c.sampling.sigmas = (1.0,)
  c.sampling.num_steps = 100
  c.sampling.step_lr = 1e-2
  c.sampling.denoise = False
  c.training.eval_samples = 16  # a sample grid at each evaluation (samples/train_<step>.png)
  return c
