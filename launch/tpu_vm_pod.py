#!/usr/bin/env python3
r"""Set up and run one command on every worker of a Cloud TPU VM pod slice.

  python launch/tpu_vm_pod.py --tpu=my-v4-32 --zone=us-central2-b --sync --setup -- \
      python -m hyperflax.train --config=configs/hart_xl.py --workdir=gs://bucket/hart_xl \
      --config.model.init_from=gs://bucket/t5_v1_1_xl --config.mesh.data=1 --config.mesh.fsdp=-1
  python launch/tpu_vm_pod.py --tpu=my-v4-32 --zone=us-central2-b --sync --setup --dry-run -- ...

In order, each step on all workers at once (`gcloud ... --worker=all`):

  --sync   pack the files git tracks here (never .venv, runs/ or .git) and
           unpack them into --remote_dir on every worker;
  --setup  `pip install -e '.[tpu]'` into <remote_dir>/.venv (Python 3.11),
           skipped where that pyproject.toml is already installed;
  then     the command, in --remote_dir with that venv first on PATH and
           HYPERFLAX_DISTRIBUTED=1, so `hyperflax.distributed.initialize()`
           calls `jax.distributed.initialize()`, which finds the coordinator
           and the worker's rank from the TPU metadata.

Each worker reads only its own rows of every batch, and all workers write and
restore the (orbax) checkpoints together, so `--workdir` must be shared
storage (a gs:// bucket). `--dry-run` prints every command instead.
See `slice_setup.py` for what the steps run.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import slice_setup  # noqa: E402


def commands(args, command: list[str]) -> list[list[list[str]]]:
  """The steps, in order; each a list of commands run together."""
  base = ['gcloud', 'compute', 'tpus', 'tpu-vm']
  where = [f'--zone={args.zone}'] + ([f'--project={args.project}'] if args.project else [])

  def on_all(script):
    return [base + ['ssh', args.tpu, *where, '--worker=all', f'--command={script}']]

  phases = []
  if args.sync:
    tarball = slice_setup.local_tarball()
    phases.append([slice_setup.pack_command(tarball)])
    phases.append([base + ['scp', tarball, f'{args.tpu}:{slice_setup.REMOTE_TARBALL}', *where,
                           '--worker=all']])
    phases.append(on_all(slice_setup.unpack_script(args.remote_dir)))
  if args.setup:
    phases.append(on_all(slice_setup.install_script(args.remote_dir, args.extra, args.python)))
  phases.append(on_all(slice_setup.run_script(args.remote_dir, command,
                                              slice_setup.parse_env(args.env))))
  return phases


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--tpu', required=True, help='TPU VM name')
  parser.add_argument('--zone', required=True)
  parser.add_argument('--project', default='')
  parser.add_argument('--remote_dir', default='~/hyperflax', help='the code on the workers')
  parser.add_argument('--sync', action='store_true',
                      help="copy this checkout's tracked files to the workers")
  parser.add_argument('--setup', action='store_true',
                      help="install the project with --extra on every worker (idempotent)")
  parser.add_argument('--extra', default='tpu', help="pyproject extra to install (default tpu)")
  parser.add_argument('--python', default='python3.11', help='interpreter for the venv')
  parser.add_argument('--env', action='append', default=[], metavar='K=V',
                      help='extra environment for the command (repeatable)')
  parser.add_argument('--dry-run', '--dry_run', dest='dry_run', action='store_true',
                      help='print the commands instead of running them')
  parser.add_argument('command', nargs=argparse.REMAINDER, help='-- then the command to run')
  args = parser.parse_args(argv)
  command = args.command[1:] if args.command[:1] == ['--'] else args.command
  if not command:
    parser.error('give the command after --')
  return slice_setup.execute(commands(args, command), args.dry_run)


if __name__ == '__main__':
  sys.exit(main())
