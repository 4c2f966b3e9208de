"""The training benchmarks start, and their sanity check holds on a tiny T5 (no timing)."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'bench'))


@pytest.mark.parametrize('script', ['train_throughput.py', 'fewshot_step.py',
                                    'hypertuning_cost.py'])
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


def test_hypertuning_cost_break_even_on_tiny():
  """Lowered-HLO FLOPs on tiny: adapters cost ~zero-shot, few-shot grows with K, and N* is
  generation / (few-shot - adapter)."""
  import hypertuning_cost as hc
  import serving_cost as sc
  from hyperflax.model import preset
  config, ks = preset('tiny', dropout_rate=0.0), (1, 16)
  per_query = hc.lowered_flops(config, hc.query_paths(config, 1, 16, ks, 12), target_len=8)
  hyper_fn = sc._hyper_fn(config, 'lora')
  generation = {kind: {k: hc.generation_cost(hyper_fn, 12 * k, reps=0)[0] for k in ks}
                for kind in hc.ADAPTERS}
  rows = hc.summarise(per_query, generation, ks)
  for r in rows:
    assert 1.0 <= r['lora_x_zero_shot'] < 1.05 and 1.0 <= r['prefix_x_zero_shot'] < 1.05
    assert r['lora_break_even'] == pytest.approx(
        r['lora_generation'] / (r['fewshot'] - r['lora']))
  assert rows[1]['fewshot'] > 2 * rows[0]['fewshot'] > 2 * rows[0]['zero_shot']
  assert rows[1]['lora_generation'] > rows[0]['lora_generation'] > 0
  assert hc.break_even(1.0, 2.0, 2.0) == float('inf') and hc.break_even(None, 2, 1) is None


def test_accelerator_step_tiny_runs_end_to_end(tmp_path):
  """bench/accelerator_step.py --tiny: the XL benchmark's code path on :tiny configs (CPU).
  (hypert5_lora_xl:tiny is left to the full command: same code, another compile.)"""
  import json
  import accelerator_step
  out = tmp_path / 'acc.json'
  assert accelerator_step.main(['--tiny', '--only', 'hart_xl,score', '--steps', '1',
                                '--score-rows', '2', '--out', str(out)]) == 0
  rows = {r['name']: r for r in json.loads(out.read_text())}
  assert set(rows) == {'hart_xl:tiny', 'tiny scoring, zero-shot',
                       'tiny scoring, HART adapter (fusion K/V)'}
  train = rows['hart_xl:tiny']
  assert train['scan_layers'] and train['remat'] and train['step_s'] > 0
  assert 1.0 < train['loss'] < 20.0  # a real cross-entropy, no NaN
  # XLA also counts remat's recomputation and elementwise work: above the analytic count,
  # but the same order.
  assert 0.3 < train['analytic_flops'] / train['xla_flops'] < 1.0
  for name in ('tiny scoring, zero-shot', 'tiny scoring, HART adapter (fusion K/V)'):
    assert 0.8 < rows[name]['analytic_flops'] / rows[name]['xla_flops'] < 1.1, rows[name]
  assert rows['tiny scoring, HART adapter (fusion K/V)']['analytic_flops'] > rows[
      'tiny scoring, zero-shot']['analytic_flops']
