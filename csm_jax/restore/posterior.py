"""Posterior samplers p(x | y) proportional to q(x) p(y | x), with an AR model as prior.

All samplers run batched (every image times `chains` chains at once) under one jit.
The state is the model-space vector x (N * chains, D); pixels that the observation pins
(`observations.*.fixed`: inpainting's observed pixels, salt-and-pepper's non-extreme
ones) are clamped to their value and never move, so they are kept exactly.

Stages (each optional, run in this order; `Settings.method` picks them):
  annealed Langevin  over the levels sigma_1 > ... > sigma_L (the model's schedule):
                     T = steps_per_level steps x <- x + alpha_i/2 g + sqrt(alpha_i) z,
                     alpha_i = step_lr sigma_i^2 / sigma_L^2, with
                     g = grad log q_{sigma_i}(x) + grad log p_i(y | x), where p_i is the
                     observation with its noise inflated by the extra smoothing of level
                     i, (sigma_i^2 - sigma_L^2) (score-SDE / NCSN-style annealing of the
                     observation term); at the last level it is the exact posterior.
  filter / smc       (instead of annealing) the pixels in the model's order, each drawn
                     on its 256 values from q(x_d | x_<d) times the likelihood factors
                     it completes (`filtering.py`): exact for a suffix mask, no
                     look-ahead otherwise; 'smc' weights and resamples the chains of an
                     image as particles (exact as chains grow). The filter's mean is
                     Rao-Blackwellized (each chain's conditional means).
  MH sweeps          mh_sweeps Metropolized sweeps on the pixel values: each free pixel
                     re-proposed from its filter conditional, accepted by the later
                     conditionals' verdict: keeps the filter's lattice posterior (its
                     masses from filter_mass_sigma too) and adds the look-ahead.
  MALA               mala_steps Metropolis-adjusted Langevin steps at sigma_L on the exact
                     log q_{sigma_L}(x) + log p(y | x): leaves that posterior invariant.
  Gibbs              gibbs_sweeps sweeps over the free pixels in the model's order; each
                     pixel is drawn exactly from its full conditional on a grid of
                     gibbs_values values (the posterior discretized in that pixel: all
                     later conditionals and the likelihood re-evaluated for every value
                     in one batched pass). No step size; costs K joint evaluations per
                     pixel, so it is meant for small models or few sweeps.
  tweedie            (Gaussian noise, smoothed-joint prior; no sampling) the posterior
                     mean in one gradient, y + s^2 grad log q_s(y) (`tweedie.py`).
  project            (inpainting, super-resolution, salt-and-pepper; smoothed-joint
                     prior; no sampling) from a classical restoration, the model's Tweedie
                     denoiser and the projection onto the observation in turn over
                     decreasing levels (`project.py`): a plug-and-play point estimate,
                     not a posterior mean.
The start (`Settings.init`, annealed / MALA / Gibbs): the observation's own fill-in,
the classical restoration (`project.INIT_START`: the loop's start on the tasks that pin
pixels, BM3D on Gaussian noise) or, for the tasks denoise-and-project covers, its
estimate, from which annealing at levels below sigma_1 need not
travel as far (the warm start of Chung, Sim and Ye 2022, "Come-Closer-Diffuse-Faster":
a good estimate plus sigma_1 noise stands in for a draw at level sigma_1). The chains
still end in the posterior at sigma_L to the extent they mix; with few steps the start
leaves its mark, which `experiments.restore` measures against the start itself.
Outputs: the posterior mean over chains in image units (the MMSE estimate, what PSNR
rewards), one sample (chain 0), and with map_steps > 0 a MAP estimate (gradient ascent
on the exact log posterior at sigma_L from the starting image).
"""

import dataclasses
import time
import types
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from csm_jax import noise as noise_lib
from csm_jax.restore import filtering as filter_lib
from csm_jax.restore import joint as joint_lib
from csm_jax.restore import observations as obs_lib
from csm_jax.restore import project as project_lib
from csm_jax.restore import tweedie as tweedie_lib

METHODS = ("annealed", "mala", "gibbs", "filter", "smc", "tweedie", "project")
POINT_METHODS = ("tweedie", "project")   # one estimate, no chains or sampler stages
INITS = ("observation", "classical", "project")   # the chains' start (Settings.init)
INIT_METHODS = ("annealed", "mala", "gibbs")       # the methods that start from an image
# the stages that follow a method (restore.FIELD counts; 0: skipped)
FINISH_STAGES = ("mala_steps", "mh_sweeps", "gibbs_sweeps", "map_steps")


@dataclasses.dataclass(frozen=True)
class Settings:
  """Sampler settings (config.restore holds the same fields with their ranges)."""
  sigmas: tuple                 # annealing levels, descending; the last is the prior's
  method: str = "annealed"      # annealed | filter | smc (+ MH/MALA/Gibbs finish) | mala
                                # | gibbs | tweedie (Gaussian noise: no sampling)
                                # | project (denoise-and-project: no sampling)
  steps_per_level: int = 10
  step_lr: float = 5e-3         # Langevin step alpha at the last level
  mala_steps: int = 0
  mala_step: Optional[float] = None   # None: step_lr
  mh_sweeps: int = 0            # Metropolized filter-proposal sweeps (filtering.py)
  filter_mass_sigma: Optional[float] = None   # filter/smc: side masses from this level
  gibbs_sweeps: int = 0
  gibbs_values: int = 33
  chains: int = 4
  map_steps: int = 0
  map_lr: Optional[float] = None      # None: step_lr / 2
  init_noise: bool = True       # annealed: start from the init image + sigma_1 noise
  noise_pins: bool = False      # annealed: pinned pixels carry the level's extra noise
  project_start: float = 0.1    # project: the first denoiser level, image units
  project_end: float = 0.02     # project: the last one
  project_levels: int = 5       # project: levels, log-spaced from start to end
  init: str = "observation"     # annealed / mala / gibbs: start from the observation's
                                # fill-in, the classical restoration or the
                                # denoise-and-project estimate (INITS)
  sp_start: str = "adaptive_median"   # salt-and-pepper: the classical start
                                      # (project.SP_STARTS)

  def __post_init__(self):
    if self.method not in METHODS:
      raise ValueError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
    s = np.asarray(self.sigmas, np.float64)
    if s.ndim != 1 or len(s) < 1 or not (s > 0).all():
      raise ValueError(f"sigmas must be positive noise levels, got {self.sigmas!r}")
    for name in ("steps_per_level", "chains", "gibbs_values"):
      if int(getattr(self, name)) < 1:
        raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
    for name in FINISH_STAGES:
      if int(getattr(self, name)) < 0:
        raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
    if not self.step_lr > 0:
      raise ValueError(f"step_lr must be > 0, got {self.step_lr!r}")
    if self.method in POINT_METHODS:
      for name in FINISH_STAGES:
        if int(getattr(self, name)):
          raise ValueError(f"{name}: method {self.method!r} computes one estimate "
                           f"without sampling and has no sampler stages; set it to 0")
    project_lib.levels(self.project_start, self.project_end, self.project_levels)
    project_lib.check_sp_start(self.sp_start)
    if self.init not in INITS:
      raise ValueError(f"init must be one of {', '.join(INITS)}, got {self.init!r}")
    if self.init != "observation" and self.method not in INIT_METHODS:
      raise ValueError(f"init {self.init!r}: a start applies to methods "
                       f"{', '.join(INIT_METHODS)}, not {self.method!r}")
    if self.filter_mass_sigma is not None and not self.filter_mass_sigma > self.sigma_min:
      raise ValueError(f"filter_mass_sigma must be None or > the last level "
                       f"{self.sigma_min}, got {self.filter_mass_sigma!r}")

  @property
  def sigma_min(self) -> float:
    return float(self.sigmas[-1])


def _target(joint, obs, space, y, fixed_mask, fixed_x):
  """log pi(x) and its gradient over the free coordinates, at (sigma, extra_var)."""
  def lik(x, extra_var):
    return obs.log_likelihood(y, space.to_image(x), extra_var)

  def value_and_grad(params, x, sigma, extra_var, pin=True):
    """pin=False: the pinned coordinates are read from x as they are (their gradient
    returned too), for the annealed stage's noised pins."""
    if pin:
      x = jnp.where(fixed_mask, fixed_x, x)
    lp, g = joint.value_and_grad_fn(params, x, sigma)
    ll, pull = jax.vjp(lambda z: lik(z, extra_var), x)
    gl = pull(jnp.ones_like(ll))[0]
    return lp + ll, (jnp.where(fixed_mask, 0.0, g + gl) if pin else g + gl)

  def value(params, x, sigma):
    x = jnp.where(fixed_mask, fixed_x, x)
    return joint.log_prob_fn(params, x, sigma) + lik(x, 0.0)
  return value_and_grad, value


def make_sampler(model, joint: joint_lib.Joint, obs, space: obs_lib.PixelSpace,
                 settings: Settings):
  """jit (params, y (N, Dy) image units, rng[, x_init, start]) -> dict of outputs.

  x_init: optional (N, chains, D) model-space starting states, used as they are. start:
  optional (N, D) image-unit start image in place of the observation's init image (the
  pinned pixels keep their values), plus sigma_1 noise for 'annealed' as that one gets.

  Keys: mean (N, D) image units (posterior mean over chains), sample (N, D), chains
  (N, chains, D) image units, map (N, D) when map_steps > 0, accept (MALA acceptance
  rate, NaN without MALA), x (N, chains, D) model space.
  """
  st = settings
  if st.method in POINT_METHODS:
    raise ValueError(f"method {st.method!r} is not a sampler: use tweedie.make_tweedie or "
                     f"project.make_project (or restore(), which dispatches)")
  sig = jnp.asarray(np.asarray(st.sigmas, np.float32))
  s_min = st.sigma_min
  scale2 = space.image_per_model ** 2
  alphas = st.step_lr * sig ** 2 / s_min ** 2
  mala_step = st.step_lr if st.mala_step is None else st.mala_step
  map_lr = 0.5 * st.step_lr if st.map_lr is None else st.map_lr
  c = st.chains
  box = joint.box
  dim = model.dim
  # a box-normalized prior is zero outside its box: Langevin projects onto it, MALA
  # rejects proposals that leave it, MAP projects (no box: exact normalized head)
  into_box = (lambda x: x) if box is None else (lambda x: jnp.clip(x, box.lo, box.hi))
  in_box = ((lambda x: jnp.ones(x.shape[0], bool)) if box is None else
            (lambda x: jnp.all((x >= box.lo) & (x <= box.hi), -1)))
  filt = (filter_lib.make_filter(model, obs, space, s_min, c, box,
                                 resample=st.method == "smc",
                                 mass_sigma=st.filter_mass_sigma)
          if st.method in ("filter", "smc") else None)
  mh = (filter_lib.make_mh_sweeps(model, obs, space, s_min, st.mh_sweeps, box,
                                  mass_sigma=st.filter_mass_sigma)
        if st.mh_sweeps else None)

  def run(params, y, rng, x_init=None, start=None):
    n = y.shape[0]
    fixed_img_mask, fixed_img = obs.fixed(y)
    fixed_x1 = space.from_image(fixed_img.astype(jnp.float32))
    start = obs.init_image(y) if start is None else start
    init1 = jnp.where(fixed_img_mask, fixed_x1,
                      space.from_image(jnp.asarray(start).astype(jnp.float32)))
    rep = lambda a: jnp.repeat(a, c, axis=0)
    yc, fmask, fx = rep(y), rep(fixed_img_mask), rep(fixed_x1)
    vg, val = _target(joint, obs, space, yc, fmask, fx)
    free = ~fmask
    k_init, k_run, k_mala, k_gibbs = jax.random.split(rng, 4)
    init1 = jnp.where(fixed_img_mask, init1, into_box(init1))
    x = rep(init1) if x_init is None else jnp.where(fmask, fx, x_init.reshape(n * c, dim))
    out = {}
    if st.method == "annealed":
      # noise_pins: at level s the pinned pixels are free coordinates tied to their value
      # by N(fx, s^2 - s_L^2) (what a Gaussian observation's annealing does), so a
      # smoothed-joint context sees the whole image at the level it was trained on;
      # pinned exactly at the last level (and at the end)
      moving = jnp.ones_like(free) if st.noise_pins else free
      if st.init_noise and x_init is None:
        x = into_box(x + moving * sig[0] * jax.random.normal(k_init, x.shape, x.dtype))

      def level(carry, inp):
        x, key = carry
        s, a = inp
        extra = (s ** 2 - s_min ** 2) * scale2
        pin_var = jnp.maximum(s ** 2 - s_min ** 2, 1e-12)   # model units
        soft = st.noise_pins & (s > s_min)

        def step(t, xk):
          x, key = xk
          key, kz = jax.random.split(key)
          if st.noise_pins:
            _, g = vg(params, jnp.where(soft, x, jnp.where(fmask, fx, x)), s, extra, pin=False)
            g = jnp.where(fmask, jnp.where(soft, g + (fx - x) / pin_var, 0.0), g)
            mv = jnp.where(soft, moving, free)
          else:
            _, g = vg(params, x, s, extra)
            mv = free
          z = jax.random.normal(kz, x.shape, x.dtype)
          return into_box(x + mv * (0.5 * a * g + jnp.sqrt(a) * z)), key
        return jax.lax.fori_loop(0, st.steps_per_level, step, (x, key)), None
      (x, _), _ = jax.lax.scan(level, (x, k_run), (sig, alphas))

    rb = None
    if filt is not None:
      x, rb = filt(params, yc, x, free, k_run)
    mh_accept = jnp.float32(jnp.nan)
    if mh is not None:
      x, acc_mh = mh(params, yc, x, free, jax.random.fold_in(k_run, 1))
      mh_accept = jnp.mean(acc_mh)

    accept = jnp.float32(jnp.nan)
    if st.method != "gibbs" and st.mala_steps:
      a = mala_step

      def log_prop(x_to, x_from, g_from):   # log N(x_to; x_from + a/2 g, a) on free coords
        r = free * (x_to - x_from - 0.5 * a * g_from)
        return -0.5 * jnp.sum(r * r, -1) / a

      def mstep(t, carry):
        x, lp, g, key, acc = carry
        key, kz, ku = jax.random.split(key, 3)
        prop = x + free * (0.5 * a * g + jnp.sqrt(a) * jax.random.normal(kz, x.shape, x.dtype))
        lp_p, g_p = vg(params, prop, s_min, 0.0)
        log_r = lp_p - lp + log_prop(x, prop, g_p) - log_prop(prop, x, g)
        ok = (jnp.log(jax.random.uniform(ku, lp.shape, lp.dtype)) < log_r) & in_box(prop)
        return (jnp.where(ok[:, None], prop, x), jnp.where(ok, lp_p, lp),
                jnp.where(ok[:, None], g_p, g), key, acc + ok.astype(jnp.float32))
      lp0, g0 = vg(params, x, s_min, 0.0)
      x, _, _, _, acc = jax.lax.fori_loop(
          0, st.mala_steps, mstep, (x, lp0, g0, k_mala, jnp.zeros(x.shape[0], jnp.float32)))
      accept = jnp.mean(acc) / st.mala_steps

    if st.gibbs_sweeps:
      if box is None:
        raise ValueError("gibbs: needs the joint's box (its grid of values)")
      values = jnp.linspace(box.lo, box.hi, st.gibbs_values, dtype=x.dtype)
      kv = st.gibbs_values
      order = jnp.asarray(np.asarray(model.order), jnp.int32)
      tile = lambda a: jnp.tile(a, (kv, 1))        # row k * B + b: value k, chain b
      _, val_k = _target(joint, obs, space, tile(yc), tile(fmask), tile(fx))

      def draw(x, d, kc):
        cand = jnp.broadcast_to(x, (kv,) + x.shape).at[:, :, d].set(values[:, None])
        lp = val_k(params, cand.reshape(kv * x.shape[0], dim), s_min).reshape(kv, x.shape[0])
        k = jax.random.categorical(kc, lp, axis=0)
        return x.at[:, d].set(jnp.where(free[:, d], values[k], x[:, d]))

      def gstep(t, carry):
        x, key = carry
        key, kc = jax.random.split(key)
        d = order[t % dim]
        # a pixel pinned in every chain (observed exactly) is skipped: no evaluations
        x = jax.lax.cond(jnp.any(free[:, d]), lambda z: draw(z, d, kc), lambda z: z, x)
        return x, key
      x, _ = jax.lax.fori_loop(0, st.gibbs_sweeps * dim, gstep, (x, k_gibbs))

    x = jnp.where(fmask, fx, x)
    img = space.to_image(x)
    if space.bounded:
      img = jnp.clip(img, 0.0, 1.0)
    img = jnp.where(fmask, rep(fixed_img).astype(img.dtype), img)   # pinned: exactly y
    img = img.reshape(n, c, dim)
    mean = img.mean(1)
    if st.method == "filter" and not (st.mala_steps or st.gibbs_sweeps or st.mh_sweeps):
      # the filter's per-pixel conditional means (Rao-Blackwellized), over the chains
      rb = jnp.clip(rb, 0.0, 1.0) if space.bounded else rb
      rb = jnp.where(fmask, rep(fixed_img).astype(rb.dtype), rb)
      mean = rb.reshape(n, c, dim).mean(1)
    # the mean of c equal float32 values can miss them by an ulp: pinned means are y too
    mean = jnp.where(fixed_img_mask, fixed_img.astype(mean.dtype), mean)
    out.update(mean=mean, sample=img[:, 0], chains=img, accept=accept, mh_accept=mh_accept,
               x=x.reshape(n, c, dim))
    if st.map_steps:
      vg1, _ = _target(joint, obs, space, y, fixed_img_mask, fixed_x1)

      def astep(t, x):
        _, g = vg1(params, x, s_min, 0.0)
        return into_box(x + map_lr * g)
      xm = jnp.where(fixed_img_mask, fixed_x1,
                     jax.lax.fori_loop(0, st.map_steps, astep, init1))
      im = space.to_image(xm)
      im = jnp.clip(im, 0.0, 1.0) if space.bounded else im
      out["map"] = jnp.where(fixed_img_mask, fixed_img.astype(im.dtype), im)
    return out

  return jax.jit(run)


# ------------------------------------------------------------------------------------
# From a config: the library call for notebooks and --mode=restore
# ------------------------------------------------------------------------------------


def settings_from_config(config) -> Settings:
  """Sampler settings from config.restore; levels from restore.sigmas, else the model's
  noise schedule (the last restore.num_levels of it), step_lr None: sigma_L^2 / 2."""
  rc = config.restore
  sigmas = rc.sigmas
  if sigmas is None:
    sch = noise_lib.sigmas_from_config(config.noise)
    sigmas = (1.0,) if sch is None else tuple(float(s) for s in sch)
  if rc.num_levels is not None:
    sigmas = tuple(sigmas)[-int(rc.num_levels):]
  sigmas = tuple(float(s) for s in sigmas)
  step_lr = 0.5 * sigmas[-1] ** 2 if rc.step_lr is None else float(rc.step_lr)
  return Settings(sigmas=sigmas, method=rc.method,
                  steps_per_level=int(rc.steps_per_level), step_lr=step_lr,
                  mala_steps=int(rc.mala_steps), mala_step=rc.mala_step,
                  mh_sweeps=int(rc.mh_sweeps),
                  filter_mass_sigma=(None if rc.filter_mass_sigma is None
                                     else float(rc.filter_mass_sigma)),
                  gibbs_sweeps=int(rc.gibbs_sweeps), gibbs_values=int(rc.gibbs_values),
                  chains=int(rc.chains), map_steps=int(rc.map_steps), map_lr=rc.map_lr,
                  noise_pins=bool(rc.get("noise_pins", False)),
                  project_start=float(rc.get("project_start", 0.1)),
                  project_end=float(rc.get("project_end", 0.02)),
                  project_levels=int(rc.get("project_levels", 5)),
                  init=str(rc.get("init", "observation")),
                  sp_start=str(rc.get("sp_start", "adaptive_median")))


def check_mass_settings(model, rc) -> None:
  """A probability-mass head (PixelCNN++'s discretized logistic mixture) has no density
  in x, so no joint score: it is a prior only for the samplers on the pixel values,
  restore.method 'filter' or 'smc' with no Langevin, MALA, Gibbs or MAP stage."""
  if getattr(model, "kind", "score") != "mass":
    return
  if rc.method not in ("filter", "smc"):
    raise ValueError(f"restore.method: a discrete (probability mass) head is a prior only "
                     f"for 'filter' or 'smc' (no density in x), got {rc.method!r}")
  for field in FINISH_STAGES:
    if int(rc[field]):
      raise ValueError(f"restore.{field}: a discrete (probability mass) head has no "
                       f"density in x for this stage; set it to 0")


def box_from_config(config, model, preprocessor=None) -> Optional[joint_lib.Box]:
  """config.restore's box (box_min/box_max, else the data's box); None for normalized
  heads without Gibbs (their log-density is exact, no box needed)."""
  rc = config.restore
  if rc.box_min is not None and rc.box_max is not None:
    return joint_lib.Box(float(rc.box_min), float(rc.box_max), int(rc.grid_points),
                         bool(rc.grid_corrected))
  if preprocessor is not None and preprocessor.discrete:
    return joint_lib.default_box(preprocessor, int(rc.grid_points), bool(rc.grid_corrected))
  if model.normalized and not rc.gibbs_sweeps:
    return None
  raise ValueError("restore.box_min/box_max: real-valued data has no pixel box; set them")


def _project_fn(model, config, settings: Settings, observation, space, box):
  """(params, y) -> the denoise-and-project estimate (restore.project_* levels), after the
  checks that the model and the observation allow it (one line naming the field)."""
  trained = noise_lib.sigmas_from_config(config.noise)   # the levels it learned
  lv = project_lib.levels(settings.project_start, settings.project_end,
                          settings.project_levels)
  what = ("restore.method: 'project'" if settings.method == "project"
          else "restore.init: 'project'")
  project_lib.check(model, observation, space, lv,
                    settings.sigmas if trained is None else trained, what)
  if box is None:
    raise ValueError(f"{what} needs a score-head smoothed-joint model")
  return project_lib.make_project(model, box, observation, space, lv, config.restore.batch_chunk,
                                  settings.sp_start)


def restore(model, params, config, y, task: Optional[str] = None, rng=None, *,
            preprocessor=None, observation=None, start=None, log=None) -> dict:
  """Restores corrupted images y with the model as prior: the library call.

  model, params: a trained AR model (score head: box quadrature; normalized head:
  exact). config: its config, whose `restore` section holds the task and the sampler
  settings (`task` overrides restore.task). y: the observation in image units,
  (N, *y_shape) (noisy or masked images in [0, 1] of the data shape; for 'superres'
  the low-resolution images). observation: an `observations` model to use instead of
  the one config.restore describes (e.g. `Missing(your_mask, shape)`). rng: a
  jax PRNGKey or int seed. start: optional images in [0, 1], (N, *data shape), for the
  chains to start from (annealed / MALA / Gibbs) in place of the one restore.init would
  compute: e.g. a denoise-and-project estimate already at hand, or any restoration
  (the pinned pixels keep their observed values; 'annealed' adds sigma_1 noise).

  Returns numpy images in [0, 1] of the data shape: 'mean' (posterior mean over the
  chains: the MMSE estimate; Tweedie's for restore.method='tweedie'), 'sample' (not
  for 'tweedie'), and 'map' if restore.map_steps > 0; plus
  'accept' (MALA acceptance rate or None), 'seconds', 'settings' (a dict).
  """
  rc = config.restore
  if task is not None and task not in obs_lib.TASKS:
    raise ValueError(f"task must be one of {', '.join(obs_lib.TASKS)}, got {task!r}")
  check_mass_settings(model, rc)
  shape = tuple(model.data_shape) if hasattr(model, "data_shape") else (model.dim,)
  space = obs_lib.PixelSpace.from_preprocessor(preprocessor)
  if observation is None:
    fields = dict(rc.items())
    fields["task"] = task or rc.task
    observation = obs_lib.from_config(types.SimpleNamespace(**fields), shape, space.bounded,
                                      rc.mask_seed)
  y = obs_lib.check_observation(observation, y)
  settings = settings_from_config(config)
  if start is not None:
    if settings.method not in INIT_METHODS:
      raise ValueError(f"start: restore.method {settings.method!r} takes no start; one of "
                       f"{', '.join(INIT_METHODS)} does")
    start = obs_lib.check_images(start, shape, "start").astype(np.float32)
    if len(start) != len(y):
      raise ValueError(f"start: {len(start)} images for {len(y)} observations")
  box = box_from_config(config, model, preprocessor)
  if settings.method == "tweedie":   # the posterior mean in one gradient: no chains
    trained = noise_lib.sigmas_from_config(config.noise)   # the levels it learned
    level = tweedie_lib.check(model, observation, space,
                              settings.sigmas if trained is None else trained)
    box = None if box is None else tweedie_lib.widened_box(box, level)
    mean_fn = tweedie_lib.make_tweedie(
        joint_lib.make_joint(model, box, batch_chunk=rc.batch_chunk), space, level)
    sampler = lambda params, yb, key: {"mean": mean_fn(params, yb)}
  elif settings.method == "project":   # denoise-and-project from a classical start
    point_fn = _project_fn(model, config, settings, observation, space, box)
    sampler = lambda params, yb, key: {"mean": point_fn(params, yb)}
  else:
    joint = joint_lib.make_joint(model, box, batch_chunk=rc.batch_chunk)
    sampler = make_sampler(model, joint, observation, space, settings)
    if start is None and settings.init != "observation":
      # start from a restoration (the module docstring); a caller's start= goes in below.
      # 'project' on an observation the loop does not cover: project.check refuses it
      start_fn = (_project_fn(model, config, settings, observation, space, box)
                  if settings.init == "project"
                  else lambda params, yb: project_lib.start_image(observation, yb,
                                                                  settings.sp_start))
      run = sampler
      sampler = lambda params, yb, key: run(params, yb, key,
                                            start=jnp.asarray(start_fn(params, yb)))
  if rng is None:
    rng = jax.random.PRNGKey(config.seed)
  elif isinstance(rng, (int, np.integer)):
    rng = jax.random.PRNGKey(int(rng))
  n = len(y)
  bs = int(rc.batch_size) if rc.batch_size else n
  t0 = time.perf_counter()
  parts = []
  for i in range(0, n, bs):
    yb = y[i:i + bs]
    pad = bs - len(yb) if n > bs else 0
    sb = None if start is None else start[i:i + bs]
    if pad:
      yb = np.concatenate([yb, np.repeat(yb[-1:], pad, 0)])
      sb = None if sb is None else np.concatenate([sb, np.repeat(sb[-1:], pad, 0)])
    key = jax.random.fold_in(rng, i)
    out = (sampler(params, jnp.asarray(yb.reshape(len(yb), -1)), key) if sb is None else
           sampler(params, jnp.asarray(yb.reshape(len(yb), -1)), key,
                   start=jnp.asarray(sb.reshape(len(sb), -1))))
    out = jax.tree.map(lambda a: np.asarray(a), out)
    parts.append(jax.tree.map(lambda a, m=len(yb) - pad: a[:m] if a.ndim else a, out))
    if log is not None:
      log(f"  restore {min(n, i + bs)}/{n} images, {time.perf_counter() - t0:.0f}s")
  cat = lambda k: np.concatenate([p[k] for p in parts]).reshape((n,) + shape)
  res = {"mean": cat("mean"),
         "accept": (None if not settings.mala_steps
                    else float(np.mean([p["accept"] for p in parts]))),
         "mh_accept": (None if not settings.mh_sweeps
                       else float(np.mean([p["mh_accept"] for p in parts]))),
         "seconds": time.perf_counter() - t0,
         "settings": dataclasses.asdict(settings)}
  if "sample" in parts[0]:   # not for 'tweedie' or 'project'
    res["sample"] = cat("sample")
  if settings.map_steps:
    res["map"] = cat("map")
  return res
