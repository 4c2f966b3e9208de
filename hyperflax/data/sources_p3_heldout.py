"""P3 held-out evaluation (T0 paper): ANLI, HellaSwag, CB, COPA, RTE, WiC, WSC,
Winogrande, rendered with every original-task promptsource template and scored
by rank classification over the rendered answer choices.

The shared copies come in several formats (see `<data_dir>/MANIFEST.md`); each
reader below turns one back into the HF `datasets` fields the templates use.
For every (dataset, template) task, a fixed set of demonstrations is drawn
once (seeded) from the evaluation set and the remaining examples are the
queries, so no demonstration is ever a query.
"""

from __future__ import annotations

import bz2
import logging
import os
import re
from pathlib import Path
from typing import Callable, Sequence

from hyperflax.data import io_utils
from hyperflax.data.examples import EvalTaskData, Example
from hyperflax.data.fewshot import DataStats, eval_split
from hyperflax.data.p3_templates import templates_for

log = logging.getLogger('hyperflax.data')

Fields = dict


def _split_fields(text: str, names: Sequence[str], origin: str) -> list[str]:
  """Splits MetaICL's `name: value [SEP] name: value` back into values."""
  parts = text.split(' [SEP] ')
  if len(parts) != len(names):
    raise ValueError(f'{origin}: expected {len(names)} [SEP]-separated fields '
                     f'{list(names)}, found {len(parts)}')
  out = []
  for part, name in zip(parts, names):
    prefix = f'{name}: '
    if not part.startswith(prefix):
      raise ValueError(f'{origin}: field should start with {prefix!r}')
    out.append(part[len(prefix):])
  return out


def _label(value, mapping: dict, origin: str) -> int:
  if value not in mapping:
    raise ValueError(f'{origin}: unknown label {value!r}; expected one of '
                     f'{list(mapping)}')
  return mapping[value]


def _nli(labels: dict) -> Callable[[Path], list[tuple[Fields, str]]]:
  def read(path):
    out = []
    for n, obj in io_utils.iter_jsonl(path, ('input', 'output')):
      o = f'{path}:{n}'
      premise, hyp = _split_fields(obj['input'], ('premise', 'hypothesis'), o)
      out.append(({'premise': premise, 'hypothesis': hyp,
                   'label': _label(obj['output'], labels, o)}, o))
    return out
  return read


def _copa(path):
  out = []
  for n, obj in io_utils.iter_jsonl(path, ('input', 'output', 'options')):
    o = f'{path}:{n}'
    m = re.match(r'(Cause|Effect): (.*)$', obj['input'], re.S)
    if not m or len(obj['options']) != 2:
      raise ValueError(f'{o}: expected "Cause: ..."/"Effect: ..." and 2 options')
    # The input names what the premise is; the question asks for the other.
    question = 'effect' if m.group(1) == 'Cause' else 'cause'
    strip = lambda s: re.sub(r'^(Cause|Effect): ', '', s)
    choices = [strip(c) for c in obj['options']]
    out.append(({'premise': m.group(2), 'choice1': choices[0],
                 'choice2': choices[1], 'question': question,
                 'label': _label(obj['output'], {c: i for i, c in
                                                 enumerate(obj['options'])}, o)},
                o))
  return out


def _rte(path):
  return [({'premise': obj['premise'], 'hypothesis': obj['hypothesis'],
            'label': _label(obj['label'], {'entailment': 0, 'not_entailment': 1},
                            f'{path}:{n}'), 'idx': obj.get('idx', n)},
           f'{path}:{n}')
          for n, obj in io_utils.iter_jsonl(path, ('premise', 'hypothesis', 'label'))]


def _wsc(path):
  out = []
  for n, obj in io_utils.iter_jsonl(path, ('text', 'target', 'label')):
    o = f'{path}:{n}'
    tgt = io_utils.field(obj, 'target', o, dict)
    fields = {'text': obj['text'], 'label': int(bool(obj['label'])),
              'idx': obj.get('idx', n)}
    for k in ('span1_text', 'span2_text', 'span1_index', 'span2_index'):
      fields[k] = io_utils.field(tgt, k, f'{o} target', None)
    out.append((fields, o))
  return out


def _wic(path):
  out = []
  for n, obj in io_utils.iter_jsonl(path, ('input', 'output')):
    o = f'{path}:{n}'
    word, s1, s2 = _split_fields(obj['input'],
                                 ('word', 'sentence 1', 'sentence 2'), o)
    out.append(({'word': word, 'sentence1': s1, 'sentence2': s2,
                 'label': _label(obj['output'], {'false': 0, 'true': 1}, o)}, o))
  return out


def _winogrande(path):
  out = []
  for n, obj in io_utils.iter_jsonl(path, ('input', 'output', 'options')):
    o = f'{path}:{n}'
    opts = obj['options']
    if len(opts) != 2:
      raise ValueError(f'{o}: expected 2 options')
    answer = _label(obj['output'], {opts[0]: '1', opts[1]: '2'}, o)
    out.append(({'sentence': obj['input'], 'option1': opts[0],
                 'option2': opts[1], 'answer': answer}, o))
  return out


def _hellaswag(path):
  """6 lines per item: 'activity_label: ctx', gold index, 4 endings.

  The file merged ctx_a and ctx_b; ctx_b is recovered as the trailing
  lower-case fragment after the last sentence end (HF's ctx_b starts
  lower-case), otherwise it is empty. Only the 'Appropriate continuation'
  templates read ctx_a/ctx_b separately.
  """
  io_utils.require_file(path)
  with bz2.open(path, 'rt', encoding='utf-8') as f:
    lines = f.read().split('\n')
  if lines and lines[-1] == '':
    lines.pop()
  if len(lines) % 6:
    raise ValueError(f'{path}: {len(lines)} lines is not a multiple of 6')
  out = []
  for i in range(0, len(lines), 6):
    o = f'{path}:{i + 1}'
    head, gold, endings = lines[i], lines[i + 1], lines[i + 2:i + 6]
    if ': ' not in head or gold not in ('0', '1', '2', '3'):
      raise ValueError(f'{o}: expected "activity: context" then a gold index '
                       f'0-3, got {head[:40]!r} / {gold!r}')
    activity, ctx = head.split(': ', 1)
    m = re.match(r'(.*[.!?])\s+([a-z][^.!?]*)$', ctx, re.S)
    ctx_a, ctx_b = (m.group(1), m.group(2)) if m else (ctx, '')
    out.append(({'activity_label': activity, 'ctx': ctx, 'ctx_a': ctx_a,
                 'ctx_b': ctx_b, 'endings': endings, 'label': gold}, o))
  return out


# dataset -> (file under <root>/eval, reader)
HELDOUT = {
    'anli': ('anli_r1.dev.metaicl.jsonl',
             _nli({'entailment': 0, 'neutral': 1, 'contradiction': 2})),
    'hellaswag': ('hellaswag.validation.klosax_6lines.txt.bz2', _hellaswag),
    'super_glue/cb': ('super_glue_cb.validation.metaicl.jsonl',
                      _nli({'entailment': 0, 'contradiction': 1, 'neutral': 2})),
    'super_glue/copa': ('super_glue_copa.validation.metaicl.jsonl', _copa),
    'super_glue/rte': ('super_glue_rte.validation.superglue_raw.jsonl', _rte),
    'super_glue/wic': ('super_glue_wic.validation.metaicl.jsonl', _wic),
    'super_glue/wsc.fixed': ('super_glue_wsc.validation.superglue_raw.jsonl', _wsc),
    'winogrande/winogrande_xl': ('winogrande_xl.validation.metaicl.jsonl',
                                 _winogrande),
}


def read_heldout(root: str | os.PathLike, dataset: str) -> list[tuple[Fields, str]]:
  """The (fields, origin) records of one held-out dataset."""
  if dataset not in HELDOUT:
    raise ValueError(f'unknown P3 held-out dataset {dataset!r}; known: '
                     f'{sorted(HELDOUT)}')
  filename, reader = HELDOUT[dataset]
  return reader(Path(root) / 'eval' / filename)


def heldout_eval_tasks(root: str | os.PathLike, *, num_shots: int = 16,
                       seed: int = 0, datasets: Sequence[str] | None = None,
                       original_task_only: bool = True,
                       max_queries: int | None = None,
                       stats: DataStats | None = None) -> list[EvalTaskData]:
  """One rank-classification task per (dataset, template)."""
  stats = stats or DataStats('p3_heldout')
  out = []
  for dataset in datasets or sorted(HELDOUT):
    records = read_heldout(root, dataset)
    demo_recs, query_recs = eval_split(records, num_shots, seed, dataset)
    if max_queries is not None:
      query_recs = query_recs[:max_queries]
    for tpl in templates_for(root, dataset):
      name = f'{dataset}/{tpl.name}'
      if not tpl.answer_choices or (original_task_only and not tpl.original_task):
        # Expected (T0 scores original-task templates only): one count per
        # dataset rather than a warning per template.
        stats.add(dataset, 'templates_skipped_not_original_task_or_no_choices')
        continue
      demos = [_render(tpl, r, name, stats) for r in demo_recs]
      queries = [_render(tpl, r, name, stats) for r in query_recs]
      demos = [d for d in demos if d is not None]
      queries = [q for q in queries if q is not None and q.label >= 0]
      out.append(EvalTaskData(name, demos, queries, metric='accuracy',
                              group=dataset))
  log.info('P3 held-out: %d (dataset, template) tasks', len(out))
  return out


def _render(tpl, record, name: str, stats: DataStats) -> Example | None:
  fields, origin = record
  prompt, target, choices = tpl.render(fields, origin.rsplit('/', 1)[-1])
  if not target or target not in choices:
    stats.add(name, 'examples_skipped_target_not_in_choices')
    return None
  return Example(prompt, target, choices, origin=f'{origin} [{tpl.name}]')
