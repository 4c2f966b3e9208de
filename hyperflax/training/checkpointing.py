"""Orbax training checkpoints: save every N steps, keep K, resume from the newest good one.

Only trainable state is saved (parameters being trained, optimiser state,
HART's previous states, step = data position, RNG). The frozen downstream
model is referenced by `config.model.init_from` in the saved metadata.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import flax.serialization
import jax
import numpy as np
import orbax.checkpoint as ocp


def _to_tree(state) -> dict:
  tree = flax.serialization.to_state_dict(state)
  return {k: v for k, v in tree.items() if v is not None}


class Checkpointer:
  """Thin wrapper over `ocp.CheckpointManager` for `TrainState`s."""

  def __init__(self, directory: str, keep: int = 3, async_save: bool = True):
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=async_save)
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_names=('state', 'meta'))

  def save(self, step: int, state, meta: dict[str, Any]) -> None:
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(_to_tree(state)), meta=ocp.args.JsonSave(meta)), force=True)

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def restore_latest(self, template) -> tuple[Any, dict] | None:
    """Restores the newest readable checkpoint into the structure of `template`.

    A checkpoint that fails to restore (corrupt or partial) is skipped with a
    warning and the previous one is tried. Returns None when none exists.
    """
    tree = _to_tree(template)
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
    for step in reversed(self.steps()):
      try:
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
      except Exception as e:  # orbax raises many types for damaged files
        logging.warning('checkpoint %s/%d is unreadable (%s: %s); falling back to the '
                        'previous one', self.directory, step, type(e).__name__, e)
        continue
      state_dict = dict(restored['state'])
      for k, v in flax.serialization.to_state_dict(template).items():
        state_dict.setdefault(k, v)
      return flax.serialization.from_state_dict(template, state_dict), dict(restored['meta'])
    return None

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def numpy_tree(tree):
  return jax.tree.map(np.asarray, tree)
