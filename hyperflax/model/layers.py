"""T5 v1.1 building blocks with functional PEFT slots.

The frozen model knows nothing about hypermodels: attention accepts an optional
per-example adapter (`AttentionAdapter`-shaped dict, see `peft.py`) holding
key/value prefixes and/or LoRA factors, and applies it without ever forming a
per-example `[batch, in, out]` kernel.

Prefix rule: prefix positions sit outside the sequence. They receive zero
relative-position bias, are never masked (every query, causal or not, sees
every prefix slot), and are not stored in the decoding cache.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from hyperflax.model.config import T5Config
from hyperflax.model.dense import dense

Array = jax.Array
Adapter = dict[str, Any]

_NEG_INF = -1e10  # finite, so fully-masked rows stay NaN-free


def _normal(std: float):
  return nn.initializers.normal(stddev=std)


def param_with_axes(module: nn.Module, name: str, init, shape, axes):
  return module.param(name, nn.with_logical_partitioning(init, axes), shape,
                      jnp.float32)


class RMSNorm(nn.Module):
  """T5 layer norm: scale only, no mean subtraction, computed in float32."""
  config: T5Config

  @nn.compact
  def __call__(self, x: Array) -> Array:
    scale = param_with_axes(self, 'scale', nn.initializers.ones,
                            (x.shape[-1],), ('embed',))
    x32 = x.astype(jnp.float32)
    var = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
    y = x32 * jax.lax.rsqrt(var + self.config.layer_norm_epsilon)
    return (y * scale).astype(self.config.compute_dtype)


def relative_position_bucket(relative_position: np.ndarray, bidirectional: bool,
                             num_buckets: int, max_distance: int) -> np.ndarray:
  """Maps `key_pos - query_pos` to T5's log-spaced buckets.

  Computed in numpy float32 at trace time, like transformers' torch code, so
  that buckets on the log boundary agree exactly.
  """
  rp = np.asarray(relative_position, dtype=np.int64)
  buckets = np.zeros_like(rp)
  if bidirectional:
    num_buckets //= 2
    buckets += (rp > 0).astype(np.int64) * num_buckets
    rp = np.abs(rp)
  else:
    rp = -np.minimum(rp, 0)
  max_exact = num_buckets // 2
  is_small = rp < max_exact
  safe = np.maximum(rp, 1).astype(np.float32)
  large = max_exact + (
      np.log(safe / np.float32(max_exact)) / np.float32(
          math.log(max_distance / max_exact)) * np.float32(num_buckets - max_exact)
  ).astype(np.int64)
  large = np.minimum(large, num_buckets - 1)
  return buckets + np.where(is_small, rp, large)


class RelativePositionBias(nn.Module):
  """Shared relative position bias, held once per stack (T5 keeps it in layer 0)."""
  config: T5Config
  bidirectional: bool

  @nn.compact
  def __call__(self, q_len: int, k_len: int) -> Array:
    cfg = self.config
    table = param_with_axes(self, 'rel_embedding', _normal(cfg.d_model ** -0.5),
                            (cfg.relative_attention_num_buckets, cfg.num_heads),
                            ('relpos_buckets', 'heads'))
    rel = np.arange(k_len)[None, :] - np.arange(q_len)[:, None]
    buckets = relative_position_bucket(
        rel, self.bidirectional, cfg.relative_attention_num_buckets,
        cfg.relative_attention_max_distance)
    values = jnp.asarray(table)[buckets]  # [q, k, heads]
    return jnp.transpose(values, (2, 0, 1))[None].astype(jnp.float32)  # [1, H, q, k]


def _lora_delta(x: Array, lora: Adapter) -> Array:
  """(x·A)·B per example, times an optional per-example gate; [B, T, out]."""
  xa = jnp.einsum('BTD,BDR->BTR', x, lora['a'].astype(x.dtype))
  y = jnp.einsum('BTR,BRF->BTF', xa, lora['b'].astype(x.dtype))
  gate = lora.get('gate')
  if gate is not None:
    y = y * gate.astype(x.dtype)[:, None, None]
  return y


class Attention(nn.Module):
  """T5 multi-head attention (no 1/sqrt(d) scaling) with prefix/LoRA slots.

  Attributes:
    config: model hyper-parameters.
    decode: autoregressive single-token mode backed by a `cache` collection.
  """
  config: T5Config
  decode: bool = False

  def _project(self, names: tuple[str, ...], x: Array, stds: tuple[float, ...],
               lora: Adapter) -> list[Array]:
    """x [B, T, D] projected by each named kernel [D, heads * d_kv], LoRA deltas added per
    projection. Returns one [B, T, heads * d_kv] array per name.

    One GEMM per kernel: once `dense` puts the weight gradients on XLA:CPU's
    YNNPACK GEMMs, stacking the kernels at trace time into one [D, n, F] GEMM
    costs more in copies (stack, split and their gradients) than the wider GEMM
    gains (T5 v1.1 small: separate 1.05x stacked; bench/RESULTS.md, session 12).
    """
    cfg = self.config
    out = []
    for name, std in zip(names, stds):
      kernel = param_with_axes(self, name, _normal(std), (x.shape[-1], cfg.inner_dim),
                               ('embed', 'joined_kv'))
      y = dense(x, kernel.astype(cfg.compute_dtype))
      if name in lora:
        y = y + _lora_delta(x, lora[name])
      out.append(y)
    return out

  @nn.compact
  def __call__(self, inputs_q: Array, inputs_kv: Array, mask: Array | None,
               bias: Array | None, adapter: Adapter | None = None,
               deterministic: bool = True) -> Array:
    cfg = self.config
    d = inputs_q.shape[-1]
    split = lambda t: t.reshape(t.shape[:2] + (cfg.num_heads, cfg.d_kv))
    # LoRA deltas apply to query and value only; the key never takes one.
    lora = {n: adapter[n] for n in ('query', 'value')
            if adapter and adapter.get(n) is not None}
    std_q, std_kv = (d * cfg.d_kv) ** -0.5, d ** -0.5
    if inputs_kv is inputs_q:  # self-attention
      q, k, v = self._project(('query', 'key', 'value'), inputs_q,
                              (std_q, std_kv, std_kv), lora)
    else:  # cross-attention: q of the decoder states, k and v of the encoder's
      q, = self._project(('query',), inputs_q, (std_q,), lora)
      k, v = self._project(('key', 'value'), inputs_kv, (std_kv, std_kv), lora)
    q, k, v = split(q), split(k), split(v)

    if self.decode:
      k, v, mask, bias = self._update_cache(k, v, mask, bias)

    fusion = (adapter or {}).get('fusion')
    if fusion is not None:
      # Precomputed cross-attention keys/values of fusion-in-decoder states
      # (`transformer.fusion_kv`); the caller's mask already covers them.
      k = jnp.concatenate([split(fusion['k'].astype(k.dtype)), k], axis=1)
      v = jnp.concatenate([split(fusion['v'].astype(v.dtype)), v], axis=1)

    prefix = (adapter or {}).get('prefix')
    if prefix is not None:
      pk = split(prefix['k'].astype(k.dtype))  # [B, P, heads, kv]
      pv = split(prefix['v'].astype(v.dtype))
      num_prefix = pk.shape[1]
      k = jnp.concatenate([pk, k], axis=1)
      v = jnp.concatenate([pv, v], axis=1)
      if bias is not None:
        bias = jnp.pad(bias, [(0, 0)] * 3 + [(num_prefix, 0)])
      if mask is not None:
        mask = jnp.pad(mask, [(0, 0)] * 3 + [(num_prefix, 0)], constant_values=True)

    logits = jnp.einsum('BQHK,BSHK->BHQS', q, k).astype(jnp.float32)
    if bias is not None:
      logits = logits + bias
    if mask is not None:
      logits = jnp.where(mask, logits, _NEG_INF)
    weights = jax.nn.softmax(logits, axis=-1).astype(cfg.compute_dtype)
    weights = nn.Dropout(cfg.dropout_rate)(weights, deterministic=deterministic)
    out = jnp.einsum('BHQS,BSHK->BQHK', weights, v)
    out = out.reshape(out.shape[:2] + (cfg.inner_dim,))
    out = nn.with_logical_constraint(out, ('act_batch', 'act_len', 'act_heads'))
    wo = param_with_axes(self, 'out', _normal(cfg.inner_dim ** -0.5),
                         (cfg.inner_dim, d), ('joined_kv', 'embed'))
    return dense(out, wo.astype(cfg.compute_dtype))  # [B, T, D]

  def _update_cache(self, k, v, mask, bias):
    """Writes this step's keys/values into the cache; returns all cached ones.

    A step may hold several tokens (HART writes two states per step); they
    attend to each other and to everything cached before them.

    On the first call (cache creation, inputs of full length) it only
    allocates the cache and attends normally.
    """
    initialized = self.has_variable('cache', 'cached_key')
    cached_k = self.variable('cache', 'cached_key', jnp.zeros, k.shape, k.dtype)
    cached_v = self.variable('cache', 'cached_value', jnp.zeros, v.shape, v.dtype)
    index = self.variable('cache', 'cache_index', lambda: jnp.array(0, jnp.int32))
    if not initialized:
      return k, v, mask, bias
    batch, max_len = cached_k.value.shape[:2]
    step = k.shape[1]  # tokens written this step; they see each other (block-causal)
    i = index.value
    cached_k.value = jax.lax.dynamic_update_slice(cached_k.value, k, (0, i, 0, 0))
    cached_v.value = jax.lax.dynamic_update_slice(cached_v.value, v, (0, i, 0, 0))
    index.value = i + step
    mask = (jnp.arange(max_len) < i + step)[None, None, None, :]
    mask = jnp.broadcast_to(mask, (batch, 1, step, max_len))
    if bias is not None:  # full [1, H, max_len, max_len] table: take rows i..i+step
      bias = jax.lax.dynamic_slice_in_dim(bias, i, step, axis=2)
    return cached_k.value, cached_v.value, mask, bias


class MlpBlock(nn.Module):
  """Gated-GELU feed-forward: wo(gelu(x·wi_0) * (x·wi_1))."""
  config: T5Config

  @nn.compact
  def __call__(self, x: Array, deterministic: bool = True) -> Array:
    cfg = self.config
    dt = cfg.compute_dtype
    wi_0 = param_with_axes(self, 'wi_0', _normal(cfg.d_model ** -0.5),
                           (cfg.d_model, cfg.d_ff), ('embed', 'mlp'))
    wi_1 = param_with_axes(self, 'wi_1', _normal(cfg.d_model ** -0.5),
                           (cfg.d_model, cfg.d_ff), ('embed', 'mlp'))
    wo = param_with_axes(self, 'wo', _normal(cfg.d_ff ** -0.5),
                         (cfg.d_ff, cfg.d_model), ('mlp', 'embed'))
    h = jax.nn.gelu(dense(x, wi_0.astype(dt)), approximate=True) * dense(x, wi_1.astype(dt))
    h = nn.with_logical_constraint(h, ('act_batch', 'act_len', 'act_mlp'))
    h = nn.Dropout(cfg.dropout_rate)(h, deterministic=deterministic)
    return dense(h, wo.astype(dt))  # [B, T, D]
