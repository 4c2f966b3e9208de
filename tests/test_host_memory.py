"""hyperflax.host_memory: XLA:CPU's per-call buffers are not page-faulted in again each call."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hyperflax import host_memory

ROOT = Path(__file__).resolve().parents[1]
needs_glibc = pytest.mark.skipif(sys.platform != 'linux' or not host_memory._glibc(),
                                 reason='glibc malloc only')

# A jitted call whose [rows, 4096] float32 matmul output is a temp buffer: 48 MiB is above
# glibc's default mmap threshold (32 MiB at most), 96 MiB also above a thread arena's 64 MiB.
PROBE = r'''
import json, resource, sys
from hyperflax import host_memory
import jax, jax.numpy as jnp
a = jnp.ones((int(sys.argv[1]), 256), jnp.float32)
b = jnp.ones((256, 4096), jnp.float32)
f = jax.jit(lambda a, b: jnp.sin(a @ b).sum(axis=1))
for _ in range(2):
  f(a, b).block_until_ready()
faults = []
for _ in range(3):
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  f(a, b).block_until_ready()
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({'status': host_memory.status(), 'faults': min(faults)}))
'''


def _probe(mib: int, mode: str) -> dict:
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu', host_memory.ENV: mode}
  out = subprocess.run([sys.executable, '-c', PROBE, str(mib * 2 ** 20 // (4096 * 4))], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=300, check=True).stdout
  return json.loads(out.strip().splitlines()[-1])


@needs_glibc
@pytest.mark.parametrize('mib, mode', [(48, 'keep'), (96, 'one_arena')])
def test_kept_memory_is_not_faulted_in_again(mib, mode):
  default, kept = _probe(mib, 'default'), _probe(mib, mode)
  assert default['status'].startswith('glibc defaults') and kept['status'].startswith(mode)
  pages = mib * 2 ** 20 // os.sysconf('SC_PAGE_SIZE')
  for _ in range(2):
    if kept['faults'] < pages // 20:
      break
    # Under a loaded pytest-xdist run, 1 in a few probes of either mode still faulted every
    # call (not understood: sessions 11-12's notes in bench/RESULTS.md); fresh processes
    # settle whether the mode works. Without the settings every probe faults.
    kept = _probe(mib, mode)
  if default['faults'] < pages // 2:
    pytest.skip(f'glibc defaults here fault in only {default["faults"]} pages per call')
  # Without the settings each call faults the temp in again; with them, almost nothing.
  assert kept['faults'] < pages // 20 < default['faults'], (kept, default, pages)


@needs_glibc
def test_keep_alone_does_not_cover_blocks_over_a_thread_arena():
  """Why `one_arena` exists: above 64 MiB, `keep` leaves XLA's thread to mmap."""
  pages = 96 * 2 ** 20 // os.sysconf('SC_PAGE_SIZE')
  assert _probe(96, 'keep')['faults'] > pages // 2


def test_why_not(monkeypatch):
  monkeypatch.setenv(host_memory.ENV, 'default')
  assert host_memory.why_not() == f'{host_memory.ENV}=default'
  monkeypatch.setenv(host_memory.ENV, 'always')
  assert host_memory.why_not() == f"{host_memory.ENV}='always' is none of one_arena, keep, default"
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
