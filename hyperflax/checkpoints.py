"""Orbax parameter checkpoints for the downstream model (convert / load_pretrained).

Layout of a converted model directory::

  DIR/config.json     transformers-style config (so the size is self-describing)
  DIR/params/         orbax PyTree checkpoint of the parameter tree
"""

from __future__ import annotations

import json

import jax
import numpy as np

from hyperflax.model.config import T5Config
from hyperflax.workdir import as_path, write_atomic


def is_params_checkpoint(path) -> bool:
  return (as_path(path) / 'params').is_dir()


def save_params(path, params, config: T5Config) -> None:
  import orbax.checkpoint as ocp
  path = as_path(path)
  path.mkdir(parents=True, exist_ok=True)
  write_atomic(path / 'config.json', json.dumps(config.to_hf_dict(), indent=2, sort_keys=True))
  with ocp.PyTreeCheckpointer() as ckptr:
    ckptr.save(path / 'params', jax.tree.map(np.asarray, params), force=True)


def restore_params(path):
  """Restores the parameter tree as numpy arrays (host memory)."""
  import orbax.checkpoint as ocp
  target = as_path(path) / 'params'
  if not (target / '_METADATA').exists():
    raise ValueError(f'{target}: no _METADATA (an incomplete orbax checkpoint); write it again '
                     'with `python -m hyperflax.convert hf-to-flax`')
  with ocp.PyTreeCheckpointer() as ckptr:
    try:
      meta = ckptr.metadata(target)
      tree = meta.item_metadata.tree if hasattr(meta, 'item_metadata') else meta
      tree = getattr(tree, 'tree', tree)
      if not isinstance(tree, dict):
        raise ValueError('no readable _METADATA')
      restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
      return ckptr.restore(target, restore_args=restore_args)
    except Exception as e:  # orbax/tensorstore raise many types for damaged or partial dirs
      raise ValueError(f'{target}: not a readable orbax parameter checkpoint ({type(e).__name__}: '
                       f'{str(e).splitlines()[0][:160] if str(e) else ""})') from e
