"""The command-line boundary of every entry point.

A user mistake or a damaged file becomes one line on stderr, `error: ...`
naming the file, flag or config field, and exit code 2. The traceback is
printed only with `--verbose` / `--debug` or `HYPERFLAX_DEBUG=1`. Anything
else is a bug (a KeyError, TypeError, ... from our code): its traceback and
exit code 1. A KeyError is a user error only when it is ml_collections' answer
to a misspelled --config override ("Did you mean ..."). Library INFO chatter (orbax, absl,
jax) is silenced unless verbose.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import traceback
from typing import Callable, Sequence

VERBOSE_FLAGS = ('--verbose', '--debug')
CONFIG_DOCS = ('config fields: hyperflax/config_base.py (one comment per field) and '
               'docs/ERRORS.md; override any with --config.SECTION.FIELD=VALUE')


def verbose_requested(argv: Sequence[str] | None = None) -> bool:
  argv = sys.argv if argv is None else argv
  return (any(a in VERBOSE_FLAGS for a in argv) or
          os.environ.get('HYPERFLAX_DEBUG', '') not in ('', '0'))


def setup_logging(verbose: bool, level: int = logging.INFO) -> None:
  """Our INFO lines on stderr; orbax/absl/jax only from WARNING unless verbose."""
  root = logging.getLogger()
  if not root.handlers:
    logging.basicConfig(format='%(levelname).1s %(asctime)s %(message)s', datefmt='%H:%M:%S')
  root.setLevel(logging.DEBUG if verbose else level)
  for name in ('absl', 'orbax', 'jax', 'etils', 'matplotlib', 'tensorstore'):
    logging.getLogger(name).setLevel(logging.INFO if verbose else logging.WARNING)


def _user_error_types() -> tuple[type, ...]:
  # ValueError covers json.JSONDecodeError and UnicodeDecodeError.
  types: list[type] = [ValueError, OSError]
  try:
    from absl import flags
    types.append(flags.Error)
  except ImportError:
    pass
  try:
    from safetensors import SafetensorError
    types.append(SafetensorError)
  except ImportError:
    pass
  return tuple(types)


def _misspelled_override(e: BaseException) -> bool:
  text = e.args[0] if isinstance(e, KeyError) and e.args and isinstance(e.args[0], str) else ''
  return 'Did you mean' in text


def is_user_error(e: BaseException) -> bool:
  if isinstance(e, KeyError):
    return _misspelled_override(e)
  return isinstance(e, _user_error_types())


def describe(e: BaseException) -> str:
  """One line for `e`: the file/field it names, without library noise."""
  from absl import flags
  text = e.args[0] if isinstance(e, KeyError) and e.args and isinstance(e.args[0], str) else ''
  if _misspelled_override(e):  # ml_collections: a misspelled --config.* override
    parts = text.split('\n')
    field = parts[0].strip('\'"')
    return f'--config override names an unknown field {field!r}: {parts[-1].strip()}'
  if isinstance(e, flags.IllegalFlagValueError):
    text = str(e)
    head = text.split(': ', 1)[0]  # "flag --config=x.py:variant", the flag and its value
    last = [ln for ln in text.splitlines() if ln.strip()][-1].strip()
    last = re.sub(r'^\w+(Error|Exception): ', '', last)
    if last.startswith(head):
      return last
    return f'{head}: {last}' if last not in head else head
  if isinstance(e, flags.Error):
    return f'{e} (see --help)'
  if isinstance(e, OSError) and 'Failed loading config file' in str(e):
    path = re.findall(r"No such file or directory: '([^']+)'", str(e))
    return (f'--config={path[0]}: no such config file' if path
            else 'could not load --config: ' + str(e).splitlines()[-1].strip())
  if isinstance(e, json.JSONDecodeError):
    return f'not valid JSON: {e.msg} at line {e.lineno} column {e.colno}'
  if isinstance(e, UnicodeDecodeError):
    return f'a file is not UTF-8 ({e.reason} at byte {e.start})'
  if isinstance(e, OSError) and e.filename and e.strerror:
    return f'{e.filename}: {e.strerror}'
  if type(e).__name__ == 'SafetensorError':
    return f'damaged safetensors file: {e}'
  text = str(e).strip() or type(e).__name__
  if isinstance(e, KeyError):
    text = f'missing key {text}'
  first = text.splitlines()[0]
  return first if len(first) < 400 else first[:397] + '...'


def report(e: BaseException, verbose: bool, prog: str = '') -> int:
  """Prints `e` as the boundary does and returns the exit code."""
  prefix = f'{prog}: ' if prog else ''
  user = is_user_error(e)
  if verbose or not user:
    traceback.print_exception(e)
  if user:
    print(f'{prefix}error: {describe(e)}', file=sys.stderr, flush=True)
    return 2
  print(f'{prefix}internal error (a bug, please report it with the traceback above): '
        f'{type(e).__name__}: {describe(e)}', file=sys.stderr, flush=True)
  return 1


def guard(body: Callable[[], int | None], verbose: bool, prog: str = '') -> int:
  """Runs `body` behind the boundary: its return code, or 2/1 for errors."""
  try:
    return int(body() or 0)
  except KeyboardInterrupt:
    print(f'{prog + ": " if prog else ""}interrupted', file=sys.stderr, flush=True)
    return 130
  except Exception as e:  # pylint: disable=broad-except
    return report(e, verbose, prog)


def _raise_unknown_override(e: BaseException, argv: Sequence[str]):
  """ml_collections raises a bare AttributeError/KeyError naming only the last part of an
  override path that does not exist (e.g. a new key in a free-form section such as
  model.overrides); name the flag instead."""
  if _misspelled_override(e):
    raise e
  name = str(e.args[0] if e.args else e).strip('\'"')
  # The error names one path component only: every override that has it is a suspect,
  # except overrides of fields every config has (when another suspect remains).
  paths = [a.split('=', 1)[0][len('--config.'):].split('.') for a in argv
           if a.startswith('--config.')]
  suspects = [p for p in paths if name in p]
  if len(suspects) > 1:
    from hyperflax.config_base import base_config
    base = base_config()

    def known(parts):
      node = base
      for part in parts:
        if not hasattr(node, 'keys') or part not in node:
          return False
        node = node[part]
      return True
    suspects = [p for p in suspects if not known(p)] or suspects
  if not suspects:
    raise e
  named = ' or '.join(f'--config.{".".join(p)} (no field {name!r} under '
                      f'{".".join(p[:p.index(name)]) or "the top level"!r})' for p in suspects)
  raise ValueError(f'{named}: --config.* overrides can only change fields the config file '
                   'defines (add free-form keys such as model.overrides in the config '
                   'file)') from None


def absl_main(doc: str, define: Callable, body: Callable, argv: Sequence[str] | None = None,
              prog: str = '', required: Sequence[str] = ()) -> int:
  """An absl-flags entry point with a fresh `FlagValues` (so it can run in-process
  more than once): `define(fv)` defines the flags, `body(fv)` runs."""
  from absl import flags
  argv = list(sys.argv if argv is None else argv)
  prog = prog or os.path.basename(argv[0]) if argv else prog
  verbose = verbose_requested(argv)
  fv = flags.FlagValues()
  define(fv)
  flags.DEFINE_bool('verbose', False, 'tracebacks and library INFO logs', flag_values=fv)
  flags.DEFINE_bool('debug', False, 'same as --verbose', flag_values=fv)
  if any(a in ('-h', '--help', '--helpshort', '--helpfull', '-?') for a in argv[1:]):
    print(doc.strip() + '\n\nflags:\n' + fv.get_help() + '\n\n' + CONFIG_DOCS)
    return 0
  setup_logging(verbose)

  def run():
    saved = sys.argv
    sys.argv = argv  # ml_collections reads the --config.* overrides from sys.argv
    try:
      fv(argv)
    except (AttributeError, KeyError) as e:
      _raise_unknown_override(e, argv)
    finally:
      sys.argv = saved
    missing = [f'--{n}' for n in required if fv[n].value is None]
    if missing:
      raise ValueError(f'{", ".join(missing)} required (see --help)')
    if 'config' in required:
      _ = fv.config  # ml_collections loads the file lazily: fail here, before any work
    return body(fv)
  return guard(run, verbose, prog)
