r"""Where does a frozen T5 bind a key to its value: through cross-attention or self-attention?

  python bench/binding_sites.py DOWNSTREAM_DIR [DOWNSTREAM_DIR ...] [--pairs=4 --rows=256]

The same `synthetic_recall` rows (a fresh random key -> value map per row, `words_compact`
vocabulary, lookups in the decoder, teacher-forced) are scored twice: with the pairs stated in
the encoder (`stated_in='encoder'`, read through cross-attention: the format the curriculum's
few-shot T5 learned) and with the same pairs stated in the decoder before the lookups
(`stated_in='decoder'`, encoder `</s>` only: read through the decoder's self-attention). Accuracy
is the share of scored answers whose argmax over the vocabulary is the stated value; picking
among the row's values at random gives 1 / pairs.

Why it matters (issue 13): HyperT5-Prefix writes prefixes and HyperT5-LoRA q/v deltas for the
self-attention sites (and LoRA the cross-attention projections, whose encoder holds only the
query), while HART's fusion-in-decoder adds memory to cross-attention. A downstream that binds
only through cross-attention offers the first two no retrieval mechanism to reuse.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from hyperflax import data  # noqa: E402
from hyperflax.data.vocab import EOS_ID  # noqa: E402
from hyperflax.pretrained import load_pretrained  # noqa: E402
from hyperflax.serving import teacher_forced_logits  # noqa: E402


def recall_batch(stated_in: str, pairs: int, rows: int, seed: int = 11) -> dict:
  """`rows` recall rows; the same keys, values and lookups for every `stated_in`."""
  stream = data.get_dataset(
      'synthetic_recall', 'train', batch_size=rows, mode='concat',
      lengths=(8 * pairs, 4, 4 * (pairs + 8) + 8), vocab_path='words_compact', seed=seed,
      query_in_decoder=True, query_marks='none', keys='train', num_labels=12, pairs=pairs,
      queries=8, stated_in=stated_in)
  return stream.batch(0)


def accuracy(model, params, batch: dict) -> float:
  """% of scored answers (not `</s>`) whose argmax is the target."""
  logits = teacher_forced_logits(model.config, params, jnp.asarray(batch['encoder_inputs']),
                                 jnp.asarray(batch['decoder_inputs']))
  targets = batch['targets']
  scored = (batch['target_weights'] > 0) & (targets != EOS_ID)
  return float((np.asarray(logits).argmax(-1)[scored] == targets[scored]).mean() * 100)


def measure(model_dir: str, pairs: int = 4, rows: int = 256) -> dict:
  """Accuracy (%) of one T5 directory with the pairs in its encoder and in its decoder."""
  model, params = load_pretrained(model_dir, dropout_rate=0.0, dtype='float32')
  batches = {where: recall_batch(where, pairs, rows) for where in ('encoder', 'decoder')}
  scored = {where: b['targets'][b['target_weights'] > 0] for where, b in batches.items()}
  if not np.array_equal(scored['encoder'], scored['decoder']):  # the same lookups, moved pairs
    raise AssertionError('recall rows differ between the placements')
  out = {'model': model_dir, 'pairs': pairs, 'rows': rows, 'row_values_chance': 100 / pairs}
  for where, batch in batches.items():
    out[f'pairs_in_{where}'] = accuracy(model, params, batch)
  return out


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('models', nargs='+', help='downstream T5 directories (transformers format)')
  parser.add_argument('--pairs', type=int, default=4)
  parser.add_argument('--rows', type=int, default=256)
  parser.add_argument('--out', default='', help='also write the rows as JSON here')
  args = parser.parse_args(argv)
  results = []
  for model_dir in args.models:
    row = measure(model_dir, args.pairs, args.rows)
    results.append(row)
    print(f'{model_dir}: pairs in the encoder {row["pairs_in_encoder"]:.1f} %, in the decoder '
          f'{row["pairs_in_decoder"]:.1f} % (1 / pairs = {row["row_values_chance"]:.1f} %)',
          flush=True)
  if args.out:
    Path(args.out).write_text(json.dumps(results, indent=1))
  return 0


if __name__ == '__main__':
  sys.exit(main())
