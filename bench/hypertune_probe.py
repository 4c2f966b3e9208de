r"""A new task family through the user-facing CLIs: hypertune -> predict vs zero-shot.

  python bench/hypertune_probe.py --hypermodel=runs/demo/hart --key_last [--tasks=10]

For each of `--tasks` tasks of the synthetic suite's probe family
(`synthetic.PROBE_FAMILY`: "<key> has <n>" -> the task's label for the key;
with --key_last "<n> has <key>"; a separator and keys no training or held-out
family has, labels from the suite's output words), it writes the 16 demonstrations as JSONL and runs
`python -m hyperflax.hypertune --checkpoint HYPERMODEL --examples ... --out
ADAPTER`, then scores the task's queries (options given) with one
`python -m hyperflax.predict` call over every adapter, and once without an
adapter (zero-shot: the frozen T5 alone). Prints and writes (`--out`)
rank accuracy of both against chance (1/3).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hyperflax.data import synthetic, vocab as vocab_lib  # noqa: E402


def _cli(module: str, args: list[str]) -> None:
  cmd = [sys.executable, '-m', module] + args
  done = subprocess.run(cmd, capture_output=True, text=True)
  if done.returncode:
    raise RuntimeError(f'{" ".join(cmd)} failed ({done.returncode}):\n{done.stderr[-2000:]}')


def run(hypermodel: str, out_dir: str, tasks: int = 10, num_labels: int | None = None,
        key_last: bool = False) -> dict:
  config = json.load(open(os.path.join(hypermodel, 'config.json')))
  model_dir = config['model']['init_from']
  lengths = config['data']['lengths']
  vocab = config['data'].get('vocab_path') or str(vocab_lib.default_vocab_path())
  opts = config.get('eval', {}).get('options', {}) or {}
  num_labels = num_labels or opts.get('num_labels') or len(synthetic.LABELS)
  os.makedirs(out_dir, exist_ok=True)
  rows, gold, adapters = [], [], []
  t0 = time.time()
  for i in range(tasks):
    task = synthetic.probe_task(i, num_labels=num_labels, key_last=key_last)
    demos = os.path.join(out_dir, f'task{i}_demos.jsonl')
    with open(demos, 'w') as f:
      for d in task.demos:
        f.write(json.dumps({'input': d.input, 'output': d.target}) + '\n')
    adapter = os.path.join(out_dir, f'adapter{i}')
    if not os.path.exists(os.path.join(adapter, 'manifest.json')):
      _cli('hyperflax.hypertune', ['--checkpoint', hypermodel, '--examples', demos,
                                   '--out', adapter])
    adapters += ['--adapter', f't{i}={adapter}']
    for q in task.queries:
      rows.append({'input': q.input, 'options': list(q.options), 'adapter': f't{i}'})
      gold.append(q.target)
  queries = os.path.join(out_dir, 'queries.jsonl')
  with open(queries, 'w') as f:
    f.writelines(json.dumps(r) + '\n' for r in rows)
  plain = os.path.join(out_dir, 'queries_zero_shot.jsonl')
  with open(plain, 'w') as f:
    f.writelines(json.dumps({'input': r['input'], 'options': r['options']}) + '\n' for r in rows)
  tuned_out, zero_out = (os.path.join(out_dir, n) for n in ('tuned.jsonl', 'zero_shot.jsonl'))
  _cli('hyperflax.predict', ['--model', model_dir, *adapters, '--inputs', queries,
                             '--out', tuned_out])
  data_opts = config['data'].get('options') or {}
  query = (['--query-in-decoder', data_opts.get('query_marks', 'xy')]
           if data_opts.get('query_in_decoder') else [])
  _cli('hyperflax.predict', ['--model', model_dir, '--inputs', plain, '--out', zero_out,
                             '--vocab', vocab, '--lengths', str(lengths[1]),
                             str(lengths[2]), *query])

  def accuracy(path):
    preds = [json.loads(line)['prediction'] for line in open(path)]
    return 100.0 * sum(p == g for p, g in zip(preds, gold)) / len(gold)

  result = {'hypermodel': hypermodel, 'tasks': tasks, 'queries': len(gold),
            'family': task.group,
            'hypertuned': accuracy(tuned_out), 'zero_shot': accuracy(zero_out),
            'chance': 100 / 3, 'seconds': time.time() - t0}
  with open(os.path.join(out_dir, 'result.json'), 'w') as f:
    json.dump(result, f, indent=1)
  print(json.dumps(result, indent=1))
  return result


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  ap.add_argument('--hypermodel', required=True, help='a hypermodel training workdir')
  ap.add_argument('--out', default='runs/hypertune_probe')
  ap.add_argument('--tasks', type=int, default=10)
  ap.add_argument('--key_last', action='store_true',
                  help="'<n> has <key>' (synthetic.PROBE_FAMILY_KEY_LAST) instead of '<key> has <n>'")
  args = ap.parse_args(argv)
  logging.getLogger().setLevel(logging.WARNING)
  run(args.hypermodel, args.out, args.tasks, key_last=args.key_last)


if __name__ == '__main__':
  main()
