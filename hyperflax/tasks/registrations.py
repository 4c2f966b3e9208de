"""SeqIO Tasks for every dataset of `hyperflax.data.registry`.

Each Task wraps the same pure-Python pipeline the trainer uses (episode
sampling, few-shot formatting with whole-demonstration dropping) through a
`seqio.FunctionDataSource`, so SeqIO users and eval jobs see identical data.
Features (int32 ids; `<x>`/`<y>` are ids 32100/32101, outside the
SentencePiece range):
  hyper_inputs  `<x> in <y> out ...` (CACLM: `<extra_id_0> A <extra_id_1> D`)
  inputs        the query (CACLM: segment B)
  targets       the gold output (CACLM: segment C, no EOS)
EOS is appended by `seqio.preprocessors.append_eos_after_trim`. Evaluation
splits also carry `task`, `example_index`, `inputs_pretokenized` and
`targets_pretokenized`. A Task over several source tasks is already their
examples-proportional mixture (MetaICL/T0 sampling), so no extra
`seqio.Mixture` is needed per collection; `hyperflax_fewshot_mixture` mixes
the three real collections equally for convenience. Evaluation is per
published unit (`eval_tasks`); of these collection Tasks only CACLM's carry
metrics (validation split: teacher-forced token accuracy and loss).
"""

from __future__ import annotations

import itertools
import os

import seqio
import tensorflow as tf

from hyperflax.data import registry as hf_registry
from hyperflax.data.examples import Lengths
from hyperflax.data.vocab import resolve_data_dir
from hyperflax.tasks import metrics as task_metrics

SPLITS = {
    'caclm': ('train', 'validation'),
    'synthetic': ('train', 'validation', 'heldout_tasks', 'heldout_families'),
    'default': ('train', 'test'),
    'p3_heldout': ('validation',),
    'p3_t0_train': ('train', 'validation'),
}
MIXTURE = 'hyperflax_fewshot_mixture'
_MIXED = ('p3_t0_train', 'metaicl_hr_to_lr', 'sni_def_2pos')


def _splits(name: str) -> tuple[str, ...]:
  spec = hf_registry.REGISTRY[name]
  if spec.kind == 'caclm':
    return SPLITS['caclm']
  if spec.options == 'synthetic':
    return SPLITS['synthetic']
  return SPLITS.get(name, SPLITS['default'])


def _fewshot_examples(name, split, seed, data_dir, vocab_path, lengths,
                      num_shots, options):
  """Token-id examples (no EOS) from the hyperflax pipeline."""
  kw = dict(seed=seed, lengths=lengths, num_shots=num_shots,
            data_dir=data_dir, vocab_path=vocab_path, **options)
  if split == 'train':
    stream = hf_registry.get_dataset(name, 'train', batch_size=1, **kw)
    conv = stream.converter
    for step in itertools.count():
      for ep in stream.episodes(step):
        yield _row(conv, ep, lengths)
  else:
    for task in hf_registry.get_eval_tasks(name, split, **kw):
      conv = task.converter
      for ep in task.episodes():
        row = _row(conv, ep, lengths)
        row.update(task=ep.task, example_index=ep.example_index,
                   inputs_pretokenized=ep.query.input,
                   targets_pretokenized=ep.query.target)
        yield row


def _row(conv, ep, lengths):
  hyper, _, _ = conv.fewshot_ids(ep, lengths.hyper - 1)
  return {'hyper_inputs': hyper, 'inputs': list(conv.ids(ep.query.input)),
          'targets': list(conv.ids(ep.query.target))}


def _caclm_examples(name, split, seed, data_dir, vocab_path, options):
  from hyperflax.data.vocab import EOS_ID  # pylint: disable=g-import-not-at-top
  stream = hf_registry.get_dataset(name, split, batch_size=1, seed=seed,
                                   data_dir=data_dir, vocab_path=vocab_path,
                                   **options)
  batches = iter(stream) if split == 'train' else stream
  for b in batches:
    strip = lambda a: [int(t) for t in a if t != 0]
    hyper = strip(b['hyper_inputs'][0])
    enc = strip(b['encoder_inputs'][0])
    assert hyper[-1] == EOS_ID and enc[-1] == EOS_ID
    yield {'hyper_inputs': hyper[:-1], 'inputs': enc[:-1],
           'targets': strip(b['targets'][0])}


def _dataset_fn(name, data_dir, vocab_path, lengths, num_shots, options):
  spec = hf_registry.REGISTRY[name]
  str_spec = tf.TensorSpec([], tf.string)
  ids = tf.TensorSpec([None], tf.int32)

  def dataset_fn(split, shuffle_files, seed=None):
    del shuffle_files  # order is a pure function of the seed
    seed = 0 if seed is None else int(seed)
    signature = {'hyper_inputs': ids, 'inputs': ids, 'targets': ids}
    if spec.kind == 'caclm':
      gen = lambda: _caclm_examples(name, split, seed, data_dir, vocab_path,
                                    options)
    else:
      if split != 'train':
        signature.update(task=str_spec, example_index=tf.TensorSpec([], tf.int32),
                         inputs_pretokenized=str_spec,
                         targets_pretokenized=str_spec)
      gen = lambda: _fewshot_examples(name, split, seed, data_dir, vocab_path,
                                      lengths, num_shots, options)
    return tf.data.Dataset.from_generator(gen, output_signature=signature)
  return dataset_fn


def register_all(data_dir: str | os.PathLike | None = None,
                 vocab_path: str | os.PathLike | None = None,
                 lengths: Lengths | None = None, num_shots: int = 16,
                 options: dict[str, dict] | None = None) -> list[str]:
  """(Re-)registers every dataset as a SeqIO Task; safe to call repeatedly.

  Args:
    data_dir: data root (default: $HYPERFLAX_DATA_DIR, else
      `<repo>/../shared/data`); nothing is read until a dataset is requested.
    vocab_path: T5 `spiece.model` (default `<data_dir>/t5/spiece.model`).
    lengths: lengths used for whole-demonstration dropping (default
      1024/384/128; the synthetic suite uses its own).
    num_shots: K.
    options: per-name source options, e.g. {'metaicl_hr_to_lr':
      {'max_queries': 100}}.

  Returns:
    The registered task names.
  """
  data_dir = str(resolve_data_dir(data_dir))
  vocab = seqio.SentencePieceVocabulary(
      str(vocab_path or os.path.join(data_dir, 't5', 'spiece.model')),
      extra_ids=100)
  registered = []
  for name in hf_registry.names():
    spec = hf_registry.REGISTRY[name]
    if spec.kind == 'recall':  # query_in_decoder rows, which the SeqIO tasks do not build
      continue
    task_lengths = lengths or spec.lengths
    features = {
        'hyper_inputs': seqio.Feature(vocab, add_eos=True, dtype=tf.int32),
        'inputs': seqio.Feature(vocab, add_eos=True, dtype=tf.int32),
        'targets': seqio.Feature(vocab, add_eos=spec.kind != 'caclm',
                                 dtype=tf.int32),
    }
    seqio.TaskRegistry.remove(name)
    seqio.TaskRegistry.add(
        name,
        source=seqio.FunctionDataSource(
            _dataset_fn(name, data_dir, vocab_path, task_lengths, num_shots,
                        (options or {}).get(name, {})),
            splits=_splits(name), caching_permitted=False),
        output_features=features,
        preprocessors=[seqio.preprocessors.append_eos_after_trim],
        # CACLM validation: teacher-forced token accuracy and loss.
        metric_fns=[task_metrics.caclm_validation] if spec.kind == 'caclm' else [])
    registered.append(name)
  seqio.MixtureRegistry.remove(MIXTURE)
  seqio.MixtureRegistry.add(MIXTURE, [(n, 1.0) for n in _MIXED])
  return registered
