"""Per-layer norms and cross-demonstration spread of generated parameters."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hyperflax.hyper import (HyperConfig, build_hypermodel, diagnose, format_stats,
                             init_hypermodel, parameter_stats)
from hyperflax.model import preset

T5C = preset('tiny', vocab_size=512, d_kv=8, num_decoder_layers=1, dropout_rate=0.0)


def test_stats_on_known_parameters():
  rng = np.random.default_rng(0)
  base = rng.standard_normal((1, 3, 2, 5)).astype(np.float32)  # [S=1, L, P, F]
  sets = np.concatenate([base, base, base + 1.0])  # three demonstration sets
  peft = {'encoder': {'self': {'prefix': {'k': jnp.asarray(sets), 'v': jnp.asarray(sets[:1])}}}}
  stats = parameter_stats(peft)
  k = stats['encoder/self/prefix/k']
  norms = np.linalg.norm(sets.reshape(3, 3, -1), axis=-1)  # [S, L]
  np.testing.assert_allclose(k['norm'], norms.mean(0), rtol=1e-5)
  np.testing.assert_allclose(k['norm_std'], norms.std(0), rtol=1e-5)
  mean = sets.mean(0)
  spread = np.sqrt(np.mean(np.sum((sets - mean).reshape(3, 3, -1) ** 2, axis=-1), axis=0))
  np.testing.assert_allclose(k['spread'], spread, rtol=1e-5)
  np.testing.assert_allclose(k['relative_spread'],
                             spread / np.linalg.norm(mean.reshape(3, -1), axis=-1), rtol=1e-5)
  np.testing.assert_array_equal(stats['encoder/self/prefix/v']['spread'], 0)  # one set


def test_lora_delta_stats_match_the_materialised_update():
  rng = np.random.default_rng(1)
  a = rng.standard_normal((3, 2, 6, 2)).astype(np.float32)  # [S, L, D, R]
  b = rng.standard_normal((3, 2, 2, 4)).astype(np.float32)  # [S, L, R, F]
  gate = rng.uniform(-1, 1, (3, 2)).astype(np.float32)
  peft = {'decoder': {'cross': {'value': {'a': a, 'b': b, 'gate': gate}}}}
  stats = parameter_stats(peft)['decoder/cross/value/delta']
  delta = gate[..., None, None] * np.einsum('SLDR,SLRF->SLDF', a, b)
  norms = np.linalg.norm(delta.reshape(3, 2, -1), axis=-1)
  np.testing.assert_allclose(stats['norm'], norms.mean(0), rtol=1e-4)
  dev = (delta - delta.mean(0)).reshape(3, 2, -1)
  spread = np.sqrt(np.mean(np.sum(dev ** 2, axis=-1), axis=0))
  np.testing.assert_allclose(stats['spread'], spread, rtol=1e-4)


@pytest.mark.parametrize('kind', ['prefix', 'shared_prefix'])
def test_diagnose_demonstration_sets_of_one_task(kind):
  hyper = HyperConfig(kind=kind, prefix_len=2, decoder_layers=1)
  params = init_hypermodel(hyper, T5C, jax.random.key(0, impl='rbg'))
  demo_sets = jnp.asarray(np.random.default_rng(2).integers(2, 512, (3, 10)), jnp.int32)
  stats = diagnose(build_hypermodel(hyper, T5C).apply, params, demo_sets)
  assert set(stats) == {f'{s}/self/prefix/{kv}' for s in ('encoder', 'decoder') for kv in 'kv'}
  enc = stats['encoder/self/prefix/k']
  assert enc['norm'].shape == (T5C.num_layers,) and np.all(enc['norm'] > 0)
  if kind == 'shared_prefix':  # ignores the demonstrations: no spread at all
    assert np.all(enc['spread'] == 0)
  else:
    assert np.all(enc['spread'] > 0)
  table = format_stats(stats)
  assert 'encoder/self/prefix/k' in table and len(table.splitlines()) == 1 + 2 * 2 + 2 * 1
