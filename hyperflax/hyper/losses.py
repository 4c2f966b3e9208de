"""Losses for training PEFT generators against a frozen downstream T5."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from hyperflax.model.xent import lm_head_kernel, loss_sums

Array = jax.Array


def cross_entropy(logits: Array, targets: Array, weights: Array) -> tuple[Array, Array]:
  """Token cross-entropy of given logits, summed with weights, in float32.

  The plain formula (it materialises [B, T, V] log-probabilities). Training
  steps use `hyperflax.model.xent.loss_sums` on the decoder's final states
  instead, which equals this on `hidden @ lm_head` without forming either.

  Args:
    logits: [B, T, V] in any dtype.
    targets: [B, T] int token ids.
    weights: [B, T] (0 for padding).

  Returns:
    (loss_sum, weight_sum): scalars; the mean loss is their ratio. Sums let
    the trainer average correctly across devices and accumulation steps.
  """
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(log_probs, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
  weights = weights.astype(jnp.float32)
  return jnp.sum(nll * weights), jnp.sum(weights)


def consistency_loss(states: Array, prev_states: Array | None, alpha: float,
                     is_first_step: Array | bool) -> Array:
  """HART's local consistency regularisation (HART §3.2), in float32.

  alpha * MSE(states, prev_states), where `prev_states` are the states the
  previous training step generated (carried in the training state, hence
  constant here: no gradient flows into them). Zero at the first step.

  Args:
    states: [B, S, 2, D] this step's generated states (`aux['states']`).
    prev_states: same shape, from the previous step; None counts as the first step.
    alpha: weight of the loss.
    is_first_step: bool (may be traced).

  Returns:
    A scalar.
  """
  if prev_states is None or (isinstance(alpha, (int, float)) and alpha == 0):
    return jnp.zeros((), jnp.float32)
  if prev_states.shape != states.shape:
    raise ValueError(f'consistency_loss: states {states.shape} vs previous '
                     f'{prev_states.shape}; keep the batch shape fixed across steps')
  diff = states.astype(jnp.float32) - jax.lax.stop_gradient(prev_states.astype(jnp.float32))
  mse = jnp.mean(jnp.square(diff))
  return jnp.where(is_first_step, 0.0, alpha * mse)


def hypertuning_loss(hyper_apply: Callable, t5_apply: Callable, hyper_params: Any,
                     frozen_params: Any, batch: dict[str, Array], *,
                     consistency_alpha: float = 0.0, prev_states: Array | None = None,
                     is_first_step: Array | bool = True, deterministic: bool = True,
                     rng: Array | None = None) -> tuple[Array, dict[str, Array]]:
  """Mean downstream cross-entropy (+ consistency loss) of generated PEFT.

  Differentiate with `jax.grad(..., argnums=2)`: `frozen_params` is an
  argument, never a differentiated one.

  Args:
    hyper_apply: the generator's `apply` (e.g. `build_hypermodel(...).apply`).
    t5_apply: the frozen model's `apply` (`T5(config).apply`).
    hyper_params: generator parameters (differentiated).
    frozen_params: downstream T5 parameters (constant).
    batch: 'hyper_inputs' [B, Th], 'encoder_inputs' [B, Te], 'decoder_inputs'
      [B, Td], 'targets' [B, Td], 'target_weights' [B, Td].
    consistency_alpha: weight of `consistency_loss` (used when aux has 'states').
    prev_states: the previous step's `aux['states']`.
    is_first_step: disables the consistency term.
    deterministic: disables dropout in both models.
    rng: dropout key when not deterministic.

  Returns:
    (loss, metrics) with metrics 'loss_sum', 'weight_sum', 'consistency' and,
    for HART, 'states' (to carry to the next step).
  """
  hyper_rngs = t5_rngs = None
  if not deterministic:
    hyper_key, t5_key = jax.random.split(rng)
    hyper_rngs, t5_rngs = {'dropout': hyper_key}, {'dropout': t5_key}
  peft, aux = hyper_apply({'params': hyper_params}, batch['hyper_inputs'],
                          deterministic=deterministic, rngs=hyper_rngs)
  hidden = t5_apply({'params': frozen_params}, batch['encoder_inputs'],
                    batch['decoder_inputs'], peft=peft,
                    fusion_states=aux.get('fusion_states'),
                    fusion_mask=aux.get('fusion_mask'), deterministic=deterministic,
                    rngs=t5_rngs, return_hidden=True)
  loss_sum, weight_sum = loss_sums(hidden, lm_head_kernel(frozen_params), batch['targets'],
                                   batch['target_weights'])
  loss = loss_sum / jnp.maximum(weight_sum, 1.0)
  metrics = {'loss_sum': loss_sum, 'weight_sum': weight_sum}
  consistency = jnp.zeros((), jnp.float32)
  if 'states' in aux:
    consistency = consistency_loss(aux['states'], prev_states, consistency_alpha,
                                   is_first_step)
    metrics['states'] = jax.lax.stop_gradient(aux['states'])
  metrics['consistency'] = consistency
  return loss + consistency, metrics
