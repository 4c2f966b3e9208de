"""`bench/step_profile.py` sums a trace's thunk durations per step and per kind."""

import gzip
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'bench'))

import step_profile  # noqa: E402


def test_thunk_times_per_step_and_by_kind(tmp_path):
  events = [{'ph': 'X', 'name': 'ynn_fusion', 'dur': 3000},
            {'ph': 'X', 'name': 'ynn_fusion.12', 'dur': 1000},
            {'ph': 'X', 'name': 'while.18', 'dur': 2000},
            {'ph': 'X', 'name': 'ThunkExecutor::Execute', 'dur': 99000},  # the whole step
            {'ph': 'X', 'name': '$train_throughput.py:144 ours', 'dur': 99000},
            {'ph': 'i', 'name': 'ynn_fusion.3', 'dur': 5000}]  # not a duration event
  (tmp_path / 'plugins' / 'profile').mkdir(parents=True)
  with gzip.open(tmp_path / 'plugins' / 'profile' / 'host.trace.json.gz', 'wt') as f:
    json.dump({'traceEvents': events}, f)
  times = step_profile.thunk_times(str(tmp_path), steps=2)
  assert times == {'ynn_fusion': 1.5, 'ynn_fusion.12': 0.5, 'while.18': 1.0}
  assert step_profile.by_kind(times) == {'ynn_fusion': (2.0, 2), 'while': (1.0, 1)}
  assert list(step_profile.by_kind(times)) == ['ynn_fusion', 'while']
