"""Optimisers as in the papers: AdamW-family, linear decay, optional lean moments."""

from __future__ import annotations

import jax.numpy as jnp
import ml_collections
import optax


def learning_rate_schedule(config: ml_collections.ConfigDict, num_steps: int) -> optax.Schedule:
  o = config.optim
  warmup = int(o.get('warmup_steps', 0))
  peak = float(o.learning_rate)
  if o.get('schedule', 'linear') == 'constant':
    decay = optax.constant_schedule(peak)
  else:  # linear decay to zero, as in both papers
    decay = optax.linear_schedule(peak, 0.0, max(1, num_steps - warmup))
  if warmup:
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), decay], [warmup])
  return decay


def make_optimizer(config: ml_collections.ConfigDict, num_steps: int) -> optax.GradientTransformation:
  """AdamW (or Adafactor) with clipping; `moments_dtype='bfloat16'` halves the first moment.

  The papers used 1-bit / 8-bit Adam to save memory; here the lean options
  are bfloat16 first moments or Adafactor's factored second moments.
  """
  o = config.optim
  schedule = learning_rate_schedule(config, num_steps)
  name = o.get('name', 'adamw')
  if name == 'adamw':
    opt = optax.adamw(schedule, b1=o.get('b1', 0.9), b2=o.get('b2', 0.999),
                      eps=o.get('eps', 1e-8), weight_decay=o.get('weight_decay', 0.0),
                      mu_dtype=jnp.dtype(o.get('moments_dtype', 'float32')))
  elif name == 'adafactor':
    opt = optax.adafactor(schedule)
  else:
    raise ValueError(f'config.optim.name={name!r}; known: adamw, adafactor')
  clip = o.get('max_grad_norm', 1.0)
  return optax.chain(optax.clip_by_global_norm(clip), opt) if clip else opt
