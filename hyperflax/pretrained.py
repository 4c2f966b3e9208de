"""`load_pretrained`: a transformers T5 directory or a hyperflax checkpoint -> (model, params)."""

from __future__ import annotations

import os

import jax

from hyperflax.model import T5, T5Config
from hyperflax.model import hf


def load_pretrained(path: str, **config_overrides) -> tuple[T5, dict]:
  """Loads T5 v1.1 weights without importing transformers or TensorFlow.

  Args:
    path: a transformers checkpoint directory (config.json + model.safetensors
      or a sharded index) or a directory written by `hyperflax.convert hf-to-flax`.
    **config_overrides: `T5Config` fields to override (e.g. dtype='bfloat16',
      scan_layers=True, dropout_rate=0.0).

  Returns:
    (model, params): `model.apply({'params': params}, enc_tokens, dec_tokens)`
    gives logits [batch, length, vocab]. Parameters are float32 numpy arrays.
  """
  if not os.path.isdir(path):
    raise FileNotFoundError(f'load_pretrained: {path!r} is not a directory')
  config_file = os.path.join(path, 'config.json')
  if not os.path.exists(config_file):
    raise FileNotFoundError(f'load_pretrained: {config_file} is missing')
  config = T5Config.from_json_file(config_file, **config_overrides)
  from hyperflax import checkpoints
  if checkpoints.is_params_checkpoint(path):
    params = checkpoints.restore_params(path)
    if 'layers' in params['encoder'] and not config.scan_layers:
      params = hf.unstack_layers(params, config)
  else:
    params, _ = hf.hf_to_params(path, config)
  if config.scan_layers and 'layers' not in params['encoder']:
    params = hf.stack_layers(params, config)
  return T5(config), params


def param_count(tree) -> int:
  return sum(x.size for x in jax.tree.leaves(tree))
