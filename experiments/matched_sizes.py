"""Networks of matched size for the paper's comparisons (Sec. 5.1): used by experiments only.

A MADE AR-CSM of a given width, and an MLP score net whose width is chosen so that its
parameter count matches the MADE's (gaussian_scaling, gaussian_convergence).
"""

import math
from typing import Sequence

from experiments import common

common.helper_module(__name__, "matched_sizes")

import ml_collections  # noqa: E402

from csm_jax import config_base  # noqa: E402
from csm_jax import models  # noqa: E402
from csm_jax.models import score_nets  # noqa: E402


def ar_csm_config(dim: int, hidden: int = 256, num_hidden: int = 3, context_size: int = 4,
                  head_hidden=(32, 32), order: str = "natural") -> ml_collections.ConfigDict:
  """config.model for a MADE AR-CSM with `num_hidden` hidden layers of width `hidden`."""
  m = config_base.default_config().model
  m.backbone, m.head = "made", "score"
  m.hidden_sizes = (hidden,) * num_hidden
  m.context_size = context_size
  m.head_hidden = tuple(head_hidden)
  m.order = order
  return m


def ar_csm_for_dim(dim: int, hidden: int = 256, num_hidden: int = 3, context_size: int = 4,
                   head_hidden=(32, 32), order: str = "natural"):
  """A MADE (3 hidden layers) + score-head AR-CSM for D-dimensional vectors."""
  return models.get_model(
      ar_csm_config(dim, hidden, num_hidden, context_size, head_hidden, order), (dim,))


def made_param_count(dim: int, hidden: int, num_hidden: int = 3, context_size: int = 4,
                     head_hidden=(32, 32)) -> int:
  """Stored parameters of `ar_csm_for_dim(...)`, computed without building it."""
  n = dim * hidden + hidden
  n += (num_hidden - 1) * (hidden * hidden + hidden)
  n += hidden * dim * context_size + dim * context_size
  width = context_size + 2                       # [context_d, x_d, log sigma_d]
  for h in head_hidden:
    n += width * h + h
    width = h
  return n + width + 1


def mlp_param_count(dim: int, hidden_sizes: Sequence[int]) -> int:
  n, width = 0, dim
  for h in hidden_sizes:
    n += width * h + h
    width = h
  return n + width * dim + dim


def matched_mlp_hidden(dim: int, target_params: int, num_hidden: int = 3) -> int:
  """Width H of a `num_hidden`-layer MLP score net whose parameter count is closest to target.

  Solves (num_hidden-1) H^2 + (2D + num_hidden) H + D = target for H.
  """
  a, b, c = num_hidden - 1, 2 * dim + num_hidden, dim - target_params
  if a == 0:
    h = -c / b
  else:
    h = (-b + math.sqrt(b * b - 4 * a * c)) / (2 * a)
  cands = {max(1, int(math.floor(h))), max(1, int(math.ceil(h)))}
  return min(cands, key=lambda w: abs(mlp_param_count(dim, (w,) * num_hidden) - target_params))


def matched_pair(dim: int, hidden: int = 256, context_size: int = 4, head_hidden=(32, 32),
                 activation: str = "softplus", order: str = "natural"):
  """(AR-CSM MADE, MLP score net) with 3 hidden layers each and comparable parameter counts.

  MADE's width is `hidden`; the MLP's width is chosen to match MADE's stored-parameter
  count (MADE has D*context_size outputs, the MLP has D, so the MLP is wider).
  """
  ar = ar_csm_for_dim(dim, hidden, 3, context_size, head_hidden, order)
  target = made_param_count(dim, hidden, 3, context_size, head_hidden)
  h_mlp = matched_mlp_hidden(dim, target, 3)
  return ar, score_nets.mlp_score_model(dim, (h_mlp,) * 3, activation)
