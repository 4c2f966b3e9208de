"""`synthetic_recall`: every lookup the decoder is scored on is answered by its own row's
encoder, in the suite's query_in_decoder format, reproducibly, and misuse is refused."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hyperflax import data  # noqa: E402
from hyperflax.data import synthetic  # noqa: E402

LENGTHS = (136, 12, 56)


def _stream(vocab='words', **options):
  options = {'query_in_decoder': True, **options}
  return data.get_dataset('synthetic_recall', 'train', batch_size=8, mode='concat',
                          lengths=LENGTHS, vocab_path=vocab, seed=3, **options)


def _segments(words, start):
  """'<x> a b <x> c d' -> [[a, b], [c, d]] (tokens after each `start` marker)."""
  out = []
  for w in words:
    if w == start:
      out.append([])
    elif out:
      out[-1].append(w)
  return out


@pytest.mark.parametrize('separated, marks', [(False, 'xy'), (True, 'xy'), (False, 'none')])
def test_each_scored_answer_is_its_keys_value_in_the_encoder(separated, marks):
  tok = synthetic.word_tokenizer('words')
  b = _stream(separated=separated, pairs=5, queries=6, query_marks=marks, num_labels=12).batch(0)
  labels = set(synthetic.LABELS[:12])
  for enc, tgt, w in zip(b['encoder_inputs'], b['targets'], b['target_weights']):
    enc_words = tok.decode([i for i in enc if i]).split()
    assert enc_words[-1] == '</s>'
    items = _segments([x for x in enc_words if x != '</s>'], '<x>')
    assert len(items) == 5
    stated = {}
    for item in items:
      assert (item[1] == '<y>') == separated and len(item) == 2 + separated
      assert item[0] in synthetic.TRAIN_KEYS and item[-1] in labels
      assert item[0] not in synthetic.HELDOUT_KEYS
      stated[item[0]] = item[-1]
    dec_words = tok.decode([i for i in tgt if i]).replace('</s>', '').split()
    if marks == 'xy':
      lookups = _segments(dec_words, '<x>')
    else:  # `q a q a ...`: one-word keys and values, no markers
      assert '<x>' not in dec_words and '<y>' not in dec_words
      lookups = [(q, a) for q, a in zip(dec_words[::2], dec_words[1::2])]
    assert len(lookups) == 6
    scored = [int(i) for i, x in zip(tgt, w) if x]
    assert scored[-1] == data.EOS_ID and len(scored) == 7
    for lookup, ans_id in zip(lookups, scored):
      key, answer = lookup[0], lookup[-1]
      assert stated[key] == answer and tok.decode([ans_id]) == answer
      assert list(lookup[1:-1]) == (['<y>'] if marks == 'xy' else [])
  np.testing.assert_array_equal(b['decoder_inputs'][:, 1:], b['targets'][:, :-1])
  assert (b['decoder_inputs'][:, 0] == 0).all()


def test_hyper_mode_gives_the_pairs_to_the_hypermodel_and_nothing_else_to_the_t5():
  concat = _stream(separated=True, pairs=5, queries=6).batch(4)
  hyper = data.get_dataset('synthetic_recall', 'train', batch_size=8, mode='hyper',
                           lengths=LENGTHS, vocab_path='words', seed=3, query_in_decoder=True,
                           separated=True, pairs=5, queries=6).batch(4)
  # The same rows: the hypermodel reads what the concat row's encoder stated ...
  stated = concat['encoder_inputs'][:, :LENGTHS[0]]
  np.testing.assert_array_equal(hyper['hyper_inputs'], stated)
  assert not concat['encoder_inputs'][:, LENGTHS[0]:].any()
  # ... the downstream encoder reads only </s>, and the scored lookups are unchanged.
  assert hyper['encoder_inputs'].shape == (8, LENGTHS[1])
  assert (hyper['encoder_inputs'][:, 0] == data.EOS_ID).all()
  assert not hyper['encoder_inputs'][:, 1:].any()
  for k in ('decoder_inputs', 'targets', 'target_weights', 'hyper_num_used'):
    np.testing.assert_array_equal(hyper[k], concat[k])


def test_hyper_mode_refuses_pairs_that_overflow_the_hypermodel_input():
  with pytest.raises(ValueError,
                     match='needs up to 16 hypermodel and 9 decoder ids .*give 12 and 56'):
    data.get_dataset('synthetic_recall', 'train', batch_size=2, mode='hyper',
                     lengths=(12, 4, 56), vocab_path='words', query_in_decoder=True,
                     pairs=5, queries=2)


@pytest.mark.parametrize('stated_in', ['decoder', 'mixed'])
def test_pairs_stated_in_the_decoder_answer_its_lookups_and_are_not_scored(stated_in):
  tok = synthetic.word_tokenizer('words')
  b = _stream(pairs=4, queries=6, query_marks='none', stated_in=stated_in).batch(1)
  in_decoder = 0
  for enc, tgt, w in zip(b['encoder_inputs'], b['targets'], b['target_weights']):
    enc_words = tok.decode([i for i in enc if i]).split()
    dec = [int(i) for i in tgt if i]
    words = tok.decode(dec).replace('</s>', '').split()
    if enc_words == ['</s>']:  # stated in the decoder: k v (x4), then 6 scored lookups
      in_decoder += 1
      assert len(words) == 2 * (4 + 6)
      stated = dict(zip(words[0:8:2], words[1:8:2]))
      assert len(stated) == 4
      assert not w[:8].any()  # the statements are read, never scored
      lookups = list(zip(words[8::2], words[9::2]))
      scored = [tok.decode([int(i)]) for i, x in zip(tgt, w) if x][:-1]
      assert scored == [a for _, a in lookups]
      assert all(stated[q] == a for q, a in lookups)
    else:
      assert stated_in == 'mixed' and len(enc_words) == 4 * 3 + 1
  assert in_decoder == 8 if stated_in == 'decoder' else 0 < in_decoder < 8


def test_batches_are_a_function_of_seed_and_step_and_resume_exactly():
  a, b = _stream(), _stream()
  np.testing.assert_array_equal(a.batch(7)['encoder_inputs'], b.batch(7)['encoder_inputs'])
  assert not np.array_equal(a.batch(7)['encoder_inputs'], a.batch(8)['encoder_inputs'])
  resumed = data.get_dataset('synthetic_recall', 'train', batch_size=8, mode='concat',
                             lengths=LENGTHS, vocab_path='words', seed=3, start_step=7,
                             query_in_decoder=True)
  first = next(iter(resumed))
  for k, v in a.batch(7).items():
    np.testing.assert_array_equal(first[k], v)


def test_compact_rows_are_the_word_rows_renumbered():
  words, compact = _stream('words').batch(2), _stream('words_compact').batch(2)
  tok = synthetic.word_tokenizer('words_compact')
  for k in ('encoder_inputs', 'decoder_inputs', 'targets'):
    np.testing.assert_array_equal(compact[k], tok.to_model_ids(words[k]))
    assert compact[k].max() < tok.vocab_size
  np.testing.assert_array_equal(compact['target_weights'], words['target_weights'])


@pytest.mark.parametrize('kwargs, match', [
    (dict(query_in_decoder=False), 'query_in_decoder=True'),
    (dict(mode='zero_shot'), 'mode "concat"'),
    (dict(split='validation'), 'training stream'),
    (dict(pairs=4, queries=20), 'raise data.lengths'),
    (dict(pairs=60, queries=1), 'raise data.lengths'),
    (dict(pairs=0), 'pairs=0'),
    (dict(num_labels=99), 'num_labels=99'),
    (dict(shots=3), 'unknown option'),
    (dict(keys='pseudo'), "keys='pseudo'"),
    (dict(keys=['cat']), "keys=\\['cat'\\]"),
    (dict(pairs='4'), "pairs='4'; expected an integer"),
    (dict(query_marks='x'), "query_marks='x'"),
    (dict(stated_in='both'), "stated_in='both'"),
    (dict(stated_in='decoder', mode='hyper'), '"concat" only'),
])
def test_misuse_is_refused_in_one_line(kwargs, match):
  kw = dict(split='train', mode='concat', query_in_decoder=True)
  kw.update(kwargs)
  split, mode = kw.pop('split'), kw.pop('mode')
  with pytest.raises(ValueError, match=match):
    stream = data.get_dataset('synthetic_recall', split, batch_size=2, mode=mode,
                              lengths=LENGTHS, vocab_path='words', **kw)
    stream.batch(0)


def test_animal_keys_option_draws_only_animals():
  tok = synthetic.word_tokenizer('words')
  b = _stream(keys='animals').batch(1)
  words = set(tok.decode([i for i in b['encoder_inputs'].ravel() if i > 1]).split())
  keys = words - set(synthetic.LABELS) - {'<x>', '<y>'}
  assert keys and keys <= set(synthetic.ANIMALS)
