r"""Memory plans of the XL and XXL HART configs on v4-32, v4-128 and 8xH100 meshes.

  python bench/memory_plan.py                 # state bytes only (exact, seconds each)
  python bench/memory_plan.py --compile=xl    # also compile XL steps for XLA's temp bytes
  python bench/memory_plan.py --quick         # XL on the first mesh only (a smoke run)

Each plan runs `python -m hyperflax.plan --json` in its own process (the
forced host CPU device count is fixed per process) and one markdown row is
printed per plan. XXL is `configs/hart_xl.py` with `--config.model.preset=xxl`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = {'xl': [], 'xxl': ['--config.model.preset=xxl']}
# 64 batch shards need micro batches of >= 64 rows: 256 rows in 4 micro batches, not 8.
ACCUM4 = ['--config.train.grad_accum_steps=4']
MESHES = [('v4-32', 'fsdp=16', []), ('v4-32', 'data=2,fsdp=8', []),
          ('v4-128', 'fsdp=64', ACCUM4), ('v4-128', 'data=4,fsdp=16', ACCUM4),
          ('8xh100', 'fsdp=8', []), ('8xh100', 'fsdp=4,tensor=2', [])]
FAST_XLA = '--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true'


def plan(model: str, slice_name: str, mesh: str, extra: list[str], compile_step: bool) -> dict:
  cmd = [sys.executable, '-m', 'hyperflax.plan', '--config=configs/hart_xl.py', *MODELS[model],
         *extra,
         f'--slice={slice_name}', f'--mesh={mesh}', '--json',
         '--compile' if compile_step else '--nocompile']
  env = dict(os.environ, XLA_FLAGS=FAST_XLA, JAX_PLATFORMS='cpu')
  t0 = time.time()
  out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=True)
  result = json.loads(out.stdout.strip().splitlines()[-1])
  result['seconds'] = round(time.time() - t0)
  return result


def row(model: str, slice_name: str, mesh: str, extra: list[str], r: dict) -> str:
  gib = lambda b: f'{b / 2**30:.2f}'
  temp = gib(r['xla_temp']) if 'xla_temp' in r else '-'
  peak = gib(r['xla_peak']) if 'xla_peak' in r else '-'
  accum = ' (accum 4)' if extra else ''
  return (f"| {model} | {slice_name} | {mesh}{accum} | {gib(r['trainable'])} | {gib(r['frozen'])} | "
          f"{gib(r['optimizer'])} | {gib(r['trainable'] + r['frozen'] + r['optimizer'])} | "
          f"{r['ratio']:.3f} | {temp} | {peak} |")


HEADER = ('| model | slice | mesh | trainable | frozen | optimiser | params+opt | ÷ ideal '
          '| XLA temp (CPU) | XLA peak (CPU) |\n|---|---|---|---|---|---|---|---|---|---|')


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument('--compile', default='', help="comma-separated models to compile ('xl')")
  parser.add_argument('--models', default='xl,xxl')
  parser.add_argument('--quick', action='store_true', help='XL on the first mesh only')
  args = parser.parse_args()
  print('GiB per device.\n' + HEADER)
  models = ['xl'] if args.quick else args.models.split(',')
  for model in models:
    for slice_name, mesh, extra in (MESHES[:1] if args.quick else MESHES):
      r = plan(model, slice_name, mesh, extra, model in args.compile.split(','))
      print(row(model, slice_name, mesh, extra, r), flush=True)


if __name__ == '__main__':
  main()
