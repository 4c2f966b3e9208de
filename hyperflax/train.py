r"""Train a hypermodel (or a baseline) against a frozen T5 v1.1.

  python -m hyperflax.train --config=configs/hart_xl.py --workdir=$WORKDIR
  python -m hyperflax.train --config=configs/hart_xl.py:tiny --workdir=/tmp/hart \
      --config.train.num_steps=20

Rerunning the same command resumes from the newest checkpoint in
`--workdir/checkpoints` (parameters, optimiser state, HART's previous
states, data position, RNG). SIGTERM saves a checkpoint and exits cleanly.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time

import jax
import ml_collections
import numpy as np

from hyperflax import sharding
from hyperflax.training import checkpointing, reporting
from hyperflax.training.experiment import Experiment
from hyperflax.training.optim import make_optimizer
from hyperflax.training.sharded import Plan
from hyperflax.training.step import make_train_step

STEP_FIELDS = ('hyper_inputs', 'encoder_inputs', 'decoder_inputs', 'targets', 'target_weights')


def train_stream(config: ml_collections.ConfigDict, exp: Experiment, start_step: int,
                 rows: tuple[int, int] | None = None):
  """Training batches from `start_step`; with `rows=(lo, hi)` only those rows (this host's)."""
  from hyperflax import data
  d = config.data
  stream = data.get_dataset(
      d.name, 'train', batch_size=d.batch_size, seed=config.seed,
      lengths=tuple(d.lengths) if d.get('lengths') else None, num_shots=d.num_shots,
      start_step=start_step, data_dir=d.get('data_dir') or None, mode=exp.data_mode,
      vocab_path=d.get('vocab_path') or None, **dict(d.get('options', {}) or {}))
  for batch in _host_rows(stream, start_step, rows, d.batch_size):
    yield {k: batch[k] for k in STEP_FIELDS if k in batch}


def _host_rows(stream, start_step: int, rows: tuple[int, int] | None, batch_size: int):
  """Rows [lo, hi) of every batch. Episode streams tokenise only those rows
  (rows are independent and padded to fixed lengths); others are sliced."""
  if rows is None or tuple(rows) == (0, batch_size):
    yield from stream
    return
  lo, hi = rows
  if hasattr(stream, 'episodes') and hasattr(stream, 'converter'):
    step = start_step
    while True:
      yield stream.converter.train_batch(stream.episodes(step)[lo:hi])
      step += 1
  for batch in stream:
    yield {k: v[lo:hi] for k, v in batch.items()}


class _NullReporter:
  """Hosts other than process 0 write no metrics (one metrics.jsonl per run)."""
  write = close = lambda self, *a, **k: None


class _Preemption:
  """Turns SIGTERM (TPU VM preemption, `kill`) into a flag the loop checks."""

  def __init__(self):
    self.requested = False
    self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    logging.warning('SIGTERM received: saving a checkpoint and exiting')
    self.requested = True

  def restore(self):
    signal.signal(signal.SIGTERM, self._previous)


def _meta(config, state_step: int) -> dict:
  return {'step': state_step, 'method': config.method,
          'hyper_kind': config.hyper.get('kind') if config.method == 'hypermodel' else None,
          'downstream_init_from': config.model.get('init_from', ''),
          'seed': config.seed, 'config': json.loads(config.to_json_best_effort())}


def _check_compatible(meta: dict, config) -> None:
  for key, now in (('method', config.method),
                   ('hyper_kind', config.hyper.get('kind') if config.method == 'hypermodel'
                    else None)):
    if meta.get(key) != now:
      raise ValueError(f'--workdir holds a checkpoint of {key}={meta.get(key)!r} but the config '
                       f'asks for {now!r}: use another --workdir')


def train(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs (or resumes) training; returns the final trainable/frozen params and metrics."""
  primary = jax.process_index() == 0
  os.makedirs(workdir, exist_ok=True)
  if primary:
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      f.write(config.to_json_best_effort(indent=2))
  exp = Experiment.from_config(config)
  rng = jax.random.PRNGKey(config.seed)
  hyper_params = None
  if config.hyper.get('init_from', '') and exp.hyper is not None:
    hyper_params = load_trainable(config.hyper.init_from)['hyper']
    logging.info('hypermodel initialised from %s', config.hyper.init_from)
  num_steps = int(config.train.num_steps)
  optimizer = make_optimizer(config, num_steps)
  accum = int(config.train.get('grad_accum_steps', 1))

  # The mesh (config.mesh; default: data parallel over every device) and this
  # host's rows of each global batch.
  mesh = sharding.make_mesh(config)
  batch_rows = int(config.data.batch_size)
  shards = mesh.shape['data'] * mesh.shape['fsdp']
  if batch_rows % (shards * accum):  # every micro batch is split evenly
    raise ValueError(f'data.batch_size={batch_rows} must be divisible by grad_accum_steps='
                     f'{accum} times the batch shards data*fsdp={shards} of mesh '
                     f'{dict(mesh.shape)}')
  rows = sharding.process_rows(batch_rows, mesh)
  first = next(train_stream(config, exp, 0, rows))
  # Global shapes only: `create_state` sizes HART's previous states from them.
  micro = {k: np.zeros((batch_rows // accum,) + v.shape[1:], v.dtype) for k, v in first.items()}
  plan = Plan.build(exp, optimizer, config, mesh, micro)
  state, frozen = plan.create(rng, micro, hyper_params)
  ckpt = checkpointing.Checkpointer(os.path.join(workdir, 'checkpoints'),
                                    keep=config.train.keep_checkpoints)
  restored = ckpt.restore_latest(state)
  if restored is not None:
    state, meta = restored
    _check_compatible(meta, config)
    logging.info('resumed from step %d', int(state.step))
  start = int(state.step)
  step_fn = plan.jit_train_step(make_train_step(exp, optimizer, accum), {
      k: jax.ShapeDtypeStruct((batch_rows,) + v.shape[1:], v.dtype) for k, v in first.items()})
  reporter = reporting.Reporter(workdir, num_steps, start,
                                tensorboard=config.train.get('tensorboard', True)) if primary \
      else _NullReporter()
  preemption = _Preemption()
  metrics, tokens = {}, 0
  try:
    stream = train_stream(config, exp, start, rows)
    for step in range(start, num_steps):
      host_batch = next(stream)
      # Non-padding tokens read or predicted (hypermodel + downstream), for tokens/s.
      tokens += sum(int(np.count_nonzero(host_batch[k])) for k in
                    ('hyper_inputs', 'encoder_inputs', 'targets') if k in host_batch)
      state, metrics = step_fn(state, frozen, plan.global_batch(host_batch, batch_rows))
      done = step + 1
      if done % config.train.log_every == 0 or done == num_steps:
        m = jax.device_get(metrics)
        reporter.write(done, {k: v for k, v in m.items() if k != 'tokens'}, tokens)
        tokens = 0
      stop = preemption.requested
      if jax.process_count() > 1:  # all hosts must save (together) and stop at one step
        from jax.experimental import multihost_utils
        stop = bool(np.any(multihost_utils.process_allgather(np.int32(stop))))
      if done % config.train.checkpoint_every == 0 or done == num_steps or stop:
        ckpt.save(done, state, _meta(config, done))
      if stop:
        ckpt.wait()
        logging.warning('saved step %d after SIGTERM; exiting', done)
        sys.exit(0)
  finally:
    ckpt.close()
    reporter.close()
    preemption.restore()
  if primary:
    reporting.plot_losses(workdir)
  if exp.trains_downstream and config.train.get('export_downstream', True):
    export_downstream(exp, state.trainable['downstream'], os.path.join(workdir, 'downstream'))
  return {'trainable': state.trainable, 'frozen': frozen, 'experiment': exp,
          'metrics': jax.device_get(metrics), 'state': state}


def export_downstream(exp: Experiment, params, out_dir: str) -> None:
  """Writes a trained downstream T5 as a `load_pretrained`-able directory."""
  from hyperflax import checkpoints
  from hyperflax.model import hf
  if jax.process_count() > 1:  # every host takes part in the gather; host 0 writes
    from jax.experimental import multihost_utils
    params = multihost_utils.process_allgather(params, tiled=True)
    if jax.process_index() != 0:
      return
  if exp.t5_config.scan_layers:
    params = hf.unstack_layers(params, exp.t5_config)
  checkpoints.save_params(out_dir, jax.device_get(params),
                          exp.t5_config.replace(scan_layers=False, remat=False))


def load_run_config(workdir: str, method: str | None = None) -> ml_collections.ConfigDict:
  """The config.json a `train` run wrote into `workdir` (checked to be `method`)."""
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    raise FileNotFoundError(f'{workdir}: no config.json (not a hyperflax.train workdir)')
  with open(path) as f:
    config = ml_collections.ConfigDict(json.load(f))
  if method is not None and config.get('method') != method:
    raise ValueError(f'{path}: method={config.get("method")!r}; this needs a '
                     f'config.method={method!r} run')
  return config


def load_trainable(workdir: str) -> dict:
  """The trainable parameters of the newest checkpoint in a training workdir."""
  import orbax.checkpoint as ocp
  directory = os.path.join(os.path.abspath(workdir), 'checkpoints')
  if not os.path.isdir(directory):
    raise FileNotFoundError(f'{workdir}: no checkpoints/ directory (not a training workdir)')
  registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
  for args in (ocp.args.StandardSave, ocp.args.StandardRestore):
    registry.add('state', args, ocp.StandardCheckpointHandler)
  for args in (ocp.args.JsonSave, ocp.args.JsonRestore):  # known, so orbax does not warn
    registry.add('meta', args, ocp.JsonCheckpointHandler)
  with ocp.CheckpointManager(directory, handler_registry=registry) as mngr:
    step = mngr.latest_step()
    if step is None:
      raise FileNotFoundError(f'{directory}: no finished checkpoint')
    # Onto this process's first device whatever mesh wrote it (the saved
    # shardings name devices that may not exist here).
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                          mngr.item_metadata(step)['state'])
    restored = mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target)))
  return jax.tree.map(np.asarray, restored['state']['trainable'])


def main(argv=None) -> None:
  from absl import app, flags
  from ml_collections import config_flags
  config_flags.DEFINE_config_file('config', None, 'ml_collections config file', lock_config=True)
  flags.DEFINE_string('workdir', None, 'directory for checkpoints, metrics and results')
  flags.mark_flags_as_required(['config', 'workdir'])

  def run(_):
    logging.getLogger().setLevel(logging.INFO)
    from hyperflax import distributed
    distributed.initialize()  # multi-host from the environment; no-op on one host
    config = flags.FLAGS.config
    from hyperflax import runtime
    runtime.preflight(config)  # full-size on CPU / random frozen T5: refused before any write
    runtime.log_runtime(sharding.make_mesh(config))
    t0 = time.time()
    out = train(config, flags.FLAGS.workdir)
    print(f'training finished in {time.time() - t0:.0f}s; loss {float(out["metrics"]["loss"]):.4f}')
    if config.get('eval') and config.eval.get('name'):
      from hyperflax import evaluate
      evaluate.evaluate(config, out['experiment'], out['trainable'], out['frozen'],
                        flags.FLAGS.workdir)

  app.run(run, argv=argv)


if __name__ == '__main__':
  main()
