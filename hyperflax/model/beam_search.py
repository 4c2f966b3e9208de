"""Batched beam search over the cached decoder, honouring prefixes, LoRA and fusion.

A port of transformers' vectorised beam search (`GenerationMixin._beam_search`,
transformers >= 4.50) to fixed shapes and `lax.while_loop`, so that, given the
same logits, it returns the same tokens:

  * each step keeps the top 2K continuations over all K beams (K = num_beams);
  * a continuation that ends in EOS (or reaches `max_decode_length`) becomes a
    finished hypothesis, scored `sum_logprobs / length ** length_penalty`, if it
    is among the top K of that step; the best K of the rest keep running;
  * `early_stopping` (False, True or 'never') decides when a batch row stops
    accepting hypotheses, with transformers' heuristics; the loop ends when no
    row can improve, as `_beam_search_has_unfinished_sequences` decides.

Rows of a batch never influence each other (a row that is done is masked, not
dropped), so a mixed batch gives every row what it would get alone. Each row
may carry its own adapter: PEFT leaves are repeated per beam.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from hyperflax.model.config import T5Config
from hyperflax.model.decoding import init_cache
from hyperflax.model.transformer import T5, fuse

Array = jax.Array

_NEG = -1.0e9  # transformers' "impossible" score; finite so sums stay ordered


def _gather(x: Array, index: Array) -> Array:
  """x [B, N, ...], index [B, M] -> [B, M, ...] (`_gather_beams`)."""
  index = index.reshape(index.shape + (1,) * (x.ndim - 2))
  return jnp.take_along_axis(x, index, axis=1)


def _reorder_cache(cache, flat_index: Array, scanned: bool):
  """Selects batch rows `flat_index` [B*K] of every cached key/value."""
  axis = 1 if scanned else 0  # nn.scan puts the layer axis first
  return jax.tree.map(
      lambda c: c if c.ndim <= axis else jnp.take(c, flat_index, axis=axis), cache)


_STOP_MODES = {False: 0, True: 1, 'never': 2}


def beam_search(config: T5Config, params, encoder_input_tokens: Array,
                max_decode_length: int, num_beams: int = 4, length_penalty: float = 1.0,
                early_stopping: bool | str = False, peft=None,
                fusion_states: Array | None = None,
                fusion_mask: Array | None = None) -> tuple[Array, Array]:
  """Beam search with transformers' semantics (see module docstring).

  Args:
    config: model configuration (dropout is disabled).
    params: model parameters.
    encoder_input_tokens: [batch, source_length] int tokens (0 = padding).
    max_decode_length: maximum number of generated tokens (transformers'
      `max_new_tokens`).
    num_beams: beams K per row.
    length_penalty: exponent of the length that divides a finished score.
    early_stopping: False (transformers' default heuristic), True (stop a row
      once it has K finished hypotheses) or 'never'.
    peft: optional per-example PEFT slots (leaves [batch, layers, ...]).
    fusion_states / fusion_mask: optional extra encoder states per row.

  Returns:
    (tokens, scores): [batch, max_decode_length] best hypothesis per row
    (without the start token; 0 after its EOS) and [batch] its score.
  """
  if not (isinstance(early_stopping, bool) or early_stopping == 'never'):
    raise ValueError(f"early_stopping must be False, True or 'never', got {early_stopping!r}")
  # Length penalty and stopping rule are traced: one compiled search serves all.
  return _beam_search(config, params, encoder_input_tokens, max_decode_length, num_beams,
                      jnp.float32(length_penalty), jnp.int32(_STOP_MODES[early_stopping]),
                      peft, fusion_states, fusion_mask)


@functools.partial(jax.jit, static_argnames=('config', 'max_decode_length', 'num_beams'))
def _beam_search(config, params, encoder_input_tokens, max_decode_length, num_beams,
                 length_penalty, stop_mode, peft, fusion_states, fusion_mask):
  stop_when_full, never = stop_mode == 1, stop_mode == 2
  model = T5(config, decode=True)
  batch, beams, steps = encoder_input_tokens.shape[0], num_beams, max_decode_length
  keep = 2 * beams  # one EOS id: transformers keeps max(2, 1 + n_eos) * K candidates
  encoded = model.apply({'params': params}, encoder_input_tokens, peft, method=T5.encode)
  encoded, mask = fuse(encoded, encoder_input_tokens > 0, fusion_states, fusion_mask,
                       peft)
  per_beam = lambda x: jnp.repeat(x, beams, axis=0)  # row-major [B*K]: row b, beam k
  encoded, mask, peft = per_beam(encoded), per_beam(mask), jax.tree.map(per_beam, peft)
  cache = init_cache(model, params, encoded, mask, steps, peft)
  top_beam_mask = jnp.arange(keep) < beams  # [2K]

  def step(carry):
    (t, cache, last, run_seq, run_scores, seqs, scores, finished, improvable, _) = carry
    logits, vars_ = model.apply(
        {'params': params, 'cache': cache}, encoded, mask, last[:, None], peft,
        max_decode_length=steps, method=T5.decode_logits, mutable=['cache'])
    logp = jax.nn.log_softmax(logits[:, -1].astype(jnp.float32), axis=-1)  # [B*K, V]
    vocab = logp.shape[-1]
    logp = logp.reshape(batch, beams, vocab) + run_scores[:, :, None]
    top_lp, top_index = jax.lax.top_k(logp.reshape(batch, beams * vocab), keep)  # [B, 2K]
    source = top_index // vocab
    token = (top_index % vocab).astype(jnp.int32)
    top_seq = _gather(run_seq, source).at[:, :, t].set(token)  # [B, 2K, steps]
    hits = (token == config.eos_token_id) | (t + 1 >= steps)

    # Running beams: the best K candidates that did not just stop.
    run_lp = top_lp + hits.astype(jnp.float32) * _NEG
    chosen = jax.lax.top_k(run_lp, beams)[1]  # [B, K]
    run_seq, run_scores = _gather(top_seq, chosen), _gather(run_lp, chosen)
    parent = _gather(source, chosen)  # [B, K]: the beam each running beam extends

    # Finished hypotheses: merge this step's top-K stops into the best K so far.
    just = hits & top_beam_mask[None]
    done_lp = top_lp / (t + 1).astype(jnp.float32) ** length_penalty
    full = jnp.all(finished, axis=-1, keepdims=True) & stop_when_full
    done_lp = done_lp + full.astype(jnp.float32) * _NEG
    done_lp = done_lp + (~improvable).astype(jnp.float32) * _NEG
    done_lp = done_lp + (~just).astype(jnp.float32) * _NEG
    merged_scores = jnp.concatenate([scores, done_lp], axis=1)
    best = jax.lax.top_k(merged_scores, beams)[1]
    seqs = _gather(jnp.concatenate([seqs, top_seq], axis=1), best)
    scores = _gather(merged_scores, best)
    finished = _gather(jnp.concatenate([finished, just], axis=1), best)

    flat_parent = (jnp.arange(batch)[:, None] * beams + parent).reshape(-1)
    cache = _reorder_cache(vars_['cache'], flat_parent, config.scan_layers)
    last = run_seq[:, :, t].reshape(-1)
    t = t + 1
    # `_check_early_stop_heuristic`, with lengths counted without the start token.
    best_length = jnp.where(never & (length_penalty > 0.0), jnp.float32(steps),
                            t.astype(jnp.float32))
    best_running = run_scores[:, :1] / best_length ** length_penalty
    worst_done = jnp.where(finished, jnp.min(scores, axis=1, keepdims=True), _NEG)
    improvable = improvable & jnp.any(best_running > worst_done, axis=-1, keepdims=True)
    go_on = (jnp.any(improvable) & ~(jnp.all(finished) & stop_when_full)
             & ~jnp.all(hits))
    return (t, cache, last, run_seq, run_scores, seqs, scores, finished, improvable, go_on)

  def cond(carry):
    return (carry[0] < steps) & carry[-1]

  run_scores = jnp.where(jnp.arange(beams) == 0, 0.0, _NEG).astype(jnp.float32)
  carry = (jnp.array(0), cache, jnp.full((batch * beams,), config.pad_token_id, jnp.int32),
           jnp.zeros((batch, beams, steps), jnp.int32),
           jnp.broadcast_to(run_scores, (batch, beams)),
           jnp.zeros((batch, beams, steps), jnp.int32),
           jnp.full((batch, beams), _NEG, jnp.float32),
           jnp.zeros((batch, beams), bool), jnp.ones((batch, 1), bool), jnp.array(True))
  out = jax.lax.while_loop(cond, step, carry)
  seqs, scores = out[5], out[6]
  return seqs[:, 0], scores[:, 0]  # [B, steps], [B]
