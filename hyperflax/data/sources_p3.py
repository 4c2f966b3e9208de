"""P3 / T0-train training tasks (Sanh et al., 2022), one task per
dataset-prompt.

Two layouts are read:
  * T0-train prompt/completion files (`<root>/t0_train/<dataset>_<template>.jsonl`,
    lines `{"prompt": str, "completion": str}`, the completion ending with the
    literal `<|endoftext|>`), as in the shared sample;
  * P3's own TFRecord layout (`<root>/data/<task>/train.tfrecord-*`, features
    `inputs_pretokenized` / `targets_pretokenized`), for users with a P3 copy;
    TensorFlow is imported only when such files are read.

Paper §5.2: dataset-prompts whose average input is longer than 320 T5 tokens
are excluded (an average of exactly 320 stays), the average taken over the
first `length_sample` examples. Empty files and filtered prompts are counted
and logged, and a report of the paper's Figure 6 list (present / filtered /
empty / missing, `p3_figure6`) is logged and kept in `stats.reports`.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Sequence

import numpy as np

from hyperflax.data import io_utils, p3_figure6
from hyperflax.data.examples import Example, FewShotTask
from hyperflax.data.fewshot import DataStats, dedup_examples

log = logging.getLogger('hyperflax.data')

EOT = '<|endoftext|>'
# Held-out evaluation datasets (T0 paper) and P3's scoring copies never train.
HELDOUT_PREFIXES = ('anli', 'hellaswag', 'super_glue', 'winogrande',
                    'story_cloze')


def read_t0_file(path: str | os.PathLike) -> list[Example]:
  """Parses a T0-train JSONL file; errors name the file and line."""
  out = []
  for lineno, obj in io_utils.iter_jsonl(path, required=('prompt', 'completion')):
    origin = f'{path}:{lineno}'
    prompt = io_utils.field(obj, 'prompt', origin, str).strip()
    completion = io_utils.field(obj, 'completion', origin, str)
    completion = completion.removesuffix(EOT).strip()
    out.append(Example(prompt, completion, origin=origin))
  return out


def read_p3_tfrecords(files: Sequence[str | os.PathLike]
                      ) -> tuple[list[Example], list[int]]:
  """Reads P3 TFRecord shards: examples and (when stored) input lengths."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  examples, lengths = [], []
  for path in files:
    for i, raw in enumerate(tf.data.TFRecordDataset([str(path)]).as_numpy_iterator()):
      origin = f'{path}:record {i}'
      feats = tf.train.Example.FromString(raw).features.feature
      for key in ('inputs_pretokenized', 'targets_pretokenized'):
        if key not in feats or not feats[key].bytes_list.value:
          raise ValueError(f'{origin}: missing feature {key!r}')
      inp = feats['inputs_pretokenized'].bytes_list.value[0].decode().strip()
      tgt = feats['targets_pretokenized'].bytes_list.value[0].decode().strip()
      choices = tuple(c.decode().strip() for c in
                      feats['answer_choices'].bytes_list.value) \
          if 'answer_choices' in feats else ()
      if tgt not in choices:
        choices = ()
      examples.append(Example(inp, tgt, choices, origin=origin))
      if 'inputs' in feats:
        lengths.append(len(feats['inputs'].int64_list.value))
  return examples, lengths


def _sources(root: Path, layout: str) -> tuple[str, list[tuple[str, list[Path]]]]:
  t0_dir, tf_dir = root / 't0_train', root / 'data'
  if layout == 'auto':
    layout = 'tfrecord' if tf_dir.is_dir() else 't0_jsonl'
  if layout == 't0_jsonl':
    io_utils.require_dir(t0_dir, 'T0-train directory')
    return layout, [(p.stem, [p]) for p in sorted(t0_dir.glob('*.jsonl'))]
  if layout == 'tfrecord':
    io_utils.require_dir(tf_dir, 'P3 TFRecord directory')
    out = []
    for d in sorted(p for p in tf_dir.iterdir() if p.is_dir()):
      shards = sorted(d.glob('train.tfrecord*'))
      if shards:
        out.append((d.name, shards))
    return layout, out
  raise ValueError(f"layout={layout!r}; expected 'auto', 't0_jsonl' or 'tfrecord'")


def t0_train_tasks(root: str | os.PathLike, tokenizer, *,
                   layout: str = 'auto', max_avg_input_tokens: float = 320,
                   length_sample: int | None = None,
                   max_examples_per_task: int | None = None,
                   include: str | None = None,
                   stats: DataStats | None = None) -> list[FewShotTask]:
  """T0-train dataset-prompts with average input <= `max_avg_input_tokens`.

  Args:
    root: the P3 directory (`<data_dir>/p3`).
    tokenizer: T5 tokenizer, used for the length filter.
    layout: 't0_jsonl', 'tfrecord' or 'auto' (TFRecords when `root/data`
      exists).
    max_avg_input_tokens: the length filter; None disables it.
    length_sample: if set, only the first `length_sample` examples of a
      prompt estimate its average (for huge copies); None uses all. On the
      shared T0-train sample the exact filter keeps the paper's Figure 6
      prompts plus 6 the figure does not name (5 commonsense_qa prompts and
      multi_news_expand_reverse_task_, average 314 tokens); a first-100
      estimate would wrongly drop the imdb prompts (average 307-312).
    max_examples_per_task: optional cap on a prompt's pool.
    include: optional regex; only task names matching it are kept.
    stats: counters.
  """
  root, stats = Path(root), stats or DataStats('p3_t0_train')
  layout, sources = _sources(root, layout)
  tasks, filtered, empty = [], [], []
  for name, files in sources:
    if name.startswith(HELDOUT_PREFIXES) or name.endswith('_score_eval'):
      stats.add(name, 'heldout_task_excluded')
      continue
    if include and not re.search(include, name):
      continue
    if layout == 't0_jsonl':
      examples, lengths = read_t0_file(files[0]), []
    else:
      examples, lengths = read_p3_tfrecords(files)
    if not examples:
      empty.append(name)
      stats.add(name, 'empty_file_skipped')
      log.warning('P3 task %s skipped: %s has no examples', name, files[0])
      continue
    if max_avg_input_tokens is not None:
      avg = _average_input_tokens(files, examples, lengths, tokenizer, length_sample)
      if avg > max_avg_input_tokens:  # "longer than 320" (§5.2)
        filtered.append(name)
        stats.add(name, f'task_filtered_avg_input_gt_{max_avg_input_tokens:g}')
        continue
    if max_examples_per_task is not None:
      examples = examples[:max_examples_per_task]
    tasks.append(FewShotTask(name, dedup_examples(examples, name, stats),
                             group=name))
  log.info('P3 (%s) under %s: %d dataset-prompts kept, %d filtered for average '
           'input > %s tokens: %s', layout, root, len(tasks), len(filtered),
           max_avg_input_tokens, ', '.join(filtered))
  if not tasks:
    raise FileNotFoundError(f'no usable P3 training task under {root}')
  if not include:  # a report of a deliberate subset would list everything as missing
    stats.reports['p3_figure6'] = report = p3_figure6.figure6_report(
        [t.name for t in tasks], filtered, empty, max_avg_input_tokens or float('inf'))
    log_figure6_report(report)
  return tasks


def log_figure6_report(report: dict) -> None:
  """One summary line, then the names of every prompt that does not train."""
  log.info('P3 vs. HyperTuning Figure 6 (%d prompts): %d present, %d filtered, '
           '%d empty files, %d missing; %d kept prompts are not in the figure',
           report['figure6_prompts'], report['num_present'], report['num_filtered'],
           report['num_empty'], report['num_missing'], report['num_kept_not_in_figure6'])
  for status in ('filtered', 'empty', 'missing', 'kept_not_in_figure6'):
    if report[status]:
      log.warning('P3 Figure 6 report, %s: %s', status, ', '.join(report[status]))


# (file, size, mtime, tokenizer, sample) -> average input tokens: the length
# filter tokenises all of T0-train, so a second build in one process (e.g. the
# data report after training) reuses the first one's averages.
_AVERAGES: dict[tuple, float] = {}


def _average_input_tokens(files, examples, lengths, tokenizer, length_sample) -> float:
  key = tuple((str(f), os.stat(f).st_size, os.stat(f).st_mtime_ns) for f in files) + (
      getattr(tokenizer, 'path', id(tokenizer)), length_sample)
  if key not in _AVERAGES:
    if not lengths:
      sample = [e.input for e in examples[:length_sample or len(examples)]]
      lengths = [len(x) for x in tokenizer.encode_batch(sample)]
    _AVERAGES[key] = float(np.mean(lengths[:length_sample or len(lengths)]))
  return _AVERAGES[key]
