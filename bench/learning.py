r"""Learning: a mini Table 1 on the synthetic suite, several seeds, mean and spread.

  python bench/learning.py --quick                 # 1 seed, 2 models, a few steps (smoke)
  python bench/learning.py --workdir=runs/learning  # 3 seeds, every model (about an hour here)
  python bench/learning.py --variants=hart,hart_no_consistency --seeds=0,1,2

Every seed runs `hyperflax.demo.run` (the demo's `--classic` recipe, the embedded default
until session 8: frozen downstream T5 trained on the queries alone = T5-MTF,
T5-MTF-Few-shot, then CACLM + multi-task fine-tuning of each hypermodel variant) with that seed for
model initialisation, data order and dropout; the tasks are the same. The
table reports mean ± sample standard deviation over seeds of held-out
rank-classification accuracy and held-out exact match of greedy generation,
on held-out task families and held-out tasks of the seen families. Reruns
resume finished stages from `--workdir`.
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

import numpy as np  # noqa: E402

from hyperflax import demo  # noqa: E402

# The demo's T5 has 2 layers, so bottom-up and top-down are its only generation
# orders ('hart_random_order' needs a deeper model: `--variants` with `--scale`).
ALL = ('shared_prefix', 'shared_lora', 'prefix', 'lora', 'hart', 'hart_no_consistency',
       'hart_top_down')


def summarise(per_seed: list[dict], splits, metrics=demo.METRICS) -> dict:
  """{model: {metric: {split: (mean, std, n)}}} over the seeds that have the model."""
  out = {}
  for model in dict.fromkeys(m for r in per_seed for m in r):
    out[model] = {}
    for metric in metrics:
      out[model][metric] = {}
      for split in splits:
        # None: a row with no value for this metric (the demos' majority answer generates nothing).
        vals = np.array([r[model][metric][split] for r in per_seed
                         if model in r and r[model][metric][split] is not None], dtype=float)
        std = vals.std(ddof=1) if len(vals) > 1 else float('nan')
        mean = float(vals.mean()) if len(vals) else float('nan')
        out[model][metric][split] = (mean, float(std), len(vals))
  return out


def markdown(summary: dict, splits, metrics=demo.METRICS) -> str:
  parts = []
  for metric, what in metrics.items():
    head = '| Model | ' + ' | '.join(splits) + ' | AVG | seeds |'
    rows = [head, '|' + '---|' * (len(splits) + 3)]
    for model, cells in summary.items():
      means = [cells[metric][s][0] for s in splits]
      if not cells[metric][splits[0]][2]:
        continue
      text = [f'{m:.1f} ± {cells[metric][s][1]:.1f}' for m, s in zip(means, splits)]
      seeds = cells[metric][splits[0]][2]
      rows.append(f'| {model} | ' + ' | '.join(text) + f' | {np.mean(means):.1f} | {seeds} |')
    parts.append(f'Held-out {what} (mean ± std over seeds):\n\n' + '\n'.join(rows))
  return '\n\n'.join(parts)


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  ap.add_argument('--workdir', default='runs/learning')
  ap.add_argument('--seeds', default='0,1,2')
  ap.add_argument('--variants', default=','.join(ALL),
                  help=f'hypermodel variants (known: {",".join(demo.VARIANTS)})')
  ap.add_argument('--scale', type=float, default=1.0, help="multiply every stage's steps")
  ap.add_argument('--no-fewshot', action='store_true', help='skip T5-MTF-Few-shot')
  ap.add_argument('--jobs', type=int, default=min(2, os.cpu_count() or 1),
                  help='processes for the stages after the downstream')
  ap.add_argument('--aggregate-only', action='store_true',
                  help="train nothing: tabulate the seeds' results.json already in --workdir")
  ap.add_argument('--quick', action='store_true',
                  help='one seed, T5-MTF + HyperT5-LoRA, a few steps each (smoke test)')
  args = ap.parse_args(argv)
  logging.getLogger().setLevel(logging.WARNING)
  seeds = [int(s) for s in args.seeds.split(',')]
  variants = [v for v in args.variants.split(',') if v]
  fewshot = not args.no_fewshot
  if args.quick:
    seeds, variants, fewshot = seeds[:1], ['lora'], False
  t0 = time.time()
  per_seed = []
  splits = demo.plan().eval_splits
  for seed in seeds:
    seed_dir = os.path.join(args.workdir, f'seed{seed}')
    if args.aggregate_only:
      with open(os.path.join(seed_dir, 'results.json')) as f:
        per_seed.append(json.load(f))
    else:
      per_seed.append(demo.run(seed_dir, quick=args.quick, kinds=variants, scale=args.scale,
                               seed=seed, fewshot=fewshot, jobs=args.jobs))
    # Written after every seed: a long run stopped early still leaves its table.
    summary = summarise(per_seed, splits)
    done = seeds[:len(per_seed)]
    text = (f'Seeds {done}; {time.time() - t0:.0f}s on this machine; chance {demo.CHANCE} '
            f'(rank classification)\n\n' + markdown(summary, splits))
    with open(os.path.join(args.workdir, 'learning.md'), 'w') as f:
      f.write(text + '\n')
    with open(os.path.join(args.workdir, 'learning.json'), 'w') as f:
      json.dump({'seeds': done, 'per_seed': per_seed, 'summary': summary}, f, indent=2)
  print('\n' + text)

if __name__ == '__main__':
  main()
