"""Named datasets and the trainer's entry points `get_dataset` /
`get_eval_tasks`.

Names (defaults point into the shared data layout under `data_dir`, i.e.
argument, $HYPERFLAX_DATA_DIR, or `<repo>/../shared/data`):

  caclm_c4                    CACLM on TFDS c4/en if prepared locally, else
                              `<data_dir>/c4/c4_sample.jsonl` (option c4_paths)
  synthetic_caclm             CACLM on generated documents
  p3_t0_train                 P3 T0-train (`<data_dir>/p3`); eval = p3_heldout
  p3_heldout                  P3 held-out rank classification (eval only)
  metaicl_hr_to_lr, metaicl_non_nli_to_nli, metaicl_non_class_to_class
                              MetaICL splits (`<data_dir>/metaicl`)
  sni_def, sni_def_2pos       S-NI (`<data_dir>/sni`)
  synthetic_fewshot           the built-in synthetic suite (the default)
  synthetic_recall            in-context recall in the suite's words (training
                              only; a curriculum stage, `recall`)

Source options (keyword arguments of `get_dataset`/`get_eval_tasks`, checked:
an unknown one raises): see `_OPTIONS`.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Callable

from hyperflax.data import caclm as caclm_lib
from hyperflax.data import recall as recall_lib
from hyperflax.data import sources_c4, sources_metaicl, sources_p3
from hyperflax.data import sources_p3_heldout, sources_sni, synthetic
from hyperflax.data.converters import Converter
from hyperflax.data.examples import EvalTaskData, FewShotTask, Lengths
from hyperflax.data.fewshot import DataStats, EpisodeSampler
from hyperflax.data.pipeline import EvalStream, EvalTask, TrainStream
from hyperflax.data.vocab import load_vocabulary, resolve_data_dir

# Options each kind of source understands (documented where they are used).
_OPTIONS = {
    'metaicl': {'metaicl_dir', 'train_k', 'train_seed', 'seeds', 'strict',
                'max_queries', 'task_sampling'},
    'sni': {'sni_dir', 'max_train_instances', 'max_test_instances', 'strict',
            'task_sampling'},
    'p3': {'p3_dir', 'layout', 'max_avg_input_tokens', 'length_sample',
           'max_examples_per_task', 'include', 'datasets',
           'original_task_only', 'max_queries', 'task_sampling', 'size_cap'},
    'synthetic': {'suite_seed', 'train_tasks_per_family',
                  'heldout_tasks_per_family', 'pool_size', 'max_queries',
                  'task_sampling', 'num_labels', 'many_keys', 'layouts',
                  'recall_slots', 'train_families', 'query_in_decoder',
                  'decoder_recall', 'query_marks'},
    'recall': {'pairs', 'queries', 'num_labels', 'separated', 'query_in_decoder',
               'query_marks', 'keys', 'stated_in'},
    'caclm': {'c4_paths', 'tfds_data_dir', 'use_tfds', 'segments', 'num_docs',
              'suite_seed', 'num_eval_batches'},
}


@dataclasses.dataclass
class Context:
  """What a builder gets: resolved paths, tokenizer, seed and options."""
  name: str
  data_dir: Path
  seed: int
  num_shots: int
  options: dict[str, Any]
  tokenizer: Any = None
  stats: DataStats | None = None

  def opt(self, key: str, default=None):
    return self.options.get(key, default)


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """A registered dataset.

  Attributes:
    kind: 'fewshot', 'caclm' or 'recall'; also picks the allowed options.
    options: key into `_OPTIONS`.
    train: ctx -> training tasks (None: evaluation only).
    eval: (ctx, split) -> evaluation tasks (None: training only).
    synthetic_vocab: use `synthetic.synthetic_tokenizer` (word fallback).
    lengths: default lengths.
  """
  kind: str
  options: str
  train: Callable[[Context], list[FewShotTask]] | None
  eval: Callable[[Context, str], list[EvalTaskData]] | None
  synthetic_vocab: bool = False
  lengths: Lengths = Lengths()


# ---- builders ------------------------------------------------------------------

def _metaicl(split: str) -> DatasetSpec:
  def root(ctx):
    return Path(ctx.opt('metaicl_dir') or ctx.data_dir / 'metaicl')

  def train(ctx):
    return sources_metaicl.train_tasks(
        root(ctx), split, train_k=ctx.opt('train_k', 16384),
        train_seed=ctx.opt('train_seed', 100), strict=ctx.opt('strict', False),
        stats=ctx.stats)

  def evaluate(ctx, part):
    _check_split(ctx, part, ('test', 'validation'))
    return sources_metaicl.eval_tasks(
        root(ctx), split, k=16, seeds=tuple(ctx.opt('seeds', (100,))),
        max_queries=ctx.opt('max_queries'), strict=ctx.opt('strict', False),
        stats=ctx.stats)
  return DatasetSpec('fewshot', 'metaicl', train, evaluate)


def _sni(setting: str) -> DatasetSpec:
  def root(ctx):
    return Path(ctx.opt('sni_dir') or ctx.data_dir / 'sni')

  def train(ctx):
    return sources_sni.train_tasks(
        root(ctx), setting,
        max_train_instances=ctx.opt('max_train_instances', 100),
        strict=ctx.opt('strict', False), stats=ctx.stats)

  def evaluate(ctx, part):
    _check_split(ctx, part, ('test', 'validation'))
    return sources_sni.eval_tasks(
        root(ctx), setting,
        max_test_instances=ctx.opt('max_test_instances', 100),
        strict=ctx.opt('strict', False), stats=ctx.stats)
  return DatasetSpec('fewshot', 'sni', train, evaluate)


def _p3_root(ctx):
  return Path(ctx.opt('p3_dir') or ctx.data_dir / 'p3')


def _p3_train(ctx):
  return sources_p3.t0_train_tasks(
      _p3_root(ctx), ctx.tokenizer, layout=ctx.opt('layout', 'auto'),
      max_avg_input_tokens=ctx.opt('max_avg_input_tokens', 320),
      length_sample=ctx.opt('length_sample'),
      max_examples_per_task=ctx.opt('max_examples_per_task'),
      include=ctx.opt('include'), stats=ctx.stats)


def _p3_eval(ctx, part):
  _check_split(ctx, part, ('validation', 'test'))
  return sources_p3_heldout.heldout_eval_tasks(
      _p3_root(ctx), num_shots=ctx.num_shots, seed=ctx.seed,
      datasets=ctx.opt('datasets'),
      original_task_only=ctx.opt('original_task_only', True),
      max_queries=ctx.opt('max_queries'), stats=ctx.stats)


def _suite(ctx) -> synthetic.SyntheticSuite:
  return synthetic.SyntheticSuite(
      seed=ctx.opt('suite_seed', 0),
      train_tasks_per_family=ctx.opt('train_tasks_per_family', 200),
      heldout_tasks_per_family=ctx.opt('heldout_tasks_per_family', 20),
      pool_size=ctx.opt('pool_size', 64),
      num_labels=ctx.opt('num_labels', len(synthetic.LABELS)),
      many_keys=ctx.opt('many_keys', False),
      layouts=ctx.opt('layouts', 'fixed'),
      train_families=_names(ctx.opt('train_families')))


def _names(value) -> tuple[str, ...] | None:
  """A list option that may also be given as one name."""
  if value is None:
    return None
  return (value,) if isinstance(value, str) else tuple(value)


def _synthetic_eval(ctx, part):
  part = 'validation' if part in ('test', 'eval') else part
  return _suite(ctx).eval_tasks(part, ctx.num_shots,
                                ctx.opt('max_queries', 32))


def _check_split(ctx, part, allowed):
  if part not in allowed:
    raise ValueError(f'{ctx.name}: unknown split {part!r}; use "train" or one '
                     f'of {allowed}')


REGISTRY: dict[str, DatasetSpec] = {
    'caclm_c4': DatasetSpec('caclm', 'caclm', None, None),
    'synthetic_caclm': DatasetSpec('caclm', 'caclm', None, None,
                                   synthetic_vocab=True),
    'p3_t0_train': DatasetSpec('fewshot', 'p3', _p3_train, _p3_eval),
    'p3_heldout': DatasetSpec('fewshot', 'p3', None, _p3_eval),
    'metaicl_hr_to_lr': _metaicl('hr_to_lr'),
    'metaicl_non_nli_to_nli': _metaicl('non_nli_to_nli'),
    'metaicl_non_class_to_class': _metaicl('non_class_to_class'),
    'sni_def': _sni('def'),
    'sni_def_2pos': _sni('def_2pos'),
    'synthetic_fewshot': DatasetSpec(
        'fewshot', 'synthetic', lambda ctx: _suite(ctx).train_tasks(),
        _synthetic_eval, synthetic_vocab=True, lengths=synthetic.LENGTHS),
    'synthetic_recall': DatasetSpec('recall', 'recall', None, None, synthetic_vocab=True,
                                    lengths=synthetic.LENGTHS),
}

SYNTHETIC_CACLM_SEGMENTS = caclm_lib.Segments(a=64, b=16, c=32, d=64)


def names() -> list[str]:
  return sorted(REGISTRY)


def _context(name, seed, num_shots, data_dir, vocab_path, options):
  if name not in REGISTRY:
    raise ValueError(f'unknown dataset {name!r}; registered: {names()}')
  spec = REGISTRY[name]
  unknown = set(options) - _OPTIONS[spec.options]
  if unknown:
    raise ValueError(f'{name}: unknown option(s) {sorted(unknown)}; allowed: '
                     f'{sorted(_OPTIONS[spec.options])}')
  data_dir = resolve_data_dir(data_dir)
  vocab_path = vocab_path or data_dir / 't5' / 'spiece.model'
  if spec.synthetic_vocab:
    tokenizer = synthetic.synthetic_tokenizer(vocab_path)
  else:
    tokenizer = load_vocabulary(vocab_path)
  return spec, Context(name, data_dir, seed, num_shots, dict(options),
                       tokenizer, DataStats(name))


def get_dataset(name: str, split: str = 'train', *, batch_size: int,
                seed: int = 0, lengths=None, num_shots: int = 16,
                start_step: int = 0, data_dir: str | os.PathLike | None = None,
                mode: str = 'hyper', vocab_path: str | os.PathLike | None = None,
                scoring: bool | None = None, **options):
  """Batches of a registered dataset.

  Args:
    name: a registered name (`names()`).
    split: 'train' for an infinite stream; otherwise a finite, ordered pass
      over the evaluation tasks ('validation' / 'test'; the synthetic suite
      also has 'heldout_tasks', 'heldout_families', 'train_tasks').
    batch_size: rows per batch (evaluation pads the last batch of each task).
    seed: the stream seed; batch n of 'train' depends only on (seed, n).
    lengths: `Lengths`, a (hyper, encoder, decoder) tuple or dict; default
      1024/384/128 (synthetic: `synthetic.LENGTHS`).
    num_shots: K demonstrations (at most).
    start_step: first training step to yield (exact resumption).
    data_dir: root of the data layout.
    mode: 'hyper', 'concat' (T5-MTF-Few-shot) or 'zero_shot' (T5-MTF).
    vocab_path: T5 `spiece.model`; default `<data_dir>/t5/spiece.model`.
    scoring: for evaluation, rank-classification rows (default: when the task
      has options).
    **options: source options (see `_OPTIONS`).

  Returns:
    `TrainStream`, `caclm.CaclmStream` or `EvalStream` (iterables of numpy
    batch dicts; see `converters` for the fields). CACLM evaluation returns
    a list of `num_eval_batches` batches (option, default 10) from held-out
    documents (every 20th in-memory document, or TFDS 'validation').
  """
  spec, ctx = _context(name, seed, num_shots, data_dir, vocab_path, options)
  if spec.kind == 'caclm':
    if mode != 'hyper':
      raise ValueError(f'{name}: CACLM batches exist in mode "hyper" only')
    # Without explicit lengths, CACLM pads to what its segments need.
    return _caclm_stream(spec, ctx, split, batch_size,
                         None if lengths is None else Lengths.make(lengths),
                         start_step if split == 'train' else 0)
  lengths = Lengths.make(lengths) if lengths is not None else spec.lengths
  if spec.kind == 'recall':
    return _recall_stream(ctx, split, mode, lengths, batch_size, start_step)
  converter = Converter(ctx.tokenizer, lengths, mode, ctx.stats,
                        recall_slots=ctx.opt('recall_slots', 0) if split == 'train' else 0,
                        query_in_decoder=bool(ctx.opt('query_in_decoder', False)),
                        decoder_recall=ctx.opt('decoder_recall', 0) if split == 'train' else 0,
                        query_marks=ctx.opt('query_marks', 'xy'))
  if split == 'train':
    if spec.train is None:
      raise ValueError(f'{name} has no training split (evaluation only)')
    sampler = EpisodeSampler(spec.train(ctx), num_shots, seed,
                             ctx.opt('task_sampling', 'proportional'),
                             ctx.opt('size_cap'), ctx.stats)
    return TrainStream(sampler, converter, batch_size, start_step)
  tasks = _eval_tasks(spec, ctx, split, converter)
  return EvalStream(tasks, batch_size, scoring)


def get_eval_tasks(name: str, split: str = 'validation', *, seed: int = 0,
                   lengths=None, num_shots: int = 16,
                   data_dir: str | os.PathLike | None = None,
                   mode: str = 'hyper',
                   vocab_path: str | os.PathLike | None = None,
                   **options) -> list[EvalTask]:
  """Per-task evaluation sets (fixed demos, ordered queries, options for rank
  classification or references for generation), each with `.batches()`."""
  spec, ctx = _context(name, seed, num_shots, data_dir, vocab_path, options)
  lengths = Lengths.make(lengths) if lengths is not None else spec.lengths
  converter = Converter(ctx.tokenizer, lengths, mode, ctx.stats,
                        query_in_decoder=bool(ctx.opt('query_in_decoder', False)),
                        query_marks=ctx.opt('query_marks', 'xy'))
  return _eval_tasks(spec, ctx, split, converter)


def data_report(name: str, *, seed: int = 0, num_shots: int = 16,
                data_dir: str | os.PathLike | None = None,
                vocab_path: str | os.PathLike | None = None, **options) -> dict:
  """What a training dataset's sources provide and what was left out.

  Builds the training tasks (no batches) and returns, JSON-able: `counts`
  (every skip/filter/removal summed over tasks, e.g. P3's empty files and
  length-filtered prompts, MetaICL's missing files and test tasks removed
  from training, CACLM's documents shorter than a window), `by_task` (the
  per-task counters) and the sources' structured reports (P3: `p3_figure6`).
  """
  spec, ctx = _context(name, seed, num_shots, data_dir, vocab_path, options)
  if spec.synthetic_vocab:  # generated data: nothing can be missing (and it is slow to build)
    return {'dataset': name, 'counts': {}, 'by_task': {}}
  if spec.kind == 'caclm':
    _caclm_stream(spec, ctx, 'train', 1, None, 0)
  elif spec.train is not None:
    spec.train(ctx)
  counts: dict[str, int] = {}
  for counter in ctx.stats.counts.values():
    for kind, n in counter.items():
      counts[kind] = counts.get(kind, 0) + n
  return {'dataset': name, 'counts': dict(sorted(counts.items())),
          'by_task': ctx.stats.summary(), **ctx.stats.reports}


def _eval_tasks(spec, ctx, split, converter) -> list[EvalTask]:
  if spec.eval is None:
    raise ValueError(f'{ctx.name} has no evaluation split')
  data = spec.eval(ctx, 'test' if split == 'eval' else split)
  return [EvalTask(d, converter, i, ctx.num_shots) for i, d in enumerate(data)]


def _caclm_stream(spec, ctx, split, batch_size, lengths, start_step):
  synthetic_text = spec.synthetic_vocab
  segments = ctx.opt('segments') or (
      SYNTHETIC_CACLM_SEGMENTS if synthetic_text else caclm_lib.Segments())
  if not isinstance(segments, caclm_lib.Segments):
    segments = caclm_lib.Segments(*segments)
  tok = ctx.tokenizer
  seed = ctx.seed if split == 'train' else ctx.seed + 1_000_003
  if not synthetic_text and ctx.opt('use_tfds', 'auto') is not False:
    found = sources_c4.find_prepared_tfds('c4/en', ctx.opt('tfds_data_dir'))
    if found is None and ctx.opt('use_tfds') is True:
      raise FileNotFoundError('no prepared TFDS c4/en under '
                              f'{ctx.opt("tfds_data_dir") or "$TFDS_DATA_DIR"}')
    if found is not None:
      tfds_split = 'train' if split == 'train' else 'validation'
      docs = caclm_lib.StreamedDocs(
          lambda skip: sources_c4.tfds_texts(found, seed, skip, tfds_split),
          tok.encode, start_step * batch_size)
      return _bounded(caclm_lib.CaclmStream(
          docs, batch_size, seed, lengths, segments, start_step, ctx.name,
          stats=ctx.stats, to_model_ids=getattr(tok, 'to_model_ids', None)), split, ctx)
  if synthetic_text:
    texts = synthetic.synthetic_documents(ctx.opt('num_docs', 2000),
                                          ctx.opt('suite_seed', 0))
  else:
    texts = sources_c4.read_corpus(
        ctx.opt('c4_paths') or str(ctx.data_dir / 'c4' / 'c4_sample.jsonl'))
  # Every 20th document is held out for the evaluation split.
  texts = [t for i, t in enumerate(texts) if (i % 20 == 19) == (split != 'train')]
  docs = caclm_lib.InMemoryDocs(caclm_lib.tokenize_corpus(
      texts, tok, segments.window, ctx.stats), seed)
  return _bounded(caclm_lib.CaclmStream(
      docs, batch_size, seed, lengths, segments, start_step, ctx.name,
      stats=ctx.stats, to_model_ids=getattr(tok, 'to_model_ids', None)), split, ctx)


def _recall_stream(ctx, split, mode, lengths, batch_size, start_step):
  if split != 'train':
    raise ValueError(f'{ctx.name} is a training stream; evaluate on synthetic_fewshot '
                     '(eval.name) with query_in_decoder')
  if mode not in ('concat', 'hyper') or ctx.opt('query_in_decoder') is not True:
    raise ValueError(f'{ctx.name}: rows have the queries in the decoder: needs mode "concat" '
                     f'or "hyper" (got {mode!r}) and option query_in_decoder=True (as in '
                     'eval.options)')
  for key in ('num_labels', 'pairs', 'queries'):
    if not isinstance(ctx.opt(key, 1), int) or isinstance(ctx.opt(key), bool):
      raise ValueError(f'{ctx.name}: {key}={ctx.opt(key)!r}; expected an integer')
  # The suite's default: values from all its output words.
  num_labels = ctx.opt('num_labels', len(synthetic.LABELS))
  if not 2 <= num_labels <= len(synthetic.LABELS):
    raise ValueError(f'{ctx.name}: num_labels={num_labels}; expected 2..{len(synthetic.LABELS)}')
  pools = {'train': synthetic.TRAIN_KEYS, 'animals': synthetic.ANIMALS}
  keys = ctx.opt('keys', 'train')
  if not isinstance(keys, str) or keys not in pools:
    raise ValueError(f'{ctx.name}: keys={keys!r}; expected one of {sorted(pools)}')
  return recall_lib.RecallStream(
      ctx.tokenizer, lengths, batch_size, ctx.seed, start_step, pools[keys],
      synthetic.LABELS[:num_labels], pairs=ctx.opt('pairs', 4), queries=ctx.opt('queries', 8),
      separated=bool(ctx.opt('separated', False)), query_marks=ctx.opt('query_marks', 'xy'),
      mode=mode, stated_in=ctx.opt('stated_in', 'encoder'))


def _bounded(stream, split, ctx):
  if split == 'train':
    return stream
  n = ctx.opt('num_eval_batches', 10)
  return [stream.batch(i) for i in range(n)]
