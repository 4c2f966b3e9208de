"""bench/learning_curves.py: configs are resumable runs; the plot reads every run's curve."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'bench'))

import learning_curves as lc  # noqa: E402


def test_configs_keep_a_constant_rate_so_points_resume_one_run():
  c = lc.config_for('fewshot', 300, 1, {'optim.learning_rate': 3e-3, 'data.vocab_path': 'words'})
  assert c.method == 't5_mtf_fewshot' and c.optim.schedule == 'constant'
  assert c.optim.warmup_steps == 100 and c.train.num_steps == 300 and c.seed == 1
  assert c.optim.learning_rate == 3e-3 and c.data.vocab_path == 'words'
  h = lc.config_for('hart', 10, 0, {}, downstream='/x/downstream')
  assert h.method == 'hypermodel' and h.hyper.kind == 'hart'
  assert h.model.init_from == '/x/downstream'
  with pytest.raises(ValueError, match='needs a downstream'):
    lc.config_for('lora', 10, 0, {})


def test_plot_writes_png_and_json_with_losses(tmp_path):
  for name, acc in (('a', [40.0, 55.0]), ('b', [38.0, 39.0])):
    run = tmp_path / name
    run.mkdir()
    rows = [{'step': s, 'loss': 1.0,
             'heldout_families': {'accuracy': x, 'exact_match': None, 'chance': 38.9},
             'heldout_tasks': {'accuracy': x, 'exact_match': 10.0, 'chance': 38.9}}
            for s, x in zip((100, 200), acc)]
    (run / 'curve.json').write_text(json.dumps({'model': 'fewshot', 'rows': rows}))
    (run / 'metrics.jsonl').write_text('{"step": 50, "loss": 2.0}\n{"step": 100, "loss": 1.5}\n')
  curves = lc.plot(str(tmp_path), str(tmp_path / 'c.png'))
  assert (tmp_path / 'c.png').stat().st_size > 1000
  saved = json.loads((tmp_path / 'c.json').read_text())
  assert set(saved) == set(curves) == {'a', 'b'}
  assert saved['a']['train_loss'] == [[50, 2.0], [100, 1.5]]
  assert saved['a']['rows'][1]['heldout_families']['accuracy'] == 55.0


def test_query_in_decoder_must_be_the_training_and_the_scoring_format():
  with pytest.raises(ValueError, match='query_in_decoder .*differ'):
    lc.config_for('fewshot', 10, 0, {'data.options': {'query_in_decoder': True}})
  both = {'data.options': {'query_in_decoder': True}, 'eval.options': {'query_in_decoder': True}}
  # Greedy decoding would start without the query: such a run is scored by rank only.
  with pytest.raises(ValueError, match=r'^[^\n]*also_generate=True with [^\n]*query_in_decoder'):
    lc.config_for('fewshot', 10, 0, {**both, 'eval.also_generate': True})
  cfg = lc.config_for('fewshot', 10, 0, {**both, 'eval.also_generate': False})
  assert cfg.data.options['query_in_decoder'] and cfg.eval.options['query_in_decoder']


def test_curriculum_stages_validate_and_chain_downstreams():
  """Every stage's config passes config_check (e.g. the query format of training and
  scoring agree), and each starts from the stage the curriculum says."""
  import curriculum
  steps = {'recall_adjacent': 10, 'recall_separated': 10, 'fewshot': 10, 'hypermodel': 10,
           't5_mtf': 10}
  plan = curriculum.stages(steps, ['hart', 'lora'])
  assert [p[0] for p in plan] == ['recall_adjacent', 'recall_separated', 'fewshot', 'hart',
                                  'lora', 't5_mtf']
  after = {name: prev for name, _, _, _, prev in plan}
  assert after == {'recall_adjacent': '', 'recall_separated': 'recall_adjacent',
                   'fewshot': 'recall_separated', 'hart': 'fewshot', 'lora': 'fewshot',
                   't5_mtf': ''}
  for name, model, n, overrides, prev in plan:
    cfg = lc.config_for(model, n, 0, overrides, f'/x/{prev}/downstream' if prev else '')
    opts = dict(cfg.data.options)
    if name.startswith('recall'):
      assert cfg.data.name == 'synthetic_recall'
      assert opts.get('separated', False) is (name != 'recall_adjacent')
    if name == 't5_mtf':
      assert not opts.get('query_in_decoder') and cfg.method == 't5_mtf'
    else:
      assert opts['query_in_decoder'] and dict(cfg.eval.options)['query_in_decoder']
    assert cfg.model.overrides.vocab_size == 5248 and cfg.data.vocab_path == 'words_compact'


@pytest.mark.slow  # six short trainings (~3 min on 2 cores)
def test_curriculum_runs_end_to_end(tmp_path, capsys):
  import curriculum
  summary = curriculum.run(str(tmp_path), 0, ['hart'], {
      'recall_adjacent': 3, 'recall_separated': 3, 'fewshot': 3, 'hypermodel': 3, 't5_mtf': 3})
  assert list(summary['stages']) == ['recall_adjacent', 'recall_separated', 'fewshot', 'hart',
                                     't5_mtf']
  for name, prev in (('recall_separated', 'recall_adjacent'), ('fewshot', 'recall_separated'),
                     ('hart', 'fewshot')):
    cfg = json.loads((tmp_path / name / 'config.json').read_text())
    assert cfg['model']['init_from'] == str(tmp_path / prev / 'downstream')
  assert json.loads((tmp_path / 'summary.json').read_text()) == summary
  assert 'hart' in capsys.readouterr().out


@pytest.mark.parametrize('data, evl, match', [
    ({'query_in_decoder': True, 'query_marks': 'none'}, {'query_in_decoder': True},
     "query_marks differ \\('none' / 'xy'\\)"),
    ({'query_in_decoder': True, 'query_marks': 'x'}, {'query_in_decoder': True, 'query_marks': 'x'},
     "data.options.query_marks='x': allowed xy, none"),
    ({'query_marks': 'none'}, {'query_marks': 'none'}, 'needs config.data.options.query_in_decoder'),
])
def test_query_marks_are_checked_in_one_line(data, evl, match):
  with pytest.raises(ValueError, match=match):
    lc.config_for('fewshot', 10, 0, {'data.options': data, 'eval.options': evl})


def test_curriculum_layers_and_hypermodel_seeds_reach_every_stage(tmp_path, monkeypatch):
  """--layers sets every stage's T5 depth (each stage's config is validated); further
  hypermodel seeds train on the chain's one frozen few-shot T5 in their own directories."""
  import curriculum
  calls = []

  def fake_run_curve(workdir, model, points, seed, overrides, downstream, name, splits):
    cfg = lc.config_for(model, points[-1], seed, overrides, downstream or '')
    calls.append((name, seed, downstream, cfg.model.overrides.num_layers,
                  cfg.model.overrides.num_decoder_layers))
    split = {'accuracy': 50.0, 'chance': 38.9, 'per_group': {}}
    return [{'step': points[-1], 'loss': 0.1, **{s: split for s in splits}}]

  monkeypatch.setattr(lc, 'run_curve', fake_run_curve)
  steps = {'recall_adjacent': 3, 'recall_separated': 3, 'fewshot': 3, 'hypermodel': 3,
           't5_mtf': 3}
  summary = curriculum.run(str(tmp_path), 0, ['hart', 'hart_random_order'], steps, layers=3,
                           hypermodel_seeds=[0, 1, 2])
  names = [c[0] for c in calls]
  assert names == ['recall_adjacent', 'recall_separated', 'fewshot', 'hart', 'hart_s1',
                   'hart_s2', 'hart_random_order', 'hart_random_order_s1',
                   'hart_random_order_s2', 't5_mtf']
  assert all(c[3:] == (3, 3) for c in calls)
  few = str(tmp_path / 'fewshot' / 'downstream')
  assert [(c[1], c[2]) for c in calls if c[0].startswith('hart')] == [
      (0, few), (1, few), (2, few)] * 2
  assert summary['layers'] == 3 and list(summary['stages']) == names


def test_curriculum_hypermodel_lr_reaches_the_hypermodels_only(tmp_path, monkeypatch):
  import curriculum
  rates = {}

  def fake_run_curve(workdir, model, points, seed, overrides, downstream, name, splits):
    cfg = lc.config_for(model, points[-1], seed, overrides, downstream or '')
    rates[name] = cfg.optim.learning_rate
    split = {'accuracy': 50.0, 'chance': 38.9, 'per_group': {}}
    return [{'step': points[-1], 'loss': 0.1, **{s: split for s in splits}}]

  monkeypatch.setattr(lc, 'run_curve', fake_run_curve)
  steps = dict.fromkeys(('recall_adjacent', 'recall_separated', 'fewshot', 'hypermodel',
                         't5_mtf'), 3)
  summary = curriculum.run(str(tmp_path), 0, ['prefix', 'lora'], steps, hypermodel_lr=3e-4,
                           hypermodel_seeds=[1])
  # Named for their rate: a chain trained at the default rate is reused, not refused.
  assert rates == {'recall_adjacent': 1e-3, 'recall_separated': 1e-3, 'fewshot': 1e-3,
                   'prefix_lr0.0003': 3e-4, 'prefix_lr0.0003_s1': 3e-4,
                   'lora_lr0.0003': 3e-4, 'lora_lr0.0003_s1': 3e-4, 't5_mtf': 1e-3}
  assert summary['hypermodel_lr'] == 3e-4
  with pytest.raises(SystemExit):
    curriculum.main(['--hypermodel_lr=0'])


def test_a_run_resumes_only_with_its_own_settings(tmp_path, monkeypatch):
  """Resuming a curve with another seed or overrides (e.g. another --layers) would mix two
  runs in one directory: refused in one line before anything trains."""
  import json as json_lib
  run = tmp_path / 'fewshot'
  run.mkdir()
  (run / 'curve.json').write_text(json_lib.dumps(
      {'model': 'fewshot', 'seed': 0, 'overrides': {'model.overrides.num_layers': 3},
       'downstream': '', 'rows': [{'step': 10}]}))
  monkeypatch.setattr('hyperflax.train.train', lambda *a: pytest.fail('trained'))
  assert lc.run_curve(str(tmp_path), 'fewshot', [10], 0,
                      {'model.overrides.num_layers': 3}) == [{'step': 10}]
  with pytest.raises(ValueError, match='trained with other overrides'):
    lc.run_curve(str(tmp_path), 'fewshot', [10], 0, {})
  with pytest.raises(ValueError, match='trained with other seed'):
    lc.run_curve(str(tmp_path), 'fewshot', [10], 1, {'model.overrides.num_layers': 3})
