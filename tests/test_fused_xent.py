"""The fused, chunked cross-entropy equals the plain log_softmax formula."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hyperflax.hyper.losses import cross_entropy
from hyperflax.hyper.testing import random_t5_params, toy_batch
from hyperflax.model import T5, preset
from hyperflax.model import xent
from jaxprs import dot_shapes, eqns

B, T, D, V = 3, 7, 16, 301


def _inputs(seed=0):
  rng = np.random.default_rng(seed)
  hidden = jnp.asarray(rng.standard_normal((B, T, D)), jnp.float32)
  kernel = jnp.asarray(rng.standard_normal((D, V)) * D ** -0.5 * 3, jnp.float32)
  targets = jnp.asarray(rng.integers(0, V, (B, T)), jnp.int32)
  weights = np.ones((B, T), np.float32)
  weights[1, 4:] = 0  # padded tail
  weights[2, :] = 0.5  # non-binary weights
  return hidden, kernel, targets, jnp.asarray(weights)


def _plain(hidden, kernel, targets, weights):
  return cross_entropy(hidden @ kernel, targets, weights)


@pytest.mark.parametrize('chunk', [None, 3])  # 3 does not divide T=7: padded last chunk
def test_value_and_gradients_match_plain_formula(chunk):
  hidden, kernel, targets, weights = _inputs()
  fused = lambda h, k: (lambda s, w: s / w)(*xent.loss_sums(h, k, targets, weights,
                                                            chunk=chunk))
  plain = lambda h, k: (lambda s, w: s / w)(*_plain(h, k, targets, weights))
  (v1, (gh1, gk1)) = jax.value_and_grad(fused, argnums=(0, 1))(hidden, kernel)
  (v0, (gh0, gk0)) = jax.value_and_grad(plain, argnums=(0, 1))(hidden, kernel)
  np.testing.assert_allclose(v1, v0, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(gh1, gh0, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(gk1, gk0, rtol=1e-5, atol=1e-5)
  assert np.abs(gh1).max() > 1e-3 and np.abs(gk1).max() > 1e-3
  assert np.all(np.asarray(gh1)[1, 4:] == 0)  # padding gets no gradient


def test_scoring_matches_log_softmax_per_row():
  hidden, kernel, targets, weights = _inputs(1)
  logp = jax.nn.log_softmax(hidden @ kernel, -1)
  want = jnp.sum(jnp.take_along_axis(logp, targets[..., None], -1)[..., 0] * weights, -1)
  got = jax.jit(lambda h, k: xent.target_loglik(h, k, targets, weights, chunk=2))(hidden, kernel)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  # Arbitrary per-token cotangents (not just a weighted sum) go through the VJP too.
  g = jnp.asarray(np.random.default_rng(2).standard_normal((B, T)), jnp.float32)
  plain_nll = lambda h, k: -jnp.take_along_axis(jax.nn.log_softmax(h @ k, -1),
                                                targets[..., None], -1)[..., 0]
  _, vjp0 = jax.vjp(plain_nll, hidden, kernel)
  _, vjp1 = jax.vjp(lambda h, k: xent.token_nll(h, k, targets, chunk=4), hidden, kernel)
  for a, b in zip(vjp1(g), vjp0(g)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_frozen_kernel_gradient_is_never_formed():
  hidden, kernel, targets, weights = _inputs()
  loss = lambda h, k: xent.loss_sums(h, k, targets, weights, chunk=4)[0]
  shapes = lambda fn: dot_shapes(jax.make_jaxpr(fn)(hidden, kernel).jaxpr)
  assert (D, V) not in shapes(jax.grad(loss, argnums=0))
  assert (D, V) in shapes(jax.grad(loss, argnums=1))


def test_no_vocab_sized_array_spans_all_tokens():
  """The compiled train-shaped program holds no [B, T, V] (or [B*T, V]) array."""
  hidden, kernel, targets, weights = _inputs()
  grad = jax.grad(lambda h, k: xent.loss_sums(h, k, targets, weights, chunk=2)[0], (0, 1))
  shapes = {tuple(v.aval.shape) for e in eqns(jax.make_jaxpr(grad)(hidden, kernel).jaxpr)
            for v in e.outvars}
  assert (B, 2, V) in shapes
  assert not {(B, T, V), (B, T + 1, V), (B * T, V)} & shapes


def test_bfloat16_compute_close_to_float32():
  hidden, kernel, targets, weights = _inputs()
  s32, _ = xent.loss_sums(hidden, kernel, targets, weights)
  s16, _ = xent.loss_sums(hidden.astype(jnp.bfloat16), kernel, targets, weights)
  assert abs(float(s16) - float(s32)) < 2e-2 * abs(float(s32))


def test_t5_hidden_states_feed_the_same_loss():
  """T5(return_hidden=True) + fused loss = T5 logits + plain loss, incl. gradients."""
  cfg = preset('tiny', vocab_size=256, num_layers=1, num_decoder_layers=1, dropout_rate=0.0)
  params = random_t5_params(cfg)
  batch = toy_batch(cfg, batch=2, target_len=5)
  batch['target_weights'] = batch['target_weights'].at[1, 3:].set(0)
  model = T5(cfg)

  def fused(p):
    h = model.apply({'params': p}, batch['encoder_inputs'], batch['decoder_inputs'],
                    return_hidden=True)
    return xent.loss_sums(h, xent.lm_head_kernel(p), batch['targets'], batch['target_weights'],
                          chunk=2)[0]

  def plain(p):
    logits = model.apply({'params': p}, batch['encoder_inputs'], batch['decoder_inputs'])
    return cross_entropy(logits, batch['targets'], batch['target_weights'])[0]

  v1, g1 = jax.value_and_grad(fused)(params)
  v0, g0 = jax.value_and_grad(plain)(params)
  np.testing.assert_allclose(v1, v0, rtol=1e-5)
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(g1), jax.tree.leaves(g0)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5, err_msg=jax.tree_util.keystr(path))
