"""Lets XLA:CPU reuse the memory of its per-call buffers (Linux, glibc malloc).

XLA:CPU has no caching allocator: each call of a compiled step mallocs its
temp buffers and frees them when it returns. glibc serves blocks above its
mmap threshold (32 MiB at most, by default) with fresh `mmap`s, and so does
any block over 64 MiB asked of a thread's own arena (where XLA's runtime
threads allocate); `free` unmaps them and trims the heap top. So every step
page-faults its working set in again: the tiny T5's train step 12.8k minor
faults, T5 v1.1 small's 214k and 0.35 s of kernel time (`bench/RESULTS.md`,
session 11).

`HYPERFLAX_HOST_MALLOC` chooses, as a caching allocator would, to keep them:

  one_arena       (the default) M_ARENA_MAX 1: every thread allocates from
                  the main heap, which has no 64 MiB limit; M_MMAP_THRESHOLD
                  1 GiB: blocks below it come from that heap; M_TRIM_THRESHOLD
                  2 GiB: freed heap up to this is kept. T5 v1.1 small's train
                  step 1.08x as fast, the tiny T5's 1.4x, the demo 1.2x (session 11);
                  compiling alone is ~14 % slower (threads share one malloc lock).
  keep            the two thresholds only: blocks up to 64 MiB stay mapped
                  (the tiny step as fast as above), larger ones from XLA's
                  threads still fault; compiling ~6 % slower.
  default         glibc's defaults (the test suite's: it is mostly compiling).

The cost of keeping is that the process holds its peak heap between steps.
It applies only where it matters and is safe: a glibc Linux process whose JAX
will run on the CPU (`JAX_PLATFORMS=cpu`, or no TPU/GPU plugin installed),
before JAX has started a backend. `import hyperflax` calls it first thing,
before an import starts threads: a thread that allocates before M_ARENA_MAX
is set gets an arena of its own, which XLA's threads may later share.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import importlib.util
import os
import sys

# mallopt(3) parameters (glibc malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8
_KEEP = ((_M_MMAP_THRESHOLD, 1 << 30), (_M_TRIM_THRESHOLD, (1 << 31) - 1))
MODES = {'one_arena': ((_M_ARENA_MAX, 1),) + _KEEP, 'keep': _KEEP, 'default': ()}
ENV = 'HYPERFLAX_HOST_MALLOC'
_applied: bool | None = None
_reason: str | None = None


def _jax_backend_started() -> bool:
  jax = sys.modules.get('jax')
  if jax is None:
    return False
  try:
    from jax._src import xla_bridge  # private module: JAX's registry of started backends
    return xla_bridge.backends_are_initialized()
  except (ImportError, AttributeError):
    return True  # cannot tell: assume it is too late


def _accelerator_plugin() -> str | None:
  """The TPU/GPU runtime JAX would load, if any is installed."""
  if importlib.util.find_spec('libtpu') is not None:
    return 'libtpu'
  plugins = [e.name for e in importlib.metadata.entry_points(group='jax_plugins')]
  if importlib.util.find_spec('jax_plugins') is not None:
    import pkgutil
    import jax_plugins  # pylint: disable=import-outside-toplevel
    plugins += [m.name for m in pkgutil.iter_modules(jax_plugins.__path__)]
  return plugins[0] if plugins else None


def _glibc() -> bool:
  try:
    return os.confstr('CS_GNU_LIBC_VERSION').startswith('glibc')
  except (ValueError, OSError, AttributeError):
    return False


def why_not() -> str | None:
  """Why `keep_freed_memory` would not apply in this process now; None when it would."""
  if mode() not in MODES:
    return f'{ENV}={mode()!r} is none of {", ".join(MODES)}'
  if mode() == 'default':
    return f'{ENV}=default'
  if sys.platform != 'linux' or not _glibc():
    return 'not a glibc Linux process'
  platforms = os.environ.get('JAX_PLATFORMS', '').strip().lower()
  if platforms != 'cpu':
    plugin = _accelerator_plugin()
    if plugin is not None:
      return f'JAX may run on an accelerator ({plugin} is installed; JAX_PLATFORMS={platforms!r})'
  if _jax_backend_started():
    return 'JAX has already started its backend'
  return None


def mode() -> str:
  """The mode `HYPERFLAX_HOST_MALLOC` asks for (its raw value if unknown)."""
  return os.environ.get(ENV, '') or 'one_arena'


def status() -> str:
  """One phrase for run logs: what this process's malloc does with freed buffers."""
  if _applied:
    return f'{mode()}: keeps freed memory for XLA:CPU ({ENV}=default turns it off)'
  return f'glibc defaults ({_reason or why_not() or "not applied yet"})'


def keep_freed_memory() -> bool:
  """Applies the mode's settings once per process when `why_not()` finds nothing."""
  global _applied, _reason
  if _applied is not None:
    return _applied
  _reason = why_not()
  if _reason is not None:
    _applied = False
    return False
  mallopt = ctypes.CDLL(None).mallopt
  _applied = all(mallopt(param, value) == 1 for param, value in MODES[mode()])
  if not _applied:
    _reason = 'mallopt refused a setting'
  return _applied
