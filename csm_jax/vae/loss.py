"""VAE objectives as (loss, metrics) functions; minimized, per-example means.

  gaussian_elbo    -ELBO of an explicit Gaussian encoder: one-sample reconstruction
                   plus the analytic KL to the prior (the ELBO baseline of Table 2).
  implicit_loss    the same for an implicit encoder, with the entropy through a score
                   estimate: recon + E[-log p(z)] + sg(s) . z (gradient-exact surrogate).
  score_fit_loss   the score model's own objective on fresh, stop-gradient encoder
                   samples of the batch.
"""

import jax

from csm_jax.vae import objectives


def gaussian_elbo(vae, params, x, rng):
  mean, log_std = vae.gaussian_posterior(params, x)
  z = mean + jax.numpy.exp(log_std) * jax.random.normal(rng, mean.shape, mean.dtype)
  recon = -vae.log_likelihood(params, x, z)
  kl = objectives.gaussian_kl(mean, log_std)
  loss = (recon + kl).mean()
  return loss, {"loss": loss, "neg_elbo": loss, "recon": recon.mean(), "kl": kl.mean()}


def implicit_loss(vae, estimator, params, score_params, x, rng):
  """recon(z_1) + mean_p [-log p(z_p) + sg(s(z_p | x)) . z_p] over P = num_particles
  encoder samples per x (P = 1 for learned estimators), as in the reference."""
  z = vae.encode(params, x, rng, estimator.num_particles)            # (P, B, Z)
  s = estimator.score(score_params, jax.lax.stop_gradient(z), x)
  recon = -vae.log_likelihood(params, x, z[0])
  nlogpz = -objectives.log_prior(z).mean(0)
  ent = objectives.entropy_surrogate(z, s).mean(0)
  loss = (recon + nlogpz - ent).mean()
  return loss, {"loss": loss, "recon": recon.mean(), "neg_log_prior": nlogpz.mean(),
                "score_sq": (s ** 2).sum(-1).mean()}


def score_fit_loss(vae, estimator, score_params, params, x, rng):
  """The estimator's fit objective on one fresh stop-gradient encoder sample per x."""
  k_z, k_fit = jax.random.split(rng)
  z = jax.lax.stop_gradient(vae.encode(params, x, k_z, 1)[0])
  return estimator.fit_loss(score_params, z, x, k_fit)
