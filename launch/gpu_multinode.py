#!/usr/bin/env python3
r"""Set up and run one command on several GPU nodes: one JAX process per node, all its GPUs.

Over ssh (node 0 hosts the coordinator):

  python launch/gpu_multinode.py --hosts=gpu-a,gpu-b --port=6789 --sync --setup -- \
      python -m hyperflax.train --config=configs/hart_xl.py --workdir=/shared/runs/hart_xl \
      --config.model.init_from=/shared/t5_v1_1_xl --config.mesh.fsdp=8 --config.mesh.data=-1

Under SLURM (`salloc -N 2 --gpus-per-node=8`, then), JAX reads the rank and
coordinator from SLURM itself:

  python launch/gpu_multinode.py --slurm --nodes=2 --setup -- python -m hyperflax.train ...

Steps, in order (`--dry-run` prints them all):

  --sync   pack the files git tracks here (never .venv, runs/ or .git) and
           unpack them into --remote_dir on every node (ssh: scp + ssh;
           SLURM: sbcast + srun, into a node-local --remote_dir);
  --setup  `pip install -e '.[cuda]'` into <remote_dir>/.venv (Python 3.11),
           skipped where that pyproject.toml is already installed. Under SLURM
           without --sync the code is this checkout on the shared filesystem,
           so one node installs it once;
  then     the command on every node, in --remote_dir with that venv first on
           PATH and HYPERFLAX_DISTRIBUTED=1 (over ssh also
           HYPERFLAX_COORDINATOR / _NUM_PROCESSES / _PROCESS_ID, which
           `hyperflax.distributed.initialize()` passes to `jax.distributed`).

`--workdir` must be on storage every node sees (a shared filesystem or a
gs:// bucket): checkpoints are written and restored by all processes together.
See `slice_setup.py` for what the steps run.
"""

from __future__ import annotations

import argparse
import getpass
import os
import shlex
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import slice_setup  # noqa: E402


def ssh_commands(args, command: list[str]) -> list[list[list[str]]]:
  """The steps over ssh; each a list of commands (one per node) run together."""
  hosts = [h for h in args.hosts.split(',') if h]
  coordinator = f'{args.coordinator or hosts[0]}:{args.port}'
  ssh = ['ssh', *shlex.split(args.ssh_options)]
  remote_dir = args.remote_dir or '~/hyperflax'
  phases = []
  if args.sync:
    tarball = slice_setup.local_tarball()
    phases.append([slice_setup.pack_command(tarball)])
    phases.append([['scp', *shlex.split(args.ssh_options), tarball,
                    f'{h}:{slice_setup.REMOTE_TARBALL}'] for h in hosts])
    phases.append([ssh + [h, slice_setup.unpack_script(remote_dir)] for h in hosts])
  if args.setup:
    script = slice_setup.install_script(remote_dir, args.extra, args.python)
    phases.append([ssh + [h, script] for h in hosts])
  run = []
  for rank, host in enumerate(hosts):
    env = {'HYPERFLAX_COORDINATOR': coordinator, 'HYPERFLAX_NUM_PROCESSES': str(len(hosts)),
           'HYPERFLAX_PROCESS_ID': str(rank), **slice_setup.parse_env(args.env)}
    run.append(ssh + [host, slice_setup.run_script(remote_dir, command, env)])
  phases.append(run)
  return phases


def slurm_commands(args, command: list[str]) -> list[list[list[str]]]:
  """The steps inside a SLURM allocation (one task per node; JAX detects the rest)."""
  per_node = ['srun', f'--nodes={args.nodes}', '--ntasks-per-node=1']
  # Without --sync every node runs this checkout, seen through the shared filesystem.
  remote_dir = args.remote_dir or (
      f'/tmp/hyperflax-{getpass.getuser()}' if args.sync else slice_setup.REPO)
  if args.sync and remote_dir.startswith(slice_setup.REPO):
    raise SystemExit('--sync under SLURM unpacks on every node: give a node-local '
                     '--remote_dir, not this checkout')
  phases = []
  if args.sync:
    tarball = slice_setup.local_tarball()
    phases.append([slice_setup.pack_command(tarball)])
    phases.append([['sbcast', '--force', tarball, slice_setup.REMOTE_TARBALL]])
    phases.append([per_node + ['bash', '-c', slice_setup.unpack_script(remote_dir)]])
  if args.setup:
    # Each node's own copy, or once for the shared checkout (nodes would race on one venv).
    where = per_node if args.sync else ['srun', '--nodes=1', '--ntasks=1']
    phases.append([where + ['bash', '-c', slice_setup.install_script(
        remote_dir, args.extra, args.python)]])
  phases.append([per_node + [f'--gpus-per-node={args.gpus_per_node}',
                             '--export=ALL,HYPERFLAX_DISTRIBUTED=1', 'bash', '-c',
                             slice_setup.run_script(remote_dir, command,
                                                    slice_setup.parse_env(args.env))]])
  return phases


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--hosts', default='', help='comma-separated nodes (ssh mode)')
  parser.add_argument('--coordinator', default='', help='address of node 0 (default: first host)')
  parser.add_argument('--port', type=int, default=6789)
  parser.add_argument('--remote_dir', default='',
                      help='the code on every node (default: ~/hyperflax over ssh; under SLURM '
                           'this checkout, or /tmp/hyperflax-<user> with --sync)')
  parser.add_argument('--ssh_options', default='-o BatchMode=yes')
  parser.add_argument('--slurm', action='store_true', help='use srun inside an allocation')
  parser.add_argument('--nodes', type=int, default=1)
  parser.add_argument('--gpus_per_node', type=int, default=8)
  parser.add_argument('--sync', action='store_true',
                      help="copy this checkout's tracked files to every node")
  parser.add_argument('--setup', action='store_true',
                      help='install the project with --extra on the nodes (idempotent)')
  parser.add_argument('--extra', default='cuda', help="pyproject extra (cuda = CUDA 12; cuda13)")
  parser.add_argument('--python', default='python3.11', help='interpreter for the venv')
  parser.add_argument('--env', action='append', default=[], metavar='K=V')
  parser.add_argument('--dry-run', '--dry_run', dest='dry_run', action='store_true',
                      help='print the commands instead of running them')
  parser.add_argument('command', nargs=argparse.REMAINDER, help='-- then the command to run')
  args = parser.parse_args(argv)
  command = args.command[1:] if args.command[:1] == ['--'] else args.command
  if not command:
    parser.error('give the command after --')
  if args.slurm:
    phases = slurm_commands(args, command)
  elif args.hosts:
    phases = ssh_commands(args, command)
  else:
    parser.error('give --hosts=a,b,... or --slurm')
  return slice_setup.execute(phases, args.dry_run)


if __name__ == '__main__':
  sys.exit(main())
