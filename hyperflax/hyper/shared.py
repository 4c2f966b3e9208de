"""Baseline PEFT generators that ignore the few-shot input (T5-MTF style).

They expose the hypermodels' interface, `apply({'params': p}, tokens) ->
(peft, aux)`, so the trainer treats every kind alike; the tokens only set the
batch size. The single PEFT is computed once (batch 1) and broadcast.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from hyperflax.hyper.config import HyperConfig
from hyperflax.hyper.heads import PrefixMLP
from hyperflax.hyper.lora import LORA_SITES, PROJECTIONS, site_layers
from hyperflax.model import peft as peft_lib
from hyperflax.model.config import T5Config
from hyperflax.model.layers import _normal, param_with_axes

Array = jax.Array


class SharedPrefix(nn.Module):
  """One prefix for all tasks, reparameterised: embeddings [2P, D] -> PrefixMLP.

  Same `prefix_mlp` parameters as `HyperT5PrefixMLP`, so either can start from
  the other (HyperTuning App. D, Prefix-MLP (Shared)/(Hyper)).

  Attributes:
    hyper: generator config (kind 'shared_prefix').
    t5: the downstream T5 config.
  """
  hyper: HyperConfig
  t5: T5Config

  @nn.compact
  def __call__(self, hyper_input_tokens: Array, deterministic: bool = True):
    """Returns (peft, aux); aux['embeddings'] is [B, 2P, D]."""
    hyper, t5 = self.hyper, self.t5
    batch = hyper_input_tokens.shape[0]
    embeddings = param_with_axes(self, 'prefix_embeddings', _normal(1.0),
                                 (2 * hyper.prefix_len, t5.d_model),
                                 ('hyper_tokens', 'embed'))[None]  # [1, 2P, D]
    peft = PrefixMLP(t5.num_layers, t5.num_decoder_layers, t5.inner_dim, hyper.hidden(t5),
                     hyper.compute_dtype, name='prefix_mlp')(embeddings)
    embeddings = jnp.broadcast_to(embeddings, (batch,) + embeddings.shape[1:])
    return peft_lib.broadcast_to_batch(peft, batch), {'embeddings': embeddings}


class SharedLoRA(nn.Module):
  """One learned LoRA for all tasks, on the same sites as HyperT5-LoRA.

  a ~ N(0, 1/D) and b = 0, so a fresh adapter is an exact no-op (no gate).

  Attributes:
    hyper: generator config (kind 'shared_lora').
    t5: the downstream T5 config.
  """
  hyper: HyperConfig
  t5: T5Config

  @nn.compact
  def __call__(self, hyper_input_tokens: Array, deterministic: bool = True):
    """Returns (peft, {}); a: [B, L, D, R], b: [B, L, R, F]."""
    hyper, t5 = self.hyper, self.t5
    rank, dt = hyper.lora_rank, hyper.compute_dtype
    peft: dict = {}
    for (stack, site), layers in zip(LORA_SITES, site_layers(t5)):
      slot = {}
      for proj in PROJECTIONS:
        name = f'{stack[:3]}_{site}_{proj}'
        a = param_with_axes(self, f'{name}_a', _normal(t5.d_model ** -0.5),
                            (layers, t5.d_model, rank), ('layers', 'embed', 'lora_rank'))
        b = param_with_axes(self, f'{name}_b', nn.initializers.zeros,
                            (layers, rank, t5.inner_dim), ('layers', 'lora_rank', 'joined_kv'))
        slot[proj] = {'a': a.astype(dt)[None], 'b': b.astype(dt)[None]}
      peft.setdefault(stack, {})[site] = slot
    return peft_lib.broadcast_to_batch(peft, hyper_input_tokens.shape[0]), {}


def shared_prefix_from_hypermodel(prefix_mlp_params: dict, embeddings: Array) -> dict:
  """`SharedPrefix` parameters that start from a HyperT5-Prefix-MLP's output.

  Prefix-MLP (Hyper) initialisation (HyperTuning App. D): the hypermodel's
  generated embeddings for one task become the learned embeddings, and its
  heads become the reparameterisation MLP.

  Args:
    prefix_mlp_params: the hypermodel's parameters (`HyperT5PrefixMLP`).
    embeddings: [2P, D] or [1, 2P, D], `aux['embeddings']` for one task.

  Returns:
    Parameters for `SharedPrefix` with the same `HyperConfig` prefix_len.
  """
  embeddings = jnp.asarray(embeddings, jnp.float32)
  if embeddings.ndim == 3:
    if embeddings.shape[0] != 1:
      raise ValueError(f'embeddings for one task expected, got {embeddings.shape}')
    embeddings = embeddings[0]
  return {'prefix_embeddings': embeddings,
          'prefix_mlp': nn.unbox(prefix_mlp_params)['prefix_mlp']}
