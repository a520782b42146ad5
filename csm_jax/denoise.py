"""Denoising with autoregressive score models (Meng et al. 2020, Sec. 5.4, Fig. 5).

Corruptions are pure functions of an explicit rng, applied in the model's space:

  `salt_and_pepper(rng, x, p, low, high)`   each coordinate independently set to `low`
                                            with probability p/2, to `high` with p/2.
  `gaussian_noise(rng, x, sigma)`           x + sigma * N(0, I).

Restorations:

  `tweedie_denoise(model, params, y, sigma, autoregressive=True)`: one step of the
    paper's single-step denoiser, x_hat_d = y_d + sigma^2 s_d(x_hat_<d, y_d, sigma)
    (Tweedie's formula for the posterior mean of x_d given the noisy y_d and the
    context, with the noise-conditional conditional score). `autoregressive=True`
    computes the contexts from the already denoised prefix x_hat_<d, in the model's
    order (D context passes); `False` is the all-at-once variant whose contexts come
    from the noisy y (one pass). A normalized (MLE) model uses its exact conditional
    score d/dy_d log q(y_d | x_<d); this is the posterior mean only if that model was
    fit to noisy targets (loss.mle_target_sigma = sigma, see `losses.mle_loss`).

  `langevin_restore(model, params, rng, y, sigmas, start_sigma, ...)`: annealed 1-D
    Langevin chains (paper Sec. 4.2) started at the corrupted values instead of a
    random draw, run dimension by dimension in the model's order with contexts from
    the already restored prefix, over the noise levels sigma <= start_sigma. It is the
    cached-context sampler `sampling.sample` with `x_init = y`.
    `fixed_point_restore` computes the same restoration by parallel Jacobi sweeps
    (`sampling.fixed_point_sample`, warm-started at x^(0) = y: the first sweep's
    contexts come from the corrupted image); `restorer_from_config` picks it when
    config.sampling.method = 'fixed_point'.

Image metrics (PSNR, SSIM) come from dm-pix; the classical baselines (median filter,
Gaussian blur) from scipy.ndimage.
"""

from typing import Optional, Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np

from csm_jax import chunked
from csm_jax import sampling


# ------------------------------------------------------------------------------------
# Corruptions
# ------------------------------------------------------------------------------------


def salt_and_pepper(rng, x, p: float, low: float = 0.0, high: float = 1.0):
  """Each entry of x independently -> `low` w.p. p/2, -> `high` w.p. p/2, else kept.

  Returns (corrupted, mask) with mask True where an entry was replaced.
  """
  if not 0.0 <= p <= 1.0:
    raise ValueError(f"salt-and-pepper rate must be in [0, 1], got {p}")
  u = jax.random.uniform(rng, jnp.shape(x))
  pepper = u < 0.5 * p
  salt = (u >= 0.5 * p) & (u < p)
  y = jnp.where(pepper, jnp.asarray(low, jnp.result_type(x)),
                jnp.where(salt, jnp.asarray(high, jnp.result_type(x)), x))
  return y, pepper | salt


def gaussian_noise(rng, x, sigma: float):
  """x + sigma * eps, eps ~ N(0, I) (additive Gaussian noise in the model's space)."""
  if sigma < 0:
    raise ValueError(f"noise sigma must be >= 0, got {sigma}")
  return x + sigma * jax.random.normal(rng, jnp.shape(x), jnp.result_type(x))


# ------------------------------------------------------------------------------------
# Single-step (Tweedie) denoising
# ------------------------------------------------------------------------------------


def _require_score(model):
  if model.discrete:
    raise ValueError("denoising needs a score d/dx_d: a probability-mass head "
                     "(discretized_logistic) has none")


def tweedie_denoise(model, params, y, sigma: float, autoregressive: bool = True):
  """x_hat_d = y_d + sigma^2 s_d(context, y_d, sigma) for every d; (B, D) -> (B, D).

  autoregressive: contexts from the denoised prefix x_hat_<d (model order, D context
  passes, one `lax.scan`); otherwise from the noisy y (one pass).
  """
  _require_score(model)
  chex.assert_shape(y, (None, model.dim))
  sig = jnp.full_like(y, sigma)
  if not autoregressive:
    return y + sigma ** 2 * model.full_score(params, y, sig)
  order = jnp.asarray(model.order)

  def per_dim(x, t):
    d = order[t]
    ctx_d = jax.lax.dynamic_index_in_dim(model.context(params, x), d, axis=1)  # (B,1,C)
    yd = jax.lax.dynamic_index_in_dim(y, d, axis=1)                          # (B,1)
    xd = yd + sigma ** 2 * model.score(params, ctx_d, yd, sig[:, :1])
    return jax.lax.dynamic_update_index_in_dim(x, xd[:, 0], d, axis=1)

  return chunked.scan_dims(per_dim, y, 0, model.dim, model.dim)


def make_tweedie_denoiser(model, sigma: float, autoregressive: bool = True):
  """jit-compiled (params, y) -> x_hat (see `tweedie_denoise`)."""
  return jax.jit(lambda params, y: tweedie_denoise(model, params, y, sigma, autoregressive))


# ------------------------------------------------------------------------------------
# Langevin restoration
# ------------------------------------------------------------------------------------


def restoration_sigmas(sigmas: Sequence[float], start_sigma: float) -> tuple:
  """The levels of a decreasing schedule that are <= start_sigma (at least the last)."""
  sigmas = [float(s) for s in sigmas]
  if any(b >= a for a, b in zip(sigmas, sigmas[1:])):
    raise ValueError(f"noise levels must decrease, got {sigmas}")
  kept = tuple(s for s in sigmas if s <= start_sigma * (1 + 1e-6))
  if not kept:
    raise ValueError(f"start_sigma={start_sigma} is below every noise level "
                     f"(smallest {sigmas[-1]})")
  return kept


def langevin_restore(model, params, rng, y, sigmas: Sequence[float], start_sigma: float,
                     n_steps: int = 10, step_lr: float = 2e-5, denoise: bool = True,
                     mh_nodes: int = 0):
  """Annealed 1-D Langevin started at y, levels sigma <= start_sigma; (B, D) -> (B, D).

  Exactly `sampling.sample(..., x_init=y)` on the truncated schedule: dimension d's
  chain starts at y_d, its context comes from the restored x_<d. step_lr is alpha at
  the last level (alpha_i = step_lr sigma_i^2 / sigma_L^2); mh_nodes >= 2: MALA steps.
  """
  _require_score(model)
  chex.assert_shape(y, (None, model.dim))
  levels = restoration_sigmas(sigmas, start_sigma)
  return sampling.sample(model, params, rng, y.shape[0], levels, n_steps=n_steps,
                         step_lr=step_lr, denoise=denoise, x_init=y, mh_nodes=mh_nodes)


def make_langevin_restorer(model, sigmas: Sequence[float], start_sigma: float,
                           n_steps: int = 10, step_lr: float = 2e-5, denoise: bool = True,
                           mh_nodes: int = 0):
  """jit-compiled (params, rng, y) -> restored y (see `langevin_restore`)."""
  levels = restoration_sigmas(sigmas, start_sigma)
  return jax.jit(lambda params, rng, y: langevin_restore(
      model, params, rng, y, levels, start_sigma, n_steps, step_lr, denoise, mh_nodes))


def fixed_point_restore(model, params, rng, y, sigmas: Sequence[float], start_sigma: float,
                        n_steps: int = 10, step_lr: float = 2e-5, denoise: bool = True,
                        mh_nodes: int = 0, max_sweeps: Optional[int] = None,
                        tol: float = 0.0):
  """`langevin_restore`'s result by Jacobi sweeps; returns (x (B, D), sweeps, last change).

  With the random numbers of every dimension fixed, the restoration is the fixed point
  of x = F(x), F_d(x) = dimension d's chain started at y_d given the context of x_<d
  (`sampling.fixed_point_sample`, Song et al. ICML 2021). The iteration starts at
  x^(0) = y, so the first sweep already restores every dimension given the corrupted
  context. After k sweeps the first k dimensions of the order are exact; at most D
  sweeps (`max_sweeps`, default D) give the sequential restoration, fewer stop when no
  coordinate moves by more than `tol` (0: until exact). Jit-able.
  """
  _require_score(model)
  chex.assert_shape(y, (None, model.dim))
  levels = restoration_sigmas(sigmas, start_sigma)
  return sampling.fixed_point_sample(
      "langevin", model, params, rng, y.shape[0], max_sweeps, tol, sigmas=levels,
      n_steps=n_steps, step_lr=step_lr, denoise=denoise, x_init=y, mh_nodes=mh_nodes)


def make_fixed_point_restorer(model, sigmas: Sequence[float], start_sigma: float,
                              n_steps: int = 10, step_lr: float = 2e-5, denoise: bool = True,
                              mh_nodes: int = 0, max_sweeps: Optional[int] = None,
                              tol: float = 0.0):
  """jit-compiled (params, rng, y) -> (restored y, sweeps, last change) (see
  `fixed_point_restore`)."""
  levels = restoration_sigmas(sigmas, start_sigma)
  return jax.jit(lambda params, rng, y: fixed_point_restore(
      model, params, rng, y, levels, start_sigma, n_steps, step_lr, denoise, mh_nodes,
      max_sweeps, tol))


def restorer_from_config(config, model, start_sigma: float, log=None, **overrides):
  """(restore (params, rng, y) -> x, info): `make_langevin_restorer` with the sampler
  settings of config.sampling (num_steps, step_lr, denoise, mh_correction / mh_nodes;
  keyword overrides replace them, mh_nodes included) on the training noise schedule (or
  sampling.sigmas).

  With sampling.method = 'fixed_point' (or the override method='fixed_point') the same
  restoration comes from `make_fixed_point_restorer` (sampling.max_sweeps,
  sampling.fixed_point_tol; overrides max_sweeps, fixed_point_tol); each call then
  records the sweeps used, the last change and whether it converged in info['sweeps'],
  info['max_change'], info['converged'], and reports them through `log(str)` if given.
  """
  from csm_jax import noise as noise_lib  # pylint: disable=g-import-not-at-top
  s = config.sampling
  opt = {"num_steps": s.num_steps, "step_lr": s.step_lr, "denoise": s.denoise,
         "mh_nodes": s.mh_nodes if s.mh_correction else 0, "method": s.method,
         "max_sweeps": s.max_sweeps, "fixed_point_tol": s.fixed_point_tol}
  unknown = set(overrides) - set(opt)
  if unknown:
    raise ValueError(f"unknown restorer overrides {sorted(unknown)}")
  opt.update({k: v for k, v in overrides.items() if v is not None})
  sigmas = s.sigmas or noise_lib.sigmas_from_config(config.noise)
  if sigmas is None:
    raise ValueError("a model trained without noise levels: set sampling.sigmas")
  chain = (int(opt["num_steps"]), float(opt["step_lr"]), bool(opt["denoise"]),
           int(opt["mh_nodes"]))
  info = dict(opt, start_sigma=float(start_sigma),
              levels=list(restoration_sigmas(sigmas, start_sigma)))
  if opt["method"] == "sequential":
    del info["max_sweeps"], info["fixed_point_tol"]
    fn = make_langevin_restorer(model, sigmas, start_sigma, *chain)
  elif opt["method"] == "fixed_point":
    fn = _fixed_point_restorer(model, sigmas, start_sigma, chain, info, log)
  else:
    raise ValueError(f"sampling.method must be 'sequential' or 'fixed_point', "
                     f"got {opt['method']!r}")
  return fn, info


def _fixed_point_restorer(model, sigmas, start_sigma, chain, info, log):
  """restorer_from_config's (params, rng, y) -> x for method 'fixed_point'; each call
  writes its sweeps, last change and convergence into `info`."""
  tol = float(info["fixed_point_tol"])
  run = make_fixed_point_restorer(model, sigmas, start_sigma, *chain,
                                  max_sweeps=info["max_sweeps"], tol=tol)

  def restore(params, rng, y):
    x, sweeps, change = run(params, rng, y)
    stats = {"sweeps": int(sweeps), "max_change": float(change),
             "converged": sampling.fixed_point_converged(sweeps, change, tol, model.dim)}
    info.update(stats)
    if log is not None:
      log(sampling.fixed_point_message("restoration", stats, model.dim))
    return x
  return restore


# ------------------------------------------------------------------------------------
# Metrics and classical baselines (images in [0, 1], (N, H, W, C))
# ------------------------------------------------------------------------------------


def image_metrics(clean: np.ndarray, restored: np.ndarray) -> dict:
  """Mean PSNR and SSIM (dm-pix, max value 1) of images in [0, 1], (N, H, W, C).

  `restored` is clipped to [0, 1] first (a restoration is shown as pixels).
  """
  import dm_pix  # pylint: disable=g-import-not-at-top  (heavy; only for metrics)
  clean = jnp.asarray(clean, jnp.float32)
  restored = jnp.clip(jnp.asarray(restored, jnp.float32), 0.0, 1.0)
  chex.assert_equal_shape([clean, restored])
  chex.assert_rank(clean, 4)
  psnr = dm_pix.psnr(clean, restored)
  ssim = dm_pix.ssim(clean, restored)
  return {"psnr": float(jnp.mean(psnr)), "psnr_std": float(jnp.std(psnr)),
          "ssim": float(jnp.mean(ssim)), "ssim_std": float(jnp.std(ssim))}


def median_filter(images: np.ndarray, size: int = 3) -> np.ndarray:
  """size x size median filter per image and channel (scipy), (N, H, W, C)."""
  from scipy import ndimage  # pylint: disable=g-import-not-at-top
  return ndimage.median_filter(np.asarray(images), size=(1, size, size, 1), mode="reflect")


def gaussian_blur(images: np.ndarray, width: float) -> np.ndarray:
  """Gaussian filter of standard deviation `width` pixels per image and channel."""
  from scipy import ndimage  # pylint: disable=g-import-not-at-top
  return ndimage.gaussian_filter(np.asarray(images, np.float64), sigma=(0, width, width, 0),
                                 mode="reflect").astype(np.float32)


def best_blur_width(clean: np.ndarray, noisy: np.ndarray,
                    widths: Sequence[float] = (0.5, 0.75, 1.0, 1.25, 1.5, 2.0)) -> float:
  """The blur width of highest mean PSNR on (clean, noisy) pairs: fit on held-out
  images, never on the images it is then evaluated on."""
  scores = [image_metrics(clean, gaussian_blur(noisy, w))["psnr"] for w in widths]
  return float(widths[int(np.argmax(scores))])


def linear_posterior_mean(train_x: np.ndarray, y: np.ndarray, sigma: float,
                          ridge: float = 1e-6) -> np.ndarray:
  """The best linear (Wiener) estimate E[x] + C (C + sigma^2 I)^-1 (y - E[x]) of x from
  y = x + sigma eps, with mean and covariance C of the clean training vectors (N, D)."""
  x = np.asarray(train_x, np.float64)
  mu = x.mean(0)
  cov = np.cov(x, rowvar=False) + ridge * np.eye(x.shape[1])
  gain = np.linalg.solve(cov + sigma ** 2 * np.eye(x.shape[1]), cov).T
  return ((np.asarray(y, np.float64) - mu) @ gain.T + mu).astype(np.float32)
