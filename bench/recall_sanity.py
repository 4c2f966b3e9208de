r"""Can our T5 bind in context at all? Pure associative recall on a compact vocabulary.

  python bench/recall_sanity.py --steps=3000 --out=/tmp/recall.json

Each row is a fresh random map: the encoder reads `k1 v1 k2 v2 ... kN vN ; q`
(N distinct keys, values drawn with replacement) and the decoder must write the
value of key `q`, which is one of the N keys. Nothing but the row reveals the
map, so a model at chance (1 / number of values) has not learned to bind; one
near 100% has. This separates "the implementation cannot bind" from "the suite
and budget are too small to learn it" (RESULTS, issue 13). It uses the library's
`T5` module and fused cross-entropy unchanged, with the demo's width and depth
and a vocabulary of 3 + keys + 64 held-out keys + values ids.

Accuracy is measured on fresh rows with keys from the training pool and with
keys never trained on (their embeddings are still at initialisation), the
situation of the held-out family `lookup_pseudo`.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from hyperflax.model import transformer, xent  # noqa: E402
from hyperflax.model.config import T5Config  # noqa: E402

PAD, EOS, SEP = 0, 1, 2


def make_rows(rng, batch, pairs, key_ids, value_ids, queries=1, min_pairs=None,
              repeats=1, filler_ids=None, row_values=0, marks=None):
  """[batch, width*pairs*repeats+1+queries] encoder ids (padded), [batch, queries] answers.

  A row holds between `min_pairs` and `pairs` keys (default: exactly `pairs`), each
  stated `repeats` times in shuffled order; with `filler_ids` an item is `key filler
  value` (the suite's `<key> <n>` inputs); with `row_values` the row's values come
  from that many values (the suite's lookup: 4 keys, 3 labels, 16 demonstrations);
  with `marks=(x, y)` each item starts with x (the suite's `<x> key <y> label`, with
  `filler_ids=[y]`).
  """
  width = 2 + (filler_ids is not None) + (marks is not None)
  enc = np.zeros((batch, width * pairs * repeats + 1 + queries), np.int32)
  ans = np.zeros((batch, queries), np.int32)
  for b in range(batch):
    n = pairs if min_pairs is None else int(rng.integers(min_pairs, pairs + 1))
    keys = rng.choice(key_ids, size=n, replace=False)
    pool = rng.choice(value_ids, size=row_values, replace=False) if row_values else value_ids
    vals = rng.choice(pool, size=n, replace=True)
    order = rng.permutation(np.repeat(np.arange(n), repeats))
    items = [[*(marks[:1] if marks else []), keys[j],
              *([rng.choice(filler_ids)] if filler_ids is not None else []), vals[j]]
             for j in order]
    flat = [t for item in items for t in item]
    enc[b, :len(flat)] = flat
    enc[b, len(flat)] = SEP
    q = rng.integers(n, size=queries)
    enc[b, len(flat) + 1:len(flat) + 1 + queries], ans[b] = keys[q], vals[q]
  return enc, ans


def run(steps, pairs, n_keys, n_values, batch, lr, seed, layers, d_model, eval_every, log,
        queries=1, min_pairs=None, decoder_queries=False, then_encoder_steps=0,
        repeats=1, fillers=0, row_values=0, then_fillers=0, then_steps=0, suite_format=False,
        decoder_marks='xy'):
  heldout_keys = 64
  key_ids = np.arange(3, 3 + n_keys)
  new_keys = np.arange(3 + n_keys, 3 + n_keys + heldout_keys)
  value_ids = np.arange(3 + n_keys + heldout_keys, 3 + n_keys + heldout_keys + n_values)
  filler_ids = np.arange(int(value_ids[-1]) + 1, int(value_ids[-1]) + 1 + fillers) \
      if fillers else None
  layout = dict(repeats=repeats, filler_ids=filler_ids, row_values=row_values)
  # A second phase (`then_steps`) with `then_fillers` filler ids between key and value.
  later = dict(layout, filler_ids=(np.arange(int(value_ids[-1]) + 1,
                                             int(value_ids[-1]) + 1 + then_fillers)
                                   if then_fillers else None))
  vocab = int(value_ids[-1]) + 1 + max(fillers, then_fillers)
  marks, dmarks = None, ''
  if suite_format:
    # The suite's markers: items `<x> key [<y>] value`, lookups `<x> q <y> a` in the decoder;
    # a second phase's separator is <y> itself.
    if not decoder_queries or fillers or then_fillers > 1:
      raise ValueError('--suite_format needs --decoder_queries, no --fillers, --then_fillers<=1')
    marks = (vocab, vocab + 1)
    dmarks = decoder_marks
    vocab += 2
    layout['marks'] = marks
    later = dict(layout, filler_ids=[marks[1]] if then_fillers else None)
  cfg = T5Config(vocab_size=vocab, d_model=d_model, d_kv=d_model // 4, d_ff=2 * d_model,
                 num_heads=4, num_layers=layers, num_decoder_layers=layers, dropout_rate=0.0)
  model = transformer.T5(cfg)
  params = transformer.init_params(cfg, jax.random.PRNGKey(seed))
  tx = optax.adamw(optax.join_schedules(
      [optax.linear_schedule(0.0, lr, 100), optax.constant_schedule(lr)], [100]),
      weight_decay=0.0)
  opt = tx.init(params)

  def pairs_only(enc):
    pos = jnp.arange(enc.shape[1])[None]
    return jnp.where(pos < jnp.argmax(enc == SEP, axis=1)[:, None], enc, PAD)

  def query_keys(enc, n):
    idx = jnp.argmax(enc == SEP, axis=1)[:, None] + 1 + jnp.arange(n)[None]
    return jnp.take_along_axis(enc, idx, 1)

  def loss_fn(p, enc, ans, decoder_queries):
    ones = jnp.ones_like(ans[:, :1])
    if decoder_queries:
      # Decoder sequence q1 a1 q2 a2 ... </s> (suite format: <x> q1 <y> a1 ...): every
      # answer is a lookup; keys are given.
      qs = query_keys(enc, ans.shape[1])
      cols = [*([qs * 0 + marks[0]] if 'x' in dmarks else []), qs,
              *([qs * 0 + marks[1]] if 'y' in dmarks else []), ans]
      seq = jnp.stack(cols, 2).reshape(ans.shape[0], -1)
      targets = jnp.concatenate([seq, ones * EOS], 1)
      weights = jnp.concatenate([jnp.tile(jnp.array([0.0] * (len(cols) - 1) + [1.0]),
                                          ans.shape[1])[None]
                                 * jnp.ones_like(ans[:, :1], jnp.float32),
                                 jnp.ones_like(ans[:, :1], jnp.float32)], 1)
      enc = pairs_only(enc)
    else:
      targets = jnp.concatenate([ans, ones * EOS], 1)
      weights = jnp.ones_like(targets, jnp.float32)
    dec_in = jnp.concatenate([ones * PAD, targets[:, :-1]], 1)
    h = model.apply({'params': p}, enc, dec_in, return_hidden=True)
    total, count = xent.loss_sums(h, xent.lm_head_kernel(p), targets, weights)
    return total / count

  @functools.partial(jax.jit, static_argnums=4)
  def step(p, o, enc, ans, decoder_queries):
    loss, g = jax.value_and_grad(loss_fn)(p, enc, ans, decoder_queries)
    upd, o = tx.update(g, o, p)
    return optax.apply_updates(p, upd), o, loss

  @functools.partial(jax.jit, static_argnums=2)
  def predict(p, enc, decoder_queries):
    if decoder_queries:
      q = query_keys(enc, 1)
      head = [*([q * 0 + marks[0]] if 'x' in dmarks else []), q,
              *([q * 0 + marks[1]] if 'y' in dmarks else [])]
      dec_in = jnp.concatenate([jnp.zeros((enc.shape[0], 1), jnp.int32), *head], 1)
      logits = model.apply({'params': p}, pairs_only(enc), dec_in)[:, len(head)]
    else:
      dec_in = jnp.zeros((enc.shape[0], 1), jnp.int32)
      logits = model.apply({'params': p}, enc, dec_in)[:, 0]
    masked = jnp.full_like(logits, -1e9).at[:, value_ids].set(logits[:, value_ids])
    return jnp.argmax(masked, -1)

  rng = np.random.default_rng(seed)
  eval_rng = np.random.default_rng(seed + 1000)
  eval_sets = [{name: make_rows(eval_rng, 512, pairs, ids, value_ids, **lay)
                for name, ids in (('trained_keys', key_ids), ('new_keys', new_keys))}
               for lay in (layout, later)]
  curve, t0, losses = [], time.time(), []
  if then_steps and then_encoder_steps:
    raise ValueError('then_steps and then_encoder_steps are two different second phases')
  total = steps + then_encoder_steps + then_steps
  for i in range(1, total + 1):
    phase2 = then_steps and i > steps
    evals = eval_sets[1 if phase2 else 0]
    dq = decoder_queries and (i <= steps or bool(phase2))
    enc, ans = make_rows(rng, batch, pairs, key_ids, value_ids, queries, min_pairs,
                         **(later if phase2 else layout))
    params, opt, loss = step(params, opt, enc, ans, dq)
    losses.append(float(loss))
    if i % eval_every == 0 or i == total:
      row = {'step': i, 'loss': float(np.mean(losses[-eval_every:])), 'seconds': time.time() - t0,
             'decoder_queries': dq}
      for name, (e, a) in evals.items():
        row[name] = 100.0 * float(np.mean(np.asarray(predict(params, e, dq)) == a[:, 0]))
      curve.append(row)
      log(f"step {i} loss {row['loss']:.3f} acc trained keys {row['trained_keys']:.1f} "
          f"new keys {row['new_keys']:.1f} (chance {100 / n_values:.1f}) "
          f"{'decoder' if dq else 'encoder'} queries {row['seconds']:.0f}s")
  return {'config': dict(steps=steps, pairs=pairs, n_keys=n_keys, n_values=n_values, batch=batch,
                         lr=lr, seed=seed, layers=layers, d_model=d_model, vocab=vocab,
                         queries=queries, min_pairs=min_pairs,
                         decoder_queries=decoder_queries,
                         then_encoder_steps=then_encoder_steps, repeats=repeats,
                         then_steps=then_steps, then_fillers=then_fillers,
                         fillers=fillers, row_values=row_values, suite_format=suite_format,
                         decoder_marks=dmarks),
          'chance': 100.0 / n_values, 'curve': curve}


def run_torch(steps, pairs, n_keys, n_values, batch, lr, seed, layers, d_model, eval_every, log):
  """The same single-query task on transformers' torch T5 (the independent reference)."""
  import torch
  from transformers import T5Config as HFConfig, T5ForConditionalGeneration
  torch.manual_seed(seed)
  torch.set_num_threads(1)
  key_ids = np.arange(3, 3 + n_keys)
  value_ids = np.arange(3 + n_keys + 64, 3 + n_keys + 64 + n_values)
  cfg = HFConfig(vocab_size=int(value_ids[-1]) + 1, d_model=d_model, d_kv=d_model // 4,
                 d_ff=2 * d_model, num_heads=4, num_layers=layers, num_decoder_layers=layers,
                 feed_forward_proj='gated-gelu', tie_word_embeddings=False, dropout_rate=0.0,
                 decoder_start_token_id=PAD, pad_token_id=PAD, eos_token_id=EOS)
  model = T5ForConditionalGeneration(cfg)
  # transformers 5 ties lm_head to the embedding whatever the config says; T5 v1.1 (and our
  # T5) has its own, initialised with std d_model ** -0.5.
  with torch.no_grad():
    model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.lm_head.weight)
                                              * d_model ** -0.5)
  model.config.tie_word_embeddings = False
  assert model.lm_head.weight.data_ptr() != model.shared.weight.data_ptr()
  opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
  sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 100))
  rng, eval_rng = np.random.default_rng(seed), np.random.default_rng(seed + 1000)
  ev_enc, ev_ans = make_rows(eval_rng, 512, pairs, key_ids, value_ids)
  curve, losses, t0 = [], [], time.time()
  for i in range(1, steps + 1):
    enc, ans = make_rows(rng, batch, pairs, key_ids, value_ids)
    labels = np.concatenate([ans, np.full_like(ans[:, :1], EOS)], 1)
    loss = model(input_ids=torch.tensor(enc, dtype=torch.long),
                 labels=torch.tensor(labels, dtype=torch.long)).loss
    opt.zero_grad()
    loss.backward()
    opt.step()
    sched.step()
    losses.append(loss.item())
    if i % eval_every == 0 or i == steps:
      with torch.no_grad():
        logits = model(input_ids=torch.tensor(ev_enc, dtype=torch.long),
                       decoder_input_ids=torch.zeros((len(ev_enc), 1), dtype=torch.long)).logits
      pred = value_ids[logits[:, 0, value_ids].argmax(-1).numpy()]
      row = {'step': i, 'loss': float(np.mean(losses[-eval_every:])),
             'seconds': time.time() - t0,
             'trained_keys': 100.0 * float(np.mean(pred == ev_ans[:, 0]))}
      curve.append(row)
      log(f"[torch] step {i} loss {row['loss']:.3f} acc trained keys "
          f"{row['trained_keys']:.1f} (chance {100 / n_values:.1f}) {row['seconds']:.0f}s")
  return {'config': dict(steps=steps, pairs=pairs, n_keys=n_keys, n_values=n_values, batch=batch,
                         lr=lr, seed=seed, layers=layers, d_model=d_model, reference='torch'),
          'chance': 100.0 / n_values, 'curve': curve}


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  ap.add_argument('--steps', type=int, default=3000)
  ap.add_argument('--pairs', type=int, default=8)
  ap.add_argument('--keys', type=int, default=40)
  ap.add_argument('--values', type=int, default=12)
  ap.add_argument('--queries', type=int, default=1,
                  help='query keys per row, all answered by the decoder (denser supervision)')
  ap.add_argument('--min_pairs', type=int, default=None,
                  help='training rows hold min_pairs..pairs pairs (a curriculum by mixing); '
                       'evaluation rows always hold --pairs')
  ap.add_argument('--decoder_queries', action='store_true',
                  help='the query keys go to the decoder (q1 a1 q2 a2 ...), the pairs stay in '
                       'the encoder: binding is then one cross-attention lookup')
  ap.add_argument('--then_encoder_steps', type=int, default=0,
                  help='after --steps, this many steps with the queries back in the encoder')
  ap.add_argument('--repeats', type=int, default=1,
                  help='each pair is stated this many times, shuffled (the suite: 4 keys x ~4)')
  ap.add_argument('--fillers', type=int, default=0,
                  help='items are `key filler value` with one of this many filler ids')
  ap.add_argument('--row_values', type=int, default=0,
                  help="a row's values come from this many values (the suite's lookup: 3)")
  ap.add_argument('--then_steps', type=int, default=0,
                  help='after --steps, this many steps with --then_fillers fillers (a curriculum)')
  ap.add_argument('--then_fillers', type=int, default=0)
  ap.add_argument('--suite_format', action='store_true',
                  help="items `<x> key value` (then `<x> key <y> value` with --then_fillers=1), "
                       "decoder lookups `<x> q <y> a`: the suite's markers")
  ap.add_argument('--decoder_marks', choices=('xy', 'x', 'none'), default='xy',
                  help='with --suite_format: the markers of a decoder lookup (x: `<x> q a`)')
  ap.add_argument('--batch', type=int, default=32)
  ap.add_argument('--lr', type=float, default=1e-3)
  ap.add_argument('--layers', type=int, default=2)
  ap.add_argument('--d_model', type=int, default=128)
  ap.add_argument('--seed', type=int, default=0)
  ap.add_argument('--eval_every', type=int, default=250)
  ap.add_argument('--out', default='')
  ap.add_argument('--reference', choices=('ours', 'torch'), default='ours',
                  help="torch: transformers' T5 on the single-query task (no other options)")
  a = ap.parse_args(argv)
  if a.reference == 'torch':
    res = run_torch(a.steps, a.pairs, a.keys, a.values, a.batch, a.lr, a.seed, a.layers,
                    a.d_model, a.eval_every, lambda s: print(s, flush=True))
    if a.out:
      Path(a.out).write_text(json.dumps(res, indent=1))
    return
  res = run(a.steps, a.pairs, a.keys, a.values, a.batch, a.lr, a.seed, a.layers, a.d_model,
            a.eval_every, lambda s: print(s, flush=True), a.queries,
            a.min_pairs, a.decoder_queries, a.then_encoder_steps, a.repeats, a.fillers,
            a.row_values, a.then_fillers, a.then_steps, a.suite_format,
            a.decoder_marks.replace('none', ''))
  if a.out:
    Path(a.out).write_text(json.dumps(res, indent=1))


if __name__ == '__main__':
  main()
