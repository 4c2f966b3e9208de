"""Beam search against transformers' `generate(num_beams=...)`, token for token.

Rows mixing adapters are checked in test_serving.py (mixed batches).
"""

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from hf_fixtures import UNEVEN, build_torch_t5, random_tokens, save_torch_t5
from hyperflax import load_pretrained
from hyperflax.model.beam_search import beam_search

STEPS = 7


@pytest.fixture(scope='module')
def models(tmp_path_factory):
  ref = build_torch_t5(seed=1, **UNEVEN)
  # Make EOS likely, so hypotheses finish at different steps and every branch
  # of the finished-beam bookkeeping runs (a random model rarely says EOS).
  with torch.no_grad():
    ref.lm_head.weight[1] = ref.lm_head.weight[1] * 3.0 + 0.3
  path = save_torch_t5(ref, str(tmp_path_factory.mktemp('beam')))
  model, params = load_pretrained(path, dropout_rate=0.0)
  return ref, model.config, params


def _until_eos(row) -> list[int]:
  row = [int(x) for x in row]
  return row[:row.index(1) + 1] if 1 in row else row


# One beam width: the penalty and stopping rule are traced, so one compile serves all.
@pytest.mark.parametrize('num_beams,length_penalty,early_stopping', [
    (3, 1.0, False), (3, 0.5, True), (3, 2.0, 'never')])
def test_beam_search_matches_transformers(models, num_beams, length_penalty, early_stopping):
  ref, config, params = models
  rng = np.random.default_rng(num_beams)
  enc = random_tokens(rng, 5, 9, UNEVEN['vocab_size'], pad_from=[9, 5, 7, 3, 9])
  tokens, scores = beam_search(config, params, jnp.asarray(enc), STEPS, num_beams=num_beams,
                               length_penalty=length_penalty, early_stopping=early_stopping)
  tokens = np.asarray(tokens)
  with torch.no_grad():
    expected = ref.generate(
        input_ids=torch.tensor(enc, dtype=torch.long),
        attention_mask=torch.tensor(enc > 0, dtype=torch.long), max_new_tokens=STEPS,
        do_sample=False, num_beams=num_beams, length_penalty=length_penalty,
        early_stopping=early_stopping, output_scores=True, return_dict_in_generate=True)
  want = expected.sequences.numpy()[:, 1:]
  lengths = []
  for row in range(enc.shape[0]):
    assert _until_eos(tokens[row]) == _until_eos(want[row]), row
    n = len(_until_eos(tokens[row]))
    assert np.all(tokens[row, n:] == 0)  # padding after EOS
    lengths.append(n)
  np.testing.assert_allclose(np.asarray(scores), expected.sequences_scores.numpy(), atol=1e-4)
  # Coverage: some hypotheses ended with EOS before the last step.
  assert min(lengths) < STEPS
