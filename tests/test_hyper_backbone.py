"""The hypermodel backbone starts from T5 weights: copy, truncation, layouts, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from hf_fixtures import TINY, build_torch_t5, random_tokens, save_torch_t5
from hyperflax import load_pretrained
from hyperflax.hyper import HyperConfig, init_hypermodel
from hyperflax.hyper.backbone import Backbone
from hyperflax.hyper.testing import FAST_COMPILE, random_t5_params
from hyperflax.model import preset

T5C = preset('tiny', vocab_size=512, d_kv=8, num_layers=2, num_decoder_layers=3,
             dropout_rate=0.0)


@pytest.mark.parametrize('scan_layers', [False, True], ids=['loop', 'scanned'])
def test_backbone_is_t5_embedding_encoder_and_first_decoder_layers(scan_layers):
  config = T5C.replace(scan_layers=scan_layers)
  t5_params = random_t5_params(config)
  hyper = HyperConfig(kind='lora', lora_rank=2, decoder_layers=2)
  params = init_hypermodel(hyper, config, jax.random.key(0, impl='rbg'), t5_params=t5_params)
  backbone = params['backbone']
  same = lambda a, b: jax.tree.all(jax.tree.map(np.array_equal, a, b))
  assert same(backbone['token_embedder'], t5_params['token_embedder'])
  assert same(backbone['encoder'], t5_params['encoder'])
  dec, t5_dec = backbone['decoder'], t5_params['decoder']
  assert same(dec['relpos_bias'], t5_dec['relpos_bias'])
  assert same(dec['decoder_norm'], t5_dec['decoder_norm'])
  if scan_layers:
    assert same(dec['layers'], jax.tree.map(lambda x: x[:2], t5_dec['layers']))
  else:
    assert sorted(k for k in dec if k.startswith('layers_')) == ['layers_0', 'layers_1']
    assert same(dec['layers_1'], t5_dec['layers_1'])
  # Learned decoder inputs (3L = 2 + 3 + 3) start as vocabulary rows.
  inputs = np.asarray(backbone['decoder_inputs'])
  embedding = np.asarray(t5_params['token_embedder']['embedding'])
  assert inputs.shape == (8, config.d_model)
  assert all((embedding == row).all(axis=1).any() for row in inputs)
  assert np.all(np.asarray(params['enc_self_query_gate']) == 0)


def test_backbone_encoder_matches_transformers(tmp_path):
  """The hypermodel encoder, loaded via `load_pretrained`, against torch T5's encoder."""
  ref = build_torch_t5()
  model, t5_params = load_pretrained(save_torch_t5(ref, str(tmp_path)), dropout_rate=0.0)
  hyper = HyperConfig(kind='prefix', prefix_len=2, decoder_layers=1)
  params = init_hypermodel(hyper, model.config, jax.random.key(0, impl='rbg'), t5_params)
  tokens = random_tokens(np.random.default_rng(0), 2, 11, TINY['vocab_size'], pad_from=[11, 6])
  backbone = Backbone(hyper.backbone_config(model.config), 2 * hyper.prefix_len)
  encode = jax.jit(lambda p, t: backbone.apply({'params': p}, t, method=Backbone.encode),
                   compiler_options=FAST_COMPILE)
  encoded, mask = encode(params['backbone'], jnp.asarray(tokens))
  with torch.no_grad():
    expected = ref.encoder(input_ids=torch.tensor(tokens, dtype=torch.long),
                           attention_mask=torch.tensor(tokens > 0, dtype=torch.long))
  np.testing.assert_allclose(np.asarray(encoded), expected.last_hidden_state.numpy(),
                             atol=1e-4, rtol=0)
  np.testing.assert_array_equal(np.asarray(mask), tokens > 0)


def test_copy_errors_and_shared_kinds():
  t5_params = random_t5_params(T5C)
  key = jax.random.key(0, impl='rbg')
  with pytest.raises(ValueError, match='only 3 decoder layers'):
    init_hypermodel(HyperConfig(kind='prefix', prefix_len=2, decoder_layers=4), T5C, key,
                    t5_params)
  with pytest.raises(ValueError, match='layer layout'):
    init_hypermodel(HyperConfig(kind='prefix', prefix_len=2, decoder_layers=1),
                    T5C.replace(scan_layers=True), key, t5_params)
  wrong = random_t5_params(T5C.replace(d_ff=96))
  with pytest.raises(ValueError, match='wi_0'):
    init_hypermodel(HyperConfig(kind='prefix', prefix_len=2, decoder_layers=1), T5C, key,
                    wrong)
  # Shared baselines have no backbone: the T5 weights are not needed, nor copied.
  params = init_hypermodel(HyperConfig(kind='shared_lora', lora_rank=2), T5C, key, t5_params)
  assert 'backbone' not in params
  assert all(not np.any(np.asarray(v)) for k, v in params.items() if k.endswith('_b'))
