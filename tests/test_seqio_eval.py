"""The SeqIO eval job (`hyperflax.seqio_eval`) against `hyperflax.evaluate`.

A `:tiny` HyperT5-Prefix workdir is trained for two steps; the same
checkpoint is then evaluated by `hyperflax.evaluate` and by a
`seqio.Evaluator` over the per-unit Tasks of `hyperflax.tasks`: every
per-task metric and every table number must be equal.
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get('HYPERFLAX_SHARED_DATA') or ROOT.parent / 'shared' / 'data')
needs_shared = pytest.mark.skipif(not (SHARED / 'sni').is_dir(),
                                  reason=f'shared data not found at {SHARED}')

seqio = pytest.importorskip('seqio')


def _tiny_config():
  spec = importlib.util.spec_from_file_location('cfg', ROOT / 'configs' / 'hypert5_prefix_large.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config('tiny')
  config.train.num_steps = 2
  config.eval.also_generate = True  # generation (ragged predictions) on option tasks too
  config.eval.options.heldout_tasks_per_family = 1  # 3 units: SeqIO's per-Task cost is TF tracing
  return config


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  import jax
  import jax.numpy as jnp
  from hyperflax import seqio_eval, train
  workdir = str(tmp_path_factory.mktemp('seqio_wd'))
  out = train.train(_tiny_config(), workdir)
  config, step, restored = seqio_eval.open_workdir(workdir)
  assert step == 2
  return dict(workdir=workdir, config=config, exp=out['experiment'], frozen=out['frozen'],
              trainable=jax.tree.map(jnp.asarray, restored))


def _both(run, tmp_path, **eval_overrides):
  from hyperflax import evaluate, seqio_eval
  import ml_collections
  config = run['config'].copy_and_resolve_references()
  for key, value in eval_overrides.items():
    config.eval[key] = ml_collections.ConfigDict(value) if isinstance(value, dict) else value
  ref = evaluate.evaluate(config, run['exp'], run['trainable'], run['frozen'],
                          str(tmp_path / 'evaluate'))
  got = seqio_eval.run(run['workdir'], config, run['trainable'], run['frozen'], run['exp'],
                       step=2, out_dir=str(tmp_path / 'seqio'))
  ref.pop('data_report', None)
  return ref, got


def test_seqio_job_equals_evaluate_synthetic(run, tmp_path):
  ref, got = _both(run, tmp_path)
  summary = got['summary']
  assert list(summary['per_task']) == list(ref['per_task'])  # same units, same order
  assert summary == ref, json.dumps([ref, summary], indent=1)[:3000]
  first = ref['per_task'][next(iter(ref['per_task']))]
  assert {'accuracy', 'chance', 'generated_exact_match'} <= set(first)
  # SeqIO's usual outputs: metrics and inferences JSONL, TensorBoard events.
  out = tmp_path / 'seqio'
  name = 'synthetic_fewshot_category_dash_0000_score_eval'
  assert json.loads((out / f'{name}-metrics.jsonl').read_text())['step'] == 2
  rows = [json.loads(line) for line in (out / f'{name}-000002.jsonl').read_text().splitlines()]
  assert rows and {'input', 'target', 'score'} <= set(rows[0])
  # Same greedy predictions, string for string.
  from hyperflax.tasks import SUITES
  unit = SUITES['synthetic_fewshot'].tasks[name][0].name
  gen = [json.loads(line)['prediction'] for line in
         (out / f'{name[:-len("_score_eval")]}-000002.jsonl').read_text().splitlines()]
  rows = [json.loads(line) for line in
          (tmp_path / 'evaluate' / 'predictions.jsonl').read_text().splitlines()]
  assert gen and gen == [r['generated'] for r in rows if r['task'] == unit]
  assert list((out / name).glob('events.out.tfevents.*'))
  assert json.loads((out / 'results.json').read_text())['per_group'] == ref['per_group']


@pytest.mark.parametrize('marks', ['xy', 'none'])
def test_seqio_job_scores_a_query_read_in_the_decoder_as_evaluate_does(run, tmp_path, marks):
  import jax
  import numpy as np
  from hyperflax.training.step import make_score_step
  options = {**run['config'].eval.options.to_dict(), 'query_in_decoder': True,
             'query_marks': marks}
  ref, got = _both(run, tmp_path, also_generate=False, options=options)
  assert got['summary'] == ref, json.dumps([ref, got['summary']], indent=1)[:3000]
  # Row for row, SeqIO's score is the one of hyperflax's own batches, whose weights leave
  # out the query the decoder reads (scoring it too would shift every score).
  import ml_collections
  from hyperflax import evaluate
  config, exp = run['config'].copy_and_resolve_references(), run['exp']
  config.eval.options = ml_collections.ConfigDict(options)
  task = evaluate.eval_tasks(config, exp)[0]
  score = jax.jit(make_score_step(exp))
  want = []
  for batch in task.batches(8, scoring=True):
    s = np.asarray(score(run['trainable'], run['frozen'], batch))
    w = np.asarray(batch['target_weights'])
    assert (w.sum(1)[~batch['is_padding']] < (np.asarray(batch['targets']) > 0).sum(1)[
        ~batch['is_padding']]).all()  # the read query is in the targets, unweighted
    want += [float(x) for x, pad in zip(s, batch['is_padding']) if not pad]
  from hyperflax.tasks import SUITES
  name, = [n for n, (unit, _) in SUITES[config.eval.name].tasks.items() if unit.name == task.name]
  rows = [json.loads(line) for line in
          (tmp_path / 'seqio' / f'{name}-000002.jsonl').read_text().splitlines()]
  assert len(rows) == len(want)
  np.testing.assert_allclose([r['score'] for r in rows], want, rtol=1e-5, atol=1e-4)
  assert not [n for n in got['metrics'] if not n.endswith('_score_eval')]  # scoring only


def test_query_in_decoder_refuses_generation_in_one_line(run):
  from hyperflax import seqio_eval
  config = run['config'].copy_and_resolve_references()
  config.eval.options.query_in_decoder = True
  config.eval.also_generate = True
  with pytest.raises(ValueError, match='rank classification only: set eval.also_generate') as e:
    seqio_eval.register_for_run(config, run['exp'].data_mode)
  assert '\n' not in str(e.value)


@pytest.mark.slow  # ~80 CPU-s more: 20 more collections' worth of SeqIO Tasks
@needs_shared
def test_seqio_job_equals_evaluate_sni_and_metaicl(run, tmp_path):
  # S-NI: generation, ROUGE-L / exact match; MetaICL: generation headline + rank.
  ref, got = _both(run, tmp_path / 'sni', name='sni_def_2pos', split='test', also_generate=False,
                   options={'max_test_instances': 2})
  assert got['summary'] == ref and 'rougeL' in next(iter(ref['per_task'].values()))
  ref, got = _both(run, tmp_path / 'metaicl', name='metaicl_non_nli_to_nli', split='test',
                   also_generate=False, options={'max_queries': 2})
  assert got['summary'] == ref
  assert {'generated_macro_f1', 'rank_accuracy'} <= set(next(iter(ref['per_task'].values())))


def _three_example_task(name):
  import tensorflow as tf
  from hyperflax.data.synthetic import word_tokenizer
  from hyperflax.tasks import HyperflaxVocabulary
  from hyperflax.tasks import metrics as task_metrics
  vocab = HyperflaxVocabulary(word_tokenizer())
  texts = ['red', 'red blue', 'red blue green']

  def dataset_fn(split, shuffle_files, seed=None):
    del split, shuffle_files, seed
    return tf.data.Dataset.from_tensor_slices({
        'inputs': tf.ragged.constant([vocab.encode(t) for t in texts]).to_tensor(),
        'targets': tf.ragged.constant([vocab.encode(t) for t in texts]).to_tensor(),
        'references': tf.constant([[t] for t in texts]), 'answer': tf.constant(texts)})
  seqio.TaskRegistry.remove(name)
  seqio.TaskRegistry.add(
      name, source=seqio.FunctionDataSource(dataset_fn, splits=['validation']),
      output_features={k: seqio.Feature(vocab, add_eos=False) for k in ('inputs', 'targets')},
      postprocess_fn=task_metrics.generation_postprocessor,
      metric_fns=[task_metrics.generation])
  # A predict_fn that stops at EOS, as decoders do: predictions of 1, 2, 3 tokens + EOS.
  return texts, lambda ds, model_feature_shapes=None: [
      (int(i), list(vocab.encode(texts[int(i)])) + [1]) for i, _ in ds.as_numpy_iterator()]


def test_ragged_predictions_run_through_our_evaluator(tmp_path):
  from hyperflax import seqio_eval
  texts, predict_fn = _three_example_task('hyperflax_test_ragged')
  lengths = {'inputs': 8, 'targets': 8}
  plain = seqio.Evaluator('hyperflax_test_ragged', seqio.EncDecFeatureConverter(pack=False),
                          sequence_length=lengths, async_compute_metrics=False)
  # seqio 0.0.20 under numpy 2 (the reason for the shim); if this stops
  # raising, SeqIO handles ragged predictions and the shim can go.
  with pytest.raises(ValueError, match='inhomogeneous'):
    plain.evaluate(compute_metrics=True, predict_fn=predict_fn)[0].result()
  ours = seqio_eval.Evaluator(
      'hyperflax_test_ragged', seqio.EncDecFeatureConverter(pack=False), sequence_length=lengths,
      async_compute_metrics=False, logger_cls=(seqio.JSONLogger,), log_dir=str(tmp_path))
  metrics, _ = ours.evaluate(compute_metrics=True, step=0, predict_fn=predict_fn)
  assert metrics.result() == {'hyperflax_test_ragged': {'exact_match': 100.0, 'rougeL': 100.0}}
  rows = (tmp_path / 'hyperflax_test_ragged-000000.jsonl').read_text().splitlines()
  assert [json.loads(r)['prediction'] for r in rows] == texts
  assert seqio_eval.pad_ragged([[5], [5, 6, 1]]).tolist() == [[5, 0, 0], [5, 6, 1]]


def test_import_hyperflax_tasks_from_another_directory(tmp_path):
  # An empty data dir keeps the check fast: registration must not need data.
  env = {**os.environ, 'HYPERFLAX_DATA_DIR': str(tmp_path), 'PYTHONPATH': ''}
  code = ('import os, seqio, hyperflax.tasks as t; assert os.getcwd() == %r; '
          'assert "synthetic_fewshot_eval" in seqio.MixtureRegistry.names(); '
          'print(len(t.TASK_NAMES))' % str(tmp_path))
  proc = subprocess.run([sys.executable, '-c', code], cwd=tmp_path, env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert int(proc.stdout.split()[-1]) >= 10


@needs_shared
def test_t0_names_and_p3_units_match_the_loader():
  from hyperflax import tasks
  from hyperflax.data import registry
  suite = tasks.register_eval_tasks('p3_heldout', datasets=['super_glue/cb', 'anli'])
  loaded = [t.name for t in registry.get_eval_tasks(
      'p3_heldout', 'validation', datasets=['super_glue/cb', 'anli'], max_queries=1)]
  units = [u.name for u, kind in suite.tasks.values() if kind == 'score']
  assert units == loaded
  assert 'super_glue_cb_GPT_3_style_score_eval' in suite.tasks
  assert 'anli_GPT_3_style_r1_score_eval' in suite.tasks
  assert 'p3_heldout_super_glue_cb_eval' in seqio.MixtureRegistry.names()
  mixture = seqio.get_mixture_or_task('p3_heldout_eval')
  assert {t.name for t in mixture.tasks} == {n for n, (_, k) in suite.tasks.items()
                                             if k == 'score'}
  tasks.register_eval_tasks('p3_heldout')  # back to the import-time default


@pytest.mark.slow  # trains a second (CACLM) tiny workdir
def test_caclm_validation_token_accuracy_and_loss(tmp_path):
  import jax
  import jax.numpy as jnp
  import numpy as np
  from hyperflax import data, seqio_eval, train
  from hyperflax.training.step import make_score_step
  spec = importlib.util.spec_from_file_location('cfg', ROOT / 'configs' / 'caclm_prefix_large.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config('tiny')
  config.train.num_steps = 2
  out = train.train(config, str(tmp_path / 'wd'))
  exp, frozen = out['experiment'], out['frozen']
  config, step, restored = seqio_eval.open_workdir(str(tmp_path / 'wd'))
  trainable = jax.tree.map(jnp.asarray, restored)
  got = seqio_eval.run(str(tmp_path / 'wd'), config, trainable, frozen, exp, step=step)
  metrics = got['metrics'][config.data.name]
  # Reference: the same validation rows straight from hyperflax.data, scored
  # one row at a time (no SeqIO, no batching).
  d = config.data
  rows = data.get_dataset(d.name, 'validation', batch_size=1, seed=0,
                          data_dir=d.get('data_dir') or None, **dict(d.options))
  score = jax.jit(make_score_step(exp, shared_demos=False))
  loglik = tokens = correct = 0.0
  for b in rows:
    batch = {k: jnp.asarray(b[k]) for k in ('hyper_inputs', 'encoder_inputs', 'decoder_inputs',
                                            'targets', 'target_weights')}
    logits, _ = exp.forward(trainable, frozen, batch, deterministic=True, shared_demos=False)
    w = np.asarray(b['target_weights'])
    loglik += float(score(trainable, frozen, batch)[0])
    tokens += float(w.sum())
    correct += float(((np.asarray(logits).argmax(-1) == b['targets']) * w).sum())
  assert metrics['loss'] == pytest.approx(-loglik / tokens, rel=1e-5)
  assert metrics['token_accuracy'] == pytest.approx(correct / tokens * 100, abs=1e-6)
