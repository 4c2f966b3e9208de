"""Gradients reach the generator only; the frozen T5 is a constant argument."""

import functools

import jax
import numpy as np
import optax
import pytest

from hyperflax.hyper import (KINDS, HyperConfig, build_hypermodel, hypertuning_loss,
                             init_hypermodel, param_count)
from hyperflax.hyper.testing import FAST_COMPILE, random_t5_params, toy_batch
from hyperflax.model import T5, preset
from jaxprs import dot_shapes

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


@pytest.mark.parametrize('kind', KINDS)
def test_gradients_reach_generator_parameters_only(kind):
  hyper, model, params, _ = _setup(kind)
  frozen = _frozen()
  batch = toy_batch(T5C)
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
  assert not lm_head_grad & dot_shapes(jaxpr.jaxpr)
  # Control: the same check does see it when the frozen tree is differentiated.
  both = jax.make_jaxpr(jax.grad(loss_fn, argnums=(0, 1), has_aux=True))(params, frozen)
  assert lm_head_grad & dot_shapes(both.jaxpr)

  grads, metrics = jax.jit(grad_fn, compiler_options=FAST_COMPILE)(params, frozen)
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
