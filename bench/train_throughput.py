"""Training-step throughput of our T5 v1.1 against transformers' torch T5.

  python bench/train_throughput.py [--quick] [--only tiny|small] [--reps N]
  taskset -c 0 python bench/train_throughput.py ...   # one core each

Both models start from one random init: a transformers
`T5ForConditionalGeneration` is built (tests/hf_fixtures.py) and its weights
are converted to ours with `hyperflax.model.hf.name_table`, so both compute
the same function; the step-0 losses must agree within 1e-4. One step is
forward, backward, global-norm clipping (1.0) and AdamW (constant lr, no
weight decay), fp32, dropout 0: our real `make_train_step` under `jax.jit`
with the state donated, against `model.train()` + `torch.optim.AdamW`.

Both use as many threads as the CPUs the process may use (XLA:CPU sizes its
pool so; torch is set to match). On an oversubscribed machine torch's OpenMP
barriers stall on descheduled threads, so also run it under `taskset -c 0`.
The machine may be shared, so repetitions of all variants are interleaved
(load hits each equally) and ratios are the figures to read, not absolute
times. The profile times our step without the optimiser update and with a
512-token vocabulary (the vocab-sized lm_head, softmax, embedding gradient
and their AdamW share), splits torch's step by clock readings, and gives
GFLOP/s from XLA's cost analysis (torch runs the same function: same count).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / 'tests'))  # hf_fixtures.build_torch_t5

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from hyperflax.model import T5Config, preset  # noqa: E402

# name: (config, batch, input length, target length)
CONFIGS = {
    'tiny': (preset('tiny', dropout_rate=0.0), 8, 64, 16),
    'small': (preset('small', dropout_rate=0.0), 8, 128, 32),
}
LR = 1e-4
SMALL_VOCAB = 512


def torch_kwargs(cfg: T5Config) -> dict:
  """The transformers T5Config fields that define the same model as `cfg`."""
  keys = ('vocab_size', 'd_model', 'd_kv', 'd_ff', 'num_heads', 'num_layers',
          'num_decoder_layers', 'relative_attention_num_buckets',
          'relative_attention_max_distance', 'layer_norm_epsilon')
  return {k: getattr(cfg, k) for k in keys}


def torch_to_ours(model, cfg: T5Config) -> dict:
  """Our (unscanned) parameter tree holding a copy of the torch weights."""
  from hyperflax.model import hf
  state = model.state_dict()
  params: dict = {}
  for name, path, transpose in hf.name_table(cfg):
    value = state[name].detach().numpy()
    *parents, leaf = path.split('/')
    node = params
    for part in parents:
      node = node.setdefault(part, {})
    # A real copy: jax may alias host memory, and torch updates its weights in place.
    node[leaf] = jnp.array(np.ascontiguousarray(value.T if transpose else value), copy=True)
  return params


def make_batch(cfg: T5Config, batch: int, in_len: int, tgt_len: int, seed: int = 0):
  """Random unpadded tokens (ids >= 2): every position counts as a token."""
  rng = np.random.default_rng(seed)
  enc = rng.integers(2, cfg.vocab_size, (batch, in_len)).astype(np.int32)
  tgt = rng.integers(2, cfg.vocab_size, (batch, tgt_len)).astype(np.int32)
  dec = np.pad(tgt[:, :-1], [(0, 0), (1, 0)])  # shift right; 0 is the start token
  return {'encoder_inputs': enc, 'decoder_inputs': dec, 'targets': tgt,
          'target_weights': np.ones(tgt.shape, np.float32)}


def xla_flops(compiled) -> float:
  """FLOPs of a compiled XLA program, from its cost analysis."""
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost  # older jax: one per module
  return float(cost.get('flops', float('nan')))


class Pair:
  """Our and torch's training step on the same weights and batch.

  Building it runs two steps of each (the sanity check; also the warm-up).

  Args:
    cfg: the model (dropout must be 0 for the two to compute the same thing).
    batch, in_len, tgt_len: batch shape (random unpadded tokens).
    seed: torch init and batch seed.
    lr: constant AdamW learning rate of both.
    grad_variant: also compile our forward + backward alone (no update).
    with_torch: also build the torch step (False: ours only).

  Attributes:
    losses: {'ours'|'torch': [loss at step 0, loss at step 1]}.
    flops: XLA's FLOP count of our full step ('step') and, with
      `grad_variant`, of forward + backward alone ('fwd_bwd').
    steps: callables running one more step each, blocking until done:
      'ours', 'torch' (unless `with_torch=False`), 'ours_grad' (with `grad_variant`).
    torch_split: (forward + backward, clip + AdamW) seconds of each torch step.
  """

  def __init__(self, cfg: T5Config, batch: int, in_len: int, tgt_len: int, seed: int = 0,
               lr: float = LR, grad_variant: bool = False, with_torch: bool = True):
    import torch
    from hf_fixtures import build_torch_t5
    from hyperflax.config_base import base_config
    from hyperflax.model.xent import loss_sums
    from hyperflax.training.experiment import Experiment
    from hyperflax.training.optim import make_optimizer
    from hyperflax.training.step import create_state, make_train_step

    model = build_torch_t5(seed=seed, dropout_rate=0.0, **torch_kwargs(cfg)).train()
    params = torch_to_ours(model, cfg)
    host = make_batch(cfg, batch, in_len, tgt_len, seed)
    self.tokens = batch * (in_len + tgt_len)

    # Ours: the project's train step (T5-MTF: the whole T5 is trainable).
    c = base_config()
    c.method = 't5_mtf'
    c.optim.learning_rate, c.optim.schedule, c.optim.max_grad_norm = lr, 'constant', 1.0
    exp = Experiment(c, cfg, None)
    opt = make_optimizer(c, 1)
    state = create_state(exp, opt, {'downstream': params}, jax.random.PRNGKey(seed), None)
    jbatch = jax.tree.map(jnp.asarray, host)
    step = jax.jit(make_train_step(exp, opt), donate_argnums=0).lower(state, {}, jbatch).compile()
    self.flops = {'step': xla_flops(step)}

    def ours() -> float:
      nonlocal state
      state, metrics = step(state, {}, jbatch)
      return float(metrics['loss'])  # blocks until the step is done

    self.steps: dict[str, Callable[[], float]] = {'ours': ours}
    self.losses = {'ours': [ours(), ours()]}

    if grad_variant:  # forward + backward alone: the rest of our step is the optimiser
      def loss_fn(p, b):  # the train step's loss: fused lm_head + chunked cross-entropy
        hidden = exp.t5.apply({'params': p}, b['encoder_inputs'], b['decoder_inputs'],
                              return_hidden=True)
        s, w = loss_sums(hidden, p['lm_head']['kernel'], b['targets'], b['target_weights'])
        return s / w

      grad = jax.jit(jax.value_and_grad(loss_fn)).lower(
          state.trainable['downstream'], jbatch).compile()
      self.flops['fwd_bwd'] = xla_flops(grad)

      def ours_grad() -> float:
        return float(jax.block_until_ready(grad(state.trainable['downstream'], jbatch))[0])

      ours_grad()
      self.steps['ours_grad'] = ours_grad

    self.torch_split: list[tuple[float, float]] = []
    if not with_torch:
      return
    t = {k: torch.tensor(v, dtype=torch.long) for k, v in host.items() if k != 'target_weights'}
    mask = torch.ones_like(t['encoder_inputs'])
    # AdamW's default implementation on CPU (for-each and fused are opt-in there).
    opt_t = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.999), eps=1e-8,
                              weight_decay=0.0)

    def torch_step() -> float:
      t0 = time.perf_counter()
      opt_t.zero_grad(set_to_none=True)
      loss = model(input_ids=t['encoder_inputs'], attention_mask=mask,
                   decoder_input_ids=t['decoder_inputs'], labels=t['targets']).loss
      loss.backward()
      t1 = time.perf_counter()  # torch runs eagerly: the clock splits the step
      torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
      opt_t.step()
      self.torch_split.append((t1 - t0, time.perf_counter() - t1))
      return loss.item()

    self.losses['torch'] = [torch_step(), torch_step()]
    self.torch_split.clear()
    self.steps['torch'] = torch_step


def step0_losses(cfg: T5Config, batch: int = 2, in_len: int = 12, tgt_len: int = 6,
                 seed: int = 0) -> tuple[float, float]:
  """(ours, torch) training loss at step 0 from one random init."""
  pair = Pair(cfg, batch, in_len, tgt_len, seed)
  return pair.losses['ours'][0], pair.losses['torch'][0]


def interleave(steps: dict[str, Callable[[], float]], reps: int, warmup: int = 0):
  """Seconds per call of each callable, after `warmup` untimed calls each.

  The order flips every repetition so that no contestant always runs right
  after the same other one (caches, allocator state, load spikes).
  """
  for fn in steps.values():
    for _ in range(warmup):
      fn()
  times: dict[str, list[float]] = {k: [] for k in steps}
  names = list(steps)
  for r in range(reps):
    for k in (names if r % 2 == 0 else names[::-1]):
      t0 = time.perf_counter()
      steps[k]()
      times[k].append(time.perf_counter() - t0)
  return times


def paired_ratio(a: list[float], b: list[float]) -> float:
  """Median over repetitions of a_i / b_i (robust to load drifting across reps)."""
  return statistics.median(x / y for x, y in zip(a, b))


def matmul_peak(n: int = 1024, reps: int = 5) -> dict[str, float]:
  """fp32 n x n matmul GFLOP/s of jax and torch on this CPU, interleaved."""
  import torch
  a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
  ja, ta = jnp.asarray(a), torch.from_numpy(a.copy())
  mm = jax.jit(lambda x: x @ x)
  times = interleave({'jax': lambda: mm(ja).block_until_ready(), 'torch': lambda: ta @ ta},
                     reps, warmup=1)
  return {k: 2 * n ** 3 / statistics.median(v) / 1e9 for k, v in times.items()}


def run_config(name: str, reps: int, profile: bool, peak: dict[str, float]) -> None:
  """Builds, checks and times one config; prints its section of the report."""
  cfg, batch, in_len, tgt_len = CONFIGS[name]
  start = time.perf_counter()
  main = Pair(cfg, batch, in_len, tgt_len, grad_variant=profile)
  steps = dict(main.steps)
  if profile:  # same model with a 512-token vocabulary: what the vocab costs us
    small = Pair(cfg.replace(vocab_size=SMALL_VOCAB), batch, in_len, tgt_len, with_torch=False)
    steps['ours_v512'] = small.steps['ours']
  build_s = time.perf_counter() - start
  (o0, o1), (t0, t1) = main.losses['ours'], main.losses['torch']
  print(f'\n== {name}: d_model {cfg.d_model}, {cfg.num_layers}+{cfg.num_decoder_layers} layers, '
        f'vocab {cfg.vocab_size}, batch {batch}, lengths {in_len}/{tgt_len}, fp32 '
        f'(build + compile + 2 steps each {build_s:.0f}s)')
  print(f'sanity: step-0 loss ours {o0:.6f} torch {t0:.6f} |diff| {abs(o0 - t0):.1e} '
        f'({"OK" if abs(o0 - t0) <= 1e-4 else "MISMATCH"} at 1e-4); after one update '
        f'ours {o1:.6f} torch {t1:.6f} |diff| {abs(o1 - t1):.1e}')
  times = interleave(steps, reps)
  med = {k: statistics.median(v) for k, v in times.items()}
  for who in ('ours', 'torch'):
    print(f'{who:5}: {med[who] * 1e3:8.1f} ms/step (min {min(times[who]) * 1e3:.1f}, '
          f'max {max(times[who]) * 1e3:.1f}, n={reps}) {main.tokens / med[who]:8.0f} tokens/s')
  print(f'ratio ours/torch tokens/s: {med["torch"] / med["ours"]:.2f}x of medians, '
        f'{1 / paired_ratio(times["ours"], times["torch"]):.2f}x median of per-rep ratios')
  if not profile:
    return
  flops, fb_flops = main.flops['step'], main.flops['fwd_bwd']
  # lm_head matmuls: forward 2*N*d*V, backward 4*N*d*V, over the decoder tokens.
  head = 6 * batch * tgt_len * cfg.d_model * cfg.vocab_size
  torch_fb = statistics.median(fb for fb, _ in main.torch_split)
  torch_opt = statistics.median(o / (fb + o) for fb, o in main.torch_split)
  print(f'profile: XLA counts {flops / 1e9:.2f} GFLOP per step, {head / flops:.0%} of it in the '
        f'lm_head matmuls (vocab {cfg.vocab_size})')
  print(f'  GFLOP/s achieved: step ours {flops / med["ours"] / 1e9:.1f}, torch '
        f'{flops / med["torch"] / 1e9:.1f}; fwd+bwd ours {fb_flops / med["ours_grad"] / 1e9:.1f}, '
        f'torch {fb_flops / torch_fb / 1e9:.1f} (1024^3 matmul: jax {peak["jax"]:.1f}, '
        f'torch {peak["torch"]:.1f})')
  opt_share = 1 - paired_ratio(times['ours_grad'], times['ours'])
  vocab_share = 1 - paired_ratio(times['ours_v512'], times['ours'])
  print(f'  ours : fwd+bwd alone {med["ours_grad"] * 1e3:.1f} ms -> clip+AdamW {opt_share:.0%} '
        f'of the step; vocab-{SMALL_VOCAB} step {med["ours_v512"] * 1e3:.1f} ms -> the '
        f'{cfg.vocab_size} vocab (lm_head, softmax, embedding grad, their AdamW) {vocab_share:.0%}')
  print(f'  torch: fwd+bwd {torch_fb * 1e3:.1f} ms, clip+AdamW {torch_opt:.0%} of the step '
        f'(clock split inside the step)')
  print(f'  ratio ours/torch tokens/s on fwd+bwd alone: {torch_fb / med["ours_grad"]:.2f}x')


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  ap.add_argument('--quick', action='store_true',
                  help='tiny only, fewer repetitions (< 2 min); --only=small for the small preset')
  ap.add_argument('--only', choices=sorted(CONFIGS), default=None, help='one config')
  ap.add_argument('--reps', type=int, default=None, help='timed repetitions per variant')
  args = ap.parse_args(argv)
  warnings.filterwarnings('ignore')
  import torch
  from hyperflax import host_memory
  # Set by `import hyperflax` (above), as in every process that imports it; both sides
  # share the process, so torch gets it too. HYPERFLAX_HOST_MALLOC=default: glibc's.
  print(f'host malloc: {host_memory.status()}')
  cores = len(os.sched_getaffinity(0))
  # Same thread count on both sides: XLA:CPU's pool is sized by the usable CPUs.
  torch.set_num_threads(cores)
  print(f'jax {jax.__version__} ({jax.devices()[0].platform}), torch {torch.__version__}; '
        f'usable CPUs {cores} of {os.cpu_count()}, torch.get_num_threads()='
        f'{torch.get_num_threads()}; load average {os.getloadavg()[0]:.1f}')
  peak = matmul_peak()
  print(f'fp32 1024^3 matmul GFLOP/s: jax {peak["jax"]:.1f}, torch {peak["torch"]:.1f}')
  for name in ([args.only] if args.only else ['tiny'] if args.quick else list(CONFIGS)):
    quick_small = args.quick and name == 'small'
    reps = args.reps or (3 if quick_small else 5 if args.quick else 15 if name == 'tiny' else 5)
    run_config(name, reps, not quick_small, peak)
  print(f'\nload average at the end {os.getloadavg()[0]:.1f}')


if __name__ == '__main__':
  main()
