"""Orbax parameter checkpoints for the downstream model (convert / load_pretrained).

Layout of a converted model directory::

  DIR/config.json     transformers-style config (so the size is self-describing)
  DIR/params/         orbax PyTree checkpoint of the parameter tree
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np

from hyperflax.model.config import T5Config


def is_params_checkpoint(path: str) -> bool:
  return os.path.isdir(os.path.join(path, 'params'))


def save_params(path: str, params, config: T5Config) -> None:
  import orbax.checkpoint as ocp
  path = os.path.abspath(path)
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, 'config.json'), 'w') as f:
    json.dump(config.to_hf_dict(), f, indent=2, sort_keys=True)
  target = os.path.join(path, 'params')
  with ocp.PyTreeCheckpointer() as ckptr:
    ckptr.save(target, jax.tree.map(np.asarray, params), force=True)


def restore_params(path: str):
  """Restores the parameter tree as numpy arrays (host memory)."""
  import orbax.checkpoint as ocp
  target = os.path.join(os.path.abspath(path), 'params')
  with ocp.PyTreeCheckpointer() as ckptr:
    meta = ckptr.metadata(target)
    tree = meta.item_metadata.tree if hasattr(meta, 'item_metadata') else meta
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    return ckptr.restore(target, restore_args=restore_args)
