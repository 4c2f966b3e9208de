"""File readers whose errors name the file and line."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator, Sequence


def require_file(path: str | os.PathLike, what: str = 'data file') -> Path:
  """Returns `path` as a Path or raises FileNotFoundError naming it."""
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f'{what} not found: {path}')
  return path


def require_dir(path: str | os.PathLike, what: str = 'data directory') -> Path:
  path = Path(path)
  if not path.is_dir():
    raise FileNotFoundError(f'{what} not found: {path}')
  return path


def iter_json_lines(path: str | os.PathLike) -> Iterator[tuple[int, Any]]:
  """Yields (line number, JSON value) for each non-blank line of a file.

  Raises:
    FileNotFoundError: naming the path.
    ValueError: `path:line: malformed JSON line (...)`.
  """
  path = require_file(path)
  with open(path, 'rb') as f:  # decoded per line, so a bad byte is reported with its line
    for lineno, raw in enumerate(f, 1):
      try:
        line = raw.decode('utf-8')
      except UnicodeDecodeError as e:
        raise ValueError(f'{path}:{lineno}: not UTF-8 (byte {raw[e.start:e.start + 1]!r} at '
                         f'column {e.start + 1})') from None
      if not line.strip():
        continue
      try:
        yield lineno, json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f'{path}:{lineno}: malformed JSON line ({e.msg} at '
                         f'column {e.colno})') from None


def iter_jsonl(path: str | os.PathLike,
               required: Sequence[str] = ()) -> Iterator[tuple[int, dict]]:
  """Yields (line number, object) for each non-blank line of a JSONL file.

  Args:
    path: the file.
    required: fields every object must have.

  Raises:
    FileNotFoundError: naming the path.
    ValueError: `path:line: ...` for malformed JSON, a non-object line or a
      missing field.
  """
  for lineno, obj in iter_json_lines(path):
    if not isinstance(obj, dict):
      raise ValueError(f'{path}:{lineno}: expected a JSON object, got '
                       f'{type(obj).__name__}')
    for field in required:
      if field not in obj:
        raise ValueError(f'{path}:{lineno}: missing field {field!r} '
                         f'(has {sorted(obj)})')
    yield lineno, obj


def read_json(path: str | os.PathLike) -> Any:
  """Loads one JSON document; errors name the file (and line for syntax)."""
  path = require_file(path)
  with open(path, encoding='utf-8') as f:
    text = f.read()
  try:
    return json.loads(text)
  except json.JSONDecodeError as e:
    raise ValueError(f'{path}:{e.lineno}: malformed JSON ({e.msg} at column '
                     f'{e.colno})') from e


def field(obj: dict, name: str, origin: str, types=None):
  """`obj[name]`, with an error naming `origin` (path:line) and the field."""
  if name not in obj:
    raise ValueError(f'{origin}: missing field {name!r}')
  value = obj[name]
  if types is not None and not isinstance(value, types):
    raise ValueError(f'{origin}: field {name!r} has type '
                     f'{type(value).__name__}, expected {types}')
  return value


def read_lines(path: str | os.PathLike) -> list[str]:
  """Non-blank stripped lines of a text file."""
  path = require_file(path)
  with open(path, encoding='utf-8') as f:
    return [l.strip() for l in f if l.strip()]
