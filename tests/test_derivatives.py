"""Diagonal derivatives: the one-hot reference against jacfwd, the fast AR path
against the reference, and the autoregressive property of every MADE model."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from csm_jax import derivatives
from tests.helpers import float64, tiny_model, to_f64

HEADS = ["score", "gaussian", "logistic_mixture"]


def test_jacobian_diagonal_matches_jacfwd():
  with float64():
    a = jax.random.normal(jax.random.PRNGKey(0), (6, 6), jnp.float64)
    f = lambda x: jnp.sin(x @ a.T) * x          # example-wise, dense Jacobian
    x = jax.random.normal(jax.random.PRNGKey(1), (3, 6), jnp.float64)
    y, diag = derivatives.jacobian_diagonal(f, x)
    jac = jax.vmap(jax.jacfwd(lambda xi: f(xi[None])[0]))(x)
    np.testing.assert_allclose(diag, jnp.diagonal(jac, axis1=1, axis2=2), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(y, f(x), rtol=1e-12)
    _, diag_chunked = derivatives.jacobian_diagonal(f, x, chunk_size=4)
    np.testing.assert_allclose(diag_chunked, diag, rtol=1e-12, atol=1e-14)
    _, tr = derivatives.jacobian_trace(f, x)
    np.testing.assert_allclose(tr, jnp.trace(jac, axis1=1, axis2=2), rtol=1e-12)


def _check_fast_diagonal(model, params, dim):
  """float64 fast diagonal vs one-hot reference at random x, sigma; returns (x, sigma, s)."""
  x = jax.random.normal(jax.random.PRNGKey(1), (4, dim), jnp.float64)
  sigma = jnp.exp(jax.random.normal(jax.random.PRNGKey(2), (4, dim), jnp.float64))
  s, ds = model.score_and_diag(params, model.context(params, x), x, sigma)
  s_ref, ds_ref = derivatives.jacobian_diagonal(lambda y: model.full_score(params, y, sigma), x)
  np.testing.assert_allclose(s, s_ref, rtol=1e-12, atol=1e-12)
  np.testing.assert_allclose(ds, ds_ref, rtol=1e-10, atol=1e-12)
  assert np.abs(ds_ref).max() > 1e-6  # not trivially zero
  return x, sigma, s


@pytest.mark.parametrize("head,hidden,order", list(itertools.product(
    HEADS, [(16,), (16, 16), (12, 16, 12)], ["natural", "random"])))
@pytest.mark.slow
def test_fast_diagonal_equals_one_hot_reference(head, hidden, order):
  with float64():
    dim = 7
    model = tiny_model(dim, head=head, hidden=hidden, order=order)
    params = to_f64(model.init(jax.random.PRNGKey(0)))
    _check_fast_diagonal(model, params, dim)


@pytest.mark.parametrize("head,order", list(itertools.product(HEADS, ["natural", "random", "reverse"])))
def test_scores_are_autoregressive(head, order):
  """d s_d / d x_j = 0 whenever x_j comes at or after x_d in the order (j != d)."""
  with float64():
    dim = 6
    model = tiny_model(dim, head=head, hidden=(16, 16), order=order)
    params = to_f64(model.init(jax.random.PRNGKey(3)))
    x = jax.random.normal(jax.random.PRNGKey(4), (3, dim), jnp.float64)
    sigma = jnp.full_like(x, 0.7)
    jac = jax.vmap(jax.jacfwd(lambda xi, si: model.full_score(params, xi[None], si[None])[0]))(x, sigma)
    rank = model.rank
    later = rank[None, :] > rank[:, None]         # later[d, j]: x_j after x_d
    assert np.all(np.asarray(jac)[:, later] == 0.0)
    earlier = rank[None, :] < rank[:, None]
    assert np.abs(np.asarray(jac)[:, earlier]).max() > 1e-8  # the context does use x_<d


@pytest.mark.slow
@pytest.mark.parametrize("film", [False, True])
def test_noise_conditional_head_fast_diagonal_and_autoregressive(film):
  """The score head with a learned log-sigma embedding (shift or FiLM): the fast
  diagonal equals the one-hot reference, the scores stay autoregressive, and the
  embedding does change the scores with sigma."""
  with float64():
    dim = 6
    model = tiny_model(dim, order="random", head_sigma_embedding=8, head_sigma_film=film)
    params = to_f64(model.init(jax.random.PRNGKey(0)))
    assert "sigma_embed" in params["params"]["head"]
    x, sigma, s = _check_fast_diagonal(model, params, dim)
    jac = jax.vmap(jax.jacfwd(lambda xi, si: model.full_score(params, xi[None], si[None])[0]))(
        x, sigma)
    later = model.rank[None, :] >= model.rank[:, None]
    later &= ~np.eye(dim, dtype=bool)
    assert np.all(np.asarray(jac)[:, later] == 0.0)
    # without the embedding's layers the head would be a different function of sigma
    zeroed = jax.tree.map(lambda a: a, params)
    for name in list(zeroed["params"]["head"]):
      if name.startswith("sigma_") and name != "sigma_embed":
        zeroed["params"]["head"][name] = jax.tree.map(jnp.zeros_like, zeroed["params"]["head"][name])
    s0 = model.full_score(zeroed, x, sigma)
    assert np.abs(np.asarray(s0 - s)).max() > 1e-6
