"""Pure training and scoring steps."""

from __future__ import annotations

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from hyperflax.hyper.losses import consistency_loss
from hyperflax.model.decoding import greedy_decode
from hyperflax.model.xent import lm_head_kernel, loss_sums, target_loglik
from hyperflax.training.experiment import Experiment

Array = jax.Array


@flax.struct.dataclass
class TrainState:
  """Everything that changes during training (and is checkpointed).

  Attributes:
    step: optimiser steps taken (int32 scalar); also the data position.
    trainable: parameters being trained ({'hyper': ..., 'downstream': ...}).
    opt_state: optax state of `trainable` only.
    prev_states: HART's generated states of the previous step, [B, S, 2, D]
      (zeros of that shape before the first step; None for other kinds).
    rng: base PRNG key data (uint32); step keys are `fold_in(rng, step)`.
  """
  step: Array
  trainable: Any
  opt_state: Any
  prev_states: Array | None
  rng: Array


def create_state(exp: Experiment, optimizer: optax.GradientTransformation, trainable: dict,
                 rng: Array, micro_batch: dict[str, Array] | None) -> TrainState:
  prev = None
  alpha = exp.hyper_config.consistency_alpha if exp.hyper_config else 0.0
  if alpha > 0 and micro_batch is not None:
    shapes = jax.eval_shape(lambda t: exp.generate_peft(t['hyper'], micro_batch['hyper_inputs'])[1],
                            trainable)
    if 'states' in shapes:
      prev = jnp.zeros(shapes['states'].shape, jnp.float32)
  return TrainState(step=jnp.zeros((), jnp.int32), trainable=trainable,
                    opt_state=optimizer.init(trainable), prev_states=prev,
                    rng=jax.random.key_data(rng) if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key)
                    else rng)


def split_micro(batch: dict[str, Array], accum_steps: int) -> dict[str, Array]:
  """[B, ...] -> [accum_steps, B / accum_steps, ...]."""
  def split(x):
    if x.shape[0] % accum_steps:
      raise ValueError(f'batch size {x.shape[0]} is not divisible by grad_accum_steps='
                       f'{accum_steps}')
    return x.reshape((accum_steps, x.shape[0] // accum_steps) + x.shape[1:])
  return jax.tree.map(split, batch)


def make_train_step(exp: Experiment, optimizer: optax.GradientTransformation,
                    accum_steps: int = 1):
  """Returns `train_step(state, frozen, batch) -> (state, metrics)`.

  Gradients are taken with respect to `state.trainable` only; `frozen` is a
  plain argument. With `accum_steps > 1` the batch is split into micro
  batches whose gradients are summed by `lax.scan` before one update.
  """
  alpha = exp.hyper_config.consistency_alpha if exp.hyper_config else 0.0

  def loss_fn(trainable, frozen, micro, rng, prev_states, first):
    # The output layer is fused into a chunked cross-entropy: [B, T, V]
    # logits/log-probs are never materialised, in either pass.
    hidden, aux = exp.forward(trainable, frozen, micro, deterministic=False, rng=rng,
                              return_hidden=True)
    kernel = lm_head_kernel(trainable.get('downstream', frozen.get('downstream')))
    loss_sum, weight_sum = loss_sums(hidden, kernel, micro['targets'], micro['target_weights'])
    loss = loss_sum / jnp.maximum(weight_sum, 1.0)
    states = aux.get('states')
    cst = jnp.zeros((), jnp.float32)
    if states is not None and prev_states is not None:
      cst = consistency_loss(states, prev_states, alpha, first)
    new_prev = jax.lax.stop_gradient(states.astype(jnp.float32)) if (
        states is not None and prev_states is not None) else prev_states
    return loss + cst, (loss_sum, weight_sum, cst, new_prev)

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def train_step(state: TrainState, frozen: dict, batch: dict[str, Array]):
    rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    first = state.step == 0
    micro = split_micro(batch, accum_steps)
    # Rows of every micro batch stay split over the batch mesh axes (a no-op
    # without `hyperflax.sharding` rules in scope, e.g. on one device).
    micro = jax.tree.map(lambda x: nn.with_logical_constraint(x, (None, 'act_batch')), micro)
    zeros = jax.tree.map(jnp.zeros_like, state.trainable)

    def body(carry, xs):
      grads, loss_sum, weight_sum, cst, prev = carry
      mb, i = xs
      weights = (state.trainable, frozen)
      if accum_steps > 1:
        # Tie the weights to the loop index (an identity): otherwise XLA's while-loop
        # invariant code motion hoists every weight's compute-dtype cast (and on
        # XLA:CPU its f32 and transposed dot copies; under FSDP possibly the
        # all-gathers) out of this loop, all kept alive for the whole of it.
        weights, _ = jax.lax.optimization_barrier((weights, i))
      (_, (ls, ws, c, new_prev)), g = grad_fn(weights[0], weights[1], mb,
                                             jax.random.fold_in(rng, i), state.prev_states,
                                             first)
      grads = jax.tree.map(jnp.add, grads, g)
      return (grads, loss_sum + ls, weight_sum + ws, cst + c, new_prev), None

    init = (zeros, 0.0, 0.0, 0.0, state.prev_states)
    (grads, loss_sum, weight_sum, cst, prev), _ = jax.lax.scan(
        body, init, (micro, jnp.arange(accum_steps)))
    grads = jax.tree.map(lambda g: g / accum_steps, grads)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.trainable)
    trainable = optax.apply_updates(state.trainable, updates)
    metrics = {'loss': loss_sum / jnp.maximum(weight_sum, 1.0),
               'consistency': cst / accum_steps, 'tokens': weight_sum,
               'grad_norm': optax.global_norm(grads)}
    new_state = state.replace(step=state.step + 1, trainable=trainable, opt_state=opt_state,
                              prev_states=prev)
    return new_state, metrics

  return train_step


def make_score_step(exp: Experiment, shared_demos: bool = True):
  """`score(trainable, frozen, batch) -> [B]` summed target log-likelihood.

  Rank classification picks the option with the highest total
  log-likelihood (T0's convention: no length normalisation). With
  `shared_demos` (evaluation batches never span two tasks) the adapter is
  generated once per batch from row 0.
  """
  def score(trainable, frozen, batch):
    hidden, _ = exp.forward(trainable, frozen, batch, deterministic=True,
                            shared_demos=shared_demos, return_hidden=True)
    kernel = lm_head_kernel(trainable.get('downstream', frozen.get('downstream')))
    return target_loglik(hidden, kernel, batch['targets'], batch['target_weights'])
  return score


def make_generate_step(exp: Experiment, max_decode_length: int, shared_demos: bool = True):
  """`generate(trainable, frozen, batch) -> [B, max_decode_length]` greedy tokens."""
  def generate(trainable, frozen, batch):
    downstream = trainable.get('downstream', frozen.get('downstream'))
    peft, aux = None, {}
    if exp.hyper is not None:
      hyper_inputs = batch.get('hyper_inputs')
      if hyper_inputs is None:
        hyper_inputs = jnp.ones((batch['encoder_inputs'].shape[0], 1), jnp.int32)
      peft, aux = exp.generate_peft(trainable['hyper'], hyper_inputs,
                                    shared_demos=shared_demos or 'hyper_inputs' not in batch)
    return greedy_decode(exp.t5_config, downstream, batch['encoder_inputs'], max_decode_length,
                         peft=peft, fusion_states=aux.get('fusion_states'),
                         fusion_mask=aux.get('fusion_mask'))
  return generate
