"""HF <-> hyperflax conversion: bit-exact round trips and errors that name the tensor."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file

from hf_fixtures import UNEVEN, build_torch_t5, random_tokens, save_torch_t5
from hyperflax import convert


def _hf_tensors(directory):
  return load_file(os.path.join(directory, 'model.safetensors'))


def test_round_trip_is_bit_exact_and_loads_in_transformers(tmp_path):
  ref = build_torch_t5(**UNEVEN)
  src = save_torch_t5(ref, str(tmp_path / 'hf'))
  # Through the real command line, as a user runs it.
  for cmd in (['hf-to-flax', '--hf', src, '--out', str(tmp_path / 'flax')],
              ['flax-to-hf', '--checkpoint', str(tmp_path / 'flax'), '--out',
               str(tmp_path / 'back')]):
    proc = subprocess.run([sys.executable, '-m', 'hyperflax.convert', *cmd],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
  before, after = _hf_tensors(src), _hf_tensors(str(tmp_path / 'back'))
  before = {k: v for k, v in before.items() if not k.endswith('embed_tokens.weight')}
  assert set(after) == set(before)
  for name in before:
    assert after[name].dtype == before[name].dtype
    np.testing.assert_array_equal(after[name], before[name], err_msg=name)

  from transformers import T5ForConditionalGeneration
  reloaded = T5ForConditionalGeneration.from_pretrained(str(tmp_path / 'back')).eval()
  enc = random_tokens(np.random.default_rng(0), 2, 12, UNEVEN['vocab_size'])
  dec = random_tokens(np.random.default_rng(1), 2, 7, UNEVEN['vocab_size'], start_with_pad=True)
  with torch.no_grad():
    a = ref(input_ids=torch.tensor(enc, dtype=torch.long),
            decoder_input_ids=torch.tensor(dec, dtype=torch.long)).logits
    b = reloaded(input_ids=torch.tensor(enc, dtype=torch.long),
                 decoder_input_ids=torch.tensor(dec, dtype=torch.long)).logits
  assert torch.equal(a, b)


def test_bfloat16_export_loads(tmp_path):
  src = save_torch_t5(build_torch_t5(), str(tmp_path / 'hf'))
  convert.hf_to_flax(src, str(tmp_path / 'flax'))
  convert.flax_to_hf(str(tmp_path / 'flax'), str(tmp_path / 'bf16'), dtype='bfloat16')
  from transformers import T5ForConditionalGeneration
  m = T5ForConditionalGeneration.from_pretrained(str(tmp_path / 'bf16'), dtype=torch.bfloat16)
  assert m.shared.weight.dtype == torch.bfloat16
  ref = build_torch_t5()
  assert torch.equal(m.shared.weight, ref.shared.weight.to(torch.bfloat16))


def test_unknown_tensor_is_named(tmp_path):
  src = save_torch_t5(build_torch_t5(), str(tmp_path / 'hf'))
  tensors = _hf_tensors(src)
  tensors['encoder.block.0.layer.0.SelfAttention.bogus.weight'] = np.zeros((2, 2), np.float32)
  save_file(tensors, os.path.join(src, 'model.safetensors'))
  with pytest.raises(ValueError, match=r"encoder\.block\.0\.layer\.0\.SelfAttention\.bogus"):
    convert.hf_to_flax(src, str(tmp_path / 'out'))


def test_shape_mismatch_is_named(tmp_path):
  src = save_torch_t5(build_torch_t5(), str(tmp_path / 'hf'))
  tensors = _hf_tensors(src)
  name = 'decoder.block.1.layer.2.DenseReluDense.wo.weight'
  tensors[name] = np.zeros((5, 7), np.float32)
  save_file(tensors, os.path.join(src, 'model.safetensors'))
  with pytest.raises(ValueError, match=r'decoder\.block\.1\.layer\.2\.DenseReluDense\.wo\.weight'):
    convert.hf_to_flax(src, str(tmp_path / 'out'))


def test_missing_tensor_and_bad_config_are_reported(tmp_path):
  src = save_torch_t5(build_torch_t5(), str(tmp_path / 'hf'))
  tensors = _hf_tensors(src)
  del tensors['decoder.final_layer_norm.weight']
  save_file(tensors, os.path.join(src, 'model.safetensors'))
  with pytest.raises(ValueError, match='decoder.final_layer_norm.weight'):
    convert.hf_to_flax(src, str(tmp_path / 'out'))
  cfg = json.load(open(os.path.join(src, 'config.json')))
  cfg['feed_forward_proj'] = 'relu'
  json.dump(cfg, open(os.path.join(src, 'config.json'), 'w'))
  assert convert.main(['hf-to-flax', '--hf', src, '--out', str(tmp_path / 'o')]) == 2
