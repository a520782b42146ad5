"""Estimators of the encoder's score grad_z log q(z | x), one interface for all.

The entropy term of a VAE with an implicit encoder is trained through such an estimate
(`objectives.entropy_surrogate`). Paper Table 2 compares:

  csm       a conditional AR-CSM s_d(z_<d, z_d; x) trained by CSM (paper Eq. 5) on fresh
            encoder samples: the paper's method
  ssm_ar    the same conditional AR-CSM trained by sliced score matching
  ssm       an MLP s(x, z) trained by sliced score matching (Song et al. 2019)
  stein     Stein gradient estimator over `num_particles` encoder samples per x
  spectral  Spectral (Nystrom) estimator over `num_particles` encoder samples per x

A learned estimator (csm, ssm_ar, ssm) has parameters and a `fit_loss` on which it takes
its own optimizer step every batch; a kernel one has neither and reads its particles.
"""

import dataclasses
import functools
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp

from csm_jax import losses
from csm_jax.models import conditional
from csm_jax.vae import kernel
from csm_jax.vae import networks

ESTIMATORS = ("csm", "ssm_ar", "ssm", "stein", "spectral")


@dataclasses.dataclass(frozen=True)
class ScoreEstimator:
  """grad_z log q(z | x) from a score model (learned) or from particles (kernel).

  Attributes:
    name: one of ESTIMATORS.
    num_particles: P, encoder samples per x that `score` reads (1 for learned ones).
    init: rng -> parameters of the score model ({} for kernel estimators).
    score: (params, z (P, B, Z), x (B, X)) -> estimated scores at z, (P, B, Z).
    fit_loss: (params, z (B, Z), x (B, X), rng) -> (loss, metrics), the objective the
      score model is trained on, z being fresh encoder samples; None for kernel ones.
  """
  name: str
  num_particles: int
  init: Callable[[jax.Array], Any]
  score: Callable[..., jax.Array]
  fit_loss: Optional[Callable[..., Any]] = None

  @property
  def learned(self) -> bool:
    return self.fit_loss is not None


def _flat_particles(score_fn):
  """Lifts (params, z (N, Z), x (N, X)) -> (N, Z) to z (P, B, Z), x (B, X)."""
  def score(params, z, x):
    p, b, zdim = z.shape
    xs = jnp.broadcast_to(x[None], (p,) + x.shape).reshape(p * b, -1)
    return score_fn(params, z.reshape(p * b, zdim), xs).reshape(p, b, zdim)
  return score


def conditional_ar_estimator(name: str, x_dim: int, z_dim: int, hidden_sizes=(256, 256),
                             context_size: int = 16, head_hidden=(32, 32),
                             num_projections: int = 1) -> ScoreEstimator:
  """A conditional AR-CSM over z given x, trained by CSM (name 'csm') or SSM ('ssm_ar').

  Trained without noise (sigma = 1 is only the head's input value), as the score of the
  encoder's own q(z | x) is what the entropy gradient needs.
  """
  model = conditional.conditional_made_model(z_dim, x_dim, hidden_sizes=hidden_sizes,
                                             context_size=context_size,
                                             head_hidden=head_hidden)

  def score(params, z, x):
    return model.full_score(params, z, x, jnp.ones_like(z))

  if name == "csm":
    fit_loss = functools.partial(losses.conditional_csm_loss, model, None)
  elif name == "ssm_ar":
    def fit_loss(params, z, x, rng):
      return losses.sliced_score_matching(lambda y: score(params, y, x), z, rng,
                                          num_projections, "gaussian", True)
  else:
    raise ValueError(f"conditional AR estimators are 'csm' and 'ssm_ar', not {name!r}")
  return ScoreEstimator(name=name, num_particles=1, init=lambda rng: model.init(rng),
                        score=_flat_particles(score), fit_loss=fit_loss)


def mlp_ssm_estimator(x_dim: int, z_dim: int, hidden_sizes=(256, 256),
                      num_projections: int = 1) -> ScoreEstimator:
  """The MLP score net s(x, z) of the reference, trained by variance-reduced SSM with
  Gaussian projections (its `sliced_score_estimation_vr`)."""
  net = networks.MLPScoreNet(z_dim=z_dim, hidden_sizes=tuple(hidden_sizes))

  def score(params, z, x):
    return net.apply(params, x, z)

  def fit_loss(params, z, x, rng):
    return losses.sliced_score_matching(lambda y: score(params, y, x), z, rng,
                                        num_projections, "gaussian", True)

  init = lambda rng: net.init(rng, jnp.zeros((1, x_dim)), jnp.zeros((1, z_dim)))
  return ScoreEstimator(name="ssm", num_particles=1, init=init,
                        score=_flat_particles(score), fit_loss=fit_loss)


def kernel_estimator(name: str, num_particles: int = 100, stein_eta: float = 1e-3,
                     spectral_threshold: float = 0.99) -> ScoreEstimator:
  """Stein or Spectral estimates at P particles per x (no parameters, nothing to fit)."""
  if name == "stein":
    fn = functools.partial(kernel.stein_scores, eta=stein_eta)
  elif name == "spectral":
    fn = functools.partial(kernel.spectral_scores, threshold=spectral_threshold)
  else:
    raise ValueError(f"kernel estimators are 'stein' and 'spectral', not {name!r}")
  if num_particles < 2:
    raise ValueError(f"a kernel score estimator needs >= 2 particles, got {num_particles}")

  def score(params, z, x):
    del params, x
    return jnp.swapaxes(fn(jnp.swapaxes(z, 0, 1)), 0, 1)   # sets of P per example

  return ScoreEstimator(name=name, num_particles=num_particles, init=lambda rng: {},
                        score=score)


def get_estimator(vae_config, x_dim: int) -> ScoreEstimator:
  """The estimator named by vae_config.estimator (see ESTIMATORS)."""
  v = vae_config
  name = v.estimator
  if name in ("csm", "ssm_ar"):
    return conditional_ar_estimator(name, x_dim, v.z_dim, v.score_hidden, v.context_size,
                                    v.head_hidden, v.ssm_projections)
  if name == "ssm":
    return mlp_ssm_estimator(x_dim, v.z_dim, v.score_hidden, v.ssm_projections)
  if name in ("stein", "spectral"):
    return kernel_estimator(name, v.num_particles, v.stein_eta, v.spectral_threshold)
  raise ValueError(f"vae.estimator must be one of {', '.join(ESTIMATORS)} for an "
                   f"implicit encoder, got {name!r}")
