"""Tiny random transformers T5 v1.1 models, built locally (no downloads)."""

from __future__ import annotations

import os

import numpy as np

TINY = dict(vocab_size=320, d_model=32, d_kv=8, d_ff=64, num_heads=4, num_layers=2,
            num_decoder_layers=2)
# Uneven stacks and non-default buckets: exercises every branch of the bucket code.
UNEVEN = dict(vocab_size=300, d_model=32, d_kv=8, d_ff=48, num_heads=4, num_layers=3,
              num_decoder_layers=2, relative_attention_num_buckets=10,
              relative_attention_max_distance=24)


def build_torch_t5(seed: int = 0, **overrides):
  """A random untied T5 v1.1 (`T5ForConditionalGeneration`) in eval mode."""
  import torch
  from transformers import T5Config, T5ForConditionalGeneration
  torch.manual_seed(seed)
  kwargs = dict(TINY, feed_forward_proj='gated-gelu', tie_word_embeddings=False,
                dropout_rate=0.0, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
  kwargs.update(overrides)
  model = T5ForConditionalGeneration(T5Config(**kwargs)).eval()
  # transformers 5 ties lm_head to the embedding at build time: give it its own.
  with torch.no_grad():
    model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.lm_head.weight) * 0.2)
    for p in model.parameters():  # larger weights make mismatches visible
      if p.ndim == 1:
        p.add_(torch.randn_like(p) * 0.1)
  model.config.tie_word_embeddings = False
  return model


def save_torch_t5(model, directory: str) -> str:
  os.makedirs(directory, exist_ok=True)
  model.save_pretrained(directory)
  return directory


def random_tokens(rng: np.random.Generator, batch: int, length: int, vocab: int,
                  pad_from: list[int] | None = None, start_with_pad: bool = False):
  tokens = rng.integers(2, vocab, (batch, length)).astype(np.int32)
  for row, start in enumerate(pad_from or []):
    tokens[row, start:] = 0
  if start_with_pad:
    tokens[:, 0] = 0
  return tokens
