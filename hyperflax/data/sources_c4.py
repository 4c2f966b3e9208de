"""Pretraining text for CACLM: JSONL/text files, or the TFDS `c4/en` builder
when its prepared data exist locally (never downloaded).

File formats: `.jsonl` / `.jsonl.gz` with a `text` field per line (the
allenai/c4 record format of `<data_dir>/c4/c4_sample.jsonl`), or `.txt` where
documents are separated by blank lines.
"""

from __future__ import annotations

import glob as globlib
import gzip
import logging
import os
from pathlib import Path
from typing import Iterator, Sequence

from hyperflax.data import io_utils

log = logging.getLogger('hyperflax.data')


def _open(path: Path):
  if path.suffix == '.gz':
    return gzip.open(path, 'rt', encoding='utf-8')
  return open(path, encoding='utf-8')


def read_documents(path: str | os.PathLike) -> list[str]:
  """Documents of one file; errors name the file and line."""
  path = io_utils.require_file(path, 'pretraining text file')
  name = path.name.removesuffix('.gz')
  docs: list[str] = []
  if name.endswith('.jsonl') or name.endswith('.json'):
    if path.suffix == '.gz':
      import json  # pylint: disable=g-import-not-at-top
      with _open(path) as f:
        for lineno, line in enumerate(f, 1):
          if line.strip():
            try:
              obj = json.loads(line)
            except json.JSONDecodeError as e:
              raise ValueError(f'{path}:{lineno}: malformed JSON line') from e
            docs.append(io_utils.field(obj, 'text', f'{path}:{lineno}', str))
    else:
      for lineno, obj in io_utils.iter_jsonl(path, required=('text',)):
        docs.append(io_utils.field(obj, 'text', f'{path}:{lineno}', str))
  elif name.endswith('.txt'):
    with _open(path) as f:
      docs = [d.strip() for d in f.read().split('\n\n') if d.strip()]
  else:
    raise ValueError(f'{path}: unsupported text format (use .jsonl, .json, '
                     '.txt, optionally .gz)')
  return docs


def read_corpus(paths: str | Sequence[str]) -> list[str]:
  """Documents of every file matching `paths` (globs allowed), in order."""
  patterns = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
  files = []
  for p in patterns:
    matched = sorted(globlib.glob(str(p)))
    if not matched:
      raise FileNotFoundError(f'pretraining text not found: {p}')
    files.extend(matched)
  docs = [d for f in files for d in read_documents(f)]
  log.info('read %d documents from %d file(s): %s', len(docs), len(files),
           ', '.join(files[:3]) + (' ...' if len(files) > 3 else ''))
  return docs


def find_prepared_tfds(name: str = 'c4/en',
                       tfds_data_dir: str | os.PathLike | None = None
                       ) -> Path | None:
  """The newest prepared version directory of a TFDS dataset, if present.

  Looks for `<tfds_data_dir>/<name>/<version>/dataset_info.json`; the default
  directory is $TFDS_DATA_DIR or ~/tensorflow_datasets.
  """
  root = Path(tfds_data_dir or os.environ.get('TFDS_DATA_DIR')
              or Path.home() / 'tensorflow_datasets') / name
  if not root.is_dir():
    return None
  versions = sorted((p for p in root.iterdir()
                     if (p / 'dataset_info.json').is_file()),
                    key=lambda p: [int(x) if x.isdigit() else 0
                                   for x in p.name.split('.')])
  return versions[-1] if versions else None


def tfds_texts(builder_dir: str | os.PathLike, seed: int, skip: int = 0,
               split: str = 'train') -> Iterator[str]:
  """Texts of a prepared TFDS dataset, in a seeded deterministic order.

  Args:
    builder_dir: a prepared version directory (see `find_prepared_tfds`).
    seed: seeds the file order.
    skip: documents to skip first (resumption without tokenising them).
    split: TFDS split.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = tfds.builder_from_directory(str(builder_dir))
  ds = builder.as_dataset(split=split, shuffle_files=True,
                          read_config=tfds.ReadConfig(shuffle_seed=seed))
  ds = ds.repeat().skip(skip)
  for ex in ds.as_numpy_iterator():
    yield ex['text'].decode('utf-8')
