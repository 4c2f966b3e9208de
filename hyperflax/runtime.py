"""What a run is about to run on, said at start; full-size runs that would waste a slice refused.

Every entry point (train, evaluate, peft_tuning) calls, right after its config is
final and `hyperflax.distributed.initialize()` has run:

  runtime.preflight(config)        # one-line ValueError before anything is built
  runtime.log_runtime(mesh)        # backend, device kind/count, process i of n, mesh

`preflight` stops two silent failures of a full-size config:

  * a CPU backend: a worker whose TPU/GPU JAX is missing or broken falls back to
    its host CPU and would train XL there for days. The `:tiny` variants (and
    the CPU demo) set `runtime.allow_cpu=True`.
  * an empty `model.init_from`: the frozen T5 would be randomly initialised, so
    every number the run produces is meaningless. The `:tiny` variants (and the
    demo, which trains its own small T5 first) set `model.allow_random_init=True`.

`hypertune` only logs: it generates one task's adapter (inference), which a CPU
can do; the run it reads passed `preflight` when it was trained.
"""

from __future__ import annotations

import logging
from typing import Any

import jax
import ml_collections

from hyperflax import host_memory

_log = logging.getLogger('hyperflax.runtime')
_INSTALL = "pip install -e '.[tpu]' (TPU VM) or '.[cuda]' (NVIDIA)"


class PreflightError(ValueError):
  """A config that must not run here as it stands; the message names the override."""


def _flag(config: ml_collections.ConfigDict, section: str, name: str) -> bool:
  # Run configs written before these fields existed lack them: not opted in.
  part = config.get(section, None)
  return bool(part.get(name, False)) if part is not None else False


def problems(config: ml_collections.ConfigDict, backend: str | None = None) -> list[str]:
  """Why `config` must not run on `backend` (default: JAX's); empty when it may."""
  backend = backend or jax.default_backend()
  model = config.get('model', None) or ml_collections.ConfigDict()
  init_from = model.get('init_from', '')
  size = f"model.init_from={init_from!r}" if init_from else \
      f"model.preset={model.get('preset', '?')!r}"
  out = []
  if not init_from and not _flag(config, 'model', 'allow_random_init'):
    out.append('model.init_from is empty: the frozen T5 would be random. Pass '
               '--config.model.init_from=<T5 dir: transformers or hyperflax.convert output>, '
               'or --config.model.allow_random_init=True if that is meant')
  if backend == 'cpu' and not _flag(config, 'runtime', 'allow_cpu'):
    out.append(f'JAX {jax.__version__} found no TPU/GPU (backend cpu) for a full-size '
               f'config ({size}): {_INSTALL}, or pass --config.runtime.allow_cpu=True')
  return out


def preflight(config: ml_collections.ConfigDict, backend: str | None = None) -> None:
  """Raises `PreflightError` (one line) when `problems(config, backend)` finds any."""
  found = problems(config, backend)
  if found:
    raise PreflightError('; '.join(found))


def describe(mesh: jax.sharding.Mesh | None = None) -> dict[str, Any]:
  """Backend, device kinds and counts, this process's rank, and the mesh's axis sizes."""
  devices = jax.devices()
  kinds = sorted({d.device_kind for d in devices})
  info = {'backend': jax.default_backend(), 'device_kind': ', '.join(kinds),
          'device_count': len(devices), 'local_device_count': jax.local_device_count(),
          'process_index': jax.process_index(), 'process_count': jax.process_count(),
          'jax': jax.__version__}
  if mesh is not None:
    info['mesh'] = {str(k): int(v) for k, v in mesh.shape.items()}
  info['host_malloc'] = host_memory.status()
  return info


def log_runtime(mesh: jax.sharding.Mesh | None = None) -> dict[str, Any]:
  """Logs `describe(mesh)` as one line (even where the root logger is quieter) and returns it."""
  info = describe(mesh)
  _log.setLevel(logging.INFO)  # entry points that quiet the root logger still say this
  _log.info('runtime: backend %s (%s), %d devices (%d local), process %d of %d, jax %s%s; '
            'host malloc %s', info['backend'], info['device_kind'], info['device_count'],
            info['local_device_count'], info['process_index'], info['process_count'],
            info['jax'], f", mesh {info['mesh']}" if 'mesh' in info else '', info['host_malloc'])
  return info
