#!/usr/bin/env python3
r"""Several JAX processes on this machine, joined by `jax.distributed` over loopback.

A rehearsal of a multi-host run on one CPU box: each process gets its own
host CPU devices, and `hyperflax.distributed.initialize()` joins them through
a coordinator on 127.0.0.1.

  python launch/local_multiprocess.py --num_processes=2 -- \
      python -m hyperflax.train --config=configs/hart_large.py:tiny --workdir=/tmp/mp
  python launch/local_multiprocess.py --num_processes=2 --dry-run -- python -m hyperflax.train ...

Output lines are prefixed with `[pI]`. If one process fails, the others are
stopped; the exit status is the first non-zero one.
"""

from __future__ import annotations

import argparse
import os
import shlex
import socket
import subprocess
import sys
import threading
import time


def free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def process_env(base: dict, index: int, args) -> dict:
  """The environment of process `index`: coordinator, rank, CPU devices."""
  env = dict(base)
  flags = [f for f in env.get('XLA_FLAGS', '').split()
           if not f.startswith('--xla_force_host_platform_device_count')]
  flags.append(f'--xla_force_host_platform_device_count={args.devices_per_process}')
  env.update(HYPERFLAX_COORDINATOR=f'127.0.0.1:{args.port}',
             HYPERFLAX_NUM_PROCESSES=str(args.num_processes), HYPERFLAX_PROCESS_ID=str(index),
             HYPERFLAX_INIT_TIMEOUT=str(args.init_timeout), JAX_PLATFORMS='cpu',
             XLA_FLAGS=' '.join(flags))
  return env


def _pump(index: int, stream, out) -> None:
  for line in stream:
    out.write(f'[p{index}] {line}')
    out.flush()


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--num_processes', type=int, default=2)
  parser.add_argument('--devices_per_process', type=int, default=1,
                      help='host CPU devices each process sees')
  parser.add_argument('--port', type=int, default=0, help='coordinator port (0: a free one)')
  parser.add_argument('--init_timeout', type=int, default=120,
                      help='seconds to wait for every process to join')
  parser.add_argument('--timeout', type=float, default=0, help='kill all after this (0: never)')
  parser.add_argument('--dry-run', '--dry_run', dest='dry_run', action='store_true',
                      help='print the commands instead of running them')
  parser.add_argument('command', nargs=argparse.REMAINDER, help='-- then the command to run')
  args = parser.parse_args(argv)
  command = args.command[1:] if args.command[:1] == ['--'] else args.command
  if not command:
    parser.error('give the command after --')
  args.port = args.port or free_port()
  keys = ('HYPERFLAX_COORDINATOR', 'HYPERFLAX_NUM_PROCESSES', 'HYPERFLAX_PROCESS_ID',
          'HYPERFLAX_INIT_TIMEOUT', 'JAX_PLATFORMS', 'XLA_FLAGS')
  envs = [process_env(os.environ, i, args) for i in range(args.num_processes)]
  if args.dry_run:
    for env in envs:
      print(' '.join(f'{k}={shlex.quote(env[k])}' for k in keys), shlex.join(command), '&')
    print('wait')
    return 0
  procs = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True) for env in envs]
  pumps = [threading.Thread(target=_pump, args=(i, p.stdout, sys.stdout), daemon=True)
           for i, p in enumerate(procs)]
  for t in pumps:
    t.start()
  deadline = time.time() + args.timeout if args.timeout else None
  status = 0
  while any(p.poll() is None for p in procs):
    failed = [p.returncode for p in procs if p.returncode not in (None, 0)]
    late = deadline is not None and time.time() > deadline
    if failed or late:
      status = failed[0] if failed else 124
      for p in procs:  # only the processes this launcher started
        if p.poll() is None:
          p.kill()
      break
    time.sleep(0.2)
  for p in procs:
    p.wait()
  for t in pumps:
    t.join(timeout=5)
  return status or next((p.returncode for p in procs if p.returncode), 0)


if __name__ == '__main__':
  sys.exit(main())
