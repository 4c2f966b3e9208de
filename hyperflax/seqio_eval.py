r"""A SeqIO eval job over a trained workdir: `seqio.Evaluator`, our jitted steps.

  python -m hyperflax.seqio_eval --workdir=$WORKDIR \
      [--mixture=p3_heldout_eval] [--split=validation] [--batch_size=32]

Registers the evaluation Tasks of the run's `eval.name` collection with the
run's own data settings (K, seed, lengths, mode, options: see
`hyperflax.tasks.eval_tasks`), restores the newest checkpoint, and runs
`seqio.Evaluator.evaluate` with `predict_fn` (greedy decoding,
`make_generate_step`), `score_fn` (summed target log-likelihood,
`make_score_step`) and, for CACLM, a teacher-forced `predict_with_aux_fn`.
Batches are cut in the Task's order and padded like `hyperflax.evaluate`'s,
so both report the same predictions and numbers. Writes under
`$WORKDIR/seqio_eval/`: SeqIO's `<task>-metrics.jsonl` and
`<task>-<step>.jsonl` (inferences), TensorBoard event files per task, and
`results.json` (per task, per table column, average, as `hyperflax.evaluate`).
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from typing import Any, Iterator, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import seqio
from etils import epath

from hyperflax import evaluate as evaluate_lib
from hyperflax import metrics as metrics_lib
from hyperflax.training.experiment import Experiment
from hyperflax.training.step import make_generate_step, make_score_step

# Model feature (SeqIO feature converter) -> hyperflax batch field.
MODEL_TO_BATCH = {'hyper_input_tokens': 'hyper_inputs',
                  'encoder_input_tokens': 'encoder_inputs',
                  'decoder_input_tokens': 'decoder_inputs',
                  'decoder_target_tokens': 'targets',
                  'decoder_loss_weights': 'target_weights'}
_PREDICTION_TYPES = (seqio.metrics.ModelOutputType.PREDICTION,
                     seqio.metrics.ModelOutputType.PREDICTION_WITH_AUX)


def pad_ragged(sequences: Sequence[Sequence[int]]) -> np.ndarray:
  """Token sequences of any lengths -> [n, max_len] int32, padded with 0.

  0 is SeqIO's PAD id, which every vocabulary decodes to nothing and which
  follows the EOS where `Vocabulary.decode` stops, so the decoded strings
  are unchanged.
  """
  out = np.zeros((len(sequences), max((len(s) for s in sequences), default=0)), np.int32)
  for i, seq in enumerate(sequences):
    out[i, :len(seq)] = np.asarray(seq, np.int32)
  return out


class Evaluator(seqio.Evaluator):
  """`seqio.Evaluator` that accepts ragged predictions under numpy >= 1.24.

  seqio 0.0.20's `_compute_clu_metrics` turns the list of predicted token
  sequences into `np.array(model_output)`; sequences of different lengths
  (a predict_fn that stops at EOS) then raise "ValueError: setting an array
  element with a sequence. The requested array has an inhomogeneous shape
  after 1 dimensions" (numpy made ragged arrays an error). This shim pads them
  to one rectangular array first (`pad_ragged`); decoding is unaffected. It
  can go once SeqIO pads itself (tests/test_seqio_eval.py reproduces the
  crash with the plain `seqio.Evaluator` and will say when it is fixed).
  """

  def _compute_clu_metrics(self, task, task_output, step=None):
    fixed = dict(task_output)
    for kind in _PREDICTION_TYPES:
      if kind in fixed:
        value = fixed[kind]
        if isinstance(value, tuple):  # (tokens, aux values)
          fixed[kind] = (pad_ragged(value[0]), value[1])
        else:
          fixed[kind] = pad_ragged(value)
    return super()._compute_clu_metrics(task, fixed, step)


class TensorBoardXLogger(seqio.Logger):
  """`seqio.TensorBoardLogger`'s layout (`<log_dir>/<task>/`, tags
  `eval/<metric>`) written with tensorboardX.

  seqio's own logger needs the `tensorboard` package for `tf.summary` (it
  raises TBNotInstalledError without it); hyperflax writes its training
  curves with tensorboardX, which it depends on, so the eval job does too.
  """

  def __init__(self, output_dir: str):
    super().__init__(output_dir)
    self._writers = {}

  def __call__(self, task_name, step, metrics, dataset, inferences, targets):
    del dataset, inferences, targets
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
    if task_name not in self._writers:
      self._writers[task_name] = SummaryWriter(str(epath.Path(self.output_dir) / task_name))
    writer = self._writers[task_name]
    for name, value in metrics.items():
      if isinstance(value, seqio.metrics.Scalar):
        writer.add_scalar(f'eval/{name}', float(np.asarray(value.value)),
                          -1 if step is None else step)
    writer.flush()


def _trim_eos(row: np.ndarray, eos_id: int = 1) -> list[int]:
  row = [int(t) for t in row]
  return row[:row.index(eos_id) + 1] if eos_id in row else row


class ModelFns:
  """`predict_fn` / `score_fn` / `predict_with_aux_fn` for `Evaluator.evaluate`.

  Each takes the Evaluator's enumerated dataset of model features, cuts it in
  order into batches of `batch_size` rows (the last one padded with all-zero
  rows, as `hyperflax.evaluate`'s batches are) and calls the jitted step.
  `predict_fn` returns each prediction up to its EOS (ragged).
  """

  def __init__(self, exp: Experiment, trainable, frozen, batch_size: int,
               max_decode_length: int):
    self.exp, self.trainable, self.frozen = exp, trainable, frozen
    self.batch_size = batch_size
    self._score = jax.jit(make_score_step(exp))
    self._generate = jax.jit(make_generate_step(exp, max_decode_length))
    self._forced = jax.jit(self._teacher_forced)

  def batches(self, dataset) -> Iterator[tuple[list[int], dict[str, Any]]]:
    rows = list(dataset.as_numpy_iterator())
    for start in range(0, len(rows), self.batch_size):
      chunk = rows[start:start + self.batch_size]
      batch = {}
      for key, field in MODEL_TO_BATCH.items():
        if key not in chunk[0][1]:
          continue
        arr = np.stack([features[key] for _, features in chunk])
        arr = arr.astype(np.float32 if field == 'target_weights' else np.int32)
        pad = np.zeros((self.batch_size - len(chunk),) + arr.shape[1:], arr.dtype)
        batch[field] = jnp.asarray(np.concatenate([arr, pad]))
      yield [int(i) for i, _ in chunk], batch

  def predict_fn(self, dataset, model_feature_shapes=None):
    del model_feature_shapes
    out = []
    for indices, batch in self.batches(dataset):
      tokens = np.asarray(self._generate(self.trainable, self.frozen, batch))
      out += [(i, _trim_eos(row)) for i, row in zip(indices, tokens)]
    return out

  def score_fn(self, dataset, model_feature_shapes=None):
    del model_feature_shapes
    out = []
    for indices, batch in self.batches(dataset):
      scores = np.asarray(self._score(self.trainable, self.frozen, batch))
      out += [(i, float(s)) for i, s in zip(indices, scores)]
    return out

  def _teacher_forced(self, trainable, frozen, batch):
    # CACLM rows continue different documents: one adapter per row.
    logits, _ = self.exp.forward(trainable, frozen, batch, deterministic=True,
                                 shared_demos=False)
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    targets, weights = batch['targets'], batch['target_weights']
    tok = jnp.take_along_axis(logp, targets[..., None], -1)[..., 0]
    argmax = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    return (argmax, jnp.sum(tok * weights, -1), jnp.sum(weights, -1),
            jnp.sum((argmax == targets) * weights, -1))

  def predict_with_aux_fn(self, dataset, model_feature_shapes=None):
    """Teacher-forced argmax tokens, with per-row likelihood and counts."""
    del model_feature_shapes
    out, aux = [], defaultdict(list)
    for indices, batch in self.batches(dataset):
      argmax, loglik, num_tokens, correct = (
          np.asarray(x) for x in self._forced(self.trainable, self.frozen, batch))
      for r, i in enumerate(indices):
        out.append((i, argmax[r].tolist()))
        aux['log_likelihood'].append(float(loglik[r]))
        aux['num_tokens'].append(float(num_tokens[r]))
        aux['num_correct'].append(float(correct[r]))
    return out, dict(aux)


def summarize(suite, task_metrics: dict[str, dict[str, float]]) -> dict:
  """Per-unit metrics (a unit's score and predict Tasks merged) aggregated
  per table column and overall exactly as `hyperflax.evaluate` does."""
  from hyperflax.tasks.eval_tasks import _SPLITS  # pylint: disable=g-import-not-at-top
  from hyperflax.data.registry import REGISTRY  # pylint: disable=g-import-not-at-top
  splits = list(_SPLITS[REGISTRY[suite.collection].options])
  per_unit: dict[Any, dict[str, float]] = {}
  for name, result in task_metrics.items():
    unit, _ = suite.tasks[name]
    per_unit.setdefault(unit, {}).update(result)
  units = sorted(per_unit, key=lambda u: (splits.index(u.split), u.index))
  per_task = {u.name: per_unit[u] for u in units}
  groups, group_metrics = defaultdict(list), defaultdict(lambda: defaultdict(list))
  for u in units:
    groups[u.group].append(evaluate_lib.headline(per_unit[u]))
    for key, value in per_unit[u].items():
      group_metrics[u.group][key].append(value)
  return {'per_task': per_task,
          'per_group': {g: float(np.mean(v)) for g, v in groups.items()},
          'average': float(np.mean([evaluate_lib.headline(r) for r in per_task.values()])),
          'per_group_metrics': {g: {k: float(np.mean(v)) for k, v in m.items()}
                                for g, m in group_metrics.items()},
          'average_metrics': {k: float(np.mean([r[k] for r in per_task.values() if k in r]))
                              for k in sorted({k for r in per_task.values() for k in r})}}


def register_for_run(config: ml_collections.ConfigDict, mode: str, collection: str | None = None):
  """The run's evaluation collection (or `collection`) as SeqIO Tasks, with
  the run's data settings (`hyperflax.evaluate.eval_data_args`)."""
  from hyperflax import tasks  # pylint: disable=g-import-not-at-top
  e = config.eval
  collection = collection or e.name
  return tasks.register_eval_tasks(
      collection, mode=mode, also_generate=bool(e.get('also_generate', False)),
      **evaluate_lib.eval_data_args(config, collection))


def _suite_of(mixture: str):
  """The registered `EvalSuite` holding the mixture's (first) Task, if any."""
  from hyperflax.tasks import SUITES  # pylint: disable=g-import-not-at-top
  names = [t.name for t in seqio.dataset_providers.get_subtasks(
      seqio.get_mixture_or_task(mixture))]
  for suite in SUITES.values():
    if names and names[0] in suite.tasks:
      return suite
  return None


def open_workdir(workdir) -> tuple[ml_collections.ConfigDict, int, dict]:
  """(run config, checkpoint step, trainable parameters) of a train workdir,
  read as every entry point reads it (`hyperflax.workdir`)."""
  from hyperflax import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  step, trainable = workdir_lib.load_trainable(workdir, with_step=True)
  return workdir_lib.load_run_config(workdir), int(step), trainable


def run(workdir: str, config: ml_collections.ConfigDict, trainable, frozen,
        exp: Experiment, *, mixture: str | None = None, split: str | None = None,
        batch_size: int | None = None, step: int = -1,
        out_dir: str | None = None) -> dict:
  """Runs the SeqIO eval job; returns {'metrics': per SeqIO task, 'summary'}."""
  e = config.eval
  out = epath.Path(out_dir or epath.Path(workdir) / 'seqio_eval')
  out.mkdir(parents=True, exist_ok=True)
  caclm = not e.get('name')
  if caclm:  # a hyperpretraining run: its CACLM Task's validation split
    from hyperflax import tasks  # pylint: disable=g-import-not-at-top
    d = config.data
    tasks.register_all(data_dir=d.get('data_dir') or None, vocab_path=d.get('vocab_path') or None,
                       options={d.name: dict(d.get('options', {}) or {})})
    mixture, split, lengths = mixture or d.name, split or 'validation', None
    converter_hyper = True
  else:
    # A mixture of another collection is evaluated with the run's K, seed,
    # lengths and mode too (the eval options belong to eval.name only).
    other = _suite_of(mixture) if mixture else None
    suite = register_for_run(config, exp.data_mode, other.collection if other else None)
    mixture, split = mixture or suite.mixture, split or e.split
    lengths, converter_hyper = suite.sequence_length(), exp.data_mode == 'hyper'
  from hyperflax import tasks  # pylint: disable=g-import-not-at-top
  converter = (tasks.HyperEncDecFeatureConverter(pack=False) if converter_hyper
               else tasks.EncDecFeatureConverter(pack=False))
  # The run's seed picks CACLM's validation documents (the Evaluator's default is 42).
  evaluator = Evaluator(mixture, converter, eval_split=split, sequence_length=lengths,
                        seed=int(config.seed),
                        logger_cls=(seqio.JSONLogger, TensorBoardXLogger),
                        log_dir=str(out), async_compute_metrics=False)
  fns = ModelFns(exp, trainable, frozen, int(batch_size or e.batch_size),
                 int(e.get('max_decode_length', 32)))
  future, _ = evaluator.evaluate(compute_metrics=True, step=step, predict_fn=fns.predict_fn,
                                 score_fn=fns.score_fn,
                                 predict_with_aux_fn=fns.predict_with_aux_fn)
  task_metrics = {k: {m: float(v) for m, v in r.items()} for k, r in future.result().items()}
  evaluator.close()
  if caclm:
    summary = {'per_task': task_metrics}
  else:
    summary = summarize(suite, {k: v for k, v in task_metrics.items() if k in suite.tasks})
    name = config.hyper.kind if config.method == 'hypermodel' else config.method
    print(metrics_lib.format_table({name: summary['per_group']}, sorted(summary['per_group'])))
  (out / 'results.json').write_text(json.dumps(
      {'mixture': mixture, 'split': split, 'step': step, **summary}, indent=2))
  return {'metrics': task_metrics, 'summary': summary}


def main(argv=None) -> int:
  from absl import flags  # pylint: disable=g-import-not-at-top
  from hyperflax import cli, runtime  # pylint: disable=g-import-not-at-top

  def define(fv):
    flags.DEFINE_string('workdir', None, 'a hyperflax.train workdir (or gs:// URL)', flag_values=fv)
    flags.DEFINE_string('mixture', None, 'SeqIO mixture or task (default: <eval.name>_eval)',
                        flag_values=fv)
    flags.DEFINE_string('split', None, 'evaluation split (default: config.eval.split)',
                        flag_values=fv)
    flags.DEFINE_integer('batch_size', None, 'rows per batch (default: config.eval.batch_size)',
                         flag_values=fv)

  def body(fv):
    config, step, restored = open_workdir(fv.workdir)
    runtime.preflight(config)  # as hyperflax.evaluate: full size on CPU is refused
    exp = Experiment.from_config(config)
    init_rng, _ = jax.random.split(jax.random.PRNGKey(config.seed))  # as train() does
    frozen = exp.init_frozen(init_rng)  # the trainable one was restored above
    logging.info('SeqIO evaluation of %s at step %d', fv.workdir, step)
    run(fv.workdir, config, jax.tree.map(jnp.asarray, restored), frozen, exp,
        mixture=fv.mixture, split=fv.split, batch_size=fv.batch_size, step=step)
    return 0

  return cli.absl_main(__doc__, define, body, argv, 'hyperflax.seqio_eval', required=('workdir',))


if __name__ == '__main__':
  raise SystemExit(main())
