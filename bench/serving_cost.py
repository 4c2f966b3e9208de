r"""Serving cost per query: a hypertuned adapter vs. few-shot in-context vs. zero-shot.

  python bench/serving_cost.py --quick          # ~100 s of CPU time (2 cores)
  python bench/serving_cost.py                  # more latency repetitions
  python bench/serving_cost.py --configs large --query-len 64 --out cost.json

Paths, measured side by side on the same downstream T5 v1.1 (random weights):
  (a) adapter    the T5 reads the query alone with generated PEFT parameters:
                 HyperT5-LoRA (rank 8), HyperT5-Prefix (P=32), and HART's
                 prefixes + fusion-in-decoder (the K demonstrations'
                 hypermodel encoding, cross-attended by the decoder) as the
                 adapter stores it: per-layer cross-attention keys/values
                 (format 2); also as format 1 stored it, raw states that every
                 query re-projects in every decoder layer;
  (b) few-shot   the T5 reads K=16 demonstrations + the query concatenated
                 (T5-MTF-Few-shot / MetaICL style);
  (c) zero-shot  the T5 reads the query alone (T5-MTF).
One query = one teacher-forced forward over a `--target-len` target (the rank
classification step). FLOPs come from XLA: `jax.jit(f).lower(...).compile()
.cost_analysis()['flops']` (parameters as abstract shapes, so Large costs
nothing to count), divided by the batch. Latency is wall time per call / batch
after one warm-up call. The hypermodel pass that writes an adapter runs once per
task, not per query; its FLOPs are reported separately (Large: without --quick).

Lengths: tiny uses the synthetic suite's (K=16 demos fit in 192 tokens, query
16); large uses 1024 demo tokens (the papers' hypermodel input), a 128-token
query (typical of P3 prompts; `--query-len`) and a 16-token target.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from hyperflax.model import T5, abstract_params, init_params, preset  # noqa: E402
from hyperflax.model import peft as peft_lib  # noqa: E402
from hyperflax.model import xent  # noqa: E402

S = jax.ShapeDtypeStruct
LORA_RANK, PREFIX_LEN = 8, 32


def _score_fn(config):
  """Per-row summed target log-likelihood (what rank classification computes,
  as `serving.target_log_likelihood` does: fused, chunked output layer)."""
  model = T5(config)

  def score(params, enc, dec, peft, fusion_states, fusion_mask):
    hidden = model.apply({'params': params}, enc, dec, peft=peft, fusion_states=fusion_states,
                         fusion_mask=fusion_mask, return_hidden=True)
    return xent.target_loglik(hidden, xent.lm_head_kernel(params), dec,
                              jnp.ones(dec.shape, jnp.float32))
  return score


def fusion_kv_shapes(config, batch, fusion_len):
  """Shapes of HART's stored per-layer fusion keys/values (adapter format 2)."""
  shape = (batch, config.num_decoder_layers, fusion_len, config.inner_dim)
  return {'decoder/cross/fusion/k': shape, 'decoder/cross/fusion/v': shape}


def _paths(config, batch, demo_len, query_len):
  """name -> (encoder length, peft shapes, fusion length or None)."""
  lora = peft_lib.expected_shapes(config, batch, None, LORA_RANK)
  for key in [k for k in lora if k.endswith('/a')]:
    lora[key[:-1] + 'gate'] = (batch, lora[key][1])
  prefix = peft_lib.expected_shapes(config, batch, PREFIX_LEN, None)
  return {
      '(c) zero-shot': (query_len, None, None),
      '(a) adapter: LoRA r=8': (query_len, lora, None),
      '(a) adapter: prefix P=32': (query_len, prefix, None),
      '(a) adapter: HART prefix + fusion K/V': (
          query_len, {**prefix, **fusion_kv_shapes(config, batch, demo_len)}, demo_len),
      '(a) adapter: HART prefix + fusion states (format 1)': (query_len, prefix, demo_len),
      '(b) few-shot K=16 in context': (demo_len + query_len, None, None),
  }


def _abstract_inputs(config, batch, enc_len, target_len, peft_shapes, fusion_len):
  dtype = jnp.dtype(config.dtype)
  peft = None if peft_shapes is None else peft_lib.unflatten(
      {k: S(v, dtype) for k, v in peft_shapes.items()})
  fusion = (None, None) if fusion_len is None else (
      S((batch, fusion_len, config.d_model), dtype), S((batch, fusion_len), jnp.bool_))
  if fusion_len is not None and 'decoder/cross/fusion/k' in peft_shapes:
    fusion = (None, fusion[1])  # stored keys/values: the mask alone goes in
  return (S((batch, enc_len), jnp.int32), S((batch, target_len), jnp.int32), peft) + fusion


def _flops(compiled) -> float:
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost['flops'])


def _concrete(abstract, rng):
  """Random arrays for abstract shapes (tokens in [2, 1000), mask all True)."""
  def make(s):
    if s.dtype == jnp.int32:
      return jnp.asarray(rng.integers(2, 1000, s.shape), jnp.int32)
    if s.dtype == jnp.bool_:
      return jnp.ones(s.shape, bool)
    return jnp.asarray(rng.normal(size=s.shape) * 0.05, s.dtype)
  return jax.tree.map(make, abstract)


def _hyper_fn(config, kind='lora'):
  """(jitted pass writing the adapter from demo tokens, abstract hypermodel params)."""
  from hyperflax.hyper import HyperConfig, abstract_params as hyper_abstract, build_hypermodel
  hyper = HyperConfig(kind=kind, lora_rank=LORA_RANK, prefix_len=PREFIX_LEN, dtype=config.dtype)
  module = build_hypermodel(hyper, config)
  params = nn.unbox(hyper_abstract(hyper, config))
  return jax.jit(lambda p, x: module.apply({'params': p}, x)[0]), params


def _hyper_flops(config, demo_len) -> float:
  """One-time cost: the HyperT5-LoRA pass over K=16 demonstrations (batch 1)."""
  fn, params = _hyper_fn(config, 'lora')
  return _flops(fn.lower(params, S((1, demo_len), jnp.int32)).compile())


def _random_params(config, seed, fast):
  """Random weights; `fast` tiles one random block (Large's 780M draws take long
  on two cores, and matmul time does not depend on the values)."""
  if not fast:
    return init_params(config, jax.random.PRNGKey(seed))
  block = np.random.default_rng(seed).normal(size=1 << 20).astype(np.float32) * 0.05
  return jax.tree.map(lambda s: jnp.asarray(np.resize(block, s.shape)),
                      nn.unbox(abstract_params(config)))


def measure(name, config, *, batch, demo_len, query_len, target_len, reps, latency=True,
            warmup=True, fast_init=False, seed=0, paths=None):
  """Rows of (path, encoder tokens, FLOPs per query, latency per query in s or None).

  `paths` (name -> (encoder length, peft shapes, fusion length)) replaces the
  default `_paths(...)`.

  Every path is compiled first; timed calls then go round-robin over the paths
  (shuffled each round) and each path reports its median, so load from other processes and
  first-call effects do not favour whichever path runs last.
  """
  score = jax.jit(_score_fn(config))
  params_shape = nn.unbox(abstract_params(config))
  rng = np.random.default_rng(seed)
  compiled = {}
  paths = paths or _paths(config, batch, demo_len, query_len)
  for path, (enc_len, peft, fusion_len) in paths.items():
    t0 = time.perf_counter()
    inputs = _abstract_inputs(config, batch, enc_len, target_len, peft, fusion_len)
    compiled[path] = (enc_len, inputs, score.lower(params_shape, *inputs).compile())
    print(f'  [{name}] {path}: {_flops(compiled[path][2]) / batch / 1e9:.3f} GFLOPs/query '
          f'(compiled in {time.perf_counter() - t0:.0f}s)', flush=True)
  times = {path: [] for path in compiled}
  if latency:
    params = _random_params(config, seed, fast_init)
    args = {path: _concrete(inputs, rng) for path, (_, inputs, _) in compiled.items()}
    order = list(compiled)
    for rep in range(reps + int(warmup)):
      rng.shuffle(order)  # a fresh order each round: no path always follows the slowest
      for path in order:
        fn = compiled[path][2]
        start = time.perf_counter()
        jax.block_until_ready(fn(params, *args[path]))
        if rep >= int(warmup):  # the executables are compiled: this warms caches only
          times[path].append((time.perf_counter() - start) / batch)
    del params
  return [(path, enc_len, _flops(fn) / batch,
           float(np.median(times[path])) if times[path] else None)
          for path, (enc_len, _, fn) in compiled.items()]


def report(name, rows, hyper_flops, demo_len, query_len, target_len, batch):
  base_flops, base_time = rows[0][2], rows[0][3]
  few = next(r for r in rows if r[0].startswith('(b)'))
  print(f'\n{name}: demos {demo_len} tok, query {query_len} tok, target {target_len} tok, '
        f'latency batch {batch}')
  print(f'| path | encoder tokens | GFLOPs/query | x zero-shot | (b)/path | ms/query | '
        f'latency x zero-shot |')
  print('|---|---|---|---|---|---|---|')
  for path, enc_len, flops, seconds in rows:
    lat = f'{seconds * 1e3:.2f} | {seconds / base_time:.2f}' if seconds else 'n/a | n/a'
    print(f'| {path} | {enc_len} | {flops / 1e9:.3f} | {flops / base_flops:.3f} | '
          f'{few[2] / flops:.2f} | {lat} |')
  if hyper_flops:
    print(f'one-time hypermodel pass (HyperT5-LoRA, {demo_len} demo tokens): '
          f'{hyper_flops / 1e9:.1f} GFLOPs per task = {hyper_flops / base_flops:.1f} '
          'zero-shot queries, amortised over every query of the task')
  checks = {}
  for path, _, flops, _ in rows:
    if path.startswith('(a)'):
      checks[path] = {'x_zero_shot': flops / base_flops, 'fewshot_over_adapter': few[2] / flops,
                      'ok': flops <= 1.15 * base_flops and few[2] >= 5 * flops}
  return checks


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--quick', action='store_true',
                      help='tiny: 3 reps; large: 1 call per path, no warm-up, tiled weights')
  parser.add_argument('--configs', default='tiny,large')
  parser.add_argument('--query-len', type=int, default=128, help='large: query tokens')
  parser.add_argument('--demo-len', type=int, default=1024, help='large: K=16 demo tokens')
  parser.add_argument('--target-len', type=int, default=16, help='large: target tokens')
  parser.add_argument('--no-large-latency', action='store_true', help='large: FLOPs only')
  parser.add_argument('--out', help='write the numbers as JSON')
  args = parser.parse_args(argv)
  t0 = time.perf_counter()
  results = {}
  for name in args.configs.split(','):
    if name == 'tiny':
      config, lengths, batch = preset('tiny', dropout_rate=0.0), (192, 16, 8), 32
      reps = 10 if args.quick else 30
    else:
      config = preset(name, dropout_rate=0.0)
      lengths, batch = (args.demo_len, args.query_len, args.target_len), 1
      reps = 1 if args.quick else 3
    demo_len, query_len, target_len = lengths
    latency = not (name != 'tiny' and args.no_large_latency)
    large_quick = args.quick and name != 'tiny'
    rows = measure(name, config, batch=batch, demo_len=demo_len, query_len=query_len,
                   target_len=target_len, reps=reps, latency=latency,
                   warmup=not large_quick, fast_init=large_quick)
    # The one-time hypermodel pass (compiling Large's takes a while: full runs only).
    hyper_flops = None if large_quick else _hyper_flops(config, demo_len)
    checks = report(name, rows, hyper_flops, demo_len, query_len, target_len, batch)
    results[name] = {'lengths': lengths, 'batch': batch, 'hyper_flops': hyper_flops,
                     'rows': [dict(zip(('path', 'encoder_tokens', 'flops', 'seconds'), r))
                              for r in rows], 'checks': checks}
    jax.clear_caches()
  if 'large' in results:
    print('\nlarge: adapter <= 1.15x zero-shot FLOPs and >= 5x fewer than few-shot (K=16):')
    for path, c in results['large']['checks'].items():
      print(f'  {"PASS" if c["ok"] else "FAIL"} {path}: {c["x_zero_shot"]:.3f}x zero-shot, '
            f'few-shot/adapter {c["fewshot_over_adapter"]:.2f}x')
      if 'format 1' in path and not c['ok']:
        print('       (format 1 re-projects the stored demo states to cross-attention '
              'keys/values in every decoder layer for every query: the reference)')
  print(f'\ntotal {time.perf_counter() - t0:.0f}s')
  if args.out:
    with open(args.out, 'w') as f:
      json.dump(results, f, indent=2)
  return 0


if __name__ == '__main__':
  sys.exit(main())
