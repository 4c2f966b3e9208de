"""Per-layer diagnostics of generated PEFT parameters.

Feed the generator several demonstration sets of the SAME task (one per batch
row): a healthy hypermodel writes parameters whose size is stable per layer and
whose spread across demonstration sets is small compared to their norm.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from hyperflax.model import peft as peft_lib

Array = jax.Array


def _leaf_stats(x: Array) -> dict[str, Array]:
  """x: [S, L, ...] for S demonstration sets -> per-layer statistics [L]."""
  x = x.astype(jnp.float32).reshape(x.shape[:2] + (-1,))
  norms = jnp.linalg.norm(x, axis=-1)  # [S, L]
  # Deviations are taken relative to set 0 first: identical sets then give
  # exactly zero spread (no cancellation error from subtracting a mean).
  rel = x - x[:1]
  dev = rel - jnp.mean(rel, axis=0)
  spread = jnp.sqrt(jnp.mean(jnp.sum(jnp.square(dev), axis=-1), axis=0))  # [L]
  mean_norm = jnp.linalg.norm(jnp.mean(x, axis=0), axis=-1)
  return {'norm': jnp.mean(norms, axis=0), 'norm_std': jnp.std(norms, axis=0),
          'spread': spread, 'relative_spread': spread / jnp.maximum(mean_norm, 1e-12)}


def _lora_delta_stats(slot: dict) -> dict[str, Array]:
  """Statistics of the effective update gate * a @ b, never materialised.

  <d_s, d_t> = g_s g_t sum((a_s^T a_t) * (b_s b_t^T)) uses R x R matrices only.
  """
  a = slot['a'].astype(jnp.float32)  # [S, L, D, R]
  b = slot['b'].astype(jnp.float32)  # [S, L, R, F]
  gate = slot.get('gate')
  g = jnp.ones(a.shape[:2]) if gate is None else gate.astype(jnp.float32)  # [S, L]
  ata = jnp.einsum('SLDR,TLDQ->STLRQ', a, a)
  bbt = jnp.einsum('SLRF,TLQF->STLRQ', b, b)
  gram = jnp.einsum('STLRQ,STLRQ->STL', ata, bbt) * g[:, None] * g[None, :]  # [S, S, L]
  num_sets = a.shape[0]
  sq_norms = jnp.maximum(jnp.diagonal(gram, axis1=0, axis2=1).T, 0.0)  # [S, L]
  mean_sq = jnp.maximum(jnp.sum(gram, axis=(0, 1)) / num_sets ** 2, 0.0)  # ||mean||^2 [L]
  spread = jnp.sqrt(jnp.maximum(jnp.mean(sq_norms, axis=0) - mean_sq, 0.0))
  norms = jnp.sqrt(sq_norms)
  return {'norm': jnp.mean(norms, axis=0), 'norm_std': jnp.std(norms, axis=0),
          'spread': spread,
          'relative_spread': spread / jnp.maximum(jnp.sqrt(mean_sq), 1e-12)}


def parameter_stats(peft: dict) -> dict[str, dict[str, np.ndarray]]:
  """Per-layer norms and spread of generated parameters across demonstration sets.

  Args:
    peft: generated PEFT whose batch rows are S >= 1 demonstration sets of one task.

  Returns:
    {leaf path: {stat: [L] numpy}} with stats
      'norm': mean over sets of the layer's Frobenius norm,
      'norm_std': its standard deviation over sets,
      'spread': RMS over sets of ||phi_s - mean_s phi||,
      'relative_spread': spread / ||mean_s phi||.
    LoRA slots also get '{stack}/{site}/{proj}/delta' for gate * a @ b (the
    factors alone are only defined up to a rescaling between a and b).
  """
  stats = {path: _leaf_stats(x) for path, x in peft_lib.flatten(peft).items()}
  for stack, site in peft_lib.SITES:
    for proj in ('query', 'value'):
      slot = peft.get(stack, {}).get(site, {}).get(proj)
      if slot is not None:
        stats[f'{stack}/{site}/{proj}/delta'] = _lora_delta_stats(slot)
  return jax.tree.map(np.asarray, jax.device_get(stats))


def diagnose(apply_fn, params, demo_sets: Array) -> dict[str, dict[str, np.ndarray]]:
  """Runs a generator on S demonstration sets of one task; see `parameter_stats`.

  Args:
    apply_fn: the generator's `apply` (e.g. `build_hypermodel(...).apply`).
    params: its parameters.
    demo_sets: [S, T] int32, row s = the few-shot input built from set s.
  """
  peft, _ = jax.jit(lambda p, x: apply_fn({'params': p}, x))(params, demo_sets)
  return parameter_stats(peft)


def format_stats(stats: dict[str, dict[str, np.ndarray]]) -> str:
  """A plain-text table: one row per (leaf, layer)."""
  lines = [f'{"parameter":<32} {"layer":>5} {"norm":>10} {"norm_std":>10} '
           f'{"spread":>10} {"rel_spread":>10}']
  for path in sorted(stats):
    s = stats[path]
    for layer in range(len(s['norm'])):
      lines.append(f'{path:<32} {layer:>5} {s["norm"][layer]:>10.4g} '
                   f'{s["norm_std"][layer]:>10.4g} {s["spread"][layer]:>10.4g} '
                   f'{s["relative_spread"][layer]:>10.4g}')
  return '\n'.join(lines)
