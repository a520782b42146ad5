"""RMSProp exactly as torch.optim.RMSprop's defaults, which the reference trains with.

PyTorch (alpha=0.99, eps=1e-8, no momentum, not centered), per parameter and step:

    v <- alpha v + (1 - alpha) g^2        (v starts at 0, no bias correction)
    p <- p - lr g / (sqrt(v) + eps)

`optax.rmsprop`'s defaults differ in two places: decay=0.9 (PyTorch's alpha is 0.99),
and eps_in_sqrt=True, i.e. g / sqrt(v + eps) instead of g / (sqrt(v) + eps). The
latter matters at the first steps of a parameter whose gradient is small: with v ~ g^2
of order 1e-8 the step is about lr / sqrt(2) instead of about lr / (1 + 1e-8 / |g|).
Both start the accumulator at 0 (`initial_scale=0.0`; TF1 used 1) and neither corrects
the bias of v. tests/test_vae.py checks this configuration against a hand-written
PyTorch update.
"""

import optax


def torch_rmsprop(learning_rate, alpha: float = 0.99, eps: float = 1e-8):
  """optax RMSProp configured as torch.optim.RMSprop(lr, alpha, eps)."""
  return optax.rmsprop(learning_rate, decay=alpha, eps=eps, initial_scale=0.0,
                       eps_in_sqrt=False, centered=False, momentum=None,
                       bias_correction=False)


def from_config(optim_config, score: bool = False):
  """The VAE's optimizer (score=False) or the score model's (score=True)."""
  o = optim_config
  lr = o.score_learning_rate if (score and o.score_learning_rate) else o.learning_rate
  return torch_rmsprop(lr, o.rms_decay, o.rms_eps)
