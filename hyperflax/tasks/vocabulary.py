"""hyperflax's tokenizer as a `seqio.Vocabulary`.

SeqIO decodes predictions with the Task's output-feature vocabulary before any
metric sees them. `seqio.SentencePieceVocabulary` maps ids past the 32,000
pieces to `<unk>`, whereas `hyperflax.evaluate` renders sentinels and the
`<x>`/`<y>` markers by name (and the synthetic suite may use a word-level
tokenizer), so the evaluation Tasks decode through this adapter: the same
prediction string as `hyperflax.evaluate`, whatever the model generated.
"""

from __future__ import annotations

from typing import Sequence

import seqio
import tensorflow as tf

from hyperflax.data.vocab import EOS_ID, NUM_EXTRA_IDS, NUM_PIECES


class HyperflaxVocabulary(seqio.Vocabulary):
  """Wraps a `hyperflax.data.vocab.Tokenizer` (or the synthetic word tokenizer).

  `decode` cuts at the first EOS and drops padding exactly like
  `hyperflax.evaluate` (it calls the same function).
  """

  def __init__(self, tokenizer):
    self.tokenizer = tokenizer
    super().__init__(extra_ids=0)

  @property
  def eos_id(self) -> int:
    return EOS_ID

  @property
  def unk_id(self) -> None:
    # None keeps `Vocabulary.decode` from mapping ids past the pieces to <unk>.
    return None

  @property
  def _base_vocab_size(self) -> int:
    return int(getattr(self.tokenizer, 'vocab_size', NUM_PIECES + NUM_EXTRA_IDS))

  def _encode(self, s: str) -> Sequence[int]:
    return list(self.tokenizer.encode(s))

  def _decode(self, ids) -> str:
    from hyperflax.evaluate import _decode  # pylint: disable=g-import-not-at-top
    return _decode(self.tokenizer, ids)

  def _encode_tf(self, s: tf.Tensor) -> tf.Tensor:
    def enc(text):
      return tf.constant(self._encode(text.numpy().decode('utf-8')), tf.int32)
    out = tf.py_function(enc, [s], tf.int32)
    out.set_shape([None])
    return out

  def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
    def dec(row):
      return tf.constant(self.decode(row.numpy().tolist()))
    out = tf.py_function(dec, [ids], tf.string)
    out.set_shape([])
    return out

  def _identity(self):
    # The word tokenizers share a path; their kind ('words' / 'words_compact') tells them apart.
    return (getattr(self.tokenizer, 'path', id(self.tokenizer)),
            getattr(self.tokenizer, 'kind', None))

  def __eq__(self, other) -> bool:
    return isinstance(other, HyperflaxVocabulary) and self._identity() == other._identity()

  def __hash__(self) -> int:
    return hash(self._identity())
