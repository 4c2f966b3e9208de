"""Multi-host start-up: `jax.distributed.initialize` from the environment.

Every host runs the same command; `initialize()` finds out from the
environment whether it is one of several processes and joins them:

  HYPERFLAX_COORDINATOR=host:port  explicit (our GPU and local launchers set
  HYPERFLAX_NUM_PROCESSES=N        these three; any cluster, loopback too)
  HYPERFLAX_PROCESS_ID=i
  HYPERFLAX_LOCAL_DEVICE_IDS=0,1   optional: this process's accelerators

  TPU VM pods (TPU_WORKER_HOSTNAMES lists several workers), SLURM jobs with
  several tasks and Open MPI runs are detected by JAX itself, as is anything
  with HYPERFLAX_DISTRIBUTED=1.

Nothing is done on a single host, so `python -m hyperflax.train` works
unchanged on a laptop.
"""

from __future__ import annotations

import logging
import os
from typing import Mapping

import jax

_initialized = False


def cluster_args(env: Mapping[str, str] | None = None) -> dict | None:
  """Arguments for `jax.distributed.initialize`, or None on a single host.

  Returns `{}` where JAX's own cluster detection applies (TPU pods, SLURM,
  Open MPI) and explicit arguments where HYPERFLAX_COORDINATOR is set.
  """
  env = os.environ if env is None else env
  if env.get('HYPERFLAX_COORDINATOR'):
    args = {'coordinator_address': env['HYPERFLAX_COORDINATOR'],
            'num_processes': int(env['HYPERFLAX_NUM_PROCESSES']),
            'process_id': int(env['HYPERFLAX_PROCESS_ID'])}
    if env.get('HYPERFLAX_LOCAL_DEVICE_IDS'):
      args['local_device_ids'] = [int(i) for i in env['HYPERFLAX_LOCAL_DEVICE_IDS'].split(',')]
    if env.get('HYPERFLAX_INIT_TIMEOUT'):
      args['initialization_timeout'] = int(env['HYPERFLAX_INIT_TIMEOUT'])
    return args
  if env.get('HYPERFLAX_DISTRIBUTED', '') in ('1', 'true', 'True'):
    return {}
  if len([h for h in env.get('TPU_WORKER_HOSTNAMES', '').split(',') if h]) > 1:
    return {}
  if int(env.get('SLURM_NTASKS', '1') or 1) > 1 and env.get('SLURM_JOB_ID'):
    return {}
  if int(env.get('OMPI_COMM_WORLD_SIZE', '1') or 1) > 1:
    return {}
  return None


def initialize(env: Mapping[str, str] | None = None) -> bool:
  """Joins the other processes when the environment says there are some.

  Must run before anything touches a device. Returns True when running
  multi-process. Safe to call twice.
  """
  global _initialized
  if _initialized:
    return jax.process_count() > 1
  args = cluster_args(env)
  if args is None:
    return False
  try:
    jax.distributed.initialize(**args)
  except ValueError as e:  # `{}` and JAX detected no cluster: say which variable asked for one
    if args:
      raise
    raise ValueError(
        f'HYPERFLAX_DISTRIBUTED=1 (or a multi-task TPU/SLURM/MPI environment) but JAX found no '
        f'cluster to join ({e}): set HYPERFLAX_COORDINATOR=host:port, HYPERFLAX_NUM_PROCESSES '
        f'and HYPERFLAX_PROCESS_ID, or unset HYPERFLAX_DISTRIBUTED on a single host') from None
  _initialized = True
  logging.info('jax.distributed: process %d of %d, %d local / %d global devices',
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count())
  return True
