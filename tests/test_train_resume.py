"""Preemption and resumption: SIGKILL + rerun is bit-exact; SIGTERM saves; corrupt falls back."""

import glob
import logging
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from hyperflax.train import load_trainable

CONFIG = 'configs/hart_large.py:tiny'  # HART: also carries the previous-step states
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cmd(workdir, steps=6, every=2):
  return [sys.executable, '-m', 'hyperflax.train', f'--config={CONFIG}', f'--workdir={workdir}',
          f'--config.train.num_steps={steps}', f'--config.train.checkpoint_every={every}',
          '--config.train.keep_checkpoints=5', '--config.eval.name=']


# The runs below compile the same programs: share XLA's persistent cache between
# the subprocesses (an identical executable, so results stay bit-comparable).
_CACHE = os.path.join(os.environ.get('TMPDIR', '/tmp'), f'hyperflax-test-xla-cache-{os.getuid()}')
ENV = dict(os.environ, JAX_COMPILATION_CACHE_DIR=_CACHE,
           JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
           JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0')


def _run(workdir, **kw):
  proc = subprocess.run(_cmd(workdir, **kw), cwd=ROOT, capture_output=True, text=True,
                        timeout=600, env=ENV)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc


def _wait_for(path_glob, proc, timeout=400):
  t0 = time.time()
  while time.time() - t0 < timeout:
    if glob.glob(path_glob):
      return True
    if proc.poll() is not None:
      return False
    time.sleep(0.05)
  return False


def _saved_steps(workdir):
  """Finished checkpoint steps (orbax writes `N.orbax-checkpoint-tmp` first)."""
  names = (os.path.basename(p) for p in glob.glob(os.path.join(workdir, 'checkpoints', '*')))
  return sorted(int(n) for n in names if n.isdigit())


def _assert_trees_equal(a, b):
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(la) == len(lb) and la
  for x, y in zip(la, lb):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('full'))
  _run(workdir)
  return workdir


def test_sigkill_then_rerun_ends_bit_exact(uninterrupted, tmp_path):
  workdir = str(tmp_path / 'killed')
  proc = subprocess.Popen(_cmd(workdir), cwd=ROOT, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, env=ENV)
  try:
    assert _wait_for(os.path.join(workdir, 'checkpoints', '2', 'state'), proc), \
        'training never wrote its first checkpoint'
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
  finally:
    if proc.poll() is None:
      proc.kill()
  assert proc.returncode == -signal.SIGKILL
  steps_before = _saved_steps(workdir)
  assert steps_before and steps_before[-1] < 6  # really interrupted mid-run
  out = _run(workdir)
  assert 'resumed from step' in out.stderr
  _assert_trees_equal(load_trainable(workdir), load_trainable(uninterrupted))


def test_sigterm_saves_and_exits_cleanly(tmp_path):
  workdir = str(tmp_path / 'term')
  proc = subprocess.Popen(_cmd(workdir, steps=200, every=100), cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV)
  try:
    assert _wait_for(os.path.join(workdir, 'metrics.jsonl'), proc)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
  finally:
    if proc.poll() is None:
      proc.kill()
  assert proc.returncode == 0, out[-2000:]
  saved = _saved_steps(workdir)
  assert saved and saved[-1] < 200 and saved[-1] % 100 != 0  # saved at the signal, not on schedule
  assert 'SIGTERM' in out


def test_corrupt_latest_checkpoint_falls_back_with_warning(uninterrupted, tmp_path, caplog):
  from hyperflax.training.checkpointing import Checkpointer
  workdir = str(tmp_path / 'copy')
  shutil.copytree(uninterrupted, workdir)
  latest = os.path.join(workdir, 'checkpoints', '6', 'state')
  for f in glob.glob(os.path.join(latest, '**', '*'), recursive=True):
    if os.path.isfile(f) and not f.endswith('_CHECKPOINT_METADATA'):
      with open(f, 'wb') as fh:
        fh.write(b'garbage')
  template = _template(uninterrupted)
  with caplog.at_level(logging.WARNING):
    ckpt = Checkpointer(os.path.join(workdir, 'checkpoints'), keep=5)
    state, meta = ckpt.restore_latest(template)
    ckpt.close()
  assert int(state.step) == 4 and meta['step'] == 4
  assert any('unreadable' in r.message for r in caplog.records)


def _template(workdir):
  """A TrainState of the right structure, built as train() builds it."""
  import json
  import ml_collections
  from hyperflax.train import train_stream
  from hyperflax.training.experiment import Experiment
  from hyperflax.training.optim import make_optimizer
  from hyperflax.training.step import create_state
  config = ml_collections.ConfigDict(json.load(open(os.path.join(workdir, 'config.json'))))
  exp = Experiment.from_config(config)
  trainable, _ = exp.init(jax.random.PRNGKey(0))
  batch = next(train_stream(config, exp, 0))
  accum = config.train.grad_accum_steps
  micro = jax.tree.map(lambda x: x[: x.shape[0] // accum], batch)
  return create_state(exp, make_optimizer(config, 6), trainable, jax.random.PRNGKey(1), micro)
