"""Sizes, scan/remat equivalence, axis annotations, and import hygiene of the T5 model."""

import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hyperflax.model import T5, abstract_params, init_params, preset
from hyperflax.model import hf
from hyperflax.pretrained import param_count

# Published sizes of google/t5-v1_1-xl and -xxl.
@pytest.mark.parametrize('name,expected', [('xl', 2.85e9), ('xxl', 11.13e9)])
def test_full_size_parameter_counts_without_allocating(name, expected):
  shapes = abstract_params(preset(name))
  count = sum(np.prod(x.value.shape if hasattr(x, 'value') else x.shape)
              for x in jax.tree.leaves(shapes))
  assert abs(count - expected) / expected < 0.005, count


ALLOWED_AXES = {'vocab', 'embed', 'joined_kv', 'mlp', 'heads', 'relpos_buckets', 'layers'}


@pytest.mark.parametrize('scan', [False, True])
def test_every_parameter_has_logical_axes(scan):
  shapes = abstract_params(preset('tiny', scan_layers=scan))
  leaves = jax.tree.leaves(shapes, is_leaf=lambda x: isinstance(x, nn.Partitioned))
  assert leaves and all(isinstance(x, nn.LogicallyPartitioned) for x in leaves)
  for leaf in leaves:
    assert len(leaf.names) == leaf.value.ndim
    assert set(leaf.names) <= ALLOWED_AXES, leaf.names
    assert (leaf.names[0] == 'layers') == (scan and leaf.value.ndim > 1 and
                                           leaf.names.count('layers') == 1)


def _inputs(cfg):
  rng = np.random.default_rng(0)
  enc = rng.integers(2, cfg.vocab_size, (2, 13)).astype(np.int32)
  enc[1, 7:] = 0
  dec = rng.integers(2, cfg.vocab_size, (2, 6)).astype(np.int32)
  return jnp.asarray(enc), jnp.asarray(dec)


@pytest.mark.parametrize('remat', [False, True])
def test_scan_and_remat_equal_the_plain_loop(remat):
  base = preset('tiny', vocab_size=256, dropout_rate=0.0)
  params = init_params(base, jax.random.PRNGKey(1))
  scanned_cfg = base.replace(scan_layers=True, remat=remat)
  scanned = hf.stack_layers(params, base)
  enc, dec = _inputs(base)
  targets = jnp.roll(dec, -1, axis=1)

  def loss(model, p):
    logits = model.apply({'params': p}, enc, dec).astype(jnp.float32)
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], -1))

  l0, g0 = jax.jit(jax.value_and_grad(lambda p: loss(T5(base), p)))(params)
  l1, g1 = jax.jit(jax.value_and_grad(lambda p: loss(T5(scanned_cfg), p)))(scanned)
  np.testing.assert_allclose(l1, l0, atol=1e-5)
  g1 = hf.unstack_layers(g1, base)
  for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-5)
  assert jax.tree.structure(g0) == jax.tree.structure(g1)


def test_scanned_init_matches_stacked_layout():
  cfg = preset('tiny', scan_layers=True)
  shapes = nn.meta.unbox(abstract_params(cfg))
  stacked = hf.stack_layers(init_params(preset('tiny'), jax.random.PRNGKey(0)), preset('tiny'))
  assert jax.tree.map(lambda x: x.shape, shapes) == jax.tree.map(lambda x: x.shape, stacked)


def test_bfloat16_compute_keeps_float32_params_and_stays_close():
  cfg = preset('tiny', vocab_size=256, dropout_rate=0.0)
  params = init_params(cfg, jax.random.PRNGKey(2))
  enc, dec = _inputs(cfg)
  f32 = jax.jit(T5(cfg).apply)({'params': params}, enc, dec)
  b16 = jax.jit(T5(cfg.replace(dtype='bfloat16')).apply)({'params': params}, enc, dec)
  assert b16.dtype == jnp.bfloat16
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
  np.testing.assert_allclose(np.asarray(b16, np.float32), np.asarray(f32), atol=0.15)


def test_dropout_is_active_only_when_not_deterministic():
  cfg = preset('tiny', vocab_size=256, dropout_rate=0.3)
  params = init_params(cfg, jax.random.PRNGKey(3))
  enc, dec = _inputs(cfg)
  apply = jax.jit(T5(cfg).apply, static_argnames='deterministic')
  a = apply({'params': params}, enc, dec, deterministic=True)
  b = apply({'params': params}, enc, dec, deterministic=False,
            rngs={'dropout': jax.random.PRNGKey(0)})
  assert np.abs(np.asarray(a) - np.asarray(b)).max() > 1e-3


def test_model_code_does_not_import_tensorflow():
  code = ('import sys, jax.numpy as jnp, hyperflax, hyperflax.convert;'
          'from hyperflax.model import T5, preset, init_params;'
          'import jax; init_params(preset("tiny", vocab_size=64), jax.random.PRNGKey(0));'
          'print("tensorflow" in sys.modules)')
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True)
  assert out.stdout.strip() == 'False'
