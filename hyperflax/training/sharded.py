"""A training run laid out on a mesh: sharded state creation and jitted steps.

Typical use (what `hyperflax.train` does)::

  mesh = sharding.make_mesh(config)                # config.mesh = {data: -1, ...}
  plan = Plan.build(exp, optimizer, config, mesh, micro_batch)
  state, frozen = plan.create(rng, micro_batch)    # created directly sharded
  step = plan.jit_train_step(make_train_step(exp, optimizer, accum), batch_shapes)
  state, metrics = step(state, frozen, plan.global_batch(host_rows, global_rows))

Every sharding is inferred with `jax.eval_shape` from the parameters' logical
axes (`Experiment.param_axes`) and `hyperflax.sharding`'s rules.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from hyperflax.model import hf
from hyperflax.sharding import (Rules, activate, axis_rules, batch_shardings,
                                global_batch, logical_sharding, matching_shardings,
                                param_shardings)


def init_fn(exp, downstream: dict | None = None) -> Callable:
  """`exp.init` as a traceable function of the rng (to run under `jit`).

  The random downstream is drawn exactly as `Experiment.load_downstream`
  draws it; a pretrained one (`config.model.init_from`) is passed in as
  `downstream`, already placed on the mesh.
  """
  from hyperflax.model import init_params

  def random_downstream(rng):
    params = init_params(exp.t5_config.replace(scan_layers=False), rng)
    return (hf.stack_layers(params, exp.t5_config, jnp.stack) if exp.t5_config.scan_layers
            else params)

  view = copy.copy(exp)  # same models; only the downstream's source differs
  view.load_downstream = (lambda rng: downstream) if downstream is not None else random_downstream
  return view.init


@dataclasses.dataclass
class Plan:
  """Shardings of everything one training run holds, and the jitted steps.

  Attributes:
    mesh: the device mesh.
    rules: rules for the trainable state and activations.
    frozen_rules: rules for the frozen parameters.
    state: `TrainState` of `NamedSharding`s.
    frozen: shardings of the frozen parameters.
    abstract_state: the `TrainState` of `ShapeDtypeStruct`s.
    abstract_frozen: the frozen parameters' `ShapeDtypeStruct`s.
    exp: the `Experiment` (models and init).
    optimizer: the optax transformation whose state `state.opt_state` is.
  """
  mesh: Mesh
  rules: Rules
  frozen_rules: Rules
  state: Any
  frozen: Any
  abstract_state: Any
  abstract_frozen: Any
  exp: Any = None
  optimizer: Any = None

  @classmethod
  def build(cls, exp, optimizer, config, mesh: Mesh, micro_batch: dict) -> 'Plan':
    """Infers every sharding from `jax.eval_shape` and the parameters' logical axes."""
    from hyperflax.training.step import create_state
    rng = jax.random.PRNGKey(0)
    rules, frozen_rules = axis_rules(config), axis_rules(config, frozen=True)
    trainable, frozen = jax.eval_shape(init_fn(exp), rng)
    axes = exp.param_axes()
    trainable_sh = param_shardings(trainable, {k: axes[k] for k in trainable}, mesh, rules)
    frozen_sh = param_shardings(frozen, {k: axes[k] for k in frozen}, mesh, frozen_rules)
    state = jax.eval_shape(lambda t, r: create_state(exp, optimizer, t, r, micro_batch),
                           trainable, rng)
    replicated = NamedSharding(mesh, P())
    state_sh = state.replace(
        step=replicated, trainable=trainable_sh, rng=replicated,
        opt_state=matching_shardings(state.opt_state, trainable, trainable_sh, mesh),
        prev_states=None if state.prev_states is None else logical_sharding(
            P('act_batch'), state.prev_states.shape, mesh, rules))
    return cls(mesh, rules, frozen_rules, state_sh, frozen_sh, state, frozen, exp, optimizer)

  def create(self, rng, micro_batch: dict, hyper_params=None):
    """(state, frozen) created directly sharded: no device ever holds it all.

    Args:
      rng: the run's PRNG key (split as `train` always split it).
      micro_batch: a micro batch (host arrays; only its shapes matter).
      hyper_params: optional host parameters replacing the generator's
        initialisation (`config.hyper.init_from`).
    """
    from hyperflax.training.step import create_state
    exp = self.exp
    init_rng, state_rng = jax.random.split(rng)
    trainable_sh = self.state.trainable
    downstream = None
    if exp.config.model.get('init_from', ''):
      # Read on the host, placed shard by shard.
      from hyperflax.pretrained import load_pretrained
      _, host = load_pretrained(exp.config.model.init_from, scan_layers=exp.t5_config.scan_layers)
      where = trainable_sh if exp.trains_downstream else self.frozen
      downstream = jax.device_put(host, where['downstream'])
    # HART-FLAN-T5's backbone source, read on the host (an argument, not a constant).
    backbone = exp.load_backbone()
    with activate(self.mesh, self.rules):
      trainable, frozen = jax.jit(
          lambda r, d, b: init_fn(exp, d)(r, backbone=b),
          out_shardings=(trainable_sh, self.frozen), donate_argnums=1)(init_rng, downstream,
                                                                       backbone)
      if hyper_params is not None:
        trainable = dict(trainable, hyper=jax.device_put(hyper_params, trainable_sh['hyper']))
      state = jax.jit(lambda t, r: create_state(exp, self.optimizer, t, r, micro_batch),
                      out_shardings=self.state, donate_argnums=0)(trainable, state_rng)
    return state, frozen

  def jit_train_step(self, train_step: Callable, batch: dict) -> Callable:
    """`train_step(state, frozen, batch)` jitted over the mesh; the state is donated."""
    fn = jax.jit(train_step, in_shardings=(self.state, self.frozen, batch_shardings(batch,
                                                                                    self.mesh)),
                 out_shardings=(self.state, NamedSharding(self.mesh, P())), donate_argnums=0)
    return _InMesh(fn, self.mesh, self.rules)

  def jit_eval_step(self, eval_step: Callable, batch: dict) -> Callable:
    """`eval_step(trainable, frozen, batch) -> [B, ...]` jitted; outputs follow the batch."""
    in_batch = batch_shardings(batch, self.mesh)
    rows = jax.tree.leaves(in_batch)[0]  # outputs are [B, ...] like the inputs
    fn = jax.jit(eval_step, in_shardings=(self.state.trainable, self.frozen, in_batch),
                 out_shardings=rows)
    return _InMesh(fn, self.mesh, self.rules)

  def global_batch(self, local_batch: dict, global_rows: int) -> dict:
    return global_batch(local_batch, self.mesh, global_rows)


class _InMesh:
  """A jitted function called (and lowered) with the mesh and rules in scope."""

  def __init__(self, fn, mesh, rules):
    self.fn, self.mesh, self.rules = fn, mesh, rules

  def __call__(self, *args):
    with activate(self.mesh, self.rules):
      return self.fn(*args)

  def lower(self, *args):
    with activate(self.mesh, self.rules):
      return self.fn.lower(*args)
