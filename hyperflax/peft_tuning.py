r"""Hypermodel-generated initialisation for further PEFT (HyperTuning §6, Tables 6/7).

  # hypermodels from e.g. `python -m hyperflax.demo --classic --workdir=runs/demo
  #   --kinds=prefix,prefix_mlp,lora,shared_prefix,shared_lora`
  python -m hyperflax.peft_tuning --workdir=runs/hyper_init \
      --hyper_workdir=runs/demo/mtf_prefix,runs/demo/mtf_prefix_mlp,runs/demo/mtf_lora \
      --shared_workdir=runs/demo/mtf_shared_prefix,runs/demo/mtf_shared_lora \
      [--config=configs/x.py:tiny] [--learning_rates=1e-3,1e-4,1e-5] [--seeds=0,1,2]

The paper's protocol (`--protocol=paper`, the default; P3 held-out only): for
each held-out dataset, Appendix B.1's one prompt; the PEFT parameters of that
one task (batch axis 1, broadcast to the batch) are tuned on the dataset's
training examples (MetaICL's k=16 files of its training split, at most 160:
`hyperflax.peft_data` says what the shared layout has and lacks), the Hyper
Init is generated from 16 of them, and the whole dev set is scored by rank
classification (`evaluate.evaluate_task`). `--protocol=demos` tunes every
template of `config.eval` on its fixed demonstrations (drawn from the
evaluation set) and scores the remaining queries. Methods x initialisations:

  prefix      Prefix-Flat: the per-layer keys/values [1, L, P, F] are trained.
                random  a freshly initialised Prefix-MLP reparameterisation
                        (`SharedPrefix` init) run forward once (App. D);
                shared  the T5-MTF (Prefix) run's prefixes, run forward once;
                hyper   HyperT5-Prefix's prefixes from the task's demos.
  prefix_mlp  Prefix-MLP (Li & Liang): embeddings [2P, D] and the MLP are trained.
                random  `SharedPrefix` init; shared  the T5-MTF (Prefix) run's
                embeddings and MLP; hyper  HyperT5-Prefix-MLP's generated
                embeddings with its heads as the MLP (App. D).
  lora        LoRA a [1, L, D, R] and b [1, L, R, F] on q/v of every site.
                random  a ~ N(0, 1/D), b = 0 (an exact no-op); shared  the
                T5-MTF (LoRA) run's a, b; hyper  HyperT5-LoRA's a, b. A
                generated per-layer gate is folded into b (as the PEFT
                export does), so every init tunes a plain LoRA.

Each (method, init) is tuned at every learning rate and seed (AdamW, gradients
clipped to norm 1, constant rate by default, no dropout; the seed draws the
random init and the minibatch order over the training rows). As the
paper ({1e-3, 1e-4, 1e-5} by default), the best learning rate is chosen per method-task pair on the mean over
seeds (`--select=average`: one per method/init); the table reports mean ± std
over seeds of the per-column averages. There is no separate validation set:
the learning rate is chosen on the reported queries, so the numbers are
optimistic (as "best average result" in the paper).
Writes `results.json` and `results.md` (tuned, and at step 0) to `--workdir`.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections import defaultdict
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from hyperflax import hyper as hyper_lib
from hyperflax.training.experiment import Experiment, t5_config_from
from hyperflax.training.peft_init import (INIT_LABELS, INITS, METHOD_LABELS, METHODS,
                                          SOURCE_KIND, GeneratorRun, Tuning, load_run,
                                          make_tuner, minibatch_order, optimizer)
from hyperflax.training.peft_table import format_table, summarise, write_results
from hyperflax.workdir import as_path, read_json, write_atomic

__all__ = ['GeneratorRun', 'INITS', 'METHODS', 'SOURCE_KIND', 'Tuning', 'load_run',
           'load_tasks', 'make_tuner', 'minibatch_order', 'optimizer', 'run_sweep',
           'summarise', 'format_table', 'train_pool', 'task_hyper_inputs']


# ---- tasks ----------------------------------------------------------------------

_FIELDS = ('encoder_inputs', 'decoder_inputs', 'targets', 'target_weights')


def train_pool(task, num_examples: int | None = None, examples=None) -> dict[str, np.ndarray]:
  """Training rows [N, ...] (query -> target): `examples` (the paper's protocol:
  the task's training data), else the task's demonstrations."""
  from hyperflax.data.fewshot import Episode
  demos = list(task.demos if examples is None else examples)
  demos = demos[:num_examples] if num_examples else demos
  if not demos:
    raise ValueError(f'{task.name}: no demonstrations to tune on')
  eps = [Episode(task.name, d, (), task.data.definition, task.task_index, i)
         for i, d in enumerate(demos)]
  batch = task.converter.train_batch(eps)
  return {k: batch[k] for k in _FIELDS}


def task_hyper_inputs(task) -> np.ndarray:
  """[1, T] the few-shot string the hypermodel reads for `task` (a hyper-mode task)."""
  batch = next(iter(task.batches(1)))
  return batch['hyper_inputs'][:1]


def load_tasks(config, split: str, mode: str, tasks_per_group: int = 0):
  """`config.eval` tasks of `split` in `mode`; the first `tasks_per_group` per group."""
  from hyperflax import data
  from hyperflax.evaluate import eval_data_args
  tasks = data.get_eval_tasks(config.eval.name, split, mode=mode, **eval_data_args(config))
  if tasks_per_group:
    seen = defaultdict(int)
    keep = []
    for t in tasks:
      seen[t.group or t.name] += 1
      if seen[t.group or t.name] <= tasks_per_group:
        keep.append(t)
    tasks = keep
  return tasks


# ---- the sweep ------------------------------------------------------------------

def _plain(tree):
  """Nested plain dicts of jnp arrays (one pytree structure for every init)."""
  if hasattr(tree, 'items'):
    return {k: _plain(v) for k, v in tree.items()}
  return jnp.asarray(tree)


def _sizes(config, runs: dict[str, GeneratorRun], methods) -> dict:
  """prefix_len / lora_rank / head_hidden shared by every generator used."""
  h = config.get('hyper', {}) or {}
  sizes = {'prefix_len': h.get('prefix_len', 8), 'lora_rank': h.get('lora_rank', 4),
           'head_hidden': h.get('head_hidden', None)}
  fields = {'prefix_len': ('prefix', 'prefix_mlp', 'shared_prefix'),
            'head_hidden': ('prefix_mlp', 'shared_prefix'), 'lora_rank': ('lora', 'shared_lora')}
  for name, kinds in fields.items():
    values = {run.workdir or kind: getattr(run.exp.hyper_config, name)
              for kind, run in runs.items() if kind in kinds}
    if len(set(values.values())) > 1:
      raise ValueError(f'the generators disagree on {name}: {values}')
    if values:
      sizes[name] = next(iter(values.values()))
  return sizes


def run_sweep(config, runs: dict[str, GeneratorRun], downstream, *, methods=METHODS,
              inits=INITS, learning_rates=(1e-3, 1e-4, 1e-5), seeds=(0, 1, 2), steps: int = 50,
              batch_size: int = 8, split: str = 'validation', tasks_per_group: int = 0,
              train_examples: int = 0, eval_every: int = 0, schedule: str = 'constant',
              weight_decay: float = 0.0, protocol: str = 'paper', max_queries: int = 0,
              log: Callable = logging.info) -> list[dict]:
  """Tunes every (method, init, task, learning rate, seed); one record each.

  Args:
    config: supplies `model` (the downstream), `data` and `eval` (the tasks).
    runs: generator kind -> GeneratorRun (see SOURCE_KIND).
    downstream: the frozen T5's parameters.

    protocol: 'paper' (P3 held-out only): Appendix B.1's one prompt per
      dataset, tuned on the dataset's training examples (`hyperflax.peft_data`),
      the Hyper Init generated from 16 of them, the whole dev set scored;
      'demos': every template of `config.eval`, tuned on the task's fixed
      demonstrations (drawn from the evaluation set), the rest scored.

  Returns:
    Records {method, init, task, group, lr, seed, score, score_step0,
    loss_first, loss_last, curve [[step, score], ...], train_source}.
  """
  from hyperflax import evaluate as eval_lib
  for method in methods:
    for init in inits:
      kind = SOURCE_KIND.get((method, init))
      if kind and kind not in runs:
        flag = '--hyper_workdir' if init == 'hyper' else '--shared_workdir'
        raise ValueError(f'{METHOD_LABELS[method]} ({INIT_LABELS[init]}) needs a trained '
                         f'{kind!r} generator: pass its workdir in {flag}')
  if eval_every and steps % eval_every:
    raise ValueError(f'--steps={steps} must be a multiple of --eval_every={eval_every}')
  chunk = eval_every or steps
  t5_config = t5_config_from(config)
  sizes = _sizes(config, runs, methods)
  if protocol == 'paper':
    if config.eval.name != 'p3_heldout':
      raise ValueError(f"protocol 'paper' is HyperTuning §6 on P3 held-out tasks; "
                       f"config.eval.name={config.eval.name!r} needs --protocol=demos")
    from hyperflax import peft_data
    sets, train_sets, sources = peft_data.task_sets(
        config, ('zero_shot', 'hyper') if 'hyper' in inits else ('zero_shot',),
        max_queries=max_queries or None)
    tasks, hyper_tasks = sets['zero_shot'], sets.get('hyper')
  elif protocol == 'demos':
    tasks = load_tasks(config, split, 'zero_shot', tasks_per_group)
    hyper_tasks = load_tasks(config, split, 'hyper', tasks_per_group) if 'hyper' in inits \
        else None
    train_sets, sources = [None] * len(tasks), ['eval_demos'] * len(tasks)
  else:
    raise ValueError(f"protocol={protocol!r}; known: 'paper', 'demos'")
  if hyper_tasks and [t.name for t in hyper_tasks] != [t.name for t in tasks]:
    raise AssertionError('the hyper-mode and zero-shot task lists differ')
  eval_batch = int(config.eval.batch_size)
  max_decode = int(config.eval.get('max_decode_length', 32))
  records = []
  for method in methods:
    tuning = Tuning(method, t5_config, **sizes)
    init_opt, tune = make_tuner(tuning, steps, schedule, weight_decay)
    score_fn = jax.jit(tuning.score)
    generate_fn = jax.jit(lambda t, d, b: tuning.generate(t, d, b, max_decode))

    def evaluate(theta, fixed, task):
      result, _ = eval_lib.evaluate_task(task, score_fn, generate_fn,
                                         {'theta': theta, 'fixed': fixed}, downstream,
                                         eval_batch)
      return eval_lib.headline(result)

    for t, task in enumerate(tasks):
      t0 = time.time()
      pool = jax.tree.map(jnp.asarray, train_pool(task, train_examples or None, train_sets[t]))
      num_examples = int(pool['targets'].shape[0])
      hyper_inputs = jnp.asarray(task_hyper_inputs(hyper_tasks[t])) if hyper_tasks else None
      for init in inits:
        kind = SOURCE_KIND.get((method, init))
        run = runs.get(kind)
        start = None
        for seed in seeds:
          if start is None or init == 'random':  # only random init depends on the seed
            theta0, fixed = tuning.initial(init, seed, run, hyper_inputs)
            theta0, fixed = _plain(theta0), _plain(fixed)
            score0 = evaluate(theta0, fixed, task)
            start = (theta0, fixed, score0)
          theta0, fixed, score0 = start
          order = minibatch_order(num_examples, steps, batch_size, seed)
          for lr in learning_rates:
            lr_arr = jnp.float32(lr)
            theta, opt_state = theta0, init_opt(theta0, lr_arr)
            curve, losses = [[0, score0]], []
            for begin in range(0, steps, chunk):
              theta, opt_state, chunk_losses = tune(theta, opt_state, fixed, downstream, pool,
                                                    order[begin:begin + chunk], lr_arr)
              losses.append(np.asarray(chunk_losses))
              curve.append([begin + chunk, evaluate(theta, fixed, task)])
            losses = np.concatenate(losses) if losses else np.zeros(1)
            records.append({'method': method, 'init': init, 'task': task.name,
                            'group': task.group or task.name, 'lr': float(lr), 'seed': int(seed),
                            'score_step0': float(score0), 'score': float(curve[-1][1]),
                            'loss_first': float(losses[0]), 'loss_last': float(losses[-1]),
                            'curve': curve, 'train_source': sources[t]})
      done = [r for r in records if r['method'] == method and r['task'] == task.name]
      log(f'{METHOD_LABELS[method]} {task.name}: {len(done)} runs in {time.time() - t0:.0f}s; '
          + ', '.join(f'{i} {max(r["score"] for r in done if r["init"] == i):.1f}'
                      for i in inits))
  return records



def pipeline_sweep(workdirs: dict, out_dir, tiny: bool = False, **settings) -> dict:
  """Table 6/7 rows from trained runs (`hyperflax.pipeline`'s hyper-init recipe).

  Args:
    workdirs: {'hyper': [prefix, prefix_mlp, lora run dirs], 'shared': [...]}.
    out_dir: where results.json / results.md go.
    tiny: a smoke sweep (2 steps, one rate and seed, 4 queries, 8 training rows).
    **settings: `run_sweep` keyword arguments (override the above).

  Returns:
    {row label: {column: mean}} with the paper's P3 column names and AVG.
  """
  import json
  from hyperflax import recipes
  # epath throughout: a gs:// out_dir stays a URL (pathlib would make it 'gs:/...').
  out_dir = as_path(out_dir)
  done = out_dir / 'rows.json'
  key = {'workdirs': {k: [os.fspath(as_path(d)) for d in v] for k, v in workdirs.items()},
         'tiny': tiny,
         'settings': {k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()}}
  if done.exists():  # a finished sweep of the same runs and settings
    record = read_json(done)
    if isinstance(record, dict) and record.get('key') == key and 'rows' in record:
      return record['rows']
  config, runs = _config_and_runs(None, key['workdirs'].get('hyper', []),
                                  key['workdirs'].get('shared', []), allow_random=tiny)
  exp = Experiment(config, t5_config_from(config), None)
  downstream = _frozen_of(exp)
  if tiny:
    settings = dict(dict(learning_rates=(1e-3,), seeds=(0,), steps=2, batch_size=2,
                         max_queries=4, train_examples=8), **settings)
  records = run_sweep(config, runs, downstream, **settings)
  summary = summarise(records)
  write_results(out_dir, records, summary, {
      'seeds': settings.get('seeds', (0, 1, 2)), 'select': 'task', 'steps':
      settings.get('steps', 50), 'learning_rates': settings.get('learning_rates',
                                                                (1e-3, 1e-4, 1e-5))})
  rename = dict(recipes.P3_GROUPS, AVG='AVG')
  rows = {label: {rename[c]: v['mean'] for c, v in row.items() if c in rename}
          for label, row in summary['rows'].items()}
  write_atomic(done, json.dumps({'key': key, 'rows': rows}, indent=1))
  return rows


def _frozen_of(exp: Experiment):
  """The frozen T5 the generators were trained against: `model.init_from`, or
  (a `:tiny` run with `allow_random_init`) the random T5 `train` drew from the
  run's seed."""
  if exp.config.model.get('init_from', ''):
    return exp.load_downstream(jax.random.PRNGKey(0))
  init_rng, _ = jax.random.split(jax.random.PRNGKey(exp.config.seed))  # as train()
  down_rng, _ = jax.random.split(init_rng)  # as Experiment.init
  return exp.load_downstream(down_rng)


# ---- command line -------------------------------------------------------------------

def _config_and_runs(config, hyper_workdirs, shared_workdirs, allow_random: bool = False):
  runs: dict[str, GeneratorRun] = {}
  for flag, dirs, kinds in (('--hyper_workdir', hyper_workdirs, hyper_lib.HYPER_KINDS),
                            ('--shared_workdir', shared_workdirs, hyper_lib.SHARED_KINDS)):
    for workdir in dirs or ():
      run = load_run(workdir)
      if run.kind not in kinds:
        raise ValueError(f'{flag}={workdir}: a {run.kind!r} run; expected one of {kinds}')
      if run.kind in runs:
        raise ValueError(f'two {run.kind!r} runs: {runs[run.kind].workdir} and {workdir}')
      runs[run.kind] = run
  if config is None:
    if not runs:
      raise ValueError('no --config and no generator workdir to take the config from')
    config = next(iter(runs.values())).exp.config
  init_from = config.model.get('init_from', '')
  if not init_from and allow_random:  # `:tiny` runs: one random T5, drawn from one seed
    for run in runs.values():
      c = run.exp.config
      if (c.seed, c.model.to_dict()) != (config.seed, config.model.to_dict()):
        raise ValueError(f'{run.workdir}: trained against another random T5 (seed/model '
                         'differ) than the other generators')
    return config, runs
  if not init_from:
    raise ValueError('config.model.init_from is empty: PEFT tuning needs the frozen T5 '
                     'the generators were trained against')
  for run in runs.values():
    theirs = run.exp.config.model.get('init_from', '')
    if as_path(theirs) != as_path(init_from):  # URL-aware (abspath mangles gs://)
      raise ValueError(f'{run.workdir}: trained against config.model.init_from={theirs!r}, '
                       f'but the config tunes {init_from!r}')
  return config, runs


def main(argv=None) -> int:
  from absl import flags
  from ml_collections import config_flags
  from hyperflax import cli

  def define(fv):
    config_flags.DEFINE_config_file('config', None, 'config supplying model/data/eval (default: '
                                    "the first generator run's config.json)", lock_config=False,
                                    flag_values=fv)
    flags.DEFINE_string('workdir', None, 'where results.json / results.md are written',
                        flag_values=fv)
    flags.DEFINE_list('hyper_workdir', [], 'trained hypermodel runs (kinds prefix, prefix_mlp, lora)',
                      flag_values=fv)
    flags.DEFINE_list('shared_workdir', [], 'trained T5-MTF shared runs (shared_prefix, shared_lora)',
                      flag_values=fv)
    flags.DEFINE_list('methods', list(METHODS), f'PEFT methods, of {METHODS}', flag_values=fv)
    flags.DEFINE_list('inits', list(INITS), f'initialisations, of {INITS}', flag_values=fv)
    flags.DEFINE_list('learning_rates', ['1e-3', '1e-4', '1e-5'], 'learning-rate sweep '
                      '(the paper\'s)', flag_values=fv)
    flags.DEFINE_enum('protocol', 'paper', ['paper', 'demos'], "'paper': App. B.1's prompt "
                      "per P3 held-out dataset, tuned on its training data; 'demos': every "
                      'template, tuned on demonstrations from the evaluation set',
                      flag_values=fv)
    flags.DEFINE_list('seeds', ['0', '1', '2'], 'seeds (random init, minibatch order)',
                      flag_values=fv)
    flags.DEFINE_integer('steps', 50, 'optimiser steps per run', flag_values=fv)
    flags.DEFINE_integer('batch_size', 8, 'training minibatch (rows of the demonstrations)',
                         flag_values=fv)
    flags.DEFINE_integer('train_examples', 0, 'tune on the first N demonstrations (0: all)',
                         flag_values=fv)
    flags.DEFINE_string('split', None, 'evaluation split (default: config.eval.split)',
                        flag_values=fv)
    flags.DEFINE_integer('tasks_per_group', 0, 'first N tasks of each group (0: all)',
                         flag_values=fv)
    flags.DEFINE_integer('eval_every', 0, 'also score every N steps (0: only at the end)',
                         flag_values=fv)
    flags.DEFINE_enum('schedule', 'constant', ['constant', 'linear'], 'learning-rate schedule',
                      flag_values=fv)
    flags.DEFINE_float('weight_decay', 0.0, 'AdamW weight decay', flag_values=fv)
    flags.DEFINE_enum('select', 'task', ['task', 'average'], 'best learning rate per task (the '
                      'paper) or per method/init over all tasks', flag_values=fv)

  def run(fv):
    f = fv
    config, runs = _config_and_runs(f.config, f.hyper_workdir, f.shared_workdir)
    from hyperflax import runtime
    runtime.preflight(config)  # a full-size T5 on CPU is refused unless allowed
    runtime.log_runtime()
    exp = Experiment(config, t5_config_from(config), None)
    downstream = exp.load_downstream(jax.random.PRNGKey(0))
    split = f.split or config.eval.get('split', 'validation')
    settings = {k: getattr(f, k) for k in (
        'hyper_workdir', 'shared_workdir', 'methods', 'inits', 'steps', 'batch_size',
        'train_examples', 'tasks_per_group', 'eval_every', 'schedule', 'weight_decay', 'select',
        'protocol')}
    settings.update(learning_rates=[float(x) for x in f.learning_rates],
                    seeds=[int(x) for x in f.seeds], split=split,
                    downstream=config.model.init_from)
    t0 = time.time()
    records = run_sweep(config, runs, downstream, methods=f.methods, inits=f.inits,
                        learning_rates=settings['learning_rates'], seeds=settings['seeds'],
                        steps=f.steps, batch_size=f.batch_size, split=split,
                        tasks_per_group=f.tasks_per_group, train_examples=f.train_examples,
                        eval_every=f.eval_every, schedule=f.schedule,
                        weight_decay=f.weight_decay, protocol=f.protocol, log=print)
    settings['seconds'] = round(time.time() - t0)
    text = write_results(f.workdir, records, summarise(records, f.select), settings)
    print('\n' + text)

  return cli.absl_main(__doc__, define, run, argv, 'hyperflax.peft_tuning',
                       required=('workdir',))


if __name__ == '__main__':
  sys.exit(main())
