r"""Serving throughput of a batch that mixes adapters vs. one adapter vs. zero-shot.

  python bench/mixed_adapters.py [--quick] [--configs tiny,small] [--reps N]

For LoRA (r=8 on every attention site's query/value), prefix (P=32) and HART
(P=32 prefixes + fusion-in-decoder keys/values of F demonstration tokens,
adapter format 2) on T5 v1.1 tiny and small (random weights, no downloads):
`serving.Server` holds 32 registered adapters of the kind, and one scoring
call (rank classification's teacher-forced log-likelihood, batch 32) runs
  mixed    every row with a different adapter,
  single   all 32 rows with the same adapter,
  zero     no adapter,
through the server's own batching (`Server._steps`: grouping, stacking the
rows' adapters, padding) and its compiled `target_log_likelihood`, i.e. the
serving path minus tokenisation. Repetitions interleave the three variants
of all kinds (order reversed every round); medians; the figure to read is
mixed ÷ single throughput (1.0 = mixing is free).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from hyperflax import adapters as adapters_lib  # noqa: E402
from hyperflax import serving  # noqa: E402
from hyperflax.hyper.testing import random_t5_params  # noqa: E402
from hyperflax.model import peft as peft_lib, preset  # noqa: E402

ROWS, LORA_RANK, PREFIX_LEN = 32, 8, 32
# name -> (query tokens, target tokens, fusion tokens: K=16 demonstrations)
SETUPS = {'tiny': (16, 8, 192), 'small': (64, 16, 512)}


def random_adapter(config, kind, seed, fusion_len, params, sha256):
  """One task's adapter with random generated values (batch-1 generator output form)."""
  rng = np.random.default_rng(seed)
  shapes = peft_lib.expected_shapes(config, 1, PREFIX_LEN if kind != 'lora' else None,
                                    LORA_RANK if kind == 'lora' else None)
  flat = {k: (rng.standard_normal(s) * 0.05).astype(np.float32) for k, s in shapes.items()}
  aux = {}
  if kind == 'hart':
    aux = {'fusion_states': rng.standard_normal((1, fusion_len, config.d_model)).astype(
        np.float32), 'fusion_mask': np.ones((1, fusion_len), bool)}
  manifest = {'kind': kind, 'lora_rank': LORA_RANK if kind == 'lora' else None,
              'prefix_len': PREFIX_LEN if kind != 'lora' else None,
              'downstream': adapters_lib.downstream_identity(config, sha256, 'bench')}
  return adapters_lib.from_generated(peft_lib.unflatten(flat), aux, manifest,
                                     (config, params) if kind == 'hart' else None)


def score_call(server, names, enc, dec, tgt, weights):
  """One batch through the server's batching and compiled scoring step."""
  out = None
  for rows, padded, peft, states, mask in server._steps(names):  # pylint: disable=protected-access
    out = serving.target_log_likelihood(server.config, server.params, enc[padded], dec[padded],
                                        tgt[padded], weights[padded], peft, states, mask)
  return jax.block_until_ready(out)


def run(name, kinds, reps):
  query_len, target_len, fusion_len = SETUPS[name]
  config = preset(name, dropout_rate=0.0)
  t0 = time.perf_counter()
  params = random_t5_params(config)
  server = serving.Server(config=config, params=params, lengths=(query_len, target_len),
                          batch_size=ROWS)
  rng = np.random.default_rng(0)
  enc = rng.integers(2, config.vocab_size, (ROWS, query_len)).astype(np.int32)
  tgt = rng.integers(2, config.vocab_size, (ROWS, target_len)).astype(np.int32)
  dec = np.concatenate([np.zeros((ROWS, 1), np.int32), tgt[:, :-1]], axis=1)
  weights = np.ones(tgt.shape, np.float32)
  calls = {('zero-shot', 'zero'): [None] * ROWS}
  for kind in kinds:
    for i in range(ROWS):
      server.add_adapter(f'{kind}{i}', random_adapter(config, kind, i, fusion_len, server.params,
                                                      server.sha256))
    calls[(kind, 'mixed')] = [f'{kind}{i}' for i in range(ROWS)]
    calls[(kind, 'single')] = [f'{kind}0'] * ROWS
  fns = {key: (lambda names=names: score_call(server, names, enc, dec, tgt, weights))
         for key, names in calls.items()}
  for fn in fns.values():
    fn()  # compile + warm
  print(f'\n== {name}: d_model {config.d_model}, {config.num_layers}+{config.num_decoder_layers} '
        f'layers, batch {ROWS}, query {query_len}, target {target_len}, HART fusion '
        f'{fusion_len} tokens (setup + compile {time.perf_counter() - t0:.0f}s)', flush=True)
  times = {k: [] for k in fns}
  order = list(fns)
  for r in range(reps):
    for key in (order if r % 2 == 0 else order[::-1]):
      start = time.perf_counter()
      fns[key]()
      times[key].append(time.perf_counter() - start)
  med = {k: statistics.median(v) for k, v in times.items()}
  zero = med[('zero-shot', 'zero')]
  print('| kind | mixed ms/batch | single ms/batch | mixed ÷ single throughput | '
        'mixed ÷ single, median of per-round ratios | single vs zero-shot throughput |')
  print('|---|---|---|---|---|---|')
  result = {}
  for kind in kinds:
    m, s = med[(kind, 'mixed')], med[(kind, 'single')]
    per_round = statistics.median(b / a for a, b in zip(times[(kind, 'mixed')],
                                                        times[(kind, 'single')]))
    print(f'| {kind} | {m * 1e3:.1f} | {s * 1e3:.1f} | {s / m:.2f}x | {per_round:.2f}x | '
          f'{zero / s:.2f}x |')
    result[kind] = {'mixed_s': m, 'single_s': s, 'mixed_over_single': s / m,
                    'per_round': per_round}
  print(f'zero-shot: {zero * 1e3:.1f} ms/batch', flush=True)
  return result


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--quick', action='store_true', help='tiny only, 5 rounds')
  parser.add_argument('--configs', default='tiny,small')
  parser.add_argument('--kinds', default='lora,prefix,hart')
  parser.add_argument('--reps', type=int, default=None, help='rounds')
  args = parser.parse_args(argv)
  print(f'jax {jax.__version__}; usable CPUs {len(os.sched_getaffinity(0))}; load average '
        f'{os.getloadavg()[0]:.1f}')
  configs = ['tiny'] if args.quick else args.configs.split(',')
  for name in configs:
    reps = args.reps or (5 if args.quick else 15 if name == 'tiny' else 7)
    run(name, args.kinds.split(','), reps)
    jax.clear_caches()
  print(f'load average at the end {os.getloadavg()[0]:.1f}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
