"""Tokenises episodes and packs them into the fixed-shape numpy batches.

Few-shot string (paper appendix A.1), built from ids, not text, so that `<x>`
and `<y>` can never be confused with the characters "<x>" in a dataset:

  [<x> definition] <x> input_1 <y> target_1 <x> input_2 <y> target_2 ... </s>

Fields (B rows; lengths from `Lengths`):
  mode 'hyper':     hyper_inputs [B, Lh], hyper_num_used [B], hyper_num_dropped
                    [B], encoder_inputs [B, Le]
  mode 'concat':    encoder_inputs [B, Lh+Le] = few-shot string + `<x> query </s>`,
                    hyper_num_used, hyper_num_dropped (T5-MTF-Few-shot)
  mode 'zero_shot': encoder_inputs [B, Le] (T5-MTF)
  `query_in_decoder`: targets = `<x> query <y> target </s>` (`query_marks`
                    'none': `query target </s>`), weighted on `target </s>`
                    only (the decoder reads the query, it is not scored on
                    it); in mode 'concat' encoder_inputs = few-shot string +
                    </s> (the query is in the decoder only)
  always:           decoder_inputs [B, Ld] (targets shifted right, 0 first),
                    targets [B, Ld] (target + </s>), target_weights [B, Ld]
  evaluation adds:  task_index, example_index [B] int32, is_padding [B] bool;
  scoring adds:     option_index, label [B] int32 (one row per option).
Tokens are int32 padded with 0; weights float32. Whole demonstrations are
dropped to fit (never cut); any truncation of a query, target or definition is
counted in `DataStats` and logged.
"""

from __future__ import annotations

from array import array
from typing import Iterator, Sequence

import numpy as np

from hyperflax.data.examples import Lengths
from hyperflax.data.fewshot import DataStats, Episode, _stable_hash
from hyperflax.data.vocab import EOS_ID, NUM_EXTRA_IDS, PAD_ID, X_ID, Y_ID, sentinel_id

MODES = ('hyper', 'concat', 'zero_shot')
# How the decoder reads a query with `query_in_decoder`: 'xy' `<x> query <y> target`, 'none'
# `query target` (at the demo's size a model learns to bind from the decoder in ~1,000 steps
# with 'none' and not with 'xy' or `<x> query target`; bench/RESULTS.md, issue 13).
QUERY_MARKS = ('xy', 'none')


def teacher_forcing(targets: np.ndarray, read: np.ndarray | None = None):
  """(decoder inputs, target weights) for [B, T] model-id targets: the targets shifted right
  after a PAD start token; weight 1 on every non-PAD target except positions in `read`
  (bool [B, T]: the decoder reads them, e.g. a query in the decoder, but is not scored)."""
  decoder_inputs = np.concatenate(
      [np.full((targets.shape[0], 1), PAD_ID, np.int32), targets[:, :-1]], axis=1)
  weights = (targets != PAD_ID).astype(np.float32)
  if read is not None:
    weights[np.asarray(read, bool)] = 0.0
  return decoder_inputs, weights


def lookup_head(query_ids: Sequence[int], marks: str) -> list[int]:
  """What the decoder reads of a query before its target (`query_marks`)."""
  return [X_ID, *query_ids, Y_ID] if marks == 'xy' else list(query_ids)


def fewshot_tokens(demos: Sequence[tuple[Sequence[int], Sequence[int]]],
                   definition: Sequence[int] | None, budget: int
                   ) -> tuple[list[int], int, int, bool]:
  """Builds the few-shot id sequence within `budget` ids.

  Args:
    demos: (input ids, target ids) per demonstration, in order.
    definition: instruction ids or None; always kept (truncated only if it
      alone exceeds the budget).
    budget: maximum number of ids (excluding the final EOS).

  Returns:
    (ids, number of demos used, number dropped, whether the definition was
    truncated). A demonstration that does not fit is skipped whole; later,
    shorter ones may still fit.
  """
  out: list[int] = []
  def_truncated = False
  if definition is not None:
    seg = [X_ID, *definition]
    if len(seg) > budget:
      seg, def_truncated = seg[:budget], True
    out.extend(seg)
  used = dropped = 0
  for inp, tgt in demos:
    size = len(inp) + len(tgt) + 2
    if len(out) + size > budget:
      dropped += 1
      continue
    out.append(X_ID)
    out.extend(inp)
    out.append(Y_ID)
    out.extend(tgt)
    used += 1
  return out, used, dropped, def_truncated


def _episode_rng(ep: Episode) -> np.random.Generator:
  """A pure function of the episode (its demonstrations are the step's draw)."""
  return np.random.default_rng([ep.task_index, ep.example_index,
                                _stable_hash(' '.join(d.input for d in ep.demos))])


def pad_to(ids: Sequence[int], length: int) -> np.ndarray:
  arr = np.zeros(length, np.int32)
  arr[:len(ids)] = ids
  return arr


class Converter:
  """Turns episodes into batches for one mode and set of lengths.

  Args:
    tokenizer: a `vocab.Tokenizer` (or anything with `encode`).
    lengths: maximum lengths.
    mode: 'hyper', 'concat' or 'zero_shot'.
    stats: counters for drops and truncations.
    target_eos: append EOS to targets (False for CACLM continuations).
  """

  def __init__(self, tokenizer, lengths: Lengths | None = None,
               mode: str = 'hyper', stats: DataStats | None = None,
               target_eos: bool = True, cache_size: int = 500_000,
               recall_slots: int = 0, query_in_decoder: bool = False,
               decoder_recall: int = 0, query_marks: str = 'xy'):
    if mode not in MODES:
      raise ValueError(f'mode={mode!r}; expected one of {MODES}')
    if not 0 <= recall_slots <= NUM_EXTRA_IDS:
      raise ValueError(f'recall_slots={recall_slots}: expected 0..{NUM_EXTRA_IDS} (sentinels)')
    if recall_slots and mode != 'concat':
      raise ValueError(f'recall_slots={recall_slots} needs mode "concat" (the '
                       f'demonstrations in the encoder), not {mode!r}')
    if decoder_recall and mode == 'zero_shot':
      raise ValueError(f'decoder_recall={decoder_recall} needs demonstrations (mode "concat" '
                       'or "hyper"), not mode "zero_shot"')
    if decoder_recall and not query_in_decoder:
      raise ValueError('decoder_recall needs query_in_decoder (the rows it adds are in that '
                       'format)')
    if recall_slots and query_in_decoder:
      raise ValueError('recall_slots (sentinels in the encoder) and query_in_decoder exclude '
                       'each other; use decoder_recall')
    if query_marks not in QUERY_MARKS:
      raise ValueError(f'query_marks={query_marks!r}: expected one of {QUERY_MARKS}')
    self.query_marks = query_marks
    self.recall_slots = recall_slots
    self.query_in_decoder = query_in_decoder
    self.decoder_recall = decoder_recall
    self.tokenizer = tokenizer
    # A compact id space ('words_compact') maps the marker/sentinel ids of batches
    # and of the public *_ids methods; word ids are the same in both.
    self._to_model = getattr(tokenizer, 'to_model_ids', None) or (lambda ids: ids)
    self.lengths = Lengths.make(lengths)
    self.mode = mode
    self.stats = stats or DataStats()
    self.target_eos = target_eos
    # Compact int32 arrays: a P3-sized cache of python int lists would take
    # ~10x the memory.
    self._cache: dict[str, array] = {}
    self._cache_size = cache_size

  # ---- tokens ---------------------------------------------------------------

  def ids(self, text: str) -> Sequence[int]:
    """Cached encoding (labels and demos recur across episodes)."""
    ids = self._cache.get(text)
    if ids is None:
      if len(self._cache) >= self._cache_size:
        self._cache.clear()
      ids = self._cache[text] = array('i', self.tokenizer.encode(text))
    return ids

  def _eos_truncate(self, ids: Sequence[int], length: int, task: str,
                    kind: str, eos: bool = True) -> list[int]:
    room = length - 1 if eos else length
    if len(ids) > room:
      self.stats.add(task, kind, warn=True)
      ids = ids[:room]
    return [*ids, EOS_ID] if eos else list(ids)

  def query_ids(self, ep: Episode) -> list[int]:
    return self._eos_truncate(self.ids(ep.query.input), self.lengths.encoder,
                              ep.task, 'queries_truncated')

  def target_ids(self, ep: Episode, text: str | None = None) -> list[int]:
    return self.target_and_read(ep, text)[0]

  def target_and_read(self, ep: Episode, text: str | None = None) -> tuple[list[int], int]:
    """Target ids and how many of them the decoder reads unscored (`<x> query <y>`).

    With `query_in_decoder` a query too long for the decoder is cut (counted
    as `queries_truncated`), never the target: a cut target would make every
    option of a query score alike. The cut leaves room for the longest option,
    so every option is scored given the same query.
    """
    text = ep.query.target if text is None else text
    if not self.query_in_decoder:
      return self._eos_truncate(self.ids(text), self.lengths.decoder, ep.task,
                                'targets_truncated', self.target_eos), 0
    target = [*self.ids(text), EOS_ID] if self.target_eos else list(self.ids(text))
    # The same cut for every option of a query: all are scored given the same query.
    longest = max([len(target) - len(self.ids(text))
                   + len(self.ids(t)) for t in (text, *(ep.query.options or ()))])
    room = self.lengths.decoder - longest - len(lookup_head((), self.query_marks))
    if room < 1:
      raise ValueError(f'{ep.task}: decoder length {self.lengths.decoder} leaves no room for '
                       f'the query before a {longest}-id target (query_in_decoder); '
                       f'raise the decoder length (data.lengths[2])')
    query = list(self.ids(ep.query.input))
    if len(query) > room:
      self.stats.add(ep.task, 'queries_truncated', warn=True)
      query = query[:room]
    head = lookup_head(query, self.query_marks)
    return self._to_model([*head, *target]), len(head)

  def fewshot_ids(self, ep: Episode, budget: int) -> tuple[list[int], int, int]:
    demos = [(self.ids(d.input), self.ids(d.target)) for d in ep.demos]
    definition = self.ids(ep.definition) if ep.definition else None
    ids, used, dropped, def_trunc = fewshot_tokens(demos, definition, budget)
    self.stats.add(ep.task, 'demos_dropped_to_fit', dropped, warn=True)
    self.stats.add(ep.task, 'definitions_truncated', int(def_trunc), warn=True)
    return self._to_model(ids), used, dropped

  def hyper_ids(self, ep: Episode) -> tuple[list[int], int, int]:
    ids, used, dropped = self.fewshot_ids(ep, self.lengths.hyper - 1)
    return ids + [EOS_ID], used, dropped

  def encoder_ids(self, ep: Episode) -> tuple[list[int], int, int]:
    """Encoder ids for the mode (with few-shot prefix in 'concat' mode)."""
    if self.mode != 'concat':
      return self.query_ids(ep), 0, 0
    total = self.lengths.concat
    if self.query_in_decoder:
      prefix, used, dropped = self.fewshot_ids(ep, total - 1)
      return prefix + [EOS_ID], used, dropped
    query = self._eos_truncate([X_ID, *self.ids(ep.query.input)],
                               self.lengths.encoder, ep.task,
                               'queries_truncated')
    prefix, used, dropped = self.fewshot_ids(ep, total - len(query))
    return prefix + self._to_model(query), used, dropped

  # ---- batches --------------------------------------------------------------

  def _rows(self, eps: Sequence[Episode], targets: Sequence[str | None]):
    """Field dict of lists for real rows (shared by every batch kind)."""
    cols: dict[str, list] = {'encoder_inputs': [], 'targets': [],
                             'hyper_num_used': [], 'hyper_num_dropped': []}
    if self.mode == 'hyper':
      cols['hyper_inputs'] = []
    if self.query_in_decoder:
      cols['read'] = []
    enc_len = self.lengths.concat if self.mode == 'concat' else self.lengths.encoder
    # Scoring rows of one query share everything but the target: build (and
    # count truncations of) the inputs once per episode.
    memo: dict[int, tuple] = {}
    for ep, text in zip(eps, targets):
      if id(ep) not in memo:
        if self.mode == 'hyper':
          hyp, used, dropped = self.hyper_ids(ep)
          memo[id(ep)] = (pad_to(hyp, self.lengths.hyper), self.query_ids(ep),
                          used, dropped)
        else:
          memo[id(ep)] = (None, *self.encoder_ids(ep))
      hyp, enc, used, dropped = memo[id(ep)]
      if hyp is not None:
        cols['hyper_inputs'].append(hyp)
      cols['encoder_inputs'].append(pad_to(enc, enc_len))
      cols['hyper_num_used'].append(used)
      cols['hyper_num_dropped'].append(dropped)
      target, read = self.target_and_read(ep, text)
      cols['targets'].append(pad_to(target, self.lengths.decoder))
      if self.query_in_decoder:
        cols['read'].append(pad_to([1] * read, self.lengths.decoder))
    return cols

  def _finish(self, cols: dict, batch_size: int) -> dict[str, np.ndarray]:
    n = len(cols['targets'])
    out = {}
    read = cols.pop('read', None)
    for k, rows in cols.items():
      if k in ('encoder_inputs', 'hyper_inputs', 'targets'):
        arr = self._to_model(np.stack(rows).astype(np.int32))
      else:
        arr = np.asarray(rows, dtype=bool if k == 'is_padding' else np.int32)
      if n < batch_size:  # pad the last eval batch with all-zero rows
        pad = np.zeros((batch_size - n,) + arr.shape[1:], arr.dtype)
        if k == 'is_padding':
          pad[:] = True
        arr = np.concatenate([arr, pad])
      out[k] = arr
    if self.mode == 'zero_shot':
      del out['hyper_num_used'], out['hyper_num_dropped']
    mask = None
    if read:  # query_in_decoder: the decoder reads these positions, it is not scored on them
      mask = np.zeros_like(out['targets'], bool)
      mask[:n] = np.stack(read).astype(bool)
    out['decoder_inputs'], out['target_weights'] = teacher_forcing(out['targets'], mask)
    return out

  def train_batch(self, eps: Sequence[Episode]) -> dict[str, np.ndarray]:
    """A training batch: one row per episode."""
    if self.recall_slots:
      return self._recall_batch(eps)
    if self.decoder_recall:
      return self._decoder_recall_batch(eps)
    return self._finish(self._rows(eps, [None] * len(eps)), len(eps))

  def _recall_batch(self, eps: Sequence[Episode]) -> dict[str, np.ndarray]:
    """Few-shot rows with in-context recall (T5 span corruption) added.

    Each row is the 'concat' row of its episode, except that the targets of
    m demonstrations (m uniform in 0..`recall_slots`) are replaced by
    sentinels (fewer when the decoder length cannot hold their answers: a
    sentinel never lacks its answer), and the decoder writes the query's target first and then
    `<extra_id_0> target <extra_id_1> target ... </s>`. A masked target is
    revealed only by the other demonstrations, so one row teaches up to
    1 + `recall_slots` lookups where the few-shot format teaches one; rows
    with m = 0 are exactly 'concat' rows, so the model stays a few-shot model.
    """
    cols: dict[str, list] = {'encoder_inputs': [], 'targets': [],
                             'hyper_num_used': [], 'hyper_num_dropped': []}
    for ep in eps:
      rng = _episode_rng(ep)
      m = int(rng.integers(min(self.recall_slots, len(ep.demos)) + 1))
      masked = sorted(rng.choice(len(ep.demos), size=m, replace=False).tolist())
      query = self._eos_truncate([X_ID, *self.ids(ep.query.input)], self.lengths.encoder,
                                 ep.task, 'queries_truncated')
      enc, tgt, j = [], list(self.ids(ep.query.target)), 0
      for i, ex in enumerate(ep.demos):
        item = [X_ID, *self.ids(ex.input), Y_ID]
        extra = [sentinel_id(j), *self.ids(ex.target)]
        # A masked target is kept in view when its recall would not fit the
        # decoder (room for EOS): no sentinel is ever left without its answer.
        if i in masked and len(tgt) + len(extra) < self.lengths.decoder:
          item.append(extra[0])
          j += 1
        else:
          item += self.ids(ex.target)
          extra = []
        if len(enc) + len(item) + len(query) > self.lengths.concat:
          self.stats.add(ep.task, 'demos_dropped_to_fit', warn=True)
          break
        enc += item
        tgt += extra
      tgt = self._eos_truncate(tgt, self.lengths.decoder, ep.task, 'recall_targets_truncated')
      cols['encoder_inputs'].append(pad_to(enc + query, self.lengths.concat))
      cols['targets'].append(pad_to(tgt, self.lengths.decoder))
      cols['hyper_num_used'].append(len(ep.demos))
      cols['hyper_num_dropped'].append(0)
    return self._finish(cols, len(eps))

  def _decoder_recall_batch(self, eps: Sequence[Episode]) -> dict[str, np.ndarray]:
    """query_in_decoder rows that teach up to 1 + `decoder_recall` lookups each.

    The last m demonstrations (m uniform in 0..`decoder_recall`) leave the
    encoder and are read by the decoder before the query, each scored on its
    target: `<x> in <y> target <x> in <y> target ... <x> query <y> target </s>`.
    Each moved target is revealed only by the demonstrations left in the
    encoder. Rows with m = 0 are the evaluation format. A demonstration whose
    item would not fit the decoder stays in the encoder. In 'hyper' mode the
    kept demonstrations are the hypermodel's input and the encoder holds the
    query, as in that mode's evaluation rows.
    """
    cols: dict[str, list] = {'encoder_inputs': [], 'targets': [], 'read': [],
                             'hyper_num_used': [], 'hyper_num_dropped': []}
    if self.mode == 'hyper':
      cols['hyper_inputs'] = []
    for ep in eps:
      rng = _episode_rng(ep)
      m = int(rng.integers(min(self.decoder_recall, max(len(ep.demos) - 1, 0)) + 1))
      query, q_read = self.target_and_read(ep)
      tgt, read = [], []
      moved = ep.demos[len(ep.demos) - m:] if m else ()
      kept = list(ep.demos[:len(ep.demos) - m])
      for d in moved:
        head, tail = lookup_head(self.ids(d.input), self.query_marks), list(self.ids(d.target))
        if len(tgt) + len(head) + len(tail) + len(query) > self.lengths.decoder:
          kept.append(d)
          continue
        tgt += head + tail
        read += [1] * len(head) + [0] * len(tail)
      tgt += query
      read += [1] * q_read + [0] * (len(query) - q_read)
      # The evaluation row's inputs with the kept demonstrations.
      rest = Episode(ep.task, ep.query, tuple(kept), ep.definition)
      if self.mode == 'hyper':
        hyp, used, dropped = self.hyper_ids(rest)
        cols['hyper_inputs'].append(pad_to(hyp, self.lengths.hyper))
        cols['encoder_inputs'].append(pad_to(self.query_ids(ep), self.lengths.encoder))
      else:
        prefix, used, dropped = self.fewshot_ids(rest, self.lengths.concat - 1)
        cols['encoder_inputs'].append(pad_to(prefix + [EOS_ID], self.lengths.concat))
      cols['targets'].append(pad_to(tgt, self.lengths.decoder))
      cols['read'].append(pad_to(read, self.lengths.decoder))
      cols['hyper_num_used'].append(used)
      cols['hyper_num_dropped'].append(dropped)
    return self._finish(cols, len(eps))

  def generation_batches(self, eps: Sequence[Episode], batch_size: int
                         ) -> Iterator[dict[str, np.ndarray]]:
    """Ordered eval batches, one row per query; the last is padded."""
    if self.query_in_decoder:
      # Greedy decoding would start without the query; a forced decoder prefix is not built.
      raise ValueError('query_in_decoder supports rank classification only: set '
                       'eval.also_generate=False and evaluate tasks with options')
    for start in range(0, len(eps), batch_size):
      chunk = eps[start:start + batch_size]
      cols = self._rows(chunk, [None] * len(chunk))
      cols['task_index'] = [e.task_index for e in chunk]
      cols['example_index'] = [e.example_index for e in chunk]
      cols['is_padding'] = [False] * len(chunk)
      yield self._finish(cols, batch_size)

  def choice_batches(self, eps: Sequence[Episode], batch_size: int
                     ) -> Iterator[dict[str, np.ndarray]]:
    """Rank-classification batches: one row per (query, option).

    `targets` hold the option; the scorer sums log-probabilities over
    `target_weights`, groups rows by `example_index` and compares the argmax
    `option_index` with `label`. Padding rows have `is_padding` True.
    """
    rows = [(ep, j, opt) for ep in eps for j, opt in enumerate(ep.query.options)]
    missing = [ep for ep in eps if not ep.query.options]
    if missing:
      raise ValueError(f'{missing[0].task}: query {missing[0].example_index} '
                       f'({missing[0].query.origin}) has no options to score')
    for start in range(0, len(rows), batch_size):
      chunk = rows[start:start + batch_size]
      cols = self._rows([r[0] for r in chunk], [r[2] for r in chunk])
      cols['task_index'] = [r[0].task_index for r in chunk]
      cols['example_index'] = [r[0].example_index for r in chunk]
      cols['option_index'] = [r[1] for r in chunk]
      cols['label'] = [r[0].query.label for r in chunk]
      cols['is_padding'] = [False] * len(chunk)
      yield self._finish(cols, batch_size)
