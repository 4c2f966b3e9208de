r"""Memory planner: bytes per device of one training step on a mesh, before renting it.

  python -m hyperflax.plan --config=configs/hart_xl.py --mesh=fsdp=8
  python -m hyperflax.plan --config=configs/hart_xl.py --slice=v4-32 --mesh=data=2,fsdp=-1
  python -m hyperflax.plan --config=configs/hart_xl.py:tiny --mesh=data=2,fsdp=2,tensor=2

The step is lowered with abstract inputs (`jax.ShapeDtypeStruct`s carrying
their shardings: nothing is allocated) and compiled; XLA's memory analysis
gives the per-device argument, output and temporary (activation) bytes. The
state is split into parameters, optimiser state and the rest from the
shardings. On a machine without the slice's accelerators, that many host CPU
devices are forced, so the figures are those of XLA's CPU compiler: the
parameter and optimiser bytes are exact, activations indicative (TPU and GPU
compilers fuse and rematerialise differently).
"""

from __future__ import annotations

import contextlib
import json
import math
import sys

# Accelerator slices: (devices, bytes of memory per device). A TPU v4 chip is
# one JAX device (two TensorCores), and a v4-N slice has N / 2 chips.
SLICES = {
    'v4-8': (4, 32 << 30), 'v4-32': (16, 32 << 30), 'v4-128': (64, 32 << 30),
    'v5e-8': (8, 16 << 30), 'v5p-8': (4, 95 << 30),
    '8xh100': (8, 80 << 30), '8xa100': (8, 80 << 30),
}


def parse_mesh(text: str | None) -> dict[str, int]:
  """'data=2,fsdp=-1' -> {'data': 2, 'fsdp': -1}; missing axes are 1."""
  out = {}
  for part in (text or '').split(','):
    if part.strip():
      name, _, size = part.partition('=')
      out[name.strip()] = int(size)
  return out or {'data': -1}


def _bytes(abstract, shardings) -> int:
  """Per-device bytes of a tree (the largest shard of each leaf)."""
  import jax
  total = 0
  for x, s in zip(jax.tree.leaves(abstract), jax.tree.leaves(shardings)):
    total += math.prod(s.shard_shape(x.shape)) * x.dtype.itemsize
  return total


def _global_bytes(abstract) -> int:
  import jax
  return sum(math.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(abstract))


def abstract_batch(config, exp) -> dict:
  """Global batch shapes from `config.data` (no data is read)."""
  import jax
  import numpy as np
  from hyperflax.data import Lengths
  rows = int(config.data.batch_size)
  lengths = Lengths.make(tuple(config.data.lengths) if config.data.get('lengths') else None)
  enc = lengths.concat if exp.data_mode == 'concat' else lengths.encoder
  batch = {'encoder_inputs': (enc, np.int32), 'decoder_inputs': (lengths.decoder, np.int32),
           'targets': (lengths.decoder, np.int32), 'target_weights': (lengths.decoder, np.float32)}
  if exp.data_mode == 'hyper':
    batch['hyper_inputs'] = (lengths.hyper, np.int32)
  return {k: jax.ShapeDtypeStruct((rows, n), dt) for k, (n, dt) in batch.items()}


@contextlib.contextmanager
def _unrolled_threefry_on_cpu():
  """Lowers `threefry2x32` for CPU with JAX's default (TPU) rule, unrolled.

  For compile time JAX lowers it on CPU as a rolled while loop, which makes
  every random draw materialise two uint32 arrays of its output's shape (each
  dropout on [batch, heads, T, T] attention weights: 2 x 268 MB per hypermodel
  encoder layer at 2 XL rows, in the forward and again in the remat), where
  TPU's compiler fuses the unrolled bits into their consumer and GPUs run one
  kernel. Same bits either way; only the plan's compile sees it (restored on
  exit).
  """
  try:
    from jax._src.interpreters import mlir
    from jax._src.random import threefry2x32 as tf
    unrolled, rolled = tf._threefry2x32_lowering_rule, tf._threefry2x32_cpu_lowering_rule
  except (ImportError, AttributeError):  # private API moved: plan with JAX's default
    tf = None
  if tf is None:
    yield
    return
  # As JAX registers them (the accelerators' rule is not inlined).
  mlir.register_lowering(tf.threefry2x32_p, unrolled, platform='cpu', inline=False)
  try:
    yield
  finally:
    mlir.register_lowering(tf.threefry2x32_p, rolled, platform='cpu')


def memory_plan(config, mesh, compile_step: bool = True) -> dict:
  """Per-device bytes of `config`'s training step on `mesh`.

  Returns:
    A dict of byte counts per device: 'trainable', 'frozen', 'optimizer',
    'other_state' (HART's previous states, step, rng), 'batch', and from XLA
    'xla_arguments', 'xla_outputs', 'xla_aliased', 'xla_temp' (activations and
    workspace), 'xla_peak' (arguments + outputs - aliased + temp); 'ideal' is
    (parameters + optimiser state) / devices, 'ratio' the largest device's
    parameters + optimiser state over it.
  """
  import jax
  import numpy as np
  from hyperflax import sharding
  from hyperflax.training.experiment import Experiment
  from hyperflax.sharding import Plan
  from hyperflax.training.optim import make_optimizer
  from hyperflax.training.step import make_train_step
  exp = Experiment.from_config(config)
  optimizer = make_optimizer(config, int(config.train.num_steps))
  accum = int(config.train.get('grad_accum_steps', 1))
  batch = abstract_batch(config, exp)
  micro = {k: np.zeros((v.shape[0] // accum,) + v.shape[1:], v.dtype) for k, v in batch.items()}
  plan = Plan.build(exp, optimizer, config, mesh, micro)
  st, sh = plan.abstract_state, plan.state
  out = {
      'devices': int(mesh.size), 'mesh': dict(mesh.shape),
      'trainable': _bytes(st.trainable, sh.trainable),
      'frozen': _bytes(plan.abstract_frozen, plan.frozen),
      'optimizer': _bytes(st.opt_state, sh.opt_state),
      'other_state': _bytes((st.step, st.rng, st.prev_states), (sh.step, sh.rng, sh.prev_states)),
      'total_params': _global_bytes((st.trainable, plan.abstract_frozen)),
      'total_optimizer': _global_bytes(st.opt_state),
  }
  out['ideal'] = (out['total_params'] + out['total_optimizer']) / mesh.size
  out['ratio'] = (out['trainable'] + out['frozen'] + out['optimizer']) / out['ideal']
  batch_sh = sharding.batch_shardings(batch, mesh)
  out['batch'] = _bytes(batch, batch_sh)
  # `train` refuses micro batches that the batch shards do not split evenly.
  out['micro_rows_per_device'] = micro['targets'].shape[0] / (mesh.shape['data'] *
                                                               mesh.shape['fsdp'])
  if compile_step:
    step = plan.jit_train_step(make_train_step(exp, optimizer, accum), batch)
    args = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        (st, plan.abstract_frozen, batch), (sh, plan.frozen, batch_sh))
    with _unrolled_threefry_on_cpu():  # as TPU lowers it (see there)
      mem = step.lower(*args).compile().memory_analysis()
    out.update(xla_arguments=int(mem.argument_size_in_bytes),
               xla_outputs=int(mem.output_size_in_bytes),
               xla_aliased=int(mem.alias_size_in_bytes),
               xla_temp=int(mem.temp_size_in_bytes))
    out['xla_peak'] = (out['xla_arguments'] + out['xla_outputs'] - out['xla_aliased']
                       + out['xla_temp'])
  return out


def format_plan(plan: dict, capacity: int | None = None) -> str:
  gib = lambda b: f'{b / 2**30:9.3f} GiB' if b >= 2**30 else f'{b / 2**20:9.3f} MiB'
  lines = [f"mesh {plan['mesh']} ({plan['devices']} devices); per device:"]
  for key in ('trainable', 'frozen', 'optimizer', 'other_state', 'batch', 'xla_arguments',
              'xla_outputs', 'xla_aliased', 'xla_temp', 'xla_peak'):
    if key in plan:
      lines.append(f'  {key:<14}{gib(plan[key])}')
  lines.append(f"  params+opt are {plan['ratio']:.3f}x the ideal {gib(plan['ideal']).strip()} "
               f"(total {gib(plan['total_params'] + plan['total_optimizer']).strip()} / "
               f"{plan['devices']})")
  if plan['micro_rows_per_device'] != int(plan['micro_rows_per_device']):
    lines.append(f"  WARNING: {plan['micro_rows_per_device']:.3g} micro-batch rows per device: "
                 'lower train.grad_accum_steps (or change the mesh) for an even split')
  if capacity and 'xla_peak' in plan:
    verdict = 'fits' if plan['xla_peak'] <= capacity else 'does NOT fit'
    lines.append(f'  peak {gib(plan["xla_peak"]).strip()} {verdict} in {gib(capacity).strip()}')
  return '\n'.join(lines)


def main(argv=None) -> None:
  from absl import app, flags
  from ml_collections import config_flags
  config_flags.DEFINE_config_file('config', None, 'ml_collections config file', lock_config=False)
  flags.DEFINE_string('mesh', '', "mesh sizes, e.g. 'data=2,fsdp=-1,tensor=1' (default: "
                      'config.mesh)')
  flags.DEFINE_string('slice', '', f'a slice from {sorted(SLICES)} (device count, memory)')
  flags.DEFINE_integer('devices', 0, 'devices to plan for (forced host CPU devices when the '
                       'machine has fewer accelerators)')
  flags.DEFINE_bool('force_cpu', True, 'plan on host CPU devices (--noforce_cpu on the slice '
                    'itself, to compile for its accelerators)')
  flags.DEFINE_bool('compile', True, 'compile the step for XLA memory analysis')
  flags.DEFINE_bool('json', False, 'print one JSON object')
  flags.mark_flags_as_required(['config'])

  def run(_):
    import jax
    f = flags.FLAGS
    devices, capacity = SLICES.get(f.slice.lower(), (0, None)) if f.slice else (0, None)
    if f.slice and not devices:
      raise app.UsageError(f'--slice={f.slice}: known slices {sorted(SLICES)}')
    devices = f.devices or devices
    spec = parse_mesh(f.mesh) if f.mesh else dict(f.config.get('mesh', {'data': -1}))
    if not devices and all(int(v) > 0 for v in spec.values()):
      devices = math.prod(int(v) for v in spec.values())
    if devices and f.force_cpu:
      # Before the backend starts: N host CPU devices to partition over.
      jax.config.update('jax_platforms', 'cpu')
      jax.config.update('jax_num_cpu_devices', devices)
    from hyperflax import sharding
    mesh = sharding.make_mesh(spec, jax.devices()[:devices] if devices else None)
    result = memory_plan(f.config, mesh, compile_step=f.compile)
    print(json.dumps(result) if f.json else format_plan(result, capacity))

  app.run(run, argv=argv or sys.argv)


if __name__ == '__main__':
  main()
