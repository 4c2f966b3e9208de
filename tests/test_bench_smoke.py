"""The training benchmarks start, and their sanity check holds on a tiny T5 (no timing)."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'bench'))


@pytest.mark.parametrize('script', ['train_throughput.py', 'fewshot_step.py'])
def test_help(script):
  out = subprocess.run([sys.executable, os.path.join(ROOT, 'bench', script), '--help'],
                       capture_output=True, text=True, timeout=60)
  assert out.returncode == 0, out.stderr
  assert '--quick' in out.stdout


def test_step0_loss_matches_torch():
  """One random init, converted through hf.py: both training steps see the same function."""
  from hf_fixtures import TINY
  from hyperflax.model import T5Config
  import train_throughput
  # One layer per stack: compiling the train step dominates this test's time.
  cfg = T5Config(**dict(TINY, num_layers=1, num_decoder_layers=1), dropout_rate=0.0)
  ours, ref = train_throughput.step0_losses(cfg, batch=2, in_len=12, tgt_len=6)
  assert abs(ours - ref) <= 1e-4, (ours, ref)
  assert ours > 1.0  # a real cross-entropy over 320 tokens, not a degenerate zero
