"""Throughput of the few-shot data pipeline (batches/s, single process).

  python bench/data_throughput.py [--quick] [--data_dir ../shared/data]

Configurations: 'tiny' = batch 8 at the synthetic suite's lengths
(192/16/8), 'large' = batch 32 at 1024/384/128 (paper appendix A). Load time
(reading, filtering, building tasks) is reported separately from the batch
rate, which is measured from step 0 (a cold tokenisation cache, i.e. the
slowest part of an epoch).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hyperflax.data import registry  # noqa: E402
from hyperflax.data.examples import Lengths  # noqa: E402
from hyperflax.data.synthetic import LENGTHS  # noqa: E402

LARGE = Lengths(1024, 384, 128)
CONFIGS = [  # (label, dataset, mode, batch size, lengths)
    ('tiny', 'synthetic_fewshot', 'hyper', 8, LENGTHS),
    ('large', 'synthetic_fewshot', 'hyper', 32, LARGE),
    ('tiny', 'metaicl_hr_to_lr', 'hyper', 8, LENGTHS),
    ('large', 'metaicl_hr_to_lr', 'hyper', 32, LARGE),
    ('large', 'metaicl_hr_to_lr', 'concat', 32, LARGE),
    ('large', 'p3_t0_train', 'hyper', 32, LARGE),
    ('large', 'sni_def_2pos', 'hyper', 32, LARGE),
    ('large', 'caclm_c4', 'hyper', 32, LARGE),
]


def measure(name, mode, batch_size, lengths, num_batches, data_dir):
  t0 = time.perf_counter()
  kw = {'use_tfds': False} if name.startswith('caclm') else {}
  stream = registry.get_dataset(name, batch_size=batch_size, seed=0,
                                lengths=lengths, mode=mode, data_dir=data_dir,
                                **kw)
  it = iter(stream)
  next(it)  # the first batch also builds lazy state
  load = time.perf_counter() - t0
  t0 = time.perf_counter()
  for _ in range(num_batches):
    next(it)
  dt = time.perf_counter() - t0
  return load, num_batches / dt


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  ap.add_argument('--quick', action='store_true', help='fewer batches (<2 min)')
  ap.add_argument('--data_dir', default=None)
  ap.add_argument('--only', default=None, help='substring of dataset names')
  args = ap.parse_args(argv)
  logging.basicConfig(level=logging.ERROR)
  n_tiny, n_large = (50, 15) if args.quick else (400, 100)
  print(f'{"config":6} {"dataset":22} {"mode":7} {"batch":>5} {"lengths":>14} '
        f'{"load s":>7} {"batches/s":>10} {"rows/s":>8}')
  for label, name, mode, bs, lengths in CONFIGS:
    if args.only and args.only not in name:
      continue
    n = n_tiny if label == 'tiny' else n_large
    try:
      load, rate = measure(name, mode, bs, lengths, n, args.data_dir)
    except FileNotFoundError as e:
      print(f'{label:6} {name:22} skipped: {e}')
      continue
    L = f'{lengths.hyper}/{lengths.encoder}/{lengths.decoder}'
    print(f'{label:6} {name:22} {mode:7} {bs:5d} {L:>14} {load:7.2f} '
          f'{rate:10.1f} {rate * bs:8.0f}', flush=True)


if __name__ == '__main__':
  main()
