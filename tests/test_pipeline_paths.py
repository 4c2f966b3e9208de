"""The pipeline's paths and stage records, without training: `train` and
`evaluate` are replaced by fakes, so these tests check what the pipeline
itself does with workdirs (local spelled two ways, and a mocked gs://)."""

import json
import logging
import math
import os
import sys

import pytest

from hyperflax import pipeline, recipes
from hyperflax.workdir import WorkdirError, write_atomic
from test_workdir_cloud import mock_gcs  # noqa: F401  (a fixture)

RECIPES = recipes.all_recipes()
FULL = {'model.init_from': '/t5'}


def _step(steps, name):
  return next((s, c, p) for s, c, p in steps if s.name == name)


def test_a_relative_workdir_plans_the_same_absolute_chain(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  recipe = RECIPES['hart_sni']
  rel = pipeline.plan(recipe, 'runs', 'full', FULL, flan_t5='/flan')
  absolute = pipeline.plan(recipe, tmp_path / 'runs', 'full', FULL, flan_t5='/flan')
  name = 'hypert5_prefix_sni_def_2pos_large'
  _, c_rel, p_rel = _step(rel, name)
  _, c_abs, p_abs = _step(absolute, name)
  assert c_rel.hyper.init_from == str(tmp_path / 'runs' / 'caclm_prefix_large')
  assert os.fspath(p_rel) == os.fspath(p_abs) == str(tmp_path / 'runs' / name)
  # A stage finished under one spelling is 'done' under the other.
  write_atomic(p_rel / pipeline.MARKER, json.dumps({'config': pipeline._config_json(c_rel),
                                                     'results': None}))
  assert pipeline.stage_status(p_abs, c_abs) == 'done'


def test_a_started_stage_is_checked_against_its_config_json(tmp_path):
  recipe = RECIPES['hart_sni']
  stage, config, path = _step(pipeline.plan(recipe, tmp_path, 'full', FULL, flan_t5='/flan'),
                              'hypert5_prefix_sni_def_2pos_large')
  assert pipeline.stage_status(path, config) == 'new'
  (path / 'checkpoints').mkdir(parents=True)
  assert pipeline.stage_status(path, config) == 'started'  # no config.json yet
  saved = pipeline._config_json(config)
  saved['hyper']['init_from'] = '/elsewhere/caclm'  # path fields: not compared once started
  saved['runtime']['allow_cpu'] = not saved['runtime']['allow_cpu']  # nor this machine's
  write_atomic(path / 'config.json', json.dumps(saved))
  assert pipeline.stage_status(path, config) == 'started'
  saved['train']['num_steps'] += 1
  saved['seed'] = 12345
  write_atomic(path / 'config.json', json.dumps(saved))
  with pytest.raises(ValueError, match=r'started with another config \(seed, train\.num_steps '
                     'differ') as e:
    pipeline.stage_status(path, config)
  assert '\n' not in str(e.value) and str(path / 'config.json') in str(e.value)


def test_a_damaged_marker_is_named(tmp_path):
  recipe = RECIPES['hart_sni']
  stage, config, path = pipeline.plan(recipe, tmp_path, 'full', FULL, flan_t5='/flan')[0]
  write_atomic(path / pipeline.MARKER, '{"config": ')
  with pytest.raises(WorkdirError, match=f'{path / pipeline.MARKER}: not valid JSON'):
    pipeline.stage_status(path, config)
  write_atomic(path / pipeline.MARKER, '[]')
  with pytest.raises(ValueError, match='not a pipeline stage record'):
    pipeline.stage_status(path, config)
  # The plan shows the conflict instead of a traceback.
  assert 'CONFLICT' in pipeline.describe_plan(recipe, [(stage, config, path)], tmp_path)


@pytest.mark.parametrize('name', ['hypertuning_p3', 'hart_ablation', 'hart_sni'])
def test_a_stage_without_a_headline_leaves_nan_and_is_named(name, caplog):
  recipe = RECIPES[name]
  missing = recipe.rows[0].cells[0][1][0]
  results = {s.name: {'per_group': {g: 50.0 for g in recipes.P3_GROUPS}, 'average': 40.0}
             for s in recipe.stages}
  results[missing] = None
  with caplog.at_level(logging.WARNING):
    table = pipeline.make_table(recipe, results)
  assert any(missing in r.getMessage() for r in caplog.records)
  first = table['rows'][recipe.rows[0].label]
  assert any(math.isnan(v) for v in first.values())
  assert '| ' + recipe.rows[0].label + ' |' in pipeline.markdown(table)  # renders (empty cells)
  # A P3 stage scored on no P3 group (per_group empty) is named too.
  results[missing] = {'per_group': {}, 'average': None}
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    pipeline.make_table(recipe, results)
  assert any(missing in r.getMessage() for r in caplog.records)


def _fake_training(monkeypatch):
  import hyperflax.evaluate  # noqa: F401
  import hyperflax.train  # noqa: F401
  calls = []

  def train(config, workdir):
    calls.append((workdir, config.hyper.get('init_from', '')))
    return {'experiment': None, 'trainable': None, 'frozen': None}

  def evaluate(config, exp, trainable, frozen, out, label=''):
    assert out.startswith('gs://bucket/runs/')
    return {'per_task': {}, 'per_group': {g: 50.0 for g in recipes.P3_GROUPS}, 'average': 40.0}
  monkeypatch.setattr(sys.modules['hyperflax.train'], 'train', train)
  monkeypatch.setattr(sys.modules['hyperflax.evaluate'], 'evaluate', evaluate)
  return calls


def test_a_gs_workdir_stays_a_url(mock_gcs, monkeypatch):  # noqa: F811
  calls = _fake_training(monkeypatch)
  recipe = RECIPES['hart_ablation']
  steps = pipeline.plan(recipe, 'gs://bucket/runs', 'tiny')
  assert all(os.fspath(p).startswith('gs://bucket/runs/') for _, _, p in steps)
  table = pipeline.run(recipe, 'gs://bucket/runs', scale='tiny')
  assert table['workdir'] == 'gs://bucket/runs'
  assert len(calls) == len(recipe.stages)
  assert all(w.startswith('gs://bucket/runs/') for w, _ in calls)
  assert any(i.startswith('gs://bucket/runs/caclm') for _, i in calls)
  root = mock_gcs / 'bucket' / 'runs'
  assert (root / f'{recipe.name}.md').exists() and (root / f'{recipe.name}.json').exists()
  assert all((root / os.fspath(p).rsplit('/', 1)[1] / pipeline.MARKER).exists()
             for _, _, p in steps)
  pipeline.run(recipe, 'gs://bucket/runs', scale='tiny')  # every stage finished: read back
  assert len(calls) == len(recipe.stages)
  # (the fixture checks that nothing named 'gs:*' appeared on the local disk)


def test_the_peft_sweep_reads_and_writes_a_gs_workdir(mock_gcs):  # noqa: F811
  from hyperflax import peft_tuning
  from hyperflax.training import peft_table
  runs = {'hyper': ['gs://bucket/runs/a'], 'shared': ['gs://bucket/runs/b']}
  key = {'workdirs': runs, 'tiny': True, 'settings': {}}
  rows = {'HyperT5 (Hyper Init)': {'ANLI': 33.0, 'AVG': 33.0}}
  write_atomic('gs://bucket/runs/x_peft/rows.json', json.dumps({'key': key, 'rows': rows}))
  assert peft_tuning.pipeline_sweep(runs, 'gs://bucket/runs/x_peft', tiny=True) == rows
  cell = {'mean': 1.0, 'std': 0.0}
  text = peft_table.write_results(
      'gs://bucket/runs/x_peft', [], {'rows': {'r': {'anli': cell}}, 'step0': {}, 'columns':
                                      ['anli']},
      {'seeds': (0,), 'select': 'task', 'steps': 2, 'learning_rates': (1e-3,)})
  out = mock_gcs / 'bucket' / 'runs' / 'x_peft'
  assert (out / 'results.md').read_text() == text
  assert json.loads((out / 'results.json').read_text())['summary']['rows']['r']['anli'] == cell
