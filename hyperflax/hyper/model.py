"""Building and initialising PEFT generators of every kind."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from hyperflax.hyper.backbone import copy_t5_weights
from hyperflax.hyper.config import HyperConfig
from hyperflax.hyper.hart import HART
from hyperflax.hyper.lora import HyperT5LoRA
from hyperflax.hyper.prefix import HyperT5Prefix, HyperT5PrefixMLP
from hyperflax.hyper.shared import SharedLoRA, SharedPrefix
from hyperflax.model.config import T5Config

Array = jax.Array

_MODULES = {
    'prefix': HyperT5Prefix,
    'prefix_mlp': HyperT5PrefixMLP,
    'lora': HyperT5LoRA,
    'hart': HART,
    'shared_prefix': SharedPrefix,
    'shared_lora': SharedLoRA,
}

# Learned decoder inputs start as rows of the pretrained vocabulary, drawn
# from its most frequent pieces (Lester et al. 2021 initialise prompts so).
_VOCAB_INIT_ROWS = 5000


def build_hypermodel(hyper: HyperConfig, t5: T5Config) -> nn.Module:
  """The generator module for `hyper.kind`, writing slots of a T5 shaped `t5`.

  `module.apply({'params': p}, hyper_input_tokens [B, T] int32,
  deterministic=True, rngs=None) -> (peft, aux)`.
  """
  return _MODULES[hyper.kind](hyper, t5)


def _dummy_tokens(batch: int, length: int) -> Array:
  return jnp.ones((batch, length), jnp.int32)


def abstract_params(hyper: HyperConfig, t5: T5Config, input_len: int = 8):
  """Parameter shapes with logical axes (boxed), by `jax.eval_shape`: free."""
  model = build_hypermodel(hyper, t5)
  return jax.eval_shape(
      lambda rng: model.init(rng, _dummy_tokens(1, input_len)), jax.random.key(0))['params']


def param_axes(hyper: HyperConfig, t5: T5Config):
  """Tree of `PartitionSpec`s of logical axis names, one per parameter."""
  return nn.get_partition_spec(abstract_params(hyper, t5))


def param_count(tree) -> int:
  return sum(int(x.size) for x in jax.tree.leaves(nn.unbox(tree)))


def init_hypermodel(hyper: HyperConfig, t5: T5Config, rng: Array, t5_params=None,
                    input_len: int = 8) -> dict:
  """Initialises a generator; with `t5_params`, its backbone starts from T5.

  Args:
    hyper: generator config.
    t5: config of the downstream T5 (and of `t5_params`).
    rng: PRNG key.
    t5_params: optional T5 parameters (e.g. `load_pretrained(path)[1]`): their
      embedding, encoder and first `decoder_layers` decoder layers become the
      backbone, and the learned decoder inputs are set to vocabulary rows.
      Ignored by the shared kinds, which have no backbone.
    input_len: length of the dummy input used to trace `init`.

  Returns:
    Unboxed float32 parameters (use `param_axes` for their logical axes).
  """
  model = build_hypermodel(hyper, t5)
  tokens = _dummy_tokens(1, input_len)
  if t5_params is None or not hyper.uses_backbone:
    params = jax.jit(lambda r: model.init(r, tokens))(rng)['params']
    return dict(nn.unbox(params))
  shapes = nn.unbox(abstract_params(hyper, t5, input_len))
  backbone = copy_t5_weights(shapes['backbone'], t5_params, hyper.backbone_config(t5), t5)
  num_inputs = shapes['backbone']['decoder_inputs'].shape[0]

  @jax.jit
  def init(rng, backbone):
    init_rng, vocab_rng = jax.random.split(rng)
    embedding = backbone['token_embedder']['embedding']
    rows = jax.random.randint(vocab_rng, (num_inputs,), 2,
                              max(3, min(_VOCAB_INIT_ROWS, embedding.shape[0])))
    backbone = dict(backbone, decoder_inputs=jnp.asarray(embedding)[rows])
    # Only the missing parameters (heads, gates) are drawn: applying with a
    # mutable 'params' collection initialises exactly those, so no random
    # backbone is generated just to be overwritten.
    _, variables = model.apply({'params': {'backbone': backbone}}, tokens,
                               rngs={'params': init_rng}, mutable=['params'])
    return nn.unbox(variables['params'])

  params = dict(init(rng, backbone))
  got = jax.tree.map(lambda x: (x.shape, x.dtype), params)
  want = jax.tree.map(lambda x: (x.shape, x.dtype), shapes)
  if got != want:  # never expected: the two initialisation paths must agree
    raise AssertionError('init_hypermodel: parameter tree differs from model.init')
  return params
