"""Training metrics: JSONL, TensorBoard, a progress line, and a PNG of the loss curves."""

from __future__ import annotations

import json
import os
import sys
import time


class Reporter:
  """Writes metrics to `workdir/metrics.jsonl` and `workdir/tb/`, prints progress."""

  def __init__(self, workdir: str, total_steps: int, start_step: int = 0,
               tensorboard: bool = True, stream=sys.stdout):
    self.workdir, self.total, self.stream = workdir, total_steps, stream
    os.makedirs(workdir, exist_ok=True)
    self.jsonl = open(os.path.join(workdir, 'metrics.jsonl'), 'a')
    self.tb = None
    if tensorboard:
      from tensorboardX import SummaryWriter
      self.tb = SummaryWriter(os.path.join(workdir, 'tb'))
    self.t0, self.step0, self.tokens = time.time(), start_step, 0.0

  def write(self, step: int, metrics: dict[str, float], tokens: float = 0.0) -> None:
    self.tokens += tokens
    elapsed = max(time.time() - self.t0, 1e-9)
    done = step - self.step0
    rate = done / elapsed
    row = {'step': step, **{k: float(v) for k, v in metrics.items()},
           'steps_per_sec': rate, 'tokens_per_sec': self.tokens / elapsed}
    self.jsonl.write(json.dumps(row) + '\n')
    self.jsonl.flush()
    if self.tb is not None:
      for k, v in row.items():
        if k != 'step':
          self.tb.add_scalar(k, v, step)
    eta = (self.total - step) / rate if rate > 0 else float('nan')
    shown = ' '.join(f'{k}={float(v):.4g}' for k, v in metrics.items())
    bar = '#' * int(20 * step / max(self.total, 1))
    print(f'[{bar:<20}] step {step}/{self.total} {shown} | {rate:.2f} steps/s '
          f'{self.tokens / elapsed:.0f} tok/s ETA {eta:.0f}s', file=self.stream, flush=True)

  def close(self) -> None:
    self.jsonl.close()
    if self.tb is not None:
      self.tb.close()


def read_metrics(workdir: str) -> list[dict]:
  path = os.path.join(workdir, 'metrics.jsonl')
  if not os.path.exists(path):
    return []
  rows = [json.loads(line) for line in open(path) if line.strip()]
  # A resumed run re-logs steps after its checkpoint: keep the last record per step.
  by_step = {r['step']: r for r in rows}
  return [by_step[s] for s in sorted(by_step)]


def plot_losses(workdir: str, out: str | None = None, keys=('loss', 'eval_loss')) -> str | None:
  rows = read_metrics(workdir)
  if not rows:
    return None
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(6, 4))
  for key in keys:
    pts = [(r['step'], r[key]) for r in rows if key in r]
    if pts:
      ax.plot(*zip(*pts), label=key)
  ax.set_xlabel('step')
  ax.set_ylabel('loss')
  ax.set_title(os.path.basename(os.path.normpath(workdir)))
  ax.legend()
  out = out or os.path.join(workdir, 'loss.png')
  fig.tight_layout()
  fig.savefig(out, dpi=100)
  plt.close(fig)
  return out
