"""Table 6/7 from hyper-init PEFT sweep records (`hyperflax.peft_tuning`)."""

from __future__ import annotations

import json
from collections import defaultdict

import numpy as np

from hyperflax.training.peft_init import INIT_LABELS, INITS, METHOD_LABELS, METHODS
from hyperflax.workdir import as_path, write_atomic


def summarise(records: list[dict], select: str = 'task') -> dict:
  """Table 6 from sweep records.

  For each (method, init) the learning rate is chosen per task (`select='task'`,
  the paper's "best average result over 3 random seeds" per method-task pair)
  or once over all tasks (`'average'`), on the mean over seeds. Each column
  (task group) is the mean over its tasks; AVG the mean over columns; both are
  computed per seed and reported as mean and std (numpy's, ddof=0) over seeds.

  Returns:
    {'columns': [...], 'rows': {label: {column: {'mean', 'std'}}},
     'step0': same for the scores before tuning, 'best_lr': {label: {task: lr}}}.
  """
  if select not in ('task', 'average'):
    raise ValueError(f"select={select!r}; known: 'task', 'average'")
  columns, group_of = [], {}
  for r in records:
    if r['group'] not in columns:
      columns.append(r['group'])
    group_of[r['task']] = r['group']
  # (method, init) -> task -> lr -> seed -> record
  table: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(dict)))
  for r in records:
    table[(r['method'], r['init'])][r['task']][r['lr']][r['seed']] = r
  rows, step0, best = {}, {}, {}
  order = {m: i for i, m in enumerate(METHODS)} | {i: j for j, i in enumerate(INITS)}
  for (method, init) in sorted(table, key=lambda k: (order[k[0]], order[k[1]])):
    by_task = table[(method, init)]
    label = f'{METHOD_LABELS[method]} ({INIT_LABELS[init]})'
    mean_of = lambda runs, key='score': float(np.mean([r[key] for r in runs.values()]))
    if select == 'average':
      lrs = next(iter(by_task.values())).keys()
      lr = max(lrs, key=lambda lr: np.mean([mean_of(by_task[t][lr]) for t in by_task]))
      chosen = {t: lr for t in by_task}
    else:
      chosen = {t: max(lrs, key=lambda lr: mean_of(lrs[lr])) for t, lrs in by_task.items()}
    best[label] = chosen
    seeds = sorted(next(iter(by_task[next(iter(by_task))].values())))
    for out, key in ((rows, 'score'), (step0, 'score_step0')):
      per_seed = {c: [] for c in columns}  # column -> [per-seed column score]
      for seed in seeds:
        for c in columns:
          vals = [by_task[t][chosen[t]][seed][key] for t in by_task if group_of[t] == c]
          per_seed[c].append(float(np.mean(vals)) if vals else float('nan'))
      present = [c for c in columns if not np.isnan(per_seed[c][0])]
      per_seed['AVG'] = [float(np.mean([per_seed[c][s] for c in present]))
                         for s in range(len(seeds))]
      out[label] = {c: {'mean': float(np.mean(v)), 'std': float(np.std(v))}
                    for c, v in per_seed.items()}
  return {'columns': columns + ['AVG'], 'rows': rows, 'step0': step0, 'best_lr': best}


def format_table(rows: dict, columns: list[str], first: str = 'Method') -> str:
  """A markdown table of 'mean ± std' cells."""
  cell = lambda v: '' if v is None or np.isnan(v['mean']) else f'{v["mean"]:.1f} ± {v["std"]:.1f}'
  lines = ['| ' + ' | '.join([first] + columns) + ' |',
           '|:--' + '|--:' * len(columns) + '|']
  for label, values in rows.items():
    lines.append('| ' + ' | '.join([label] + [cell(values.get(c)) for c in columns]) + ' |')
  return '\n'.join(lines)


def write_results(workdir, records: list[dict], summary: dict, settings: dict) -> str:
  """results.json and results.md in `workdir` (local or a URL, via epath)."""
  workdir = as_path(workdir)
  write_atomic(workdir / 'results.json',
               json.dumps({'settings': settings, 'summary': summary, 'records': records}, indent=1))
  text = (f'Tuned PEFT, accuracy (%) mean ± std over seeds {settings["seeds"]}, best learning '
          f'rate of {settings["learning_rates"]} per {settings["select"]}; '
          f'{settings["steps"]} steps\n\n' + format_table(summary['rows'], summary['columns'])
          + '\n\nBefore tuning (step 0)\n\n'
          + format_table(summary['step0'], summary['columns']) + '\n')
  write_atomic(workdir / 'results.md', text)
  return text
