"""bench/learning_metaicl.py: its MetaICL overrides are valid and its fit report counts
what does not fit (tokenisation only, no training)."""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'bench'))


def test_fit_report_counts_drops():
  import learning_metaicl as lm
  fit = lm.fit_report('hr_to_lr', max_queries=2, train_batches=1, batch_size=4)
  test, concat, train = fit['test_hyper'], fit['test_concat'], fit['train_hyper']
  assert test['tasks'] >= 20 and test['queries'] == 2 * test['tasks']
  assert 0 < test['demos_used'] <= test['demos_used'] + test['demos_dropped'] <= lm.K * test['queries']
  assert concat['queries'] == test['queries']
  assert train['demos_used'] + train['demos_dropped'] == lm.K * train['episodes']
  assert 0 < fit['test_hyper']['chance_accuracy'] < 100
  # Tight lengths drop more whole demonstrations than the defaults.
  tight = lm.fit_report('hr_to_lr', lengths=(64, 32, 8), max_queries=2, train_batches=1,
                        batch_size=4)
  assert tight['test_hyper']['demos_dropped'] > test['demos_dropped']


def test_overrides_build_stage_configs():
  import learning_metaicl as lm
  from hyperflax import demo
  cfg = demo.stage_config('hypermodel', 'lora', 4, 0, **lm.overrides('non_nli_to_nli'))
  assert cfg.data.name == cfg.eval.name == 'metaicl_non_nli_to_nli'
  assert tuple(cfg.data.lengths) == lm.LENGTHS and cfg.data.num_shots == lm.K
  assert dict(cfg.eval.options) == {'max_queries': lm.MAX_QUERIES}
  quick = demo.stage_config('hypermodel', 'lora', 4, 0, **lm.overrides('hr_to_lr', quick=True))
  assert quick.eval.max_decode_length == 4
  caclm = demo.stage_config('hypermodel', 'lora', 2, 0, **{
      'data.options': {}, **lm.caclm_overrides()})
  assert caclm.data.name == 'caclm_c4' and tuple(caclm.data.options.segments) == lm.CACLM_SEGMENTS
