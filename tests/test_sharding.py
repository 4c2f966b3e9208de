"""Mesh construction, axis rules, sharding inference, multi-host env (1 device, fast;
launchers: test_launch.py).

Shardings are computed against `AbstractMesh`es, so 8- to 64-device layouts
are checked here without those devices; `test_sharding_mesh.py` runs them.
"""

import math

import jax
import numpy as np
import optax
import pytest
from jax.sharding import AbstractMesh, AxisType, PartitionSpec as P

from hyperflax import distributed, sharding
from hyperflax.config_base import base_config


def abstract_mesh(**sizes):
  shape = sharding.mesh_shape(sizes, math.prod(v for v in sizes.values() if v > 0))
  return AbstractMesh(tuple(shape.values()), sharding.MESH_AXES,
                      axis_types=(AxisType.Auto,) * 3)


def test_mesh_shape_resolves_the_rest_and_rejects_bad_sizes():
  assert sharding.mesh_shape({'data': -1, 'fsdp': 2}, 8) == {'data': 4, 'fsdp': 2, 'tensor': 1}
  assert sharding.mesh_shape(None, 4) == {'data': 4, 'fsdp': 1, 'tensor': 1}
  for bad in ({'data': 3}, {'data': -1, 'fsdp': -1}, {'pipeline': 2}, {'data': -1, 'fsdp': 3}):
    with pytest.raises(ValueError):
      sharding.mesh_shape(bad, 8)


def test_default_config_mesh_is_data_parallel_over_all_devices():
  mesh = sharding.make_mesh(base_config())
  assert mesh.axis_names == sharding.MESH_AXES
  assert dict(mesh.shape) == {'data': jax.device_count(), 'fsdp': 1, 'tensor': 1}


def test_weight_and_activation_rules_use_distinct_names():
  names = [n for n, _ in sharding.LOGICAL_AXIS_RULES]
  assert len(names) == len(set(names))
  assert {'act_batch', 'act_len', 'act_embed', 'act_heads', 'act_mlp', 'act_vocab'} <= set(names)
  for _, axes in sharding.LOGICAL_AXIS_RULES:
    for a in (axes if isinstance(axes, tuple) else (axes,)):
      assert a is None or a in sharding.MESH_AXES
  assert dict(sharding.LOGICAL_AXIS_RULES)['act_batch'] == ('data', 'fsdp')


def test_config_overrides_and_frozen_only_overrides():
  config = base_config()
  config.sharding_rules = (('vocab', None),)
  config.frozen_sharding_rules = (('embed', ['tensor']),)
  rules, frozen = dict(sharding.axis_rules(config)), dict(sharding.axis_rules(config, frozen=True))
  assert rules['vocab'] is None and rules['embed'] == 'fsdp'
  assert frozen['vocab'] is None and frozen['embed'] == 'tensor'


def test_uneven_dimensions_stay_unsplit_and_unknown_names_raise():
  mesh = abstract_mesh(fsdp=4, tensor=2)
  rules = sharding.LOGICAL_AXIS_RULES
  assert sharding.logical_sharding(P('embed', 'heads'), (64, 6), mesh, rules).spec == \
      P('fsdp', 'tensor')
  assert sharding.logical_sharding(P('embed', 'heads'), (6, 3), mesh, rules).spec == P()
  # A tuple of mesh axes drops inner axes until the split is even.
  assert sharding.logical_sharding(P('act_batch'), (2,), abstract_mesh(data=2, fsdp=4),
                                   rules).spec == P('data')
  with pytest.raises(ValueError, match='no sharding rule'):
    sharding.logical_sharding(P('embedding'), (8,), mesh, rules)


def test_adam_moments_follow_params_and_factored_state_is_replicated():
  mesh = abstract_mesh(fsdp=8)
  params = {'w': jax.ShapeDtypeStruct((64, 32), np.float32),
            'b': jax.ShapeDtypeStruct((32,), np.float32)}
  axes = {'w': P('embed', 'mlp'), 'b': P('mlp')}
  shard = sharding.param_shardings(params, axes, mesh, sharding.LOGICAL_AXIS_RULES)
  adam = jax.eval_shape(optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3)).init,
                        params)
  got = sharding.matching_shardings(adam, params, shard, mesh)
  assert got[1][0].mu['w'].spec == P('fsdp') and got[1][0].nu['w'].spec == P('fsdp')
  assert got[1][0].count.spec == P()
  # Adafactor factors dims >= 128: its [256] / [512] moments are replicated.
  big = {'w': jax.ShapeDtypeStruct((256, 512), np.float32)}
  big_shard = sharding.param_shardings(big, {'w': P('embed', 'mlp')}, mesh,
                                       sharding.LOGICAL_AXIS_RULES)
  factored = jax.eval_shape(optax.adafactor(1e-3).init, big)
  got = sharding.matching_shardings(factored, big, big_shard, mesh)
  assert got[0].v_row['w'].spec == P() and got[0].v_col['w'].spec == P()


@pytest.mark.parametrize('name', ['hart_xl'])
def test_full_size_parameters_all_have_rules_and_fsdp8_is_near_ideal(name):
  # ZeRO-3 claim at full size, analytically: every parameter resolves, and
  # under fsdp=8 the largest device holds at most 1.25x total / 8.
  from test_configs import load
  from hyperflax.training.experiment import Experiment
  exp = Experiment.from_config(load(name))
  mesh = abstract_mesh(fsdp=8)
  from hyperflax.sharding import init_fn
  shapes = jax.eval_shape(init_fn(exp), jax.random.PRNGKey(0))
  axes = exp.param_axes()
  total = per_device = 0
  for tree in shapes:
    shard = sharding.param_shardings(tree, {k: axes[k] for k in tree}, mesh,
                                     sharding.LOGICAL_AXIS_RULES)
    for x, s in zip(jax.tree.leaves(tree), jax.tree.leaves(shard)):
      total += math.prod(x.shape)
      per_device += math.prod(s.shard_shape(x.shape))
  assert per_device <= 1.25 * total / 8, per_device / (total / 8)


def test_cluster_args_from_environment():
  assert distributed.cluster_args({}) is None
  explicit = distributed.cluster_args({'HYPERFLAX_COORDINATOR': '10.0.0.1:1234',
                                       'HYPERFLAX_NUM_PROCESSES': '4',
                                       'HYPERFLAX_PROCESS_ID': '2',
                                       'HYPERFLAX_LOCAL_DEVICE_IDS': '0,1'})
  assert explicit == {'coordinator_address': '10.0.0.1:1234', 'num_processes': 4,
                      'process_id': 2, 'local_device_ids': [0, 1]}
  assert distributed.cluster_args({'TPU_WORKER_HOSTNAMES': 'a,b,c,d'}) == {}
  assert distributed.cluster_args({'TPU_WORKER_HOSTNAMES': 'localhost'}) is None
  assert distributed.cluster_args({'SLURM_JOB_ID': '7', 'SLURM_NTASKS': '2'}) == {}
  assert distributed.cluster_args({'HYPERFLAX_DISTRIBUTED': '1'}) == {}
  assert not distributed.initialize({})  # single host: nothing to join


def test_plan_parses_meshes_and_knows_slices():
  from hyperflax import plan
  assert plan.parse_mesh('data=2, fsdp=-1') == {'data': 2, 'fsdp': -1}
  assert plan.parse_mesh('') == {'data': -1}
  assert plan.SLICES['v4-32'][0] == 16 and plan.SLICES['v4-128'][0] == 64


@pytest.mark.skipif(jax.default_backend() != 'cpu', reason='compares with the CPU lowering')
def test_plan_compiles_threefry_as_accelerators_do_and_restores_cpu_lowering():
  """`memory_plan` lowers the RNG unrolled (as on GPU/TPU, not CPU's rolled loop that
  materialises the counters); the bits are the same, and the CPU rule is back afterwards."""
  from hyperflax import plan
  key = jax.random.PRNGKey(3)
  draw = lambda: lambda k: jax.random.bernoulli(k, 0.9, (4, 33, 17))  # a fresh function each
  before = np.asarray(jax.jit(draw())(key))
  with plan._unrolled_threefry_on_cpu():
    assert 'while' not in jax.jit(draw()).lower(key).as_text()
    inside = np.asarray(jax.jit(draw())(key))
  assert 'while' in jax.jit(draw()).lower(key).as_text()
  np.testing.assert_array_equal(inside, before)
