"""hyperflax.host_memory: XLA:CPU's per-call buffers are not page-faulted in again each call."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hyperflax import host_memory

ROOT = Path(__file__).resolve().parents[1]

# A jitted call whose [6144, 4096] float32 matmul output (96 MiB) is a temp buffer,
# above both of glibc's default mmap limits (32 MiB threshold, 64 MiB per thread arena).
PROBE = r'''
import json, resource, sys
from hyperflax import host_memory
applied = host_memory.keep_freed_memory()
import jax, jax.numpy as jnp
a = jnp.ones((6144, 256), jnp.float32)
b = jnp.ones((256, 4096), jnp.float32)
f = jax.jit(lambda a, b: jnp.sin(a @ b).sum(axis=1))
for _ in range(2):
  f(a, b).block_until_ready()
faults = []
for _ in range(3):
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  f(a, b).block_until_ready()
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({'applied': applied, 'faults': min(faults)}))
'''


def _probe(**env) -> dict:
  full = {**os.environ, 'JAX_PLATFORMS': 'cpu', **env}
  full.pop(host_memory.ENV, None)
  full.update(env)
  out = subprocess.run([sys.executable, '-c', PROBE], cwd=ROOT, env=full, capture_output=True,
                       text=True, timeout=300, check=True).stdout
  return json.loads(out.strip().splitlines()[-1])


@pytest.mark.skipif(host_memory.why_not() == 'not a glibc Linux process', reason='glibc only')
def test_kept_memory_is_not_faulted_in_again():
  default = _probe(**{host_memory.ENV: 'default'})
  kept = _probe()
  assert not default['applied'] and kept['applied']
  pages = 96 * 2 ** 20 // os.sysconf('SC_PAGE_SIZE')
  if default['faults'] < pages // 2:
    pytest.skip(f'glibc defaults here fault in only {default["faults"]} pages per call')
  # Without the settings each call faults the 96 MiB temp in again; with them, almost nothing.
  assert kept['faults'] < pages // 20 < default['faults'], (kept, default, pages)


def test_why_not(monkeypatch):
  monkeypatch.setenv(host_memory.ENV, 'default')
  assert host_memory.why_not() == f'{host_memory.ENV}=default'
  monkeypatch.delenv(host_memory.ENV)
  monkeypatch.setenv('JAX_PLATFORMS', 'cpu')
  # The test process has run JAX already: too late to change which arena its threads use.
  import jax
  jax.devices()
  assert host_memory.why_not() in ('JAX has already started its backend',
                                   'not a glibc Linux process')
  monkeypatch.setenv('JAX_PLATFORMS', '')
  monkeypatch.setattr(host_memory, '_accelerator_plugin', lambda: 'libtpu')
  if host_memory.why_not() != 'not a glibc Linux process':
    assert 'libtpu is installed' in host_memory.why_not()
