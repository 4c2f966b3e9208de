"""The per-example PEFT structure that fills the frozen T5's slots.

Every leaf carries the batch axis first and the layer axis second, so every
batch row may hold its own parameters::

  peft = {
    'encoder': {'self': SITE},                  # encoder self-attention
    'decoder': {'self': SITE, 'cross': SITE},   # decoder self / cross attention
  }
  SITE = {
    'prefix': {'k': [B, L, P, H], 'v': [B, L, P, H]},          # optional
    'query':  {'a': [B, L, D, R], 'b': [B, L, R, H], 'gate': [B, L]},  # optional
    'value':  {'a': [B, L, D, R], 'b': [B, L, R, H], 'gate': [B, L]},  # optional
  }

with H = num_heads * d_kv, D = d_model, P the prefix length, R the LoRA rank.
The LoRA delta on a projection is `gate * (x·a)·b` ('gate' may be omitted).
Prefixes are only read on self-attention sites (prefix rule: see layers.py).

The decoder's cross site may also hold precomputed fusion-in-decoder keys and
values, `'fusion': {'k': [B, L, T, H], 'v': [B, L, T, H]}`
(`transformer.fusion_kv`), read with the mask given as `fusion_mask`.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from hyperflax.model.config import T5Config

Array = jax.Array
Peft = dict[str, Any]

SITES = (('encoder', 'self'), ('decoder', 'self'), ('decoder', 'cross'))


def layer_adapters(peft: Peft | None, stack: str) -> dict | None:
  if not peft:
    return None
  adapters = peft.get(stack) or None
  return jax.tree.map(_follow_batch, adapters) if adapters else None


def _follow_batch(x: Array) -> Array:
  """Per-example parameters are split like the activations' batch axis
  (other axes are left to XLA); a no-op without sharding rules in scope."""
  unconstrained = jax.sharding.PartitionSpec.UNCONSTRAINED
  return nn.with_logical_constraint(x, ('act_batch',) + (unconstrained,) * (x.ndim - 1))


def prefix_from_paper_layout(phi: Array) -> Peft:
  """[B, L, 2 (enc/dec), 2 (k/v), P, H] (the paper's layout) -> peft dict."""
  if phi.ndim != 6 or phi.shape[2:4] != (2, 2):
    raise ValueError(f'expected prefixes shaped [B, L, 2, 2, P, H], got {phi.shape}')
  site = lambda s: {'prefix': {'k': phi[:, :, s, 0], 'v': phi[:, :, s, 1]}}
  return {'encoder': {'self': site(0)}, 'decoder': {'self': site(1)}}


def prefix_to_paper_layout(peft: Peft) -> Array:
  """Inverse of `prefix_from_paper_layout`."""
  enc, dec = peft['encoder']['self']['prefix'], peft['decoder']['self']['prefix']
  stack = lambda p: jnp.stack([p['k'], p['v']], axis=2)
  return jnp.stack([stack(enc), stack(dec)], axis=2)


def merge(*pefts: Peft | None) -> Peft:
  """Deep-merges PEFT dicts (e.g. prefixes from one source, LoRA from another)."""
  out: dict = {}
  for p in pefts:
    for k, v in (p or {}).items():
      out[k] = merge(out.get(k), v) if isinstance(v, dict) else v
  return out


def broadcast_to_batch(peft: Peft, batch_size: int) -> Peft:
  """Gives a single task's PEFT (batch 1) to every row of a batch."""
  return jax.tree.map(lambda x: jnp.broadcast_to(x, (batch_size,) + x.shape[1:]), peft)


def expected_shapes(config: T5Config, batch: int, prefix_len: int | None,
                    lora_rank: int | None) -> dict[str, tuple[int, ...]]:
  """'/'-joined leaf paths -> shapes the slots accept."""
  shapes = {}
  for stack, site in SITES:
    layers = config.num_layers if stack == 'encoder' else config.num_decoder_layers
    if prefix_len and site == 'self':
      for kv in 'kv':
        shapes[f'{stack}/{site}/prefix/{kv}'] = (batch, layers, prefix_len, config.inner_dim)
    if lora_rank:
      for proj in ('query', 'value'):
        shapes[f'{stack}/{site}/{proj}/a'] = (batch, layers, config.d_model, lora_rank)
        shapes[f'{stack}/{site}/{proj}/b'] = (batch, layers, lora_rank, config.inner_dim)
        shapes[f'{stack}/{site}/{proj}/gate'] = (batch, layers)
  return shapes


def gated_b(b, gate=None):
  """LoRA's up map b [..., L, R, F] with its per-layer gate [..., L] folded in: a @ (gate b)
  is gate (a @ b), a plain LoRA (PEFT and single-task tuning have no gate)."""
  return b if gate is None else b * gate[..., None, None]


def flatten(peft: Peft) -> dict[str, Array]:
  flat = {}
  def walk(node, path):
    for k, v in node.items():
      if isinstance(v, dict):
        walk(v, path + (k,))
      elif v is not None:
        flat['/'.join(path + (k,))] = v
  walk(peft or {}, ())
  return flat


def unflatten(flat: dict[str, Array]) -> Peft:
  out: dict = {}
  for path, v in flat.items():
    node = out
    *parents, leaf = path.split('/')
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = v
  return out


def validate(peft: Peft | None, config: T5Config, batch: int) -> None:
  """Raises ValueError naming the first leaf whose path or shape is wrong."""
  allowed_sites = {f'{s}/{t}' for s, t in SITES}
  for path, leaf in flatten(peft or {}).items():
    parts = path.split('/')
    site = '/'.join(parts[:2])
    if site not in allowed_sites or len(parts) != 4 or parts[2] not in (
        'prefix', 'query', 'value', 'fusion') or (parts[2] == 'prefix' and parts[1] == 'cross'
                                                  ) or (parts[2] == 'fusion' and site != 'decoder/cross'):
      raise ValueError(f'peft: unknown slot {path!r}; slots are {sorted(allowed_sites)} '
                       "x {'prefix' (self only), 'query', 'value'}, 'fusion' (decoder/cross)")
    layers = config.num_layers if parts[0] == 'encoder' else config.num_decoder_layers
    shape = tuple(leaf.shape)
    if shape[:2] != (batch, layers):
      raise ValueError(f'peft/{path}: shape {shape} must start with (batch={batch}, '
                       f'layers={layers})')
    kind, name = parts[2], parts[3]
    want = {('prefix', 'k'): (None, config.inner_dim), ('prefix', 'v'): (None, config.inner_dim),
            ('fusion', 'k'): (None, config.inner_dim), ('fusion', 'v'): (None, config.inner_dim),
            ('query', 'a'): (config.d_model, None), ('value', 'a'): (config.d_model, None),
            ('query', 'b'): (None, config.inner_dim), ('value', 'b'): (None, config.inner_dim),
            ('query', 'gate'): (), ('value', 'gate'): ()}.get((kind, name))
    if want is None:
      raise ValueError(f'peft/{path}: unknown leaf {name!r}')
    rest = shape[2:]
    if len(rest) != len(want) or any(w is not None and w != r for w, r in zip(want, rest)):
      raise ValueError(f'peft/{path}: shape {shape} does not fit the model; expected '
                       f'(batch, layers) + {tuple("*" if w is None else w for w in want)}')
