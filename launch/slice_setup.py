#!/usr/bin/env python3
r"""What every multi-host launcher does around the command: ship, install, run.

  ship     this checkout's tracked files (`git ls-files`, as they are in the
           working tree: uncommitted edits go, untracked files, `.venv`,
           `runs/` and `.git` do not) as one tarball, unpacked over the
           remote directory. Files deleted here stay there.
  install  a virtualenv in `<remote_dir>/.venv` (Python 3.11) and
           `pip install -e '.[EXTRA]'` in it. Idempotent: it runs pip only when
           pyproject.toml differs from the one last installed with that extra
           (the code itself is an editable install: shipping is enough).
  run      `cd <remote_dir>`, the venv first on PATH, HYPERFLAX_DISTRIBUTED=1,
           then the command.

The packing step is this file run as a script (what `--dry-run` prints):

  python launch/slice_setup.py pack --out=/tmp/hyperflax-src.tar.gz
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
import tarfile
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REMOTE_TARBALL = '/tmp/hyperflax-src.tar.gz'  # on each worker, removed after unpacking


def local_tarball() -> str:
  return os.path.join(tempfile.gettempdir(), 'hyperflax-src.tar.gz')


def tracked_files(repo: str = REPO) -> list[str]:
  """Paths git tracks, relative to `repo`, that exist in the working tree."""
  out = subprocess.run(['git', '-C', repo, 'ls-files', '-z'], capture_output=True, check=True)
  names = [n for n in out.stdout.decode().split('\0') if n]
  return [n for n in names if os.path.lexists(os.path.join(repo, n))]  # not deleted here


def pack(out: str, repo: str = REPO) -> int:
  """Writes the tracked files into the gzipped tarball `out`; returns how many."""
  names = tracked_files(repo)
  with tarfile.open(out, 'w:gz') as tar:
    for name in names:
      tar.add(os.path.join(repo, name), arcname=name, recursive=False)
  return len(names)


def pack_command(out: str) -> list[str]:
  return [sys.executable, os.path.join(REPO, 'launch', 'slice_setup.py'), 'pack', f'--out={out}']


def remote_path(path: str) -> str:
  """`path` quoted for a remote shell, with a leading `~/` left to expand there."""
  if path == '~' or path.startswith('~/'):
    return '~' + (('/' + shlex.quote(path[2:])) if path[2:] else '')
  return shlex.quote(path)


def unpack_script(remote_dir: str, tarball: str = REMOTE_TARBALL) -> str:
  d, t = remote_path(remote_dir), remote_path(tarball)
  return f'mkdir -p {d} && tar -xzf {t} -C {d} && rm -f {t}'


def install_script(remote_dir: str, extra: str, python: str = 'python3.11') -> str:
  """Shell that makes `<remote_dir>/.venv` hold `pip install -e '.[extra]'`, once."""
  if not re.fullmatch(r'[A-Za-z0-9_,-]+', extra):
    raise SystemExit(f'--extra={extra!r}: expected extra names like tpu, cuda or cuda13')
  d = remote_path(remote_dir)
  stamp = f'.venv/.hyperflax-installed-{extra.replace(",", "-")}'
  py = shlex.quote(python)
  return ' && '.join([
      f'cd {d}',
      f'{{ command -v {py} >/dev/null || {{ echo "$(hostname): no {python}; install Python '
      f'3.11 (e.g. sudo apt-get install -y python3.11 python3.11-venv) or pass --python" >&2; '
      f'exit 2; }}; }}',
      f'{{ test -x .venv/bin/python || {py} -m venv .venv; }}',
      f'{{ cmp -s pyproject.toml {stamp} || {{ .venv/bin/pip install -q -e ".[{extra}]" '
      f'&& cp pyproject.toml {stamp}; }}; }}',
  ])


def run_script(remote_dir: str, command: list[str], env: dict[str, str] | None = None) -> str:
  """Shell that runs `command` in `remote_dir` with its venv and HYPERFLAX_DISTRIBUTED=1."""
  d = remote_path(remote_dir)
  env = {'HYPERFLAX_DISTRIBUTED': '1', **(env or {})}
  assigns = ' '.join(f'{k}={shlex.quote(v)}' for k, v in env.items())
  return f'cd {d} && PATH="$PWD/.venv/bin:$PATH" {assigns} {shlex.join(command)}'


def parse_env(pairs: list[str]) -> dict[str, str]:
  env = {}
  for pair in pairs:
    if '=' not in pair:
      raise SystemExit(f'--env={pair!r}: expected K=V')
    key, value = pair.split('=', 1)
    env[key] = value
  return env


def execute(phases: list[list[list[str]]], dry_run: bool) -> int:
  """Runs each phase's commands in parallel, the phases in order; stops at a failure.

  With `dry_run`, prints them instead (a phase of several as `cmd &` lines and `wait`).
  """
  for phase in phases:
    if dry_run:
      for cmd in phase:
        print(shlex.join(cmd) + (' &' if len(phase) > 1 else ''))
      if len(phase) > 1:
        print('wait')
      continue
    procs = [subprocess.Popen(cmd) for cmd in phase]
    codes = [p.wait() for p in procs]
    failed = next((c for c in codes if c), 0)
    if failed:
      print(f'failed ({failed}): {shlex.join(phase[codes.index(failed)])}', file=sys.stderr)
      return failed
  return 0


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description='pack this checkout\'s tracked files')
  parser.add_argument('action', choices=['pack'])
  parser.add_argument('--out', default=local_tarball())
  args = parser.parse_args(argv)
  count = pack(args.out)
  print(f'packed {count} tracked files into {args.out} ({os.path.getsize(args.out)} bytes)')
  others = subprocess.run(['git', '-C', REPO, 'ls-files', '--others', '--exclude-standard'],
                          capture_output=True, text=True, check=True).stdout.split()
  if others:  # a new config not yet `git add`ed would be missing on the workers
    print(f'not shipped: {len(others)} untracked files (git add them to ship), e.g. '
          f'{", ".join(others[:3])}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
