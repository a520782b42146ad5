"""AR-CSM on MNIST: MADE context network + noise-conditional score head, trained by CSM.

Data: dequantized, scaled to [0, 1], logit-transformed (lambda = 1e-6, as in MAF).
Switch to the MLE baselines with --config.model.head=gaussian --config.loss.name=mle
(or logistic_mixture), or use configs/mnist_made_mle.py.
"""

from csm_jax.config_base import default_config


def get_config():
  c = default_config()
  c.data.dataset = "mnist"
  c.data.logit_lambda = 1e-6
  c.model.backbone = "made"
  c.model.head = "score"
  c.model.hidden_sizes = (1024, 1024)
  c.model.context_size = 16
  c.loss.name = "csm"
  c.noise.sigma_max = 5.0
  c.noise.sigma_min = 0.05
  c.noise.num_levels = 10
  c.training.num_steps = 20000
  c.training.batch_size = 100
  return c
