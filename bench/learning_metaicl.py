r"""Learning on real MetaICL: bench/learning.py's mini Table 1 protocol on a MetaICL split.

  python bench/learning_metaicl.py --quick                       # smoke: 1 seed, 2 models
  python bench/learning_metaicl.py --split=hr_to_lr --seeds=0 --workdir=runs/learning_metaicl

Every seed runs `hyperflax.demo.run` (the demo's tiny T5 v1.1, real T5
vocabulary): T5-MTF (the downstream T5 trained on the split's training tasks'
queries alone, then frozen), T5-MTF-Few-shot (trained further on K
demonstrations + query concatenated), and per hypermodel variant CACLM on the
shared C4 sample followed by multi-task fine-tuning on the split's training
tasks. Scoring is on the split's test tasks: K demonstrations from the seed-100
k=16 file, the first `--max-queries` test queries. Reported: MetaICL's headline
(macro-F1 on classification tasks, accuracy on multiple choice, averaged over
tasks), rank accuracy on every task, and exact match of greedy generation, as
mean ± sample std over seeds. Before training, the fit of the lengths is
measured (demonstrations dropped whole, queries/targets truncated) and written
beside the table. Reruns resume finished stages from `--workdir`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

import learning  # noqa: E402
from hyperflax import demo  # noqa: E402

SPLITS = ('hr_to_lr', 'non_nli_to_nli', 'non_class_to_class')
# Hypermodel input (K demonstrations + EOS) / encoder (query) / decoder (target):
# K = 4 demonstrations of median ~50 tokens fit in 256; the median test query
# is ~30 tokens, the longest option 22.
LENGTHS = (256, 64, 16)
K = 4
MAX_QUERIES = 16
# CACLM on the C4 sample, sized to the same lengths: a + d + 3 <= 256, c <= 16.
CACLM_SEGMENTS = (120, 32, 16, 120)
METRICS = {
    'headline': 'MetaICL headline (%), HyperTuning §5.2: macro-F1 of greedy generations on '
                'classification, ROUGE-L of generations otherwise',
    'rank_accuracy': 'rank-classification accuracy (%), every task — options shown',
    'generated_exact_match': demo.METRICS['generated_exact_match'],
}


def overrides(split: str, lengths=LENGTHS, k: int = K, max_queries: int = MAX_QUERIES,
              quick: bool = False) -> dict:
  """demo.run's few-shot stage overrides for MetaICL `split`."""
  name = f'metaicl_{split}'
  if quick:  # <= 4 queries x 8 options; short generations; one checkpoint per stage
    return {**overrides(split, lengths, k, max_queries), 'eval.batch_size': 32,
            'eval.max_decode_length': 4, 'train.checkpoint_every': 10**6}
  return {'data.name': name, 'eval.name': name, 'data.lengths': tuple(lengths),
          'data.num_shots': k, 'data.options': {},
          'eval.options': {'max_queries': max_queries},
          # <= 16 queries x <= 8 options per task; greedy generation up to the
          # decoder length (the longest option).
          'eval.batch_size': 64, 'eval.max_decode_length': lengths[2] - 1}


def caclm_overrides() -> dict:
  return {'data.name': 'caclm_c4', 'data.lengths': (),
          'data.options': {'segments': CACLM_SEGMENTS, 'use_tfds': False}}


def constant_headlines(task) -> list[float]:
  """The task's headline metric when every query gets the same answer: each
  class (macro-F1 tasks) or each option position (accuracy tasks)."""
  from hyperflax.metrics import macro_f1
  queries, gold = task.queries, [q.target for q in task.queries]
  if task.metric == 'macro_f1':
    return [macro_f1([o] * len(queries), gold) for o in queries[0].options]
  width = min(len(q.options) for q in queries)
  return [100 * float(np.mean([q.options[j] == q.target for q in queries])) for j in range(width)]


def fit_report(split: str, lengths=LENGTHS, k: int = K, max_queries: int = MAX_QUERIES,
               train_batches: int = 20, batch_size: int = 16, seed: int = 0) -> dict:
  """Tokenises what the run will see and counts what does not fit.

  Test: every query of every task with its K demonstrations (hypermodel input
  and T5-MTF-Few-shot's concatenation), every option as a target. Train: the
  first `train_batches` batches of the stream (hypermodel mode).
  """
  from hyperflax import data
  name = f'metaicl_{split}'
  report = {}
  for mode in ('hyper', 'concat'):
    tasks = data.get_eval_tasks(name, 'test', lengths=lengths, num_shots=k, mode=mode,
                                max_queries=max_queries)
    conv = tasks[0].converter
    used = dropped = queries = 0
    for task in tasks:
      for ep in task.episodes():
        if mode == 'hyper':
          _, u, d = conv.hyper_ids(ep)
          conv.query_ids(ep)
          for option in ep.query.options:
            conv.target_ids(ep, option)
        else:
          _, u, d = conv.encoder_ids(ep)
        used, dropped, queries = used + u, dropped + d, queries + 1
    report[f'test_{mode}'] = {
        'tasks': len(tasks), 'queries': queries, 'demos_used': used, 'demos_dropped': dropped,
        'queries_truncated': conv.stats.total('queries_truncated'),
        'targets_truncated': conv.stats.total('targets_truncated')}
    if mode == 'hyper':
      report['test_hyper']['chance_accuracy'] = 100 * float(np.mean(
          [t.chance for t in tasks if t.chance is not None]))
      const = [constant_headlines(t) for t in tasks if t.has_options]
      report['test_hyper']['constant_headline_mean'] = float(np.mean([np.mean(c) for c in const]))
      report['test_hyper']['constant_headline_best'] = float(np.mean([max(c) for c in const]))
  stream = data.get_dataset(name, 'train', batch_size=batch_size, seed=seed, lengths=lengths,
                            num_shots=k, mode='hyper')
  batches = [stream.batch(n) for n in range(train_batches)]
  report['train_hyper'] = {
      'episodes': train_batches * batch_size, 'tasks': len(stream.tasks),
      'demos_used': int(sum(b['hyper_num_used'].sum() for b in batches)),
      'demos_dropped': int(sum(b['hyper_num_dropped'].sum() for b in batches)),
      'queries_truncated': stream.stats.total('queries_truncated'),
      'targets_truncated': stream.stats.total('targets_truncated')}
  return report


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  ap.add_argument('--workdir', default='runs/learning_metaicl')
  ap.add_argument('--split', default='hr_to_lr', choices=SPLITS)
  ap.add_argument('--seeds', default='0')
  ap.add_argument('--variants', default='prefix,lora,hart',
                  help=f'hypermodel variants (known: {",".join(demo.VARIANTS)})')
  ap.add_argument('--scale', type=float, default=1.0, help="multiply every stage's steps")
  ap.add_argument('--max-queries', type=int, default=MAX_QUERIES, help='test queries per task')
  ap.add_argument('--no-fewshot', action='store_true', help='skip T5-MTF-Few-shot')
  ap.add_argument('--quick', action='store_true',
                  help='one seed, T5-MTF + HyperT5-LoRA, a few steps, 4 queries per task')
  args = ap.parse_args(argv)
  logging.getLogger().setLevel(logging.WARNING)
  seeds = [int(s) for s in args.seeds.split(',')]
  variants = [v for v in args.variants.split(',') if v]
  fewshot, max_queries = not args.no_fewshot, args.max_queries
  if args.quick:
    seeds, variants, fewshot, max_queries = seeds[:1], ['lora'], False, 4
    # A smoke run is mostly XLA compiling: LLVM's cheap pipeline (as the tests;
    # read when the backend starts, after this).
    if 'xla_backend_optimization_level' not in os.environ.get('XLA_FLAGS', ''):
      os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' --xla_backend_optimization'
                                 '_level=0 --xla_llvm_disable_expensive_passes=true').strip()
  os.makedirs(args.workdir, exist_ok=True)
  t0 = time.time()
  fit = fit_report(args.split, max_queries=max_queries, train_batches=2 if args.quick else 20)
  print('fit of lengths', LENGTHS, f'K={K}:', json.dumps(fit, indent=1))
  per_seed = []
  for seed in seeds:
    per_seed.append(demo.run(
        os.path.join(args.workdir, f'seed{seed}'), quick=args.quick, kinds=variants,
        scale=args.scale, seed=seed, fewshot=fewshot, eval_splits=('test',), metrics=METRICS,
        overrides=overrides(args.split, max_queries=max_queries, quick=args.quick),
        caclm_overrides=caclm_overrides()))
  plan = demo.plan(args.quick)
  steps = {k: max(1, int(round(plan[k] * args.scale)))
           for k in ('downstream_steps', 'fewshot_steps', 'caclm_steps', 'mtf_steps')}
  summary = learning.summarise(per_seed, ('test',), METRICS)
  text = (f'MetaICL {args.split}, seeds {seeds}; {time.time() - t0:.0f}s on this machine; '
          f'steps {steps}; lengths (hyper, encoder, decoder) {LENGTHS}; K={K}; '
          f'{max_queries} queries per test task; chance (uniform over options, accuracy) '
          f'{fit["test_hyper"]["chance_accuracy"]:.1f}%; one constant answer per task, '
          f'headline: {fit["test_hyper"]["constant_headline_mean"]:.1f} on average over the '
          f'answers, {fit["test_hyper"]["constant_headline_best"]:.1f} for the best\n\n'
          + learning.markdown(summary, ('test',), METRICS))
  print('\n' + text)
  with open(os.path.join(args.workdir, 'learning.md'), 'w') as f:
    f.write(text + '\n\nFit: ' + json.dumps(fit) + '\n')
  with open(os.path.join(args.workdir, 'learning.json'), 'w') as f:
    json.dump({'split': args.split, 'seeds': seeds, 'steps': steps, 'lengths': LENGTHS,
               'k': K, 'max_queries': max_queries, 'fit': fit, 'per_seed': per_seed,
               'summary': summary}, f, indent=2)


if __name__ == '__main__':
  main()
