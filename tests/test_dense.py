"""`model.dense` is x · kernel with the gradients of the plain einsum."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hyperflax.model.dense import dense
from jaxprs import dot_shapes


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


def test_frozen_kernel_gradient_is_never_formed():
  # Hypertuning differentiates the hypermodel through a frozen T5: its kernels'
  # [D, F] gradients must not be computed at all.
  x, k, g = _inputs(kernel_shape=(16, 12))
  only_x = jax.make_jaxpr(jax.grad(lambda x: jnp.sum(dense(x, k) * g)))(x).jaxpr
  both = jax.make_jaxpr(jax.grad(lambda x, k: jnp.sum(dense(x, k) * g), argnums=(0, 1)))(x, k)
  assert (16, 12) not in dot_shapes(only_x)
  assert (16, 12) in dot_shapes(both.jaxpr)  # it sees one when there


def test_frozen_kernel_does_not_keep_the_input():
  # The frozen T5's activations need not outlive the forward for its kernels' sake.
  x, k, _ = _inputs(kernel_shape=(16, 12))
  saved = lambda f, *args: [a.shape for a in jax.tree.leaves(jax.vjp(f, *args)[1])]
  assert x.shape not in saved(lambda x: dense(x, k), x)
  assert x.shape in saved(dense, x, k)  # kept when the kernel is differentiated


def test_frozen_input_gets_only_the_kernel_gradient():
  x, k, g = _inputs(kernel_shape=(16, 12))
  dk = jax.grad(lambda k: jnp.sum(dense(x, k) * g))(k)
  np.testing.assert_allclose(dk, jax.grad(lambda k: jnp.sum(_plain(x, k) * g))(k),
                             rtol=1e-5, atol=1e-5)
  jaxpr = jax.make_jaxpr(jax.grad(lambda k: jnp.sum(dense(x, k) * g)))(k).jaxpr
  assert x.shape not in dot_shapes(jaxpr)  # no input gradient formed


@pytest.mark.parametrize('x_shape', [(16,), (4, 16), (2, 3, 4, 16), (0, 5, 16)])
def test_any_number_of_token_axes(x_shape):
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.standard_normal(x_shape), jnp.float32)
  k = jnp.asarray(rng.standard_normal((16, 3, 4)), jnp.float32)
  loss = lambda f: lambda x, k: jnp.sum(jnp.sin(f(x, k)))
  got = jax.grad(loss(dense), argnums=(0, 1))(x, k)
  want = jax.grad(loss(lambda x, k: jnp.tensordot(x, k, axes=1)), argnums=(0, 1))(x, k)
  for a, b in zip(got, want):
    assert a.shape == b.shape
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('platform,barrier', [('cpu', True), ('cuda', False), ('tpu', False)])
def test_copy_only_when_lowered_for_the_cpu(platform, barrier):
  # XLA:CPU needs the materialised transpose; GPU/TPU GEMMs take transposed
  # operands, so lowered for them the backward is autodiff's contraction.
  x, k, g = _inputs(kernel_shape=(16, 2, 6))
  step = jax.jit(jax.grad(lambda x, k: jnp.sum(dense(x, k) * g), argnums=(0, 1)))
  module = jax.export.export(step, platforms=[platform])(x, k).mlir_module()
  assert ('optimization_barrier' in module) == barrier


def test_shape_mismatch_names_both_shapes():
  with pytest.raises(ValueError, match=r'\(3, 5, 16\).*\(8, 12\)'):
    dense(jnp.zeros((3, 5, 16)), jnp.zeros((8, 12)))
