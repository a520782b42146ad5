"""Objectives, all pure: loss_fn(params, x, rng, train) -> (loss, metrics).

CSM is paper Eq. 5 (`conditional_csm_loss`: the same for q(z | x), paper Sec. 6); SM is Hyvarinen (2005); SSM is Song et al. (2019); DSM is
Vincent (2011); MLE is exact maximum likelihood for normalized AR models.
Build them with `get_loss_fn(config, model)`.
"""

import functools

import chex
import jax
import jax.numpy as jnp

from csm_jax import config_base
from csm_jax import derivatives
from csm_jax import noise as noise_lib


def composite_score_matching(s, ds, weight=None):
  """Per-example CSM objective sum_d w_d [1/2 s_d^2 + d s_d/d x_d] (paper Eq. 5)."""
  chex.assert_equal_shape([s, ds])
  per_dim = 0.5 * s ** 2 + ds
  if weight is not None:
    per_dim = weight * per_dim
  return per_dim.sum(axis=-1)


def csm_loss(model, sigmas, params, x, rng, train=True, continuous=False):
  """CSM on an AR model with per-dimension noise annealing and sigma^2 weights.

  x~_d = x_d + sigma_d eps_d, contexts from the clean x; with sigmas=None no noise;
  `continuous`: levels log-uniform over the schedule's range (noise.levels).
  """
  k_sig, k_eps, k_drop = jax.random.split(rng, 3)
  ctx = model.context(params, x, train, k_drop)
  return _csm_given_context(model, sigmas, params, ctx, x, k_sig, k_eps, continuous)


def _csm_given_context(model, sigmas, params, ctx, x, k_sig, k_eps, continuous=False):
  """(loss, metrics) of paper Eq. 5 at fixed clean-data contexts: per-dimension noise
  levels from `sigmas` (None: no noise), x~ = x + sigma eps, sigma^2 weights."""
  if sigmas is None:
    sigma, xt, weight = jnp.ones_like(x), x, None
  else:
    sigma = noise_lib.sample_sigmas(k_sig, x.shape, sigmas, continuous)
    xt, _ = noise_lib.perturb(k_eps, x, sigma)
    weight = sigma ** 2
  s, ds = model.score_and_diag(params, ctx, xt, sigma)
  loss = composite_score_matching(s, ds, weight).mean()
  return loss, {"loss": loss, "score_sq": (0.5 * s ** 2).sum(-1).mean()}


def joint_csm_loss(model, sigmas, params, x, rng, train=True, continuous=False):
  """CSM (paper Eq. 5) on the smoothed joint p_sigma = p * N(0, sigma^2 I) (noise.mode
  'joint'): one level per example, x~ = x + sigma eps on every dimension, contexts from
  the noisy x~ and given sigma, sigma^2 weights.

  Eq. 5 applies unchanged: the samples x~ are data of p_sigma, and s_d(x~_<d, x~_d,
  sigma) are the conditional scores of an AR model of it.
  """
  k_noise, k_drop = jax.random.split(rng)
  xt, sigma = noise_lib.perturb_joint(k_noise, x, sigmas, continuous)
  ctx = model.context(params, xt, train, k_drop, sigma=sigma)
  sig = jnp.broadcast_to(sigma[:, None], xt.shape)
  s, ds = model.score_and_diag(params, ctx, xt, sig)
  loss = composite_score_matching(s, ds, sig ** 2).mean()
  return loss, {"loss": loss, "score_sq": (0.5 * s ** 2).sum(-1).mean()}


def conditional_csm_loss(model, sigmas, params, z, cond, rng):
  """CSM (paper Eq. 5) on a conditional AR model: the scores of q(z_d | z_<d, cond).

  The objective of `csm_loss` with every conditional also given `cond`: per-dimension
  noise z~_d = z_d + sigma_d eps_d, contexts from the clean z and cond, sigma^2
  weights; sigmas=None trains without noise. Returns (loss, metrics).
  """
  chex.assert_rank([z, cond], 2)
  chex.assert_equal_shape_prefix([z, cond], 1)
  k_sig, k_eps = jax.random.split(rng)
  ctx = model.context(params, z, cond)
  return _csm_given_context(model, sigmas, params, ctx, z, k_sig, k_eps)


def mle_loss(model, params, x, rng, train=True, target_sigma=0.0):
  """Negative log-likelihood -sum_d log q(x_d | x_<d) of a normalized AR model.

  With target_sigma > 0 the targets are x~_d = x_d + target_sigma eps_d and the
  contexts stay clean: q then models the noisy conditional p(x~_d | x_<d) whose score
  is what an AR-CSM head learns at that sigma (used by Tweedie denoising, denoise.py).
  """
  k_drop, k_eps = jax.random.split(rng) if target_sigma else (rng, None)
  ctx = model.context(params, x, train, k_drop)
  if target_sigma:
    x = x + target_sigma * jax.random.normal(k_eps, x.shape, x.dtype)
  nll = -model.log_cond(params, ctx, x).sum(axis=-1).mean()
  return nll, {"loss": nll, "nll": nll}


def _score_fn(model, params, rng, train):
  """x -> s(x) (B, D) for a full score network or an AR model (context recomputed)."""
  return lambda y: model.full_score(params, y, jnp.ones_like(y), train, rng)


def sm_loss(model, params, x, rng, train=True, chunk_size=None):
  """Exact score matching: 1/2 ||s||^2 + tr(ds/dx), trace by D one-hot jvps."""
  s, tr = derivatives.jacobian_trace(_score_fn(model, params, rng, train), x, chunk_size)
  loss = (0.5 * (s ** 2).sum(-1) + tr).mean()
  return loss, {"loss": loss}


PROJECTIONS = ("gaussian", "rademacher", "sphere", "gaussian_unit")


def random_projections(rng, shape, distribution, dtype=jnp.float32):
  """Projection vectors v of `shape` (..., D), one per row, drawn by `distribution`:

    gaussian        v ~ N(0, I)                               E[v v^T] = I
    rademacher      v_d = +-1 independently                   E[v v^T] = I
    sphere          v = sqrt(D) g / ||g||, g ~ N(0, I)        E[v v^T] = I
    gaussian_unit   v = g / ||g||, g ~ N(0, I) (||v|| = 1)     E[v v^T] = I / D

  `gaussian_unit` is the convention of the plain SSM losses of the reference code
  (ermongroup/sliced_score_matching): with it SSM estimates SM / D, not SM (see ssm_loss).
  """
  if distribution == "gaussian":
    return jax.random.normal(rng, shape, dtype)
  if distribution == "rademacher":
    return jax.random.rademacher(rng, shape).astype(dtype)
  if distribution in ("sphere", "gaussian_unit"):
    g = jax.random.normal(rng, shape, dtype)
    scale = jnp.sqrt(jnp.asarray(shape[-1], dtype)) if distribution == "sphere" else 1.0
    return scale * g / jnp.linalg.norm(g, axis=-1, keepdims=True)
  raise config_base.ConfigError(f"loss.projection (the SSM projection distribution) must be one of "
                   f"{', '.join(PROJECTIONS)}; got {distribution!r}")


def ssm_loss(model, params, x, rng, train=True, num_projections=1,
             distribution="gaussian", variance_reduced=True):
  """Sliced score matching (Song et al. 2019) with M = num_projections vectors v per example.

  Per example, with s = s(x) and J = ds/dx:

    plain             mean_m [1/2 (v_m^T s)^2 + v_m^T J v_m]
    variance_reduced  1/2 ||s||^2 + mean_m v_m^T J v_m

  For projections with E[v v^T] = I (gaussian, rademacher, sphere) both forms are unbiased
  for exact SM, 1/2 ||s||^2 + tr J, whose minimizer is the true score. With unit-length
  projections (gaussian_unit, E[v v^T] = I / D) they are not:

    plain             E_v = (1/2 ||s||^2 + tr J) / D = SM / D: the same minimizer (the
                      true score), only the scale of the objective changes;
    variance_reduced  E_v = 1/2 ||s||^2 + tr J / D, which equals, up to a constant,
                      1/2 E||s - s_p / D||^2 (integration by parts, E_p[div s] =
                      -E_p[s^T grad log p]): its minimizer is s_p / D, the true score
                      shrunk D times, never the true score itself.
  """
  k_v, k_drop = jax.random.split(rng)
  return sliced_score_matching(_score_fn(model, params, k_drop, train), x, k_v,
                               num_projections, distribution, variance_reduced)


def sliced_score_matching(score_fn, x, rng, num_projections=1, distribution="gaussian",
                          variance_reduced=True):
  """(loss, metrics) of sliced score matching for any score function x (B, D) -> (B, D).

  The body of `ssm_loss` (see there for the two forms and their bias with unit-length
  projections), for score models that are not `ARModel`s: e.g. s(z | x) of a VAE's
  implicit encoder (paper Sec. 6), with x closed over. `rng` draws the projections.
  """
  v = random_projections(rng, (num_projections,) + x.shape, distribution, x.dtype)
  s, f_lin = jax.linearize(score_fn, x)
  jv = jax.vmap(f_lin)(v)                                   # (M, B, D)
  vjv = (v * jv).sum(-1).mean(0)                            # (B,)
  if variance_reduced:
    first = 0.5 * (s ** 2).sum(-1)
  else:
    first = 0.5 * ((v * s[None]).sum(-1) ** 2).mean(0)
  loss = (first + vjv).mean()
  return loss, {"loss": loss}


def dsm_loss(model, params, x, rng, train=True, sigma=0.1):
  """Denoising score matching at noise sigma: 1/2 ||s(x~) + (x~ - x)/sigma^2||^2."""
  k_eps, k_drop = jax.random.split(rng)
  xt, eps = noise_lib.perturb(k_eps, x, sigma)
  s = _score_fn(model, params, k_drop, train)(xt)
  loss = (0.5 * ((s + eps / sigma) ** 2).sum(-1)).mean()
  return loss, {"loss": loss}


def get_loss_fn(config, model):
  """loss_fn(params, x, rng, train) -> (loss, metrics) for config.loss.name."""
  name = config.loss.name
  lc = config.loss
  if name != "mle" and model.kind == "mass":
    raise config_base.ConfigError(f"loss.name={name!r} differentiates the model in x, but the "
                     "discretized_logistic head is a probability mass: train it with "
                     "loss.name='mle', or use model.head='score' for score matching")
  if name != "mle" and lc.mle_target_sigma:
    raise config_base.ConfigError(f"loss.mle_target_sigma applies to loss.name='mle', not {name!r}")
  mode = noise_lib.mode_from_config(config.noise)
  continuous = noise_lib.levels_from_config(config.noise) == "continuous"
  if continuous and (name != "csm" or not config.noise.enabled):
    raise config_base.ConfigError(f"noise.levels='continuous' applies to loss.name='csm' with "
                                  f"noise.enabled=True, not loss.name={name!r}")
  if mode == "joint":
    if name != "csm" or not config.noise.enabled:
      raise config_base.ConfigError(f"noise.mode='joint' trains with loss.name='csm' and "
                                    f"noise.enabled=True, not loss.name={name!r}")
    if not getattr(model, "context_sigma", False):
      raise config_base.ConfigError("noise.mode='joint' needs a context that takes the noise "
                                    "level: set model.context_sigma_embedding > 0")
    return functools.partial(joint_csm_loss, model, noise_lib.sigmas_from_config(config.noise),
                             continuous=continuous)
  if name == "csm":
    return functools.partial(csm_loss, model, noise_lib.sigmas_from_config(config.noise),
                             continuous=continuous)
  if name == "mle":
    if model.kind == "score":
      raise config_base.ConfigError("loss.name='mle' needs a normalized head (gaussian, logistic_mixture, "
                       f"discretized_logistic); model.head={config.model.head!r} is an "
                       "unnormalized score head")
    return functools.partial(mle_loss, model, target_sigma=float(lc.mle_target_sigma))
  if name == "sm":
    return functools.partial(sm_loss, model, chunk_size=lc.sm_chunk_size)
  if name == "ssm":
    if lc.projection not in PROJECTIONS:
      raise config_base.ConfigError(f"loss.projection must be one of {', '.join(PROJECTIONS)}; "
                       f"got {lc.projection!r}")
    return functools.partial(ssm_loss, model, num_projections=lc.num_projections,
                             distribution=lc.projection, variance_reduced=lc.variance_reduced)
  if name == "dsm":
    return functools.partial(dsm_loss, model, sigma=lc.dsm_sigma)
  raise config_base.ConfigError(f"unknown loss.name {name!r}; known: csm, mle, sm, ssm, dsm")
