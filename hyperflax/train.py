r"""Train a hypermodel (or a baseline) against a frozen T5 v1.1.

  python -m hyperflax.train --config=configs/hart_xl.py --workdir=$WORKDIR
  python -m hyperflax.train --config=configs/hart_xl.py:tiny --workdir=/tmp/hart \
      --config.train.num_steps=20

Rerunning the same command resumes from the newest readable checkpoint in
`--workdir/checkpoints` (parameters, optimiser state, HART's previous
states, data position, RNG); rerunning a finished run only (re)writes its
evaluation. SIGTERM and Ctrl-C (SIGINT) save a checkpoint and exit. The
workdir may be a URL (gs://bucket/run). Config fields: hyperflax/config_base.py.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import time

import jax
import ml_collections
import numpy as np

from hyperflax import config_check, sharding
from hyperflax.training import checkpointing, reporting
from hyperflax.training.experiment import Experiment
from hyperflax.training.optim import make_optimizer
from hyperflax.sharding import Plan
from hyperflax.training.step import make_train_step
# load_run_config / load_trainable are re-exported: callers import them from here.
from hyperflax.workdir import (Workdir, WorkdirError, absolute_paths, load_run_config,  # noqa: F401
                               load_trainable, tokenizer_info, tokenizer_of)

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


class _Interrupts:
  """SIGTERM (TPU VM preemption, `kill`) and SIGINT (Ctrl-C) become a flag the loop
  checks: it saves a checkpoint at the next step and exits. A second Ctrl-C stops
  at once (losing what the checkpoint would have saved)."""

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.received = None
    self._previous = {}
    try:
      for sig in self.SIGNALS:
        self._previous[sig] = signal.signal(sig, self._handle)
    except ValueError:  # not the main thread: the caller handles signals
      self._previous = {}

  def _handle(self, signum, frame):
    name = signal.Signals(signum).name
    if self.received == 'SIGINT' and signum == signal.SIGINT:
      raise KeyboardInterrupt
    logging.warning('%s received: saving a checkpoint at the end of this step and exiting '
                    '(Ctrl-C again to stop without saving)', name)
    self.received = name

  @property
  def requested(self) -> bool:
    return self.received is not None

  def restore(self):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


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
      raise WorkdirError(f'--workdir holds a checkpoint of {key}={meta.get(key)!r} but the '
                         f'config asks for {now!r}: use another --workdir')


def _check_vocab_fits(config: ml_collections.ConfigDict, tok) -> None:
  """Ids past the embedding would be clamped by the gather, silently: refuse them."""
  from hyperflax.training.experiment import t5_config_from
  try:
    rows = t5_config_from(config).vocab_size
  except (OSError, ValueError, KeyError, TypeError):  # init_from problems are reported later
    return
  need = tok.model_rows
  if rows < need:
    raise config_check.ConfigError(
        f'model.vocab_size={rows} is smaller than the {need} ids of the tokenizer '
        f'data.vocab_path={config.data.get("vocab_path")!r}: set model.overrides.vocab_size '
        f'to at least {need}')


def train(config: ml_collections.ConfigDict, workdir) -> dict:
  """Runs (or resumes) training; returns the final trainable/frozen params and metrics.

  The config is validated, the workdir locked and checked against the run it
  may already hold before anything is written (see `hyperflax.workdir`).
  A finished run is not trained again (its final state is returned).
  """
  from hyperflax.config_base import check_hyperpretraining
  config_check.validate(config)
  check_hyperpretraining(config)  # before anything is written into the workdir
  wd = Workdir(workdir)
  primary = jax.process_index() == 0
  absolute_paths(config)
  tok = tokenizer_of(config)
  _check_vocab_fits(config, tok)
  tokenizer = tokenizer_info(tok)
  if primary:
    wd.lock.acquire()
  try:
    wd.check_compatible(config, tokenizer)
    return _train(config, wd, tokenizer, primary)
  finally:
    if primary:
      wd.lock.release()


def _train(config, wd: Workdir, tokenizer: dict, primary: bool) -> dict:
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
  ckpt = checkpointing.Checkpointer(wd.checkpoints, keep=config.train.keep_checkpoints)
  reporter, interrupts = _NullReporter(), None
  try:
    # Refuses another architecture before anything is written; moves damaged
    # checkpoints aside so their steps can be saved again.
    restored = ckpt.restore_latest(state, quarantine=True)
    if restored is not None:
      state, meta = restored
      _check_compatible(meta, config)
      logging.info('resumed from step %d', int(state.step))
    if primary:
      wd.write_run(config, tokenizer)
    start = int(state.step)
    metrics = {}
    if start >= num_steps:
      logging.info('%s: already trained to step %d (train.num_steps=%d); nothing to train',
                   wd.path, start, num_steps)
      if restored is None:  # num_steps=0: keep the initial state, as a run would
        ckpt.save(start, state, _meta(config, start))
      metrics = (reporting.read_metrics(wd.path) or [{}])[-1]
    else:
      step_fn = plan.jit_train_step(make_train_step(exp, optimizer, accum), {
          k: jax.ShapeDtypeStruct((batch_rows,) + v.shape[1:], v.dtype)
          for k, v in first.items()})
      if primary:
        reporter = reporting.Reporter(wd.path, num_steps, start,
                                      tensorboard=config.train.get('tensorboard', True))
      interrupts = _Interrupts()
      state, metrics = _loop(config, state, frozen, step_fn, plan, ckpt, reporter, interrupts,
                             rows, exp, start, num_steps, batch_rows)
  finally:
    ckpt.close()
    reporter.close()
    if interrupts is not None:
      interrupts.restore()
  if primary:
    reporting.plot_losses(wd.path)
  if exp.trains_downstream and config.train.get('export_downstream', True):
    export_downstream(exp, state.trainable['downstream'], wd.path / 'downstream')
  return {'trainable': state.trainable, 'frozen': frozen, 'experiment': exp,
          'metrics': jax.device_get(metrics), 'state': state}


def _loop(config, state, frozen, step_fn, plan, ckpt, reporter, interrupts, rows, exp,
          start, num_steps, batch_rows):
  metrics, tokens = {}, 0
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
    stop = interrupts.requested
    if jax.process_count() > 1:  # all hosts must save (together) and stop at one step
      from jax.experimental import multihost_utils
      stop = bool(np.any(multihost_utils.process_allgather(np.int32(stop))))
    if done % config.train.checkpoint_every == 0 or done == num_steps or stop:
      ckpt.save(done, state, _meta(config, done))
    if stop:
      ckpt.wait()
      signame = interrupts.received or 'SIGTERM'  # another host's signal
      logging.warning('saved step %d after %s; exiting (rerun the same command to resume)',
                      done, signame)
      sys.exit(130 if signame == 'SIGINT' else 0)
  return state, metrics


def export_downstream(exp: Experiment, params, out_dir) -> None:
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


def main(argv=None) -> int:
  from absl import flags
  from ml_collections import config_flags
  from hyperflax import cli

  def define(fv):
    config_flags.DEFINE_config_file('config', None, 'ml_collections config file (fields: '
                                    'hyperflax/config_base.py)', flag_values=fv,
                                    lock_config=True)
    flags.DEFINE_string('workdir', None, 'directory or URL (gs://...) for checkpoints, '
                        'metrics and results', flag_values=fv)

  def run(fv):
    from hyperflax import distributed
    distributed.initialize()  # multi-host from the environment; no-op on one host
    config = fv.config
    from hyperflax import runtime
    runtime.preflight(config)  # full-size on CPU / random frozen T5: refused before any write
    runtime.log_runtime(sharding.make_mesh(config))
    t0 = time.time()
    out = train(config, fv.workdir)
    loss = out['metrics'].get('loss') if hasattr(out['metrics'], 'get') else None
    print(f'training finished in {time.time() - t0:.0f}s' +
          (f'; loss {float(loss):.4f}' if loss is not None else ''))
    if config.get('eval') and config.eval.get('name'):
      from hyperflax import evaluate
      evaluate.evaluate(config, out['experiment'], out['trainable'], out['frozen'], fv.workdir)
    return 0

  return cli.absl_main(__doc__, define, run, argv, 'hyperflax.train',
                       required=('config', 'workdir'))


if __name__ == '__main__':
  sys.exit(main())
