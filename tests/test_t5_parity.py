"""Our T5 v1.1 against transformers' torch T5 (the independent reference)."""

import numpy as np
import pytest
import torch

import jax.numpy as jnp

from hf_fixtures import TINY, UNEVEN, build_torch_t5, random_tokens, save_torch_t5
from hyperflax import load_pretrained
from hyperflax.model.decoding import greedy_decode


def _torch_logits(model, enc, dec):
  with torch.no_grad():
    return model(input_ids=torch.tensor(enc, dtype=torch.long),
                 attention_mask=torch.tensor(enc > 0, dtype=torch.long),
                 decoder_input_ids=torch.tensor(dec, dtype=torch.long)).logits.numpy()


@pytest.mark.parametrize('overrides', [TINY, UNEVEN], ids=['tiny', 'uneven_buckets'])
def test_logits_match_transformers(tmp_path, overrides):
  ref_model = build_torch_t5(**overrides)
  model, params = load_pretrained(save_torch_t5(ref_model, str(tmp_path)), dropout_rate=0.0)
  rng = np.random.default_rng(0)
  # Lengths beyond max_distance reach the saturated log buckets.
  enc = random_tokens(rng, 3, 70, overrides['vocab_size'], pad_from=[70, 41, 5])
  dec = random_tokens(rng, 3, 50, overrides['vocab_size'], start_with_pad=True)
  ours = np.asarray(model.apply({'params': params}, jnp.asarray(enc), jnp.asarray(dec)))
  ref = _torch_logits(ref_model, enc, dec)
  assert ours.shape == ref.shape == (3, 50, overrides['vocab_size'])
  np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)
  assert np.abs(ref).max() > 0.5  # the comparison is not between near-zero values


def test_greedy_generation_matches_transformers(tmp_path):
  ref_model = build_torch_t5(**UNEVEN)
  model, params = load_pretrained(save_torch_t5(ref_model, str(tmp_path)), dropout_rate=0.0)
  rng = np.random.default_rng(1)
  enc = random_tokens(rng, 4, 20, UNEVEN['vocab_size'], pad_from=[20, 12, 7, 15])
  steps = 16
  ours = np.asarray(greedy_decode(model.config, params, jnp.asarray(enc), steps))
  with torch.no_grad():
    ref = ref_model.generate(input_ids=torch.tensor(enc, dtype=torch.long),
                             attention_mask=torch.tensor(enc > 0, dtype=torch.long),
                             max_new_tokens=steps, min_new_tokens=0, do_sample=False,
                             num_beams=1).numpy()[:, 1:]
  ref = np.pad(ref, [(0, 0), (0, steps - ref.shape[1])])
  np.testing.assert_array_equal(ours, ref)
  assert len(set(map(tuple, ours))) > 1  # rows differ: not a degenerate constant output


def test_generation_stops_at_eos_and_pads():
  """An EOS-favouring lm_head: everything after the first EOS must be padding."""
  ref_model = build_torch_t5(seed=3)
  with torch.no_grad():
    ref_model.lm_head.weight[1] += 5.0 * ref_model.lm_head.weight[1].sign()
  import tempfile
  with tempfile.TemporaryDirectory() as d:
    model, params = load_pretrained(save_torch_t5(ref_model, d), dropout_rate=0.0)
  enc = random_tokens(np.random.default_rng(2), 2, 9, TINY['vocab_size'])
  out = np.asarray(greedy_decode(model.config, params, jnp.asarray(enc), 6))
  with torch.no_grad():
    ref = ref_model.generate(input_ids=torch.tensor(enc, dtype=torch.long), max_new_tokens=6,
                             do_sample=False, num_beams=1).numpy()[:, 1:]
  ref = np.pad(ref, [(0, 0), (0, 6 - ref.shape[1])])
  np.testing.assert_array_equal(out, ref)
  assert (out == 1).any()
  first = np.argmax(out == 1, axis=1)
  for row, f in enumerate(first):
    if out[row, f] == 1:
      assert (out[row, f + 1:] == 0).all()
