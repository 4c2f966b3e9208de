"""The synthetic suite: demonstrations are necessary and sufficient."""

import collections
import logging
import os
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hyperflax.data import registry, synthetic, vocab  # noqa: E402

SHARED = Path(os.environ.get('HYPERFLAX_SHARED_DATA') or
              Path(__file__).resolve().parents[1].parent / 'shared' / 'data')
SPIECE = SHARED / 't5' / 'spiece.model'

SUITE = synthetic.SyntheticSuite(seed=0, train_tasks_per_family=60,
                                 heldout_tasks_per_family=12)


def _oracle(family: str, demos, query) -> str:
  """Answers from the demonstrations alone, as a model that reads them could."""
  words = query.input.split()
  if family.startswith('lookup'):
    key = words[0] if family == 'lookup' else words[-1]
    hits = [d.target for d in demos
            if (d.input.split()[0] if family == 'lookup' else d.input.split()[-1]) == key]
    return hits[0] if hits else ''
  if family.startswith('category'):
    word = words[0] if family == 'category' else words[-1]
    food = word in synthetic.FOODS
    hits = [d.target for d in demos if
            ((d.input.split()[0] if family == 'category' else d.input.split()[-1])
             in synthetic.FOODS) == food]
    return hits[0] if hits else ''
  parts = [w for w in words if w != ',']
  positions = [[w for w in d.input.split() if w != ','].index(d.target)
               for d in demos]
  return parts[collections.Counter(positions).most_common(1)[0][0]]


def test_generation_is_deterministic_and_tasks_are_distinct():
  again = synthetic.SyntheticSuite(seed=0, train_tasks_per_family=60,
                                   heldout_tasks_per_family=12)
  assert SUITE.train_tasks()[5].examples == again.train_tasks()[5].examples
  other = synthetic.SyntheticSuite(seed=1, train_tasks_per_family=60)
  assert SUITE.train_tasks()[0].examples != other.train_tasks()[0].examples
  train = {t.name for t in SUITE.train_tasks()}
  evals = SUITE.eval_tasks('validation')
  assert not train & {t.name for t in evals}
  fams = {t.group.split(':')[1] for t in evals if t.group.startswith('heldout_family')}
  assert fams == {'lookup_pseudo', 'category_dash', 'select_comma'}
  assert not fams & {t.group for t in SUITE.train_tasks()}
  # Held-out lookup keys are pseudo-words never used by a training task.
  train_words = {w for t in SUITE.train_tasks() for e in t.examples
                 for w in e.input.split()}
  pseudo = {e.input.split()[-1] for t in evals if 'lookup_pseudo' in t.group
            for e in t.queries}
  assert pseudo and not pseudo & train_words


def test_demonstrations_suffice_and_queries_alone_are_at_chance():
  evals = SUITE.eval_tasks('validation', num_shots=16, max_queries=32)
  # Query-only baseline: the best answer per input over all training tasks.
  votes = collections.defaultdict(collections.Counter)
  for t in SUITE.train_tasks():
    for e in t.examples:
      votes[e.input][e.target] += 1
  per_family = collections.defaultdict(list)
  for t in evals:
    fam = t.group.split(':')[1]
    for q in t.queries:
      assert q.target in q.options and len(set(q.options)) == len(q.options)
      assert all(not (d.input == q.input and d.target == q.target) for d in t.demos)
      oracle_ok = _oracle(fam, t.demos, q) == q.target
      guess = votes[q.input].most_common(1)[0][0] if votes[q.input] else None
      per_family[fam].append((oracle_ok, guess == q.target, 1 / len(q.options)))
  for fam, rows in per_family.items():
    oracle, query_only, chance = (np.mean([r[i] for r in rows]) for i in range(3))
    assert oracle >= 0.97, (fam, oracle)
    # Memorising inputs across tasks cannot beat chance by much.
    assert query_only <= chance + 0.1, (fam, query_only, chance)
  assert synthetic.chance_accuracy(evals) == pytest.approx((1/3 + 1/2 + 1/3) / 3)


def test_same_query_has_different_answers_across_tasks():
  tasks_of, answers_of = (collections.defaultdict(set) for _ in range(2))
  for t in SUITE.train_tasks():
    for e in t.examples:
      tasks_of[e.input].add(t.name)
      answers_of[e.input].add(e.target)
  shared = [i for i, ts in tasks_of.items() if len(ts) > 1]
  conflicting = [i for i in shared if len(answers_of[i]) > 1]
  assert len(shared) > 1000 and len(conflicting) > 0.8 * len(shared)


def test_word_vocabulary_fallback_when_spiece_missing(tmp_path, caplog):
  missing = tmp_path / 't5' / 'spiece.model'
  with caplog.at_level(logging.WARNING, logger='hyperflax.data'):
    stream = registry.get_dataset('synthetic_fewshot', batch_size=4,
                                  vocab_path=missing, train_tasks_per_family=5)
  assert str(missing) in caplog.text
  b = stream.batch(0)
  tok = synthetic.word_tokenizer()
  for row, ep in enumerate(stream.episodes(0)):
    assert tok.decode(vocab.strip_eos(b['targets'][row])) == ep.query.target
    assert tok.decode(vocab.strip_eos(b['encoder_inputs'][row])) == ep.query.input
  with pytest.raises(FileNotFoundError, match=str(missing)):
    registry.get_dataset('metaicl_hr_to_lr', batch_size=1, vocab_path=missing)


@pytest.mark.skipif(not SPIECE.is_file(), reason=f'T5 vocab not found at {SPIECE}')
def test_t5_tokenised_batches_fit_default_lengths_and_decode():
  stream = registry.get_dataset('synthetic_fewshot', batch_size=16, seed=3,
                                vocab_path=SPIECE, train_tasks_per_family=20)
  tok = vocab.load_vocabulary(SPIECE)
  for step in range(4):
    b, eps = stream.batch(step), stream.episodes(step)
    assert b['hyper_inputs'].shape == (16, synthetic.LENGTHS.hyper)
    assert (b['hyper_num_dropped'] == 0).all() and (b['hyper_num_used'] == 16).all()
    for row, ep in enumerate(eps):
      h = b['hyper_inputs'][row]
      assert (h == vocab.X_ID).sum() == 16 and (h == vocab.Y_ID).sum() == 16
      text = tok.decode(vocab.strip_eos(h))
      assert text.startswith('<x> ' + ep.demos[0].input + ' <y> ' + ep.demos[0].target)
      assert tok.decode(vocab.strip_eos(b['targets'][row])) == ep.query.target
  assert stream.stats.total('queries_truncated') == 0
  assert stream.stats.total('targets_truncated') == 0


def test_eval_scoring_batches_cover_every_option():
  tasks = registry.get_eval_tasks('synthetic_fewshot', 'heldout_families',
                                  vocab_path='words', max_queries=5,
                                  heldout_tasks_per_family=2)
  assert len(tasks) == 6 and all(t.has_options for t in tasks)
  for task in tasks:
    rows = [b for b in task.batches(batch_size=8)]
    ex = np.concatenate([b['example_index'] for b in rows])
    pad = np.concatenate([b['is_padding'] for b in rows])
    n_opts = sum(len(q.options) for q in task.queries)
    assert (~pad).sum() == n_opts and ex[~pad].max() == len(task.queries) - 1
    labels = np.concatenate([b['label'] for b in rows])[~pad]
    opt = np.concatenate([b['option_index'] for b in rows])[~pad]
    for i, q in enumerate(task.queries):
      assert set(labels[ex[~pad] == i]) == {q.options.index(q.target)}
      assert sorted(opt[ex[~pad] == i]) == list(range(len(q.options)))


def test_synthetic_caclm_context_holds_the_facts_of_the_continuation():
  stream = registry.get_dataset('synthetic_caclm', batch_size=8, seed=0,
                                vocab_path='words', num_docs=40)
  tok = synthetic.word_tokenizer()
  b = stream.batch(0)
  seg = registry.SYNTHETIC_CACLM_SEGMENTS
  found = total = 0
  for r in range(8):
    h = b['hyper_inputs'][r]
    context = tok.decode(h[1:1 + seg.a]) + ' . ' + tok.decode(h[2 + seg.a:2 + seg.a + seg.d])
    facts = set(zip(context.split(), context.split()[1:], context.split()[2:]))
    c = tok.decode(b['targets'][r]).split()
    for i in range(len(c) - 2):
      if c[i + 1] in ('is', 'has'):
        total += 1
        found += (c[i], c[i + 1], c[i + 2]) in facts
  # Most facts of C are stated in A or D (B's 16 tokens hold ~3 sentences).
  assert total > 20 and found / total > 0.8
  words = set(' '.join(synthetic.synthetic_documents(200)).split())
  assert not words & set(synthetic.HELDOUT_KEYS)


def test_heldout_tasks_do_not_depend_on_the_training_set_size():
  # Held-out tasks sit past every training index: a larger training set
  # (option `train_tasks_per_family`) must not swallow them.
  small = synthetic.SyntheticSuite(train_tasks_per_family=2, heldout_tasks_per_family=2)
  big = synthetic.SyntheticSuite(train_tasks_per_family=60, heldout_tasks_per_family=2)
  a, b = small.eval_tasks('heldout_tasks'), big.eval_tasks('heldout_tasks')
  assert [t.demos for t in a] == [t.demos for t in b]
  assert not {t.name for t in b} & {t.name for t in big.train_tasks()}


def test_probe_family_and_label_subset():
  task = synthetic.probe_task(0)
  keys = {e.input.split()[0] for e in task.demos + task.queries}
  assert keys <= set(synthetic.PROBE_KEYS) and all('has' in e.input for e in task.queries)
  # Probe keys appear in no training task, held-out family or CACLM text.
  words = {w for t in SUITE.train_tasks() for e in t.examples for w in e.input.split()}
  words |= {w for t in SUITE.eval_tasks('validation') for e in t.demos for w in e.input.split()}
  words |= set(' '.join(synthetic.synthetic_documents(50)).split())
  assert not words & set(synthetic.PROBE_KEYS)
  # A query's key is among the demonstrations' (the rule is revealed).
  assert keys == {e.input.split()[0] for e in task.demos}
  last = synthetic.probe_task(0, key_last=True)
  assert {e.input.split()[-1] for e in last.queries} <= set(synthetic.PROBE_KEYS)
  assert all(e.input.split()[1] == 'has' for e in last.demos + last.queries)
  few = synthetic.SyntheticSuite(train_tasks_per_family=5, num_labels=12)
  outs = {e.target for t in few.train_tasks() + few.eval_tasks('validation')
          for e in getattr(t, 'examples', ()) or t.queries}
  assert outs <= set(synthetic.LABELS[:12])


def test_varied_layouts_keep_heldout_surfaces_unseen():
  fixed = synthetic.SyntheticSuite(train_tasks_per_family=30, pool_size=20, many_keys=True)
  varied = synthetic.SyntheticSuite(train_tasks_per_family=30, pool_size=20, many_keys=True,
                                    layouts='varied')
  words = {w for t in varied.train_tasks() for e in t.examples for w in e.input.split()}
  # Several training separators and both key orders occur ...
  assert len(words & set(synthetic.TRAIN_SEPS)) >= 5
  firsts = {e.input.split()[0].isdigit() for t in varied.train_tasks()
            if t.group == 'lookup' for e in t.examples}
  assert firsts == {True, False}
  # ... but no held-out family's separator and no probe-family word.
  assert not words & {':', '-', ',', 'has'}
  # One layout per task: every example of a task has the same non-key tokens.
  for t in varied.train_tasks():
    if t.group == 'lookup':
      shapes = {tuple(w if w in synthetic.TRAIN_SEPS else '*' for w in e.input.split())
                for e in t.examples}
      assert len({tuple(x for x in s if x != '*') for s in shapes}) == 1
  # Held-out families and the answers are the fixed suite's: evaluation is comparable.
  for a, b in zip(fixed.eval_tasks('heldout_families'), varied.eval_tasks('heldout_families')):
    assert a.demos == b.demos and a.queries == b.queries
  tok = synthetic.word_tokenizer()
  assert all(tok.encode(s) for s in synthetic.TRAIN_SEPS)
  with pytest.raises(ValueError, match='layouts'):
    synthetic.SyntheticSuite(layouts='random')


def test_train_families_and_key_last_layouts():
  suite = synthetic.SyntheticSuite(train_tasks_per_family=10, pool_size=20, many_keys=True,
                                   train_families=('lookup',), layouts='varied_key_last')
  tasks = suite.train_tasks()
  assert {t.group for t in tasks} == {'lookup'} and len(tasks) == 10
  # The key (a word) is always last, the number first.
  assert all(e.input.split()[0].isdigit() and not e.input.split()[-1].isdigit()
             for t in tasks for e in t.examples)
  # Evaluation splits do not depend on the training subset.
  assert {t.group for t in suite.eval_tasks('heldout_tasks')} == {
      'heldout_task:lookup', 'heldout_task:category', 'heldout_task:select'}
  with pytest.raises(ValueError, match='train_families'):
    synthetic.SyntheticSuite(train_families=('lookup_pseudo',))


def _compact_of(ids, n_words):
  """The compact id of each original id, by the rule the docstring states (sentinels and
  <x>/<y>, 32000..32101, follow the words), written out independently of the map."""
  ids = np.asarray(ids)
  return np.where(ids >= vocab.NUM_PIECES, ids - vocab.NUM_PIECES + n_words, ids)


@pytest.mark.parametrize('mode,options', [
    ('hyper', {}),
    ('concat', {'query_in_decoder': True, 'decoder_recall': 4}),
    ('concat', {'recall_slots': 4}),
])
def test_compact_word_ids_are_the_word_batches_renumbered(mode, options):
  words, compact = synthetic.word_tokenizer('words'), synthetic.word_tokenizer('words_compact')
  n = len(words._ids) + 3  # pylint: disable=protected-access
  assert compact.vocab_size == n + vocab.NUM_EXTRA_IDS + 2 < 6000
  lengths = (192, 136, 56) if options.get('query_in_decoder') else (192, 136, 16)
  kw = dict(batch_size=8, mode=mode, lengths=lengths, train_tasks_per_family=20, **options)
  a = registry.get_dataset('synthetic_fewshot', vocab_path='words', **kw).batch(3)
  b = registry.get_dataset('synthetic_fewshot', vocab_path='words_compact', **kw).batch(3)
  assert a.keys() == b.keys()
  specials = 0
  for k, v in a.items():
    if v.dtype == np.int32 and k in ('hyper_inputs', 'encoder_inputs', 'decoder_inputs',
                                     'targets'):
      np.testing.assert_array_equal(b[k], _compact_of(v, n), err_msg=k)
      assert b[k].max() < compact.vocab_size
      specials += int((v >= vocab.NUM_PIECES).sum())
      for row_a, row_b in zip(v, b[k]):
        assert compact.decode(row_b) == words.decode(row_a)
    else:
      np.testing.assert_array_equal(b[k], v, err_msg=k)
  assert specials > 0  # the renumbering was exercised


def test_compact_word_ids_in_caclm_and_eval_rows():
  compact = synthetic.word_tokenizer('words_compact')
  n = len(compact._ids) + 3  # pylint: disable=protected-access
  a = registry.get_dataset('synthetic_caclm', batch_size=2, vocab_path='words').batch(0)
  b = registry.get_dataset('synthetic_caclm', batch_size=2, vocab_path='words_compact').batch(0)
  for k in ('hyper_inputs', 'encoder_inputs', 'targets'):
    np.testing.assert_array_equal(b[k], _compact_of(a[k], n), err_msg=k)
  assert (a['hyper_inputs'] == vocab.SEGMENT_A_ID).any()
  tasks = registry.get_eval_tasks('synthetic_fewshot', 'heldout_families', mode='concat',
                                  lengths=(192, 136, 16), vocab_path='words_compact',
                                  max_queries=2, heldout_tasks_per_family=1)
  batch = next(iter(tasks[0].batches(4)))
  assert batch['encoder_inputs'].max() < compact.vocab_size
  assert (batch['encoder_inputs'] == _compact_of(vocab.X_ID, n)).sum() > 0


def test_compact_word_ids_refuse_foreign_ids():
  compact = synthetic.word_tokenizer('words_compact')
  with pytest.raises(ValueError, match='no row in the compact vocabulary'):
    compact.to_model_ids(np.array([5, 20000]))
  with pytest.raises(ValueError, match='expected one of'):
    synthetic.word_tokenizer('word')
