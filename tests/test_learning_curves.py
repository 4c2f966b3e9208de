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
  with pytest.raises(ValueError, match='--downstream'):
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
  cfg = lc.config_for('fewshot', 10, 0, {'data.options': {'query_in_decoder': True},
                                         'eval.options': {'query_in_decoder': True}})
  assert cfg.data.options['query_in_decoder'] and cfg.eval.options['query_in_decoder']
