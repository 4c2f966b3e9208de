"""In-context recall in the synthetic suite's words: the stage that teaches a T5 to bind.

Each row states `pairs` keys with their values and asks for `queries` of them in the
decoder, in the suite's `query_in_decoder` format:

  encoder   <x> k1 v1 <x> k2 v2 ... </s>            (separated=True: <x> k1 <y> v1 ...)
  decoder   <x> q1 <y> a1 <x> q2 <y> a2 ... </s>    scored on the answers and </s>
                                                    (query_marks='none': q1 a1 q2 a2 ... </s>)

Keys are the suite's training keys (`synthetic.TRAIN_KEYS`: animals and pseudo-words, never a
held-out family's), values its first `num_labels` output words, and every row is a fresh random
map, so nothing but the row answers a query. `RecallStream`'s mode 'hyper' and `stated_in`
move the pairs to the hypermodel or to the decoder (issue 13's binding experiments). At the
demo's size T5 learns this in about a
thousand steps when each key is next to its value, but not from scratch when one token (the
suite's `<y>`) separates them; a model that has bound adjacent pairs binds separated ones within
a few hundred steps (bench/RESULTS.md, issue 13). So `synthetic_recall` is a curriculum stage
before `synthetic_fewshot` with `query_in_decoder` + `decoder_recall`, whose lookups have the
same decoder format.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from hyperflax.data.converters import QUERY_MARKS, lookup_head, pad_to, teacher_forcing
from hyperflax.data.examples import Lengths
from hyperflax.data.vocab import EOS_ID, X_ID, Y_ID


STATED_IN = ('encoder', 'decoder', 'mixed')


class RecallStream:
  """Infinite recall batches; batch n is a pure function of (seed, n).

  Mode 'concat' states the pairs in the T5's encoder (a curriculum stage for the T5). Mode
  'hyper' gives them to the hypermodel instead and the downstream encoder only `</s>` (the
  suite's hyper rows give it `query </s>`; a recall row has several queries, all in the
  decoder), so the generated parameters alone must carry every key's value: the recall
  analogue of the papers' hyperpretraining, for HyperT5-Prefix and -LoRA.

  `stated_in='decoder'` (mode 'concat') states the pairs in the decoder instead, unscored and in
  the lookups' format, before the lookups (`k1 v1 k2 v2 q1 a1 ...`), with only `</s>` in the
  encoder: recall through the decoder's self-attention, the sites HyperT5-Prefix's prefixes and
  HyperT5-LoRA's self-attention deltas write. `'mixed'` draws encoder or decoder per row.
  """

  def __init__(self, tokenizer, lengths: Lengths, batch_size: int, seed: int,
               start_step: int = 0, keys=(), values=(), pairs: int = 4, queries: int = 8,
               separated: bool = False, query_marks: str = 'xy', mode: str = 'concat',
               stated_in: str = 'encoder'):
    if mode not in ('concat', 'hyper'):
      raise ValueError(f'synthetic_recall: mode {mode!r}; expected "concat" or "hyper"')
    if stated_in not in STATED_IN or (stated_in != 'encoder' and mode != 'concat'):
      raise ValueError(f'synthetic_recall: stated_in={stated_in!r}; expected one of '
                       f'{STATED_IN} ("decoder" and "mixed" in mode "concat" only)')
    if pairs < 1 or pairs > len(keys):
      raise ValueError(f'synthetic_recall: pairs={pairs}; expected 1..{len(keys)}')
    if queries < 1:
      raise ValueError(f'synthetic_recall: queries={queries}; expected at least 1')
    if query_marks not in QUERY_MARKS:
      raise ValueError(f'synthetic_recall: query_marks={query_marks!r}; expected one of '
                       f'{QUERY_MARKS}')
    self._marks = query_marks
    self._to_model = getattr(tokenizer, 'to_model_ids', None) or (lambda ids: ids)
    self._keys = [list(tokenizer.encode(k)) for k in keys]
    self._values = [list(tokenizer.encode(v)) for v in values]
    self.lengths, self.batch_size, self.seed = lengths, batch_size, seed
    self.start_step, self.pairs, self.queries = start_step, pairs, queries
    self.separated, self.mode, self.stated_in = separated, mode, stated_in
    # The longest row must fit: a cut row would ask for a key it no longer states.
    k = max(map(len, self._keys))
    v = max(map(len, self._values))
    enc = pairs * (1 + k + separated + v) + 1
    dec = (queries + pairs * (stated_in != 'encoder')) * (
        len(lookup_head((), query_marks)) + k + v) + 1
    # Where the pairs are stated: the hypermodel's input or the T5's (concatenated) encoder.
    self._stated_len = lengths.hyper if mode == 'hyper' else lengths.concat
    where = 'hypermodel' if mode == 'hyper' else 'encoder'
    if enc > self._stated_len or dec > lengths.decoder:
      raise ValueError(
          f'synthetic_recall: a row needs up to {enc} {where} and {dec} decoder ids '
          f'(pairs={pairs}, queries={queries}); data.lengths give {self._stated_len} and '
          f'{lengths.decoder}: raise data.lengths or lower the options')

  def batch(self, step: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([self.seed, step, 31])
    enc_rows, tgt_rows, read_rows = [], [], []
    for _ in range(self.batch_size):
      keys = rng.choice(len(self._keys), size=self.pairs, replace=False)
      vals = rng.integers(len(self._values), size=self.pairs)
      enc = []
      for k, v in zip(keys, vals):
        enc += [X_ID, *self._keys[k], *([Y_ID] if self.separated else []), *self._values[v]]
      tgt, read = [], []
      if self.stated_in == 'decoder' or (self.stated_in == 'mixed' and rng.random() < 0.5):
        for k, v in zip(keys, vals):
          tgt += lookup_head(self._keys[k], self._marks) + self._values[v]
        read, enc = [1] * len(tgt), []
      for j in rng.integers(self.pairs, size=self.queries):
        head = lookup_head(self._keys[keys[j]], self._marks)
        tgt += head + self._values[vals[j]]
        read += [1] * len(head) + [0] * len(self._values[vals[j]])
      enc_rows.append(pad_to(enc + [EOS_ID], self._stated_len))
      tgt_rows.append(pad_to(tgt + [EOS_ID], self.lengths.decoder))
      read_rows.append(pad_to(read, self.lengths.decoder))
    targets = np.asarray(self._to_model(np.asarray(tgt_rows, np.int32)), np.int32)
    decoder_inputs, weights = teacher_forcing(targets, np.asarray(read_rows, bool))
    n = self.batch_size
    stated = np.asarray(self._to_model(np.asarray(enc_rows, np.int32)), np.int32)
    if self.mode == 'hyper':  # the hypermodel reads the pairs; the downstream only the lookups
      fields = {'hyper_inputs': stated,
                'encoder_inputs': np.asarray(self._to_model(np.asarray(
                    [pad_to([EOS_ID], self.lengths.encoder)] * n, np.int32)), np.int32)}
    else:
      fields = {'encoder_inputs': stated}
    return {
        **fields,
        'decoder_inputs': decoder_inputs, 'targets': targets, 'target_weights': weights,
        'hyper_num_used': np.full(n, self.pairs, np.int32),
        'hyper_num_dropped': np.zeros(n, np.int32)}

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    step = self.start_step
    while True:
      yield self.batch(step)
      step += 1
