"""Built-in synthetic few-shot suite: the embedded default (`synthetic_fewshot`).

Every task is a random rule that only its demonstrations reveal, so a model
that reads the query alone is at chance, while one that reads the
demonstrations can be exact. Inputs and outputs are a few words from lists
written here, so tiny models learn the skill in minutes.

Families (input layout -> output; options for rank classification; chance):
  seen, split into training tasks and held-out tasks:
    lookup      "<animal> <n>"        -> the task's label for the animal
                (4 keys, 3 labels drawn from LABELS)              1/3
    category    "<food|tool> <n>"     -> the task's word for food / for tool
                (2 labels drawn from LABELS)                       1/2
    select      "<w1> <w2> <w3>"      -> the word at the task's position
                (words from LABELS; options: the 3 words)         1/3
  held out entirely (same skill, different surface):
    lookup_pseudo   "<n> : <pseudo-word>" -> label (keys are generated
                    pseudo-words never seen in training)           1/3
    category_dash   "<n> - <food|tool>"   -> label                 1/2
    select_comma    "<w1> , <w2> , <w3>"  -> word at position      1/3
`<n>` is an irrelevant number that makes each input unique. Options are
sorted (except `select`, whose options are the input words in order), so their
order says nothing about the answer. Every output word comes from LABELS,
shared by all families: T5 v1.1 unties its output embedding, so an output word
never trained as a target could not be produced. A fixed seed generates
`train_tasks_per_family` training tasks per seen family, then
`heldout_tasks_per_family` held-out tasks per seen family and per held-out
family; evaluation tasks have 16 fixed demonstrations and up to 32 queries,
grouped as 'heldout_task:<family>' / 'heldout_family:<family>'. Chance on the
'validation' split (both groups) is (1/3 + 1/2 + 1/3) / 3 = 0.389.

Text is tokenised with the T5 SentencePiece model when available; without it
the suite falls back (with a warning naming the missing file) to a closed
word-level vocabulary, `WordTokenizer`. `synthetic_documents` makes CACLM text
whose later segments hold the facts needed to predict earlier ones.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import logging
import os
from pathlib import Path
from typing import Callable

import numpy as np

from hyperflax.data import vocab as vocab_lib
from hyperflax.data.examples import EvalTaskData, Example, FewShotTask, Lengths
from hyperflax.data.fewshot import eval_split

log = logging.getLogger('hyperflax.data')

LABELS = tuple(
    'red blue green yellow black white pink brown orange purple gray gold '
    'silver sun moon star rain snow wind fire stone water queen north south '
    'east west up down left right hot cold fast slow big small yes no true '
    'false good bad happy sad old new dark light high low'.split())
ANIMALS = tuple(
    'cat dog cow horse pig sheep goat mouse rat lion tiger bear wolf fox deer '
    'rabbit duck goose owl eagle fish shark whale frog snake bee ant fly bird '
    'monkey camel zebra seal crab hen bull mule donkey'.split())
FOODS = tuple('bread rice cheese apple banana soup cake egg meat milk butter '
              'pasta pizza salad sugar honey corn bean potato tomato'.split())
TOOLS = tuple('hammer knife saw drill brush rope nail screw shovel axe wrench '
              'ladder needle scissors pen pencil key lock wire tape'.split())
FILLERS = tuple(str(i) for i in range(10, 57))
PUNCT = (':', '-', ',', '.', 'is', 'has')
# Separators of the training layouts with `layouts='varied'`: none of them is
# a held-out family's (':', '-', ','), nor the probe family's ('has').
TRAIN_SEPS = ('.', 'is', ';', '=', '/', '|', 'and', 'of')
SYLLABLES = tuple(c + v for c in 'bdfgklmnprstvz' for v in 'aeiou')
PSEUDO_WORDS = tuple(a + b for a, b in itertools.product(SYLLABLES, repeat=2))

# Held-out tasks of seen families start here: no training set reaches it.
HELDOUT_TASK_OFFSET = 1_000_000

# Lengths that fit every synthetic episode (K=16) with the T5 vocabulary.
LENGTHS = Lengths(hyper=192, encoder=16, decoder=8)


# ---- task generators ---------------------------------------------------------

def _pick(rng: np.random.Generator, pool: tuple, size: int) -> list[str]:
  """`size` distinct words of `pool` (index draws: no array per call)."""
  return [pool[i] for i in rng.choice(len(pool), size=size, replace=False)]


def _filler(rng: np.random.Generator) -> str:
  return FILLERS[int(rng.integers(len(FILLERS)))]


def _unique(pool_size: int, draw: Callable[[], tuple[str, str, tuple]]):
  """Draws until `pool_size` distinct inputs (so no demo equals a query)."""
  seen, out = set(), []
  for _ in range(pool_size * 20):
    inp, out_word, options = draw()
    if inp not in seen:
      seen.add(inp)
      out.append((inp, out_word, options))
      if len(out) == pool_size:
        break
  return out


def _lookup(keys_pool, layout):
  """4 keys mapped onto 3 task labels (at least 2 of them in use)."""
  def make(rng: np.random.Generator, pool_size: int, words: tuple = LABELS,
           layout: str = layout):
    keys, labels = _pick(rng, keys_pool, 4), _pick(rng, words, 3)
    assign = rng.integers(3, size=4)
    while len(set(assign.tolist())) < 2:
      assign = rng.integers(3, size=4)
    mapping = {k: labels[a] for k, a in zip(keys, assign)}
    options = tuple(sorted(labels))
    def draw():
      key = keys[int(rng.integers(4))]
      return layout.format(key=key, n=_filler(rng)), mapping[key], options
    return _unique(pool_size, draw)
  return make


def _category(layout):
  """Foods get the task's first label, tools its second."""
  def make(rng: np.random.Generator, pool_size: int, words: tuple = LABELS,
           layout: str = layout):
    labels = _pick(rng, words, 2)
    # Sorted options: their order must not reveal which label is for food.
    options = tuple(sorted(labels))
    def draw():
      is_food = bool(rng.integers(2))
      words = FOODS if is_food else TOOLS
      word = words[int(rng.integers(len(words)))]
      return (layout.format(key=word, n=_filler(rng)),
              labels[0 if is_food else 1], options)
    return _unique(pool_size, draw)
  return make


def _select(sep):
  """Output the word at the task's position (0, 1 or 2)."""
  def make(rng: np.random.Generator, pool_size: int, words: tuple = LABELS,
           layout: str = sep):
    sep = layout
    pos = int(rng.integers(3))
    def draw():
      picked = tuple(_pick(rng, words, 3))
      return sep.join(picked), picked[pos], picked
    return _unique(pool_size, draw)
  return make


def _pseudo_keys():
  rng = np.random.default_rng(1234)
  return tuple(_pick(rng, PSEUDO_WORDS, 40))


HELDOUT_KEYS = _pseudo_keys()
# Keys of the probe family (`probe_task`): three-syllable pseudo-words, a
# shape no other key or text of the suite has.
PROBE_KEYS = tuple(''.join(_pick(np.random.default_rng([4321, i]), SYLLABLES, 3))
                   for i in range(40))
# CACLM entity names avoid the held-out keys, so hyperpretraining on synthetic
# text never shows them either.
_NAMES = tuple(sorted(set(PSEUDO_WORDS) - set(HELDOUT_KEYS)))
# Training lookup keys with `many_keys`: animals and thousands of pseudo-words,
# so that a key's label can only come from matching it against the
# demonstrations (40 animals let a model learn per-key features instead).
TRAIN_KEYS = ANIMALS + _NAMES
_LOOKUP_MANY_KEYS = _lookup(TRAIN_KEYS, '{key} {n}')


@dataclasses.dataclass(frozen=True)
class Family:
  name: str
  make: Callable
  heldout: bool


FAMILIES = (
    Family('lookup', _lookup(ANIMALS, '{key} {n}'), False),
    Family('category', _category('{key} {n}'), False),
    Family('select', _select(' '), False),
    Family('lookup_pseudo', _lookup(HELDOUT_KEYS, '{n} : {key}'), True),
    Family('category_dash', _category('{n} - {key}'), True),
    Family('select_comma', _select(' , '), True),
)




def varied_layout(rng: np.random.Generator, family: str, key_last: bool = False) -> str:
  """A training layout of a seen family: a separator of TRAIN_SEPS (or none)
  and, for lookup/category, either order of key and number (`key_last`: the
  key always last, as in the held-out lookup/category surfaces). Drawn per
  task, so a model must find the key (or the position) by content, as it must
  on the held-out families' surfaces, whose separators no training layout has."""
  sep = ('',) + TRAIN_SEPS
  sep = sep[int(rng.integers(len(sep)))]
  if family == 'select':
    return f' {sep} ' if sep else ' '
  middle = f' {sep} ' if sep else ' '
  if key_last or not rng.integers(2):
    return '{n}' + middle + '{key}'
  return '{key}' + middle + '{n}'


LAYOUTS = ('fixed', 'varied', 'varied_key_last')


# A family no suite task has (new layout, new keys, the suite's output words):
# what a user would hypertune an adapter for (`bench/hypertune_probe.py`).
PROBE_FAMILY = Family('lookup_has', _lookup(PROBE_KEYS, '{key} has {n}'), True)
# The same with the key last, as in the held-out families' and the `varied_key_last`
# training layouts (the separator 'has' and the keys are still new).
PROBE_FAMILY_KEY_LAST = Family('lookup_has_key_last', _lookup(PROBE_KEYS, '{n} has {key}'), True)


def probe_task(index: int = 0, num_shots: int = 16, seed: int = 0,
               num_labels: int = len(LABELS), key_last: bool = False) -> EvalTaskData:
  """One task of `PROBE_FAMILY` (`PROBE_FAMILY_KEY_LAST`): `num_shots` demonstrations +
  the other queries."""
  family = PROBE_FAMILY_KEY_LAST if key_last else PROBE_FAMILY
  rng = np.random.default_rng([seed, 99, index])
  name = f'{family.name}/{index:04d}'
  exs = [Example(i, o, tuple(opts), origin=f'synthetic:{name}')
         for i, o, opts in family.make(rng, 48, LABELS[:num_labels])]
  demos, queries = eval_split(exs, num_shots, seed, name)
  return EvalTaskData(name, demos, queries, metric='accuracy',
                      group=f'probe:{family.name}')


# ---- the suite -----------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class SyntheticSuite:
  """Procedurally generated tasks; all content is a function of `seed`.

  Attributes:
    seed: generation seed.
    train_tasks_per_family: training tasks per seen family.
    heldout_tasks_per_family: held-out tasks per seen family and tasks per
      held-out family.
    pool_size: distinct examples per task.
    num_labels: output words in use, the first `num_labels` of LABELS.
    many_keys: training `lookup` tasks draw keys from TRAIN_KEYS (~4,900)
      instead of the 40 animals.
    layouts: 'fixed' (each seen family has one layout), 'varied' (each
      task of a seen family draws its own layout, `varied_layout`) or
      'varied_key_last' (the same with the key after the number); held-out
      families keep their layouts either way.
    train_families: train on these seen families only (None: all); for
      curricula and diagnostics. Evaluation splits are unchanged.
  """
  seed: int = 0
  train_tasks_per_family: int = 200
  heldout_tasks_per_family: int = 20
  pool_size: int = 64
  num_labels: int = len(LABELS)
  many_keys: bool = False
  layouts: str = 'fixed'
  train_families: tuple[str, ...] | None = None

  def __post_init__(self):
    if self.layouts not in LAYOUTS:
      raise ValueError(f'synthetic suite: layouts={self.layouts!r}; expected one of {LAYOUTS}')
    seen = [f.name for f in FAMILIES if not f.heldout]
    if self.train_families is not None and (
        not self.train_families or set(self.train_families) - set(seen)):
      raise ValueError(f'synthetic suite: train_families={list(self.train_families)}; '
                       f'expected a non-empty subset of {seen}')

  def _task(self, fam_index: int, task_index: int) -> tuple[str, list[Example]]:
    fam = FAMILIES[fam_index]
    rng = np.random.default_rng([self.seed, fam_index, task_index])
    name = f'{fam.name}/{task_index:04d}'
    make = _LOOKUP_MANY_KEYS if self.many_keys and fam.name == 'lookup' else fam.make
    kwargs = {}
    if self.layouts != 'fixed' and not fam.heldout:
      # Its own generator: the fixed-layout tasks' draws stay as they were.
      kwargs['layout'] = varied_layout(np.random.default_rng([self.seed, fam_index, task_index, 7]),
                                       fam.name, key_last=self.layouts == 'varied_key_last')
    return name, [Example(inp, out, tuple(opts), origin=f'synthetic:{name}')
                  for inp, out, opts in make(rng, self.pool_size,
                                                 LABELS[:self.num_labels], **kwargs)]

  def train_tasks(self) -> list[FewShotTask]:
    """Training tasks of the seen families (memoised per configuration)."""
    return list(_train_tasks(self))

  def _build_train_tasks(self) -> tuple[FewShotTask, ...]:
    out = []
    for f, fam in enumerate(FAMILIES):
      if not fam.heldout and (self.train_families is None or
                              fam.name in self.train_families):
        for i in range(self.train_tasks_per_family):
          name, exs = self._task(f, i)
          out.append(FewShotTask(name, exs, group=fam.name))
    return tuple(out)

  def eval_tasks(self, split: str = 'validation', num_shots: int = 16,
                 max_queries: int | None = 32) -> list[EvalTaskData]:
    """Evaluation tasks with fixed demonstrations.

    Args:
      split: 'heldout_tasks' (new tasks of seen families), 'heldout_families',
        'validation' (both) or 'train_tasks' (the first few training tasks,
        a sanity check of fitting).
      num_shots: fixed demonstrations per task.
      max_queries: queries per task.
    """
    if split == 'validation':
      return (self.eval_tasks('heldout_tasks', num_shots, max_queries) +
              self.eval_tasks('heldout_families', num_shots, max_queries))
    specs = []
    for f, fam in enumerate(FAMILIES):
      if split == 'heldout_families' and fam.heldout:
        specs += [(f, i, 'heldout_family') for i in
                  range(self.heldout_tasks_per_family)]
      elif split == 'heldout_tasks' and not fam.heldout:
        # Indices past any training set's (whatever train_tasks_per_family).
        specs += [(f, HELDOUT_TASK_OFFSET + i, 'heldout_task') for i in
                  range(self.heldout_tasks_per_family)]
      elif split == 'train_tasks' and not fam.heldout:
        specs += [(f, i, 'train_task') for i in
                  range(min(self.heldout_tasks_per_family,
                            self.train_tasks_per_family))]
    if not specs and split not in ('heldout_tasks', 'heldout_families',
                                   'train_tasks'):
      raise ValueError(f'unknown synthetic split {split!r}')
    out = []
    for f, i, kind in specs:
      name, exs = self._task(f, i)
      demos, queries = eval_split(exs, num_shots, self.seed, name)
      if max_queries is not None:
        queries = queries[:max_queries]
      out.append(EvalTaskData(name, demos, queries, metric='accuracy',
                              group=f'{kind}:{FAMILIES[f].name}'))
    return out


@functools.lru_cache(maxsize=4)
def _train_tasks(suite: SyntheticSuite) -> tuple[FewShotTask, ...]:
  return suite._build_train_tasks()  # pylint: disable=protected-access


def chance_accuracy(tasks: list[EvalTaskData]) -> float:
  """Mean chance accuracy (uniform over each query's options)."""
  return float(np.mean([t.chance for t in tasks]))


def synthetic_documents(num_docs: int = 512, seed: int = 0,
                        sentences: tuple[int, int] = (100, 160)) -> list[str]:
  """CACLM text: each document states 8 entity facts again and again.

  Sentences are "<name> is <label> ." or "<name> has <tool> ." about the
  document's own entities, so a continuation (C) is predictable only from the
  facts that A and D repeat; the 32-token B alone cannot tell them.
  """
  docs = []
  for i in range(num_docs):
    rng = np.random.default_rng([seed, i, 99])
    names = _pick(rng, _NAMES, 8)
    labels = [LABELS[i] for i in rng.integers(len(LABELS), size=8)]
    tools = [TOOLS[i] for i in rng.integers(len(TOOLS), size=8)]
    n = int(rng.integers(*sentences))
    who, rel = rng.integers(8, size=n), rng.integers(2, size=n)
    docs.append(' '.join(
        f'{names[w]} is {labels[w]} .' if r == 0 else f'{names[w]} has {tools[w]} .'
        for w, r in zip(who, rel)))
  return docs


class WordTokenizer:
  """Closed word-level vocabulary over every word the suite can generate.

  Ids start at 3 (after pad/eos/unk) and stay below the sentinels, so the
  marker/sentinel ids of `vocab` keep their meaning.

  `compact=True` ('words_compact') keeps the word ids and moves the sentinels
  and the `<x>`/`<y>` markers to just after the words, so a model needs
  `vocab_size` (~5,400) rows instead of 32,128: the output layer, its
  cross-entropy and the embedding's optimiser state shrink ~6x. Batches are
  built with the usual ids and mapped by `to_model_ids` (converters and
  CACLM do it); `decode` takes model ids.
  """

  path = '<synthetic words>'

  def __init__(self, compact: bool = False):
    words = sorted(set(LABELS + ANIMALS + FOODS + TOOLS + FILLERS + PUNCT +
                       PSEUDO_WORDS))
    # Appended, not merged: the ids above must not move (trained checkpoints).
    words += sorted(set(PROBE_KEYS) - set(words))
    words += sorted(set(TRAIN_SEPS) - set(words))
    self._ids = {w: i + 3 for i, w in enumerate(words)}
    self._words = {i: w for w, i in self._ids.items()}
    self.kind = 'words_compact' if compact else 'words'
    self._id_map = self._from_model = None
    if compact:
      n = len(words) + 3
      specials = np.arange(vocab_lib.NUM_PIECES, vocab_lib.Y_ID + 1)  # sentinels, <x>, <y>
      # Idempotent (model ids map to themselves), so mapping twice is harmless.
      self._id_map = np.full(vocab_lib.EMBEDDING_ROWS, -1, np.int32)
      self._id_map[:n + len(specials)] = np.arange(n + len(specials))
      self._id_map[specials] = n + np.arange(len(specials))
      self._from_model = np.concatenate([np.arange(n), specials]).astype(np.int64)

  @property
  def vocab_size(self) -> int:
    if self._from_model is not None:
      return len(self._from_model)
    return vocab_lib.NUM_PIECES + vocab_lib.NUM_EXTRA_IDS

  @property
  def model_rows(self) -> int:
    """Embedding rows a model needs for the ids batches hold (with the <x>/<y> markers)."""
    return self.vocab_size if self._from_model is not None else vocab_lib.Y_ID + 1

  def encode(self, text: str) -> list[int]:
    try:
      return [self._ids[w] for w in text.split()]
    except KeyError as e:
      raise ValueError(f'WordTokenizer: word {e.args[0]!r} is not in the '
                       'synthetic vocabulary') from None

  def encode_batch(self, texts):
    return [self.encode(t) for t in texts]

  def to_model_ids(self, ids):
    """Ids (words, markers, sentinels; an array or a list) as the model's embedding rows."""
    if self._id_map is None:
      return ids
    arr = np.asarray(ids, np.int64)
    out = self._id_map[arr]
    if (out < 0).any():
      raise ValueError(f'{self.kind}: id {int(arr[out < 0].flat[0])} has no row in the '
                       'compact vocabulary')
    return out.tolist() if isinstance(ids, list) else out

  def decode(self, ids) -> str:
    if self._from_model is not None:
      # Rows past the vocabulary (a model's vocab_size rounded up) decode as <unk>.
      ids = [int(self._from_model[i]) if 0 <= int(i) < len(self._from_model) else
             vocab_lib.UNK_ID for i in ids]
    return vocab_lib.decode_with_specials(
        ids, lambda run: ' '.join(self._words.get(i, '<unk>') for i in run))


WORD_KINDS = ('words', 'words_compact')


@functools.lru_cache(maxsize=2)
def word_tokenizer(kind: str = 'words') -> WordTokenizer:
  if kind not in WORD_KINDS:
    raise ValueError(f'word tokenizer {kind!r}: expected one of {WORD_KINDS}')
  return WordTokenizer(compact=kind == 'words_compact')


def synthetic_tokenizer(vocab_path: str | os.PathLike | None = None):
  """T5 SentencePiece if its file exists, else `WordTokenizer` (warned).

  `vocab_path='words'` forces the word-level vocabulary; 'words_compact' the
  same words with a ~5,400-row id space (set `model.vocab_size` to at least its
  `vocab_size`).
  """
  if str(vocab_path) in WORD_KINDS:
    return word_tokenizer(str(vocab_path))
  path = Path(vocab_path) if vocab_path else vocab_lib.default_vocab_path()
  if path.is_file():
    return vocab_lib.load_vocabulary(path)
  log.warning('T5 SentencePiece model not found at %s: the synthetic suite '
              'uses its word-level vocabulary instead', path)
  return word_tokenizer()
