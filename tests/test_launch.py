"""Launchers: what their dry runs print, and the ship / install / run steps executed for real.

The steps' shell is run here with bash against a scratch "worker" directory (a
stub interpreter stands in for Python 3.11 and pip), so the idempotent install
and the tracked-files-only tarball are checked by running them, not by reading
them. Nothing reaches gcloud, ssh or SLURM.
"""

import importlib.util
import os
import shlex
import stat
import subprocess
import sys
import tarfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMAND = ['python', '-m', 'hyperflax.train', '--config=configs/hart_xl.py', '--workdir=gs://b/r']


def _load(name):
  spec = importlib.util.spec_from_file_location(f'launch_{name}',
                                                os.path.join(ROOT, 'launch', f'{name}.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


slice_setup = _load('slice_setup')


def _dry(capsys, name, *args):
  assert _load(name).main([*args, '--dry-run', '--', *COMMAND]) == 0
  return capsys.readouterr().out.strip().splitlines()


def _remote(line: str) -> str:
  """The remote shell of a printed gcloud / ssh / srun line (its last argument)."""
  last = shlex.split(line)[-1]
  return last.split('=', 1)[1] if last.startswith('--command=') else last


def test_tpu_pod_dry_run_ships_tracked_files_installs_then_runs(capsys):
  lines = _dry(capsys, 'tpu_vm_pod', '--tpu=pod', '--zone=us-central2-b', '--sync', '--setup')
  pack, scp, unpack, install, run = lines
  assert shlex.split(pack)[1:] == [os.path.join(ROOT, 'launch', 'slice_setup.py'), 'pack',
                                   f'--out={slice_setup.local_tarball()}']
  # One tarball goes to the workers, not the checkout (no `scp --recurse <repo>`).
  assert shlex.split(scp)[:5] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'scp']
  assert '--recurse' not in scp and ROOT not in scp.replace(pack.split()[0], '')
  assert f'pod:{slice_setup.REMOTE_TARBALL}' in scp
  for line in (scp, unpack, install, run):
    assert '--worker=all' in line and '--zone=us-central2-b' in line
  assert 'tar -xzf /tmp/hyperflax-src.tar.gz -C ~/hyperflax' in _remote(unpack)
  assert '.venv/bin/pip install -q -e ".[tpu]"' in _remote(install)
  assert _remote(run) == ('cd ~/hyperflax && PATH="$PWD/.venv/bin:$PATH" '
                          'HYPERFLAX_DISTRIBUTED=1 ' + shlex.join(COMMAND))
  # Neither step asked for: just the command, still distributed.
  (only,) = _dry(capsys, 'tpu_vm_pod', '--tpu=pod', '--zone=z', '--env=XLA_FLAGS=--a --b')
  assert "HYPERFLAX_DISTRIBUTED=1 XLA_FLAGS='--a --b' python -m hyperflax.train" in _remote(only)


def test_gpu_ssh_dry_run_every_node_ranked_installed_and_distributed(capsys):
  lines = _dry(capsys, 'gpu_multinode', '--hosts=a,b,c', '--port=7000', '--sync', '--setup')
  assert lines[0].endswith(f'pack --out={slice_setup.local_tarball()}')
  # Four parallel steps of three lines + `wait`: scp, unpack, install, run.
  steps = [lines[1 + 4 * i:1 + 4 * (i + 1)] for i in range(4)]
  assert len(lines) == 17 and all(step[-1] == 'wait' for step in steps)
  scp, unpack, install, run = ([line.removesuffix(' &') for line in step[:3]] for step in steps)
  for rank, host in enumerate('abc'):
    assert scp[rank] == (f'scp -o BatchMode=yes {slice_setup.local_tarball()} '
                         f'{host}:/tmp/hyperflax-src.tar.gz')
    for line in (unpack[rank], install[rank], run[rank]):
      assert line.startswith(f'ssh -o BatchMode=yes {host} ')
    assert '.venv/bin/pip install -q -e ".[cuda]"' in _remote(install[rank])
    remote = _remote(run[rank])
    assert remote.startswith('cd ~/hyperflax && PATH="$PWD/.venv/bin:$PATH" '
                             'HYPERFLAX_DISTRIBUTED=1 HYPERFLAX_COORDINATOR=a:7000 '
                             f'HYPERFLAX_NUM_PROCESSES=3 HYPERFLAX_PROCESS_ID={rank} ')
    assert remote.endswith(shlex.join(COMMAND))


def test_slurm_dry_run_sbcasts_installs_per_node_and_runs_distributed(capsys):
  pack, sbcast, unpack, install, run = _dry(capsys, 'gpu_multinode', '--slurm', '--nodes=2',
                                            '--sync', '--setup', '--extra=cuda13',
                                            '--remote_dir=/scratch/hf')
  assert 'slice_setup.py pack' in pack
  assert shlex.split(sbcast) == ['sbcast', '--force', slice_setup.local_tarball(),
                                 slice_setup.REMOTE_TARBALL]
  for line in (unpack, install, run):
    assert line.startswith('srun --nodes=2 --ntasks-per-node=1 ')
  assert 'tar -xzf /tmp/hyperflax-src.tar.gz -C /scratch/hf' in _remote(unpack)
  assert '.venv/bin/pip install -q -e ".[cuda13]"' in _remote(install)
  assert '--gpus-per-node=8' in run and '--export=ALL,HYPERFLAX_DISTRIBUTED=1' in run
  assert _remote(run) == ('cd /scratch/hf && PATH="$PWD/.venv/bin:$PATH" '
                          'HYPERFLAX_DISTRIBUTED=1 ' + shlex.join(COMMAND))
  # The checkout on the shared filesystem: nothing shipped, one node installs, all run there.
  install, run = _dry(capsys, 'gpu_multinode', '--slurm', '--nodes=2', '--setup')
  assert install.startswith('srun --nodes=1 --ntasks=1 bash -c ')
  assert _remote(install).startswith(f'cd {ROOT} && ')
  assert _remote(run).startswith(f'cd {ROOT} && PATH="$PWD/.venv/bin:$PATH" '
                                 'HYPERFLAX_DISTRIBUTED=1 ')
  with pytest.raises(SystemExit):  # every node would unpack into the one shared checkout
    _load('gpu_multinode').main(['--slurm', '--sync', f'--remote_dir={ROOT}', '--dry-run',
                                 '--', 'true'])


def _git(repo, *args):
  subprocess.run(['git', '-C', str(repo), '-c', 'user.name=t', '-c', 'user.email=t@t', *args],
                 check=True, capture_output=True)


def test_pack_holds_exactly_the_tracked_files_as_in_the_working_tree(tmp_path):
  repo = tmp_path / 'repo'
  for name in ('pyproject.toml', 'hyperflax/a.py', 'configs/c.py', 'gone.py'):
    (repo / name).parent.mkdir(parents=True, exist_ok=True)
    (repo / name).write_text(name)
  _git(repo, 'init', '-q')
  _git(repo, 'add', '.')
  _git(repo, 'commit', '-q', '-m', 'x')
  (repo / 'configs/c.py').write_text('edited, not committed')
  (repo / 'gone.py').unlink()  # tracked, deleted here: not shipped, no error
  for name in ('.venv/bin/python', 'runs/r/metrics.jsonl', 'untracked.py'):
    (repo / name).parent.mkdir(parents=True, exist_ok=True)
    (repo / name).write_text('must not ship')
  out = tmp_path / 'src.tar.gz'
  assert slice_setup.pack(str(out), str(repo)) == 3
  with tarfile.open(out) as tar:
    assert sorted(tar.getnames()) == ['configs/c.py', 'hyperflax/a.py', 'pyproject.toml']
    assert tar.extractfile('configs/c.py').read() == b'edited, not committed'


STUB_PYTHON = """#!/bin/bash
# Stands in for python3.11: `-m venv D` makes D/bin/{python,pip}; pip logs its calls.
if [ "$1" = -m ] && [ "$2" = venv ]; then
  mkdir -p "$3/bin"
  printf '#!/bin/bash\\necho "$@" >> %s\\n' "$PIP_LOG" > "$3/bin/pip"
  printf '#!/bin/bash\\necho "venv python HYPERFLAX_DISTRIBUTED=$HYPERFLAX_DISTRIBUTED $*"\\n' \\
      > "$3/bin/python"
  chmod +x "$3/bin/pip" "$3/bin/python"
fi
"""


def _bash(script, **env):
  return subprocess.run(['bash', '-c', script], capture_output=True, text=True, timeout=60,
                        env={**os.environ, **env})


def test_steps_run_for_real_unpack_install_once_then_run_in_the_venv(tmp_path):
  worker = tmp_path / 'worker dir'  # a space: the remote shell quoting must hold
  tarball = tmp_path / 'shipped.tar.gz'
  slice_setup.pack(str(tarball))
  done = _bash(slice_setup.unpack_script(str(worker), str(tarball)))
  assert done.returncode == 0, done.stderr
  assert not tarball.exists()  # removed after unpacking
  assert (worker / 'pyproject.toml').exists() and (worker / 'launch/tpu_vm_pod.py').exists()
  assert not any((worker / d).exists() for d in ('.venv', '.git', 'runs'))

  python = tmp_path / 'python3.11'
  python.write_text(STUB_PYTHON)
  python.chmod(python.stat().st_mode | stat.S_IXUSR)
  log = tmp_path / 'pip.log'
  install = slice_setup.install_script(str(worker), 'cuda', str(python))
  for _ in range(2):  # the second time: already installed, pip is not run
    done = _bash(install, PIP_LOG=str(log))
    assert done.returncode == 0, done.stderr
  assert log.read_text().splitlines() == ['install -q -e .[cuda]']
  with open(worker / 'pyproject.toml', 'a') as f:
    f.write('\n# a new pin\n')
  assert _bash(install, PIP_LOG=str(log)).returncode == 0
  assert len(log.read_text().splitlines()) == 2  # pyproject changed: installed again

  done = _bash(slice_setup.run_script(str(worker), ['python', '-m', 'x', 'a b'], {'K': 'v'}),
               HYPERFLAX_DISTRIBUTED='')
  assert done.returncode == 0, done.stderr
  assert done.stdout.strip() == 'venv python HYPERFLAX_DISTRIBUTED=1 -m x a b'

  missing = _bash(slice_setup.install_script(str(worker), 'tpu', 'no-such-python3.11'))
  assert missing.returncode == 2 and 'no no-such-python3.11; install Python 3.11' in missing.stderr


def test_execute_runs_steps_in_order_and_stops_at_a_failure(tmp_path, capsys):
  mark = tmp_path / 'ran'
  phases = [[['true'], ['true']], [['false']], [['touch', str(mark)]]]
  assert slice_setup.execute(phases, dry_run=False) == 1
  assert not mark.exists() and 'failed (1): false' in capsys.readouterr().err
  assert slice_setup.remote_path('~/a b') == "~/'a b'" and slice_setup.remote_path('~') == '~'
  with pytest.raises(SystemExit):
    slice_setup.install_script('/x', 'tpu; rm -rf /')


def test_distributed_flag_without_a_cluster_names_what_to_set():
  # A fresh process: jax.distributed must come before anything initialises a backend.
  done = subprocess.run([sys.executable, '-c', 'from hyperflax import distributed; '
                         'distributed.initialize()'], cwd=ROOT, capture_output=True, text=True,
                        timeout=120, env={**os.environ, 'HYPERFLAX_DISTRIBUTED': '1',
                                          'JAX_PLATFORMS': 'cpu'})
  assert done.returncode != 0
  last = done.stderr.strip().splitlines()[-1]
  assert last.startswith('ValueError: HYPERFLAX_DISTRIBUTED=1') and 'HYPERFLAX_COORDINATOR' in last


def test_readme_launch_commands_parse_and_run_distributed(capsys):
  text = open(os.path.join(ROOT, 'README.md')).read().replace('\\\n', ' ')
  commands = [shlex.split(line) for line in text.splitlines()
              if line.startswith(('python launch/tpu_vm_pod.py', 'python launch/gpu_multinode.py'))]
  assert len(commands) >= 3
  for argv in commands:
    name = os.path.basename(argv[1])[:-3]
    assert _load(name).main(['--dry-run', *argv[2:]]) == 0, argv
    lines = capsys.readouterr().out.strip().splitlines()
    assert 'HYPERFLAX_DISTRIBUTED=1' in _remote(lines[-1].removesuffix(' &') if lines[-1] != 'wait'
                                                else lines[-2].removesuffix(' &'))
    if '--setup' in argv:
      assert any('pip install -q -e' in line for line in lines), argv
