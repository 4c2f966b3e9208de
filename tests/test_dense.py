"""`model.dense` is x · kernel with the gradients of the plain einsum."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hyperflax.model.dense import dense


def _inputs(dtype=jnp.float32, kernel_shape=(16, 12), seed=0):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.standard_normal((3, 5, kernel_shape[0])), dtype)
  k = jnp.asarray(rng.standard_normal(kernel_shape) * 0.3, dtype)
  g = jnp.asarray(rng.standard_normal((3, 5) + kernel_shape[1:]), jnp.float32)
  return x, k, g


def _plain(x, k):
  return jnp.einsum('BTD,D...->BT...', x, k)


@pytest.mark.parametrize('kernel_shape', [(16, 12), (16, 2, 6)])
def test_value_and_gradients_equal_einsum(kernel_shape):
  x, k, g = _inputs(kernel_shape=kernel_shape)
  loss = lambda f: lambda x, k: jnp.sum(f(x, k) * g)
  v1, (dx1, dk1) = jax.value_and_grad(loss(dense), argnums=(0, 1))(x, k)
  v0, (dx0, dk0) = jax.value_and_grad(loss(_plain), argnums=(0, 1))(x, k)
  np.testing.assert_allclose(v1, v0, rtol=1e-6)
  np.testing.assert_allclose(dx1, dx0, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(dk1, dk0, rtol=1e-5, atol=1e-5)
  assert dense(x, k).shape == (3, 5) + kernel_shape[1:]


def test_bfloat16_and_promotion_follow_einsum():
  x, k, g = _inputs(jnp.bfloat16)
  loss = lambda f: lambda x, k: jnp.sum(f(x, k).astype(jnp.float32) * g)
  dx1, dk1 = jax.grad(loss(dense), argnums=(0, 1))(x, k)
  dx0, dk0 = jax.grad(loss(_plain), argnums=(0, 1))(x, k)
  assert dx1.dtype == dk1.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.float32(dk1), np.float32(dk0), rtol=2e-2, atol=2e-2)
  np.testing.assert_allclose(np.float32(dx1), np.float32(dx0), rtol=2e-2, atol=2e-2)
  mixed = dense(x.astype(jnp.float32), k)  # promoted like jnp.einsum
  assert mixed.dtype == _plain(x.astype(jnp.float32), k).dtype == jnp.float32


def _dots_shaped(jaxpr, shape) -> int:
  """dot_generals anywhere in `jaxpr` (sub-jaxprs included) whose output has `shape`."""
  count = 0
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == 'dot_general' and eqn.outvars[0].aval.shape == shape:
      count += 1
    for sub in jax.core.jaxprs_in_params(eqn.params):
      count += _dots_shaped(sub, shape)
  return count


def test_frozen_kernel_gradient_is_never_formed():
  # Hypertuning differentiates the hypermodel through a frozen T5: its kernels'
  # [D, F] gradients must not be computed at all.
  x, k, g = _inputs(kernel_shape=(16, 12))
  only_x = jax.make_jaxpr(jax.grad(lambda x: jnp.sum(dense(x, k) * g)))(x).jaxpr
  both = jax.make_jaxpr(jax.grad(lambda x, k: jnp.sum(dense(x, k) * g), argnums=(0, 1)))(x, k)
  assert _dots_shaped(only_x, (16, 12)) == 0
  assert _dots_shaped(both.jaxpr, (16, 12)) == 1  # the check can see one when it is there


def test_shape_mismatch_names_both_shapes():
  with pytest.raises(ValueError, match=r'\(3, 5, 16\).*\(8, 12\)'):
    dense(jnp.zeros((3, 5, 16)), jnp.zeros((8, 12)))


def test_accelerator_path_is_the_plain_contraction(monkeypatch):
  # Off the CPU the weight gradient is autodiff's own contraction (no copy).
  x, k, g = _inputs(kernel_shape=(16, 2, 6))
  monkeypatch.setattr(jax, 'default_backend', lambda: 'gpu')
  loss = lambda f: lambda x, k: jnp.sum(f(x, k) * g)
  dk1 = jax.grad(loss(dense), argnums=1)(x, k)
  jaxpr = jax.make_jaxpr(jax.grad(loss(dense), argnums=1))(x, k).jaxpr
  assert not any(e.primitive.name == 'optimization_barrier' for e in jaxpr.eqns)
  np.testing.assert_allclose(dk1, jax.grad(loss(_plain), argnums=1)(x, k), rtol=1e-5, atol=1e-5)
