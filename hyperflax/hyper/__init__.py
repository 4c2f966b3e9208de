"""PEFT generators for a frozen T5: hypermodels (HyperT5, HART) and shared baselines.

Every kind has one pure interface::

  hyper = HyperConfig(kind='hart', prefix_len=32, decoder_layers=8, fusion_in_decoder=True)
  model = build_hypermodel(hyper, t5_config)
  params = init_hypermodel(hyper, t5_config, rng, t5_params)   # backbone from T5
  peft, aux = model.apply({'params': params}, hyper_input_tokens, deterministic=True)
  logits = T5(t5_config).apply({'params': frozen}, enc, dec, peft=peft,
                               fusion_states=aux.get('fusion_states'),
                               fusion_mask=aux.get('fusion_mask'))

`peft` follows `hyperflax.model.peft` (batch first; row i depends on row i
only). `aux` may hold 'fusion_states' [B, T, D] and 'fusion_mask' [B, T]
(fusion-in-decoder), 'states' [B, S, 2, D] (HART, for `consistency_loss`) and
'embeddings' [B, 2P, D] (Prefix-MLP kinds).
"""

from hyperflax.hyper.config import HYPER_KINDS, KINDS, SHARED_KINDS, HyperConfig
from hyperflax.hyper.diagnostics import diagnose, format_stats, parameter_stats
from hyperflax.hyper.hart import HART
from hyperflax.hyper.lora import HyperT5LoRA
from hyperflax.hyper.losses import consistency_loss, cross_entropy, hypertuning_loss
from hyperflax.hyper.model import (abstract_params, build_hypermodel, init_hypermodel,
                                   param_axes, param_count)
from hyperflax.hyper.prefix import HyperT5Prefix, HyperT5PrefixMLP
from hyperflax.hyper.shared import SharedLoRA, SharedPrefix, shared_prefix_from_hypermodel

__all__ = [
    'HART', 'HYPER_KINDS', 'HyperConfig', 'HyperT5LoRA', 'HyperT5Prefix', 'HyperT5PrefixMLP',
    'KINDS', 'SHARED_KINDS', 'SharedLoRA', 'SharedPrefix', 'abstract_params',
    'build_hypermodel', 'consistency_loss', 'cross_entropy', 'diagnose', 'format_stats',
    'hypertuning_loss', 'init_hypermodel', 'param_axes', 'param_count', 'parameter_stats',
    'shared_prefix_from_hypermodel',
]
