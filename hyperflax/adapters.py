r"""Generated adapters on disk: format, manifest, downstream identity, PEFT export/import.

An adapter is what one hypermodel forward pass writes for one task (HyperTuning
Fig. 1D): after it exists, the task is served without its demonstrations,
which are never stored. Layout (written by `python -m hyperflax.hypertune`)::

  ADAPTER_DIR/manifest.json          what it is and which downstream model it fits
  ADAPTER_DIR/adapter.safetensors    float32 tensors of one task, no batch axis

Tensor names are the slot paths of `hyperflax.model.peft`, '/'-joined:
  {encoder,decoder}/self/prefix/{k,v}                      [L, P, heads*d_kv]
  {encoder/self,decoder/self,decoder/cross}/{query,value}/{a,b,gate}
                                                           [L, D, R], [L, R, F], [L]
  decoder/cross/fusion/{k,v} [L, T, heads*d_kv], fusion/mask [T] (uint8)
      HART fusion-in-decoder (format version 2): every downstream decoder
      layer's cross-attention keys/values of the hypermodel's encoder output,
      computed once at hypertune time (`hyperflax.model.transformer.fusion_kv`),
      so a query does not re-project the T stored states in every layer and
      costs what a prefix query costs. Larger on disk than the states they
      replace (2·L·heads·d_kv vs D floats per position).
  fusion/states [T, D] (+ fusion/mask)   the same, as version 1 stored it: the
      raw encoder output. Still loaded; `Adapter.with_fusion_kv` (which
      `serving.Server` applies on registration) turns it into version 2's form.
  init/embeddings [2P, D]                         prefix_mlp: generated prefix-tuning
      embeddings (for hyper-init through the Prefix-MLP reparameterisation)

Manifest fields: format, format_version, kind (the generator kind), peft_type
('lora' | 'prefix'), lora_rank, prefix_len, tensors (name -> shape, dtype),
fusion (null or {length, note}), downstream ({config: transformers config
dict, params_sha256, source}), hypermodel ({checkpoint, step, method, kind,
train_downstream}), demonstrations ({given, used, dropped_to_fit,
beyond_num_shots, definition, stored: false}), tokenizer ({kind, path,
sha256}), lengths ({hyper, encoder, decoder}), query (only where the downstream
reads the query in its decoder: {in_decoder: true, marks}), created.

PEFT export. LoRA adapters export to the Hugging Face PEFT layout
(`adapter_config.json` + `adapter_model.safetensors`): lora_A = a.T,
lora_B = (gate * b).T, r = lora_alpha = R, so PEFT's scaling alpha/r is 1 and
the generated per-layer gate is folded into B. Prefix adapters are NOT
exported to PEFT prefix tuning: for T5, peft 0.21 passes the prefixes as
decoder `past_key_values` only, so (1) the encoder gets no prefix, (2)
transformers' T5 gives prefix positions relative-position buckets (it computes
the bias over key_length including the past, shifting the real tokens by P)
and (3) the cross-attention cache is reset. Our rule (layers.py) gives both
encoder and decoder self-attention prefixes with zero position bias, never
masked: the two do not compute the same function, so prefixes stay in this
format, loaded by `load_adapter` (and served by `hyperflax.serving`).
Fusion adapters cannot be expressed in PEFT at all and are refused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from typing import Any

import numpy as np

from hyperflax.model import peft as peft_lib
from hyperflax.model.config import T5Config
from hyperflax.workdir import as_path, write_atomic

# 2: precomputed fusion keys/values; 3: the downstream reads the query in its decoder
# (manifest 'query'), which a reader of versions 1-2 would silently score in the encoder.
FORMAT, FORMAT_VERSION = 'hyperflax-adapter', 3
MANIFEST_FILE, TENSORS_FILE = 'manifest.json', 'adapter.safetensors'
HASH_CACHE_FILE = 'hyperflax_params_sha256.json'
PEFT_CONFIG_FILE, PEFT_WEIGHTS_FILE = 'adapter_config.json', 'adapter_model.safetensors'
# transformers module of each LoRA site (as in tests/test_t5_peft.py).
PEFT_SITES = {('encoder', 'self'): 'encoder.block.{i}.layer.0.SelfAttention',
              ('decoder', 'self'): 'decoder.block.{i}.layer.0.SelfAttention',
              ('decoder', 'cross'): 'decoder.block.{i}.layer.1.EncDecAttention'}
PEFT_PROJECTIONS = {'query': 'q', 'value': 'v'}
# Config fields that decide which function a T5 computes (dropout does not).
_ARCH_KEYS = ('vocab_size', 'd_model', 'd_kv', 'd_ff', 'num_heads', 'num_layers',
              'num_decoder_layers', 'relative_attention_num_buckets',
              'relative_attention_max_distance', 'layer_norm_epsilon', 'feed_forward_proj')


class AdapterMismatchError(ValueError):
  """The adapter was generated for another downstream model."""


@dataclasses.dataclass
class Adapter:
  """One task's generated parameters and their manifest.

  Attributes:
    tensors: '/'-joined name -> float32 numpy array without a batch axis.
    manifest: the JSON manifest (see module docstring).
  """
  tensors: dict[str, np.ndarray]
  manifest: dict[str, Any]

  @property
  def kind(self) -> str:
    return self.manifest['kind']

  @property
  def peft_type(self) -> str:
    return self.manifest['peft_type']

  @property
  def has_fusion(self) -> bool:
    """Fusion-in-decoder (as stored states or as precomputed keys/values)."""
    return 'fusion/mask' in self.tensors

  @property
  def has_fusion_states(self) -> bool:
    """Version-1 fusion: raw states the decoder projects on every query."""
    return 'fusion/states' in self.tensors

  def with_fusion_kv(self, config: T5Config, params) -> 'Adapter':
    """This adapter with stored fusion states replaced by their per-layer
    cross-attention keys/values under the downstream `params` (version 2)."""
    if not self.has_fusion_states:
      return self
    from hyperflax.model.transformer import fusion_kv
    kv = fusion_kv(config, params, self.tensors['fusion/states'][None], self.peft(1))
    tensors = {k: v for k, v in self.tensors.items() if k != 'fusion/states'}
    tensors.update({f'decoder/cross/fusion/{n}': np.asarray(a, np.float32)[0]
                    for n, a in kv.items()})
    return Adapter(tensors, _describe(dict(self.manifest), tensors))

  def slots(self) -> dict[str, np.ndarray]:
    """The PEFT slot tensors (no fusion / init tensors), flat."""
    return {k: v for k, v in self.tensors.items() if not k.startswith(('fusion/', 'init/'))}

  def peft(self, batch: int = 1) -> dict:
    """Slots shaped for the model: leaves [batch, L, ...] (`peft.py`)."""
    return peft_lib.unflatten({k: np.broadcast_to(v, (batch,) + v.shape)
                               for k, v in self.slots().items()})

  def fusion(self) -> tuple[np.ndarray | None, np.ndarray | None]:
    """([1, T, D] float32 states or None, [1, T] bool mask or None).

    States exist only in version-1 adapters; version 2 holds their keys/values
    among the slots (`peft()`), and the mask goes in as `fusion_mask`."""
    if not self.has_fusion:
      return None, None
    states = self.tensors['fusion/states'][None] if self.has_fusion_states else None
    return states, self.tensors['fusion/mask'][None].astype(bool)

  def signature(self) -> tuple:
    """Shapes that must agree for adapters to share one compiled batch."""
    fusion = None
    if self.has_fusion:
      fusion = (self.tensors['fusion/states'].shape if self.has_fusion_states else None,
                self.tensors['fusion/mask'].shape)
    return tuple(sorted((k, v.shape) for k, v in self.slots().items())), fusion


def _describe(manifest: dict, tensors: dict) -> dict:
  """Sets the manifest's format, peft_type, tensors and fusion fields."""
  # Each version only where its new layout is used, so older readers keep reading every
  # other adapter.
  version = 3 if manifest.get('query') else 2 if 'decoder/cross/fusion/k' in tensors else 1
  manifest = dict(manifest, format=FORMAT, format_version=version)
  manifest['peft_type'] = 'prefix' if any('/prefix/' in k for k in tensors) else 'lora'
  manifest['tensors'] = {k: {'shape': list(v.shape), 'dtype': str(v.dtype)}
                         for k, v in sorted(tensors.items())}
  precomputed = 'decoder/cross/fusion/k' in tensors
  manifest['fusion'] = ({'length': int(tensors['fusion/mask'].shape[0]),
                         'precomputed_kv': precomputed,
                         'note': ('per decoder layer cross-attention keys/values of the '
                                  if precomputed else '') +
                                 'hypermodel encoder output + mask, cross-attended by the '
                                 'downstream decoder (fusion-in-decoder); computed once per '
                                 'task from the demonstrations, which are not stored'}
                        if 'fusion/mask' in tensors else None)
  return manifest


def from_generated(peft, aux: dict, manifest: dict, downstream: tuple | None = None) -> Adapter:
  """Builds an `Adapter` from a batch-1 generator output (`hyper.apply`).

  With `downstream=(T5Config, params)` fusion states are stored as their
  per-layer cross-attention keys/values (format version 2's serving form).
  """
  tensors = {k: np.asarray(v, np.float32)[0] for k, v in peft_lib.flatten(peft).items()}
  if aux.get('fusion_states') is not None:
    tensors['fusion/states'] = np.asarray(aux['fusion_states'], np.float32)[0]
    mask = aux.get('fusion_mask')
    mask = np.ones(tensors['fusion/states'].shape[:1], bool) if mask is None else np.asarray(mask)[0]
    tensors['fusion/mask'] = mask.astype(np.uint8)
  if aux.get('embeddings') is not None and manifest.get('kind') == 'prefix_mlp':
    tensors['init/embeddings'] = np.asarray(aux['embeddings'], np.float32)[0]
  adapter = Adapter(tensors, _describe(manifest, tensors))
  return adapter.with_fusion_kv(*downstream) if downstream is not None else adapter


# ---- files ---------------------------------------------------------------------

# Adapter directories may be URLs (gs://, s3://) like workdirs: every file goes
# through epath, written atomically, tensors before the manifest that names them.

def save_adapter(adapter: Adapter, out_dir: str) -> str:
  from safetensors.numpy import save
  out = as_path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  write_atomic(out / TENSORS_FILE, save({k: np.ascontiguousarray(v) for k, v in adapter.tensors.items()},
                                  metadata={'format': FORMAT}))
  write_atomic(out / MANIFEST_FILE, json.dumps(adapter.manifest, indent=2, sort_keys=True))
  return out_dir


def load_adapter(path: str) -> Adapter:
  """Reads an adapter directory written by `save_adapter` (a local path or a URL)."""
  from safetensors.numpy import load
  manifest_path = as_path(path) / MANIFEST_FILE
  if not manifest_path.exists():
    hint = (' (this is a PEFT directory: use adapters.import_peft)'
            if (as_path(path) / PEFT_CONFIG_FILE).exists() else '')
    raise FileNotFoundError(f'{path}: no {MANIFEST_FILE}; not a hyperflax adapter{hint}')
  try:
    manifest = json.loads(manifest_path.read_text())
  except ValueError as e:
    raise ValueError(f'{manifest_path}: not JSON ({e})') from None
  if manifest.get('format') != FORMAT or manifest.get('format_version', 0) > FORMAT_VERSION:
    raise ValueError(f'{manifest_path}: format {manifest.get("format")!r} version '
                     f'{manifest.get("format_version")!r} is not readable by this hyperflax '
                     f'(it reads {FORMAT!r} versions 1-{FORMAT_VERSION})')
  tensors_path = as_path(path) / TENSORS_FILE
  try:
    tensors = load(tensors_path.read_bytes())
  except FileNotFoundError:
    raise FileNotFoundError(f'{tensors_path}: missing (the manifest names it)') from None
  except Exception as e:  # SafetensorError names no file
    raise ValueError(f'{tensors_path}: unreadable safetensors file ({e})') from None
  return Adapter(dict(tensors), manifest)


# ---- downstream identity -------------------------------------------------------

def params_sha256(params, config: T5Config | None = None) -> str:
  """sha256 over sorted '/'-joined names, shapes and float32 bytes (unscanned)."""
  if 'layers' in params.get('encoder', {}):
    from hyperflax.model import hf
    params = hf.unstack_layers(params, config)
  h = hashlib.sha256()
  for name, value in sorted(peft_lib.flatten(params).items()):
    array = np.ascontiguousarray(np.asarray(value, np.float32))
    h.update(f'{name}:{array.shape}\n'.encode())
    h.update(array.tobytes())
  return h.hexdigest()


def _dir_signature(path: str) -> dict[str, list[int]]:
  sig = {}
  for root, _, files in os.walk(path):
    for name in files:
      full = os.path.join(root, name)
      if name != HASH_CACHE_FILE:
        st = os.stat(full)
        sig[os.path.relpath(full, path)] = [st.st_size, st.st_mtime_ns]
  return sig


def model_dir_sha256(model_dir: str, params, config: T5Config | None = None) -> str:
  """`params_sha256` of a model directory, cached next to it (hashing XL takes seconds).

  The cache is keyed by the size and mtime of every file in the directory and
  is skipped silently when the directory is read-only. `params` may be a
  zero-argument callable, called only when the cache misses.
  """
  cache = os.path.join(model_dir, HASH_CACHE_FILE)
  sig = _dir_signature(model_dir)
  try:
    with open(cache) as f:
      cached = json.load(f)
    if cached.get('files') == sig:
      return cached['sha256']
  except (OSError, ValueError):
    pass
  digest = params_sha256(params() if callable(params) else params, config)
  try:
    with open(cache, 'w') as f:
      json.dump({'sha256': digest, 'files': sig}, f)
  except OSError:
    pass
  return digest


def downstream_identity(config: T5Config, sha256: str | None, source: str) -> dict:
  return {'config': config.to_hf_dict(), 'params_sha256': sha256, 'source': source}


def _arch(d: dict) -> dict:
  return {k: d.get(k) for k in _ARCH_KEYS}


def check_downstream(adapter: Adapter, config: T5Config, sha256: str, where: str,
                     name: str = 'adapter') -> None:
  """Raises `AdapterMismatchError` naming both models unless the adapter fits."""
  want = adapter.manifest.get('downstream') or {}
  mine, theirs = _arch(config.to_hf_dict()), _arch(want.get('config') or {})
  if mine != theirs:
    diff = {k: (theirs[k], mine[k]) for k in _ARCH_KEYS if mine[k] != theirs[k]}
    raise AdapterMismatchError(
        f'{name} was generated for a downstream T5 with config {theirs} (source '
        f'{want.get("source")!r}); {where} has another architecture: '
        + ', '.join(f'{k}: adapter {a} vs model {b}' for k, (a, b) in diff.items()))
  if want.get('params_sha256') and want['params_sha256'] != sha256:
    raise AdapterMismatchError(
        f'{name} was generated for downstream parameters sha256={want["params_sha256"]} '
        f'(source {want.get("source")!r}), but {where} has sha256={sha256}: serving it '
        'there would silently compute something else. Use the model it was made for '
        '(HyperT5+ checkpoints: hypertune --export-downstream).')


# ---- Hugging Face PEFT ---------------------------------------------------------

def export_peft(adapter: Adapter, out_dir: str, base_model_name_or_path: str | None = None) -> str:
  """Writes a LoRA adapter in PEFT's layout (see module docstring).

  Raises:
    ValueError: for fusion-in-decoder and prefix adapters (not expressible).
  """
  from safetensors.numpy import save
  if (adapter.manifest.get('query') or {}).get('in_decoder'):
    raise ValueError('this adapter fits a downstream that reads the query in its decoder '
                     '(trained with query_in_decoder); a PEFT model reads it in the encoder: '
                     'serve it with hyperflax.predict instead.')
  if adapter.has_fusion:
    raise ValueError(f'{adapter.kind} adapter uses fusion-in-decoder (the downstream decoder '
                     'cross-attends to stored hypermodel states): PEFT has no equivalent. '
                     'Serve it with hyperflax.predict instead.')
  if adapter.peft_type != 'lora':
    raise ValueError(f'{adapter.kind} adapter holds prefixes; PEFT prefix tuning for T5 '
                     'computes a different function (decoder only, prefix positions get '
                     'position bias; see hyperflax.adapters docstring). Use the hyperflax '
                     'adapter format (load_adapter) instead.')
  slots = adapter.slots()
  tensors, modules, ranks = {}, [], set()
  for (stack, site), pattern in PEFT_SITES.items():
    for proj, short in PEFT_PROJECTIONS.items():
      key = f'{stack}/{site}/{proj}'
      if f'{key}/a' not in slots:
        continue
      a, b = slots[f'{key}/a'], peft_lib.gated_b(slots[f'{key}/b'], slots.get(f'{key}/gate'))
      for layer in range(a.shape[0]):
        module = f'{pattern.format(i=layer)}.{short}'
        modules.append(module)
        ranks.add(a.shape[-1])
        tensors[f'base_model.model.{module}.lora_A.weight'] = np.ascontiguousarray(a[layer].T)
        tensors[f'base_model.model.{module}.lora_B.weight'] = np.ascontiguousarray(
            b[layer].T)
  rank = ranks.pop()
  source = (adapter.manifest.get('downstream') or {}).get('source')
  if base_model_name_or_path is None and source and os.path.isdir(source):
    base_model_name_or_path = source  # where PEFT users find the matching T5
  out = as_path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  write_atomic(out / PEFT_WEIGHTS_FILE, save(tensors, metadata={'format': 'pt'}))
  config = {
      'peft_type': 'LORA', 'task_type': 'SEQ_2_SEQ_LM', 'r': rank, 'lora_alpha': rank,
      'lora_dropout': 0.0, 'bias': 'none', 'fan_in_fan_out': False, 'use_rslora': False,
      'use_dora': False, 'target_modules': sorted(modules), 'modules_to_save': None,
      'inference_mode': True, 'init_lora_weights': True, 'rank_pattern': {},
      'alpha_pattern': {}, 'base_model_name_or_path': base_model_name_or_path,
  }
  write_atomic(out / PEFT_CONFIG_FILE, json.dumps(config, indent=2, sort_keys=True))
  write_atomic(out / 'hyperflax_manifest.json',  # provenance only
         json.dumps(adapter.manifest, indent=2, sort_keys=True))
  return out_dir


_PEFT_NAME = re.compile(r'(?:base_model\.model\.)?(encoder|decoder)\.block\.(\d+)\.layer\.\d\.'
                        r'(SelfAttention|EncDecAttention)\.([qv])\.lora_([AB])(?:\.\w+)?\.weight$')


def _pattern_value(pattern: dict, module: str, default):
  for key, value in pattern.items():
    if module == key or module.endswith('.' + key) or re.fullmatch(key, module):
      return value
  return default


def import_peft(peft_dir: str, config: T5Config) -> Adapter:
  """Reads a PEFT LoRA adapter for T5 (q/v maps) into our format.

  PEFT's scaling (alpha/r, or alpha/sqrt(r) with rsLoRA) becomes the gate;
  layers PEFT leaves out get zero factors (an exact identity), and ranks that
  differ per module (rank_pattern) are zero-padded to the largest.
  """
  from safetensors.numpy import load
  cfg = json.loads((as_path(peft_dir) / PEFT_CONFIG_FILE).read_text())
  if cfg.get('peft_type') != 'LORA' or cfg.get('use_dora') or cfg.get('bias', 'none') != 'none':
    raise ValueError(f'{peft_dir}: only plain LoRA (no DoRA, bias="none") can be imported; '
                     f'got peft_type={cfg.get("peft_type")!r}')
  found: dict = {}
  for name, value in load((as_path(peft_dir) / PEFT_WEIGHTS_FILE).read_bytes()).items():
    m = _PEFT_NAME.search(name)
    if m is None:
      raise ValueError(f'{peft_dir}: tensor {name!r} is not a LoRA factor of a T5 q/v map')
    stack, layer, block, short, ab = m.groups()
    site = 'cross' if block == 'EncDecAttention' else 'self'
    proj = {v: k for k, v in PEFT_PROJECTIONS.items()}[short]
    module = f'{PEFT_SITES[(stack, site)].format(i=layer)}.{short}'
    found.setdefault((stack, site, proj), {}).setdefault(int(layer), {})[ab] = (module, value)
  tensors = {}
  rank = max(v['A'][1].shape[0] for site in found.values() for v in site.values())
  for (stack, site, proj), layers in sorted(found.items()):
    n = config.num_layers if stack == 'encoder' else config.num_decoder_layers
    a = np.zeros((n, config.d_model, rank), np.float32)
    b = np.zeros((n, rank, config.inner_dim), np.float32)
    gate = np.zeros((n,), np.float32)
    for layer, ab in layers.items():
      module, lora_a = ab['A']
      r = lora_a.shape[0]
      a[layer, :, :r], b[layer, :r] = lora_a.T, ab['B'][1].T
      r_cfg = _pattern_value(cfg.get('rank_pattern') or {}, module, cfg['r'])
      alpha = _pattern_value(cfg.get('alpha_pattern') or {}, module, cfg['lora_alpha'])
      gate[layer] = alpha / (r_cfg ** 0.5 if cfg.get('use_rslora') else r_cfg)
    tensors.update({f'{stack}/{site}/{proj}/a': a, f'{stack}/{site}/{proj}/b': b,
                    f'{stack}/{site}/{proj}/gate': gate})
  manifest = {'kind': 'peft_lora', 'lora_rank': rank, 'prefix_len': None,
              'downstream': downstream_identity(config, None, cfg.get('base_model_name_or_path')
                                                or 'unknown (imported from PEFT)'),
              'imported_from': os.fspath(as_path(peft_dir))}
  return from_generated(peft_lib.unflatten({k: v[None] for k, v in tensors.items()}), {},
                        manifest)
