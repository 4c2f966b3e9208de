"""Training metrics: JSONL, TensorBoard, a progress line, and a PNG of the loss curves.

All files go through `hyperflax.workdir.as_path`, so a `gs://` workdir works:
object stores cannot append, so there `metrics.jsonl` is rewritten whole at
each log step (it is small), and TensorBoard writes to a local temporary
directory copied into `workdir/tb/` as it grows.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import sys
import tempfile
import time

from hyperflax.workdir import as_path, is_url, write_atomic

log = logging.getLogger('hyperflax.reporting')


def _read_rows(path) -> list[dict]:
  path = as_path(path)
  if not path.exists():
    return []
  rows = []
  for line in path.read_text().splitlines():
    try:
      rows.append(json.loads(line))
    except ValueError:  # a line cut short by a crash mid-write
      continue
  return [r for r in rows if isinstance(r, dict) and 'step' in r]


class Reporter:
  """Writes metrics to `workdir/metrics.jsonl` and `workdir/tb/`, prints progress.

  Rows after `start_step` (logged by a run that was interrupted before its next
  checkpoint, and about to be trained again) are dropped when it opens.
  """

  def __init__(self, workdir, total_steps: int, start_step: int = 0,
               tensorboard: bool = True, stream=sys.stdout):
    self.workdir, self.total, self.stream = as_path(workdir), total_steps, stream
    self.workdir.mkdir(parents=True, exist_ok=True)
    self.path = self.workdir / 'metrics.jsonl'
    self.remote = is_url(self.workdir)
    self.rows = [r for r in _read_rows(self.path) if r['step'] <= start_step]
    self._flush(rewrite=True)
    self.jsonl = None if self.remote else open(self.path, 'a')
    self.tb = self._tb_local = None
    if tensorboard:
      from tensorboardX import SummaryWriter
      target = self.workdir / 'tb'
      if self.remote:
        self._tb_local = tempfile.mkdtemp(prefix='hyperflax-tb-')
        target = self._tb_local
      self.tb = SummaryWriter(os.fspath(target))
    else:
      log.info('TensorBoard is off (config.train.tensorboard=False); metrics go to %s',
               self.path)
    self.step0 = start_step
    # The ETA excludes the first logged interval, which holds the compilation.
    self._first, self._last = None, (time.time(), start_step)

  def _flush(self, rewrite: bool = False) -> None:
    if rewrite or self.remote:
      write_atomic(self.path, ''.join(json.dumps(r) + '\n' for r in self.rows))

  def _sync_tb(self) -> None:
    if self._tb_local:
      self.tb.flush()
      for name in os.listdir(self._tb_local):
        (self.workdir / 'tb').mkdir(parents=True, exist_ok=True)
        with open(os.path.join(self._tb_local, name), 'rb') as f:
          (self.workdir / 'tb' / name).write_bytes(f.read())

  def write(self, step: int, metrics: dict[str, float], tokens: float = 0.0) -> None:
    now = time.time()
    interval = max(now - self._last[0], 1e-9)
    rate = (step - self._last[1]) / interval
    tok_rate = tokens / interval
    if self._first is None:
      self._first = (now, step)
      eta = float('nan')
    else:
      avg = (step - self._first[1]) / max(now - self._first[0], 1e-9)
      eta = (self.total - step) / avg if avg > 0 else float('nan')
    self._last = (now, step)
    row = {'step': step, **{k: float(v) for k, v in metrics.items()},
           'steps_per_sec': rate, 'tokens_per_sec': tok_rate}
    self.rows.append(row)
    if self.jsonl is not None:
      self.jsonl.write(json.dumps(row) + '\n')
      self.jsonl.flush()
    else:
      self._flush()
    if self.tb is not None:
      for k, v in row.items():
        if k != 'step':
          self.tb.add_scalar(k, v, step)
      self._sync_tb()
    shown = ' '.join(f'{k}={float(v):.4g}' for k, v in metrics.items())
    bar = '#' * int(20 * step / max(self.total, 1))
    eta_text = 'ETA ?' if eta != eta else f'ETA {eta:.0f}s'
    print(f'[{bar:<20}] step {step}/{self.total} {shown} | {rate:.2f} steps/s '
          f'{tok_rate:.0f} tok/s {eta_text}', file=self.stream, flush=True)

  def close(self) -> None:
    if self.jsonl is not None:
      self.jsonl.close()
    if self.tb is not None:
      self.tb.close()
      self._sync_tb()
      if self._tb_local:
        shutil.rmtree(self._tb_local, ignore_errors=True)


def read_metrics(workdir) -> list[dict]:
  rows = _read_rows(as_path(workdir) / 'metrics.jsonl')
  # A run resumed by an older version re-logged steps: keep the last record per step.
  by_step = {r['step']: r for r in rows}
  return [by_step[s] for s in sorted(by_step)]


def _smooth(values, weight: float = 0.9) -> list[float]:
  """TensorBoard's smoothing: a debiased exponential moving average."""
  out, avg = [], 0.0
  for i, v in enumerate(values, 1):
    avg = weight * avg + (1 - weight) * v
    out.append(avg / (1 - weight ** i))
  return out


def plot_losses(workdir, out=None, keys=('loss', 'eval_loss')) -> str | None:
  rows = read_metrics(workdir)
  if not rows:
    return None
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(6, 4))
  for key in keys:
    pts = [(r['step'], r[key]) for r in rows if key in r]
    if not pts:
      continue
    steps, values = zip(*pts)
    if len(pts) < 20:  # few points (a short run, a large log_every): show each one
      ax.plot(steps, values, marker='o', label=key)
      continue
    line, = ax.plot(steps, values, alpha=0.3)
    ax.plot(steps, _smooth(values), color=line.get_color(), label=f'{key} (EMA)')
  ax.set_xlabel('step')
  ax.set_ylabel('loss')
  ax.set_title(as_path(workdir).name)
  ax.legend()
  out = as_path(out) if out else as_path(workdir) / 'loss.png'
  fig.tight_layout()
  buf = io.BytesIO()
  fig.savefig(buf, format='png', dpi=100)
  plt.close(fig)
  write_atomic(out, buf.getvalue())
  return os.fspath(out)
