"""Evaluation Tasks per published unit, and the Mixtures of the papers' tables.

One `seqio.Task` per evaluation task of a collection, named like T0's:

  P3 held-out (T0)  `<dataset>_<subset>_<template>[_r1]_score_eval`, e.g.
                    `super_glue_cb_GPT_3_style_score_eval`: rank
                    classification, one example per (query, option),
                    `score_metric_fns` accuracy over the options.
  MetaICL           `metaicl_<split>_<task>` (greedy generation: macro-F1
                    for classification tasks, else ROUGE-L, the headline) and
                    `metaicl_<split>_<task>_score_eval` (`rank_accuracy`,
                    `rank_macro_f1`).
  S-NI              `sni_def[_2pos]_<task>`: generation, `predict_metric_fns`
                    ROUGE-L and exact match (official normalisation).
  synthetic suite   `synthetic_fewshot_<family>_<n>[_score_eval]`.

Generation Tasks exist for every unit; a unit with options joins its
collection's Mixture by its `_score_eval` Task, plus its generation Task when
its headline is on generations (MetaICL: macro-F1 or ROUGE-L of greedy
generations, HyperTuning §5.2; rank metrics become `rank_*`) or with
`also_generate` (`generated_exact_match`), as `hyperflax.evaluate` does.
Mixtures: `<collection>_eval` (every unit of the collection) and
`<collection>_<group>_eval` for groups of several units (a P3 dataset's
templates: one column of T0's / HyperTuning's table).

Features carry what the model reads, already built by hyperflax's converter
(so SeqIO and `hyperflax.evaluate` feed identical ids): `hyper_inputs` (the
demonstrations, `<x> in <y> out ...`, whole demonstrations dropped to fit;
mode 'hyper' only), `inputs` (the query; in mode 'concat' the demonstrations
followed by the query), `targets` (gold output, or the scored option), plus
`inputs_pretokenized`, `targets_pretokenized`, `answer`, `references`,
`example_index`, `option_index`, `label`, `num_options`, `majority` (the query's
credit for the demonstrations' most frequent option) for the metrics; for a run
trained with `query_in_decoder`, `targets` start with the query and
`targets_read` counts its ids (read, not scored: `EncDecFeatureConverter`), and
only the scoring Tasks exist (generation would need a forced decoder prefix).
Demonstration dropping depends on the lengths, the K and the seed given at
registration, so an eval job registers the Tasks with its run's settings
(`hyperflax.seqio_eval` does); `import hyperflax.tasks` registers defaults.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import re
import threading
from pathlib import Path
from typing import Any

import seqio
import tensorflow as tf

from hyperflax.data import registry as hf_registry
from hyperflax.data import synthetic
from hyperflax.data.examples import Lengths, majority_credit
from hyperflax.data.vocab import load_vocabulary, resolve_data_dir
from hyperflax.tasks import metrics as task_metrics
from hyperflax.tasks.vocabulary import HyperflaxVocabulary

log = logging.getLogger('hyperflax.tasks')

# Collection -> its evaluation splits, each with the SeqIO split names that
# select it (the loaders accept both names for the same data).
_SPLITS = {
    'p3': {'validation': ('validation', 'test')},
    'metaicl': {'test': ('test', 'validation')},
    'sni': {'test': ('test', 'validation')},
    'synthetic': {'heldout_tasks': ('heldout_tasks', 'validation'),
                  'heldout_families': ('heldout_families', 'validation')},
}
# Enough of each task to learn its name, group and kind cheaply.
_PROBE = {'metaicl': {'max_queries': 1}, 'sni': {'max_test_instances': 1},
          'synthetic': {'max_queries': 1}}
EVAL_COLLECTIONS = ('p3_heldout', 'metaicl_hr_to_lr', 'metaicl_non_nli_to_nli',
                    'metaicl_non_class_to_class', 'sni_def', 'sni_def_2pos',
                    'synthetic_fewshot')


@dataclasses.dataclass(frozen=True)
class Unit:
  """One published evaluation unit (a hyperflax `EvalTask`).

  Attributes:
    collection: the registry name it belongs to.
    split: the hyperflax evaluation split that holds it.
    name: hyperflax's task name (`super_glue/cb/GPT-3 style`).
    group: the table column it is averaged into.
    has_options: rank classification (else generation only).
    metric: hyperflax's metric name for it.
    index: position in the collection's evaluation order.
    on_generations: the headline scores greedy generations (MetaICL).
  """
  collection: str
  split: str
  name: str
  group: str
  has_options: bool
  metric: str
  index: int
  on_generations: bool = False


@dataclasses.dataclass
class EvalSuite:
  """What `register_eval_tasks` registered for one collection.

  Attributes:
    collection: registry name.
    mixture: `<collection>_eval`.
    tasks: SeqIO task name -> (Unit, 'score' | 'predict').
    lengths: the hyperflax lengths the few-shot strings were built for.
    mode: 'hyper', 'concat' or 'zero_shot'.
  """
  collection: str
  mixture: str
  tasks: dict[str, tuple[Unit, str]]
  lengths: Lengths
  mode: str

  def sequence_length(self) -> dict[str, int]:
    """Task feature lengths that reproduce hyperflax's padded batches."""
    out = {'inputs': self.lengths.concat if self.mode == 'concat' else self.lengths.encoder,
           'targets': self.lengths.decoder}
    if self.mode == 'hyper':
      out['hyper_inputs'] = self.lengths.hyper
    return out


SUITES: dict[str, EvalSuite] = {}


def clean_name(text: str) -> str:
  """T0's task-name cleaning (`promptsource` utils.get_task_name)."""
  return re.sub(r'[^\w\d\._]+', '_', text)


def seqio_name(unit: Unit, scoring: bool) -> str:
  if hf_registry.REGISTRY[unit.collection].options == 'p3':
    template = unit.name[len(unit.group) + 1:]
    base = clean_name(f'{unit.group.replace("/", "_")}_{template}')
    if unit.group == 'anli':  # T0 scores ANLI per round; the shared data is R1
      base += '_r1'
  else:
    base = clean_name(f'{unit.collection}_{unit.name}')
  return base + ('_score_eval' if scoring else '')


class _Loader:
  """The collection's evaluation tasks, loaded once, when a Task is read."""

  def __init__(self, collection: str, kwargs: dict[str, Any]):
    self.collection, self.kwargs = collection, kwargs
    self._cache: dict[tuple, dict] = {}
    self._lock = threading.Lock()

  def task(self, unit: Unit):
    options = {}
    if hf_registry.REGISTRY[self.collection].options == 'p3':
      options['datasets'] = [unit.group]  # P3 reads one dataset at a time
    key = (unit.split, tuple(options.get('datasets', ())))
    with self._lock:
      if key not in self._cache:
        tasks = hf_registry.get_eval_tasks(self.collection, unit.split,
                                           **{**self.kwargs, **options})
        self._cache[key] = {t.name: t for t in tasks}
    return self._cache[key][unit.name]


def _rows(loader: _Loader, unit: Unit, scoring: bool, hyper: bool):
  """SeqIO examples of one unit, in `hyperflax.evaluate`'s order (EOS off:
  `append_eos_after_trim` puts it back after the same trimming)."""
  task = loader.task(unit)
  conv = task.converter
  for ep in task.episodes():
    query = ep.query
    row = {'inputs': list(conv.encoder_ids(ep)[0][:-1]),
           'inputs_pretokenized': query.input, 'answer': query.target,
           'references': list(query.all_references),
           'example_index': ep.example_index, 'label': query.label,
           'num_options': len(query.options),
           'majority': majority_credit(ep.demos, query) if query.options and ep.demos
                       else float('nan')}
    if hyper:
      row['hyper_inputs'] = conv.hyper_ids(ep)[0][:-1]
    if not scoring:
      yield {**row, 'targets': conv.target_ids(ep)[:-1],
             'targets_pretokenized': query.target, 'option_index': -1}
      continue
    for j, option in enumerate(query.options):
      # With query_in_decoder the target starts with the query, read but not scored.
      target, read = conv.target_and_read(ep, option)
      extra = {'targets_read': read} if conv.query_in_decoder else {}
      yield {**row, 'targets': target[:-1], 'targets_pretokenized': option,
             'option_index': j, **extra}


def _source(loader: _Loader, unit: Unit, scoring: bool, hyper: bool, splits,
            in_decoder: bool = False):
  ids = tf.TensorSpec([None], tf.int32)
  text, integer = tf.TensorSpec([], tf.string), tf.TensorSpec([], tf.int32)
  signature = {'inputs': ids, 'targets': ids, 'inputs_pretokenized': text,
               'targets_pretokenized': text, 'answer': text,
               'references': tf.TensorSpec([None], tf.string),
               'example_index': integer, 'option_index': integer,
               'label': integer, 'num_options': integer,
               'majority': tf.TensorSpec([], tf.float64)}
  if hyper:
    signature['hyper_inputs'] = ids
  if in_decoder:
    signature['targets_read'] = integer

  def dataset_fn(split, shuffle_files, seed=None):
    del split, shuffle_files, seed  # one fixed, ordered set per unit
    return tf.data.Dataset.from_generator(
        lambda: _rows(loader, unit, scoring, hyper), output_signature=signature)
  return seqio.FunctionDataSource(dataset_fn, splits=splits, caching_permitted=False)


def _tokenizer(collection: str, data_dir: Path, vocab_path):
  vocab_path = vocab_path or data_dir / 't5' / 'spiece.model'
  if hf_registry.REGISTRY[collection].synthetic_vocab:
    return synthetic.synthetic_tokenizer(vocab_path)
  return load_vocabulary(vocab_path)


def _enumerate(collection: str, split: str, kwargs: dict) -> list[Unit]:
  """The units of one split, without reading every query."""
  spec = hf_registry.REGISTRY[collection]
  if spec.options == 'p3':
    # Reading P3's queries takes seconds (HellaSwag); the units are known from
    # the templates, filtered as `sources_p3_heldout.heldout_eval_tasks` does.
    from hyperflax.data.p3_templates import templates_for  # pylint: disable=g-import-not-at-top
    from hyperflax.data.sources_p3_heldout import HELDOUT  # pylint: disable=g-import-not-at-top
    opts = kwargs.get('options', {})
    root = Path(opts.get('p3_dir') or Path(kwargs['data_dir']) / 'p3')
    names = []
    for dataset in opts.get('datasets') or sorted(HELDOUT):
      for tpl in templates_for(root, dataset):
        if tpl.answer_choices and (tpl.original_task or
                                   not opts.get('original_task_only', True)):
          names.append((f'{dataset}/{tpl.name}', dataset))
    return [Unit(collection, split, n, g, True, 'accuracy', i)
            for i, (n, g) in enumerate(names)]
  probe = {**kwargs['options'], **_PROBE.get(spec.options, {})}
  tasks = hf_registry.get_eval_tasks(
      collection, split, **{k: v for k, v in kwargs.items() if k != 'options'}, **probe)
  return [Unit(collection, split, t.name, t.group or t.name, t.has_options, t.metric, i,
               bool(getattr(t, 'on_generations', False))) for i, t in enumerate(tasks)]


def register_eval_tasks(collection: str, *, seed: int = 0, lengths=None,
                        num_shots: int = 16, mode: str = 'hyper',
                        data_dir=None, vocab_path=None, also_generate: bool = False,
                        **options) -> EvalSuite:
  """(Re-)registers one collection's per-unit Tasks and its Mixtures.

  The arguments are those of `hyperflax.data.get_eval_tasks` (the same
  data, demonstrations and truncation); `also_generate` adds the generation
  Tasks of units with options to the Mixtures. Previous registrations of
  the collection are removed first. With option `query_in_decoder` (the
  synthetic suite's), `also_generate` is refused in one line.

  Returns:
    The `EvalSuite` (also kept in `SUITES[collection]`).
  """
  spec = hf_registry.REGISTRY[collection]
  if spec.eval is None or spec.kind != 'fewshot':
    raise ValueError(f'{collection} has no few-shot evaluation split')
  data_dir = resolve_data_dir(data_dir)
  kwargs = dict(seed=seed, lengths=lengths, num_shots=num_shots, mode=mode,
                data_dir=data_dir, vocab_path=vocab_path)
  units = []
  for split in _SPLITS[spec.options]:
    units += _enumerate(collection, split, {**kwargs, 'options': options})
  # A query read in the decoder is scored as a target prefix; greedy decoding would have to
  # start from it, which neither these Tasks nor `hyperflax.evaluate` build.
  in_decoder = bool(options.get('query_in_decoder'))
  if in_decoder and also_generate:
    raise ValueError(f'{collection}: query_in_decoder supports rank classification only: set '
                     'eval.also_generate=False')

  vocab = HyperflaxVocabulary(_tokenizer(collection, data_dir, vocab_path))
  features = {k: seqio.Feature(vocab, add_eos=True, dtype=tf.int32)
              for k in (('hyper_inputs',) if mode == 'hyper' else ()) + ('inputs', 'targets')}
  _unregister(collection)
  loader = _Loader(collection, {**kwargs, **options})
  suite = EvalSuite(collection, f'{collection}_eval', {},
                    Lengths.make(lengths) if lengths is not None else spec.lengths, mode)
  members, groups = [], {}
  for unit in units:
    splits = _SPLITS[spec.options][unit.split]
    kinds = (True,) if in_decoder else (True, False) if unit.has_options else (False,)
    for scoring in kinds:
      name = seqio_name(unit, scoring)
      if name in suite.tasks:
        raise ValueError(f'{collection}: units {suite.tasks[name][0].name!r} and '
                         f'{unit.name!r} both map to SeqIO task {name!r}')
      classification = unit.metric == 'macro_f1'
      if scoring:
        fns = [functools.partial(task_metrics.rank_classification, macro_f1=classification,
                                 prefix='rank_' if unit.on_generations else '')]
        post = task_metrics.rank_postprocessor
      elif unit.has_options:
        fns = [functools.partial(task_metrics.option_generation,
                                 on_generations=unit.on_generations,
                                 classification=classification,
                                 exact_match=also_generate or not unit.on_generations)]
        post = task_metrics.generation_postprocessor
      else:
        fns = [task_metrics.generation]
        post = task_metrics.generation_postprocessor
      seqio.TaskRegistry.remove(name)
      seqio.TaskRegistry.add(
          name, source=_source(loader, unit, scoring, mode == 'hyper', splits, in_decoder),
          output_features=features,
          preprocessors=[seqio.preprocessors.append_eos_after_trim],
          postprocess_fn=post, metric_fns=fns)
      suite.tasks[name] = (unit, 'score' if scoring else 'predict')
      if scoring or not unit.has_options or also_generate or unit.on_generations:
        members.append(name)
        groups.setdefault(unit.group, []).append(name)
  seqio.MixtureRegistry.remove(suite.mixture)
  seqio.MixtureRegistry.add(suite.mixture, [(n, 1.0) for n in members])
  for group, names in groups.items():
    if len({suite.tasks[n][0].name for n in names}) > 1:
      seqio.MixtureRegistry.remove(_group_mixture(collection, group))
      seqio.MixtureRegistry.add(_group_mixture(collection, group),
                                [(n, 1.0) for n in names])
  SUITES[collection] = suite
  return suite


def _group_mixture(collection: str, group: str) -> str:
  return clean_name(f'{collection}_{group.replace("/", "_")}_eval')


def _unregister(collection: str) -> None:
  old = SUITES.pop(collection, None)
  if old is None:
    return
  for name, (unit, _) in old.tasks.items():
    seqio.TaskRegistry.remove(name)
    seqio.MixtureRegistry.remove(_group_mixture(collection, unit.group))
  seqio.MixtureRegistry.remove(old.mixture)


def register_default_eval_tasks(data_dir=None, vocab_path=None) -> list[str]:
  """Every collection's Tasks with default settings (K=16, seed 0, default
  lengths); a collection whose data is missing or unreadable is skipped with
  a log line naming the file (`register_eval_tasks` then raises it)."""
  names = []
  for collection in EVAL_COLLECTIONS:
    try:
      names += list(register_eval_tasks(collection, data_dir=data_dir,
                                        vocab_path=vocab_path).tasks)
    except FileNotFoundError as e:
      log.info('SeqIO evaluation Tasks of %s not registered: %s', collection, e)
    except (OSError, ValueError) as e:  # a damaged file must not break the import
      log.warning('SeqIO evaluation Tasks of %s not registered: %s', collection, e)
  return names
