"""A training workdir, opened the same way by every entry point, local or cloud.

  workdir/config.json       the run's config (written atomically, after validation)
  workdir/run.json          tokenizer (kind, absolute path, sha256), when/where it ran
  workdir/LOCK              pid + host + time of the training that owns the workdir
  workdir/checkpoints/N/    orbax checkpoints, each with a sha256 manifest
  workdir/quarantine/       unreadable checkpoints moved aside before their step is reused
  workdir/metrics.jsonl, loss.png, tb/, predictions.jsonl, results.json, downstream/

Every path goes through `as_path` (etils.epath): `gs://`, `s3://` and other
URLs stay URLs (never `os.path.abspath`'d), local paths become absolute. Orbax
receives the same epath.

Guarantees: a second training on a locked workdir is refused at once (a lock
left by a dead process on this host is taken over, with a log line); an
existing run is continued only by a config of the same architecture and
tokenizer (`check_compatible` names the differing fields and changes no
file); loaders read the newest *readable* checkpoint (see
`training.checkpointing`) with the run's own config.json and tokenizer.
Not guaranteed on object stores: the lock is created with a check-then-write
(two trainings started within the same second on two hosts can both pass).
"""

from __future__ import annotations

import datetime
import hashlib
import importlib.util
import json
import logging
import os
import re
import socket
import sys
from typing import Any

import ml_collections
from etils import epath

log = logging.getLogger('hyperflax.workdir')
_URL = re.compile(r'^[A-Za-z][A-Za-z0-9+.-]*://')


class WorkdirError(ValueError):
  """A workdir cannot be used as asked (one line naming the file/field)."""


def is_url(path) -> bool:
  return bool(_URL.match(os.fspath(path)))


def as_path(path) -> epath.Path:
  """`path` as an epath: URLs untouched, local paths absolute (`~` expanded)."""
  text = os.fspath(path)
  if is_url(text):
    return epath.Path(text)
  return epath.Path(os.path.abspath(os.path.expanduser(text)))


def write_atomic(path, data: str | bytes) -> None:
  """Readers see the old file or the new one, never a truncated one.

  Local files: a temporary sibling renamed over the target. Object stores
  (gs://, s3://) publish an object in one request, so a plain write is atomic.
  """
  path = as_path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  raw = data.encode() if isinstance(data, str) else data
  if is_url(path):
    path.write_bytes(raw)
    return
  tmp = path.parent / f'.{path.name}.tmp{os.getpid()}'
  with open(tmp, 'wb') as f:
    f.write(raw)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def read_json(path) -> Any:
  """A JSON file, or a `WorkdirError` naming the file."""
  path = as_path(path)
  try:
    return json.loads(path.read_bytes().decode('utf-8'))
  except FileNotFoundError:
    raise WorkdirError(f'{path}: no such file') from None
  except UnicodeDecodeError as e:
    raise WorkdirError(f'{path}: not UTF-8 ({e.reason} at byte {e.start})') from None
  except json.JSONDecodeError as e:
    raise WorkdirError(f'{path}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno}'
                       f'{"; empty file" if not e.doc.strip() else ""})') from None


def file_sha256(path) -> str:
  digest = hashlib.sha256()
  with as_path(path).open('rb') as f:
    for chunk in iter(lambda: f.read(1 << 20), b''):
      digest.update(chunk)
  return digest.hexdigest()


def _now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')


# ---- the lock ------------------------------------------------------------------

class Lock:
  """`workdir/LOCK`: pid, host and start time of the training holding the workdir."""

  def __init__(self, directory):
    self.path = as_path(directory) / 'LOCK'
    self.record = {'pid': os.getpid(), 'host': socket.gethostname(), 'time': _now()}
    self.held = False

  def _create(self) -> bool:
    text = json.dumps(self.record)
    if is_url(self.path):  # object stores have no O_EXCL: check, then write
      if self.path.exists():
        return False
      self.path.write_text(text)
      return True
    try:
      fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      return False
    with os.fdopen(fd, 'w') as f:
      f.write(text)
    return True

  def _holder(self) -> dict | None:
    try:
      holder = json.loads(self.path.read_text())
      return holder if isinstance(holder, dict) else None
    except FileNotFoundError:
      return {}
    except (ValueError, UnicodeDecodeError):
      return None

  def _is_stale(self, holder: dict | None) -> bool:
    if holder is None:  # unreadable: a crash while writing it
      return True
    if holder.get('host') != self.record['host']:
      return False  # cannot see another host's processes
    pid = holder.get('pid')
    if not isinstance(pid, int) or pid == os.getpid():
      return True
    try:
      os.kill(pid, 0)
    except ProcessLookupError:
      return True
    except PermissionError:
      return False
    return False

  def acquire(self) -> None:
    self.path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(3):
      if self._create():
        self.held = True
        return
      holder = self._holder()
      if holder == {}:  # released between our two looks
        continue
      if not self._is_stale(holder):
        raise WorkdirError(
            f'{self.path.parent} is in use by pid {holder.get("pid")} on {holder.get("host")} '
            f'since {holder.get("time")} ({self.path}); wait for that training to end, or '
            'delete the LOCK file if it is gone')
      log.warning('taking over the stale lock %s (pid %s on %s since %s is not running)',
                  self.path, (holder or {}).get('pid'), (holder or {}).get('host'),
                  (holder or {}).get('time'))
      self.path.unlink(missing_ok=True)
    raise WorkdirError(f'{self.path}: could not take the lock (another process keeps creating it)')

  def release(self) -> None:
    if self.held and self._holder() == self.record:
      self.path.unlink(missing_ok=True)
    self.held = False

  def __enter__(self):
    self.acquire()
    return self

  def __exit__(self, *exc):
    self.release()


# ---- what identifies a run -------------------------------------------------------

def _word_kinds() -> tuple[str, ...]:
  """`data.vocab_path` values that name the synthetic suite's word tokenizers, not files."""
  from hyperflax.data.synthetic import WORD_KINDS
  return WORD_KINDS


def absolute_paths(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Makes the config's path fields absolute (URL-aware), in place, so the run's
  config.json works from any directory."""
  for section, key in (('model', 'init_from'), ('hyper', 'init_from'),
                       ('hyper', 'backbone_from'), ('data', 'data_dir'), ('data', 'vocab_path')):
    node = config.get(section)
    value = node.get(key) if node is not None else None
    if isinstance(value, str) and value and value not in _word_kinds():
      node[key] = os.fspath(as_path(value))
  return config


def tokenizer_info(tokenizer) -> dict[str, Any]:
  """kind ('words' | 'sentencepiece'), absolute path and sha256 of a tokenizer."""
  from hyperflax.data import synthetic
  if isinstance(tokenizer, synthetic.WordTokenizer):
    return {'kind': tokenizer.kind, 'path': None, 'sha256': None}
  return {'kind': 'sentencepiece', 'path': os.fspath(as_path(tokenizer.path)),
          'sha256': file_sha256(tokenizer.path)}


def tokenizer_of(config: ml_collections.ConfigDict):
  """The tokenizer `config`'s training data uses in this environment."""
  from hyperflax.data import registry
  d = config.data
  _, ctx = registry._context(  # pylint: disable=protected-access
      d.name, config.seed, d.num_shots, d.get('data_dir') or None, d.get('vocab_path') or None,
      dict(d.get('options', {}) or {}))
  return ctx.tokenizer


def architecture(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The fields a checkpoint's shapes and meaning depend on (flat names)."""
  out = {'method': config.get('method'), 'train_downstream': config.get('train_downstream')}
  if config.get('method') == 'hypermodel':
    for key in ('kind', 'prefix_len', 'lora_rank', 'decoder_layers', 'head_hidden',
                'fusion_in_decoder'):
      out[f'hyper.{key}'] = config.hyper.get(key)
  try:
    from hyperflax.training.experiment import t5_config_from
    t5 = t5_config_from(config)
    for key in ('vocab_size', 'd_model', 'd_kv', 'd_ff', 'num_layers', 'num_decoder_layers',
                'num_heads'):
      out[f'model.{key}'] = getattr(t5, key, None)
  except (OSError, ValueError, KeyError, TypeError):  # init_from unreadable: compare names
    out['model.preset'] = config.model.get('preset')
    out['model.init_from'] = config.model.get('init_from')
  return out


def _importable(module: str) -> bool:
  try:
    return module in sys.modules or importlib.util.find_spec(module) is not None
  except ImportError:
    return False


def _importance(field: str) -> tuple[int, str]:
  """The fields a user recognises first lead a list of differences."""
  return (['method', 'hyper.kind', 'train_downstream'] + [field]).index(field), field


def _check_backend(path) -> None:
  """A URL workdir needs a filesystem for its scheme: name the packages, before any work.

  epath serves gs:// and s3:// with tf.io.gfile when TensorFlow is installed,
  else with fsspec (gcsfs, s3fs); orbax asks google-cloud-storage about gs://
  buckets when it lists checkpoint steps.
  """
  if not is_url(path):
    return
  from etils.epath import gpath
  scheme, missing = os.fspath(path).split('://', 1)[0], []
  if not (scheme in ('gs', 's3') and gpath._is_tf_installed()):  # pylint: disable=protected-access
    import fsspec
    try:
      fsspec.get_filesystem_class('gcs' if scheme == 'gs' else scheme)
    except (ImportError, ValueError):
      missing.append({'gs': 'gcsfs', 's3': 's3fs'}.get(scheme, f'an fsspec {scheme}:// filesystem'))
  if scheme == 'gs' and not _importable('google.cloud.storage'):
    missing.append('google-cloud-storage')
  if missing:
    raise WorkdirError(f'{path}: {scheme}:// workdirs need {" and ".join(missing)} '
                       f'(pip install {" ".join(missing)})')


def _tokenizer_id(record: dict | None):
  return None if not record else (record.get('kind'), record.get('sha256'))


class Workdir:
  """One training workdir (see the module docstring for its layout)."""

  def __init__(self, path):
    self.path = as_path(path)
    _check_backend(self.path)
    self.config_path = self.path / 'config.json'
    self.run_path = self.path / 'run.json'
    self.checkpoints = self.path / 'checkpoints'
    self.lock = Lock(self.path)

  def __str__(self) -> str:
    return os.fspath(self.path)

  def read_config(self) -> ml_collections.ConfigDict | None:
    if not self.config_path.exists():
      return None
    data = read_json(self.config_path)
    if not isinstance(data, dict):
      raise WorkdirError(f'{self.config_path}: not a config (a JSON object)')
    return ml_collections.ConfigDict(data)

  def read_record(self) -> dict | None:
    return read_json(self.run_path) if self.run_path.exists() else None

  def has_run(self) -> bool:
    return self.config_path.exists() or self.checkpoints.exists()

  def check_compatible(self, config: ml_collections.ConfigDict, tokenizer: dict) -> None:
    """Refuses (naming the fields) a config of another architecture or tokenizer."""
    old = self.read_config()
    if old is None:
      return
    before, now = architecture(old), architecture(config)
    # Sizes where both sides can read their model's config.json, else its name.
    diffs = [f'{k}={before[k]!r} (now {now[k]!r})' for k in sorted(set(before) & set(now),
                                                                   key=_importance)
             if before[k] != now[k]]
    record = self.read_record()
    if record and _tokenizer_id(record.get('tokenizer')) != _tokenizer_id(tokenizer):
      t = record['tokenizer']
      diffs.append(f'tokenizer={t.get("kind")} {t.get("path") or ""} (now {tokenizer["kind"]} '
                   f'{tokenizer.get("path") or ""})'.replace('  ', ' '))
    if diffs:
      raise WorkdirError(f'{self.path} holds a run with {"; ".join(diffs)}: continue it with '
                         'its own config, or use another --workdir')

  def write_run(self, config: ml_collections.ConfigDict, tokenizer: dict) -> None:
    write_atomic(self.config_path, config.to_json_best_effort(indent=2))
    record = self.read_record() or {'created': _now()}
    record.update(tokenizer=tokenizer, updated=_now(), host=socket.gethostname())
    write_atomic(self.run_path, json.dumps(record, indent=2))


# ---- opening a trained workdir ----------------------------------------------------

def pin_tokenizer(config: ml_collections.ConfigDict, record: dict | None, where) -> None:
  """Points `config.data.vocab_path` at the tokenizer the run recorded (refusing, by
  name, one that is missing or changed here), so every loader tokenises as training did."""
  info = (record or {}).get('tokenizer')
  if not info:
    log.warning('%s records no tokenizer (written before run.json existed): using the one '
                'this environment resolves', where)
    return
  if info.get('kind') in _word_kinds():
    config.data.vocab_path = info['kind']
    return
  path, sha = info.get('path'), info.get('sha256')
  if path and as_path(path).exists() and file_sha256(path) == sha:
    config.data.vocab_path = path
    return
  with config.unlocked():  # the run's file is gone: one with the same sha256 here will do
    trial = ml_collections.ConfigDict(config.to_dict())
    trial.data.vocab_path = ''
  try:
    here = tokenizer_info(tokenizer_of(trial))
  except (OSError, ValueError):
    here = {'kind': 'none', 'path': None, 'sha256': None}
  if _tokenizer_id(here) == _tokenizer_id(info):
    config.data.vocab_path = here['path']
    return
  state = 'missing' if not (path and as_path(path).exists()) else 'changed'
  raise WorkdirError(
      f'{where}: trained with the sentencepiece tokenizer {path} (sha256 {str(sha)[:12]}), which '
      f'is {state} here, and this environment resolves {here["kind"]} {here["path"] or ""}'
      .rstrip() + '; set HYPERFLAX_DATA_DIR (or data.vocab_path) to a copy of that file')


def load_run_config(workdir, method: str | None = None,
                    pin: bool = True) -> ml_collections.ConfigDict:
  """The config.json a `train` run wrote into `workdir` (checked to be `method`),
  with its recorded tokenizer pinned."""
  wd = Workdir(workdir)
  if not wd.config_path.exists():
    raise FileNotFoundError(f'{wd.path}: no config.json (not a hyperflax.train workdir)')
  config = wd.read_config()
  if method is not None and config.get('method') != method:
    raise WorkdirError(f'{wd.config_path}: method={config.get("method")!r}; this needs a '
                       f'config.method={method!r} run')
  if pin and config.get('data') is not None:
    pin_tokenizer(config, wd.read_record(), wd.path)
  return config


def load_trainable(workdir, with_step: bool = False):
  """Trainable parameters of the newest readable checkpoint (numpy, host memory)."""
  from hyperflax.training import checkpointing
  step, trainable = checkpointing.restore_trainable(Workdir(workdir).checkpoints)
  return (step, trainable) if with_step else trainable
