r"""Serve hypertuned adapters: predictions for queries, without the demonstrations.

  python -m hyperflax.predict --model MODEL_DIR --adapter ADAPTER_DIR \
      --inputs queries.jsonl [--out predictions.jsonl] \
      [--decode greedy|beam] [--num-beams 4] [--length-penalty 1.0] [--max-new-tokens N]

  # one batch mixing many tasks, each row with its own adapter:
  python -m hyperflax.predict --model MODEL_DIR --adapter sst2=adapters/sst2 \
      --adapter rte=adapters/rte --inputs mixed.jsonl

`MODEL_DIR` is a transformers T5 v1.1 directory or `hyperflax.convert`
output; an adapter made for other parameters (sha256) or another
architecture is refused, naming both. Each input line is
`{"input": str, "options": [str, ...]?, "adapter": NAME?}`: rows with options
are rank-scored (summed log-likelihood, T0's rule), the others generated.
With several adapters each row names its own (`NAME=DIR`; a bare DIR is named
by its basename). Without --adapter the model runs zero-shot (pass --vocab and
--lengths). Output: one JSON object per query, in order.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from hyperflax import serving
from hyperflax.data.io_utils import iter_json_lines


def read_queries(path: str) -> list[dict]:
  """Queries: JSONL objects with a string "input" (and optional "options"), or bare strings."""
  rows = []
  for number, row in iter_json_lines(path):
    where = f'{path}:{number}'
    if isinstance(row, str):
      row = {'input': row}
    if not isinstance(row, dict) or not isinstance(row.get('input'), str):
      raise ValueError(f'{where}: needs a string field "input"')
    options = row.get('options')
    if options is not None and (not isinstance(options, list) or not options or
                                not all(isinstance(o, str) for o in options)):
      raise ValueError(f'{where}: "options" must be a non-empty list of strings')
    rows.append(row)
  if not rows:
    raise ValueError(f'{path}: no queries (the file is empty); one JSON object per line, '
                     'e.g. {"input": "..."}')
  return rows


def _named(specs: list[str]) -> dict[str, str]:
  named = {}
  for spec in specs:
    name, _, path = spec.rpartition('=') if '=' in spec else ('', '', spec)
    name = name or os.path.basename(os.path.normpath(path))
    if name in named:
      raise ValueError(f'two adapters are named {name!r}: use NAME=DIR')
    named[name] = path
  return named


def run(args) -> list[dict]:
  lengths = tuple(args.lengths) if args.lengths else None
  server = serving.Server(args.model, dtype=args.dtype, vocab=args.vocab, lengths=lengths,
                          batch_size=args.batch_size, query_marks=args.query_in_decoder)
  named = _named(args.adapter or [])
  for name, path in named.items():
    server.add_adapter(name, path)
  if not named and (server.tokenizer is None or server.lengths is None):
    raise ValueError('zero-shot (no --adapter) needs --vocab and --lengths')
  rows = read_queries(args.inputs)
  per_row = []
  for number, row in enumerate(rows, 1):
    name = row.get('adapter')
    if name is None:
      if len(named) > 1:
        raise ValueError(f'{args.inputs}: query {number} names no "adapter" but '
                         f'{len(named)} are loaded ({sorted(named)})')
      name = next(iter(named), None)
    elif name not in named:
      raise ValueError(f'{args.inputs}: query {number} names adapter {name!r}; loaded: '
                       f'{sorted(named)}')
    per_row.append(name)
  kwargs = {'method': args.decode, 'num_beams': args.num_beams,
            'length_penalty': args.length_penalty, 'early_stopping': args.early_stopping,
            'max_new_tokens': args.max_new_tokens}
  return serving.predict(server, per_row, rows, **kwargs)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog='python -m hyperflax.predict', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--model', required=True, help='transformers or hyperflax.convert dir')
  parser.add_argument('--adapter', action='append', help='[NAME=]ADAPTER_DIR (repeatable)')
  parser.add_argument('--inputs', required=True, help='queries JSONL')
  parser.add_argument('--out', help='write predictions JSONL here (default: stdout)')
  parser.add_argument('--decode', default='greedy', choices=['greedy', 'beam'])
  parser.add_argument('--num-beams', type=int, default=4)
  parser.add_argument('--length-penalty', type=float, default=1.0)
  parser.add_argument('--early-stopping', default='false', choices=['false', 'true', 'never'],
                      help="beam search stopping rule (transformers' early_stopping)")
  parser.add_argument('--max-new-tokens', type=int, default=None,
                      help="default: the adapter's target length")
  parser.add_argument('--batch-size', type=int, default=32)
  parser.add_argument('--dtype', default='float32', choices=['float32', 'bfloat16'])
  parser.add_argument('--vocab', default=None, help="tokenizer override: 'words', 'words_compact' or spiece.model")
  parser.add_argument('--lengths', type=int, nargs=2, metavar=('ENCODER', 'DECODER'),
                      help="token lengths (default: the adapter's)")
  parser.add_argument('--query-in-decoder', choices=['none', 'xy'], default=None,
                      help='the model was trained with the query in its decoder, read with '
                           'these marks (zero-shot; adapters record it themselves)')
  parser.add_argument('--verbose', '--debug', action='store_true',
                      help='tracebacks and library INFO logs')
  args = parser.parse_args(argv)
  args.early_stopping = {'false': False, 'true': True, 'never': 'never'}[args.early_stopping]
  from hyperflax import cli
  verbose = args.verbose or cli.verbose_requested([])
  cli.setup_logging(verbose, logging.WARNING)

  def body():
    lines = ''.join(json.dumps(r) + '\n' for r in run(args))
    if args.out:
      from hyperflax.workdir import write_atomic
      write_atomic(args.out, lines)
    else:
      sys.stdout.write(lines)
    return 0
  return cli.guard(body, verbose, 'hyperflax.predict')


if __name__ == '__main__':
  sys.exit(main())
