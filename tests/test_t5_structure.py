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


ALLOWED_AXES = {'vocab', 'embed', 'joined_kv', 'mlp', 'heads', 'relpos_buckets', 'layers', 'stack'}


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


def test_stacked_kernels_initialise_as_separate_ones_did():
  """qkv / kv / wi slices draw the keys separate query/key/value (wi_0/wi_1) kernels
  drew, in flax's order, so random inits match the per-projection layout bit for bit."""
  from hyperflax.model.layers import Attention, MlpBlock
  cfg = preset('tiny')
  d, f, ff = cfg.d_model, cfg.inner_dim, cfg.d_ff
  normal = lambda std: nn.initializers.normal(stddev=std)

  class Separate(nn.Module):  # the earlier layout: one param per projection, in call order
    names: tuple
    shapes: tuple
    stds: tuple

    @nn.compact
    def __call__(self):
      return {n: self.param(n, normal(s), shape) for n, shape, s in
              zip(self.names, self.shapes, self.stds)}

  key = jax.random.PRNGKey(7)
  x = jnp.ones((1, 3, d))
  std_q, std_kv, std_o = (d * cfg.d_kv) ** -0.5, d ** -0.5, f ** -0.5
  self_attn = nn.meta.unbox(Attention(cfg).init(key, x, x, None, None))['params']
  ref = Separate(('query', 'key', 'value', 'out'), ((d, f),) * 3 + ((f, d),),
                 (std_q, std_kv, std_kv, std_o)).init(key)['params']
  for i, name in enumerate(('query', 'key', 'value')):
    np.testing.assert_array_equal(self_attn['qkv'][:, i], ref[name])
  np.testing.assert_array_equal(self_attn['out'], ref['out'])
  cross = nn.meta.unbox(Attention(cfg).init(key, x, x + 1, None, None))['params']
  for i, name in enumerate(('key', 'value')):
    np.testing.assert_array_equal(cross['kv'][:, i], ref[name])
  np.testing.assert_array_equal(cross['query'], ref['query'])
  mlp = nn.meta.unbox(MlpBlock(cfg).init(key, x))['params']
  ref = Separate(('wi_0', 'wi_1', 'wo'), ((d, ff), (d, ff), (ff, d)),
                 (d ** -0.5, d ** -0.5, ff ** -0.5)).init(key)['params']
  np.testing.assert_array_equal(mlp['wi'][:, 0], ref['wi_0'])
  np.testing.assert_array_equal(mlp['wi'][:, 1], ref['wi_1'])
  np.testing.assert_array_equal(mlp['wo'], ref['wo'])
