#!/usr/bin/env python3
r"""Run one command on every worker of a Cloud TPU VM pod slice, with one command.

  python launch/tpu_vm_pod.py --tpu=my-v4-32 --zone=us-central2-b --sync -- \
      python -m hyperflax.train --config=configs/hart_xl.py --workdir=gs://bucket/hart_xl \
      --config.mesh.data=1 --config.mesh.fsdp=-1
  python launch/tpu_vm_pod.py --tpu=my-v4-32 --zone=us-central2-b --dry-run -- python -m ...

Every worker runs the same command (`gcloud ... ssh --worker=all`);
`HYPERFLAX_DISTRIBUTED=1` makes `hyperflax.distributed.initialize()` call
`jax.distributed.initialize()`, which finds the coordinator and the worker's
rank from the TPU metadata. Each worker then reads only its own rows of every
batch, and all workers write and restore the (orbax) checkpoints together, so
`--workdir` must be shared storage (a GCS bucket). `--sync` first copies this
checkout to `--remote_dir` on every worker.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys


def commands(args, command: list[str]) -> list[list[str]]:
  """The gcloud invocations, in order."""
  base = ['gcloud', 'compute', 'tpus', 'tpu-vm']
  where = [f'--zone={args.zone}'] + ([f'--project={args.project}'] if args.project else [])
  out = []
  if args.sync:
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out.append(base + ['ssh', args.tpu, *where, '--worker=all',
                       f'--command=mkdir -p {args.remote_dir}'])
    out.append(base + ['scp', '--recurse', f'{repo}/.', f'{args.tpu}:{args.remote_dir}', *where,
                       '--worker=all'])
  env = dict([('HYPERFLAX_DISTRIBUTED', '1')] + [e.split('=', 1) for e in args.env])
  env = ' '.join(f'{k}={shlex.quote(v)}' for k, v in env.items())
  remote = f'cd {args.remote_dir} && {env} {shlex.join(command)}'  # ~ must expand remotely
  out.append(base + ['ssh', args.tpu, *where, '--worker=all', f'--command={remote}'])
  return out


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--tpu', required=True, help='TPU VM name')
  parser.add_argument('--zone', required=True)
  parser.add_argument('--project', default='')
  parser.add_argument('--remote_dir', default='~/hyperflax', help='checkout on the workers')
  parser.add_argument('--sync', action='store_true', help='copy this checkout to the workers')
  parser.add_argument('--env', action='append', default=[], metavar='K=V',
                      help='extra environment for the command (repeatable)')
  parser.add_argument('--dry-run', '--dry_run', dest='dry_run', action='store_true',
                      help='print the gcloud commands instead of running them')
  parser.add_argument('command', nargs=argparse.REMAINDER, help='-- then the command to run')
  args = parser.parse_args(argv)
  command = args.command[1:] if args.command[:1] == ['--'] else args.command
  if not command:
    parser.error('give the command after --')
  for cmd in commands(args, command):
    if args.dry_run:
      print(shlex.join(cmd))
      continue
    status = subprocess.call(cmd)
    if status:
      return status
  return 0


if __name__ == '__main__':
  sys.exit(main())
