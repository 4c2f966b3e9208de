"""Generated PEFT per example, stored per task, and as an exact no-op at init."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hyperflax.hyper import (KINDS, HyperConfig, build_hypermodel, init_hypermodel,
                             shared_prefix_from_hypermodel)
from hyperflax.hyper.testing import FAST_COMPILE, random_t5_params, random_tokens, toy_batch
from hyperflax.model import T5, preset
from hyperflax.model import peft as peft_lib

# D=64, inner=32, V=512; uneven stacks (2 encoder, 1 decoder layer) keep compiles short
# and check that every site gets its own layer count.
T5C = preset('tiny', vocab_size=512, d_kv=8, num_decoder_layers=1, dropout_rate=0.0)
FUSION = ('prefix', 'hart')  # fusion-in-decoder on for these, off for the others


def _config(kind, **kw):
  kw = dict(dict(prefix_len=3, lora_rank=2, decoder_layers=1,
                 fusion_in_decoder=kind in FUSION, consistency_alpha=1.0), **kw)
  return HyperConfig(kind=kind, **kw)


@functools.lru_cache(maxsize=None)
def _frozen():
  return random_t5_params(T5C)


@functools.lru_cache(maxsize=None)
def _setup(kind):
  hyper = _config(kind)
  # An 'rbg' key: XLA compiles its random draws in about half threefry's time.
  params = init_hypermodel(hyper, T5C, jax.random.key(1, impl='rbg'), t5_params=_frozen())
  model = build_hypermodel(hyper, T5C)
  return hyper, model, params, jax.jit(model.apply, compiler_options=FAST_COMPILE)


def _tokens(seed, batch, length, pad_from=None):
  return random_tokens(seed, batch, length, T5C.vocab_size, pad_from)


@functools.partial(jax.jit, compiler_options=FAST_COMPILE)
def _downstream(frozen, batch, peft, fusion_states, fusion_mask):
  return T5(T5C).apply({'params': frozen}, batch['encoder_inputs'], batch['decoder_inputs'],
                       peft=peft, fusion_states=fusion_states, fusion_mask=fusion_mask)


@pytest.mark.parametrize('kind', KINDS)
def test_rows_depend_only_on_their_own_input(kind):
  hyper, _, params, apply = _setup(kind)
  tokens = toy_batch(T5C)['hyper_inputs']  # [2, 9], row 1 padded
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
  task = toy_batch(T5C)['hyper_inputs'][1:]  # [1, 9]
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
    batch = toy_batch(T5C, size)
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
  batch = toy_batch(T5C)
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
  task = toy_batch(T5C)['hyper_inputs'][:1]
  peft, aux = apply({'params': params}, task)
  shared_params = shared_prefix_from_hypermodel(params, aux['embeddings'])
  shared = build_hypermodel(_config('shared_prefix'), T5C)
  peft_shared, _ = shared.apply({'params': shared_params}, task)
  for a, b in zip(jax.tree.leaves(peft), jax.tree.leaves(peft_shared)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6, rtol=1e-6)
  assert jax.tree.structure(peft) == jax.tree.structure(peft_shared)
