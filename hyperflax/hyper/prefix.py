"""HyperT5-Prefix and HyperT5-Prefix-MLP: few-shot input -> per-layer prefixes."""

from __future__ import annotations

import flax.linen as nn
import jax

from hyperflax.hyper.backbone import Backbone
from hyperflax.hyper.config import HyperConfig
from hyperflax.hyper.heads import PrefixHead, PrefixMLP
from hyperflax.model.config import T5Config

Array = jax.Array


def fusion_aux(hyper: HyperConfig, encoded: Array, mask: Array) -> dict:
  """Fusion-in-decoder outputs (HART App. 8.1.3), when enabled."""
  if not hyper.fusion_in_decoder:
    return {}
  return {'fusion_states': encoded,  # [B, T, D]
          'fusion_mask': mask}       # [B, T] bool


class HyperT5Prefix(nn.Module):
  """HyperT5-Prefix (HyperTuning Fig. 7).

  The backbone decoder reads 2P learned inputs in parallel; the first P
  states feed the encoder key/value heads, the last P the decoder ones.

  Attributes:
    hyper: generator config (kind 'prefix').
    t5: the downstream T5 config (sizes of the slots to fill).
  """
  hyper: HyperConfig
  t5: T5Config

  @nn.compact
  def __call__(self, hyper_input_tokens: Array, deterministic: bool = True):
    """Returns (peft, aux); peft prefixes are [B, L, P, inner]."""
    hyper, t5 = self.hyper, self.t5
    prefix_len = hyper.prefix_len
    backbone = Backbone(hyper.backbone_config(t5), 2 * prefix_len, name='backbone')
    encoded, mask = backbone.encode(hyper_input_tokens, deterministic)
    states = backbone.decode_parallel(encoded, mask, deterministic)  # [B, 2P, D]
    peft = {}
    for stack, layers, x in (('encoder', t5.num_layers, states[:, :prefix_len]),
                             ('decoder', t5.num_decoder_layers, states[:, prefix_len:])):
      prefix = {}
      for kv, name in (('k', 'key'), ('v', 'value')):
        head = PrefixHead(layers, t5.inner_dim, hyper.hidden(t5), hyper.compute_dtype,
                          name=f'{stack[:3]}_{name}_head')
        prefix[kv] = head(x)  # [B, L, P, F]
      peft[stack] = {'self': {'prefix': prefix}}
    return peft, fusion_aux(hyper, encoded, mask)


class HyperT5PrefixMLP(nn.Module):
  """HyperT5-Prefix-MLP (HyperTuning App. D).

  The backbone generates the 2P prefix-tuning *embeddings*; `PrefixMLP`
  (the same reparameterisation `SharedPrefix` uses) maps them to prefixes.
  `aux['embeddings']` and the `prefix_mlp` parameters initialise further
  Prefix-MLP tuning (`shared.shared_prefix_from_hypermodel`).

  Attributes:
    hyper: generator config (kind 'prefix_mlp').
    t5: the downstream T5 config.
  """
  hyper: HyperConfig
  t5: T5Config

  @nn.compact
  def __call__(self, hyper_input_tokens: Array, deterministic: bool = True):
    """Returns (peft, aux); aux['embeddings'] is [B, 2P, D]."""
    hyper, t5 = self.hyper, self.t5
    backbone = Backbone(hyper.backbone_config(t5), 2 * hyper.prefix_len, name='backbone')
    encoded, mask = backbone.encode(hyper_input_tokens, deterministic)
    embeddings = backbone.decode_parallel(encoded, mask, deterministic)  # [B, 2P, D]
    peft = PrefixMLP(t5.num_layers, t5.num_decoder_layers, t5.inner_dim, hyper.hidden(t5),
                     hyper.compute_dtype, name='prefix_mlp')(embeddings)
    return peft, {'embeddings': embeddings, **fusion_aux(hyper, encoded, mask)}
