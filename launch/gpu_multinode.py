#!/usr/bin/env python3
r"""Run one command on several GPU nodes: one JAX process per node, all its GPUs.

Over ssh (node 0 hosts the coordinator):

  python launch/gpu_multinode.py --hosts=gpu-a,gpu-b --port=6789 --remote_dir=~/hyperflax -- \
      python -m hyperflax.train --config=configs/hart_xl.py --workdir=/shared/runs/hart_xl \
      --config.mesh.fsdp=8 --config.mesh.data=-1

Under SLURM (`salloc -N 2 --gpus-per-node=8`, then), JAX reads the rank and
coordinator from SLURM itself:

  python launch/gpu_multinode.py --slurm --nodes=2 -- python -m hyperflax.train ...

`--dry-run` prints what would run. Over ssh each node gets
HYPERFLAX_COORDINATOR / _NUM_PROCESSES / _PROCESS_ID, which
`hyperflax.distributed.initialize()` passes to `jax.distributed.initialize`.
`--workdir` must be on storage every node sees (checkpoints are written and
restored by all processes together).
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys


def ssh_commands(args, command: list[str]) -> list[list[str]]:
  hosts = [h for h in args.hosts.split(',') if h]
  coordinator = f'{args.coordinator or hosts[0]}:{args.port}'
  out = []
  for rank, host in enumerate(hosts):
    env = {'HYPERFLAX_COORDINATOR': coordinator, 'HYPERFLAX_NUM_PROCESSES': str(len(hosts)),
           'HYPERFLAX_PROCESS_ID': str(rank)}
    env.update(e.split('=', 1) for e in args.env)
    remote = (f'cd {args.remote_dir} && '  # ~ must expand remotely
              + ' '.join(f'{k}={shlex.quote(v)}' for k, v in env.items()) + ' '
              + shlex.join(command))
    out.append(['ssh', *shlex.split(args.ssh_options), host, remote])
  return out


def slurm_command(args, command: list[str]) -> list[str]:
  # One task per node; JAX's SLURM cluster detection does the rest.
  return ['srun', f'--nodes={args.nodes}', '--ntasks-per-node=1',
          f'--gpus-per-node={args.gpus_per_node}', '--export=ALL,HYPERFLAX_DISTRIBUTED=1',
          *command]


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--hosts', default='', help='comma-separated nodes (ssh mode)')
  parser.add_argument('--coordinator', default='', help='address of node 0 (default: first host)')
  parser.add_argument('--port', type=int, default=6789)
  parser.add_argument('--remote_dir', default='~/hyperflax', help='checkout on every node')
  parser.add_argument('--ssh_options', default='-o BatchMode=yes')
  parser.add_argument('--slurm', action='store_true', help='use srun inside an allocation')
  parser.add_argument('--nodes', type=int, default=1)
  parser.add_argument('--gpus_per_node', type=int, default=8)
  parser.add_argument('--env', action='append', default=[], metavar='K=V')
  parser.add_argument('--dry-run', '--dry_run', dest='dry_run', action='store_true',
                      help='print the commands instead of running them')
  parser.add_argument('command', nargs=argparse.REMAINDER, help='-- then the command to run')
  args = parser.parse_args(argv)
  command = args.command[1:] if args.command[:1] == ['--'] else args.command
  if not command:
    parser.error('give the command after --')
  if args.slurm:
    cmds = [slurm_command(args, command)]
  elif args.hosts:
    cmds = ssh_commands(args, command)
  else:
    parser.error('give --hosts=a,b,... or --slurm')
  if args.dry_run:
    for cmd in cmds:
      print(shlex.join(cmd) + (' &' if len(cmds) > 1 else ''))
    if len(cmds) > 1:
      print('wait')
    return 0
  procs = [subprocess.Popen(cmd) for cmd in cmds]
  codes = [p.wait() for p in procs]
  return next((c for c in codes if c), 0)


if __name__ == '__main__':
  sys.exit(main())
