"""T5 vocabulary, few-shot marker ids and data-directory resolution.

Token ids follow T5 v1.1: the 32,000 SentencePiece pieces (pad=0, eos=1,
unk=2), then 100 sentinels counted downwards (`<extra_id_0>` = 32099 ...
`<extra_id_99>` = 32000), as `seqio.SentencePieceVocabulary(path,
extra_ids=100)` numbers them. The few-shot markers `<x>` and `<y>` sit just
past the tokenizer's range but inside T5's 32,128-row embedding, so no text
can ever encode to them: a literal "<x>" in a dataset becomes ordinary pieces.

This module must stay free of TensorFlow/SeqIO imports: the trainer imports it.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Iterable, Sequence

PAD_ID = 0
EOS_ID = 1
UNK_ID = 2
NUM_PIECES = 32000
NUM_EXTRA_IDS = 100
X_ID = 32100
Y_ID = 32101
EMBEDDING_ROWS = 32128


def sentinel_id(i: int) -> int:
  """Returns the id of `<extra_id_{i}>`."""
  if not 0 <= i < NUM_EXTRA_IDS:
    raise ValueError(f'sentinel index {i} outside [0, {NUM_EXTRA_IDS})')
  return NUM_PIECES + NUM_EXTRA_IDS - 1 - i


# CACLM marks segment A and D with the first two sentinels (paper §4.2 fn. 4).
SEGMENT_A_ID = sentinel_id(0)
SEGMENT_D_ID = sentinel_id(1)

_SPECIAL_NAMES = {X_ID: '<x>', Y_ID: '<y>', EOS_ID: '</s>', UNK_ID: '<unk>'}

REPO_ROOT = Path(__file__).resolve().parents[2]


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
  """Picks the data root: argument, $HYPERFLAX_DATA_DIR, $HYPERFLAX_SHARED_DATA,
  then `<repo>/../shared/data`."""
  if data_dir:
    return Path(data_dir)
  for var in ('HYPERFLAX_DATA_DIR', 'HYPERFLAX_SHARED_DATA'):
    if os.environ.get(var):
      return Path(os.environ[var])
  return REPO_ROOT.parent / 'shared' / 'data'


def default_vocab_path(data_dir: str | os.PathLike | None = None) -> Path:
  """`$HYPERFLAX_VOCAB` or `<data_dir>/t5/spiece.model`."""
  if os.environ.get('HYPERFLAX_VOCAB') and not data_dir:
    return Path(os.environ['HYPERFLAX_VOCAB'])
  return resolve_data_dir(data_dir) / 't5' / 'spiece.model'


class Tokenizer:
  """SentencePiece T5 tokenizer that knows the marker and sentinel ids.

  Attributes:
    path: the `.model` file it was loaded from.
  """

  def __init__(self, processor, path: str):
    self._sp = processor
    self.path = path
    if processor.get_piece_size() != NUM_PIECES:
      raise ValueError(f'{path}: expected {NUM_PIECES} pieces, found '
                       f'{processor.get_piece_size()}; not the T5 vocabulary')

  @property
  def vocab_size(self) -> int:
    """Ids the tokenizer itself can produce (pieces + sentinels)."""
    return NUM_PIECES + NUM_EXTRA_IDS

  @property
  def model_rows(self) -> int:
    """Embedding rows a model needs for the ids batches hold (with the <x>/<y> markers)."""
    return Y_ID + 1

  def encode(self, text: str) -> list[int]:
    return self._sp.encode(text)

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    return self._sp.encode(list(texts))

  def decode(self, ids: Iterable[int]) -> str:
    """Decodes ids, rendering markers/sentinels by name and skipping padding.

    Decoding stops at nothing: EOS is shown as `</s>`; callers that want the
    text only should cut at EOS first (see `strip_eos`).
    """
    return decode_with_specials(ids, self._sp.decode)


def decode_with_specials(ids: Iterable[int], decode_run) -> str:
  """Decodes runs of ordinary ids with `decode_run`, special ids by name."""
  parts, run = [], []

  def flush():
    if run:
      parts.append(decode_run(list(run)))
      run.clear()

  for i in ids:
    i = int(i)
    if i == PAD_ID:
      continue
    if i in _SPECIAL_NAMES or i >= NUM_PIECES:
      flush()
      if i in _SPECIAL_NAMES:
        parts.append(_SPECIAL_NAMES[i])
      elif i < NUM_PIECES + NUM_EXTRA_IDS:
        parts.append(f'<extra_id_{NUM_PIECES + NUM_EXTRA_IDS - 1 - i}>')
      else:
        parts.append(f'<id_{i}>')
    else:
      run.append(i)
  flush()
  return ' '.join(p for p in parts if p)


def strip_eos(ids: Iterable[int]) -> list[int]:
  """Ids up to (excluding) the first EOS, without padding."""
  out = []
  for i in ids:
    i = int(i)
    if i == EOS_ID:
      break
    if i != PAD_ID:
      out.append(i)
  return out


@functools.lru_cache(maxsize=8)
def _load_cached(path: str) -> Tokenizer:
  import sentencepiece  # pylint: disable=g-import-not-at-top
  processor = sentencepiece.SentencePieceProcessor(model_file=path)
  return Tokenizer(processor, path)


def load_vocabulary(path: str | os.PathLike | None = None) -> Tokenizer:
  """Loads (once per path) the T5 SentencePiece tokenizer.

  Args:
    path: the `spiece.model` file; None means `default_vocab_path()`.

  Raises:
    FileNotFoundError: naming the path when the file is absent.
  """
  path = Path(path) if path else default_vocab_path()
  if not path.is_file():
    raise FileNotFoundError(
        f'T5 SentencePiece model not found at {path}. Point vocab_path (or '
        '$HYPERFLAX_VOCAB / $HYPERFLAX_DATA_DIR) at the T5 spiece.model, e.g. '
        '../shared/data/t5/spiece.model.')
  return _load_cached(str(path.resolve()))


def seqio_vocabulary(path: str | os.PathLike | None = None):
  """The same vocabulary as a `seqio.SentencePieceVocabulary` (imports SeqIO)."""
  import seqio  # pylint: disable=g-import-not-at-top
  path = Path(path) if path else default_vocab_path()
  return seqio.SentencePieceVocabulary(str(path), extra_ids=NUM_EXTRA_IDS)
