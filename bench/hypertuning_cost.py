r"""Hypertuning cost vs. K: when does a generated adapter pay for itself?

  python bench/hypertuning_cost.py --quick      # < 2 min on a 2-core CPU; LoRA generation only
  python bench/hypertuning_cost.py --out DIR    # + HyperT5-Prefix generation, more repetitions

For K = 1, 4, 16, 32 demonstrations, per query on the same frozen T5 v1.1
(random weights; one query = one teacher-forced forward over the target, as in
rank classification; the measurement code is `serving_cost.py`'s):
  zero-shot   the T5 reads the query alone;
  adapter     the query alone with generated LoRA (r=8) or prefixes (P=32);
              its per-query cost does not depend on K;
  few-shot    K demonstrations + the query in context.
and once per task, the HyperT5-LoRA / HyperT5-Prefix pass that writes the
adapter from the K demonstrations (batch 1). Break-even:
  N* = generation FLOPs / (few-shot FLOPs per query - adapter FLOPs per query),
the number of queries after which hypertuning has cost less than in-context
learning in total. Against zero-shot the adapter only ever costs more: the
generation pass once plus (adapter - zero-shot) per query.

Demonstration tokens scale with K: Large 64 per demonstration (K=16 -> the
papers' 1024-token hypermodel input), 128-token query, 16-token target; tiny
12 per demonstration (the synthetic suite's), 16-token query, 8-token target.
Large FLOPs are XLA cost analysis of the *lowered* HLO on abstract shapes (no
weights, no compilation); tiny is compiled and also timed (median over
round-robin repetitions, batch 32 per query path, batch 1 for generation).
Writes hypertuning_cost.json and hypertuning_cost.png to --out.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import flax.linen as nn
import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import serving_cost as sc  # noqa: E402

from hyperflax.model import abstract_params, preset  # noqa: E402

KS = (1, 4, 16, 32)
ZERO = '(c) zero-shot'
ADAPTERS = {'lora': '(a) adapter: LoRA r=8', 'prefix': '(a) adapter: prefix P=32'}
# name -> (tokens per demonstration, query tokens, target tokens, latency batch)
SETUPS = {'tiny': (12, 16, 8, 32), 'large': (64, 128, 16, 1)}


def fewshot(k):
  return f'(b) few-shot K={k} in context'


def hart(k):
  return f'(a) adapter: HART prefix + fusion K/V, K={k}'


def query_paths(config, batch, query_len, ks, tokens_per_demo):
  """serving_cost's zero-shot and LoRA / prefix paths, plus few-shot at every K and
  HART's adapter (prefixes + stored fusion keys/values of K demonstrations)."""
  base = sc._paths(config, batch, 0, query_len)
  paths = {p: base[p] for p in (ZERO, *ADAPTERS.values())}
  paths.update({fewshot(k): (k * tokens_per_demo + query_len, None, None) for k in ks})
  prefix = base[ADAPTERS['prefix']][1]
  paths.update({hart(k): (query_len, {**prefix, **sc.fusion_kv_shapes(
      config, batch, k * tokens_per_demo)}, k * tokens_per_demo) for k in ks})
  return paths


def lowered_flops(config, paths, target_len, batch=1):
  """path -> FLOPs per query, from the lowered HLO (no compilation)."""
  score = jax.jit(sc._score_fn(config))
  params = nn.unbox(abstract_params(config))
  return {p: sc._flops(score.lower(params, *sc._abstract_inputs(
      config, batch, enc, target_len, peft, fusion))) / batch
          for p, (enc, peft, fusion) in paths.items()}


def generation_cost(hyper_fn, demo_len, reps, seed=0):
  """(FLOPs, median seconds) of one hypermodel pass (batch 1) on random weights;
  `hyper_fn` is `serving_cost._hyper_fn(...)`; reps=0 counts the lowered HLO only."""
  fn, params = hyper_fn
  abstract = (params, sc.S((1, demo_len), np.int32))
  lowered = fn.lower(*abstract)
  if not reps:
    return sc._flops(lowered), None
  compiled = lowered.compile()
  args = sc._concrete(abstract, np.random.default_rng(seed))
  jax.block_until_ready(compiled(*args))  # warm-up
  times = []
  for _ in range(reps):
    start = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - start)
  return sc._flops(compiled), float(np.median(times))


def break_even(generation, fewshot_cost, adapter_cost):
  if generation is None:
    return None
  saved = fewshot_cost - adapter_cost
  return generation / saved if saved > 0 else math.inf


def _fmt(x, scale=1.0, digits=3):
  return 'n/a' if x is None else f'{x * scale:.{digits}f}'


def summarise(per_query, generation, ks):
  """Rows per K: per-query cost of every path, generation cost, break-even N*."""
  zero = per_query[ZERO]
  rows = []
  for k in ks:
    row = {'K': k, 'zero_shot': zero, 'fewshot': per_query[fewshot(k)]}
    row['fewshot_x_zero_shot'] = row['fewshot'] / zero
    for kind, path in ADAPTERS.items():
      row[kind] = per_query[path]
      row[f'{kind}_x_zero_shot'] = row[kind] / zero
      row[f'fewshot_over_{kind}'] = row['fewshot'] / row[kind]
      row[f'{kind}_generation'] = generation[kind][k]
      row[f'{kind}_break_even'] = break_even(generation[kind][k], row['fewshot'], row[kind])
      row[f'{kind}_extra_vs_zero_shot'] = row[kind] - zero
      row[f'{kind}_generation_in_zero_shot_queries'] = (
          None if generation[kind][k] is None else generation[kind][k] / zero)
    row['hart'] = per_query[hart(k)]  # its query reads K demos' stored keys/values
    row['hart_x_zero_shot'] = row['hart'] / zero
    row['fewshot_over_hart'] = row['fewshot'] / row['hart']
    rows.append(row)
  return rows


def print_table(name, rows, unit, scale):
  print(f'\n{name} ({unit}; break-even N* = generation / (few-shot - adapter), '
        'in queries)')
  print(f'| K | zero-shot | LoRA | prefix | few-shot | few-shot / LoRA | LoRA generation | '
        'prefix generation | N* LoRA | N* prefix |')
  print('|---|---|---|---|---|---|---|---|---|---|')
  for r in rows:
    cells = [_fmt(r[key], scale) for key in ('zero_shot', 'lora', 'prefix', 'fewshot')]
    cells += [_fmt(r['fewshot_over_lora'], digits=2)]
    cells += [_fmt(r[key], scale) for key in ('lora_generation', 'prefix_generation')]
    print(f'| {r["K"]} | ' + ' | '.join(cells) + ' | '
          f'{_fmt(r["lora_break_even"], digits=2)} | {_fmt(r["prefix_break_even"], digits=2)} |')
  print('HART adapter (prefixes + stored fusion K/V) per query, by K: ' + '; '.join(
      f'K={r["K"]} {_fmt(r["hart"], scale)} = {r["hart_x_zero_shot"]:.3f}x zero-shot, '
      f'few-shot/HART {r["fewshot_over_hart"]:.2f}x' for r in rows))
  r = rows[-1]
  print(f'adapter / zero-shot per query: {r["lora_x_zero_shot"]:.3f} (LoRA), '
        f'{r["prefix_x_zero_shot"]:.3f} (prefix)')
  print(f'vs zero-shot, per query the adapter adds {_fmt(r["lora_extra_vs_zero_shot"], scale, 4)} '
        f'(LoRA) / {_fmt(r["prefix_extra_vs_zero_shot"], scale, 4)} (prefix); generation at K='
        f'{r["K"]} = {_fmt(r["lora_generation_in_zero_shot_queries"], digits=1)} zero-shot '
        'queries (LoRA)')


def plot(rows, title, path):
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  g = 1e-9
  ks = [r['K'] for r in rows]
  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
  for key, label, style in [('fewshot', 'few-shot in context', 'o-'),
                            ('lora', 'adapter LoRA r=8', 's-'),
                            ('prefix', 'adapter prefix P=32', '^-'),
                            ('zero_shot', 'zero-shot', 'k:'),
                            ('lora_generation', 'one-off LoRA generation', 's--'),
                            ('prefix_generation', 'one-off prefix generation', '^--')]:
    if rows[0][key] is not None:  # --quick counts no prefix generation
      ax1.plot(ks, [r[key] * g for r in rows], style, label=label)
  ax1.set(xscale='log', yscale='log', xlabel='K demonstrations', ylabel='GFLOPs',
          title=f'{title}: per query (generation: once per task)')
  ax1.set_xticks(ks, [str(k) for k in ks])
  ax1.legend(fontsize=8)
  n = np.linspace(0.25, 6, 100)
  ax2.plot(n, n * rows[0]['zero_shot'] * g, 'k:', label='zero-shot')
  for r, color in zip(rows, plt.cm.viridis(np.linspace(0, 0.85, len(rows)))):
    ax2.plot(n, n * r['fewshot'] * g, '-', color=color, label=f'few-shot K={r["K"]}')
    ax2.plot(n, r['lora_generation'] * g + n * r['lora'] * g, '--', color=color,
             label=f'LoRA adapter K={r["K"]}: N*={r["lora_break_even"]:.2f}')
    ax2.plot(r['lora_break_even'], r['lora_break_even'] * r['fewshot'] * g, 'x', color=color, ms=9)
  ax2.set(yscale='log', xlabel='queries served for one task (x: break-even N*)',
          ylabel='cumulative GFLOPs', title='cumulative cost: adapter = generation + queries')
  ax2.legend(fontsize=7, ncol=2, loc='lower right')
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)


def run(name, quick):
  tokens_per_demo, query_len, target_len, batch = SETUPS[name]
  config = preset(name, dropout_rate=0.0)
  t0 = time.perf_counter()
  kinds = list(ADAPTERS)
  if name == 'tiny':
    paths = query_paths(config, batch, query_len, KS, tokens_per_demo)
    rows = sc.measure(name, config, batch=batch, demo_len=0, query_len=query_len,
                      target_len=target_len, reps=5 if quick else 20, paths=paths,
                      fast_init=True)  # tiled random weights: no eager init to compile
    per_query = {r[0]: r[2] for r in rows}
    seconds = {r[0]: r[3] for r in rows}
  else:
    paths = query_paths(config, 1, query_len, KS, tokens_per_demo)
    per_query, seconds = lowered_flops(config, paths, target_len), None
  # Generation is timed on tiny without --quick; --quick counts HyperT5-LoRA's alone.
  cost = {kind: {k: (None, None) for k in KS} for kind in kinds}
  for kind in kinds[:1] if quick else kinds:
    hyper_fn = sc._hyper_fn(config, kind)  # one abstract init per kind, one lowering per K
    reps = 10 if seconds and not quick else 0
    cost[kind] = {k: generation_cost(hyper_fn, k * tokens_per_demo, reps) for k in KS}
  generation = {kind: {k: c[0] for k, c in v.items()} for kind, v in cost.items()}
  gen_seconds = {kind: {k: c[1] for k, c in v.items()} for kind, v in cost.items()}
  print(f'  [{name}] measured in {time.perf_counter() - t0:.0f}s', flush=True)
  flop_rows = summarise(per_query, generation, KS)
  print_table(f'{name}: {tokens_per_demo} tokens/demo, query {query_len}, target {target_len}',
              flop_rows, 'GFLOPs', 1e-9)
  out = {'tokens_per_demo': tokens_per_demo, 'query_len': query_len, 'target_len': target_len,
         'flops': flop_rows}
  if seconds:
    out['seconds'] = summarise(seconds, gen_seconds, KS)
    print_table(f'{name} latency, batch {batch} per query path, batch 1 generation',
                out['seconds'], 'ms', 1e3)
  jax.clear_caches()
  return out


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--quick', action='store_true',
                      help='fewer tiny latency repetitions; HyperT5-LoRA generation only, untimed')
  parser.add_argument('--configs', default='tiny,large')
  parser.add_argument('--out', default=str(Path(__file__).resolve().parent / 'out'))
  args = parser.parse_args(argv)
  t0 = time.perf_counter()
  results = {name: run(name, args.quick) for name in args.configs.split(',')}
  out = Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  (out / 'hypertuning_cost.json').write_text(json.dumps(results, indent=2))
  name = 'large' if 'large' in results else next(iter(results))
  plot(results[name]['flops'], f'T5 v1.1 {name}', out / 'hypertuning_cost.png')
  print(f'\nwrote {out}/hypertuning_cost.{{json,png}}; total {time.perf_counter() - t0:.0f}s')
  return 0


if __name__ == '__main__':
  sys.exit(main())
