"""T5 v1.1 encoder-decoder in Flax linen, with per-example PEFT slots.

`T5.apply({'params': p}, encoder_input_tokens, decoder_input_tokens, peft=...)`
returns logits [batch, length, vocab]. `peft` is the per-example structure
documented in `hyperflax.model.peft`; `fusion_states` lets the decoder
cross-attend to extra encoder states (fusion-in-decoder, used by HART).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from hyperflax.model import peft as peft_lib
from hyperflax.model.config import T5Config
from hyperflax.model.layers import (Attention, MlpBlock, RMSNorm, RelativePositionBias,
                                    _normal, param_with_axes)

Array = jax.Array


class EncoderLayer(nn.Module):
  config: T5Config
  deterministic: bool = True

  @nn.compact
  def __call__(self, x, adapter, mask, bias):
    cfg, det = self.config, self.deterministic
    adapter = adapter or {}
    h = RMSNorm(cfg, name='pre_attention_layer_norm')(x)
    h = Attention(cfg, name='attention')(h, h, mask, bias, adapter.get('self'), det)
    x = x + nn.Dropout(cfg.dropout_rate)(h, deterministic=det)
    h = RMSNorm(cfg, name='pre_mlp_layer_norm')(x)
    h = MlpBlock(cfg, name='mlp')(h, det)
    x = x + nn.Dropout(cfg.dropout_rate)(h, deterministic=det)
    return nn.with_logical_constraint(x, ('act_batch', 'act_len', 'act_embed'))


class DecoderLayer(nn.Module):
  config: T5Config
  deterministic: bool = True
  decode: bool = False

  @nn.compact
  def __call__(self, x, adapter, mask, bias, encoded, encoder_mask):
    cfg, det = self.config, self.deterministic
    adapter = adapter or {}
    h = RMSNorm(cfg, name='pre_self_attention_layer_norm')(x)
    h = Attention(cfg, decode=self.decode, name='self_attention')(
        h, h, mask, bias, adapter.get('self'), det)
    x = x + nn.Dropout(cfg.dropout_rate)(h, deterministic=det)
    if encoded is not None:
      h = RMSNorm(cfg, name='pre_cross_attention_layer_norm')(x)
      h = Attention(cfg, name='encoder_decoder_attention')(
          h, encoded, encoder_mask, None, adapter.get('cross'), det)
      x = x + nn.Dropout(cfg.dropout_rate)(h, deterministic=det)
    h = RMSNorm(cfg, name='pre_mlp_layer_norm')(x)
    h = MlpBlock(cfg, name='mlp')(h, det)
    x = x + nn.Dropout(cfg.dropout_rate)(h, deterministic=det)
    return nn.with_logical_constraint(x, ('act_batch', 'act_len', 'act_embed'))


class _Scanned(nn.Module):
  """Adapts a layer to `nn.scan`'s (carry, xs) -> (carry, ys) signature."""
  layer_cls: Any
  layer_kwargs: dict

  @nn.compact
  def __call__(self, x, adapter, *broadcast):
    return self.layer_cls(**self.layer_kwargs, name='layer')(x, adapter, *broadcast), None


def run_stack(parent: nn.Module, layer_cls, layer_kwargs: dict, num_layers: int,
              x: Array, adapters: dict | None, *broadcast) -> Array:
  """Applies `num_layers` layers as a Python loop or as one `nn.scan`.

  `adapters` holds per-example, per-layer leaves shaped [batch, layers, ...].
  """
  cfg: T5Config = layer_kwargs['config']
  adapters = adapters or None
  if cfg.scan_layers:
    cls = _Scanned
    if cfg.remat:
      cls = nn.remat(cls, prevent_cse=False)
    layer_adapters = None if adapters is None else jax.tree.map(
        lambda a: jnp.moveaxis(a, 1, 0), adapters)
    scan = nn.scan(
        cls, variable_axes={'params': 0, 'cache': 0},
        split_rngs={'params': True, 'dropout': True},
        in_axes=(0,) + (nn.broadcast,) * len(broadcast), length=num_layers,
        metadata_params={nn.PARTITION_NAME: 'layers'})
    x, _ = scan(layer_cls, layer_kwargs, name='layers')(x, layer_adapters, *broadcast)
    return x
  cls = nn.remat(layer_cls) if cfg.remat else layer_cls
  for i in range(num_layers):
    layer_adapter = None if adapters is None else jax.tree.map(
        lambda a, i=i: a[:, i], adapters)
    x = cls(**layer_kwargs, name=f'layers_{i}')(x, layer_adapter, *broadcast)
  return x


class Encoder(nn.Module):
  config: T5Config
  embedder: nn.Module

  @nn.compact
  def __call__(self, tokens: Array, peft: dict | None = None,
               deterministic: bool = True, inputs_embeds: Array | None = None) -> Array:
    cfg = self.config
    x = self.embedder(tokens).astype(cfg.compute_dtype) if inputs_embeds is None \
        else inputs_embeds.astype(cfg.compute_dtype)
    x = nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
    mask = (tokens > 0)[:, None, None, :]  # [B, 1, 1, S]
    length = x.shape[1]
    bias = RelativePositionBias(cfg, bidirectional=True, name='relpos_bias')(length, length)
    x = run_stack(self, EncoderLayer, dict(config=cfg, deterministic=deterministic),
                  cfg.num_layers, x, peft_lib.layer_adapters(peft, 'encoder'), mask, bias)
    x = RMSNorm(cfg, name='encoder_norm')(x)
    return nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)  # [B, S, D]


class Decoder(nn.Module):
  """T5 decoder stack (without lm_head).

  Attributes:
    config: hyper-parameters; `num_decoder_layers` layers are built.
    embedder: the shared token embedding (None when fed `inputs_embeds`).
    causal: causal self-attention (False for a hypermodel's parallel decoder).
    decode: single-step mode with a key/value cache.
  """
  config: T5Config
  embedder: nn.Module | None = None
  causal: bool = True
  decode: bool = False

  @nn.compact
  def __call__(self, tokens: Array | None, encoded: Array | None, encoder_mask: Array | None,
               peft: dict | None = None, deterministic: bool = True,
               inputs_embeds: Array | None = None, max_decode_length: int | None = None):
    cfg = self.config
    x = self.embedder(tokens) if inputs_embeds is None else inputs_embeds
    x = nn.Dropout(cfg.dropout_rate)(x.astype(cfg.compute_dtype), deterministic=deterministic)
    length = x.shape[1]
    relpos = RelativePositionBias(cfg, bidirectional=False, name='relpos_bias')
    if self.decode:
      # The cache-creating call passes the full length; single steps slice
      # row `cache_index` of this table inside the attention.
      length = max_decode_length or length
    bias = relpos(length, length)
    mask = (jnp.tril(jnp.ones((length, length), bool)) if self.causal
            else jnp.ones((length, length), bool))[None, None]
    x = run_stack(self, DecoderLayer,
                  dict(config=cfg, deterministic=deterministic, decode=self.decode),
                  cfg.num_decoder_layers, x, peft_lib.layer_adapters(peft, 'decoder'),
                  mask, bias, encoded, encoder_mask)
    x = RMSNorm(cfg, name='decoder_norm')(x)
    return nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)  # [B, T, D]


class T5(nn.Module):
  """T5 v1.1 encoder-decoder with an untied lm_head.

  Attributes:
    config: hyper-parameters (see `T5Config`).
    decode: build the decoder in single-step cached mode (see `decoding.py`).
  """
  config: T5Config
  decode: bool = False

  def setup(self):
    cfg = self.config
    self.token_embedder = nn.Embed(
        cfg.vocab_size, cfg.d_model,
        embedding_init=nn.with_logical_partitioning(_normal(1.0), ('vocab', 'embed')),
        param_dtype=jnp.float32, dtype=cfg.compute_dtype)
    self.encoder = Encoder(cfg, self.token_embedder)
    self.decoder = Decoder(cfg, self.token_embedder, decode=self.decode)
    self.lm_head = nn.Dense(
        cfg.vocab_size, use_bias=False, dtype=cfg.compute_dtype, param_dtype=jnp.float32,
        kernel_init=nn.with_logical_partitioning(_normal(cfg.d_model ** -0.5),
                                                 ('embed', 'vocab')))

  def encode(self, encoder_input_tokens: Array, peft: dict | None = None,
             deterministic: bool = True) -> Array:
    return self.encoder(encoder_input_tokens, peft, deterministic)  # [B, S, D]

  def decode_logits(self, encoded: Array, encoder_mask: Array, decoder_input_tokens: Array,
                    peft: dict | None = None, deterministic: bool = True,
                    max_decode_length: int | None = None) -> Array:
    """Decoder + lm_head; `encoder_mask` is [B, S] (True where attendable)."""
    h = self.decode_hidden(encoded, encoder_mask, decoder_input_tokens, peft, deterministic,
                           max_decode_length)
    logits = self.lm_head(h)
    return nn.with_logical_constraint(logits, ('act_batch', 'act_len', 'act_vocab'))

  def decode_hidden(self, encoded: Array, encoder_mask: Array, decoder_input_tokens: Array,
                    peft: dict | None = None, deterministic: bool = True,
                    max_decode_length: int | None = None) -> Array:
    """The decoder's final states [B, T, D] (what `lm_head` reads)."""
    return self.decoder(decoder_input_tokens, encoded, encoder_mask[:, None, None, :], peft,
                        deterministic, max_decode_length=max_decode_length)

  def __call__(self, encoder_input_tokens: Array, decoder_input_tokens: Array,
               peft: dict | None = None, fusion_states: Array | None = None,
               fusion_mask: Array | None = None, deterministic: bool = True,
               return_hidden: bool = False) -> Array:
    """Returns logits [batch, target_length, vocab] in the compute dtype.

    With `return_hidden` it stops before `lm_head` and returns the decoder's
    final states [batch, target_length, d_model]: losses then fuse the output
    layer into a chunked cross-entropy (`hyperflax.model.xent`).
    """
    encoded = self.encode(encoder_input_tokens, peft, deterministic)
    encoded, mask = fuse(encoded, encoder_input_tokens > 0, fusion_states, fusion_mask, peft)
    if return_hidden:
      return self.decode_hidden(encoded, mask, decoder_input_tokens, peft, deterministic)
    return self.decode_logits(encoded, mask, decoder_input_tokens, peft, deterministic)


def fuse(encoded: Array, encoder_mask: Array, fusion_states: Array | None,
         fusion_mask: Array | None, peft: dict | None = None) -> tuple[Array, Array]:
  """Fusion-in-decoder: prepends extra states ([hyper_enc; downstream_enc]).

  With precomputed fusion keys/values in `peft` (decoder/cross/fusion, see
  `fusion_kv`) only the mask is extended: the cross-attention prepends the
  stored keys/values instead of projecting the states again.
  """
  if fusion_states is None:
    kv = ((peft or {}).get('decoder') or {}).get('cross', {}).get('fusion')
    if kv is None:
      return encoded, encoder_mask
    if fusion_mask is None:
      fusion_mask = jnp.ones(kv['k'].shape[:1] + kv['k'].shape[2:3], bool)
    return encoded, jnp.concatenate([fusion_mask.astype(bool), encoder_mask], axis=1)
  if fusion_mask is None:
    fusion_mask = jnp.ones(fusion_states.shape[:2], bool)
  return (jnp.concatenate([fusion_states.astype(encoded.dtype), encoded], axis=1),
          jnp.concatenate([fusion_mask.astype(bool), encoder_mask], axis=1))


def fusion_kv(config: T5Config, params: dict, fusion_states: Array,
              peft: dict | None = None) -> dict[str, Array]:
  """Every decoder layer's cross-attention keys/values of the fusion states.

  What `Attention` computes for the fusion positions on each query, done once
  (per task, at hypertune time): with them in `peft['decoder']['cross']['fusion']`
  a fusion-in-decoder query costs what a prefix query costs. A value LoRA on
  the cross site is included, as it applies to those positions too.

  Args:
    config: the downstream config (compute dtype).
    params: downstream parameters, unscanned or scanned.
    fusion_states: [B, T, D] (the generator's `aux['fusion_states']`).
    peft: the generated PEFT of the same rows (for a cross-site value LoRA).

  Returns:
    {'k': [B, L, T, heads*d_kv], 'v': ...} in the compute dtype.
  """
  from hyperflax.model.layers import _lora_delta
  dec = params['decoder']
  if 'layers' in dec:  # scan_layers: [L, ...] stacked kernels
    attn = dec['layers']['layer']['encoder_decoder_attention']
    kernels = {n: [attn[n][i] for i in range(config.num_decoder_layers)] for n in ('key', 'value')}
  else:
    kernels = {n: [dec[f'layers_{i}']['encoder_decoder_attention'][n]
                   for i in range(config.num_decoder_layers)] for n in ('key', 'value')}
  dt = config.compute_dtype
  x = fusion_states.astype(dt)
  cross = ((peft or {}).get('decoder') or {}).get('cross') or {}
  out = {}
  for kv, name in (('k', 'key'), ('v', 'value')):
    per_layer = []
    for i, kernel in enumerate(kernels[name]):
      y = jnp.einsum('BTD,DF->BTF', x, jnp.asarray(kernel).astype(dt))
      lora = cross.get(name) if name == 'value' else None
      if lora is not None:
        y = y + _lora_delta(x, jax.tree.map(lambda a, i=i: a[:, i], lora))
      per_layer.append(y)
    out[kv] = jnp.stack(per_layer, axis=1)
  return out


def init_params(config: T5Config, rng: Array) -> dict:
  """Random parameters (unboxed), initialised under `jit` (eager init is slow)."""
  return nn.meta.unbox(jax.jit(_init_fn(config))(rng)['params'])


def abstract_params(config: T5Config) -> dict:
  """Parameter shapes and logical axes without allocating (`jax.eval_shape`)."""
  return jax.eval_shape(_init_fn(config), jax.random.PRNGKey(0))['params']


def _init_fn(config: T5Config):
  tokens = jnp.ones((1, 4), jnp.int32)
  return lambda rng: T5(config).init(rng, tokens, tokens)
