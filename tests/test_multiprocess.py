"""Two CPU processes joined by `jax.distributed` (loopback) train like one process.

`launch/local_multiprocess.py` starts both processes (one CPU device each, a
data=2 mesh, each reading only its own rows); a plain single-process run
(one device) goes alongside. Losses of both steps must agree, and the
multi-process checkpoint (written by both processes) must hold the same
parameters.
"""

import json
import os
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = 'configs/hart_large.py:tiny'
# Cheaper CPU compiles; both runs use them, so the comparison is fair.
FAST_XLA = '--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true'


def _train_cmd(workdir):
  return [sys.executable, '-m', 'hyperflax.train', f'--config={CONFIG}', f'--workdir={workdir}',
          '--config.train.num_steps=2', '--config.train.checkpoint_every=100',
          '--config.eval.name=']


def _losses(workdir):
  rows = [json.loads(line) for line in open(os.path.join(workdir, 'metrics.jsonl'))]
  return [r['loss'] for r in rows]


def test_launcher_dry_run_prints_one_command_per_process():
  out = subprocess.run([sys.executable, 'launch/local_multiprocess.py', '--num_processes=3',
                        '--port=12345', '--dry-run', '--', 'python', '-m', 'hyperflax.train'],
                       cwd=ROOT, capture_output=True, text=True, timeout=60, check=True).stdout
  lines = out.strip().splitlines()
  assert len(lines) == 4 and lines[-1] == 'wait'
  for i, line in enumerate(lines[:3]):
    assert f'HYPERFLAX_PROCESS_ID={i}' in line and 'HYPERFLAX_COORDINATOR=127.0.0.1:12345' in line


def test_two_processes_train_like_one(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS=FAST_XLA)
  single, multi = str(tmp_path / 'single'), str(tmp_path / 'multi')
  # Concurrently: the machine's cores are shared by all three processes anyway.
  one = subprocess.Popen(_train_cmd(single), cwd=ROOT, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
  try:
    two = subprocess.run([sys.executable, 'launch/local_multiprocess.py', '--num_processes=2',
                          '--init_timeout=300', '--timeout=850', '--', *_train_cmd(multi)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    out_one, _ = one.communicate(timeout=900)
  finally:
    if one.poll() is None:
      one.kill()
  assert two.returncode == 0, two.stdout[-4000:]
  assert one.returncode == 0, out_one[-4000:]
  assert 'process 0 of 2' in two.stdout and 'process 1 of 2' in two.stdout
  np.testing.assert_allclose(_losses(multi), _losses(single), rtol=0, atol=1e-5)

  from hyperflax.train import load_trainable
  a, b = load_trainable(multi), load_trainable(single)
  import jax
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    # Adam divides by |g| + 1e-8, so round-off in near-zero gradients moves
    # single parameters by up to ~lr * 5% a step (9e-5 measured after two);
    # the losses above are the tight check, this one catches gross errors.
    np.testing.assert_allclose(x, y, rtol=0, atol=5e-4)
