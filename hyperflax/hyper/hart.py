"""HART: autoregressive, layer-by-layer prefix generation (HART §3, App. 8.1.2).

The backbone decoder runs one cached step per downstream layer. Step 1 reads a
learned z of two embeddings; step s > 1 reads the two states step s-1 wrote.
State 0 of a step feeds the encoder key/value MLPs of the layer that step
writes, state 1 the decoder ones. `HyperConfig.generation_order` maps steps to
layers (bottom-up, top-down or a fixed random permutation; HART Table 7).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from hyperflax.hyper.backbone import Backbone
from hyperflax.hyper.config import HyperConfig
from hyperflax.hyper.heads import HartPrefixHead
from hyperflax.hyper.prefix import fusion_aux
from hyperflax.model.config import T5Config

Array = jax.Array

STATES_PER_STEP = 2  # encoder, decoder


class HART(nn.Module):
  """HART prefix generator.

  Attributes:
    hyper: generator config (kind 'hart').
    t5: the downstream T5 config.
  """
  hyper: HyperConfig
  t5: T5Config

  @nn.compact
  def __call__(self, hyper_input_tokens: Array, deterministic: bool = True,
               state_offsets: Array | None = None):
    """Generates prefixes for every downstream layer.

    Args:
      hyper_input_tokens: [B, T] int32 few-shot input (0 = padding).
      deterministic: disables dropout (else needs a 'dropout' rng).
      state_offsets: optional [B, S, 2, D], added to the states of step s
        before they are used by the heads and by step s+1 (intervention hook).

    Returns:
      (peft, aux): prefixes [B, L, P, inner]; aux['states'] [B, S, 2, D] in
      generation order (for `consistency_loss`), plus fusion states if enabled.
    """
    hyper, t5 = self.hyper, self.t5
    num_steps = hyper.num_steps(t5)
    backbone = Backbone(hyper.backbone_config(t5), STATES_PER_STEP, name='backbone')
    encoded, mask = backbone.encode(hyper_input_tokens, deterministic)
    states = backbone.decode_autoregressive(encoded, mask, num_steps, deterministic,
                                            state_offsets)  # [B, S, 2, D]
    # Downstream layer l reads the states of the step that wrote it.
    layer_to_step = hyper.layer_to_step(num_steps)
    peft = {}
    for index, (stack, layers) in enumerate((('encoder', t5.num_layers),
                                             ('decoder', t5.num_decoder_layers))):
      # With uneven stacks the shorter one ignores the extra layers' states.
      steps = jnp.asarray(layer_to_step[:layers])
      per_layer = states[:, steps, index]  # [B, L, D]
      prefix = {}
      for kv, name in (('k', 'key'), ('v', 'value')):
        head = HartPrefixHead(layers, hyper.prefix_len, t5.inner_dim, hyper.hidden(t5),
                              hyper.compute_dtype, name=f'{stack[:3]}_{name}_head')
        prefix[kv] = head(per_layer)  # [B, L, P, F]
      peft[stack] = {'self': {'prefix': prefix}}
    return peft, {'states': states, **fusion_aux(hyper, encoded, mask)}
