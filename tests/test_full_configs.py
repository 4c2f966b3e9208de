"""Every full-size config, unchanged, against the real shared data: its own
dataset with its own lengths (first batch), its evaluation tasks (first batch)
and its whole training state built by `jax.eval_shape` (nothing allocated).

The `:tiny` variants reset the lengths and the data, so only this test sees a
full config's data fail (as CACLM's `lengths.encoder=32` once did). Small
batches keep it cheap: lengths, modes, shots and options are the config's.
"""

import glob
import importlib.util
import math
import os
from pathlib import Path

import jax
import numpy as np
import pytest

from hyperflax import data
from hyperflax.config_base import CACLM_DATASETS, check_hyperpretraining
from hyperflax.data import Lengths

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get('HYPERFLAX_SHARED_DATA') or ROOT.parent / 'shared' / 'data')
CONFIGS = sorted(Path(p).stem for p in glob.glob(str(ROOT / 'configs' / '*.py')))
ROWS = 2  # batch rows actually built (the state below is sized for the real batch)
needs_data = pytest.mark.skipif(
    not (SHARED / 't5' / 'spiece.model').is_file(),
    reason=f'shared data not found at {SHARED} (set HYPERFLAX_SHARED_DATA)')


STEP_FIELDS = ('hyper_inputs', 'encoder_inputs', 'decoder_inputs', 'targets', 'target_weights')
_ABSTRACT = {}


def _cached(key, build):
  if key not in _ABSTRACT:
    import flax.linen as nn
    _ABSTRACT[key] = nn.meta.unbox(build())
  return _ABSTRACT[key]


def _abstract_t5(t5_config):
  from hyperflax.model import abstract_params
  return _cached(('t5', repr(t5_config)), lambda: abstract_params(t5_config))


def _abstract_hyper(hyper_config, t5_config):
  from hyperflax import hyper as hyper_lib
  return _cached(('hyper', repr(hyper_config), repr(t5_config)),
                 lambda: hyper_lib.abstract_params(hyper_config, t5_config))


def load(name, arg=None):
  spec = importlib.util.spec_from_file_location(name, ROOT / 'configs' / f'{name}.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def _lengths(config):
  return Lengths.make(tuple(config.data.lengths)) if config.data.get('lengths') else None


def _check_shapes(batch, lengths, mode, rows):
  assert batch['targets'].shape == batch['decoder_inputs'].shape == (rows, lengths.decoder)
  enc = lengths.concat if mode == 'concat' else lengths.encoder
  assert batch['encoder_inputs'].shape == (rows, enc)
  if mode == 'hyper':
    h = batch['hyper_inputs']
    assert h.shape == (rows, lengths.hyper)
    assert (h[:, 0] != 0).all() and (batch['encoder_inputs'][:, 0] != 0).all()
  else:
    assert 'hyper_inputs' not in batch
  assert batch['target_weights'].sum(1).min() > 0


@needs_data
@pytest.mark.parametrize('name', CONFIGS)
def test_full_config_builds_its_data_and_abstract_state(name):
  from hyperflax.training.experiment import Experiment
  from hyperflax.training.optim import make_optimizer
  from hyperflax.training.step import create_state
  config = load(name)
  exp = Experiment.from_config(config)
  d, mode = config.data, exp.data_mode
  options = dict(d.get('options', {}) or {})
  stream = data.get_dataset(
      d.name, 'train', batch_size=ROWS, seed=config.seed, lengths=_lengths(config),
      num_shots=d.num_shots, data_dir=SHARED, mode=mode, **options)
  batch = next(iter(stream))
  if d.name in CACLM_DATASETS:  # the paper's segments in the config's own lengths
    seg, lengths = stream.segments, stream.lengths
    assert (seg.window, seg.b) == (512, 32)
    assert lengths == _lengths(config) and batch['target_weights'].sum() == ROWS * seg.c
    assert stream.stats.total('short_documents_skipped') > 0  # one document per window
  else:
    lengths = _lengths(config) or Lengths()
    assert lengths == Lengths(1024, 384, 128)  # HyperTuning appendix A / HART 8.1.3
  _check_shapes(batch, lengths, mode, ROWS)

  if config.eval.get('name'):
    e = config.eval
    eval_options = dict(e.get('options', {}) or {})
    if e.name.startswith('sni_'):
      eval_options['max_test_instances'] = 2
    else:
      eval_options['max_queries'] = 2
    if e.name == 'p3_heldout':  # one held-out dataset is enough for the shapes
      eval_options['datasets'] = ('super_glue/cb',)
    tasks = data.get_eval_tasks(
        e.name, e.split, seed=config.seed,
        lengths=tuple(e.get('lengths') or ()) or _lengths(config), num_shots=d.num_shots,
        data_dir=SHARED, mode=mode, **eval_options)
    first = next(tasks[0].batches(ROWS))
    _check_shapes(first, lengths, mode, first['targets'].shape[0])

  # The whole training state, abstractly (`create_state` under eval_shape, as
  # `Plan.build` does), for the config's real micro batch: HART sizes its
  # previous states from it. Parameter shapes come from cached eval_shapes
  # (one per distinct model): tracing an init costs seconds of CPU.
  accum = int(config.train.grad_accum_steps)
  assert config.data.batch_size == 256 and 256 % accum == 0
  micro = {k: jax.ShapeDtypeStruct((256 // accum,) + v.shape[1:], v.dtype)
           for k, v in batch.items() if k in STEP_FIELDS}
  params = {'downstream': _abstract_t5(exp.t5_config)}
  if exp.hyper is not None:
    params['hyper'] = _abstract_hyper(exp.hyper_config, exp.hyper_t5_config)
  trainable = {k: v for k, v in params.items() if k == 'hyper' or exp.trains_downstream}
  frozen = {k: v for k, v in params.items() if k not in trainable}
  optimizer = make_optimizer(config, int(config.train.num_steps))
  state = jax.eval_shape(lambda t, r, m: create_state(exp, optimizer, t, r, m),
                         trainable, jax.random.PRNGKey(0), micro)
  count = lambda tree: sum(math.prod(x.shape) for x in jax.tree.leaves(tree))
  downstream = count(state.trainable.get('downstream', frozen.get('downstream')))
  expected = {'large': 0.78e9, 'xl': 2.85e9}[config.model.preset]
  assert abs(downstream - expected) / expected < 0.01, downstream
  trains_downstream = config.method != 'hypermodel' or config.train_downstream
  assert ('downstream' in state.trainable) == trains_downstream
  assert ('downstream' in frozen) == (not trains_downstream)
  assert ('hyper' in state.trainable) == (config.method == 'hypermodel')
  # Adam moments for exactly the trainable parameters; nothing frozen in them.
  assert count(state.opt_state) >= 2 * count(state.trainable)
  hart_consistency = config.hyper.kind == 'hart' and config.hyper.consistency_alpha > 0
  assert (state.prev_states is not None) == bool(hart_consistency and mode == 'hyper')
  if hart_consistency:
    assert state.prev_states.shape[0] == 256 // accum


@pytest.mark.parametrize('name', [n for n in CONFIGS if load(n).hyper.hyperpretrain_config])
def test_hyperpretrained_configs_refuse_to_start_without_caclm(name):
  config = load(name)
  caclm = load(config.hyper.hyperpretrain_config)  # names an existing CACLM config ...
  assert caclm.data.name == 'caclm_c4' and caclm.train.num_steps == 100_000
  assert (caclm.hyper.kind, caclm.model.preset) == (config.hyper.kind, config.model.preset)
  with pytest.raises(ValueError) as err:  # ... and says so in one line
    check_hyperpretraining(config)
  message = str(err.value)
  assert '\n' not in message and 'hyper.init_from' in message
  assert 'hyper.skip_hyperpretraining=True' in message
  assert f'configs/{config.hyper.hyperpretrain_config}.py' in message
  with config.unlocked():
    config.hyper.skip_hyperpretraining = True
  check_hyperpretraining(config)
  with config.unlocked():
    config.hyper.skip_hyperpretraining = False
    config.hyper.init_from = '/somewhere/caclm_run'
  check_hyperpretraining(config)
  check_hyperpretraining(load(name, 'tiny'))  # smoke variants opt out


def test_which_configs_are_hyperpretrained():
  """HyperTuning hyperpretrains its HyperT5 models (§4.2, §5.5, appendix D's
  Prefix-MLP); HART removes the stage (its Table 1); baselines have no
  hypermodel to pretrain."""
  declared = {n for n in CONFIGS if load(n).hyper.hyperpretrain_config}
  assert declared == {n for n in CONFIGS if n.startswith('hypert5_')}
  with pytest.raises(ValueError, match='skip_hyperpretraining'):
    check_hyperpretraining(load('hypert5_prefix_xl'))
  for n in CONFIGS:
    if not n.startswith('hypert5_'):
      check_hyperpretraining(load(n))


@needs_data
def test_p3_configs_report_figure6_gaps_for_results_json():
  from hyperflax.evaluate import training_data_report
  config = load('hypert5_prefix_large')
  with config.unlocked():
    config.data.data_dir = str(SHARED)
  report = training_data_report(config)  # what evaluate writes into results.json
  assert report['dataset'] == 'p3_t0_train'
  fig = report['p3_figure6']
  assert (fig['num_present'], fig['num_missing'], fig['num_empty'], fig['num_filtered']) == (
      219, 11, 11, 0)
  assert report['counts']['empty_file_skipped'] == 11
  assert report['counts']['task_filtered_avg_input_gt_320'] == 58


def test_hyperpretraining_check_reads_init_from_through_the_workdir_reader(tmp_path, caplog):
  import logging
  from hyperflax.workdir import WorkdirError
  name = next(n for n in CONFIGS if load(n).hyper.hyperpretrain_config)
  config = load(name)
  with config.unlocked():
    config.hyper.init_from = str(tmp_path)
  (tmp_path / 'config.json').write_text('{"data": {"name": "p3')  # cut short
  with pytest.raises(WorkdirError, match=f'{tmp_path}/config.json: not valid JSON'):
    check_hyperpretraining(config)
  (tmp_path / 'config.json').write_text('{"data": {"name": "p3_t0_train"}}')
  with caplog.at_level(logging.WARNING):
    check_hyperpretraining(config)
  assert any("'p3_t0_train', not CACLM" in r.getMessage() for r in caplog.records)
