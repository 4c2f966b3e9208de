"""Context-Augmented Conditional Language Modeling (paper §4.2).

A window of `a + b + c + d` tokens (512 by default) is cut from a document
into consecutive segments A, B, C, D. The downstream model reads B (32 tokens)
and predicts C; the hypermodel reads A and D, each after its sentinel:

  hyper_inputs   = <extra_id_0> A <extra_id_1> D </s>
  encoder_inputs = B </s>
  targets        = C           (a mid-document continuation: no EOS)

Every window lies inside ONE document: the paper's A and D are "additional
context from the same document", so windows never straddle a document
boundary. Documents shorter than the window cannot hold one and are skipped,
never padded or joined: in-memory corpora drop them when tokenised (counted
and logged: 708 of the shared 1000-document C4 sample, whose median is 279
tokens, are shorter than 512),
and a streamed corpus moves a row whose document is short on to the next
document that holds a window (counted as `rows_moved_past_short_documents`;
neighbouring rows may then share a document, at independent offsets).

Row `r` (= step * batch_size + b) of the stream uses document `r` of a fixed
document order (per-epoch seeded permutations for in-memory corpora, TFDS's
seeded order for C4), and the window offset is drawn from
`default_rng([seed, r])`. So a batch is a pure function of (seed, step); an
in-memory corpus resumes anywhere at no cost and a streamed one by skipping
`step * batch_size` raw documents without tokenising them.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
from typing import Callable, Iterator, Sequence

import numpy as np

from hyperflax.data.converters import pad_to
from hyperflax.data.examples import Lengths
from hyperflax.data.fewshot import DataStats
from hyperflax.data.vocab import EOS_ID, PAD_ID, SEGMENT_A_ID, SEGMENT_D_ID

log = logging.getLogger('hyperflax.data')


@dataclasses.dataclass(frozen=True)
class Segments:
  """Segment lengths A, B, C, D (paper: 512 tokens in total, B = 32)."""
  a: int = 176
  b: int = 32
  c: int = 128
  d: int = 176

  @property
  def window(self) -> int:
    return self.a + self.b + self.c + self.d

  def check(self, lengths: Lengths) -> None:
    need = {'hyper': self.a + self.d + 3, 'encoder': self.b + 1,
            'decoder': self.c}
    for k, v in need.items():
      if getattr(lengths, k) < v:
        raise ValueError(f'CACLM segments {self} need lengths.{k} >= {v}, got '
                         f'{getattr(lengths, k)}')


class InMemoryDocs:
  """Random access to tokenised documents, one seeded permutation per epoch."""

  def __init__(self, docs: Sequence[np.ndarray], seed: int):
    if not docs:
      raise ValueError('CACLM corpus has no documents')
    self.docs, self.seed = docs, seed
    self._perms: dict[int, np.ndarray] = {}

  def __getitem__(self, i: int) -> np.ndarray:
    epoch, pos = divmod(i, len(self.docs))
    if epoch not in self._perms:
      if len(self._perms) > 4:
        self._perms.clear()
      self._perms[epoch] = np.random.default_rng(
          [self.seed, epoch, 7]).permutation(len(self.docs))
    return self.docs[self._perms[epoch][pos]]


class StreamedDocs:
  """Sequential access to a document stream that can start at any index.

  Args:
    open_at: `open_at(i)` returns an iterator of texts starting at document i.
    tokenize: text -> ids.
    start: first document index needed.
  """

  def __init__(self, open_at: Callable[[int], Iterator[str]],
               tokenize: Callable[[str], list[int]], start: int = 0):
    self._it = open_at(start)
    self._tokenize = tokenize
    self._buf: collections.deque = collections.deque()
    self._base = start  # index of _buf[0]

  def __getitem__(self, i: int) -> np.ndarray:
    if i < self._base:
      raise IndexError(f'streamed document {i} already consumed')
    while i >= self._base + len(self._buf):
      self._buf.append(np.asarray(self._tokenize(next(self._it)), np.int32))
    return self._buf[i - self._base]

  def release_before(self, i: int) -> None:
    while self._buf and self._base < i:
      self._buf.popleft()
      self._base += 1


class CaclmStream:
  """Infinite CACLM batches.

  Args:
    docs: `InMemoryDocs` or `StreamedDocs`.
    batch_size: rows per batch.
    seed: seeds window offsets.
    lengths: padded lengths of the batch fields.
    segments: A-D lengths.
    start_step: first step to yield.
    name: for logs.
    max_fill_docs: how many short documents in a row a streamed row may skip.
    stats: counters (shared with the corpus reader).
  """

  def __init__(self, docs, batch_size: int, seed: int = 0,
               lengths: Lengths | None = None,
               segments: Segments | None = None, start_step: int = 0,
               name: str = 'caclm', max_fill_docs: int = 64,
               stats: DataStats | None = None, to_model_ids=None):
    self.docs, self.batch_size, self.seed = docs, batch_size, seed
    self.to_model_ids = to_model_ids or (lambda ids: ids)  # a compact tokenizer's id map
    self.segments = segments or Segments()
    self.lengths = Lengths.make(lengths) if lengths is not None else Lengths(
        hyper=self.segments.a + self.segments.d + 3,
        encoder=self.segments.b + 1, decoder=self.segments.c)
    self.segments.check(self.lengths)
    self.start_step = start_step
    self.stats = stats or DataStats(name)
    self.max_fill_docs = max_fill_docs

  def window(self, row: int) -> np.ndarray:
    """The `window`-token span of global row `row`, inside one document."""
    w = self.segments.window
    j = row
    while len(self.docs[j]) < w:  # only streamed corpora still hold short ones
      j += 1
      if j - row >= self.max_fill_docs:
        raise ValueError(f'CACLM: {self.max_fill_docs} consecutive documents '
                         f'are shorter than the {w}-token window')
    if j > row:
      self.stats.add('caclm', 'rows_moved_past_short_documents')
    tokens = self.docs[j]
    offset = np.random.default_rng([self.seed, row]).integers(
        0, len(tokens) - w + 1)
    return tokens[offset:offset + w]

  def batch(self, step: int) -> dict[str, np.ndarray]:
    s, L = self.segments, self.lengths
    hyper, enc, tgt = [], [], []
    for b in range(self.batch_size):
      win = self.window(step * self.batch_size + b).tolist()
      a, bb = win[:s.a], win[s.a:s.a + s.b]
      c, d = win[s.a + s.b:s.a + s.b + s.c], win[s.a + s.b + s.c:]
      hyper.append(pad_to([SEGMENT_A_ID, *a, SEGMENT_D_ID, *d, EOS_ID], L.hyper))
      enc.append(pad_to([*bb, EOS_ID], L.encoder))
      tgt.append(pad_to(c, L.decoder))
    targets = self.to_model_ids(np.stack(tgt))
    n = self.batch_size
    return {
        'hyper_inputs': self.to_model_ids(np.stack(hyper)),
        'hyper_num_used': np.full(n, 2, np.int32),
        'hyper_num_dropped': np.zeros(n, np.int32),
        'encoder_inputs': self.to_model_ids(np.stack(enc)),
        'decoder_inputs': np.concatenate(
            [np.full((n, 1), PAD_ID, np.int32), targets[:, :-1]], 1),
        'targets': targets,
        'target_weights': (targets != PAD_ID).astype(np.float32),
    }

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    step = self.start_step
    while True:
      yield self.batch(step)
      if hasattr(self.docs, 'release_before'):
        self.docs.release_before((step + 1) * self.batch_size)
      step += 1
      if step % 1000 == 0:
        self.stats.log_summary()


def tokenize_corpus(texts: Sequence[str], tokenizer, min_tokens: int = 1,
                    stats: DataStats | None = None) -> list[np.ndarray]:
  """Tokenises documents (batched), skipping those shorter than `min_tokens`
  (the window: a window never spans two documents); skips are counted in
  `stats` (`short_documents_skipped`) and logged."""
  ids = tokenizer.encode_batch(list(texts))
  out = [np.asarray(x, np.int32) for x in ids if len(x) >= max(min_tokens, 1)]
  skipped = len(ids) - len(out)
  if stats is not None:
    stats.add('caclm', 'short_documents_skipped', skipped)
  if skipped:
    log.info('CACLM: %d of %d documents skipped: shorter than the %d-token '
             'window (windows are cut from one document)', skipped, len(ids),
             min_tokens)
  if not out:
    raise ValueError(f'CACLM: none of the {len(ids)} documents holds a '
                     f'{min_tokens}-token window')
  return out
