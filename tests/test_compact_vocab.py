"""'words_compact': the suite's words in a ~5,400-row id space, end to end (train,
checkpoint, evaluate with generation, the recorded tokenizer) and refused when the model's
embedding is too small for it."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hyperflax import config_check, demo  # noqa: E402
from hyperflax.data import synthetic  # noqa: E402


def _config(vocab_size: int, steps: int = 12):
  return demo.stage_config(
      't5_mtf_fewshot', steps=steps, seed=0, **{
          'data.vocab_path': 'words_compact', 'data.lengths': (136, 12, 8),
          'model.overrides.vocab_size': vocab_size,
          'data.options': {'train_tasks_per_family': 20},
          'eval.options': {'max_queries': 4, 'heldout_tasks_per_family': 1}})


def test_model_smaller_than_the_tokenizer_is_refused_before_the_workdir(tmp_path):
  from hyperflax.train import train
  need = synthetic.word_tokenizer('words_compact').vocab_size
  with pytest.raises(config_check.ConfigError, match=f'model.vocab_size=512 .* {need} ids'):
    train(_config(512), tmp_path / 'w')
  assert not (tmp_path / 'w' / 'config.json').exists()


def test_train_and_evaluate_in_the_compact_space(tmp_path):
  from hyperflax import evaluate
  from hyperflax.train import train
  rows = -(-synthetic.word_tokenizer('words_compact').vocab_size // 128) * 128
  cfg = _config(rows)
  out = train(cfg, tmp_path)
  assert out['experiment'].t5_config.vocab_size == rows < 6000
  run = json.loads((tmp_path / 'run.json').read_text())
  assert run['tokenizer']['kind'] == 'words_compact'
  summary = evaluate.evaluate(cfg, out['experiment'], out['trainable'], out['frozen'],
                              str(tmp_path / 'eval'), 'heldout_families', 'model')
  m = summary['average_metrics']
  assert 0.0 <= m['accuracy'] <= 100.0 and 'generated_exact_match' in m
  # Generations decode through the compact map into suite words (or <unk>), never ids.
  preds = [json.loads(line) for p in (tmp_path / 'eval').rglob('*.jsonl')
           for line in p.read_text().splitlines() if line.strip()]
  texts = [p.get('prediction', '') for p in preds if 'prediction' in p]
  assert texts and not any('<id_' in t for t in texts)


def test_markers_need_rows_past_the_pieces_for_the_32k_tokenizers(tmp_path):
  from hyperflax.train import train
  cfg = _config(32100)
  cfg.data.vocab_path = 'words'  # 32,100 ids, but the converters also write <x>/<y> = 32100/32101
  with pytest.raises(config_check.ConfigError, match='model.vocab_size=32100 .* 32102 ids'):
    train(cfg, tmp_path / 'w')


def test_query_format_must_match_between_training_and_evaluation():
  cfg = _config(5248)
  cfg.data.options = {'train_tasks_per_family': 20, 'query_in_decoder': True}
  with pytest.raises(config_check.ConfigError, match='query_in_decoder differ'):
    config_check.validate(cfg)
  cfg.eval.options = {'query_in_decoder': True}
  with pytest.raises(config_check.ConfigError, match='also_generate=True with'):
    config_check.validate(cfg)  # the stage's default generates too
  cfg.eval.also_generate = False
  config_check.validate(cfg)
  cfg.eval.name = ''  # no evaluation: nothing to match
  cfg.eval.options = {}
  config_check.validate(cfg)
