"""HART: causal layer-by-layer generation, its cache, generation orders, consistency loss."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hyperflax.hyper import HyperConfig, build_hypermodel, consistency_loss, init_hypermodel
from hyperflax.hyper.backbone import Backbone
from hyperflax.hyper.testing import FAST_COMPILE
from hyperflax.model import preset
from hyperflax.model.transformer import Decoder

# 4 encoder and 3 decoder layers: 4 steps, the decoder ignores the last one.
T5C = preset('tiny', vocab_size=512, d_kv=8, num_layers=4, num_decoder_layers=3,
             dropout_rate=0.0)
STEPS = 4


def _config(order='bottom_up', **kw):
  return HyperConfig(kind='hart', prefix_len=2, decoder_layers=2, generation_order=order,
                     order_seed=0, **kw)  # seed 0: steps write layers 2, 0, 1, 3


@functools.lru_cache(maxsize=None)
def _params():
  # The generation order does not change the parameters: one init serves all.
  return init_hypermodel(_config(), T5C, jax.random.key(0, impl='rbg'))


def _tokens():
  tokens = np.random.default_rng(0).integers(2, T5C.vocab_size, (2, 7))
  tokens[1, 5:] = 0
  return jnp.asarray(tokens, jnp.int32)


@pytest.mark.parametrize('order', ['bottom_up', 'top_down', 'random'])
def test_perturbing_step_l_changes_only_layers_generated_at_or_after_l(order):
  hyper = _config(order)
  step_to_layer = hyper.step_to_layer(STEPS)
  assert order != 'random' or list(step_to_layer) not in (
      list(range(STEPS)), list(range(STEPS))[::-1])  # a genuinely different order
  model = build_hypermodel(hyper, T5C)
  apply = jax.jit(lambda p, x, off: model.apply({'params': p}, x, state_offsets=off),
                  compiler_options=FAST_COMPILE)
  params, tokens = _params(), _tokens()
  zero = jnp.zeros((2, STEPS, 2, T5C.d_model))
  base_peft, base_aux = apply(params, tokens, zero)
  noise = jax.random.normal(jax.random.key(1), (2, 2, T5C.d_model))
  for step in range(STEPS):
    peft, aux = apply(params, tokens, zero.at[:, step].set(noise))
    states, base_states = np.asarray(aux['states']), np.asarray(base_aux['states'])
    np.testing.assert_array_equal(states[:, :step], base_states[:, :step])
    assert not np.allclose(states[:, step:], base_states[:, step:])
    for stack, layers in (('encoder', T5C.num_layers), ('decoder', T5C.num_decoder_layers)):
      for kv in 'kv':
        new = np.asarray(peft[stack]['self']['prefix'][kv])  # [B, L, P, F]
        old = np.asarray(base_peft[stack]['self']['prefix'][kv])
        for generated_at, layer in enumerate(step_to_layer):
          if layer >= layers:
            continue  # the shorter stack has no such layer
          where = f'{order}: step {step}, {stack} layer {layer} (generated at {generated_at})'
          if generated_at < step:
            np.testing.assert_array_equal(new[:, layer], old[:, layer], err_msg=where)
          else:
            for row in range(2):  # every row sees its own perturbation
              assert not np.allclose(new[row, layer], old[row, layer]), where


def test_cached_steps_match_an_uncached_causal_decoder():
  """With one state per step, block-causal is plain causal: teacher-forcing the
  generated inputs through the uncached decoder must reproduce every step."""
  cfg = _config().backbone_config(T5C)
  backbone = Backbone(cfg, num_inputs=1)
  tokens = _tokens()
  init = jax.jit(lambda key: backbone.init(
      key, tokens, method=lambda m, t: m.decode_parallel(*m.encode(t)))['params'])
  params = nn.unbox(init(jax.random.key(2, impl='rbg')))

  def generate(p, t):
    encoded, mask = backbone.apply({'params': p}, t, method=Backbone.encode)
    states = backbone.apply({'params': p}, encoded, mask, STEPS,
                            method=Backbone.decode_autoregressive)  # [B, S, 1, D]
    return encoded, mask, states[:, :, 0]

  @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
  def teacher_forced(p, t):
    encoded, mask, states = generate(p, t)
    z = jnp.broadcast_to(p['decoder_inputs'][None], (2, 1, cfg.d_model))
    inputs = jnp.concatenate([z, states[:, :-1]], axis=1)  # what each step read
    reference = Decoder(cfg, causal=True).apply(
        {'params': p['decoder']}, None, encoded, mask[:, None, None, :], inputs_embeds=inputs)
    return states, reference

  states, reference = teacher_forced(params, tokens)
  assert states.shape == (2, STEPS, cfg.d_model)
  np.testing.assert_allclose(np.asarray(states), np.asarray(reference), atol=1e-5, rtol=1e-5)


def test_consistency_loss():
  states = jax.random.normal(jax.random.key(0), (2, STEPS, 2, 8))
  prev = jax.random.normal(jax.random.key(1), (2, STEPS, 2, 8))
  mse = float(jnp.mean((states - prev) ** 2))
  assert float(consistency_loss(states, prev, 10.0, False)) == pytest.approx(10 * mse, rel=1e-6)
  assert float(consistency_loss(states, prev, 10.0, True)) == 0.0  # the first step
  assert float(consistency_loss(states, None, 10.0, False)) == 0.0
  # is_first_step may be traced; the previous states are constants.
  loss = jax.jit(consistency_loss, static_argnums=2)
  assert float(loss(states, prev, 10.0, jnp.array(True))) == 0.0
  grad_states, grad_prev = jax.grad(lambda s, p: consistency_loss(s, p, 10.0, False),
                                    argnums=(0, 1))(states, prev)
  np.testing.assert_allclose(grad_states, 20 * (states - prev) / states.size, rtol=1e-5)
  assert not np.any(np.asarray(grad_prev))
  with pytest.raises(ValueError, match='batch shape'):
    consistency_loss(states, prev[:1], 1.0, False)


def test_dropout_is_driven_by_the_rng_only():
  hyper = _config(dropout_rate=0.3)
  model = build_hypermodel(hyper, T5C)
  params, tokens = _params(), _tokens()
  run = jax.jit(lambda key: model.apply({'params': params}, tokens, deterministic=False,
                                        rngs={'dropout': key})[1]['states'],
                compiler_options=FAST_COMPILE)
  a, b, a_again = run(jax.random.key(0)), run(jax.random.key(1)), run(jax.random.key(0))
  np.testing.assert_array_equal(np.asarray(a), np.asarray(a_again))
  assert not np.allclose(np.asarray(a), np.asarray(b))


def test_random_order_is_refused_where_only_two_orders_exist():
  with pytest.raises(ValueError, match="'random' needs at least 3 HART steps"):
    HyperConfig(kind='hart', generation_order='random').step_to_layer(2)
