"""The joint log-density log q(x) and joint score of csm_jax/restore/joint.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from csm_jax.models import known
from csm_jax.restore import joint as joint_lib
from tests.helpers import float64, tiny_model, to_f64


@pytest.mark.slow
@pytest.mark.parametrize("head,half_width", [("gaussian", 12.0), ("logistic_mixture", 40.0)])
def test_box_joint_score_equals_autodiff_of_exact_log_q(head, half_width):
  """Quadrature of a normalized head's score on a wide box gives the exact joint score
  (cross terms through the contexts included); the exact path is the autodiff itself."""
  with float64():
    model = tiny_model(5, head=head, compute_dtype="float64")
    params = to_f64(model.init(jax.random.PRNGKey(0)))
    x = jax.random.normal(jax.random.PRNGKey(1), (3, 5), jnp.float64)
    exact = lambda z: model.log_cond(params, model.context(params, z), z).sum()
    g_ref = jax.grad(exact)(x)
    v_ref = jax.vmap(lambda z: exact(z[None]))(x)
    box = joint_lib.Box(-half_width, half_width, 4001, corrected=True)
    v_box, g_box = joint_lib.make_joint(model, box, method="box").value_and_grad(params, x)
    v_ex, g_ex = joint_lib.make_joint(model).value_and_grad(params, x)
    np.testing.assert_allclose(g_ex, g_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(v_ex, v_ref, rtol=1e-12)
    np.testing.assert_allclose(v_box, v_ref, atol=1e-6)
    np.testing.assert_allclose(g_box, g_ref, atol=1e-6 * float(np.abs(g_ref).max()))
    # the conditional scores alone are not the joint score (the cross terms matter)
    cond = model.score(params, model.context(params, x), x, 1.0)
    assert float(np.abs(cond - g_ref).max()) > 1e-3


@pytest.mark.parametrize("corrected", [False, True])
def test_score_head_joint_score_matches_finite_differences_float64(corrected):
  with float64():
    model = tiny_model(4, compute_dtype="float64")   # float64 contexts too
    params = to_f64(model.init(jax.random.PRNGKey(2)))
    box = joint_lib.Box(-0.2, 1.2, 33, corrected)
    x = np.asarray(jax.random.uniform(jax.random.PRNGKey(3), (2, 4), jnp.float64))
    # stay clear of the cell midpoints, where the own-term rule switches node
    frac = ((x - box.lo) / box.h) % 1.0
    assert np.abs(frac - 0.5).min() > 1e-3
    j = joint_lib.make_joint(model, box)
    _, g = j.value_and_grad(params, jnp.asarray(x), 0.1)
    eps = 1e-6
    fd = np.zeros_like(x)
    for d in range(4):
      e = np.zeros_like(x)
      e[:, d] = eps
      fd[:, d] = (np.asarray(j.log_prob(params, jnp.asarray(x + e), 0.1))
                  - np.asarray(j.log_prob(params, jnp.asarray(x - e), 0.1))) / (2 * eps)
    np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-7)


def test_known_gaussian_ar_joint_is_its_gaussian_density():
  """On a GaussianAR the box joint at level sigma is N(mean, A diag(v + sigma^2) A^T)."""
  with float64():
    m = known.random_gaussian_ar(4, seed=1, std_range=(0.2, 0.6))
    sigma = 0.1
    a = np.linalg.inv(np.eye(4) - m.w)
    mean, cov = a @ m.b, a @ np.diag(m.v + sigma ** 2) @ a.T
    x = np.random.default_rng(0).multivariate_normal(mean, cov, size=5)
    j = joint_lib.make_joint(m, joint_lib.Box(-8.0, 8.0, 401, True))
    v, g = j.value_and_grad(None, jnp.asarray(x), sigma)
    prec = np.linalg.inv(cov)
    r = x - mean
    ref = -0.5 * np.einsum("bi,ij,bj->b", r, prec, r) - 0.5 * np.linalg.slogdet(
        2 * np.pi * cov)[1]
    np.testing.assert_allclose(v, ref, atol=1e-7)
    np.testing.assert_allclose(g, -r @ prec, atol=1e-6)


def test_gradients_finite_everywhere_and_chunking_invariant():
  """Inside, at the edges and far outside the box, at every noise level: finite."""
  model = tiny_model(6)
  params = model.init(jax.random.PRNGKey(4))
  x = jnp.asarray(np.array([[0.0, 1.0, -0.2, 1.2, 0.5, 0.3],
                            [-5.0, 7.0, 1e-6, 1 - 1e-6, 2.0, -1.0],
                            [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]], np.float32))
  box = joint_lib.Box(-0.2, 1.2, 33)
  j1, j2 = joint_lib.make_joint(model, box, batch_chunk=1), joint_lib.make_joint(model, box)
  for sigma in (5.0, 1.0, 0.1, 0.01):
    v, g = j1.value_and_grad(params, x, sigma)
    assert np.isfinite(v).all() and np.isfinite(g).all()
    v2, g2 = j2.value_and_grad(params, x, sigma)
    np.testing.assert_allclose(v, v2, rtol=1e-5)
    np.testing.assert_allclose(g, g2, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_grid_error_of_the_coarse_box_grid_is_small():
  model = tiny_model(6)
  params = model.init(jax.random.PRNGKey(5))
  x = jax.random.uniform(jax.random.PRNGKey(6), (4, 6))
  for corrected, tol in ((False, 0.2), (True, 1e-3)):
    err = joint_lib.grid_error(model, params, x, 0.1, joint_lib.Box(-0.2, 1.2, 33, corrected))
    assert err["finite"] and err["logq_abs_err_max"] < tol, err
    assert err["score_rel_err_max"] < tol, err


def test_box_and_method_errors_are_one_line():
  model = tiny_model(3)
  for call, word in ((lambda: joint_lib.Box(1.0, 0.0), "hi > lo"),
                     (lambda: joint_lib.Box(0.0, 1.0, 2), "num_points"),
                     (lambda: joint_lib.log_conditionals(model, None, jnp.zeros((1, 3)), 1.0),
                      "box"),
                     (lambda: joint_lib.default_box(None), "preprocessor")):
    with pytest.raises(ValueError, match=word) as e:
      call()
    assert "\n" not in str(e.value)
