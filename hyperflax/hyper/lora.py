"""HyperT5-LoRA: few-shot input -> per-layer, per-example LoRA factors."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from hyperflax.hyper.backbone import Backbone
from hyperflax.hyper.config import HyperConfig
from hyperflax.hyper.heads import LoraHead
from hyperflax.hyper.prefix import fusion_aux
from hyperflax.model.config import T5Config
from hyperflax.model.layers import param_with_axes

Array = jax.Array

# (stack, site) in the order of the decoder states: encoder self-attention,
# decoder self-attention, cross-attention (HyperTuning Fig. 8).
LORA_SITES = (('encoder', 'self'), ('decoder', 'self'), ('decoder', 'cross'))
PROJECTIONS = ('query', 'value')


def site_layers(t5: T5Config) -> tuple[int, ...]:
  return tuple(t5.num_layers if stack == 'encoder' else t5.num_decoder_layers
               for stack, _ in LORA_SITES)


class HyperT5LoRA(nn.Module):
  """HyperT5-LoRA (HyperTuning Fig. 8).

  The backbone decoder reads 3L learned inputs (one per layer and site); a q
  and a v head per site turn each state into that layer's down map a [D, R]
  and up map b [R, F]. Learned per-layer gates `tanh(raw)`, raw initialised
  to 0, scale the delta, so a fresh hypermodel leaves the frozen model exactly
  unchanged.

  Attributes:
    hyper: generator config (kind 'lora').
    t5: the downstream T5 config.
  """
  hyper: HyperConfig
  t5: T5Config

  @nn.compact
  def __call__(self, hyper_input_tokens: Array, deterministic: bool = True):
    """Returns (peft, aux); a: [B, L, D, R], b: [B, L, R, F], gate: [B, L]."""
    hyper, t5 = self.hyper, self.t5
    counts = site_layers(t5)
    backbone = Backbone(hyper.backbone_config(t5), sum(counts), name='backbone')
    encoded, mask = backbone.encode(hyper_input_tokens, deterministic)
    states = backbone.decode_parallel(encoded, mask, deterministic)  # [B, 3L, D]
    batch = states.shape[0]
    peft: dict = {}
    start = 0
    for (stack, site), layers in zip(LORA_SITES, counts):
      x = states[:, start:start + layers]  # [B, L, D]
      start += layers
      slot = {}
      for proj in PROJECTIONS:
        name = f'{stack[:3]}_{site}_{proj}'
        a, b = LoraHead(t5.d_model, t5.inner_dim, hyper.lora_rank, hyper.hidden(t5),
                        hyper.compute_dtype, name=f'{name}_head')(x)
        raw = param_with_axes(self, f'{name}_gate', nn.initializers.zeros, (layers,),
                              ('layers',))
        gate = jnp.broadcast_to(jnp.tanh(raw).astype(hyper.compute_dtype)[None],
                                (batch, layers))  # [B, L]
        slot[proj] = {'a': a, 'b': b, 'gate': gate}
      peft.setdefault(stack, {})[site] = slot
    return peft, fusion_aux(hyper, encoded, mask)
