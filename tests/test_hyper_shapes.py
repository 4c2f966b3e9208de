"""Generated PEFT shapes, parameter counts and logical axes, by `jax.eval_shape` (free)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from hyperflax.hyper import (HYPER_KINDS, KINDS, HyperConfig, abstract_params,
                             build_hypermodel, param_axes, param_count)
from hyperflax.model import peft as peft_lib
from hyperflax.model import preset

# d_kv=8 makes inner_dim (32) differ from d_model (64): catches D/F mix-ups.
TINY = preset('tiny', vocab_size=512, d_kv=8)
UNEVEN = TINY.replace(num_layers=3, num_decoder_layers=2)
SCANNED = TINY.replace(scan_layers=True, remat=True)
XL = preset('xl')

# Hypermodel parameter counts for T5 v1.1 XL, P=32, R=8, 8 hypermodel decoder
# layers (backbone 1.74B); a change here means a changed architecture.
XL_COUNTS = {
    'prefix': 2_163_456_000,
    'prefix_mlp': 2_155_046_912,
    'lora': 2_171_873_424,
    'hart': 2_683_676_672,
    'shared_prefix': 411_373_568,
    'shared_lora': 4_718_592,
}

# Logical axis names: T5's plus the three the generators add.
ALLOWED_AXES = {'embed', 'mlp', 'heads', 'kv', 'joined_kv', 'vocab', 'relpos_buckets',
                'layers', 'hyper_tokens', 'prefix_len', 'lora_rank'}


def _config(kind, **kw):
  kw = dict(dict(prefix_len=3, lora_rank=2, decoder_layers=1,
                 fusion_in_decoder=kind in HYPER_KINDS), **kw)
  return HyperConfig(kind=kind, **kw)


def _abstract_apply(hyper, t5, batch, length):
  model = build_hypermodel(hyper, t5)
  params = nn.unbox(abstract_params(hyper, t5))
  tokens = jax.ShapeDtypeStruct((batch, length), jnp.int32)
  return jax.eval_shape(lambda p, x: model.apply({'params': p}, x), params, tokens)


def _check(hyper, t5, batch, length):
  peft, aux = _abstract_apply(hyper, t5, batch, length)
  got = {k: tuple(v.shape) for k, v in peft_lib.flatten(peft).items()}
  want = peft_lib.expected_shapes(t5, batch, hyper.prefix_len if hyper.uses_prefix else None,
                                  hyper.lora_rank if hyper.uses_lora else None)
  if hyper.kind == 'shared_lora':  # plain LoRA: no gate leaf (b starts at zero)
    want = {k: v for k, v in want.items() if not k.endswith('/gate')}
  assert got == want
  peft_lib.validate(peft, t5, batch)
  for leaf in peft_lib.flatten(peft).values():
    assert leaf.dtype == hyper.compute_dtype
  if hyper.fusion_in_decoder:
    assert aux['fusion_states'].shape == (batch, length, t5.d_model)
    assert aux['fusion_mask'].shape == (batch, length) and aux['fusion_mask'].dtype == bool
  if hyper.kind == 'hart':
    steps = max(t5.num_layers, t5.num_decoder_layers)
    assert aux['states'].shape == (batch, steps, 2, t5.d_model)
  if hyper.kind in ('prefix_mlp', 'shared_prefix'):
    assert aux['embeddings'].shape == (batch, 2 * hyper.prefix_len, t5.d_model)


@pytest.mark.parametrize('kind', KINDS)
@pytest.mark.parametrize('t5', [TINY, UNEVEN, SCANNED], ids=['tiny', 'uneven', 'scanned'])
def test_shapes_tiny(kind, t5):
  _check(_config(kind), t5, batch=3, length=7)


@pytest.mark.parametrize('kind', KINDS)
def test_shapes_and_param_count_xl(kind):
  hyper = HyperConfig(kind=kind, prefix_len=32, lora_rank=8, decoder_layers=8,
                      fusion_in_decoder=kind in HYPER_KINDS, dtype='bfloat16')
  _check(hyper, XL, batch=2, length=1024)
  params = abstract_params(hyper, XL)
  assert param_count(params) == XL_COUNTS[kind]
  for leaf in jax.tree.leaves(nn.unbox(params)):
    assert leaf.dtype == jnp.float32  # bfloat16 compute, float32 parameters


def test_truncation_keeps_first_layers_only():
  params = nn.unbox(abstract_params(_config('prefix', decoder_layers=1), TINY))
  dec = params['backbone']['decoder']
  assert {k for k in dec if k.startswith('layers_')} == {'layers_0'}
  enc = params['backbone']['encoder']
  assert {k for k in enc if k.startswith('layers_')} == {'layers_0', 'layers_1'}
  scanned = TINY.replace(scan_layers=True)
  params = nn.unbox(abstract_params(_config('hart', decoder_layers=1), scanned))
  layer = params['backbone']['decoder']['layers']['layer']
  assert layer['mlp']['wo'].shape[0] == 1


@pytest.mark.parametrize('kind', KINDS)
def test_every_parameter_has_known_logical_axes(kind):
  hyper = _config(kind)
  specs = param_axes(hyper, TINY)
  shapes = nn.unbox(abstract_params(hyper, TINY))
  flat_specs = jax.tree_util.tree_leaves_with_path(
      specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
  flat_shapes = dict(jax.tree_util.tree_leaves_with_path(shapes))
  assert len(flat_specs) == len(flat_shapes)
  for path, spec in flat_specs:
    shape = flat_shapes[path].shape
    assert len(spec) == len(shape), (jax.tree_util.keystr(path), spec, shape)
    assert set(spec) <= ALLOWED_AXES, (jax.tree_util.keystr(path), spec)


def test_config_validation():
  with pytest.raises(ValueError, match='kind'):
    HyperConfig(kind='adapter')
  with pytest.raises(ValueError, match='fusion_in_decoder'):
    HyperConfig(kind='shared_prefix', fusion_in_decoder=True)
  with pytest.raises(ValueError, match='generation_order'):
    HyperConfig(kind='hart', generation_order='middle_out')
  hyper = HyperConfig(kind='hart', generation_order='random', order_seed=3)
  order = hyper.step_to_layer(24)
  assert sorted(order) == list(range(24)) and list(order) != list(range(24))
  assert list(order[hyper.layer_to_step(24)]) == list(range(24))
  assert list(HyperConfig(kind='hart', generation_order='top_down').step_to_layer(3)) == [
      2, 1, 0]
