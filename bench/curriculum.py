r"""The curriculum with which the synthetic suite's binding appears at the demo's size (issue 13).

  python bench/curriculum.py --workdir=runs/curriculum --seed=0 [--hypermodels=hart,lora,prefix]
  # HART's generation orders (HART Table 7) need >= 3 layers; 3 hypermodel seeds on one chain:
  python bench/curriculum.py --workdir=runs/deep --layers=3 --recall_steps=1000,500 \
      --hypermodels=hart,hart_top_down,hart_random_order --hypermodel_seeds=1,2
  # HyperT5-Prefix where it binds: learning rate 3e-4, 2,000 steps
  python bench/curriculum.py --workdir=runs/curriculum --hypermodels=prefix,lora \
      --hypermodel_lr=3e-4 --hypermodel_steps=2000

Each stage is a `bench/learning_curves.py` run (its own `curve.json`), initialised from the
previous stage's downstream; all use the `words_compact` vocabulary, the demo's T5 (2+2 layers,
d_model 128), batch 32, AdamW 1e-3 after 100 warm-up steps, no gradient clipping:

  recall_adjacent   `synthetic_recall`, 40 animal keys, each next to its value
  recall_separated  `synthetic_recall`, ~4,900 keys, `<y>` between key and value (the suite's
                    demonstrations put `<y>` there)
  fewshot           T5-MTF-Few-shot: the suite with the query read in the decoder
                    (`query_in_decoder`, `query_marks='none'`) and up to 8 demonstrations
                    moved to the decoder as scored lookups (`decoder_recall`); key-last
                    training layouts, many keys
  <hypermodel>      each of --hypermodels on the frozen `fewshot` downstream (its backbone
                    initialised from it, as the papers do)
  t5_mtf            the suite without demonstrations, from scratch (the zero-shot baseline)

A recall stage still on the plateau after its steps (training loss > 0.3) goes on 250 steps at
a time (up to --max_recall_steps): the step of the transition varies with the initialisation.
From scratch on the suite, or with `<y>` between key and value from the start, none of our
runs bound within 4,000-6,000 steps (bench/RESULTS.md). Prints the held-out table (rank
accuracy, options shown) and writes it to `<workdir>/summary.json`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import learning_curves as lc  # noqa: E402

from hyperflax import curriculum  # noqa: E402

stages = curriculum.stages  # the tests and callers of this script use it by this name


def run(workdir: str, seed: int, hypermodels, steps: dict, splits=('heldout_families',
                                                                   'heldout_tasks'),
        max_recall_steps: int = 3000, layers: int = 0, hypermodel_seeds=(),
        hypermodel_lr: float | None = None) -> dict:
  """Runs the stages in order. A recall stage not yet bound (`curriculum.bound`: the
  plateau is ~1.1 nats per answer) goes on 250 steps at a time, up to `max_recall_steps`,
  since when the transition comes varies with the initialisation.

  `layers`: encoder and decoder layers of every stage's T5 (0: the demo's 2); HART's random
  generation order needs at least 3. `hypermodel_seeds`: further seeds of each hypermodel on
  the same frozen few-shot T5, in `<hypermodel>_s<seed>` (the chain is trained once).
  `hypermodel_lr`: the hypermodels' learning rate (None: the stages' 1e-3; HyperT5-Prefix
  binds at 3e-4 and 2,000 steps, not at 1e-3: bench/RESULTS.md, "Session 10"), in stages
  named `<hypermodel>_lr<rate>`, so that one chain serves several rates."""
  summary = {'seed': seed, 'steps': steps, 'layers': layers or lc.demo.DEMO_T5['num_layers'],
             'hypermodel_lr': hypermodel_lr, 'stages': {}}
  rate = {'optim.learning_rate': hypermodel_lr} if hypermodel_lr is not None else {}
  deep = {'model.overrides.num_layers': layers,
          'model.overrides.num_decoder_layers': layers} if layers else {}
  plan = []
  for name, model, n, overrides, after in stages(steps, hypermodels):
    if model in hypermodels and rate:
      name, overrides = f'{name}_lr{hypermodel_lr:g}', {**overrides, **rate}
    plan.append((name, model, n, overrides, after, seed))
    if model in hypermodels:
      plan += [(f'{name}_s{s}', model, n, overrides, after, s)
               for s in dict.fromkeys(hypermodel_seeds) if s != seed]
  for name, model, n, overrides, after, seed_ in plan:
    overrides = {**overrides, **deep}
    downstream = os.path.join(workdir, after, 'downstream') if after else ''
    rows = lc.run_curve(workdir, model, [n], seed_, overrides, downstream, name, splits)
    last = next(r for r in rows if r['step'] == n)
    while (name.startswith('recall') and not curriculum.bound(last['loss'])
           and last['step'] + curriculum.CONTINUE_STEPS <= max_recall_steps):
      n = last['step'] + curriculum.CONTINUE_STEPS
      rows = lc.run_curve(workdir, model, [n], seed_, overrides, downstream, name, splits)
      last = next(r for r in rows if r['step'] == n)
    summary['stages'][name] = {
        'seed': seed_, 'step': last['step'], 'loss': last['loss'],
        **{s: {'accuracy': last[s]['accuracy'], 'chance': last[s]['chance'],
               'majority': last[s].get('majority'),
               'per_group': {g: v['accuracy'] for g, v in last[s]['per_group'].items()}}
           for s in splits if s in last}}
  with open(os.path.join(workdir, 'summary.json'), 'w') as f:
    json.dump(summary, f, indent=1)
  chance = next(iter(summary['stages'].values()))[splits[0]]['chance']
  print(f'seed {seed}: rank accuracy (%), chance {chance:.1f} on {splits[0]}')
  for name, st in summary['stages'].items():
    print(f'  {name:22s} ' + '  '.join(f'{s} {st[s]["accuracy"]:5.1f}' for s in splits
                                      if s in st))
  return summary


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  ap.add_argument('--workdir', default='runs/curriculum')
  ap.add_argument('--seed', type=int, default=0)
  ap.add_argument('--hypermodels', default='hart', help='comma-separated demo.VARIANTS')
  ap.add_argument('--recall_steps', default='1000,1000', help='adjacent,separated')
  ap.add_argument('--fewshot_steps', type=int, default=500)
  ap.add_argument('--hypermodel_steps', type=int, default=300)
  ap.add_argument('--t5_mtf_steps', type=int, default=500)
  ap.add_argument('--max_recall_steps', type=int, default=3000,
                  help='a recall stage not yet bound (loss > 0.3) goes on up to this many steps')
  ap.add_argument('--layers', type=int, default=0,
                  help="encoder and decoder layers of the T5 (0: the demo's 2)")
  ap.add_argument('--hypermodel_seeds', default='',
                  help='comma-separated further seeds of each hypermodel on the same chain')
  ap.add_argument('--hypermodel_lr', type=float, default=None,
                  help="the hypermodels' learning rate (default: the stages' 1e-3)")
  a = ap.parse_args(argv)
  logging.getLogger().setLevel(logging.WARNING)
  if a.hypermodel_lr is not None and not a.hypermodel_lr > 0:
    ap.error(f'--hypermodel_lr={a.hypermodel_lr}: expected a positive learning rate')
  if a.layers < 0:
    ap.error(f'--layers={a.layers}: expected >= 1 (or 0 for the demo\'s)')
  adj, sep = (int(x) for x in a.recall_steps.split(','))
  hyper = [h for h in a.hypermodels.split(',') if h]
  unknown = sorted(set(hyper) - set(lc.demo.VARIANTS))
  if unknown:
    ap.error(f'--hypermodels: unknown {unknown}; known: {sorted(lc.demo.VARIANTS)}')
  run(a.workdir, a.seed, hyper, {'recall_adjacent': adj, 'recall_separated': sep,
                                 'fewshot': a.fewshot_steps, 'hypermodel': a.hypermodel_steps,
                                 't5_mtf': a.t5_mtf_steps},
      max_recall_steps=a.max_recall_steps, layers=a.layers,
      hypermodel_seeds=[int(x) for x in a.hypermodel_seeds.split(',') if x],
      hypermodel_lr=a.hypermodel_lr)


if __name__ == '__main__':
  main()
