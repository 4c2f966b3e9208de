"""Hypermodel training step against the T5-MTF-Few-shot step, on the demo config.

  python bench/fewshot_step.py [--quick] [--reps N]

Contestants (configs from `hyperflax.demo.stage_config`: T5 v1.1 with d_model
128, 2+2 layers, the real 32128-token vocabulary, batch 16, K=16
demonstrations, fp32, dropout 0), each a jitted `make_train_step` with the
state donated:
  T5-MTF-Few-shot  the T5 is trained reading demonstrations + query
                   concatenated (encoder length 192 + 16 = 208);
  HyperT5-Prefix   a T5-initialised generator reads the demonstrations (192)
                   and writes prefixes into the frozen T5, which reads the
                   query alone (16); only the generator is trained;
  HART             the same with autoregressive prefixes, fusion-in-decoder
                   and the consistency loss (alpha 1).
All three read the same examples (one seed), so the same real tokens.
`--compact_vocab` instead times T5-MTF-Few-shot in issue 13's format (word-level
vocabulary, query and up to 8 lookups in the decoder, lengths 136/12/56) with
the word ids in the 32,128-row space ('words') against 'words_compact' (5,229
ids; model.vocab_size 5,248): the same tokens, renumbered. Tokens/s
counts non-padding input tokens (hypermodel + downstream) and targets, as
`hyperflax.train` logs them. Repetitions are interleaved: read the ratios.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from train_throughput import interleave, paired_ratio, xla_flops  # noqa: E402

CONTESTANTS = (('T5-MTF-Few-shot', 't5_mtf_fewshot', 'prefix'),
               ('HyperT5-Prefix', 'hypermodel', 'prefix'),
               ('HART', 'hypermodel', 'hart'))


QD_FORMAT = {'data.lengths': (136, 12, 56), 'eval.also_generate': False,
             'data.options': {'train_tasks_per_family': 2000, 'pool_size': 32, 'num_labels': 12,
                              'query_in_decoder': True, 'decoder_recall': 8}}
VOCAB_CONTESTANTS = (
    ('words (32,128 rows)', 't5_mtf_fewshot', 'prefix', {**QD_FORMAT, 'data.vocab_path': 'words'}),
    ('words_compact', 't5_mtf_fewshot', 'prefix',
     {**QD_FORMAT, 'data.vocab_path': 'words_compact', 'model.overrides.vocab_size': 5248}))


def build(method: str, kind: str, seed: int = 0, overrides=None):
  """(step callable, host batch, trainable count, frozen count, XLA FLOPs)."""
  from hyperflax.demo import stage_config
  from hyperflax.train import train_stream
  from hyperflax.training.experiment import Experiment
  from hyperflax.training.optim import make_optimizer
  from hyperflax.training.step import create_state, make_train_step
  config = stage_config(method, kind, steps=1000, seed=seed, **(overrides or {}))
  exp = Experiment.from_config(config)
  host = next(train_stream(config, exp, 0))
  batch = jax.tree.map(jnp.asarray, host)
  trainable, frozen = exp.init(jax.random.PRNGKey(seed))
  opt = make_optimizer(config, int(config.train.num_steps))
  state = create_state(exp, opt, trainable, jax.random.PRNGKey(seed + 1), batch)
  count = lambda t: sum(int(x.size) for x in jax.tree.leaves(t))
  n_train, n_frozen = count(trainable), count(frozen)
  step = jax.jit(make_train_step(exp, opt), donate_argnums=0).lower(state, frozen, batch).compile()

  def run() -> float:
    nonlocal state
    state, metrics = step(state, frozen, batch)
    return float(metrics['loss'])  # blocks until the step is done

  return run, host, n_train, n_frozen, xla_flops(step)


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  ap.add_argument('--quick', action='store_true', help='fewer repetitions (< 2 min)')
  ap.add_argument('--reps', type=int, default=None, help='timed repetitions per contestant')
  ap.add_argument('--compact_vocab', action='store_true',
                  help="T5-MTF-Few-shot with 'words' against 'words_compact' ids")
  args = ap.parse_args(argv)
  warnings.filterwarnings('ignore')
  reps = args.reps or (5 if args.quick else 20)
  print(f'jax {jax.__version__} ({jax.devices()[0].platform}), {os.cpu_count()} CPUs, '
        f'load average {os.getloadavg()[0]:.1f}')
  t0 = time.perf_counter()
  contestants = VOCAB_CONTESTANTS if args.compact_vocab else [c + ({},) for c in CONTESTANTS]
  built = {label: build(method, kind, overrides=o) for label, method, kind, o in contestants}
  print(f'build + compile {time.perf_counter() - t0:.0f}s; demo config, batch 16, K=16, fp32')
  times = interleave({label: b[0] for label, b in built.items()}, reps, warmup=2)
  base = contestants[0][0]
  print(f'{"method":16} {"trainable":>10} {"frozen":>10} {"inputs":>10} {"tokens":>7} '
        f'{"GFLOP":>6} {"ms/step":>8} {"tokens/s":>9} {"GFLOP/s":>8} {"time vs " + base:>24}')
  for label, (_, host, n_train, n_frozen, flops) in built.items():
    med = statistics.median(times[label])
    tokens = sum(int(np.count_nonzero(host[k])) for k in
                 ('hyper_inputs', 'encoder_inputs', 'targets') if k in host)
    shapes = '+'.join(str(host[k].shape[1]) for k in ('hyper_inputs', 'encoder_inputs')
                      if k in host)
    ratio = paired_ratio(times[label], times[base])
    print(f'{label:16} {n_train / 1e6:9.2f}M {n_frozen / 1e6:9.2f}M {shapes:>10} {tokens:7d} '
          f'{flops / 1e9:6.2f} {med * 1e3:8.1f} {tokens / med:9.0f} {flops / med / 1e9:8.1f} '
          f'{ratio:23.2f}x')
  print(f'(n={reps} interleaved reps; medians; "time vs" is the median of per-rep ratios; '
        f'load average at the end {os.getloadavg()[0]:.1f})')


if __name__ == '__main__':
  main()
