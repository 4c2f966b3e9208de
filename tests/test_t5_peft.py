"""PEFT slots of the downstream model: LoRA against the `peft` library, prefixes, identity."""

import copy

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from hf_fixtures import UNEVEN, build_torch_t5, random_tokens, save_torch_t5
from hyperflax import load_pretrained
from hyperflax.model import peft as peft_lib
from hyperflax.model.decoding import greedy_decode

RANK, ALPHA = 4, 8.0


def _site(module_name: str) -> tuple[str, str, int, str]:
  """'decoder.block.1.layer.1.EncDecAttention.v' -> ('decoder', 'cross', 1, 'value')."""
  parts = module_name.split('.')
  stack, layer = parts[0], int(parts[2])
  site = 'cross' if parts[5] == 'EncDecAttention' else 'self'
  return stack, site, layer, {'q': 'query', 'v': 'value'}[parts[6]]


def _peft_model(ref):
  from peft import LoraConfig, get_peft_model
  cfg = LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=['q', 'v'], lora_dropout=0.0,
                   init_lora_weights=False)  # random A and B: a non-trivial delta
  return get_peft_model(copy.deepcopy(ref), cfg).eval()


def _lora_slots(peft_model, config, batch):
  """Reads peft's A/B matrices into our slot layout, the same for every row."""
  from peft.tuners.lora import Linear as LoraLinear
  slots: dict = {}
  for name, module in peft_model.base_model.model.named_modules():
    if not isinstance(module, LoraLinear):
      continue
    stack, site, layer, proj = _site(name)
    a = module.lora_A['default'].weight.detach().numpy().T  # [D, R]
    b = module.lora_B['default'].weight.detach().numpy().T  # [R, inner]
    scale = module.scaling['default']
    entry = slots.setdefault(stack, {}).setdefault(site, {}).setdefault(
        proj, {'a': {}, 'b': {}, 'gate': {}})
    entry['a'][layer], entry['b'][layer], entry['gate'][layer] = a, b, scale
  def stack_layers(d):
    arr = np.stack([d[i] for i in sorted(d)])
    return jnp.asarray(np.broadcast_to(arr, (batch,) + arr.shape), jnp.float32)
  out = jax.tree.map(stack_layers, slots, is_leaf=lambda x: isinstance(x, dict) and 0 in x)
  peft_lib.validate(out, config, batch)
  return out


def test_lora_matches_peft_library(tmp_path):
  ref = build_torch_t5(**UNEVEN)
  model, params = load_pretrained(save_torch_t5(ref, str(tmp_path)), dropout_rate=0.0)
  lora_model = _peft_model(ref)
  rng = np.random.default_rng(0)
  enc = random_tokens(rng, 3, 30, UNEVEN['vocab_size'], pad_from=[30, 20, 9])
  dec = random_tokens(rng, 3, 12, UNEVEN['vocab_size'], start_with_pad=True)
  slots = _lora_slots(lora_model, model.config, batch=3)
  # 3 sites x 2 projections x layers: every q and v map got a delta.
  assert len(peft_lib.flatten(slots)) == 3 * 2 * 3
  ours = np.asarray(model.apply({'params': params}, jnp.asarray(enc), jnp.asarray(dec),
                                peft=slots))
  with torch.no_grad():
    expected = lora_model(input_ids=torch.tensor(enc, dtype=torch.long),
                          attention_mask=torch.tensor(enc > 0, dtype=torch.long),
                          decoder_input_ids=torch.tensor(dec, dtype=torch.long)).logits.numpy()
    plain = ref(input_ids=torch.tensor(enc, dtype=torch.long),
                attention_mask=torch.tensor(enc > 0, dtype=torch.long),
                decoder_input_ids=torch.tensor(dec, dtype=torch.long)).logits.numpy()
  assert np.abs(expected - plain).max() > 1e-2  # the adapter really changes the model
  np.testing.assert_allclose(ours, expected, atol=1e-4, rtol=0)


def _tiny_model(tmp_path, seed=0):
  return load_pretrained(save_torch_t5(build_torch_t5(seed=seed, **UNEVEN), str(tmp_path)),
                         dropout_rate=0.0)


def _random_peft(config, batch, prefix_len=3, rank=2, zero_b=False, seed=0):
  shapes = peft_lib.expected_shapes(config, batch, prefix_len, rank)
  rng = np.random.default_rng(seed)  # numpy: eager jax.random compiles per shape
  flat = {}
  for path, shape in sorted(shapes.items()):
    value = rng.normal(size=shape).astype(np.float32) * 0.5
    if zero_b and path.endswith('/b'):
      value = np.zeros(shape, np.float32)
    flat[path] = jnp.asarray(value)
  return peft_lib.unflatten(flat)


def test_zero_lora_b_and_no_prefix_is_exactly_the_plain_model(tmp_path):
  model, params = _tiny_model(tmp_path)
  rng = np.random.default_rng(3)
  enc = jnp.asarray(random_tokens(rng, 2, 15, UNEVEN['vocab_size'], pad_from=[15, 8]))
  dec = jnp.asarray(random_tokens(rng, 2, 6, UNEVEN['vocab_size'], start_with_pad=True))
  slots = _random_peft(model.config, 2, prefix_len=None, zero_b=True)
  plain = model.apply({'params': params}, enc, dec)
  adapted = model.apply({'params': params}, enc, dec, peft=slots)
  np.testing.assert_array_equal(np.asarray(adapted), np.asarray(plain))


def test_rows_with_different_adapters_equal_running_each_alone(tmp_path):
  model, params = _tiny_model(tmp_path)
  rng = np.random.default_rng(4)
  enc = jnp.asarray(random_tokens(rng, 3, 11, UNEVEN['vocab_size'], pad_from=[11, 6, 9]))
  dec = jnp.asarray(random_tokens(rng, 3, 5, UNEVEN['vocab_size'], start_with_pad=True))
  slots = _random_peft(model.config, 3, seed=7)
  apply = jax.jit(model.apply)
  together = np.asarray(apply({'params': params}, enc, dec, peft=slots))
  for row in range(3):
    alone = apply({'params': params}, enc[row:row + 1], dec[row:row + 1],
                        peft=jax.tree.map(lambda x: x[row:row + 1], slots))
    np.testing.assert_allclose(together[row], np.asarray(alone)[0], atol=1e-5)
  plain = np.asarray(apply({'params': params}, enc, dec))
  assert np.abs(together - plain).max() > 1e-2


def _reference_attention(x, wq, wk, wv, wo, bias, mask, pk, pv, heads):
  """numpy attention implementing the documented prefix rule independently."""
  split = lambda t: t.reshape(t.shape[0], heads, -1)
  q, k, v = split(x @ wq), split(np.concatenate([pk, x @ wk])), split(
      np.concatenate([pv, x @ wv]))
  num_prefix = pk.shape[0]
  logits = np.einsum('qhd,khd->hqk', q, k)
  logits[:, :, num_prefix:] += bias  # zero bias on prefix columns
  full_mask = np.concatenate([np.ones((x.shape[0], num_prefix), bool), mask], axis=1)
  logits = np.where(full_mask[None], logits, -1e10)
  w = np.exp(logits - logits.max(-1, keepdims=True))
  w /= w.sum(-1, keepdims=True)
  return np.einsum('hqk,khd->qhd', w, v).reshape(x.shape[0], -1) @ wo


def test_prefix_rule_against_numpy_reference():
  from hyperflax.model.config import preset
  from hyperflax.model.layers import Attention
  cfg = preset('tiny', dropout_rate=0.0, d_model=16, d_kv=4, num_heads=2)
  rng = np.random.default_rng(5)
  x = rng.normal(size=(1, 6, 16)).astype(np.float32)
  bias = rng.normal(size=(1, 2, 6, 6)).astype(np.float32)
  causal = np.tril(np.ones((6, 6), bool))
  pk, pv = (rng.normal(size=(1, 3, 8)).astype(np.float32) for _ in range(2))
  attn = Attention(cfg)
  variables = nn.meta.unbox(attn.init(jax.random.PRNGKey(0), x, x, causal[None, None], bias))
  out = attn.apply(variables, x, x, causal[None, None], bias,
                   {'prefix': {'k': pk, 'v': pv}})
  p = jax.tree.map(np.asarray, variables['params'])
  ref = _reference_attention(x[0], p['query'], p['key'], p['value'], p['out'], bias[0],
                             causal, pk[0], pv[0], heads=2)
  np.testing.assert_allclose(np.asarray(out)[0], ref, atol=1e-5)


def test_cached_decoding_honours_prefix_lora_and_fusion(tmp_path):
  """Greedy tokens from the cache equal the argmax of a full teacher-forced pass."""
  model, params = _tiny_model(tmp_path)
  cfg = model.config
  rng = np.random.default_rng(6)
  enc = jnp.asarray(random_tokens(rng, 2, 10, UNEVEN['vocab_size'], pad_from=[10, 4]))
  slots = _random_peft(cfg, 2, prefix_len=3, rank=2, seed=11)
  fusion = jnp.asarray(rng.normal(size=(2, 5, cfg.d_model)).astype(np.float32))
  fmask = jnp.asarray(np.array([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]], bool))
  steps = 8
  out = np.asarray(greedy_decode(cfg, params, enc, steps, peft=slots, fusion_states=fusion,
                                 fusion_mask=fmask))
  dec_in = np.concatenate([np.zeros((2, 1), np.int32), out[:, :-1]], axis=1)
  logits = model.apply({'params': params}, enc, jnp.asarray(dec_in), peft=slots,
                       fusion_states=fusion, fusion_mask=fmask)
  teacher = np.asarray(jnp.argmax(logits, -1))
  for row in range(2):
    n = steps if 1 not in out[row] else list(out[row]).index(1) + 1
    np.testing.assert_array_equal(out[row, :n], teacher[row, :n])
  plain = np.asarray(greedy_decode(cfg, params, enc, steps))
  assert not np.array_equal(plain, out)  # prefixes/LoRA/fusion changed the generation


def test_bad_peft_is_rejected_with_the_slot_name():
  from hyperflax.model.config import preset
  cfg = preset('tiny')
  slots = _random_peft(cfg, 2, prefix_len=3, rank=2)
  slots['decoder']['self']['prefix']['k'] = jnp.zeros((2, cfg.num_decoder_layers, 3, 5))
  with pytest.raises(ValueError, match='decoder/self/prefix/k'):
    peft_lib.validate(slots, cfg, 2)
  with pytest.raises(ValueError, match='decoder/cross/prefix'):
    peft_lib.validate({'decoder': {'cross': {'prefix': {'k': jnp.zeros((2, 2, 3, 64))}}}}, cfg, 2)
