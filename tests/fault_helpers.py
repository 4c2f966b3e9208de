"""Shared pieces of the fault-injection tests: tiny configs, one trained workdir
(built once per test session, shared between xdist workers), file hashes."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import shutil

import ml_collections

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = 'configs/hypert5_lora_large.py'


def tiny(path: str = CONFIG, **overrides) -> ml_collections.ConfigDict:
  """`path:tiny` with dotted overrides, as `--config.a.b=v` would set them.

  A constant learning rate: a run resumed with a larger `num_steps` then
  follows the trajectory of one trained to that length in one go.
  """
  spec = importlib.util.spec_from_file_location('hf_config', os.path.join(ROOT, path))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config('tiny')
  defaults = {'train.num_steps': 4, 'train.checkpoint_every': 2, 'train.keep_checkpoints': 5,
              'eval.name': '', 'optim.schedule': 'constant'}
  for key, value in {**defaults, **overrides}.items():
    node = c
    *parents, leaf = key.split('.')
    for part in parents:
      node = node[part]
    node[leaf] = value
  return c


def cli_args(path: str = CONFIG, **overrides) -> list[str]:
  defaults = {'train.num_steps': 4, 'train.checkpoint_every': 2, 'train.keep_checkpoints': 5,
              'eval.name': '', 'optim.schedule': 'constant'}
  return [f'--config={os.path.join(ROOT, path)}:tiny'] + [
      f'--config.{k}={v}' for k, v in {**defaults, **overrides}.items()]


def hashes(directory) -> dict[str, str]:
  """sha256 of every file under `directory` (relative path -> digest)."""
  out = {}
  for base, _, files in os.walk(directory):
    for name in files:
      path = os.path.join(base, name)
      with open(path, 'rb') as f:
        out[os.path.relpath(path, directory)] = hashlib.sha256(f.read()).hexdigest()
  return out


def saved_steps(workdir) -> list[int]:
  names = os.listdir(os.path.join(workdir, 'checkpoints'))
  return sorted(int(n) for n in names if n.isdigit())


def largest_file(directory) -> str:
  files = [os.path.join(b, n) for b, _, fs in os.walk(directory) for n in fs]
  return max(files, key=os.path.getsize)


@contextlib.contextmanager
def env(**values):
  saved = {k: os.environ.get(k) for k in values}
  os.environ.update({k: v for k, v in values.items() if v is not None})
  for k, v in values.items():
    if v is None:
      os.environ.pop(k, None)
  try:
    yield
  finally:
    for k, v in saved.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v


def shared_root(tmp_path_factory) -> str:
  """A directory every xdist worker of this session sees (its own basetemp otherwise)."""
  base = tmp_path_factory.getbasetemp()
  return str(base.parent if os.environ.get('PYTEST_XDIST_WORKER') else base)


def trained_workdir(tmp_path_factory) -> dict:
  """A 4-step `hypert5_lora_large:tiny` run (checkpoints 1-4), trained once.

  Its tokenizer is a copy of the T5 SentencePiece model under its own data
  folder, so a test can take that folder away.
  """
  from filelock import FileLock
  root = shared_root(tmp_path_factory)
  out = {'workdir': os.path.join(root, 'faults-base', 'run'),
         'data': os.path.join(root, 'faults-base', 'data')}
  with FileLock(os.path.join(root, 'faults-base.lock')):
    if not os.path.exists(os.path.join(root, 'faults-base', 'DONE')):
      shutil.rmtree(os.path.join(root, 'faults-base'), ignore_errors=True)
      os.makedirs(os.path.join(out['data'], 't5'))
      from hyperflax.data.vocab import default_vocab_path
      if default_vocab_path().is_file():  # else the run uses the word vocabulary
        shutil.copy(default_vocab_path(), os.path.join(out['data'], 't5', 'spiece.model'))
      from hyperflax.train import train
      with env(HYPERFLAX_DATA_DIR=out['data']):
        train(tiny(**{'train.checkpoint_every': 1}), out['workdir'])
      open(os.path.join(root, 'faults-base', 'DONE'), 'w').close()
  return out


def copy_run(base: dict, dst) -> str:
  dst = os.fspath(dst)
  shutil.copytree(base['workdir'], dst)
  return dst
