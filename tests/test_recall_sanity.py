"""Our T5, fused cross-entropy and AdamW learn in-context binding when it is densely supervised.

`bench/recall_sanity.py` (RESULTS, issue 13): with the query keys in the decoder
and eight lookups per row, the demo-sized T5 goes from the 'any value in the
row' plateau to exact recall of fresh random maps within ~1,000 steps. A bug in
attention, relative positions, the loss or its gradient would keep it at the
plateau, which a forward parity test cannot see.
"""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'bench'))

import recall_sanity  # noqa: E402


@pytest.mark.slow
def test_dense_decoder_queries_learn_binding():
  res = recall_sanity.run(steps=1500, pairs=8, n_keys=40, n_values=12, batch=32, lr=1e-3, seed=0,
                          layers=2, d_model=128, eval_every=500, log=lambda s: None, queries=8,
                          decoder_queries=True)
  first, last = res['curve'][0], res['curve'][-1]
  assert first['trained_keys'] < 40.0, first  # step 500: still at the plateau (<= 8 values)
  assert last['trained_keys'] >= 90.0, last   # chance 8.3; a value present in the row: ~17
  assert last['loss'] < 0.2, last


def test_rows_hold_the_map_they_ask_about():
  import numpy as np
  rng = np.random.default_rng(0)
  keys, values = np.arange(3, 43), np.arange(107, 119)
  enc, ans = recall_sanity.make_rows(rng, 64, 4, keys, values, queries=3, min_pairs=2)
  for row, a in zip(enc, ans):
    sep = int(np.where(row == recall_sanity.SEP)[0][0])
    pairs = dict(zip(row[0:sep:2].tolist(), row[1:sep:2].tolist()))
    assert 2 <= len(pairs) <= 4 and set(pairs) <= set(keys.tolist())
    assert [pairs[q] for q in row[sep + 1:sep + 4].tolist()] == a.tolist()
    assert not row[sep + 4:].any()


def test_suite_like_rows_repeat_keys_with_one_value_and_a_filler_between():
  import numpy as np
  rng = np.random.default_rng(1)
  keys, values, fillers = np.arange(3, 43), np.arange(107, 119), np.arange(119, 122)
  enc, ans = recall_sanity.make_rows(rng, 32, 4, keys, values, queries=2, repeats=4,
                                     filler_ids=fillers, row_values=3)
  for row, a in zip(enc, ans):
    sep = int(np.where(row == recall_sanity.SEP)[0][0])
    assert sep == 4 * 4 * 3  # 4 keys x 4 statements x (key, filler, value)
    items = row[:sep].reshape(-1, 3)
    assert set(items[:, 1].tolist()) <= set(fillers.tolist())
    stated = {}
    for k, _, v in items.tolist():
      assert stated.setdefault(k, v) == v  # a key always has the same value
    assert len(stated) == 4 and len(set(stated.values())) <= 3
    assert all(list(items[:, 0]).count(k) == 4 for k in stated)
    assert [stated[q] for q in row[sep + 1:sep + 3].tolist()] == a.tolist()
