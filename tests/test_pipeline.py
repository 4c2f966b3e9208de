"""The papers' tables end to end: every recipe at --scale=tiny on the real shared data.

The recipes run once per module into one workdir, so the runs they share
(HART's HyperTuning-PT is HyperTuning's HyperT5-Prefix; the CACLM runs) are
trained once. Identical programs (same shapes in every few-shot stage) are
compiled once through JAX's persistent compilation cache.
"""

import json
import math
import os

import jax
import numpy as np
import pytest

from hyperflax import pipeline, recipes
from hyperflax.data.vocab import resolve_data_dir

RECIPES = recipes.all_recipes()
XL = [n for n, r in RECIPES.items() if n.endswith('_xl')]
DEFAULT = [n for n in RECIPES if n not in XL]


def _data_present():
  try:
    root = resolve_data_dir(None)
  except (FileNotFoundError, ValueError):
    return False
  return all((root / p).exists() for p in ('p3', 'metaicl', 'sni', 'c4', 't5'))


pytestmark = pytest.mark.skipif(not _data_present(), reason='needs ../shared/data')


@pytest.fixture(scope='module')
def compile_cache(tmp_path_factory):
  from jax.experimental.compilation_cache import compilation_cache as cc
  saved = {k: getattr(jax.config, k) for k in (
      'jax_compilation_cache_dir', 'jax_persistent_cache_min_compile_time_secs',
      'jax_persistent_cache_min_entry_size_bytes')}
  jax.config.update('jax_compilation_cache_dir', str(tmp_path_factory.mktemp('xla_cache')))
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)
  cc.reset_cache()
  yield
  for k, v in saved.items():
    jax.config.update(k, v)
  cc.reset_cache()


def _run_default_recipes(workdir):
  """{recipe: table or the exception it raised}, all in one workdir."""
  tables = {}
  for name in DEFAULT:  # one failing recipe is reported with the others' results
    try:
      tables[name] = pipeline.run(RECIPES[name], workdir, scale='tiny')
    except Exception as e:  # pylint: disable=broad-except
      tables[name] = e
  return tables


def _table(tables, name):
  if isinstance(tables[name], Exception):
    raise AssertionError(f'recipe {name} failed') from tables[name]
  return tables[name]


def _check_table(recipe, table, workdir):
  assert [*table['rows']] == [row.label for row in recipe.rows]
  for label, values in table['rows'].items():
    assert set(values) == set(recipe.columns), (label, values)
    for column, v in values.items():
      assert math.isfinite(v) and 0.0 <= v <= 100.0, (label, column, v)
  text = (workdir / f'{recipe.name}.md').read_text()
  assert recipe.paper in text and all(row.label in text for row in recipe.rows)
  assert json.loads((workdir / f'{recipe.name}.json').read_text())['rows'] == table['rows']


def test_every_recipe_runs_end_to_end_at_tiny_scale(tmp_path, compile_cache, monkeypatch,
                                                   capsys):
  """One test (not one per recipe) so that `pytest -n` runs the recipes once:
  they share their runs in one workdir."""
  workdir = tmp_path / 'runs'
  tables = _run_default_recipes(workdir)
  for name in DEFAULT:
    _check_recipe(workdir, tables, name)
  _check_columns_and_data(workdir, tables)
  _check_mtf_starts_from_caclm(workdir, tmp_path)
  _check_hart_flan_backbone(workdir)
  _check_cli(workdir, capsys)
  _check_skip_and_refuse(workdir, tables, monkeypatch)  # last: it stubs out training


def _check_recipe(workdir, tables, name):
  recipe = RECIPES[name]
  _check_table(recipe, _table(tables, name), workdir)
  for stage in recipe.stages:  # each stage trained for real (what test_configs checked)
    path = pipeline.stage_dir(workdir, recipe, stage, 'tiny')
    rows = [json.loads(l) for l in (path / 'metrics.jsonl').read_text().splitlines()]
    assert rows and all(math.isfinite(r['loss']) and r['grad_norm'] > 0 for r in rows
                        if 'loss' in r), (stage.name, rows)
    if stage.evaluates:
      results = json.loads((path / 'eval' / 'results.json').read_text())
      assert results['per_task'], stage.name


def _check_columns_and_data(workdir, tables):
  p3 = _table(tables, 'hypertuning_p3')
  assert p3['columns'] == ['ANLI', 'HSwag', 'CB', 'COPA', 'RTE', 'WiC', 'WSC', 'WGD', 'AVG']
  row = p3['rows']['HyperT5-Prefix']
  assert row['AVG'] == pytest.approx(np.mean([row[c] for c in p3['columns'][:-1]]))
  assert _table(tables, 'hypertuning_metaicl')['columns'] == list(recipes.METAICL.values())
  # Each MetaICL column is its own split's run, scored on that split's test tasks.
  for split in recipes.METAICL:
    done = json.loads((workdir / f'hypert5_prefix_{split}_large' / pipeline.MARKER).read_text())
    assert done['config']['data']['name'] == f'metaicl_{split}'
    assert done['config']['eval']['name'] == f'metaicl_{split}'
  sni = json.loads((workdir / 't5_mtf_fewshot_sni_def_2pos_large' / pipeline.MARKER).read_text())
  assert sni['config']['data']['name'] == 'sni_def_2pos' and sni['config']['eval']['split'] == 'test'
  # The published numbers come along in the paper's layout.
  assert p3['paper_numbers']['HyperT5-Prefix']['AVG'] == 54.6
  assert _table(tables, 'hart_sni')['paper_numbers']['HART-FLAN-T5-Large'] == {'AVG': 49.6}


def _check_mtf_starts_from_caclm(workdir, tmp_path):
  """The hypermodel's parameters at step 0 of multi-task fine-tuning are the
  CACLM stage's final ones (and not a fresh initialisation)."""
  from hyperflax.train import load_trainable, train
  recipe = RECIPES['hypertuning_p3']
  stage = recipe.stage('hypert5_prefix_p3_large')
  config = pipeline.stage_config(recipe, stage, workdir, 'tiny')
  assert config.hyper.init_from == str(workdir / 'caclm_prefix_large')
  with config.unlocked():
    config.train.num_steps = 0  # keeps (and checkpoints) the initial state
    config.eval.name = ''
  train(config, str(tmp_path / 'step0'))
  step0 = load_trainable(str(tmp_path / 'step0'))['hyper']
  caclm = load_trainable(str(workdir / 'caclm_prefix_large'))['hyper']
  jax.tree.map(np.testing.assert_array_equal, step0, caclm)
  with config.unlocked():
    config.hyper.init_from = ''
  train(config, str(tmp_path / 'fresh'))
  fresh = load_trainable(str(tmp_path / 'fresh'))['hyper']
  assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(fresh),
                                                       jax.tree.leaves(caclm)))
  # The pipeline's own MTF run recorded that start.
  recorded = json.loads((workdir / stage.name / pipeline.MARKER).read_text())['config']
  assert recorded['hyper']['init_from'] == str(workdir / 'caclm_prefix_large')


def _check_hart_flan_backbone(workdir):
  from hyperflax.pretrained import load_pretrained
  from hyperflax.training.experiment import Experiment
  recipe = RECIPES['hart_sni']
  config = pipeline.stage_config(recipe, recipe.stage('hart_flan_sni_def_2pos_large'), workdir,
                                 'tiny')
  source = workdir / 't5_mtf_sni_def_2pos_large' / 'downstream'
  assert config.hyper.backbone_from == str(source)
  exp = Experiment.from_config(config)
  trainable, frozen = exp.init(jax.random.PRNGKey(0))
  _, flan = load_pretrained(str(source))
  backbone = trainable['hyper']['backbone']
  np.testing.assert_array_equal(backbone['token_embedder']['embedding'],
                                flan['token_embedder']['embedding'])
  assert not np.array_equal(backbone['token_embedder']['embedding'],
                            frozen['downstream']['token_embedder']['embedding'])


def _check_skip_and_refuse(workdir, tables, monkeypatch):
  recipe = RECIPES['hart_ablation']

  def no_training(*a, **k):
    raise AssertionError('a finished stage was trained again')
  monkeypatch.setattr('hyperflax.train.train', no_training)
  again = pipeline.run(recipe, workdir, scale='tiny')
  assert again['rows'] == _table(tables, 'hart_ablation')['rows']
  with pytest.raises(ValueError, match='finished with another config.*optim.learning_rate'):
    pipeline.run(recipe, workdir, scale='tiny', overrides={'optim.learning_rate': 0.5})


def _check_cli(workdir, capsys):
  assert pipeline.main(['pipeline', '--list']) == 0
  listed = capsys.readouterr().out
  assert all(name in listed for name in RECIPES)
  assert 'HyperTuning Table 3' in listed and 'HART Table 7' in listed
  assert pipeline.main(['pipeline', '--recipe=hypertuning_sni', f'--workdir={workdir}',
                        '--scale=tiny', '--dry-run']) == 0
  plan = capsys.readouterr().out
  assert '[done]' in plan and 'hyper.init_from=' in plan and 'caclm_prefix_large' in plan
  assert pipeline.main(['pipeline', '--recipe=nope', f'--workdir={workdir}']) == 2
  assert '--recipe' in capsys.readouterr().err


def test_full_scale_plan_chains_the_stages_and_needs_flan_t5(tmp_path):
  recipe = RECIPES['hart_sni']
  with pytest.raises(ValueError, match='--flan_t5'):
    pipeline.plan(recipe, tmp_path, 'full', {'model.init_from': '/t5'})
  steps = pipeline.plan(recipe, tmp_path, 'full', {'model.init_from': '/t5'}, flan_t5='/flan')
  by_name = {s.name: c for s, c, _ in steps}
  assert by_name['hypert5_prefix_sni_def_2pos_large'].hyper.init_from == \
      str(tmp_path / 'caclm_prefix_large')
  assert by_name['hart_flan_sni_def_2pos_large'].hyper.backbone_from == '/flan'
  assert by_name['hypertuning_sni_def_2pos_large'].hyper.skip_hyperpretraining
  assert by_name['t5_mtf_prefix_fewshot_sni_def_2pos_large'].data.mode == 'concat'
  assert all(c.model.init_from == '/t5' for c in by_name.values())
  assert by_name['caclm_prefix_large'].data.lengths == (355, 33, 128)  # the config's own


@pytest.mark.slow
@pytest.mark.parametrize('name', XL)
def test_xl_recipe_runs_end_to_end(name, tmp_path, compile_cache):
  table = pipeline.run(RECIPES[name], tmp_path, scale='tiny')
  _check_table(RECIPES[name], table, tmp_path)


def test_backbone_from_refuses_another_width(tmp_path):
  from hyperflax import checkpoints
  from hyperflax.config_base import base_config, tiny
  from hyperflax.hyper.testing import random_t5_params
  from hyperflax.model import preset
  from hyperflax.training.experiment import Experiment
  other = preset('tiny', d_model=32)
  checkpoints.save_params(tmp_path / 'wide', random_t5_params(other), other)
  config = tiny(base_config())
  config.hyper.kind = 'hart'
  config.hyper.backbone_from = str(tmp_path / 'wide')
  with pytest.raises(ValueError, match=r'backbone_from=.*d_model=32 but the frozen T5 has 64'):
    Experiment.from_config(config).load_backbone()


def test_only_shared_peft_baselines_take_few_shot_inputs():
  from hyperflax.config_base import base_config, tiny
  from hyperflax.training.experiment import Experiment
  config = tiny(base_config())
  config.data.mode = 'concat'
  for method, kind, ok in (('hypermodel', 'shared_prefix', True), ('hypermodel', 'shared_lora', True),
                           ('hypermodel', 'prefix', False), ('t5_mtf', 'prefix', False)):
    config.method, config.hyper.kind = method, kind
    exp = Experiment.from_config(config)
    if ok:
      assert exp.data_mode == 'concat'
    else:
      with pytest.raises(ValueError, match='config.data.mode'):
        exp.data_mode


def test_loaders_build_only_the_frozen_model_and_backbone_from_is_absolute(monkeypatch):
  """evaluate/seqio_eval restore the trainable tree: they must not load the
  HART-FLAN backbone (`init_frozen`), and a relative backbone_from is pinned."""
  import jax
  import numpy as np
  from hyperflax.config_base import base_config, tiny
  from hyperflax.training.experiment import Experiment
  from hyperflax.workdir import absolute_paths
  config = tiny(base_config())
  config.hyper.kind = 'hart'
  exp = Experiment.from_config(config)
  rng = jax.random.PRNGKey(3)
  _, frozen = exp.init(rng)
  monkeypatch.setattr(Experiment, 'load_backbone', lambda self: 1 / 0)
  only = exp.init_frozen(rng)
  assert jax.tree.structure(only) == jax.tree.structure(frozen)
  for a, b in zip(jax.tree.leaves(only), jax.tree.leaves(frozen)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  config.hyper.backbone_from = 'flan/t5'
  assert absolute_paths(config).hyper.backbone_from == os.path.join(os.getcwd(), 'flan/t5')
