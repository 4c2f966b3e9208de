r"""XLA's planned bytes of the `configs/hart_xl.py` train step, side by side for checkouts.

  git worktree add /tmp/before <rev>
  python bench/xl_temp_bytes.py /tmp/before .        # about 4-5 minutes each on 2 cores

One device, 2 micro-batch rows (the per-device rows of the v4-32 fsdp=16 plan), the XL
config's bf16 compute, `scan_layers`, `remat` and 8 accumulation steps, compiled by XLA:CPU
on abstract shapes (`hyperflax.plan.memory_plan`) with the fast-compile flags. Each checkout
runs in its own process with its own `hyperflax` first on the path.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

FAST_XLA = '--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true'
CHILD = r'''
import json, sys, time
repo = sys.argv[1]
sys.path.insert(0, repo)
import hyperflax
if not hyperflax.__file__.startswith(repo):
  raise SystemExit(f'{repo}: imported hyperflax from {hyperflax.__file__}')
from hyperflax import pipeline, plan, sharding
c = pipeline.load_config('hart_xl', configs_dir=f'{repo}/configs')
c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, 1, 1
c.data.batch_size = 2 * int(c.train.grad_accum_steps)
t0 = time.time()
m = plan.memory_plan(c, sharding.make_mesh(c))
print(json.dumps({'seconds': round(time.time() - t0),
                  **{k: v for k, v in m.items() if isinstance(v, (int, float))}}))
'''


def measure(repo: str) -> dict:
  repo = os.path.abspath(repo)
  env = dict(os.environ, XLA_FLAGS=FAST_XLA, JAX_PLATFORMS='cpu')
  out = subprocess.run([sys.executable, '-c', CHILD, repo], env=env, capture_output=True,
                       text=True)
  if out.returncode:
    raise SystemExit(f'{repo}: the plan failed:\n{out.stderr[-2000:]}')
  return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
  repos = (argv if argv is not None else sys.argv[1:]) or ['.']
  rows = [(r, measure(r)) for r in repos]
  base = rows[0][1]
  print('| checkout | XLA temp (GB) | XLA peak (GB) | arguments (GB) | vs first: temp, peak '
        '| plan + compile (s) |')
  print('|---|--:|--:|--:|--:|--:|')
  for repo, m in rows:
    rel = (f"{m['xla_temp'] / base['xla_temp'] - 1:+.1%}, "
           f"{m['xla_peak'] / base['xla_peak'] - 1:+.1%}")
    print(f"| {repo} | {m['xla_temp'] / 1e9:.2f} | {m['xla_peak'] / 1e9:.2f} | "
          f"{m['xla_arguments'] / 1e9:.2f} | {rel} | {m['seconds']} |")
  print(json.dumps({r: m for r, m in rows}))


if __name__ == '__main__':
  main()
