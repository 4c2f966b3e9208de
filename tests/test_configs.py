"""Every config: full size builds abstractly; its `:tiny` variant trains a step and evaluates.

The `:tiny` variants of the configs the default-run recipes use are trained
and evaluated there, on the real shared data (tests/test_pipeline.py: every
stage's loss is finite, its gradient non-zero, its evaluation written); here
only the others (the XL configs, whose recipes run under -m slow) and, under
-m slow, all of them on the synthetic data of `:tiny`.
"""

import glob
import importlib.util
import math
import os

import jax
import numpy as np
import pytest

from hyperflax import hyper as hyper_lib
from hyperflax.model import abstract_params
from hyperflax.training.experiment import Experiment

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, 'configs', '*.py')))


def load(name, arg=None):
  spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, 'configs', f'{name}.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def test_the_configs_the_issue_names_exist():
  wanted = {'hypert5_prefix_large', 'hypert5_prefix_xl', 'hypert5_lora_large', 'hypert5_lora_xl',
            'hart_large', 'hart_xl', 'caclm_prefix_large', 'caclm_lora_large', 't5_mtf_large',
            't5_mtf_fewshot_large', 't5_mtf_prefix_large', 't5_mtf_lora_large',
            'hypert5_plus_prefix_large', 'hypert5_plus_lora_large'}
  assert wanted <= set(CONFIGS)


def _count(tree):
  return sum(math.prod(x.value.shape if hasattr(x, 'value') else x.shape)
             for x in jax.tree.leaves(tree))


@pytest.mark.parametrize('name', CONFIGS)
def test_full_size_config_builds_without_allocating(name):
  config = load(name)
  exp = Experiment.from_config(config)
  downstream = _count(abstract_params(exp.t5_config))
  size = config.model.preset
  expected = {'large': 0.78e9, 'xl': 2.85e9, 'xxl': 11.13e9}[size]
  assert abs(downstream - expected) / expected < 0.01, downstream
  if exp.hyper is not None:
    hyper = _count(hyper_lib.abstract_params(exp.hyper_config, exp.hyper_t5_config))
    assert hyper > 0


def _covered_by_default_recipes() -> set:
  from hyperflax import recipes
  return {s.config for n, r in recipes.all_recipes().items() if not n.endswith('_xl')
          for s in r.stages}


_COVERED = _covered_by_default_recipes()


@pytest.mark.parametrize('name', [pytest.param(n, marks=pytest.mark.slow) if n in _COVERED
                                  else n for n in CONFIGS])
def test_tiny_variant_trains_a_step_and_evaluates(name, tmp_path):
  from hyperflax import evaluate
  from hyperflax.train import train
  config = load(name, 'tiny')
  with config.unlocked():
    config.train.num_steps = 1
    config.train.checkpoint_every = 1
    config.eval.options.max_queries = 2
    config.eval.options.heldout_tasks_per_family = 1
  out = train(config, str(tmp_path))
  assert np.isfinite(float(out['metrics']['loss']))
  assert int(out['state'].step) == 1
  before = jax.tree.leaves(Experiment.from_config(config).init(
      jax.random.split(jax.random.PRNGKey(config.seed))[0])[0])
  after = jax.tree.leaves(out['trainable'])
  assert any(not np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(before, after))
  if config.eval.name:
    summary = evaluate.evaluate(config, out['experiment'], out['trainable'], out['frozen'],
                                str(tmp_path / 'eval'))
    assert summary['per_task'] and 0.0 <= summary['average'] <= 100.0
    assert os.path.exists(tmp_path / 'eval' / 'predictions.jsonl')
