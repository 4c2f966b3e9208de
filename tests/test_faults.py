"""Fault injection on real tiny workdirs: damaged checkpoints, wrong configs, locks,
Ctrl-C, reruns, a missing tokenizer. Each test damages a copy of one trained run."""

import glob
import json
import logging
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import fault_helpers as fh
from hyperflax import hypertune, train as train_lib
from hyperflax.training import checkpointing
from hyperflax.workdir import WorkdirError, load_trainable


@pytest.fixture(scope='module')
def base(tmp_path_factory):
  return fh.trained_workdir(tmp_path_factory)


def _trees_equal(a, b):
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(la) == len(lb) and la
  for x, y in zip(la, lb):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _damage(step_dir, how):
  target = fh.largest_file(os.path.join(step_dir, 'state'))
  if how == 'truncate':
    with open(target, 'r+b') as f:
      f.truncate(os.path.getsize(target) // 2)
  elif how == 'delete':
    os.remove(target)
  else:  # one flipped bit in the middle of the array data
    with open(target, 'r+b') as f:
      f.seek(os.path.getsize(target) // 2)
      byte = f.read(1)
      f.seek(-1, 1)
      f.write(bytes([byte[0] ^ 0x10]))
  return target


def test_damaged_checkpoints_fall_back_and_training_continues(base, tmp_path, caplog, capsys):
  """Step 4 truncated, step 3 missing a file, step 2 with one flipped bit: every
  loader falls back to step 1, and training moves 2-4 aside and goes on past them."""
  from hyperflax import evaluate
  workdir = fh.copy_run(base, tmp_path / 'run')
  for step, how in ((4, 'truncate'), (3, 'delete'), (2, 'bitflip')):
    _damage(os.path.join(workdir, 'checkpoints', str(step)), how)
  with caplog.at_level(logging.WARNING):
    step, _ = load_trainable(workdir, with_step=True)
  unreadable = [r.getMessage() for r in caplog.records if 'unreadable' in r.getMessage()]
  assert step == 1 and len(unreadable) == 3, unreadable
  examples = tmp_path / 'ex.jsonl'
  examples.write_text('{"input": "a b", "output": "c"}\n')
  assert hypertune.main(['--checkpoint', workdir, '--examples', str(examples),
                         '--out', str(tmp_path / 'adapter')]) == 0
  manifest = json.loads((tmp_path / 'adapter' / 'manifest.json').read_text())
  assert manifest['hypermodel']['step'] == 1
  rc = evaluate.main(['evaluate', *fh.cli_args(**{
      'eval.name': 'synthetic_fewshot', 'eval.options.max_queries': 2,
      'eval.options.heldout_tasks_per_family': 1}), f'--workdir={workdir}'])
  assert rc == 0, capsys.readouterr().err[-2000:]
  assert os.path.exists(os.path.join(workdir, 'results.json'))
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    out = train_lib.train(fh.tiny(**{'train.num_steps': 5, 'train.checkpoint_every': 1}),
                          workdir)
  assert int(out['state'].step) == 5 and fh.saved_steps(workdir) == [1, 2, 3, 4, 5]
  moved = sorted(os.path.basename(p).split('-')[0]
                 for p in glob.glob(os.path.join(workdir, 'quarantine', '*')))
  assert moved == ['2', '3', '4']
  assert sum('quarantine' in r.getMessage() for r in caplog.records) == 3
  assert load_trainable(workdir, with_step=True)[0] == 5
  rows = [json.loads(line)['step'] for line in open(os.path.join(workdir, 'metrics.jsonl'))]
  assert rows == list(range(1, 6))  # the rows of the re-run steps 2-4 are not duplicated


def test_nan_and_bitflip_are_caught_by_checksums(tmp_path, caplog):
  """Checkpointer unit level: a NaN state that orbax saved faithfully (and whose
  checksums match) and a flipped bit both count as unreadable."""
  ckpt = checkpointing.Checkpointer(tmp_path / 'ck', keep=5, async_save=False)
  good = {'step': np.array(1, np.int32), 'w': np.arange(6, dtype=np.float32)}
  ckpt.save(1, good, {'step': 1})
  ckpt.save(2, {'step': np.array(2, np.int32), 'w': np.full(6, np.nan, np.float32)}, {'step': 2})
  ckpt.close()
  ckpt = checkpointing.Checkpointer(tmp_path / 'ck', keep=5)
  with caplog.at_level(logging.WARNING):
    template = {'step': np.array(0, np.int32), 'w': np.zeros(6, np.float32)}
    state, meta = ckpt.restore_latest(template)
  assert meta['step'] == 1 and any('NaN' in r.message for r in caplog.records)
  np.testing.assert_array_equal(state['w'], good['w'])
  ckpt.close()
  assert checkpointing.verify_checksums(tmp_path / 'ck' / '1')
  _damage(str(tmp_path / 'ck' / '1'), 'bitflip')
  with pytest.raises(checkpointing.Unreadable, match='sha256'):
    checkpointing.verify_checksums(tmp_path / 'ck' / '1')


def test_another_kind_on_an_existing_workdir_is_refused_and_nothing_changes(base, tmp_path,
                                                                             capsys):
  workdir = fh.copy_run(base, tmp_path / 'run')
  before = fh.hashes(workdir)
  with pytest.raises(WorkdirError, match=r"hyper\.kind='lora' \(now 'prefix'\)"):
    train_lib.train(fh.tiny('configs/hypert5_prefix_large.py'), workdir)
  rc = train_lib.main(['train', *fh.cli_args(**{'hyper.lora_rank': 3}), f'--workdir={workdir}'])
  err = capsys.readouterr().err.strip().splitlines()
  assert rc == 2 and 'hyper.lora_rank=2 (now 3)' in err[-1] and 'Traceback' not in str(err)
  assert fh.hashes(workdir) == before


def test_a_bad_config_path_changes_nothing(base, tmp_path, capsys):
  workdir = fh.copy_run(base, tmp_path / 'run')
  before = fh.hashes(workdir)
  rc = train_lib.main(['train', '--config=configs/hypert5_lora_lagre.py:tiny',
                       f'--workdir={workdir}'])
  err = capsys.readouterr().err.strip().splitlines()
  assert rc == 2 and 'configs/hypert5_lora_lagre.py' in err[-1] and len(err) == 1, err
  assert fh.hashes(workdir) == before


def test_a_second_training_is_refused_at_once(base, tmp_path, capsys):
  import socket
  workdir = fh.copy_run(base, tmp_path / 'run')
  holder = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])
  try:
    lock = {'pid': holder.pid, 'host': socket.gethostname(), 'time': 'now'}
    with open(os.path.join(workdir, 'LOCK'), 'w') as f:
      json.dump(lock, f)
    before = fh.hashes(workdir)
    t0 = time.time()
    rc = train_lib.main(['train', *fh.cli_args(**{'train.num_steps': 6}), f'--workdir={workdir}'])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and f'in use by pid {holder.pid}' in err[-1] and time.time() - t0 < 30
    assert fh.hashes(workdir) == before
  finally:
    holder.kill()
    holder.wait()


def test_a_stale_lock_is_taken_over(tmp_path, caplog):
  import socket
  from hyperflax.workdir import Lock
  dead = subprocess.Popen([sys.executable, '-c', 'pass'])
  dead.wait()
  (tmp_path / 'LOCK').write_text(json.dumps({'pid': dead.pid, 'host': socket.gethostname(),
                                             'time': 'then'}))
  lock = Lock(tmp_path)
  with caplog.at_level(logging.WARNING):
    lock.acquire()
  assert any('stale lock' in r.getMessage() for r in caplog.records)
  assert json.loads((tmp_path / 'LOCK').read_text())['pid'] == os.getpid()
  lock.release()
  assert not (tmp_path / 'LOCK').exists()


def test_rerun_of_a_finished_run_exits_0_and_writes_the_evaluation(base, tmp_path):
  workdir = fh.copy_run(base, tmp_path / 'run')
  checkpoints = {k: v for k, v in fh.hashes(workdir).items() if k.startswith('checkpoints')}
  rows = open(os.path.join(workdir, 'metrics.jsonl')).read()
  rc = train_lib.main(['train', *fh.cli_args(**{
      'eval.name': 'synthetic_fewshot', 'eval.options.max_queries': 2,
      'eval.options.heldout_tasks_per_family': 1}), f'--workdir={workdir}'])
  assert rc == 0
  results = json.load(open(os.path.join(workdir, 'results.json')))
  assert results['per_task'] and os.path.exists(os.path.join(workdir, 'predictions.jsonl'))
  assert {k: v for k, v in fh.hashes(workdir).items() if k.startswith('checkpoints')} == \
      checkpoints
  assert open(os.path.join(workdir, 'metrics.jsonl')).read() == rows


@pytest.mark.slow
def test_zero_steps_saves_the_initial_state(tmp_path):
  out = train_lib.train(fh.tiny(**{'train.num_steps': 0}), str(tmp_path / 'zero'))
  assert int(out['state'].step) == 0 and fh.saved_steps(tmp_path / 'zero') == [0]


def test_hypertune_refuses_a_run_whose_tokenizer_is_gone(base, tmp_path, capsys):
  run = json.load(open(os.path.join(base['workdir'], 'run.json')))
  if run['tokenizer']['kind'] != 'sentencepiece':
    pytest.skip('no T5 SentencePiece model in this environment')
  workdir = fh.copy_run(base, tmp_path / 'run')
  examples = tmp_path / 'ex.jsonl'
  examples.write_text('{"input": "a b", "output": "c"}\n')
  moved = base['data'] + '.away'
  os.rename(base['data'], moved)  # the environment without the data folder
  try:
    with fh.env(HYPERFLAX_DATA_DIR=str(tmp_path / 'no-data')):
      rc = hypertune.main(['--checkpoint', workdir, '--examples', str(examples),
                           '--out', str(tmp_path / 'adapter')])
  finally:
    os.rename(moved, base['data'])
  err = capsys.readouterr().err.strip().splitlines()
  assert rc == 2 and 'tokenizer' in err[-1] and run['tokenizer']['path'] in err[-1], err
  assert not (tmp_path / 'adapter').exists()


@pytest.mark.slow
def test_two_real_trainings_on_one_workdir(tmp_path):
  workdir = str(tmp_path / 'run')
  cmd = [sys.executable, '-m', 'hyperflax.train', *fh.cli_args(**{'train.num_steps': 2000}),
         f'--workdir={workdir}']
  first = subprocess.Popen(cmd, cwd=fh.ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  try:
    t0 = time.time()
    while not os.path.exists(os.path.join(workdir, 'LOCK')) and time.time() - t0 < 300:
      time.sleep(0.1)
    second = subprocess.run(cmd, cwd=fh.ROOT, capture_output=True, text=True, timeout=300)
    assert second.returncode == 2 and 'in use by pid' in second.stderr
  finally:
    first.kill()
    first.wait()


def test_sigint_saves_and_the_resume_is_bit_exact(base, tmp_path):
  """Ctrl-C saves the step it is on; resuming ends where an uninterrupted run ends."""
  workdir = str(tmp_path / 'run')
  cmd = [sys.executable, '-m', 'hyperflax.train', *fh.cli_args(**{
      'train.num_steps': 500, 'train.checkpoint_every': 1000}), f'--workdir={workdir}']
  proc = subprocess.Popen(cmd, cwd=fh.ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, env=dict(os.environ, HYPERFLAX_DATA_DIR=base['data']))
  try:
    t0 = time.time()
    metrics = os.path.join(workdir, 'metrics.jsonl')
    while time.time() - t0 < 400 and proc.poll() is None:
      if os.path.exists(metrics) and open(metrics).read().strip():
        break
      time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=200)
  finally:
    if proc.poll() is None:
      proc.kill()
  assert proc.returncode == 130 and 'SIGINT' in out, out[-2000:]
  (saved,) = fh.saved_steps(workdir)  # not on the schedule (every 1000): at the signal
  assert 1 <= saved < 500
  end = max(4, saved + 1)
  with fh.env(HYPERFLAX_DATA_DIR=base['data']):
    resumed = train_lib.train(fh.tiny(**{'train.num_steps': end}), workdir)
    # The shared run is the uninterrupted reference (constant learning rate).
    reference = (load_trainable(base['workdir']) if end == 4 else train_lib.train(
        fh.tiny(**{'train.num_steps': end}), str(tmp_path / 'reference'))['trainable'])
  assert int(resumed['state'].step) == end
  _trees_equal(resumed['trainable'], reference)


def test_resumed_metrics_drop_rows_after_the_checkpoint_and_the_eta_skips_compilation(tmp_path):
  import io
  import re
  from hyperflax.training import reporting
  rows = ''.join(json.dumps({'step': s, 'loss': 1.0}) + '\n' for s in (1, 2, 3, 4))
  (tmp_path / 'metrics.jsonl').write_text(rows)  # 3-4 were logged, then lost (no checkpoint)
  out = io.StringIO()
  reporter = reporting.Reporter(tmp_path, 1000, start_step=2, tensorboard=False, stream=out)
  time.sleep(0.5)  # the first interval holds the compilation
  reporter.write(3, {'loss': 0.5})
  reporter.write(4, {'loss': 0.4})
  reporter.close()
  steps = [json.loads(line)['step'] for line in open(tmp_path / 'metrics.jsonl')]
  assert steps == [1, 2, 3, 4]
  first, second = out.getvalue().splitlines()
  assert first.endswith('ETA ?')
  assert float(re.search(r'ETA (\S+)s', second).group(1)) < 60  # 996 steps at the fast rate


@pytest.mark.parametrize('error', [RuntimeError('boom'), MemoryError(),
                                   ValueError('RESOURCE_EXHAUSTED: out of memory')])
def test_an_unexpected_restore_error_propagates_and_quarantines_nothing(tmp_path, error):
  """Only damage makes a checkpoint unreadable: an error that is not the files'
  fault must not send a good checkpoint to quarantine."""
  ckpt = checkpointing.Checkpointer(tmp_path / 'ck', keep=5, async_save=False)
  ckpt.save(1, {'step': np.array(1, np.int32), 'w': np.arange(6, dtype=np.float32)}, {'step': 1})
  ckpt.close()
  before = fh.hashes(tmp_path)

  def fail(*args, **kwargs):
    raise error
  ckpt = checkpointing.Checkpointer(tmp_path / 'ck', keep=5)
  ckpt.manager.restore = fail
  template = {'step': np.array(0, np.int32), 'w': np.zeros(6, np.float32)}
  with pytest.raises(type(error)):
    ckpt.restore_latest(template, quarantine=True)
  ckpt.close()
  assert fh.hashes(tmp_path) == before and not (tmp_path / 'quarantine').exists()
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(checkpointing.ocp.CheckpointManager, 'restore', fail)
    with pytest.raises(type(error)):
      checkpointing.restore_trainable(tmp_path / 'ck')


def test_the_manifest_is_committed_with_the_step_and_a_missing_one_is_reported(tmp_path, caplog):
  """A run killed right after orbax committed step 2 (no later save/wait/close)
  still leaves step 2 verifiable; a step without a manifest next to older ones
  that have one is read with a warning."""
  ckpt = checkpointing.Checkpointer(tmp_path / 'ck', keep=5, async_save=True)
  for step in (1, 2):
    ckpt.save(step, {'step': np.array(step, np.int32), 'w': np.arange(6, dtype=np.float32)},
              {'step': step})
  ckpt.manager.wait_until_finished()  # orbax only: not our wait(), which would also sum
  assert checkpointing.verify_checksums(tmp_path / 'ck' / '2')
  assert not glob.glob(str(tmp_path / 'ck' / '*tmp*'))
  ckpt.close()
  os.remove(tmp_path / 'ck' / '2' / checkpointing.CHECKSUMS)
  ckpt = checkpointing.Checkpointer(tmp_path / 'ck', keep=5)
  with caplog.at_level(logging.WARNING):
    _, meta = ckpt.restore_latest({'step': np.array(0, np.int32), 'w': np.zeros(6, np.float32)})
  ckpt.close()
  assert meta['step'] == 2
  assert any('has no CHECKSUMS.json while older ones do' in r.getMessage()
             for r in caplog.records)
