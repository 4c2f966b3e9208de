r"""Evaluate a trained hypermodel (or baseline) on held-out tasks.

  python -m hyperflax.evaluate --workdir=$WORKDIR [--split=validation]
  python -m hyperflax.evaluate --config=configs/hart_xl.py --workdir=$WORKDIR \
      --config.eval.name=p3_heldout   # another eval section, same architecture

Restores the newest readable checkpoint in `--workdir` with its own
config.json and tokenizer, scores every evaluation task —
rank classification (accuracy, or macro-F1 where the task asks for it) when
queries have answer options, greedy generation (S-NI ROUGE-L and exact match)
otherwise — and writes `predictions.jsonl` (task, input, prediction,
references) and `results.json` into the workdir, then prints a table shaped
like the papers' tables.
"""

from __future__ import annotations

import json
import logging
import sys
from collections import defaultdict

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from hyperflax import metrics as metrics_lib
from hyperflax.training.experiment import Experiment
from hyperflax.training.step import make_generate_step, make_score_step
from hyperflax.workdir import as_path, load_run_config, load_trainable, write_atomic

_ARRAY_FIELDS = ('hyper_inputs', 'encoder_inputs', 'decoder_inputs', 'targets',
                 'target_weights')


def eval_data_args(config: ml_collections.ConfigDict, collection: str | None = None) -> dict:
  """The data settings of the run's evaluation collection (`config.eval.name`), or of another
  `collection` (which does not take `eval.options`): one derivation for this loop, the
  SeqIO job (`seqio_eval.register_for_run`) and PEFT tuning (`peft_tuning.load_tasks`)."""
  d, e = config.data, config.eval
  options = dict(e.get('options', {}) or {}) if collection in (None, e.name) else {}
  return dict(seed=config.seed, lengths=tuple(e.get('lengths') or d.get('lengths') or ()) or None,
              num_shots=d.num_shots, data_dir=d.get('data_dir') or None,
              vocab_path=d.get('vocab_path') or None, **options)


def eval_tasks(config: ml_collections.ConfigDict, exp: Experiment, split: str | None = None):
  from hyperflax import data
  return data.get_eval_tasks(config.eval.name, split or config.eval.split, mode=exp.data_mode,
                             **eval_data_args(config))


def _device_batch(batch):
  return {k: jnp.asarray(batch[k]) for k in _ARRAY_FIELDS if k in batch}


def _decode(tokenizer, ids) -> str:
  ids = [int(i) for i in ids]
  if 1 in ids:
    ids = ids[:ids.index(1)]
  return tokenizer.decode([i for i in ids if i > 1])


def _generate_texts(task, generate_fn, trainable, frozen, batch_size: int) -> list[str]:
  texts = []
  tokenizer = task.converter.tokenizer
  for batch in task.batches(batch_size, scoring=False):
    out = np.asarray(generate_fn(trainable, frozen, _device_batch(batch)))
    for row, pad in zip(out, batch['is_padding']):
      if not pad:
        texts.append(_decode(tokenizer, row))
  return texts


def evaluate_task(task, score_fn, generate_fn, trainable, frozen, batch_size: int,
                  also_generate: bool = False):
  """Returns (metrics dict, prediction rows) for one evaluation task.

  With `also_generate`, tasks with options are also answered by greedy
  generation (no options shown) and scored by exact match, reported as
  `generated_exact_match`; their rows gain a `generated` field.

  Tasks marked `on_generations` (MetaICL, HyperTuning §5.2) are always
  generated: the headline is `generated_macro_f1` (classification) or
  `generated_rougeL`, the row's `prediction` is the generation, and rank
  classification is kept as `rank_accuracy` / `rank_macro_f1` (row field
  `rank_prediction`).
  """
  rows, result = [], {}
  generated = None
  on_generations = bool(getattr(task, 'on_generations', False))
  if task.has_options:
    idx, opt, scores, pad = [], [], [], []
    for batch in task.batches(batch_size, scoring=True):
      s = np.asarray(score_fn(trainable, frozen, _device_batch(batch)))
      idx.append(batch['example_index']), opt.append(batch['option_index'])
      scores.append(s), pad.append(batch['is_padding'])
    pred = metrics_lib.group_option_scores(np.concatenate(idx), np.concatenate(opt),
                                           np.concatenate(scores), np.concatenate(pad),
                                           num_examples=len(task.queries))
    gold = np.array([q.label for q in task.queries])
    rank = {'accuracy': float(np.mean(pred == gold) * 100)}
    texts = [q.options[p] if p >= 0 else '' for q, p in zip(task.queries, pred)]
    if task.metric == 'macro_f1':
      rank['macro_f1'] = metrics_lib.macro_f1(texts, [q.target for q in task.queries])
    result.update({f'rank_{k}': v for k, v in rank.items()} if on_generations else rank)
    if also_generate or on_generations:
      generated = _generate_texts(task, generate_fn, trainable, frozen, batch_size)
      refs = [list(q.all_references) for q in task.queries]
      if on_generations:
        gen = metrics_lib.metaicl_generation_metrics(
            generated, [q.target for q in task.queries], task.metric == 'macro_f1')
        result.update({f'generated_{k}': v for k, v in gen.items()})
      if also_generate:
        result['generated_exact_match'] = metrics_lib.compute_metrics(
            generated, refs)['exact_match']
  else:
    texts = _generate_texts(task, generate_fn, trainable, frozen, batch_size)
    refs = [list(q.all_references) for q in task.queries]
    result.update(metrics_lib.compute_metrics(texts, refs))
  for i, (q, text) in enumerate(zip(task.queries, texts)):
    rows.append({'task': task.name, 'input': q.input, 'prediction': text,
                 'references': list(q.all_references)})
    if generated is not None and on_generations:
      rows[-1].update(prediction=generated[i], rank_prediction=text)
    elif generated is not None:
      rows[-1]['generated'] = generated[i]
  if task.chance is not None:
    result['chance'] = task.chance * 100
  if task.majority is not None:
    result['majority'] = task.majority * 100
  return result, rows


HEADLINE_METRICS = ('generated_macro_f1', 'generated_rougeL', 'macro_f1', 'accuracy',
                    'rougeL', 'exact_match')


def headline(result: dict) -> float:
  """A task's score in the papers' tables: MetaICL's generation metric, else
  rank-classification macro-F1/accuracy (P3), else ROUGE-L (S-NI)."""
  for key in HEADLINE_METRICS:
    if key in result:
      return result[key]
  return float('nan')


def training_data_report(config: ml_collections.ConfigDict) -> dict:
  """`data.data_report` of the training dataset (what was present, missing or
  filtered), for results.json; its summary is logged when it is built."""
  from hyperflax import data
  d = config.data
  try:
    return data.data_report(d.name, seed=config.seed, num_shots=d.num_shots,
                            data_dir=d.get('data_dir') or None,
                            vocab_path=d.get('vocab_path') or None,
                            **dict(d.get('options', {}) or {}))
  except (OSError, ValueError) as e:  # evaluating where the training data is not
    logging.warning('no data report of the training set %r: %s', d.name, e)
    return {'dataset': d.name, 'error': str(e)}


def evaluate(config: ml_collections.ConfigDict, exp: Experiment, trainable: dict, frozen: dict,
             workdir: str, split: str | None = None, label: str | None = None) -> dict:
  """Evaluates every task of `config.eval.name`; writes predictions and results."""
  e = config.eval
  score_fn = jax.jit(make_score_step(exp))
  generate_fn = jax.jit(make_generate_step(exp, int(e.get('max_decode_length', 32))))
  per_task, groups, all_rows = {}, defaultdict(list), []
  group_metrics = defaultdict(lambda: defaultdict(list))
  for task in eval_tasks(config, exp, split):
    result, rows = evaluate_task(task, score_fn, generate_fn, trainable, frozen,
                                 int(e.batch_size), bool(e.get('also_generate', False)))
    per_task[task.name] = result
    groups[task.group or task.name].append(headline(result))
    for key, value in result.items():
      group_metrics[task.group or task.name][key].append(value)
    all_rows.extend(rows)
    logging.info('eval %s: %s', task.name, result)
  summary = {'per_task': per_task,
             'per_group': {g: float(np.mean(v)) for g, v in groups.items()},
             'average': float(np.mean([headline(r) for r in per_task.values()])),
             # Every metric, averaged over the tasks of each group and of all.
             'per_group_metrics': {g: {k: float(np.mean(v)) for k, v in m.items()}
                                   for g, m in group_metrics.items()},
             'average_metrics': {k: float(np.mean([r[k] for r in per_task.values() if k in r]))
                                 for k in sorted({k for r in per_task.values() for k in r})}}
  summary['data_report'] = training_data_report(config)
  out = as_path(workdir)
  write_atomic(out / 'predictions.jsonl', ''.join(json.dumps(row) + '\n' for row in all_rows))
  write_atomic(out / 'results.json', json.dumps(summary, indent=2))
  name = label or (config.hyper.kind if config.method == 'hypermodel' else config.method)
  columns = sorted(summary['per_group'])
  print(metrics_lib.format_table({name: summary['per_group']}, columns))
  return summary


def main(argv=None) -> int:
  from absl import flags
  from ml_collections import config_flags
  from hyperflax import cli

  def define(fv):
    config_flags.DEFINE_config_file(
        'config', None, 'optional: a config of the same architecture whose eval section '
        '(and data.data_dir) replace those of the run\'s own config.json', flag_values=fv,
        lock_config=False)
    flags.DEFINE_string('workdir', None, 'training workdir (or gs:// URL) holding checkpoints/',
                        flag_values=fv)
    flags.DEFINE_string('split', None, 'evaluation split (default: config.eval.split)',
                        flag_values=fv)

  def run(fv):
    config = run_config(fv.workdir, fv.config)
    from hyperflax import runtime
    runtime.preflight(config)  # full-size on CPU / random frozen T5: refused
    runtime.log_runtime()
    exp = Experiment.from_config(config)
    init_rng, _ = jax.random.split(jax.random.PRNGKey(config.seed))  # as train() does
    frozen = exp.init_frozen(init_rng)  # the trainable one is restored just below
    step, restored = load_trainable(fv.workdir, with_step=True)
    logging.info('evaluating %s at step %d', fv.workdir, step)
    trainable = jax.tree.map(jnp.asarray, restored)
    evaluate(config, exp, trainable, frozen, fv.workdir, fv.split)
    return 0

  return cli.absl_main(__doc__, define, run, argv, 'hyperflax.evaluate', required=('workdir',))


def run_config(workdir, given=None) -> ml_collections.ConfigDict:
  """The workdir's own config.json (tokenizer pinned); from `given` only the
  `eval` section and data paths are taken, and a different architecture is refused."""
  from hyperflax.workdir import WorkdirError, _importance, architecture
  config = load_run_config(workdir)
  if given is None:
    return config
  theirs, ours = architecture(config), architecture(given)
  diffs = [f'{k}={ours[k]!r} (the run has {theirs[k]!r})'
           for k in sorted(set(theirs) & set(ours), key=_importance) if theirs[k] != ours[k]]
  if diffs:
    raise WorkdirError(f'--config asks for {"; ".join(diffs)}: {workdir} was trained otherwise; '
                       'drop --config to use its own config.json')
  with config.unlocked():
    config.eval = given.eval
    config.runtime = given.get('runtime', config.get('runtime'))  # this machine, not the run's
    for key in ('data_dir',):
      if given.data.get(key):
        config.data[key] = given.data[key]
  return config


if __name__ == '__main__':
  sys.exit(main())
