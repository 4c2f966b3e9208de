"""Unit tests of the data core: formatting, batching, determinism, errors.

Shared data is not needed here except where a test says so.
"""

import json
import logging
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hyperflax.data import converters, fewshot, io_utils, registry  # noqa: E402
from hyperflax.data import sources_metaicl, sources_p3, sources_sni, vocab  # noqa: E402
from hyperflax.data.examples import EvalTaskData, Example, FewShotTask, Lengths  # noqa: E402

X, Y, EOS = vocab.X_ID, vocab.Y_ID, vocab.EOS_ID


class CharTok:
  """Toy tokenizer: one id per character (ord + 3), so lengths are obvious."""

  def encode(self, text):
    return [ord(c) + 3 for c in text]

  def encode_batch(self, texts):
    return [self.encode(t) for t in texts]


def _episode(demos, query=('q', 'a'), definition=None, task='t'):
  return fewshot.Episode(task, Example(*query),
                         tuple(Example(i, o) for i, o in demos), definition)


# ---- formatting ---------------------------------------------------------------

def test_marker_ids_are_outside_the_tokenizer_range():
  assert (vocab.X_ID, vocab.Y_ID) == (32100, 32101)
  assert vocab.sentinel_id(0) == 32099 and vocab.sentinel_id(99) == 32000
  assert vocab.NUM_PIECES + vocab.NUM_EXTRA_IDS <= vocab.X_ID < vocab.Y_ID
  assert vocab.Y_ID < vocab.EMBEDDING_ROWS


def test_fewshot_tokens_layout_and_whole_example_dropping():
  demos = [([10, 11], [20]), ([12] * 9, [21]), ([13], [22])]
  ids, used, dropped, trunc = converters.fewshot_tokens(demos, [5, 6], budget=12)
  # def (3) + demo1 (5) fit; demo2 (12) would overflow; demo3 (4) still fits.
  assert ids == [X, 5, 6, X, 10, 11, Y, 20, X, 13, Y, 22]
  assert (used, dropped, trunc) == (2, 1, False)
  ids, used, dropped, trunc = converters.fewshot_tokens(demos, [5] * 20, budget=8)
  assert ids == [X] + [5] * 7 and (used, dropped, trunc) == (0, 3, True)


def test_hyper_batch_fields_and_shapes():
  lengths = Lengths(hyper=24, encoder=6, decoder=4)
  conv = converters.Converter(CharTok(), lengths, 'hyper')
  ep = _episode([('ab', 'c'), ('de', 'f')], query=('xyzw', 'ok'))
  b = conv.train_batch([ep, ep])
  assert {k: v.shape for k, v in b.items()} == {
      'hyper_inputs': (2, 24), 'hyper_num_used': (2,),
      'hyper_num_dropped': (2,), 'encoder_inputs': (2, 6),
      'decoder_inputs': (2, 4), 'targets': (2, 4), 'target_weights': (2, 4)}
  c = CharTok().encode
  assert b['hyper_inputs'][0, :12].tolist() == [X, *c('ab'), Y, *c('c'), X,
                                                *c('de'), Y, *c('f'), EOS, 0]
  assert b['encoder_inputs'][0].tolist() == [*c('xyzw'), EOS, 0]
  assert b['targets'][0].tolist() == [*c('ok'), EOS, 0]
  assert b['decoder_inputs'][0].tolist() == [0, *c('ok'), EOS]
  assert b['target_weights'][0].tolist() == [1, 1, 1, 0]
  assert b['hyper_inputs'].dtype == np.int32
  assert b['target_weights'].dtype == np.float32
  assert b['hyper_num_used'].tolist() == [2, 2]


def test_concat_mode_keeps_query_and_drops_whole_demos():
  lengths = Lengths(hyper=10, encoder=6, decoder=4)
  conv = converters.Converter(CharTok(), lengths, 'concat')
  ep = _episode([('aaaa', 'b'), ('cc', 'd'), ('e', 'f')], query=('qq', 'z'))
  b = conv.train_batch([ep])
  c = CharTok().encode
  assert b['encoder_inputs'].shape == (1, 16)
  # query part [X q q EOS] = 4 ids leaves 12 for demos: 7 + 5 fit, 4 does not.
  assert b['encoder_inputs'][0].tolist() == [
      X, *c('aaaa'), Y, *c('b'), X, *c('cc'), Y, *c('d'), X, *c('qq'), EOS]
  assert b['hyper_num_used'].tolist() == [2]
  assert b['hyper_num_dropped'].tolist() == [1]
  assert 'hyper_inputs' not in b


def test_recall_rows_mask_targets_with_sentinels():
  conv = converters.Converter(CharTok(), Lengths(hyper=40, encoder=8, decoder=9), 'concat',
                              recall_slots=3)
  plain = converters.Converter(CharTok(), Lengths(hyper=40, encoder=8, decoder=9), 'concat')
  c, s = CharTok().encode, vocab.sentinel_id
  answers = {'a': 'b', 'c': 'd', 'e': 'f', 'g': 'h'}
  masks = set()
  for n in range(40):  # episodes differ in their query; each row draws its own m
    ep = _episode(list(answers.items()), query=(chr(ord('i') + n % 15), 'z'), task=f't{n}')
    ep = fewshot.Episode(ep.task, ep.query, ep.demos, None, n, n)
    b = conv.train_batch([ep])
    enc = [i for i in b['encoder_inputs'][0].tolist() if i]
    tgt = [i for i in b['targets'][0].tolist() if i]
    # The query ends the row as in 'concat' mode; its target comes first.
    assert enc[-3:] == [X, *c(ep.query.input), EOS] and tgt[0] == c('z')[0]
    hidden = [k for k in answers if c(answers[k])[0] not in enc]
    masks.add(len(hidden))
    # Then each sentinel with the target it hides, in order, then EOS.
    want = [*c('z')]
    for j, k in enumerate(hidden):
      assert enc[enc.index(c(k)[0]) + 2] == s(j)
      want += [s(j), *c(answers[k])]
    assert tgt == want + [EOS]
    assert b['target_weights'][0].sum() == len(tgt)
    if not hidden:  # an unmasked row is exactly the few-shot row
      assert (b['encoder_inputs'] == plain.train_batch([ep])['encoder_inputs']).all()
    # A pure function of the episode.
    assert (conv.train_batch([ep])['targets'] == b['targets']).all()
  assert masks == {0, 1, 2, 3}
  # A decoder too short for every recall keeps the excess targets in view instead.
  short = converters.Converter(CharTok(), Lengths(hyper=40, encoder=8, decoder=5), 'concat',
                               recall_slots=4)
  seen = set()
  for n in range(40):
    ep = fewshot.Episode(f't{n}', Example(chr(ord('i') + n % 15), 'z'),
                         tuple(Example(i, o) for i, o in answers.items()), None, n, n)
    enc = short.train_batch([ep])['encoder_inputs'][0].tolist()
    tgt = [i for i in short.train_batch([ep])['targets'][0].tolist() if i]
    sentinels = [i for i in enc if vocab.NUM_PIECES <= i < vocab.X_ID]
    seen.add(len(sentinels))
    assert tgt[-1] == EOS and len(tgt) <= 5
    assert [t for t in tgt if vocab.NUM_PIECES <= t < vocab.X_ID] == sentinels
  assert seen == {0, 1}  # 'z' + one (sentinel, answer) + EOS fill 4 of 5
  with pytest.raises(ValueError, match='recall_slots'):
    converters.Converter(CharTok(), Lengths(8, 5, 3), 'concat', recall_slots=101)
  with pytest.raises(ValueError, match='concat'):
    converters.Converter(CharTok(), Lengths(8, 5, 3), 'hyper', recall_slots=2)


def test_query_in_decoder_rows_score_only_targets():
  c = CharTok().encode
  conv = converters.Converter(CharTok(), Lengths(hyper=40, encoder=8, decoder=10), 'concat',
                              query_in_decoder=True)
  ep = _episode([('ab', 'c'), ('de', 'f')], query=('xy', 'ok'))
  b = conv.train_batch([ep])
  # The encoder holds the demonstrations only; the decoder reads `<x> query <y>`.
  assert [i for i in b['encoder_inputs'][0].tolist() if i] == [
      X, *c('ab'), Y, *c('c'), X, *c('de'), Y, *c('f'), EOS]
  assert b['targets'][0].tolist() == [X, *c('xy'), Y, *c('ok'), EOS, 0, 0, 0]
  assert b['target_weights'][0].tolist() == [0, 0, 0, 0, 1, 1, 1, 0, 0, 0]
  assert b['decoder_inputs'][0].tolist()[:5] == [0, X, *c('xy'), Y]
  # Rank-classification rows: one per option, each scored on the option alone.
  ep = fewshot.Episode('t', Example('xy', 'ok', options=('ok', 'no!')), ep.demos, None)
  rows = list(conv.choice_batches([ep], 3))[0]
  assert rows['targets'][1].tolist()[:7] == [X, *c('xy'), Y, *c('no!'), EOS][:7]
  assert rows['target_weights'][1].tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 0, 0]
  assert rows['target_weights'][2].sum() == 0 and rows['is_padding'][2]
  # A query too long for the decoder is cut, never the option: options still differ.
  short = converters.Converter(CharTok(), Lengths(hyper=40, encoder=8, decoder=8), 'concat',
                               query_in_decoder=True)
  long_ep = fewshot.Episode('t', Example('abcdefghij', 'ok', options=('ok', 'no!')), ep.demos,
                            None)
  rows = list(short.choice_batches([long_ep], 2))[0]
  assert rows['targets'][1].tolist() == [X, *c('ab'), Y, *c('no!'), EOS]
  assert rows['target_weights'][1].tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
  assert rows['targets'][0].tolist() == [X, *c('ab'), Y, *c('ok'), EOS, 0]  # the same cut
  assert rows['target_weights'][0].tolist() == [0, 0, 0, 0, 1, 1, 1, 0]
  assert short.stats.counts['t']['queries_truncated'] == 2
  with pytest.raises(ValueError, match='no room'):
    list(converters.Converter(CharTok(), Lengths(40, 8, 5), 'concat', query_in_decoder=True)
         .choice_batches([long_ep], 2))


ANSWERS = {'a': 'b', 'c': 'd', 'e': 'f', 'g': 'h'}


def _recall_rows(conv, field):
  """(episode, batch, kept, moved) for 40 episodes of one task; `kept`: the
  demonstrations whose input is in `field`, `moved`: the rest."""
  c = CharTok().encode
  for n in range(40):
    ep = fewshot.Episode(f't{n}', Example('q', 'z'),
                         tuple(Example(i, o) for i, o in ANSWERS.items()), None, n, n)
    b = conv.train_batch([ep])
    present = [i for i in b[field][0].tolist() if i]
    kept = [k for k in ANSWERS if c(k)[0] in present]
    yield ep, b, kept, [k for k in ANSWERS if k not in kept]


def _decoder_lookups(moved, marks='xy'):
  """The decoder row: each moved demonstration, then the query, as `<x> in <y> out`
  (marks 'none': `in out`)."""
  c = CharTok().encode
  head = (lambda k: [X, *c(k), Y]) if marks == 'xy' else c
  return [t for k in moved for t in (*head(k), *c(ANSWERS[k]))] + [*head('q'), *c('z'), EOS]


def test_decoder_recall_rows_without_marks():
  c = CharTok().encode
  conv = converters.Converter(CharTok(), Lengths(hyper=40, encoder=8, decoder=20), 'concat',
                              query_in_decoder=True, decoder_recall=3, query_marks='none')
  seen = set()
  for ep, b, kept, moved in _recall_rows(conv, 'encoder_inputs'):
    seen.add(len(moved))
    tgt, w = b['targets'][0].tolist(), b['target_weights'][0].tolist()
    want = _decoder_lookups(moved, 'none')
    assert tgt[:len(want)] == want and not any(tgt[len(want):])
    assert X not in tgt and Y not in tgt
    # The encoder keeps the paper's `<x> in <y> out` demonstrations.
    enc = [i for i in b['encoder_inputs'][0].tolist() if i]
    assert enc == [t for k in kept for t in (X, *c(k), Y, *c(ANSWERS[k]))] + [EOS]
    assert [t for t, x in zip(tgt, w) if x] == [*(c(ANSWERS[k])[0] for k in moved), *c('z'),
                                                EOS]
  assert seen == {0, 1, 2, 3}
  with pytest.raises(ValueError, match="query_marks='y'"):
    converters.Converter(CharTok(), Lengths(8, 5, 3), 'concat', query_in_decoder=True,
                         query_marks='y')


def test_decoder_recall_rows_move_demos_to_the_decoder():
  c = CharTok().encode
  conv = converters.Converter(CharTok(), Lengths(hyper=40, encoder=8, decoder=20), 'concat',
                              query_in_decoder=True, decoder_recall=3)
  moved_counts = set()
  for ep, b, kept, moved in _recall_rows(conv, 'encoder_inputs'):
    tgt, w = b['targets'][0].tolist(), b['target_weights'][0].tolist()
    moved_counts.add(len(moved))
    assert kept == list(ANSWERS)[:len(kept)]  # the last m demonstrations move
    want = _decoder_lookups(moved)
    assert tgt[:len(want)] == want and not any(tgt[len(want):])
    # Scored: each moved target, the query's target and EOS; read: the rest.
    scored = [t for t, x in zip(tgt, w) if x]
    assert scored == [*(c(ANSWERS[k])[0] for k in moved), *c('z'), EOS]
    assert (conv.train_batch([ep])['targets'] == b['targets']).all()
  assert moved_counts == {0, 1, 2, 3}
  with pytest.raises(ValueError, match='query_in_decoder'):
    converters.Converter(CharTok(), Lengths(8, 5, 3), 'concat', decoder_recall=2)
  with pytest.raises(ValueError, match='zero_shot'):
    converters.Converter(CharTok(), Lengths(8, 5, 3), 'zero_shot', query_in_decoder=True,
                         decoder_recall=2)
  # Hypermodel rows: the hypermodel reads the kept demonstrations, the encoder the query.
  hyper_recall = converters.Converter(CharTok(), Lengths(hyper=40, encoder=8, decoder=20),
                                      'hyper', query_in_decoder=True, decoder_recall=3)
  seen = set()
  for ep, b, kept, moved in _recall_rows(hyper_recall, 'hyper_inputs'):
    seen.add(len(moved))
    hyp = [i for i in b['hyper_inputs'][0].tolist() if i]
    assert hyp == [t for k in kept for t in (X, *c(k), Y, *c(ANSWERS[k]))] + [EOS]
    assert [i for i in b['encoder_inputs'][0].tolist() if i] == [*c('q'), EOS]
    assert b['hyper_num_used'][0] == len(kept)
    want = _decoder_lookups(moved)
    assert b['targets'][0].tolist()[:len(want)] == want
    assert [t for t, x in zip(b['targets'][0].tolist(), b['target_weights'][0]) if x] == [
        *(c(ANSWERS[k])[0] for k in moved), *c('z'), EOS]
  assert seen == {0, 1, 2, 3}
  # Hypermodel rows: the downstream's encoder keeps the query, its decoder reads it again.
  hyper = converters.Converter(CharTok(), Lengths(hyper=40, encoder=8, decoder=10), 'hyper',
                               query_in_decoder=True)
  b = hyper.train_batch([ep])
  assert [i for i in b['encoder_inputs'][0].tolist() if i] == [*c('q'), EOS]
  assert [t for t, x in zip(b['targets'][0].tolist(), b['target_weights'][0]) if x] == [
      *c('z'), EOS]
  assert b['targets'][0].tolist()[:3] == [X, *c('q'), Y]


def test_zero_shot_mode_has_only_query_fields():
  conv = converters.Converter(CharTok(), Lengths(8, 5, 3), 'zero_shot')
  b = conv.train_batch([_episode([('a', 'b')], query=('hi', 'x'))])
  assert sorted(b) == ['decoder_inputs', 'encoder_inputs', 'target_weights',
                       'targets']
  assert b['encoder_inputs'][0].tolist() == [*CharTok().encode('hi'), EOS, 0, 0]


def test_truncation_is_counted_and_logged(caplog):
  conv = converters.Converter(CharTok(), Lengths(8, 4, 3), 'hyper')
  ep = _episode([('abcdefgh', 'x')], query=('longquery', 'target'), task='tk')
  with caplog.at_level(logging.INFO, logger='hyperflax.data'):
    b = conv.train_batch([ep])
  assert b['encoder_inputs'][0, -1] == EOS and b['targets'][0, -1] == EOS
  assert b['hyper_num_dropped'].tolist() == [1]
  counts = conv.stats.summary()['tk']
  assert counts == {'queries_truncated': 1, 'targets_truncated': 1,
                    'demos_dropped_to_fit': 1}
  logged = caplog.text
  assert 'queries_truncated' in logged and 'targets_truncated' in logged
  assert 'demos_dropped_to_fit' in logged


def test_choice_batches_one_row_per_option_with_padding():
  conv = converters.Converter(CharTok(), Lengths(16, 6, 4), 'hyper')
  task = EvalTaskData('t', [Example('d', 'y')],
                      [Example('q1', 'b', ('a', 'b')),
                       Example('q2', 'c', ('a', 'b', 'c'))])
  eps = fewshot.eval_episodes(task, task_index=3)
  batches = list(conv.choice_batches(eps, batch_size=4))
  assert len(batches) == 2
  b = np.concatenate([x['example_index'] for x in batches])
  assert b.tolist() == [0, 0, 1, 1, 1, 0, 0, 0]
  pad = np.concatenate([x['is_padding'] for x in batches])
  assert pad.tolist() == [False] * 5 + [True] * 3
  assert np.concatenate([x['option_index'] for x in batches])[:5].tolist() == [
      0, 1, 0, 1, 2]
  assert np.concatenate([x['label'] for x in batches])[:5].tolist() == [
      1, 1, 2, 2, 2]
  assert batches[0]['task_index'].tolist() == [3, 3, 3, 3]
  # Targets hold the option text; padding rows weigh nothing.
  c = CharTok().encode
  assert batches[0]['targets'][2].tolist()[:2] == [*c('a'), EOS]
  assert batches[1]['target_weights'][1:].sum() == 0


# ---- sampling, determinism, resumption -------------------------------------------

def _tasks(n_tasks=5, n=40):
  return [FewShotTask(f't{t}', [Example(f'in {t} {i}', f'out {t} {i % 3}')
                                for i in range(n)]) for t in range(n_tasks)]


def test_sampler_demos_disjoint_from_target_and_deterministic():
  s1 = fewshot.EpisodeSampler(_tasks(), num_shots=16, seed=7)
  s2 = fewshot.EpisodeSampler(_tasks(), num_shots=16, seed=7)
  for step in range(20):
    e1, e2 = s1.episodes(step, 8), s2.episodes(step, 8)
    assert e1 == e2
    for ep in e1:
      assert len(ep.demos) == 16 and ep.query not in ep.demos
      assert len(set(ep.demos)) == 16
      assert all(d.input.split()[1] == ep.query.input.split()[1]
                 for d in ep.demos)  # same task
  assert s1.episodes(0, 8) != fewshot.EpisodeSampler(_tasks(), 16, 8).episodes(0, 8)


def test_small_pool_gives_fewer_demos_never_the_target():
  tasks = [FewShotTask('tiny', [Example(str(i), 'o') for i in range(5)])]
  sampler = fewshot.EpisodeSampler(tasks, num_shots=16, seed=0)
  for ep in sampler.episodes(0, 10):
    assert len(ep.demos) == 4 and ep.query not in ep.demos
  assert sampler.stats.total('episodes_with_fewer_demos_than_k') == 10


def test_synthetic_stream_is_deterministic_and_resumable():
  kw = dict(batch_size=4, seed=11, vocab_path='words')
  a = iter(registry.get_dataset('synthetic_fewshot', **kw))
  full = [next(a) for _ in range(6)]
  again = iter(registry.get_dataset('synthetic_fewshot', **kw))
  resumed = iter(registry.get_dataset('synthetic_fewshot', start_step=3, **kw))
  for i in range(6):
    b = next(again)
    assert all(np.array_equal(b[k], full[i][k]) for k in full[i])
  for i in range(3, 6):
    b = next(resumed)
    assert all(np.array_equal(b[k], full[i][k]) for k in full[i])
  other = next(iter(registry.get_dataset('synthetic_fewshot', batch_size=4,
                                         seed=12, vocab_path='words')))
  assert not np.array_equal(other['hyper_inputs'], full[0]['hyper_inputs'])


def test_synthetic_caclm_is_resumable_and_segments_are_marked():
  kw = dict(batch_size=3, seed=5, vocab_path='words', num_docs=60)
  full = [b for _, b in zip(range(5), registry.get_dataset('synthetic_caclm', **kw))]
  resumed = registry.get_dataset('synthetic_caclm', start_step=2, **kw)
  for i, b in zip(range(2, 5), resumed):
    assert all(np.array_equal(b[k], full[i][k]) for k in b)
  seg = registry.SYNTHETIC_CACLM_SEGMENTS
  h = full[0]['hyper_inputs'][0]
  assert h[0] == vocab.SEGMENT_A_ID and h[1 + seg.a] == vocab.SEGMENT_D_ID
  assert h[2 + seg.a + seg.d] == EOS
  assert full[0]['encoder_inputs'].shape == (3, seg.b + 1)
  assert full[0]['target_weights'].sum() == 3 * seg.c


def test_streamed_caclm_resumes_by_skipping_documents():
  from hyperflax.data import caclm
  texts = [' '.join(f'w{i}_{j}' for j in range(7 + i % 13)) for i in range(400)]
  tok = lambda t: [int(w.split('_')[1]) + 3 for w in t.split()]
  def open_at(skip):
    return iter(texts[skip:] + texts)  # a long enough stream
  seg = caclm.Segments(4, 2, 3, 4)
  def stream(start):
    return caclm.CaclmStream(caclm.StreamedDocs(open_at, tok, start * 2), 2,
                             seed=1, segments=seg, start_step=start)
  full = [b for _, b in zip(range(8), stream(0))]
  for i, b in zip(range(5, 8), stream(5)):
    assert all(np.array_equal(b[k], full[i][k]) for k in b)


# ---- errors ------------------------------------------------------------------------

def test_malformed_line_names_file_and_line(tmp_path):
  p = tmp_path / 'x_16_1_train.jsonl'
  p.write_text('{"input": "a", "output": "b", "options": []}\n{"input": \n')
  with pytest.raises(ValueError, match=rf'{p}:2: malformed JSON'):
    sources_metaicl.read_metaicl_file(p)


def test_missing_field_names_file_line_and_field(tmp_path):
  p = tmp_path / 'y.jsonl'
  p.write_text('{"input": "a", "output": "b"}\n\n{"input": "c"}\n')
  with pytest.raises(ValueError, match=rf"{p}:3: missing field 'output'"):
    sources_metaicl.read_metaicl_file(p)
  t0 = tmp_path / 't0.jsonl'
  t0.write_text('{"prompt": "p", "completion": "c<|endoftext|>"}\n{"prompt": "q"}\n')
  with pytest.raises(ValueError, match=rf"{t0}:2: missing field 'completion'"):
    sources_p3.read_t0_file(t0)
  sni = tmp_path / 'task1.json'
  sni.write_text(json.dumps({'Positive Examples': [], 'Instances': []}))
  with pytest.raises(ValueError, match=rf"{sni}: missing field 'Definition'"):
    sources_sni.read_task(sni)


def test_missing_files_raise_with_path(tmp_path):
  with pytest.raises(FileNotFoundError, match='nope.jsonl'):
    sources_metaicl.read_metaicl_file(tmp_path / 'nope.jsonl')
  with pytest.raises(FileNotFoundError, match=str(tmp_path / 'no.model')):
    vocab.load_vocabulary(tmp_path / 'no.model')
  with pytest.raises(FileNotFoundError, match='hr_to_lr.json'):
    sources_metaicl.train_tasks(tmp_path, 'hr_to_lr')


def test_missing_task_is_counted_or_raises_when_strict(tmp_path, caplog):
  (tmp_path / 'config').mkdir()
  (tmp_path / 'config' / 's.json').write_text(
      json.dumps({'train': ['have', 'lack'], 'test': []}))
  d = tmp_path / 'data' / 'have'
  d.mkdir(parents=True)
  (d / 'have_16_13_train.jsonl').write_text(
      '{"input": "a", "output": "b", "options": []}\n'
      '{"input": "c", "output": "d", "options": []}\n')
  with caplog.at_level(logging.INFO, logger='hyperflax.data'):
    stats = fewshot.DataStats('s')
    tasks = sources_metaicl.train_tasks(tmp_path, 's', stats=stats)
  assert [t.name for t in tasks] == ['have'] and len(tasks[0].examples) == 2
  assert stats.summary()['lack'] == {'task_skipped_missing_file': 1}
  assert 'lack_16384_100_train.jsonl not found' in caplog.text
  with pytest.raises(FileNotFoundError, match='lack_16384_100_train.jsonl'):
    sources_metaicl.train_tasks(tmp_path, 's', strict=True)


def test_unknown_name_split_or_option_raise():
  with pytest.raises(ValueError, match='unknown dataset'):
    registry.get_dataset('nope', batch_size=1)
  with pytest.raises(ValueError, match='unknown option'):
    registry.get_dataset('synthetic_fewshot', batch_size=1, vocab_path='words',
                         max_queris=3)
  with pytest.raises(ValueError, match='unknown synthetic split'):
    registry.get_eval_tasks('synthetic_fewshot', 'bogus', vocab_path='words')
  with pytest.raises(ValueError, match='mode'):
    registry.get_dataset('synthetic_fewshot', batch_size=1, vocab_path='words',
                         mode='prefix')


def test_data_core_does_not_import_tensorflow():
  import subprocess
  code = ('import sys, hyperflax.data as d; d.get_dataset("synthetic_fewshot",'
          ' batch_size=2, vocab_path="words"); '
          'print("tensorflow" in sys.modules, "seqio" in sys.modules)')
  out = subprocess.run([sys.executable, '-c', code], capture_output=True,
                       text=True, check=True,
                       cwd=Path(__file__).resolve().parents[1])
  assert out.stdout.split() == ['False', 'False']


def test_iter_jsonl_rejects_non_objects(tmp_path):
  p = tmp_path / 'z.jsonl'
  p.write_text('[1, 2]\n')
  with pytest.raises(ValueError, match=rf'{p}:1: expected a JSON object'):
    list(io_utils.iter_jsonl(p))


def test_majority_answer_baseline_by_hand():
  ex = lambda i, o: Example(i, o, ('blue', 'red', 'sun'))
  demos = [ex('a', 'red'), ex('b', 'red'), ex('c', 'blue'), ex('d', 'moon')]
  # 'red' is the demonstrations' most frequent option: right on q1 and q3, wrong on q2.
  task = EvalTaskData('t', demos, [ex('q1', 'red'), ex('q2', 'blue'), ex('q3', 'red')])
  assert task.majority == pytest.approx(2 / 3)
  # A tie between red and blue is a coin flip between them; sun (0 demos) never wins.
  tied = EvalTaskData('t', demos + [ex('e', 'blue')], [ex('q1', 'red'), ex('q2', 'sun')])
  assert tied.majority == pytest.approx((1 / 2 + 0) / 2)
  # No demonstration gives any option: a uniform guess, i.e. chance.
  none = EvalTaskData('t', [ex('a', 'moon')], [ex('q', 'red')])
  assert none.majority == pytest.approx(none.chance) == pytest.approx(1 / 3)
  assert EvalTaskData('t', [], [ex('q', 'red')]).majority is None
