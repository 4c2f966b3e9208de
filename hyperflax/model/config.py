"""T5 v1.1 configuration and size presets."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class T5Config:
  """Hyper-parameters of a T5 v1.1 (or LM-adapted) encoder-decoder.

  Attributes:
    vocab_size: rows of the token embedding and columns of `lm_head`.
    d_model: width of the residual stream.
    d_kv: width of one attention head.
    d_ff: width of the gated-GELU feed-forward block.
    num_heads: attention heads per layer.
    num_layers: encoder layers.
    num_decoder_layers: decoder layers (T5 allows a different count).
    relative_attention_num_buckets: relative position buckets.
    relative_attention_max_distance: distance beyond which buckets saturate.
    layer_norm_epsilon: epsilon of the RMS layer norm.
    dropout_rate: dropout after attention, feed-forward and embeddings.
    dtype: compute dtype ('float32' or 'bfloat16'); parameters stay float32.
    scan_layers: run the layer stack with `nn.scan` (stacked parameters).
    remat: rematerialise each layer in the backward pass.
    pad_token_id: id of `<pad>`; also the decoder start token.
    eos_token_id: id of `</s>`.
  """
  vocab_size: int = 32128
  d_model: int = 512
  d_kv: int = 64
  d_ff: int = 1024
  num_heads: int = 6
  num_layers: int = 8
  num_decoder_layers: int = 8
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  layer_norm_epsilon: float = 1e-6
  dropout_rate: float = 0.1
  dtype: str = 'float32'
  scan_layers: bool = False
  remat: bool = False
  pad_token_id: int = 0
  eos_token_id: int = 1

  @property
  def inner_dim(self) -> int:
    return self.num_heads * self.d_kv

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)

  def replace(self, **kwargs) -> 'T5Config':
    return dataclasses.replace(self, **kwargs)

  # ---- transformers' config.json, both ways -------------------------------

  def to_hf_dict(self) -> dict[str, Any]:
    return {
        'architectures': ['T5ForConditionalGeneration'],
        'model_type': 't5',
        'vocab_size': self.vocab_size,
        'd_model': self.d_model,
        'd_kv': self.d_kv,
        'd_ff': self.d_ff,
        'num_heads': self.num_heads,
        'num_layers': self.num_layers,
        'num_decoder_layers': self.num_decoder_layers,
        'relative_attention_num_buckets': self.relative_attention_num_buckets,
        'relative_attention_max_distance': self.relative_attention_max_distance,
        'layer_norm_epsilon': self.layer_norm_epsilon,
        'dropout_rate': self.dropout_rate,
        'feed_forward_proj': 'gated-gelu',
        'is_gated_act': True,
        'dense_act_fn': 'gelu_new',
        'tie_word_embeddings': False,
        'scale_decoder_outputs': False,
        'is_encoder_decoder': True,
        'pad_token_id': self.pad_token_id,
        'eos_token_id': self.eos_token_id,
        'decoder_start_token_id': self.pad_token_id,
        'torch_dtype': 'float32',
    }

  @classmethod
  def from_hf_dict(cls, d: dict[str, Any], source: str = 'config.json',
                   **overrides) -> 'T5Config':
    model_type = d.get('model_type', 't5')
    if model_type not in ('t5', 'mt5', 'umt5'):
      raise ValueError(f'{source}: model_type={model_type!r}; hyperflax reads T5 v1.1 '
                       "checkpoints (model_type 't5')")
    proj = d.get('feed_forward_proj', 'relu')
    if proj != 'gated-gelu':
      raise ValueError(
          f'{source}: feed_forward_proj={proj!r}; hyperflax implements T5 v1.1 '
          "(feed_forward_proj='gated-gelu'), not the original T5.")
    # transformers 5 writes tie_word_embeddings=True for every T5 and records the
    # real behaviour in scale_decoder_outputs; v4 files only have the former.
    scaled = d.get('scale_decoder_outputs', d.get('tie_word_embeddings', True))
    if scaled:
      raise ValueError(
          f'{source}: a tied T5 (logits scaled by d_model**-0.5, shared lm_head) is the '
          'original T5, not v1.1; expected tie_word_embeddings=false or '
          'scale_decoder_outputs=false.')
    missing = [k for k in ('vocab_size', 'd_model', 'd_kv', 'd_ff', 'num_heads',
                           'num_layers') if k not in d]
    if missing:
      raise ValueError(f'{source}: missing fields {missing}')
    kwargs = dict(
        vocab_size=d['vocab_size'], d_model=d['d_model'], d_kv=d['d_kv'],
        d_ff=d['d_ff'], num_heads=d['num_heads'], num_layers=d['num_layers'],
        num_decoder_layers=d.get('num_decoder_layers') or d['num_layers'],
        relative_attention_num_buckets=d.get('relative_attention_num_buckets', 32),
        relative_attention_max_distance=d.get('relative_attention_max_distance', 128),
        layer_norm_epsilon=d.get('layer_norm_epsilon', 1e-6),
        dropout_rate=d.get('dropout_rate', 0.1),
        pad_token_id=d.get('pad_token_id', 0),
        eos_token_id=d.get('eos_token_id', 1),
    )
    kwargs.update(overrides)
    return cls(**kwargs)

  @classmethod
  def from_json_file(cls, path: str, **overrides) -> 'T5Config':
    with open(path, encoding='utf-8') as f:
      try:
        d = json.load(f)
      except ValueError as e:  # JSON or UTF-8: name the file
        raise ValueError(f'{path}: not a readable JSON config ({e})') from None
    return cls.from_hf_dict(d, source=path, **overrides)


# Published T5 v1.1 / LM-adapted sizes (google/t5-v1_1-* config.json files).
PRESETS: dict[str, T5Config] = {
    'tiny': T5Config(vocab_size=32128, d_model=64, d_kv=16, d_ff=128,
                     num_heads=4, num_layers=2, num_decoder_layers=2,
                     relative_attention_num_buckets=32,
                     relative_attention_max_distance=128),
    'small': T5Config(d_model=512, d_kv=64, d_ff=1024, num_heads=6,
                      num_layers=8, num_decoder_layers=8),
    'base': T5Config(d_model=768, d_kv=64, d_ff=2048, num_heads=12,
                     num_layers=12, num_decoder_layers=12),
    'large': T5Config(d_model=1024, d_kv=64, d_ff=2816, num_heads=16,
                      num_layers=24, num_decoder_layers=24),
    'xl': T5Config(d_model=2048, d_kv=64, d_ff=5120, num_heads=32,
                   num_layers=24, num_decoder_layers=24),
    'xxl': T5Config(d_model=4096, d_kv=64, d_ff=10240, num_heads=64,
                    num_layers=24, num_decoder_layers=24),
}


def preset(name: str, **overrides) -> T5Config:
  """Returns a preset by name ('t5_v1_1_xl' and 'xl' both work)."""
  key = name.removeprefix('t5_v1_1_').removeprefix('t5-v1_1-')
  if key not in PRESETS:
    raise ValueError(f'unknown T5 preset {name!r}; known: {sorted(PRESETS)}')
  return PRESETS[key].replace(**overrides)
