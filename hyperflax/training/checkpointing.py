"""Orbax training checkpoints: save every N steps, keep K, resume from the newest good one.

Only trainable state is saved (parameters being trained, optimiser state,
HART's previous states, step = data position, RNG). The frozen downstream
model is referenced by `config.model.init_from` in the saved metadata.

Each finished checkpoint gets `CHECKSUMS.json` (sha256 of every file, written
by process 0 as part of the save: in orbax's post-finalization callback, just
before the step directory is committed, so a crash right after a save leaves a
verifiable step; a synchronous save writes it at once). A checkpoint whose files do
not match it, that orbax cannot read, or that holds NaN/Inf is *unreadable*:
restoring falls back to the previous one, and a trainer moves the unreadable
ones to `<workdir>/quarantine/` before it saves over their step numbers.
A checkpoint of another structure (another architecture) is not "unreadable":
it is refused, naming the differing arrays, and nothing is moved. Neither is an
error that is not the files' fault (MemoryError, RESOURCE_EXHAUSTED, a bug): it
propagates and nothing is moved (see `is_damage`).
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from hyperflax.workdir import WorkdirError, as_path, file_sha256, write_atomic

log = logging.getLogger('hyperflax.checkpointing')
CHECKSUMS = 'CHECKSUMS.json'
# orbax rewrites its step metadata (commit time) after the manifest is written;
# a damaged one fails orbax's own JSON parse instead.
_STEP_METADATA = '_CHECKPOINT_METADATA'


class Unreadable(Exception):
  """A damaged checkpoint (checksum, orbax/tensorstore error, non-finite values)."""


def _to_tree(state) -> dict:
  tree = flax.serialization.to_state_dict(state)
  return {k: v for k, v in tree.items() if v is not None}


def _files(directory) -> list:
  out = []
  for child in sorted(as_path(directory).iterdir(), key=lambda p: p.name):
    if child.is_dir():
      out.extend(_files(child))
    elif child.name not in (CHECKSUMS, _STEP_METADATA):
      out.append(child)
  return out


def write_checksums(step_dir) -> None:
  step_dir = as_path(step_dir)
  sums = {os.fspath(f.relative_to(step_dir)): file_sha256(f) for f in _files(step_dir)}
  write_atomic(step_dir / CHECKSUMS, json.dumps(sums, indent=0, sort_keys=True))


def verify_checksums(step_dir) -> bool:
  """Raises `Unreadable` on a mismatch; False when the step has no manifest."""
  step_dir = as_path(step_dir)
  path = step_dir / CHECKSUMS
  if not path.exists():
    return False
  try:
    sums = json.loads(path.read_text())
  except (ValueError, UnicodeDecodeError) as e:
    raise Unreadable(f'{path}: damaged ({e})') from None
  for name, digest in sums.items():
    f = step_dir / name
    if not f.exists():
      raise Unreadable(f'{f} is missing')
    if file_sha256(f) != digest:
      raise Unreadable(f'{f} does not match its sha256 in {CHECKSUMS}')
  return True


def verify_or_warn(step_dir) -> None:
  """`verify_checksums`, warning when the step has no manifest but an older one does
  (the run died between orbax's commit and the manifest, or it was deleted)."""
  step_dir = as_path(step_dir)
  if verify_checksums(step_dir):
    return
  older = [d for d in step_dir.parent.iterdir() if d.name.isdigit()
           and int(d.name) < int(step_dir.name) and (d / CHECKSUMS).exists()]
  if older:
    log.warning('checkpoint %s has no %s while older ones do: it is read unverified',
                step_dir, CHECKSUMS)


def _check_finite(tree, where: str) -> None:
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    if not jnp.issubdtype(leaf.dtype, jnp.floating):
      continue
    # On device for jax arrays: a sharded one is not readable whole by one host,
    # but the reduced scalar is (replicated).
    finite = (np.isfinite(leaf).all() if isinstance(leaf, np.ndarray)
              else jnp.isfinite(leaf).all())
    if not bool(finite):
      raise Unreadable(f'{where}: {jax.tree_util.keystr(path)} holds NaN/Inf')


def _structure_diff(saved, wanted) -> list[str]:
  """Paths whose presence or shape differs between saved metadata and the template."""
  flat_saved = {jax.tree_util.keystr(p): tuple(getattr(v, 'shape', ()))
                for p, v in jax.tree_util.tree_leaves_with_path(saved)}
  flat_wanted = {jax.tree_util.keystr(p): tuple(getattr(v, 'shape', ()))
                 for p, v in jax.tree_util.tree_leaves_with_path(wanted)}
  diffs = []
  for key in sorted(set(flat_saved) | set(flat_wanted)):
    a, b = flat_saved.get(key), flat_wanted.get(key)
    if a != b:
      diffs.append(f'{key}: saved {a if a is not None else "absent"}, '
                   f'config {b if b is not None else "absent"}')
  return diffs


def _manager(directory, options=None, item_names=('state', 'meta')):
  registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
  for args in (ocp.args.StandardSave, ocp.args.StandardRestore):
    registry.add('state', args, ocp.StandardCheckpointHandler)
  for args in (ocp.args.JsonSave, ocp.args.JsonRestore):  # known, so orbax does not warn
    registry.add('meta', args, ocp.JsonCheckpointHandler)
  del item_names
  return ocp.CheckpointManager(as_path(directory), options=options, handler_registry=registry)


# What a damaged, truncated or partly deleted checkpoint makes orbax/tensorstore raise
# (tensorstore puts its status code first in a ValueError's message). Anything else
# (MemoryError, RESOURCE_EXHAUSTED, a bug, a flaky filesystem) is not the checkpoint's
# fault: it propagates, so a good checkpoint is never moved to quarantine for it.
_DAMAGE_CODES = ('DATA_LOSS:', 'OUT_OF_RANGE:', 'FAILED_PRECONDITION:', 'NOT_FOUND:')
_DAMAGE_TYPES = (Unreadable, FileNotFoundError, EOFError, json.JSONDecodeError,
                 UnicodeDecodeError)


def is_damage(e: BaseException) -> bool:
  text = str(e)
  if isinstance(e, MemoryError) or 'RESOURCE_EXHAUSTED' in text:
    return False
  if isinstance(e, _DAMAGE_TYPES):
    return True
  return isinstance(e, ValueError) and any(code in text for code in _DAMAGE_CODES)


def _guarded(where, read):
  """`read()`, with every host agreeing on the verdict: the step is unreadable if
  any host found damage; an unexpected error on any host is raised on all."""
  where = os.fspath(where)
  error, code, out = None, 0, None
  try:
    out = read()
  except Exception as e:  # pylint: disable=broad-except  (sorted just below)
    error, code = e, 1 if is_damage(e) else 2
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    worst = int(np.max(multihost_utils.process_allgather(np.int32(code))))
  else:
    worst = code
  if worst == 2:
    if error is not None and code == 2:
      raise error
    raise RuntimeError(f'{where}: another process failed reading this checkpoint (see its log)')
  if worst == 1:
    if isinstance(error, Unreadable):
      raise error
    if error is not None:
      msg = (str(error).splitlines() or [''])[0][:200]
      raise Unreadable(f'{where}: {type(error).__name__}: {msg}') from None
    raise Unreadable(f'{where}: damaged (found by another process)')
  return out


class Checkpointer:
  """Thin wrapper over `ocp.CheckpointManager` for `TrainState`s."""

  def __init__(self, directory, keep: int = 3, async_save: bool = True):
    self.directory = as_path(directory)
    self.primary = jax.process_index() == 0
    # The callback runs (on every host) once all hosts' files are written, before
    # orbax commits the step directory: the manifest is committed with it.
    async_options = (ocp.AsyncOptions(post_finalization_callback=self._sum_saving)
                     if async_save else None)
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=async_save,
                                           async_options=async_options)
    self.manager = _manager(self.directory, options)
    self._unsummed: list[int] = []
    self._saving: int | None = None
    self._async = async_save

  def _step_dir(self, step: int):
    return self.directory / str(step)

  def _sum_saving(self) -> None:
    """orbax's post-finalization callback: the manifest of the step being saved,
    in its temporary directory (local) or its final one (gs://, committed by a marker file)."""
    step = self._saving
    if not self.primary or step is None:
      return
    try:
      candidates = [self._step_dir(step), *sorted(self.directory.glob(
          f'{step}{ocp.path.atomicity_types.TMP_DIR_SUFFIX}*'))]
      found = [d for d in candidates if d.exists()]
      if found:
        write_checksums(found[0])
    except Exception as e:  # pylint: disable=broad-except  (_finish_pending retries)
      log.warning('could not write %s for checkpoint %d yet (%s: %s)', CHECKSUMS, step,
                  type(e).__name__, e)

  def _finish_pending(self) -> None:
    """Waits for orbax to commit; the manifests its callback did not write are written now."""
    self.manager.wait_until_finished()
    pending, self._unsummed = self._unsummed, []
    self._saving = None
    if self.primary:
      for step in pending:
        step_dir = self._step_dir(step)
        if step_dir.exists() and not (step_dir / CHECKSUMS).exists():  # not rotated out
          write_checksums(step_dir)

  def save(self, step: int, state, meta: dict[str, Any]) -> None:
    self._finish_pending()
    self._saving = step
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(_to_tree(state)), meta=ocp.args.JsonSave(meta)), force=True)
    self._unsummed.append(step)
    if not self._async:
      self._finish_pending()  # committed already: its manifest at once

  def wait(self) -> None:
    self._finish_pending()

  def steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def _verify(self, step: int) -> None:
    """Process 0 reads the files once; every host gets its verdict."""
    if self.primary:
      _guarded(self._step_dir(step), lambda: verify_or_warn(self._step_dir(step)))
    else:
      _guarded(self._step_dir(step), lambda: None)

  def _restore(self, step: int, abstract) -> tuple[dict, dict]:
    where = self._step_dir(step)
    self._verify(step)
    saved = _guarded(where, lambda: self.manager.item_metadata(step)['state'])
    if saved is not None:
      diffs = _structure_diff(dict(saved), abstract)
      if diffs:
        raise WorkdirError(f'{os.fspath(where)} holds another architecture than the config '
                           f'({len(diffs)} arrays differ, e.g. {diffs[0]}): use another '
                           '--workdir, or the config the run was trained with')

    def restore():
      restored = self.manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
      _check_finite(restored['state'], os.fspath(where))
      return restored
    restored = _guarded(where, restore)
    return dict(restored['state']), dict(restored['meta'])

  def restore_latest(self, template, quarantine: bool = False) -> tuple[Any, dict] | None:
    """Restores the newest readable checkpoint into the structure of `template`.

    An unreadable checkpoint (see the module docstring) is skipped with a
    warning and the previous one is tried; with `quarantine`, the skipped ones
    are moved to `<workdir>/quarantine/` so their steps can be saved again.
    Returns None when none is readable.
    """
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, _to_tree(template))
    bad, found = [], None
    for step in reversed(self.steps()):
      try:
        state_dict, meta = self._restore(step, abstract)
      except Unreadable as e:
        log.warning('checkpoint %d is unreadable (%s); falling back to the previous one',
                    step, e)
        bad.append(step)
        continue
      for k, v in flax.serialization.to_state_dict(template).items():
        state_dict.setdefault(k, v)
      found = flax.serialization.from_state_dict(template, state_dict), meta
      break
    if quarantine and bad:
      self.quarantine(bad)
    return found

  def quarantine(self, steps) -> None:
    if self.primary:
      stamp = time.strftime('%Y%m%d-%H%M%S')
      for step in steps:
        dest = self.directory.parent / 'quarantine' / f'{step}-{stamp}'
        dest.parent.mkdir(parents=True, exist_ok=True)
        self._step_dir(step).rename(dest)
        log.warning('moved unreadable checkpoint %s to %s (its step will be saved again)',
                    self._step_dir(step), dest)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices('hyperflax_quarantine')
    self.manager.reload()

  def close(self) -> None:
    self._finish_pending()
    self.manager.close()


def restore_trainable(directory) -> tuple[int, dict]:
  """(step, trainable params as numpy) of the newest readable checkpoint, whatever
  mesh wrote it; for loaders, which never move or write anything."""
  directory = as_path(directory)
  if not directory.is_dir():
    raise FileNotFoundError(f'{directory.parent}: no checkpoints/ directory (not a training '
                            'workdir)')
  # Onto this process's first device (the saved shardings name devices that may not exist here).
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  errors = []
  with _manager(directory) as mngr:
    for step in reversed(sorted(mngr.all_steps())):
      where = os.fspath(directory / str(step))
      try:
        verify_or_warn(directory / str(step))
        target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                              mngr.item_metadata(step)['state'])
        restored = mngr.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target)))
        trainable = jax.tree.map(np.asarray, restored['state']['trainable'])
        _check_finite(trainable, where)
      except Exception as e:  # pylint: disable=broad-except
        if not is_damage(e):
          raise
        msg = str(e).splitlines()[0][:200] if str(e) else ''
        log.warning('checkpoint %s is unreadable (%s: %s); trying the previous one', where,
                    type(e).__name__, msg)
        errors.append(step)
        continue
      return int(step), trainable
  if errors:
    raise WorkdirError(f'{directory}: no readable checkpoint (steps {sorted(errors)} are '
                       'damaged; see the warnings above)')
  raise FileNotFoundError(f'{directory}: no finished checkpoint')


def numpy_tree(tree):
  return jax.tree.map(np.asarray, tree)
