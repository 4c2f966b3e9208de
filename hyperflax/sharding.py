"""Device meshes, logical-axis rules and shardings: JAX's SPMD machinery, configured.

The mesh has three named axes (`MESH_AXES`):

  data    pure data parallelism: parameters replicated, batch split.
  fsdp    ZeRO-3-style: the batch *and* every weight's `embed` dimension are
          split; XLA all-gathers weights before use and reduce-scatters grads.
  tensor  Megatron-style: `mlp`, `heads`, `joined_kv` and `vocab` split.

Parameters carry logical axis names (`nn.with_logical_partitioning`);
`LOGICAL_AXIS_RULES` maps them to mesh axes. Activations use distinct
`act_*` names: in linen's rule resolution a mesh axis is used at most once
per array, so a name shared between weights and activations would silently
end up unsharded in one of them. Generated PEFT parameters are per example
and follow `act_batch`.

`Plan` applies all this to a training run: sharded state creation and the
jitted steps::

  mesh = make_mesh(config)                        # config.mesh = {data: -1, ...}
  plan = Plan.build(exp, optimizer, config, mesh, micro_batch)
  state, frozen = plan.create(rng, micro_batch)    # created directly sharded
  step = plan.jit_train_step(make_train_step(exp, optimizer, accum), batch_shapes)
  state, metrics = step(state, frozen, plan.global_batch(host_rows, global_rows))
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from hyperflax.model import hf

MESH_AXES = ('data', 'fsdp', 'tensor')
# Mesh axes that split the batch (and therefore every per-example tensor).
BATCH_AXES = ('data', 'fsdp')

LOGICAL_AXIS_RULES = (
    # Weights.
    ('embed', 'fsdp'), ('mlp', 'tensor'), ('joined_kv', 'tensor'), ('heads', 'tensor'),
    ('vocab', 'tensor'), ('relpos_buckets', None), ('layers', None),
    ('prefix_len', None), ('lora_rank', None), ('hyper_tokens', None),
    # Activations (and per-example generated PEFT parameters).
    ('act_batch', BATCH_AXES), ('act_len', None), ('act_embed', None),
    ('act_heads', 'tensor'), ('act_mlp', 'tensor'), ('act_vocab', 'tensor'),
)

Rules = tuple[tuple[str, Any], ...]


# ---- mesh -----------------------------------------------------------------

def mesh_shape(spec: Mapping[str, int] | None, num_devices: int) -> dict[str, int]:
  """Resolves `{'data': -1, 'fsdp': 2, ...}` (-1: the rest) to sizes over `num_devices`."""
  spec = dict(spec or {'data': -1})
  unknown = sorted(set(spec) - set(MESH_AXES))
  if unknown:
    raise ValueError(f'mesh: unknown axes {unknown}; known: {MESH_AXES}')
  sizes = {a: int(spec.get(a, 1)) for a in MESH_AXES}
  rest = [a for a, s in sizes.items() if s == -1]
  if len(rest) > 1 or any(s == 0 or s < -1 for s in sizes.values()):
    raise ValueError(f'mesh {spec}: sizes must be positive, with at most one -1')
  known = math.prod(s for s in sizes.values() if s > 0)
  if rest:
    if num_devices % known:
      raise ValueError(f'mesh {spec}: {num_devices} devices are not divisible by {known}')
    sizes[rest[0]] = num_devices // known
  if math.prod(sizes.values()) != num_devices:
    raise ValueError(f'mesh {spec} has {math.prod(sizes.values())} devices, '
                     f'but there are {num_devices}')
  return sizes


def make_mesh(config=None, devices: Sequence[Any] | None = None) -> Mesh:
  """The ('data', 'fsdp', 'tensor') mesh of a config (`config.mesh`) or a dict.

  Devices come in `jax.devices()` order, which groups them by process, and
  `data` is the outermost axis: each host then owns a contiguous block of
  batch rows (see `process_rows`).
  """
  spec = config
  if config is not None and not set(config) <= set(MESH_AXES):  # a whole training config
    spec = config.get('mesh', None)
  devices = list(jax.devices() if devices is None else devices)
  shape = tuple(mesh_shape(dict(spec) if spec else None, len(devices)).values())
  try:  # Topology-aware on TPU (keeps `tensor` on the fastest links).
    from jax.experimental import mesh_utils
    grid = mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
  except Exception:  # CPU, or shapes the topology helper refuses: plain order.
    grid = np.asarray(devices, dtype=object).reshape(shape)
  return Mesh(grid, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


# ---- rules ----------------------------------------------------------------

def _mesh_axes(value) -> Any:
  if value is None or isinstance(value, str):
    return value
  value = tuple(value)
  return value if len(value) > 1 else (value[0] if value else None)


def axis_rules(config=None, frozen: bool = False) -> Rules:
  """`LOGICAL_AXIS_RULES` with `config.sharding_rules` overrides (by logical name).

  With `frozen=True`, `config.frozen_sharding_rules` apply on top: the frozen
  downstream T5 may be laid out differently from the trainable hypermodel
  (e.g. tensor-parallel only, with no FSDP gathers for weights never updated).
  """
  rules = dict(LOGICAL_AXIS_RULES)
  fields = ('sharding_rules', 'frozen_sharding_rules') if frozen else ('sharding_rules',)
  for field in fields:
    for name, axes in (config.get(field, None) or ()) if config is not None else ():
      rules[name] = _mesh_axes(axes)
  return tuple(rules.items())


def _check_names(spec: P, rules: Rules, where: str) -> None:
  known = {name for name, _ in rules}
  for name in spec:
    if name is not None and name not in known:
      raise ValueError(f'{where}: logical axis {name!r} has no sharding rule; add one to '
                       f'LOGICAL_AXIS_RULES or config.sharding_rules')


def logical_sharding(spec: P, shape: Sequence[int], mesh: Mesh, rules: Rules,
                     where: str = '') -> NamedSharding:
  """A `NamedSharding` for an array of `shape` with logical axes `spec`.

  A dimension that the mesh axes do not divide is left unsplit (e.g. 6
  heads over tensor=4): XLA would otherwise pad every shard.
  """
  spec = P(*spec) if spec is not None else P()
  _check_names(spec, rules, where)
  mesh_axes = nn.logical_to_mesh_axes(spec, rules)
  fixed = []
  for dim, axes in zip(shape, tuple(mesh_axes) + (None,) * len(shape)):
    names = list(axes) if isinstance(axes, tuple) else ([] if axes is None else [axes])
    names = [n for n in names if mesh.shape[n] > 1]  # size-1 axes split nothing
    while names and dim % math.prod(mesh.shape[n] for n in names):
      names.pop()  # drop the innermost axis until the split is even
    fixed.append(_mesh_axes(names))
  while fixed and fixed[-1] is None:  # P('fsdp') rather than P('fsdp', None)
    fixed.pop()
  return NamedSharding(mesh, P(*fixed))


def _is_spec(x) -> bool:
  return isinstance(x, P) or x is None


def param_shardings(shapes, axes, mesh: Mesh, rules: Rules):
  """Tree of `NamedSharding`s from parameter shapes and their logical `PartitionSpec`s.

  Args:
    shapes: parameters, or their `jax.ShapeDtypeStruct`s (from `jax.eval_shape`).
    axes: the same tree of logical `PartitionSpec`s (`nn.get_partition_spec`).
    mesh: the device mesh.
    rules: logical-axis rules (`axis_rules(config)`).
  """
  flat_axes = dict(jax.tree_util.tree_flatten_with_path(axes, is_leaf=_is_spec)[0])
  def one(path, leaf):
    if path not in flat_axes:
      raise ValueError(f'no logical axes for parameter {jax.tree_util.keystr(path)}')
    return logical_sharding(flat_axes[path], leaf.shape, mesh, rules, jax.tree_util.keystr(path))
  return jax.tree_util.tree_map_with_path(one, shapes)


def matching_shardings(tree, params, shardings, mesh: Mesh):
  """Shardings for a tree that embeds copies of `params` (an optimiser state).

  A leaf whose key path ends with a parameter's path and whose shape equals
  it (Adam's moments) gets that parameter's sharding; anything else (step
  counts, Adafactor's factored moments) is replicated.
  """
  by_path = {}
  for (path, p), s in zip(jax.tree_util.tree_flatten_with_path(params)[0],
                          jax.tree.leaves(shardings)):
    by_path[tuple(path)] = (p.shape, s)
  replicated = NamedSharding(mesh, P())
  def one(path, leaf):
    for i in range(len(path)):
      hit = by_path.get(tuple(path[i:]))
      if hit is not None and hit[0] == leaf.shape:
        return hit[1]
    return replicated
  return jax.tree_util.tree_map_with_path(one, tree)


def batch_sharding(mesh: Mesh, leading: int = 0) -> NamedSharding:
  """Rows split over `BATCH_AXES`; `leading` unsplit axes before the batch axis."""
  return NamedSharding(mesh, P(*([None] * leading), BATCH_AXES))


def batch_shardings(batch, mesh: Mesh):
  """`batch_sharding` for every leaf of a batch (rows not divisible: replicated)."""
  size = math.prod(mesh.shape[a] for a in BATCH_AXES)
  return jax.tree.map(lambda x: batch_sharding(mesh) if x.ndim and x.shape[0] % size == 0
                      else NamedSharding(mesh, P()), batch)


def process_rows(global_rows: int, mesh: Mesh) -> tuple[int, int]:
  """[lo, hi): the batch rows this process's devices hold (each host reads only those)."""
  sharding = batch_sharding(mesh)
  spans = {idx[0].indices(global_rows)[:2]
           for idx in sharding.addressable_devices_indices_map((global_rows,)).values()}
  lo, hi = min(s[0] for s in spans), max(s[1] for s in spans)
  covered = sum(b - a for a, b in spans)
  if covered != hi - lo:  # never with `make_mesh`'s device order
    raise ValueError(f'this process holds non-contiguous batch rows {sorted(spans)}')
  return lo, hi


def global_batch(local_batch: dict, mesh: Mesh, global_rows: int) -> dict:
  """Host-local rows [lo, hi) -> global arrays split over the mesh (no gather)."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(
      sharding, np.asarray(v), (global_rows,) + np.shape(v)[1:]) for k, v in local_batch.items()}


@contextlib.contextmanager
def activate(mesh: Mesh, rules: Rules):
  """Mesh and rules in scope: `nn.with_logical_constraint` in the models becomes real."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    yield


# ---- a training run on the mesh ------------------------------------------------

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
