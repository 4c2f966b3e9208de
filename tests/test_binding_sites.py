"""`bench/binding_sites.py`: the same recall lookups with the pairs in the encoder or in the
decoder, and an accuracy over the scored answers only."""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'bench'))

import binding_sites  # noqa: E402
from hyperflax.data.vocab import EOS_ID  # noqa: E402


def test_placements_share_lookups_and_move_only_the_pairs():
  enc, dec = (binding_sites.recall_batch(w, pairs=4, rows=8) for w in ('encoder', 'decoder'))
  assert (dec['encoder_inputs'][:, 0] == EOS_ID).all() and not dec['encoder_inputs'][:, 1:].any()
  assert (enc['encoder_inputs'] > 0).sum(1).min() == 4 * 3 + 1  # <x> key value, x4, </s>
  np.testing.assert_array_equal(enc['targets'][enc['target_weights'] > 0],
                                dec['targets'][dec['target_weights'] > 0])
  # In the decoder the 4 stated pairs come first, read and never scored.
  assert not dec['target_weights'][:, :8].any() and (dec['targets'][:, :8] > 0).all()


def test_accuracy_counts_the_scored_answers_only(monkeypatch):
  batch = binding_sites.recall_batch('decoder', pairs=4, rows=4)
  vocab = int(batch['targets'].max()) + 1

  class Model:
    config = None

  def logits_for(predicted):
    return lambda config, params, enc, dec: np.eye(vocab, dtype=np.float32)[predicted]

  # Right on every answer, wrong on everything else (pairs, </s>): 100.
  answers = (batch['target_weights'] > 0) & (batch['targets'] != EOS_ID)
  right = np.where(answers, batch['targets'], 0)  # 0 (PAD) is never a target
  monkeypatch.setattr(binding_sites, 'teacher_forced_logits', logits_for(right))
  assert binding_sites.accuracy(Model(), None, batch) == 100.0
  # Half of each row's 8 answers right: 50.
  half = right.copy()
  for row, weights in zip(half, batch['target_weights']):
    answers = [i for i in np.flatnonzero(weights) if row[i] != EOS_ID]
    row[answers[:4]] = 0
  monkeypatch.setattr(binding_sites, 'teacher_forced_logits', logits_for(half))
  assert binding_sites.accuracy(Model(), None, batch) == 50.0
