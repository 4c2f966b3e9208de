"""Every shared data sample, loaded through the registered names.

Checks compare batches with the raw files read independently here (json /
sentencepiece directly): token counts, marker positions, targets decoding back
to the gold text, demonstrations never equal to the target example.
"""

import bz2
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hyperflax.data import registry, sources_metaicl, vocab  # noqa: E402

SHARED = Path(os.environ.get('HYPERFLAX_SHARED_DATA') or
              Path(__file__).resolve().parents[1].parent / 'shared' / 'data')
pytestmark = pytest.mark.skipif(
    not (SHARED / 't5' / 'spiece.model').is_file(),
    reason=f'shared data not found at {SHARED} (set HYPERFLAX_SHARED_DATA)')

X, Y, EOS = vocab.X_ID, vocab.Y_ID, vocab.EOS_ID


@pytest.fixture(scope='module')
def sp():
  import sentencepiece
  return sentencepiece.SentencePieceProcessor(
      model_file=str(SHARED / 't5' / 'spiece.model'))


def _segments(row):
  """Splits hyper ids into [(input ids, target ids)] at the markers."""
  ids = vocab.strip_eos(row)
  assert ids and ids[0] == X, 'few-shot string must start with <x>'
  segs, cur = [], None
  for i in ids:
    if i == X:
      cur = [[], None]
      segs.append(cur)
    elif i == Y:
      assert cur[1] is None, 'two <y> in one example'
      cur[1] = []
    else:
      (cur[0] if cur[1] is None else cur[1]).append(i)
  return segs


def _check_fewshot_batch(b, eps, sp, lengths, definition=False):
  """Independent re-tokenisation of each raw episode against the batch."""
  for row, ep in enumerate(eps):
    h = b['hyper_inputs'][row]
    n = int((h != 0).sum())
    assert h[n - 1] == EOS and not h[n:].any() and n <= lengths.hyper
    segs = _segments(h)
    if definition:
      d_ids, d_tgt = segs.pop(0)
      assert d_tgt is None and d_ids == sp.encode(ep.definition)[:len(d_ids)]
    assert len(segs) == b['hyper_num_used'][row]
    assert len(segs) + b['hyper_num_dropped'][row] == len(ep.demos)
    expected = [(sp.encode(d.input), sp.encode(d.target)) for d in ep.demos]
    for seg in segs:
      assert tuple(map(list, seg)) in [tuple(e) for e in expected]
    if not b['hyper_num_dropped'][row]:
      assert n == 1 + (1 if definition else 0) + len(sp.encode(ep.definition or '')) * definition + sum(
          len(i) + len(o) + 2 for i, o in expected)
    for d in ep.demos:
      assert (d.input, d.target) != (ep.query.input, ep.query.target)
    q = sp.encode(ep.query.input)[:lengths.encoder - 1] + [EOS]
    assert b['encoder_inputs'][row][:len(q)].tolist() == q
    tgt = vocab.strip_eos(b['targets'][row])
    assert sp.decode(tgt) == sp.decode(sp.encode(ep.query.target)[:lengths.decoder - 1])
    assert b['target_weights'][row].sum() == len(tgt) + (len(tgt) < lengths.decoder)


# ---- MetaICL -------------------------------------------------------------------------

def test_metaicl_test_tasks_never_train_and_are_named_in_the_log(caplog):
  caplog.set_level('WARNING', logger='hyperflax.data')
  tasks = sources_metaicl.train_tasks(SHARED / 'metaicl', 'non_nli_to_nli')
  cfg = json.loads((SHARED / 'metaicl/config/non_nli_to_nli.json').read_text())
  assert 'sick' in cfg['train'] and 'sick' in cfg['test']  # the upstream overlap
  assert 'sick' not in {t.name for t in tasks}
  assert any('removed from the training list: sick' in r.getMessage() for r in caplog.records)
  report = registry.data_report('metaicl_non_nli_to_nli', data_dir=SHARED)
  assert report['counts']['test_task_removed_from_training'] == 1
  assert report['by_task']['sick'] == {'test_task_removed_from_training': 1}
  for split in ('hr_to_lr', 'non_class_to_class'):  # no overlap there: nothing removed
    assert 'test_task_removed_from_training' not in registry.data_report(
        f'metaicl_{split}', data_dir=SHARED)['counts']


@pytest.mark.parametrize('split', sources_metaicl.SPLITS)
def test_metaicl_training_batches_match_raw_files(split, sp):
  name = f'metaicl_{split}'
  stream = registry.get_dataset(name, batch_size=8, seed=1, data_dir=SHARED)
  cfg = json.loads((SHARED / 'metaicl' / 'config' / f'{split}.json').read_text())
  test = set(cfg['test']) | set(cfg.get('unseen_domain_test', ()))
  present = [t for t in cfg['train'] if (SHARED / 'metaicl' / 'data' / t).is_dir()]
  assert sorted(t.name for t in stream.tasks) == sorted(set(present) - test)
  for step in (0, 1):
    eps = stream.episodes(step)
    b = stream.batch(step)
    _check_fewshot_batch(b, eps, sp, registry.Lengths())
    for ep in eps:  # the gold pair is a line of the task's own k=16 files
      raw = set()
      for f in (SHARED / 'metaicl' / 'data' / ep.task).glob('*_16_*_*.jsonl'):
        if not f.name.endswith('_test.jsonl'):
          raw |= {(o['input'], o['output']) for o in map(json.loads, f.open())}
      assert (ep.query.input, ep.query.target) in raw


def test_metaicl_eval_demos_from_train_file_queries_from_test_file(sp):
  tasks = registry.get_eval_tasks('metaicl_non_nli_to_nli', 'test',
                                  data_dir=SHARED, max_queries=6)
  cfg = json.loads((SHARED / 'metaicl/config/non_nli_to_nli.json').read_text())
  assert [t.name for t in tasks] == cfg['test']
  for task in tasks:
    d = SHARED / 'metaicl' / 'data' / task.name
    demos = [json.loads(l) for l in open(d / f'{task.name}_16_100_train.jsonl')]
    tests = [json.loads(l) for l in open(d / f'{task.name}_16_100_test.jsonl')][:6]
    assert [(x.input, x.target) for x in task.demos] == [
        (o['input'], o['output']) for o in demos]
    assert [(x.input, x.target, list(x.options)) for x in task.queries] == [
        (o['input'], o['output'], o['options']) for o in tests]
    assert task.metric == 'macro_f1' and task.has_options
    for b in task.batches(batch_size=8):
      ok = ~b['is_padding']
      for r in np.flatnonzero(ok):
        q = task.queries[b['example_index'][r]]
        opt = q.options[b['option_index'][r]]
        assert sp.decode(vocab.strip_eos(b['targets'][r])) == sp.decode(sp.encode(opt))
        assert b['label'][r] == q.options.index(q.target)
        used = len(_segments(b['hyper_inputs'][r]))
        assert used == b['hyper_num_used'][r] > 0
        assert used + b['hyper_num_dropped'][r] == 16


def test_every_metaicl_file_parses():
  files = sorted((SHARED / 'metaicl' / 'data').glob('*/*.jsonl'))
  assert len(files) == 1228
  n = sum(len(sources_metaicl.read_metaicl_file(f)) for f in files)
  assert n == 221064


# ---- S-NI ----------------------------------------------------------------------------

@pytest.mark.parametrize('setting,npos', [('def', 0), ('def_2pos', 2)])
def test_sni_definition_segment_and_positive_examples(setting, npos, sp):
  stream = registry.get_dataset(f'sni_{setting}', batch_size=6, seed=0,
                                data_dir=SHARED)
  train_names = (SHARED / 'sni/splits/default/train_tasks.txt').read_text().split()
  present = {p.stem for p in (SHARED / 'sni' / 'tasks').glob('*.json')}
  assert sorted(t.name for t in stream.tasks) == sorted(set(train_names) & present)
  eps, b = stream.episodes(0), stream.batch(0)
  _check_fewshot_batch(b, eps, sp, registry.Lengths(), definition=True)
  for row, ep in enumerate(eps):
    raw = json.loads((SHARED / 'sni' / 'tasks' / f'{ep.task}.json').read_text())
    assert ep.definition == raw['Definition'][0]
    assert [(d.input, d.target) for d in ep.demos] == [
        (p['input'], p['output']) for p in raw['Positive Examples'][:npos]]
    assert b['hyper_num_used'][row] == npos
    segs = _segments(b['hyper_inputs'][row])
    assert segs[0][0] == sp.encode(raw['Definition'][0]) and segs[0][1] is None


def test_sni_test_tasks_first_100_instances_with_all_references():
  tasks = registry.get_eval_tasks('sni_def_2pos', 'test', data_dir=SHARED)
  test_names = (SHARED / 'sni/splits/default/test_tasks.txt').read_text().split()
  present = {p.stem for p in (SHARED / 'sni' / 'tasks').glob('*.json')}
  assert sorted(t.name for t in tasks) == sorted(set(test_names) & present)
  assert len(tasks) == 12
  for t in tasks:
    raw = json.loads((SHARED / 'sni' / 'tasks' / f'{t.name}.json').read_text())
    want = raw['Instances'][:100]
    assert len(t.queries) == len(want) == min(100, len(raw['Instances']))
    assert [(q.input, list(q.all_references)) for q in t.queries] == [
        (i['input'], i['output']) for i in want]
    assert t.metric == 'rouge_l' and not t.has_options
  batches = list(tasks[0].batches(batch_size=32))
  assert sum((~b['is_padding']).sum() for b in batches) == len(tasks[0].queries)


# ---- P3 ------------------------------------------------------------------------------

def test_p3_t0_train_filter_and_targets(sp):
  stream = registry.get_dataset('p3_t0_train', batch_size=8, seed=2,
                                data_dir=SHARED)
  names = {t.name for t in stream.tasks}
  assert len(names) == 225
  assert 'ag_news_classify' in names and 'xsum_DOC_tldr' not in names
  assert not any(n.startswith('trec_fine_grained_ABBR') for n in names)
  assert stream.stats.total('empty_file_skipped') == 11
  # HyperTuning Figure 6 (read from the paper's text here) vs. the shared copy.
  import re
  paper = (Path(__file__).resolve().parents[2] / 'shared' / 'papers' / 'hypertuning.md')
  report = stream.stats.reports['p3_figure6']
  if paper.is_file():
    text = paper.read_text().replace('\\_', '_')
    listed = text[text.index('adversarial_qa_dbert_answer_the_following_q'):
                  text.index('Figure 6: List of P3')]
    figure = [n.strip() for n in re.split(r'[,\n]', listed) if n.strip()]
    assert report['figure6_prompts'] == len(figure) == 241
  assert report['missing'] == [n for n in report['missing'] if n.startswith('cos_e_v1.11_')]
  assert report['num_missing'] == 11 and report['num_filtered'] == 0
  assert report['empty'] == sorted(f.stem for f in (SHARED / 'p3' / 't0_train').glob(
      'trec_fine_grained_*.jsonl') if f.stat().st_size == 0)
  assert report['num_present'] == 241 - 22
  assert report['kept_not_in_figure6'] == [
      'commonsense_qa_answer_given_question_without_options',
      'commonsense_qa_answer_to_question', 'commonsense_qa_most_suitable_answer',
      'commonsense_qa_question_answering', 'commonsense_qa_question_to_answer_index',
      'multi_news_expand_reverse_task_']
  assert set(report['kept_not_in_figure6']) <= names
  eps, b = stream.episodes(0), stream.batch(0)
  _check_fewshot_batch(b, eps, sp, registry.Lengths())
  for ep in eps:
    path = SHARED / 'p3' / 't0_train' / f'{ep.task}.jsonl'
    raw = [json.loads(l) for l in path.open()]
    gold = {(r['prompt'].strip(), r['completion'].removesuffix('<|endoftext|>').strip())
            for r in raw}
    assert (ep.query.input, ep.query.target) in gold
    assert '<|endoftext|>' not in ep.query.target


def test_p3_heldout_rank_classification_matches_raw_labels(sp):
  tasks = registry.get_eval_tasks('p3_heldout', data_dir=SHARED, max_queries=12)
  groups = {t.group for t in tasks}
  assert groups == {'anli', 'hellaswag', 'super_glue/cb', 'super_glue/copa',
                    'super_glue/rte', 'super_glue/wic', 'super_glue/wsc.fixed',
                    'winogrande/winogrande_xl'}
  by_name = {t.name: t for t in tasks}
  rte = by_name['super_glue/rte/GPT-3 style']
  raw = [json.loads(l) for l in open(
      SHARED / 'p3/eval/super_glue_rte.validation.superglue_raw.jsonl')]
  by_premise = {r['premise']: r for r in raw}
  for q in rte.queries:
    r = by_premise[q.input.split('\nQuestion:')[0]]
    assert q.options == ('True', 'False')
    assert q.target == ('True' if r['label'] == 'entailment' else 'False')
    assert r['hypothesis'] in q.input
  hs = by_name['hellaswag/complete_first_then']
  lines = bz2.open(SHARED / 'p3/eval/hellaswag.validation.klosax_6lines.txt.bz2',
                   'rt').read().split('\n')
  gold_of = {tuple(lines[i + 2:i + 6]): int(lines[i + 1])
             for i in range(0, len(lines) - 1, 6)}
  for q in hs.queries:
    assert q.target == q.options[gold_of[q.options]]
    assert q.options[0] in q.input  # choices are shown in this prompt
  for t in tasks:
    assert len(t.demos) <= 16 and t.queries and t.has_options
    demo_keys = {d.origin.split(' [')[0] for d in t.demos}
    assert not demo_keys & {q.origin.split(' [')[0] for q in t.queries}
  b = next(iter(rte.batches(batch_size=8)))
  for r in range(8):
    q = rte.queries[b['example_index'][r]]
    assert sp.decode(vocab.strip_eos(b['targets'][r])) == q.options[b['option_index'][r]]
    assert len(_segments(b['hyper_inputs'][r])) == b['hyper_num_used'][r] > 0


def test_p3_length_filter_drops_only_prompts_longer_than_the_threshold(tmp_path):
  d = tmp_path / 't0_train'
  d.mkdir()
  for name, words in (('a_at_threshold', (320, 320)), ('b_just_over', (320, 322)),
                      ('c_short', (5, 7))):
    with open(d / f'{name}.jsonl', 'w') as f:
      for i, n in enumerate(words):
        f.write(json.dumps({'prompt': ' '.join(['w'] * (n - 1) + [str(i)]),
                            'completion': f'y{i}<|endoftext|>'}) + '\n')

  class WordTokenizer:  # one token per word: averages are exact
    path = 'words'
    def encode_batch(self, texts):
      return [t.split() for t in texts]

  from hyperflax.data import sources_p3
  tasks = sources_p3.t0_train_tasks(tmp_path, WordTokenizer())
  assert [t.name for t in tasks] == ['a_at_threshold', 'c_short']  # 320.0 stays, 321.0 goes


# ---- C4 / CACLM ------------------------------------------------------------------------

def test_caclm_c4_windows_lie_inside_one_document(sp):
  stream = registry.get_dataset('caclm_c4', batch_size=4, seed=0,
                                data_dir=SHARED, use_tfds=False)
  docs = [json.loads(l)['text'] for l in open(SHARED / 'c4' / 'c4_sample.jsonl')]
  seg = registry.caclm_lib.Segments()
  assert seg.window == 512 and seg.b == 32
  ids = sp.encode(docs)
  train = [x for i, x in enumerate(ids) if i % 20 != 19]  # every 20th is held out
  short = sum(len(x) < seg.window for x in train)
  assert 0 < short < len(train)
  assert stream.stats.total('short_documents_skipped') == short
  # Document by document (not the joined corpus): a window never spans two.
  documents = [np.asarray(x, np.int32).tobytes() for x in train if len(x) >= seg.window]
  b = next(iter(stream))
  for r in range(4):
    h = b['hyper_inputs'][r]
    assert h[0] == vocab.sentinel_id(0) and h[1 + seg.a] == vocab.sentinel_id(1)
    assert h[2 + seg.a + seg.d] == EOS and not h[3 + seg.a + seg.d:].any()
    a, d = h[1:1 + seg.a], h[2 + seg.a:2 + seg.a + seg.d]
    bb = b['encoder_inputs'][r][:seg.b]
    assert b['encoder_inputs'][r][seg.b] == EOS
    c = b['targets'][r][:seg.c]
    window = np.concatenate([a, bb, c, d]).astype(np.int32).tobytes()
    assert any(doc.find(window) % 4 == 0 for doc in documents if window in doc)
    assert b['target_weights'][r].sum() == seg.c
  again = next(iter(registry.get_dataset('caclm_c4', batch_size=4, seed=0,
                                          data_dir=SHARED, use_tfds=False,
                                          start_step=0)))
  assert all(np.array_equal(again[k], b[k]) for k in b)


def test_every_template_file_parses_and_splits_prompt_from_target():
  from hyperflax.data import p3_templates
  files = sorted((SHARED / 'p3' / 'templates').rglob('templates.yaml'))
  assert len(files) == 45
  for f in files:
    tpls = p3_templates.load_templates(f)
    assert tpls and all(t.id and t.name for t in tpls)
    assert sum('|||' in t.jinja for t in tpls) >= len(tpls) - 1, f


def test_copa_and_winogrande_parsing_agree_with_the_llmfoundry_copies():
  from hyperflax.data import sources_p3_heldout as h
  copa = h.read_heldout(SHARED / 'p3', 'super_glue/copa')
  llm = [json.loads(l) for l in open(
      SHARED / 'p3/eval/super_glue_copa.validation.llmfoundry.jsonl')]
  assert len(copa) == len(llm) == 100
  for (f, _), ref in zip(copa, llm):
    assert ref['query'].startswith(f['premise'].rstrip('.'))
    joiner = ', therefore' if f['question'] == 'effect' else ' because'
    assert ref['query'].endswith(joiner)
    choices = [f['choice1'], f['choice2']]
    assert [c[0].lower() + c[1:] for c in choices] == ref['choices']
    assert f['label'] == ref['gold']
  wino = h.read_heldout(SHARED / 'p3', 'winogrande/winogrande_xl')
  llm = [json.loads(l) for l in open(
      SHARED / 'p3/eval/winogrande_xl.validation.llmfoundry.jsonl')]
  assert len(wino) == len(llm) == 1267
  for (f, _), ref in zip(wino, llm):
    before, after = f['sentence'].split('_', 1)
    assert ref['context_options'] == [before + f['option1'], before + f['option2']]
    assert ref['continuation'].strip() == after.strip()
    assert int(f['answer']) - 1 == ref['gold']
  for name in h.HELDOUT:  # the other held-out readers accept their files
    assert len(h.read_heldout(SHARED / 'p3', name)) >= 56


@pytest.mark.parametrize('name', ['metaicl_hr_to_lr', 'caclm_c4'])
def test_real_streams_resume_exactly(name):
  kw = dict(batch_size=4, seed=9, data_dir=SHARED)
  if name == 'caclm_c4':
    kw['use_tfds'] = False
  full = [b for _, b in zip(range(5), registry.get_dataset(name, **kw))]
  resumed = registry.get_dataset(name, start_step=3, **kw)
  for i, b in zip(range(3, 5), resumed):
    assert all(np.array_equal(b[k], full[i][k]) for k in b)
  assert not np.array_equal(full[0]['encoder_inputs'], full[1]['encoder_inputs'])


def test_eval_batches_are_deterministic_and_ordered():
  def run():
    stream = registry.get_dataset('metaicl_hr_to_lr', 'test', batch_size=8,
                                  data_dir=SHARED, max_queries=3)
    return stream, list(stream)
  (s1, b1), (_, b2) = run(), run()
  assert len(b1) == len(b2) > 0
  assert all(np.array_equal(x[k], y[k]) for x, y in zip(b1, b2) for k in x)
  order = [(int(t), int(e)) for b in b1
           for t, e, p in zip(b['task_index'], b['example_index'], b['is_padding'])
           if not p]
  assert order == sorted(order) and order[0] == (0, 0)
  assert {t for t, _ in order} == set(range(len(s1.tasks)))


# ---- MetaICL headline on generations (evaluate wiring) -------------------------------

def test_metaicl_headline_scores_generations_rank_classification_is_secondary(sp):
  from hyperflax import evaluate, metrics
  task = registry.get_eval_tasks('metaicl_non_nli_to_nli', 'test', data_dir=SHARED,
                                 max_queries=6)[0]
  assert task.on_generations and task.metric == 'macro_f1' and task.has_options
  gold = [q.target for q in task.queries]
  index = {}
  for b in task.batches(8, scoring=False):
    for r in np.flatnonzero(~b['is_padding']):
      index[b['encoder_inputs'][r].tobytes()] = int(b['example_index'][r])
  assert len(index) == len(gold)

  def generate_fn(trainable, frozen, batch):  # even queries: the gold label; odd: junk
    rows = []
    for enc in np.asarray(batch['encoder_inputs']):
      i = index.get(enc.tobytes(), 1)
      ids = sp.encode(gold[i] if i % 2 == 0 else 'zzz') + [EOS]
      rows.append(ids + [0] * (12 - len(ids)))
    return np.asarray(rows)

  def score_fn(trainable, frozen, batch):  # every option ties: option 0 wins
    return np.zeros(batch['encoder_inputs'].shape[0], np.float32)

  result, rows = evaluate.evaluate_task(task, score_fn, generate_fn, {}, {}, 8)
  generated = [sp.decode(sp.encode(g if i % 2 == 0 else 'zzz')) for i, g in enumerate(gold)]
  assert result['generated_macro_f1'] == pytest.approx(metrics.macro_f1(generated, gold))
  first = [q.options[0] for q in task.queries]
  assert result['rank_accuracy'] == pytest.approx(
      100 * np.mean([f == g for f, g in zip(first, gold)]))
  assert 'accuracy' not in result and 'macro_f1' not in result
  assert evaluate.headline(result) == result['generated_macro_f1']
  assert [r['prediction'] for r in rows] == generated
  assert [r['rank_prediction'] for r in rows] == first
