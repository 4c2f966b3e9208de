r"""Learning curves on the synthetic suite: held-out accuracy against training step.

  python bench/learning_curves.py --workdir=/tmp/curves --model=fewshot --points=250,500,1000
  python bench/learning_curves.py --workdir=/tmp/curves --model=lora \
      --downstream=/tmp/curves/t5_mtf/downstream --points=200,400
  python bench/learning_curves.py --workdir=/tmp/curves --plot   # PNG + JSON of every run there

Curriculum and diagnostic levers go through `--set` (RESULTS, "Learning: looking for a
regime"): the suite's `data.options` `layouts` ('varied', 'varied_key_last'),
`train_families`, `num_labels`, `many_keys`, and `recall_slots` (in-context recall rows for a
few-shot model), e.g.
  --set 'data.options={"many_keys":True,"num_labels":12,"recall_slots":8,"layouts":"varied"}'
`query_in_decoder` (the decoder reads `<x> query <y>`; give it in `eval.options` too, with
`eval.also_generate=False`) and `decoder_recall` (up to M demonstrations move to the decoder as
scored lookups) are the format in which `bench/recall_sanity.py` shows T5 binding; with
`query_marks='none'` the decoder reads `query target`, and `data.name=synthetic_recall` trains
on in-context recall rows (`bench/curriculum.py` chains these runs into the regime where the
suite binds).

One model per call: `t5_mtf` (the downstream, queries alone), `fewshot`
(T5-MTF-Few-shot) or a hypermodel variant of `hyperflax.demo.VARIANTS`
(against a frozen `--downstream`). The run trains with the demo's
`stage_config` (plus `--set key=value` overrides) and a constant learning
rate after warm-up, so that stopping at each point of `--points` and resuming
(`hyperflax.train` resumes from the workdir's checkpoint) gives the same run
as one long one. At each point it scores rank-classification accuracy (options
shown) and greedy exact match (no options) on held-out families, held-out tasks
and training tasks, per family, and appends them to `<run>/curve.json`.
"""

from __future__ import annotations

import argparse
import ast
import json
import logging
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hyperflax import demo  # noqa: E402

SPLITS = ('heldout_families', 'heldout_tasks', 'train_tasks')
MODELS = ('t5_mtf', 'fewshot') + tuple(demo.VARIANTS)


def _value(text: str):
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def config_for(model: str, steps: int, seed: int, overrides: dict, downstream: str = ''):
  """The run's config (`hyperflax.curriculum.config_for`: validated, constant learning rate)."""
  from hyperflax import curriculum
  return curriculum.config_for(model, steps, seed, overrides, downstream)


def score(cfg, out, run_dir: str, step: int, splits=SPLITS) -> dict:
  from hyperflax import evaluate
  row = {'step': step, 'loss': float(out['metrics'].get('loss', float('nan')))}
  for split in splits:
    s = evaluate.evaluate(cfg, out['experiment'], out['trainable'], out['frozen'],
                          os.path.join(run_dir, f'eval_{step}_{split}'), split, 'model')
    row[split] = {'accuracy': s['average_metrics']['accuracy'],
                  'exact_match': s['average_metrics'].get('generated_exact_match'),
                  'chance': s['average_metrics'].get('chance'),
                  # What answering with the demonstrations' most frequent option earns.
                  'majority': s['average_metrics'].get('majority'),
                  'per_group': {g: {'accuracy': m.get('accuracy'),
                                    'exact_match': m.get('generated_exact_match')}
                                for g, m in s['per_group_metrics'].items()}}
  return row


def run_curve(workdir: str, model: str, points, seed: int = 0, overrides=None,
              downstream: str = '', name: str = '', splits=SPLITS) -> list[dict]:
  from hyperflax.train import train
  run_dir = os.path.join(workdir, name or model)
  os.makedirs(run_dir, exist_ok=True)
  path = os.path.join(run_dir, 'curve.json')
  want = json.loads(json.dumps({'model': model, 'seed': seed, 'overrides': overrides or {},
                                'downstream': downstream}))
  rows = []
  if os.path.exists(path):  # resume only the same run (its checkpoints go on)
    have = json.load(open(path))
    diff = [k for k in want if have.get(k) != want[k]]
    if diff:
      raise ValueError(f'{path}: trained with other {", ".join(diff)}; use another run name '
                       'or --workdir')
    rows = have['rows']
  done = {r['step'] for r in rows}
  for step in points:
    if step in done:
      continue
    cfg = config_for(model, step, seed, dict(overrides or {}), downstream)
    cfg.train.checkpoint_every = step
    t0 = time.time()
    out = train(cfg, run_dir)
    t1 = time.time()
    row = score(cfg, out, run_dir, step, splits)
    row['train_s'], row['eval_s'] = t1 - t0, time.time() - t1
    rows.append(row)
    with open(path, 'w') as f:
      json.dump({**want, 'rows': rows}, f, indent=1)
    print(f'[{name or model}] step {step} loss {row["loss"]:.3f} ' + ' '.join(
        f'{s}: acc {row[s]["accuracy"]:.1f} em {row[s]["exact_match"] or 0:.1f}'
        for s in splits) + f' ({row["train_s"]:.0f}+{row["eval_s"]:.0f}s)', flush=True)
  return rows


def plot(workdir: str, out_png: str) -> dict:
  """Every `*/curve.json` under `workdir` -> one PNG (accuracy, exact match, loss) + a JSON."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  curves = {}
  for p in sorted(Path(workdir).glob('*/curve.json')):
    curves[p.parent.name] = json.loads(p.read_text())
  losses = {}
  for name in curves:  # the trainer's log: loss per target token against step
    path = Path(workdir) / name / 'metrics.jsonl'
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] \
        if path.exists() else []
    losses[name] = [(r['step'], r['loss']) for r in rows if 'loss' in r]
    curves[name]['train_loss'] = losses[name]
  fig, axes = plt.subplots(2, 3, figsize=(16, 8))
  ax = axes[0, 2]
  for name, pts in losses.items():
    ax.plot([p[0] for p in pts], [p[1] for p in pts], '.-', label=name)
  ax.set_title('training loss per target token')
  ax.set_xlabel('training step')
  axes[1, 2].axis('off')
  panels = [axes[0, 0], axes[0, 1], axes[1, 0], axes[1, 1]]
  for (split, metric), ax in zip([(s, m) for m in ('accuracy', 'exact_match')
                                  for s in SPLITS[:2]], panels):
    for name, c in curves.items():
      rows = sorted((r for r in c['rows'] if r.get(split, {}).get(metric) is not None),
                    key=lambda r: r['step'])
      if rows:
        ax.plot([r['step'] for r in rows], [r[split][metric] for r in rows], 'o-', label=name)
    chance = next((r[split]['chance'] for c in curves.values() for r in c['rows']
                   if split in r and r[split].get('chance')), None)
    if metric == 'accuracy' and chance:
      ax.axhline(chance, color='gray', ls='--', label='chance')
    ax.set_title(f'{split}: {"rank accuracy" if metric == "accuracy" else "greedy exact match"}')
    ax.set_xlabel('training step')
    ax.set_ylabel('%')
  axes[0, 0].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(out_png, dpi=80)
  with open(os.path.splitext(out_png)[0] + '.json', 'w') as f:
    json.dump(curves, f, indent=1)
  return curves


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  ap.add_argument('--workdir', default='runs/learning_curves')
  ap.add_argument('--model', choices=MODELS, default='fewshot')
  ap.add_argument('--name', default='', help='run name (default: --model)')
  ap.add_argument('--points', default='250,500,1000', help='training steps to score at')
  ap.add_argument('--seed', type=int, default=0)
  ap.add_argument('--downstream', default='', help='frozen T5 directory (hypermodels)')
  ap.add_argument('--set', action='append', default=[], metavar='KEY=VALUE',
                  help="config override, e.g. optim.learning_rate=3e-3 (repeatable)")
  ap.add_argument('--splits', default=','.join(SPLITS))
  ap.add_argument('--plot', action='store_true', help='only plot the runs in --workdir')
  args = ap.parse_args(argv)
  logging.getLogger().setLevel(logging.WARNING)
  if args.plot:
    plot(args.workdir, os.path.join(args.workdir, 'learning_curves.png'))
    return
  overrides = {}
  for item in args.set:
    if '=' not in item:
      ap.error(f'--set {item!r}: expected KEY=VALUE')
    k, v = item.split('=', 1)
    overrides[k] = _value(v)
  run_curve(args.workdir, args.model, [int(s) for s in args.points.split(',')], args.seed,
            overrides, args.downstream, args.name, tuple(args.splits.split(',')))


if __name__ == '__main__':
  main()
