"""Generators against a frozen T5: gradients, per-example independence, storage, no-op init."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from hyperflax.hyper import (KINDS, HyperConfig, build_hypermodel, hypertuning_loss,
                             init_hypermodel, param_count, shared_prefix_from_hypermodel)
from hyperflax.model import T5, preset
from hyperflax.model import peft as peft_lib

# D=64, inner=32, V=512; uneven stacks (2 encoder, 1 decoder layer) keep compiles short
# and check that every site gets its own layer count.
T5C = preset('tiny', vocab_size=512, d_kv=8, num_decoder_layers=1, dropout_rate=0.0)
# Test-only: quicker XLA compiles (the checks compare runs of equal programs).
FAST = {'xla_backend_optimization_level': 0, 'xla_llvm_disable_expensive_passes': True}
FUSION = ('prefix', 'hart')  # fusion-in-decoder on for these, off for the others


def _config(kind, **kw):
  kw = dict(dict(prefix_len=3, lora_rank=2, decoder_layers=1,
                 fusion_in_decoder=kind in FUSION, consistency_alpha=1.0), **kw)
  return HyperConfig(kind=kind, **kw)


@functools.lru_cache(maxsize=None)
def _frozen():
  """Random T5 parameters from shapes alone (no init compile): float32 numpy."""
  tokens = jnp.ones((1, 4), jnp.int32)
  shapes = nn.unbox(jax.eval_shape(
      lambda: T5(T5C).init(jax.random.key(0), tokens, tokens))['params'])
  rng = np.random.default_rng(0)

  def make(path, s):
    name = jax.tree_util.keystr(path)
    if 'scale' in name:
      return (1 + 0.1 * rng.standard_normal(s.shape)).astype(np.float32)
    std = 1.0 if 'embedding' in name else s.shape[0] ** -0.5
    return (std * rng.standard_normal(s.shape)).astype(np.float32)
  return jax.tree_util.tree_map_with_path(make, shapes)


@functools.lru_cache(maxsize=None)
def _setup(kind):
  hyper = _config(kind)
  # An 'rbg' key: XLA compiles its random draws in about half threefry's time.
  params = init_hypermodel(hyper, T5C, jax.random.key(1, impl='rbg'), t5_params=_frozen())
  model = build_hypermodel(hyper, T5C)
  return hyper, model, params, jax.jit(model.apply, compiler_options=FAST)


def _tokens(seed, batch, length, pad_from=None):
  tokens = np.random.default_rng(seed).integers(2, T5C.vocab_size, (batch, length))
  for row, start in enumerate(pad_from or []):
    tokens[row, start:] = 0
  return jnp.asarray(tokens, jnp.int32)


def _batch(batch=2):
  targets = _tokens(11, batch, 5)
  return {'hyper_inputs': _tokens(10, batch, 9, pad_from=[9, 6][:batch]),
          'encoder_inputs': _tokens(12, batch, 6, pad_from=[6, 4][:batch]),
          'decoder_inputs': jnp.pad(targets[:, :-1], [(0, 0), (1, 0)]),
          'targets': targets,
          'target_weights': jnp.ones((batch, 5), jnp.float32)}


@functools.partial(jax.jit, compiler_options=FAST)
def _downstream(frozen, batch, peft, fusion_states, fusion_mask):
  return T5(T5C).apply({'params': frozen}, batch['encoder_inputs'], batch['decoder_inputs'],
                       peft=peft, fusion_states=fusion_states, fusion_mask=fusion_mask)


def _dot_output_shapes(jaxpr) -> set:
  """Shapes of every dot_general output, sub-jaxprs (scan, pjit, remat) included."""
  shapes = set()
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == 'dot_general':
      shapes.update(tuple(v.aval.shape) for v in eqn.outvars)
    for sub in jax.core.jaxprs_in_params(eqn.params):
      shapes |= _dot_output_shapes(sub)
  return shapes


@pytest.mark.parametrize('kind', KINDS)
def test_gradients_reach_generator_parameters_only(kind):
  hyper, model, params, _ = _setup(kind)
  frozen = _frozen()
  batch = _batch()
  prev = None
  if kind == 'hart':  # a non-trivial consistency term: states of a "previous step"
    prev = _setup(kind)[3]({'params': params}, batch['hyper_inputs'])[1]['states'] + 0.1

  def loss_fn(hyper_params, frozen_params):
    return hypertuning_loss(model.apply, T5(T5C).apply, hyper_params, frozen_params, batch,
                            consistency_alpha=hyper.consistency_alpha, prev_states=prev,
                            is_first_step=False)

  grad_fn = jax.grad(loss_fn, argnums=0, has_aux=True)
  # The frozen model's lm_head gradient [D, V] is never even formed: only
  # cotangents of the generator's parameters exist in the backward pass.
  jaxpr = jax.make_jaxpr(grad_fn)(params, frozen)
  assert len(jaxpr.out_avals) == len(jax.tree.leaves(params)) + (
      4 if kind == 'hart' else 3)  # + metrics
  lm_head_grad = {(T5C.d_model, T5C.vocab_size), (T5C.vocab_size, T5C.d_model)}
  assert not lm_head_grad & _dot_output_shapes(jaxpr.jaxpr)
  # Control: the same check does see it when the frozen tree is differentiated.
  both = jax.make_jaxpr(jax.grad(loss_fn, argnums=(0, 1), has_aux=True))(params, frozen)
  assert lm_head_grad & _dot_output_shapes(both.jaxpr)

  grads, metrics = jax.jit(grad_fn, compiler_options=FAST)(params, frozen)
  assert jax.tree.structure(grads) == jax.tree.structure(params)
  flat = {jax.tree_util.keystr(k): np.asarray(v)
          for k, v in jax.tree_util.tree_leaves_with_path(grads)}
  assert all(np.isfinite(g).all() for g in flat.values())
  nonzero = {k for k, g in flat.items() if np.abs(g).max() > 0}
  if kind == 'lora':
    # Gates start at 0: only the gates move first (heads and backbone get 0).
    assert nonzero and all('_gate' in k for k in nonzero)
    assert len(nonzero) == 6  # 3 sites x (query, value)
  elif kind == 'shared_lora':
    assert nonzero and all(k.endswith("_b']") for k in nonzero)  # b = 0: grad only in b
  else:
    assert any('head' in k or 'prefix_mlp' in k for k in nonzero)
    if hyper.uses_backbone:
      assert any("['backbone']['encoder']" in k for k in nonzero)
      assert any("['backbone']['decoder']" in k for k in nonzero)
      assert any("['decoder_inputs']" in k for k in nonzero)
  if kind == 'hart':
    assert float(metrics['consistency']) > 0

  # The optimiser holds the generator's parameters only: Adam keeps mu and
  # nu (2x) plus a step count, and never sees the frozen tree.
  opt_state = optax.adam(1e-3).init(params)
  assert param_count(opt_state) == 2 * param_count(params) + 1


@pytest.mark.parametrize('kind', KINDS)
def test_rows_depend_only_on_their_own_input(kind):
  hyper, _, params, apply = _setup(kind)
  tokens = _batch()['hyper_inputs']  # [2, 9], row 1 padded
  base = apply({'params': params}, tokens)
  for row in (0, 1):
    other = 1 - row
    changed = tokens.at[row].set(jnp.where(tokens[row] > 0, _tokens(4, 1, 9)[0], 0))
    out = apply({'params': params}, changed)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(base), jax.tree.leaves(out)):
      a, b, name = np.asarray(a), np.asarray(b), jax.tree_util.keystr(path)
      assert a.shape[0] == 2, name
      np.testing.assert_array_equal(a[other], b[other], err_msg=name)
      # Input-dependent leaves do change (gates and masks are not meant to).
      if hyper.uses_backbone and 'gate' not in name and 'mask' not in name:
        assert not np.array_equal(a[row], b[row]), name
  # A row alone gives the same parameters as that row within a batch.
  alone = apply({'params': params}, tokens[1:])
  for a, b in zip(jax.tree.leaves(alone), jax.tree.leaves(base)):
    np.testing.assert_allclose(np.asarray(a)[0], np.asarray(b)[1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize('kind', KINDS)
def test_stored_task_parameters_equal_recomputed(kind, tmp_path):
  """Generate once per task, save, reload, broadcast == regenerate per batch."""
  _, _, params, apply = _setup(kind)
  frozen = _frozen()
  task = _batch()['hyper_inputs'][1:]  # [1, 9]
  size = 2
  # Generated once, from the first batch of the task's queries, and stored.
  peft, aux = apply({'params': params}, jnp.tile(task, (size, 1)))
  flat = {f'peft/{k}': v[:1] for k, v in peft_lib.flatten(peft).items()}
  flat.update({f'aux/{k}': aux[k][:1] for k in ('fusion_states', 'fusion_mask') if k in aux})
  np.savez(tmp_path / 'task.npz', **jax.device_get(flat))
  loaded = dict(np.load(tmp_path / 'task.npz'))
  stored = peft_lib.unflatten({k[5:]: v for k, v in loaded.items() if k.startswith('peft/')})
  fusion = [loaded.get(f'aux/{k}') for k in ('fusion_states', 'fusion_mask')]
  fusion = [None if f is None else np.broadcast_to(f, (size,) + f.shape[1:]) for f in fusion]
  # Generated alone (batch 1): equal up to float rounding only, because XLA
  # may tile a matmul differently for another batch size.
  single, _ = apply({'params': params}, task)
  for a, b in zip(jax.tree.leaves(single), jax.tree.leaves(stored)):
    np.testing.assert_allclose(np.asarray(a), b, atol=1e-5, rtol=1e-5)

  for seed in (20, 21):  # later batches of queries of the same task
    batch = _batch(size)
    batch['encoder_inputs'] = _tokens(seed, size, 6, pad_from=[6, 3])
    from_store = _downstream(frozen, batch, peft_lib.broadcast_to_batch(stored, size), *fusion)
    peft_b, aux_b = apply({'params': params}, jnp.tile(task, (size, 1)))
    recomputed = _downstream(frozen, batch, peft_b, aux_b.get('fusion_states'),
                             aux_b.get('fusion_mask'))
    np.testing.assert_array_equal(np.asarray(from_store), np.asarray(recomputed))


@pytest.mark.parametrize('kind', ['lora', 'shared_lora'])
def test_fresh_lora_is_exactly_the_frozen_model(kind):
  _, _, params, apply = _setup(kind)
  frozen = _frozen()
  batch = _batch()
  peft, aux = apply({'params': params}, batch['hyper_inputs'])
  assert not aux  # no fusion: the frozen model sees exactly its own input
  if kind == 'lora':
    gates = [v for k, v in peft_lib.flatten(peft).items() if k.endswith('gate')]
    assert len(gates) == 6 and all(np.all(np.asarray(g) == 0) for g in gates)
    assert any(np.abs(np.asarray(v)).max() > 0 for k, v in peft_lib.flatten(peft).items()
               if k.endswith('/b'))  # the factors themselves are not zero
  adapted = _downstream(frozen, batch, peft, None, None)
  plain = _downstream(frozen, batch, None, None, None)
  np.testing.assert_array_equal(np.asarray(adapted), np.asarray(plain))


def test_prefix_mlp_heads_continue_as_shared_prefix_tuning():
  """HyperTuning App. D: generated embeddings + the hypermodel's heads
  initialise Prefix-MLP tuning, which then reproduces the generated prefixes."""
  _, _, params, apply = _setup('prefix_mlp')
  task = _batch()['hyper_inputs'][:1]
  peft, aux = apply({'params': params}, task)
  shared_params = shared_prefix_from_hypermodel(params, aux['embeddings'])
  shared = build_hypermodel(_config('shared_prefix'), T5C)
  peft_shared, _ = shared.apply({'params': shared_params}, task)
  for a, b in zip(jax.tree.leaves(peft), jax.tree.leaves(peft_shared)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6, rtol=1e-6)
  assert jax.tree.structure(peft) == jax.tree.structure(peft_shared)
