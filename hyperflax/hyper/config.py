"""`HyperConfig`: which PEFT generator to build, and how."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from hyperflax.model.config import T5Config

# Generators that read the few-shot input with a T5 encoder-decoder backbone.
HYPER_KINDS = ('prefix', 'prefix_mlp', 'lora', 'hart')
# Baselines behind the same interface: one learned PEFT for every task.
SHARED_KINDS = ('shared_prefix', 'shared_lora')
KINDS = HYPER_KINDS + SHARED_KINDS
ORDERS = ('bottom_up', 'top_down', 'random')


@dataclasses.dataclass(frozen=True)
class HyperConfig:
  """Hyper-parameters of a PEFT generator (hypermodel or shared baseline).

  Attributes:
    kind: 'prefix' (HyperT5-Prefix, Fig. 7), 'prefix_mlp' (HyperT5-Prefix-MLP,
      App. D), 'lora' (HyperT5-LoRA, Fig. 8), 'hart' (autoregressive prefixes),
      'shared_prefix' (T5-MTF prefix with Prefix-MLP reparameterisation) or
      'shared_lora' (one LoRA for all tasks).
    prefix_len: prefix tokens P per attention layer (prefix kinds).
    lora_rank: LoRA rank R (LoRA kinds).
    decoder_layers: keep the first N layers of the T5 decoder in the
      hypermodel (HART keeps 8 of 24); None keeps all of them.
    head_hidden: width of the heads' hidden layer; None means d_model (the
      paper's `Linear(H)`).
    generation_order: HART only; which downstream layer each autoregressive
      step writes: 'bottom_up' (the paper's HART), 'top_down', or 'random'
      (a fixed permutation drawn from `order_seed`), for HART's Table 7.
    order_seed: seed of the 'random' generation order.
    consistency_alpha: weight of HART's local consistency loss (0 disables).
    fusion_in_decoder: return the hypermodel's encoder output so the
      downstream decoder cross-attends to [hyper encoder; downstream encoder].
    dtype: compute dtype of the generator; parameters stay float32.
    dropout_rate: dropout inside the backbone; None keeps the T5 config's.
  """
  kind: str = 'prefix'
  prefix_len: int = 32
  lora_rank: int = 8
  decoder_layers: int | None = None
  head_hidden: int | None = None
  generation_order: str = 'bottom_up'
  order_seed: int = 0
  consistency_alpha: float = 0.0
  fusion_in_decoder: bool = False
  dtype: str = 'float32'
  dropout_rate: float | None = None

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f'HyperConfig.kind={self.kind!r}; known: {KINDS}')
    if self.generation_order not in ORDERS:
      raise ValueError(f'HyperConfig.generation_order={self.generation_order!r}; '
                       f'known: {ORDERS}')
    if self.uses_prefix and self.prefix_len < 1:
      raise ValueError(f'HyperConfig.prefix_len must be >= 1 for {self.kind!r}')
    if self.uses_lora and self.lora_rank < 1:
      raise ValueError(f'HyperConfig.lora_rank must be >= 1 for {self.kind!r}')
    if self.decoder_layers is not None and self.decoder_layers < 1:
      raise ValueError('HyperConfig.decoder_layers must be >= 1 (or None for all)')
    if self.fusion_in_decoder and not self.uses_backbone:
      raise ValueError(f'fusion_in_decoder needs a hypermodel encoder; {self.kind!r} '
                       'ignores the few-shot input')
    if self.consistency_alpha < 0:
      raise ValueError('HyperConfig.consistency_alpha must be >= 0')

  @property
  def uses_backbone(self) -> bool:
    return self.kind in HYPER_KINDS

  @property
  def uses_prefix(self) -> bool:
    return self.kind in ('prefix', 'prefix_mlp', 'hart', 'shared_prefix')

  @property
  def uses_lora(self) -> bool:
    return self.kind in ('lora', 'shared_lora')

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)

  def replace(self, **kwargs) -> 'HyperConfig':
    return dataclasses.replace(self, **kwargs)

  def hidden(self, t5: T5Config) -> int:
    return self.head_hidden or t5.d_model

  def backbone_config(self, t5: T5Config) -> T5Config:
    """The hypermodel's own T5: truncated decoder, generator dtype."""
    overrides = dict(num_decoder_layers=self.decoder_layers or t5.num_decoder_layers,
                     dtype=self.dtype)
    if self.dropout_rate is not None:
      overrides['dropout_rate'] = self.dropout_rate
    return t5.replace(**overrides)

  def num_steps(self, t5: T5Config) -> int:
    """HART decoding steps: one per downstream layer (encoder and decoder
    layer l share step l; uneven stacks take the longer one)."""
    return max(t5.num_layers, t5.num_decoder_layers)

  def step_to_layer(self, num_steps: int) -> np.ndarray:
    """[num_steps] int: the downstream layer written at each HART step.

    Computed at trace time from the config, so `apply` stays free of
    Python-side randomness and the 'random' order is the same on every call.
    """
    if self.generation_order == 'bottom_up':
      return np.arange(num_steps)
    if self.generation_order == 'top_down':
      return np.arange(num_steps)[::-1].copy()
    if num_steps <= 2:
      raise ValueError(f"HyperConfig.generation_order='random' needs at least 3 HART steps "
                       f'(downstream layers); with {num_steps} every order is bottom_up or '
                       'top_down')
    return np.random.default_rng(self.order_seed).permutation(num_steps)

  def layer_to_step(self, num_steps: int) -> np.ndarray:
    """[num_steps] int: inverse of `step_to_layer`."""
    return np.argsort(self.step_to_layer(num_steps))
