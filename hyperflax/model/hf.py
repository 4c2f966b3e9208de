"""transformers T5 checkpoints <-> hyperflax parameters, via safetensors only.

One declarative table maps every transformers tensor name to our parameter
path and says whether the matrix is transposed (torch Linear stores
[out, in]; our kernels are [in, out]). The same table is used both ways.
"""

from __future__ import annotations

import json
import os
from typing import Any, Iterator

import numpy as np

from hyperflax.model.config import T5Config

Params = dict[str, Any]

_ATTN = {'q': 'query', 'k': 'key', 'v': 'value', 'o': 'out'}
_MLP = ('wi_0', 'wi_1', 'wo')


def name_table(config: T5Config) -> list[tuple[str, str, bool]]:
  """(transformers name, our '/'-joined path, transposed) for every tensor."""
  rows = [('shared.weight', 'token_embedder/embedding', False),
          ('lm_head.weight', 'lm_head/kernel', True),
          ('encoder.final_layer_norm.weight', 'encoder/encoder_norm/scale', False),
          ('decoder.final_layer_norm.weight', 'decoder/decoder_norm/scale', False),
          ('encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight',
           'encoder/relpos_bias/rel_embedding', False),
          ('decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight',
           'decoder/relpos_bias/rel_embedding', False)]
  for i in range(config.num_layers):
    hf, ours = f'encoder.block.{i}.layer', f'encoder/layers_{i}'
    rows += [(f'{hf}.0.layer_norm.weight', f'{ours}/pre_attention_layer_norm/scale', False),
             (f'{hf}.1.layer_norm.weight', f'{ours}/pre_mlp_layer_norm/scale', False)]
    rows += [(f'{hf}.0.SelfAttention.{a}.weight', f'{ours}/attention/{b}', True)
             for a, b in _ATTN.items()]
    rows += [(f'{hf}.1.DenseReluDense.{m}.weight', f'{ours}/mlp/{m}', True) for m in _MLP]
  for i in range(config.num_decoder_layers):
    hf, ours = f'decoder.block.{i}.layer', f'decoder/layers_{i}'
    rows += [(f'{hf}.0.layer_norm.weight', f'{ours}/pre_self_attention_layer_norm/scale', False),
             (f'{hf}.1.layer_norm.weight', f'{ours}/pre_cross_attention_layer_norm/scale', False),
             (f'{hf}.2.layer_norm.weight', f'{ours}/pre_mlp_layer_norm/scale', False)]
    rows += [(f'{hf}.0.SelfAttention.{a}.weight', f'{ours}/self_attention/{b}', True)
             for a, b in _ATTN.items()]
    rows += [(f'{hf}.1.EncDecAttention.{a}.weight', f'{ours}/encoder_decoder_attention/{b}', True)
             for a, b in _ATTN.items()]
    rows += [(f'{hf}.2.DenseReluDense.{m}.weight', f'{ours}/mlp/{m}', True) for m in _MLP]
  return rows


# Copies of `shared.weight` that some writers store; identical by construction.
_TIED_COPIES = ('encoder.embed_tokens.weight', 'decoder.embed_tokens.weight')


def _get(tree: Params, path: str):
  for part in path.split('/'):
    tree = tree[part]
  return tree


def _set(tree: Params, path: str, value) -> None:
  *parents, leaf = path.split('/')
  for part in parents:
    tree = tree.setdefault(part, {})
  tree[leaf] = value


def stack_layers(params: Params, config: T5Config, stack_fn=np.stack) -> Params:
  """Unscanned `layers_{i}` subtrees -> one scanned `layers/layer` subtree.

  `stack_fn=jnp.stack` keeps it traceable (under `jit`).
  """
  import jax
  out = dict(params)
  for stack, n in (('encoder', config.num_layers), ('decoder', config.num_decoder_layers)):
    sub = dict(params[stack])
    layers = [sub.pop(f'layers_{i}') for i in range(n)]
    sub['layers'] = {'layer': jax.tree.map(lambda *xs: stack_fn(xs), *layers)}
    out[stack] = sub
  return out


def unstack_layers(params: Params, config: T5Config) -> Params:
  import jax
  out = dict(params)
  for stack, n in (('encoder', config.num_layers), ('decoder', config.num_decoder_layers)):
    sub = dict(params[stack])
    scanned = sub.pop('layers')['layer']
    for i in range(n):
      sub[f'layers_{i}'] = jax.tree.map(lambda x, i=i: x[i], scanned)
    out[stack] = sub
  return out


def _safetensors_files(path: str) -> list[str]:
  index = os.path.join(path, 'model.safetensors.index.json')
  single = os.path.join(path, 'model.safetensors')
  if os.path.exists(index):
    with open(index) as f:
      files = sorted(set(json.load(f)['weight_map'].values()))
    return [os.path.join(path, f) for f in files]
  if os.path.exists(single):
    return [single]
  if any(os.path.exists(os.path.join(path, f)) for f in
         ('pytorch_model.bin', 'pytorch_model.bin.index.json')):
    raise FileNotFoundError(
        f'{path}: only pytorch_model.bin found; hyperflax reads safetensors. Re-save '
        'it once with transformers: model.save_pretrained(dir, safe_serialization=True).')
  raise FileNotFoundError(f'{path}: no model.safetensors or model.safetensors.index.json')


def read_safetensors(path: str) -> Iterator[tuple[str, np.ndarray, str]]:
  """Yields (name, float32 array, original dtype name) for each stored tensor."""
  from safetensors import safe_open
  for file in _safetensors_files(path):
    try:
      with safe_open(file, framework='flax') as f:
        for name in f.keys():
          t = f.get_tensor(name)
          yield name, np.asarray(t.astype('float32')), str(t.dtype)
    except Exception as e:  # pylint: disable=broad-except  (SafetensorError names no file)
      if type(e).__name__ != 'SafetensorError':
        raise
      raise ValueError(f'{file}: unreadable safetensors file ({e})') from None


def hf_to_params(path: str, config: T5Config) -> tuple[Params, str]:
  """Reads a transformers T5 directory into our (unscanned) parameter tree.

  Returns:
    (params, dtype) where dtype is the checkpoint's storage dtype.
  """
  table = {hf: (ours, t) for hf, ours, t in name_table(config)}
  expected = _expected_shapes(config)
  params: Params = {}
  seen, dtypes = set(), set()
  for name, array, dtype in read_safetensors(path):
    if name in _TIED_COPIES:
      continue
    if name not in table:
      raise ValueError(f'{path}: unknown tensor {name!r} (not part of a T5 v1.1 model '
                       f'with {config.num_layers}/{config.num_decoder_layers} layers)')
    ours, transpose = table[name]
    value = array.T if transpose else array
    if tuple(value.shape) != expected[ours]:
      raise ValueError(f'{path}: tensor {name!r} has shape {tuple(array.shape)}; the '
                       f'config expects {expected[ours][::-1] if transpose else expected[ours]}')
    _set(params, ours, np.ascontiguousarray(value))
    seen.add(name)
    dtypes.add(dtype)
  missing = sorted(set(table) - seen)
  if missing:
    raise ValueError(f'{path}: missing tensors {missing[:5]}{" ..." if len(missing) > 5 else ""}')
  return params, (dtypes.pop() if len(dtypes) == 1 else 'float32')


def params_to_hf(params: Params, config: T5Config, out_dir: str,
                 dtype: str = 'float32') -> None:
  """Writes config.json + model.safetensors that transformers loads."""
  from safetensors.numpy import save_file
  if 'layers' in params.get('encoder', {}):
    params = unstack_layers(params, config)
  os.makedirs(out_dir, exist_ok=True)
  tensors = {}
  for hf, ours, transpose in name_table(config):
    try:
      value = np.asarray(_get(params, ours), dtype=np.float32)
    except KeyError:
      raise ValueError(f'parameter {ours!r} (for {hf!r}) is missing from the checkpoint')
    tensors[hf] = np.ascontiguousarray(value.T if transpose else value)
  if dtype != 'float32':
    import ml_dtypes  # numpy has no bfloat16 of its own
    np_dtype = {'bfloat16': ml_dtypes.bfloat16, 'float16': np.float16}[dtype]
    tensors = {k: v.astype(np_dtype) for k, v in tensors.items()}
    _save_reduced(tensors, os.path.join(out_dir, 'model.safetensors'))
  else:
    save_file(tensors, os.path.join(out_dir, 'model.safetensors'), metadata={'format': 'pt'})
  hf_config = config.to_hf_dict()
  hf_config['torch_dtype'] = dtype
  with open(os.path.join(out_dir, 'config.json'), 'w') as f:
    json.dump(hf_config, f, indent=2, sort_keys=True)


def _save_reduced(tensors: dict[str, np.ndarray], file: str) -> None:
  from safetensors.flax import save_file
  import jax.numpy as jnp
  save_file({k: jnp.asarray(v) for k, v in tensors.items()}, file, metadata={'format': 'pt'})


def _expected_shapes(config: T5Config) -> dict[str, tuple[int, ...]]:
  d, h, ff, v = config.d_model, config.inner_dim, config.d_ff, config.vocab_size
  shapes = {}
  for _, ours, _ in name_table(config):
    leaf = ours.split('/')
    if leaf[-1] == 'scale':
      s = (d,)
    elif leaf[-1] == 'rel_embedding':
      s = (config.relative_attention_num_buckets, config.num_heads)
    elif ours == 'token_embedder/embedding':
      s = (v, d)
    elif ours == 'lm_head/kernel':
      s = (d, v)
    elif leaf[-1] == 'out':
      s = (h, d)
    elif leaf[-1] in ('query', 'key', 'value'):
      s = (d, h)
    elif leaf[-1] == 'wo':
      s = (ff, d)
    else:
      s = (d, ff)
    shapes[ours] = s
  return shapes
