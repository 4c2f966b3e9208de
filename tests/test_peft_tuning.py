"""Hyper-init PEFT tuning (HyperTuning §6): training, step-0 equivalences, the table."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hyperflax import evaluate as eval_lib
from hyperflax import peft_tuning as pt
from hyperflax.demo import stage_config
from hyperflax.hyper import HyperConfig, abstract_params, cross_entropy
from hyperflax.hyper.testing import FAST_COMPILE, random_t5_params
from hyperflax.model import T5, preset
from hyperflax.model import peft as peft_lib
from hyperflax.model import xent
from hyperflax.training.experiment import Experiment
from hyperflax.training.step import make_score_step

# T5 vocabulary (the synthetic suite's SentencePiece ids), otherwise tiny.
T5C = preset('tiny', d_kv=8, num_decoder_layers=1, dropout_rate=0.0)
SIZES = dict(prefix_len=3, lora_rank=2)


def _config(kind='prefix'):
  c = stage_config('hypermodel', kind)
  c.eval.batch_size = 12
  c.eval.options.max_queries = 4
  c.eval.options.heldout_tasks_per_family = 1
  return c


@functools.lru_cache(maxsize=None)
def _frozen():
  return jax.tree.map(jnp.asarray, random_t5_params(T5C))


@functools.lru_cache(maxsize=None)
def _task(mode):
  return pt.load_tasks(_config(), 'heldout_families', mode, tasks_per_group=1)[0]


@functools.lru_cache(maxsize=None)
def _tuning(method):
  return pt.Tuning(method, T5C, **SIZES)


def _jit(fn):
  return jax.jit(fn, compiler_options=FAST_COMPILE)


def _run(kind) -> pt.GeneratorRun:
  """A random generator drawn in numpy (no init compile); LoRA gates open."""
  hyper = HyperConfig(kind=kind, decoder_layers=1, **SIZES)
  rng = np.random.default_rng(1)

  def draw(path, leaf):
    name = jax.tree_util.keystr(path)
    if name.endswith("_gate']"):
      return jnp.full(leaf.shape, 0.7, jnp.float32)
    if 'scale' in name:
      return jnp.asarray(1 + 0.1 * rng.standard_normal(leaf.shape), jnp.float32)
    std = leaf.shape[0] ** -0.5 if leaf.ndim >= 2 and 'embed' not in name else 0.5
    return jnp.asarray(std * rng.standard_normal(leaf.shape), jnp.float32)

  shapes = nn.unbox(abstract_params(hyper, T5C))
  params = jax.tree_util.tree_map_with_path(draw, shapes)
  return pt.GeneratorRun(Experiment(_config(kind), T5C, hyper), params,
                         compiler_options=FAST_COMPILE)


@_jit
def _pool_loss(frozen, peft, pool):
  """Mean token loss of the frozen T5 with `peft` (batch 1) on every pool row."""
  batch = pool['targets'].shape[0]
  logits = T5(T5C).apply({'params': frozen}, pool['encoder_inputs'], pool['decoder_inputs'],
                         peft=peft_lib.broadcast_to_batch(peft, batch))
  loss_sum, weight_sum = cross_entropy(logits, pool['targets'], pool['target_weights'])
  return loss_sum / weight_sum


def _row_scores(task, score_fn, trainable, frozen):
  return np.concatenate([np.asarray(score_fn(trainable, frozen, eval_lib._device_batch(b)))
                         for b in task.batches(12, scoring=True)])


def test_tuning_lowers_the_training_loss_and_compiles_once():
  tuning = _tuning('prefix')
  pool = jax.tree.map(jnp.asarray, pt.train_pool(_task('zero_shot')))
  assert pool['targets'].shape[0] == 16  # the task's K demonstrations
  steps = 6
  init_opt, tune = pt.make_tuner(tuning, steps, compiler_options=FAST_COMPILE)
  theta0, fixed = tuning.initial('random', seed=0)
  order = pt.minibatch_order(16, steps, 8, seed=0)
  before = _pool_loss(_frozen(), tuning.peft(theta0, fixed), pool)
  for lr in (1e-1, 1e-2):
    theta, _, losses = tune(theta0, init_opt(theta0, jnp.float32(lr)), fixed, _frozen(), pool,
                            order, jnp.float32(lr))
    assert losses.shape == (steps,)
    after = _pool_loss(_frozen(), tuning.peft(theta, fixed), pool)
    assert float(after) < float(before) - 0.05, (lr, before, after)
  assert tune._cache_size() == 1  # one compile for the whole learning-rate sweep


@pytest.mark.parametrize('method', ['prefix', 'prefix_mlp', 'lora'])
def test_hyper_init_at_step_zero_scores_as_the_hypermodel(method):
  run = _run(pt.SOURCE_KIND[(method, 'hyper')])
  hyper_task, task = _task('hyper'), _task('zero_shot')
  # The hypermodel path: the trainer's scorer generating the adapter from the demos.
  want = _row_scores(hyper_task, _jit(make_score_step(run.exp)), {'hyper': run.params},
                     {'downstream': _frozen()})
  tuning = _tuning(method)
  theta, fixed = tuning.initial('hyper', run=run,
                                hyper_inputs=jnp.asarray(pt.task_hyper_inputs(hyper_task)))
  got = _row_scores(task, _jit(tuning.score), {'theta': theta, 'fixed': fixed}, _frozen())
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
  assert np.ptp(want) > 0.1  # not a degenerate comparison


def test_random_lora_is_the_frozen_model():
  tuning = _tuning('lora')
  theta, fixed = tuning.initial('random', seed=3)
  assert all(float(jnp.abs(b).max()) == 0 for p, b in peft_lib.flatten(theta).items()
             if p.endswith('/b'))
  assert all(float(jnp.abs(a).max()) > 0 for p, a in peft_lib.flatten(theta).items()
             if p.endswith('/a'))

  def plain(_, frozen, batch):  # the frozen T5 without any PEFT, scored as `Tuning.score`
    hidden = T5(T5C).apply({'params': frozen}, batch['encoder_inputs'], batch['decoder_inputs'],
                           return_hidden=True)
    return xent.target_loglik(hidden, xent.lm_head_kernel(frozen), batch['targets'],
                              batch['target_weights'])

  task = _task('zero_shot')
  want = _row_scores(task, _jit(plain), None, _frozen())
  got = _row_scores(task, _jit(tuning.score), {'theta': theta, 'fixed': fixed}, _frozen())
  np.testing.assert_array_equal(got, want)


def test_summary_picks_the_best_learning_rate_per_task_and_averages_seeds():
  records = []
  scores = {('a', 1e-2): (50, 60), ('a', 1e-3): (70, 80),   # task a: 1e-3 is best
            ('b', 1e-2): (40, 40), ('b', 1e-3): (10, 20)}   # task b: 1e-2 is best
  for (task, lr), per_seed in scores.items():
    for seed, s in enumerate(per_seed):
      records.append(dict(method='lora', init='hyper', task=task, group=f'g{task}', lr=lr,
                          seed=seed, score=s, score_step0=5.0))
  summary = pt.summarise(records)
  row = summary['rows']['LoRA (Hyper Init)']
  assert summary['best_lr']['LoRA (Hyper Init)'] == {'a': 1e-3, 'b': 1e-2}
  assert row['ga'] == {'mean': 75.0, 'std': 5.0}
  assert row['gb'] == {'mean': 40.0, 'std': 0.0}
  assert row['AVG'] == {'mean': 57.5, 'std': 2.5}  # per seed: (70+40)/2, (80+40)/2
  one = pt.summarise(records, select='average')  # over both tasks: 1e-2 47.5, 1e-3 45
  assert one['best_lr']['LoRA (Hyper Init)'] == {'a': 1e-2, 'b': 1e-2}
  assert one['rows']['LoRA (Hyper Init)']['AVG'] == {'mean': 47.5, 'std': 2.5}
  assert '57.5 ± 2.5' in pt.format_table(summary['rows'], summary['columns'])


def _shared_data():
  from hyperflax.data.vocab import resolve_data_dir
  try:
    root = resolve_data_dir(None)
  except (FileNotFoundError, ValueError):
    return None
  return root if (root / 'p3' / 'eval').exists() and (root / 'metaicl').exists() else None


@pytest.mark.skipif(_shared_data() is None, reason='needs ../shared/data')
def test_paper_protocol_tasks_b1_prompts_tuned_on_training_data(tmp_path):
  """HyperTuning §6 / App. B.1: one prompt per held-out dataset, tuned on training
  examples (never a dev query), Hyper Init from 16 of them, the dev set scored."""
  import inspect
  from hyperflax import peft_data
  root = _shared_data()
  tasks = peft_data.peft_tasks(root)
  assert [t.data.group for t in tasks] == sorted(peft_data.B1_PROMPTS)
  for t in tasks:
    dataset, template = t.data.group, t.data.name[len(t.data.group) + 1:]
    assert template == peft_data.B1_PROMPTS[dataset][0]
    assert t.train_source == 'metaicl_train' and 100 <= len(t.train) <= 160, t.data.name
    dev = {q.input for q in t.data.queries}
    assert not dev & {e.input for e in t.train}  # tuned on training data only
    assert len(t.data.demos) == 16 and {d.input for d in t.data.demos} <= {e.input for e in t.train}
    assert all(e.target in e.options for e in t.train)
  cb = next(t for t in tasks if t.data.group == 'super_glue/cb')
  assert len(cb.data.queries) == 56  # the whole CB dev set is scored
  # Without MetaICL's files the layout cannot give training data: said, and the
  # old protocol (demonstrations from the dev set) is used instead.
  (tmp_path / 'p3').symlink_to(root / 'p3')
  fallback = peft_data.peft_tasks(tmp_path, datasets=['super_glue/cb'])[0]
  assert fallback.train_source == 'dev_demos' and len(fallback.train) == 16
  assert len(fallback.data.queries) == 56 - 16
  assert inspect.signature(pt.run_sweep).parameters['learning_rates'].default == \
      (1e-3, 1e-4, 1e-5)


def test_generated_lora_gate_is_folded_into_b():
  """Hyper Init tunes the same plain LoRA as the other inits (gate 1), with the same delta:
  a fixed gate of ~0.01 would scale every update down a hundredfold."""
  from hyperflax.training.peft_init import _split_lora
  rng = np.random.default_rng(0)
  a, b = rng.normal(size=(1, 2, 8, 4)), rng.normal(size=(1, 2, 4, 6))
  gate = np.array([[0.01, -0.5]])
  theta, fixed = _split_lora({'encoder': {'self': {'query': {
      'a': jnp.asarray(a), 'b': jnp.asarray(b), 'gate': jnp.asarray(gate)}}}})
  slot, g = theta['encoder']['self']['query'], fixed['encoder']['self']['query']['gate']
  np.testing.assert_array_equal(np.asarray(g), np.ones((1, 2)))
  np.testing.assert_allclose(np.asarray(slot['a']) @ np.asarray(slot['b']),
                             (a @ b) * gate[..., None, None], rtol=1e-5, atol=1e-6)
