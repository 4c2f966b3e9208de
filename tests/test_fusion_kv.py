"""Precomputed fusion-in-decoder keys/values compute what the stored states compute."""

import jax
import jax.numpy as jnp
import numpy as np

from hyperflax.hyper.testing import random_t5_params, toy_batch
from hyperflax.model import T5, preset
from hyperflax.model import hf, peft as peft_lib
from hyperflax.model.decoding import greedy_decode
from hyperflax.model.transformer import fusion_kv

CFG = preset('tiny', vocab_size=128, num_layers=1, num_decoder_layers=2, dropout_rate=0.0)


def _inputs():
  rng = np.random.default_rng(3)
  batch = toy_batch(CFG, batch=2, target_len=4)
  states = jnp.asarray(rng.standard_normal((2, 5, CFG.d_model)), jnp.float32)
  mask = jnp.asarray([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], bool)
  r, L = 3, CFG.num_decoder_layers
  lora = {'a': jnp.asarray(rng.standard_normal((2, L, CFG.d_model, r)) * 0.3, jnp.float32),
          'b': jnp.asarray(rng.standard_normal((2, L, r, CFG.inner_dim)) * 0.3, jnp.float32)}
  peft = {'decoder': {'cross': {'value': lora}}}  # a cross value LoRA also acts on fusion
  return batch, states, mask, peft


def test_logits_and_greedy_decode_equal_the_states_path():
  params = random_t5_params(CFG)
  batch, states, mask, peft = _inputs()
  kv = fusion_kv(CFG, params, states, peft)
  assert kv['k'].shape == (2, CFG.num_decoder_layers, 5, CFG.inner_dim)
  pre = peft_lib.merge(peft, {'decoder': {'cross': {'fusion': kv}}})
  peft_lib.validate(pre, CFG, 2)
  apply = jax.jit(T5(CFG).apply)
  want = apply({'params': params}, batch['encoder_inputs'], batch['decoder_inputs'], peft,
               fusion_states=states, fusion_mask=mask)
  got = apply({'params': params}, batch['encoder_inputs'], batch['decoder_inputs'], pre,
              fusion_mask=mask)
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
  # The fusion positions matter (else equality proves nothing), padding does not.
  plain = apply({'params': params}, batch['encoder_inputs'], batch['decoder_inputs'], peft)
  assert np.abs(np.asarray(plain) - np.asarray(want)).max() > 1e-2
  # Scanned parameters give the same keys/values.
  scanned = fusion_kv(CFG.replace(scan_layers=True), hf.stack_layers(params, CFG), states, peft)
  np.testing.assert_allclose(scanned['v'], kv['v'], atol=1e-6)
  dec = lambda p, **kw: greedy_decode(CFG, params, batch['encoder_inputs'], 4, peft=p,
                                      fusion_mask=mask, **kw)
  np.testing.assert_array_equal(dec(pre), dec(peft, fusion_states=states))
