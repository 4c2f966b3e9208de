r"""Where our train step's time goes on CPU, by XLA:CPU thunk kind (issue 14).

  taskset -c 0 python bench/step_profile.py [--model=small] [--steps=2]

Builds `train_throughput.Pair`'s step (T5-MTF: the whole T5 v1.1 trainable, AdamW, clipping,
the fused cross-entropy) without the torch side, traces `--steps` steps with
`jax.profiler.trace` and sums the trace's per-thunk durations by kind (the thunk name without
its `.N` suffix: `ynn_fusion` are XLA:CPU's YNNPACK dot fusions, `dot` its other dots, `while`
the chunked cross-entropy loop, `*concatenate*` / `*slice*` / `*pad*` / `*copy*` layout work).
Numbers are one run's; the ratios against torch come from `bench/train_throughput.py`.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import re
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'tests'))

import jax  # noqa: E402

import train_throughput  # noqa: E402

# Trace events of the runtime and Python, not of one thunk.
NOT_THUNKS = ('ThunkExecutor', '$', 'np.asarray', 'PjitFunction')


def thunk_times(trace_dir: str, steps: int) -> dict[str, float]:
  """{thunk name: milliseconds per step} from a `jax.profiler.trace` directory."""
  path = glob.glob(f'{trace_dir}/**/*.trace.json.gz', recursive=True)[0]
  events = json.load(gzip.open(path))['traceEvents']
  out: dict[str, float] = collections.Counter()
  for e in events:
    if e.get('ph') == 'X' and not e['name'].startswith(NOT_THUNKS):
      out[e['name']] += e.get('dur', 0) / 1e3 / steps
  return out


def by_kind(times: dict[str, float]) -> dict[str, tuple[float, int]]:
  """{kind: (ms per step, thunks)}, largest first."""
  kinds: dict[str, list] = collections.defaultdict(lambda: [0.0, 0])
  for name, ms in times.items():
    kind = kinds[re.sub(r'\.\d+$', '', name)]
    kind[0] += ms
    kind[1] += 1
  return dict(sorted(((k, tuple(v)) for k, v in kinds.items()), key=lambda kv: -kv[1][0]))


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--model', default='small', choices=sorted(train_throughput.CONFIGS))
  parser.add_argument('--steps', type=int, default=2)
  parser.add_argument('--top', type=int, default=15, help='kinds to list')
  args = parser.parse_args(argv)
  cfg, batch, in_len, tgt_len = train_throughput.CONFIGS[args.model]
  pair = train_throughput.Pair(cfg, batch, in_len, tgt_len, with_torch=False)
  step = pair.steps['ours']
  step()  # warm
  with tempfile.TemporaryDirectory() as trace_dir:
    with jax.profiler.trace(trace_dir):
      for _ in range(args.steps):
        step()
    times = thunk_times(trace_dir, args.steps)
  kinds = by_kind(times)
  total = sum(ms for ms, _ in kinds.values())
  print(f'{args.model}: {total:.1f} ms of thunks per step, {pair.flops["step"] / 1e9:.1f} '
        'GFLOP (XLA)')
  for kind, (ms, count) in list(kinds.items())[:args.top]:
    print(f'  {ms:8.1f} ms  {100 * ms / total:5.1f} %  {count:4d} thunks  {kind}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
