r"""One-command accelerator benchmark: XL hypermodel train steps and the Large scoring step.

  python bench/accelerator_step.py                  # one GPU/TPU: < 5 min incl. compiles
  python bench/accelerator_step.py --tiny           # same code on the :tiny configs (CPU, tests)
  python bench/accelerator_step.py --compile-only   # XL steps lowered + compiled on abstract
                                                    # shapes (CPU is fine): compile time only

Train steps: `configs/hart_xl.py` and `configs/hypert5_lora_xl.py` as the
trainer builds them (`Plan` on a one-device mesh, `make_train_step`, the
state donated; `remat`/`scan_layers` as the configs set them), with bf16
compute (model and generator), random frozen T5 and generator weights
created on the device (`model.allow_random_init`), `--rows` rows per step (the
configs' per-device micro batch on their 8-device meshes: 256 / 8 / accum) at the
configs' lengths (hypermodel 1024, encoder 384, decoder 128), one micro batch.
Scoring: T5 v1.1 Large, `serving.target_log_likelihood` (rank classification,
fused output layer) for a batch of `--score-rows` queries of 128 tokens with a
16-token target, zero-shot and with a HART adapter (P=32 prefixes + stored
fusion keys/values of 1024 demonstration tokens).

Reported per step: compile seconds, step time (median of `--steps` after one
warm-up), tokens/s (encoder + decoder tokens; hypermodel tokens separately),
model FLOPs per step both from XLA's cost analysis of the compiled step (it
counts what runs, remat's recomputation included) and analytically (matmuls
and attention of the models, no recomputation: `analytic_*`; the generator's
heads and LoRA's rank-r products are left out, < 1%), MFU = analytic FLOPs /
step time / the chip's dense bf16 peak (`PEAK_BF16`, by `device_kind`), and
peak memory (the allocator's peak where the platform reports it, else XLA's
memory analysis of the compiled step).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

# Dense bf16 peak FLOP/s per chip, matched by substring of `device_kind` (first hit).
PEAK_BF16 = (
    ('H200', 989e12), ('H100 PCIe', 756e12), ('H100', 989e12), ('GH200', 989e12),
    ('B200', 2250e12), ('A100', 312e12), ('L40S', 362e12), ('L4', 121e12),
    ('A10G', 70e12), ('TPU v4', 275e12), ('TPU v5 lite', 197e12), ('TPU v5e', 197e12),
    ('TPU v5', 459e12), ('TPU v6', 918e12),
)
TRAIN_CONFIGS = {'hart_xl': 'configs/hart_xl.py', 'hypert5_lora_xl': 'configs/hypert5_lora_xl.py'}
SCORE = {'query': 128, 'target': 16, 'fusion': 1024, 'prefix': 32}


def peak_flops(device) -> float | None:
  kind = getattr(device, 'device_kind', '')
  return next((p for key, p in PEAK_BF16 if key.lower() in kind.lower()), None)


def load_config(path: str, tiny: bool, dtype: str):
  spec = importlib.util.spec_from_file_location(Path(path).stem, ROOT / path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config('tiny' if tiny else None)
  c.model.init_from, c.model.allow_random_init, c.runtime.allow_cpu = '', True, True
  c.hyper.init_from, c.hyper.skip_hyperpretraining = '', True
  c.model.dtype = c.hyper.dtype = dtype
  c.model.dropout_rate = 0.0
  c.mesh = {'data': 1}
  return c


# ---- analytic FLOPs --------------------------------------------------------------

def t5_macs(cfg, enc_len: int, dec_len: int, *, dec_layers: int | None = None,
            cross_len: int | None = None, prefix: int = 0, lm_head: bool = True):
  """(weight-matmul MACs, attention MACs) of one row's T5 forward.

  Per encoder token and layer 4·D·I (q, k, v, o) + 3·D·F (gated MLP); per
  decoder token and layer 6·D·I + 3·D·F, plus 2·D·I per cross-attended
  position (its keys and values); lm_head D·V per decoder token. Attention:
  2·I per (query, key) pair, prefixes included, causal masks not discounted.
  """
  d, inner, ff = cfg.d_model, cfg.inner_dim, cfg.d_ff
  layers_d = cfg.num_decoder_layers if dec_layers is None else dec_layers
  cross = enc_len if cross_len is None else cross_len
  weights = cfg.num_layers * enc_len * (4 * d * inner + 3 * d * ff)
  weights += layers_d * (dec_len * (6 * d * inner + 3 * d * ff) + cross * 2 * d * inner)
  weights += dec_len * d * cfg.vocab_size if lm_head else 0
  attn = cfg.num_layers * 2 * inner * enc_len * (enc_len + prefix)
  attn += layers_d * 2 * inner * dec_len * (dec_len + prefix + cross)
  return weights, attn


def train_flops(exp, lengths) -> float:
  """Analytic model FLOPs of one row's train step (no remat recomputation).

  Frozen T5: forward (2 per MAC) + activation gradients (2 per weight MAC, 4
  per attention MAC: both operands are activations). Generator: forward +
  activation and weight gradients (6 per MAC).
  """
  t5, hyper = exp.t5_config, exp.hyper_config
  hyper_len, enc_len, dec_len = lengths
  fusion = hyper_len if hyper.fusion_in_decoder else 0
  prefix = hyper.prefix_len if hyper.uses_prefix else 0
  w, a = t5_macs(t5, enc_len, dec_len, cross_len=enc_len + fusion, prefix=prefix)
  frozen = 4 * w + 6 * a
  bb = hyper.backbone_config(t5)
  dec_tokens = {'hart': 2 * hyper.num_steps(t5),
                'lora': t5.num_layers + 2 * t5.num_decoder_layers}.get(hyper.kind, 2 * prefix)
  hw, ha = t5_macs(bb, hyper_len, dec_tokens, lm_head=False)
  return frozen + 6 * (hw + ha)


# ---- measurement -------------------------------------------------------------------

def xla_flops(compiled) -> float:
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get('flops', float('nan')))


def memory(compiled) -> dict:
  out = {}
  stats = jax.devices()[0].memory_stats() or {}
  if 'peak_bytes_in_use' in stats:
    out['device_peak_bytes'] = int(stats['peak_bytes_in_use'])
  mem = compiled.memory_analysis()
  if mem is not None:
    out['xla_temp_bytes'] = int(mem.temp_size_in_bytes)
    out['xla_argument_bytes'] = int(mem.argument_size_in_bytes)
  return out


def timed(fn, steps: int) -> list[float]:
  jax.block_until_ready(fn())  # warm-up (first execution allocates)
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return times


def train_step(name: str, args) -> dict:
  from hyperflax.plan import abstract_batch
  from hyperflax.sharding import make_mesh
  from hyperflax.training.experiment import Experiment
  from hyperflax.training.optim import make_optimizer
  from hyperflax.sharding import Plan
  from hyperflax.training.step import make_train_step
  c = load_config(TRAIN_CONFIGS[name], args.tiny, args.dtype)
  rows = args.rows or int(c.data.batch_size) // int(c.train.grad_accum_steps) // (
      1 if args.tiny else 8)
  c.data.batch_size, c.train.grad_accum_steps = rows, 1
  exp = Experiment.from_config(c)
  optimizer = make_optimizer(c, int(c.train.num_steps))
  batch = abstract_batch(c, exp)
  lengths = tuple(batch[k].shape[1] for k in ('hyper_inputs', 'encoder_inputs', 'targets'))
  micro = {k: np.zeros(v.shape, v.dtype) for k, v in batch.items()}
  mesh = make_mesh(c)
  t0 = time.perf_counter()
  plan = Plan.build(exp, optimizer, c, mesh, micro)
  step = plan.jit_train_step(make_train_step(exp, optimizer, 1), batch)
  if args.compile_only:
    from hyperflax.sharding import batch_shardings
    abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                            (plan.abstract_state, plan.abstract_frozen, batch),
                            (plan.state, plan.frozen, batch_shardings(batch, mesh)))
    t1 = time.perf_counter()
    lowered = step.lower(*abstract)
    t2 = time.perf_counter()
    compiled = lowered.compile()
    t3 = time.perf_counter()
    out = {'lower_s': t2 - t1, 'compile_s': t3 - t2, 'build_s': t1 - t0}
  else:
    state, frozen = plan.create(jax.random.PRNGKey(0), micro)
    rng = np.random.default_rng(0)
    data = {k: rng.integers(2, 1000, v.shape).astype(v.dtype) if v.dtype == np.int32
            else np.ones(v.shape, v.dtype) for k, v in batch.items()}
    data = plan.global_batch(data, rows)
    t1 = time.perf_counter()
    compiled = step.lower(state, frozen, data).compile()
    out = {'compile_s': time.perf_counter() - t1, 'init_s': t1 - t0}
    holder = {'state': state}

    def run():
      holder['state'], metrics = compiled(holder['state'], frozen, data)
      return metrics['loss']
    with jax.set_mesh(mesh):
      times = timed(run, args.steps)
    out['step_s'] = statistics.median(times)
    out['loss'] = float(run())
  out.update(name=f'{name}:tiny' if args.tiny else name, rows=rows, lengths=lengths, dtype=args.dtype,
             scan_layers=bool(c.model.scan_layers), remat=bool(c.model.remat),
             xla_flops=xla_flops(compiled), analytic_flops=rows * train_flops(exp, lengths),
             **memory(compiled))
  return out


def score_step(args) -> list[dict]:
  from hyperflax import serving
  from hyperflax.model import init_params, peft as peft_lib, preset
  config = preset('tiny' if args.tiny else 'large', dropout_rate=0.0, dtype=args.dtype)
  rows, q, t, f, p = args.score_rows, SCORE['query'], SCORE['target'], SCORE['fusion'], \
      SCORE['prefix']
  if args.tiny:
    q, t, f, p = 16, 8, 64, 4
  rng = np.random.default_rng(0)
  params = init_params(config, jax.random.PRNGKey(0))
  enc = jnp.asarray(rng.integers(2, 1000, (rows, q)), jnp.int32)
  tgt = jnp.asarray(rng.integers(2, 1000, (rows, t)), jnp.int32)
  dec = jnp.pad(tgt[:, :-1], [(0, 0), (1, 0)])
  weights = jnp.ones((rows, t), jnp.float32)
  shapes = peft_lib.expected_shapes(config, rows, p, None)
  kv = (rows, config.num_decoder_layers, f, config.inner_dim)
  shapes.update({'decoder/cross/fusion/k': kv, 'decoder/cross/fusion/v': kv})
  hart = peft_lib.unflatten({k: jnp.asarray(rng.standard_normal(s) * 0.05, jnp.float32)
                             for k, s in shapes.items()})
  paths = {'zero-shot': (None, None, 0, 0), 'HART adapter (fusion K/V)': (
      hart, jnp.ones((rows, f), bool), f, p)}
  out = []
  for path, (peft, mask, fusion_len, prefix) in paths.items():
    t0 = time.perf_counter()
    compiled = serving.target_log_likelihood.lower(
        config, params, enc, dec, tgt, weights, peft, None, mask).compile()
    compile_s = time.perf_counter() - t0
    times = timed(lambda: compiled(params, enc, dec, tgt, weights, peft, None, mask), args.steps)
    w, a = t5_macs(config, q, t, cross_len=q + fusion_len, prefix=prefix)
    out.append({'name': f'{"tiny" if args.tiny else "large"} scoring, {path}', 'rows': rows,
                'lengths': (q, t), 'dtype': args.dtype, 'compile_s': compile_s,
                'step_s': statistics.median(times), 'xla_flops': xla_flops(compiled),
                'analytic_flops': rows * 2 * (w + a), **memory(compiled)})
  return out


def report(results: list[dict], device) -> None:
  peak = peak_flops(device)
  print(f'\ndevice: {device.platform} {getattr(device, "device_kind", "")!r}; bf16 peak '
        f'{"%.0f TFLOP/s" % (peak / 1e12) if peak else "unknown (no MFU)"}')
  print('| step | rows | compile s | step s | tokens/s | XLA GFLOP/step | analytic GFLOP/step '
        '| analytic ÷ XLA | MFU (analytic) | peak memory GiB |')
  print('|---|---|---|---|---|---|---|---|---|---|')
  for r in results:
    tokens = r['rows'] * sum(r['lengths'][-2:])
    step = r.get('step_s')
    r['tokens_per_s'] = tokens / step if step else None
    r['mfu'] = r['analytic_flops'] / step / peak if step and peak else None
    mem = r.get('device_peak_bytes', r.get('xla_temp_bytes', 0) + r.get('xla_argument_bytes', 0))
    fmt = lambda x, spec: 'n/a' if x is None else format(x, spec)
    print(f"| {r['name']} | {r['rows']} | {r['compile_s']:.1f} | {fmt(step, '.4f')} | "
          f"{fmt(r['tokens_per_s'], '.0f')} | {r['xla_flops'] / 1e9:.5g} | "
          f"{r['analytic_flops'] / 1e9:.5g} | {r['analytic_flops'] / r['xla_flops']:.3f} | "
          f"{fmt(r['mfu'], '.1%')} | {mem / 2**30:.2f} |")


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--tiny', action='store_true', help=':tiny configs, float32 (CPU smoke)')
  parser.add_argument('--compile-only', action='store_true',
                      help='XL train steps: lower + compile on abstract shapes, no run')
  parser.add_argument('--only', default='hart_xl,hypert5_lora_xl,score')
  parser.add_argument('--rows', type=int, default=0, help='rows per train step (0: config)')
  parser.add_argument('--score-rows', type=int, default=32)
  parser.add_argument('--steps', type=int, default=5, help='timed steps after a warm-up')
  parser.add_argument('--dtype', default=None, help='default bfloat16 (float32 with --tiny)')
  parser.add_argument('--out', help='write the results as JSON')
  args = parser.parse_args(argv)
  args.dtype = args.dtype or ('float32' if args.tiny else 'bfloat16')
  device = jax.devices()[0]
  if device.platform == 'cpu' and not (args.tiny or args.compile_only):
    print('no accelerator: run with --tiny (smoke) or --compile-only (XL compile time on CPU)')
    return 2
  t0 = time.perf_counter()
  results = []
  for name in args.only.split(','):
    if name in TRAIN_CONFIGS:
      results.append(train_step(name, args))
    elif name == 'score' and not args.compile_only:
      results.extend(score_step(args))
    print(f'  done {name} ({time.perf_counter() - t0:.0f}s)', flush=True)
  report(results, device)
  print(f'total {time.perf_counter() - t0:.0f}s; load average {os.getloadavg()[0]:.1f}')
  if args.out:
    Path(args.out).write_text(json.dumps(results, indent=2, default=str))
  return 0


if __name__ == '__main__':
  sys.exit(main())
