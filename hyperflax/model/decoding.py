"""Greedy decoding with a key/value cache that honours prefixes, LoRA and fusion."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from hyperflax.model.config import T5Config
from hyperflax.model.transformer import T5, fuse

Array = jax.Array


def init_cache(model: T5, params, encoded: Array, encoder_mask: Array,
               max_decode_length: int, peft=None):
  """Zero cache for `max_decode_length` steps, built by shape only."""
  batch = encoded.shape[0]
  dummy = jnp.zeros((batch, max_decode_length), jnp.int32)
  shapes = jax.eval_shape(
      lambda: model.apply({'params': params}, encoded, encoder_mask, dummy, peft,
                          max_decode_length=max_decode_length,
                          method=T5.decode_logits, mutable=['cache'])[1])
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)['cache']


@functools.partial(jax.jit, static_argnames=('config', 'max_decode_length'))
def greedy_decode(config: T5Config, params, encoder_input_tokens: Array,
                  max_decode_length: int, peft=None, fusion_states: Array | None = None,
                  fusion_mask: Array | None = None) -> Array:
  """Greedy generation, one cached decoder step per token.

  Args:
    config: model configuration (dropout is disabled).
    params: model parameters.
    encoder_input_tokens: [batch, source_length] int tokens (0 = padding).
    max_decode_length: number of tokens to generate.
    peft: optional per-example PEFT slots (see `hyperflax.model.peft`).
    fusion_states / fusion_mask: optional extra encoder states (fusion-in-decoder).

  Returns:
    [batch, max_decode_length] generated tokens (without the start token);
    positions after the first EOS are 0 (padding), as transformers' generate.
  """
  model = T5(config, decode=True)
  batch = encoder_input_tokens.shape[0]
  encoded = model.apply({'params': params}, encoder_input_tokens, peft, method=T5.encode)
  encoded, mask = fuse(encoded, encoder_input_tokens > 0, fusion_states, fusion_mask,
                       peft)
  cache = init_cache(model, params, encoded, mask, max_decode_length, peft)

  def step(carry):
    t, token, cache, done, out = carry
    logits, vars_ = model.apply(
        {'params': params, 'cache': cache}, encoded, mask, token[:, None], peft,
        max_decode_length=max_decode_length, method=T5.decode_logits, mutable=['cache'])
    next_token = jnp.argmax(logits[:, -1].astype(jnp.float32), axis=-1).astype(jnp.int32)
    next_token = jnp.where(done, config.pad_token_id, next_token)
    out = out.at[:, t].set(next_token)
    done = done | (next_token == config.eos_token_id)
    return t + 1, next_token, vars_['cache'], done, out

  def cond(carry):
    t, _, _, done, _ = carry
    return (t < max_decode_length) & ~jnp.all(done)

  start = jnp.full((batch,), config.pad_token_id, jnp.int32)
  out = jnp.zeros((batch, max_decode_length), jnp.int32)
  carry = (jnp.array(0), start, cache, jnp.zeros((batch,), bool), out)
  return jax.lax.while_loop(cond, step, carry)[-1]
