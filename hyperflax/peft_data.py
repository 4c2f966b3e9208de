"""The P3 held-out tasks as single-task PEFT problems (HyperTuning §6, App. B.1).

Per held-out dataset, the paper tunes PEFT parameters on the dataset's
training data with one prompt (Appendix B.1's list), generates the Hyper Init
from "a randomly sampled set of 16 examples from the respective training
sets", and scores the dev set (rank classification accuracy).

What the shared data layout holds (`<data_dir>/MANIFEST.md`): the dev sets
(`p3/eval/`) and, for all eight datasets, MetaICL's k=16 files, which
CrossFit/MetaICL sample from each dataset's *training* split: five seeds x
(16 train + 16 dev) lines, i.e. at most 160 distinct training examples per
dataset instead of the full training sets (CB 250 ... HellaSwag 39,905).
Those are what we tune on; a dataset whose MetaICL folder is missing falls
back to 16 demonstrations drawn from its dev set (the rest are the queries),
and its task is marked `train_source='dev_demos'` in the results.
Other differences, stated: Winogrande is scored on winogrande_xl (the
debiased configuration B.1 names is not in the layout; the "Replace" template
is the same); ANLI is round 1 only (R2/R3 dev sets are missing); MetaICL's
HellaSwag lines keep WikiHow's [header]/[step] markup, removed here as in the
dev file.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path

import numpy as np

from hyperflax.data import io_utils
from hyperflax.data import sources_p3_heldout as heldout
from hyperflax.data.examples import EvalTaskData, Example
from hyperflax.data.fewshot import eval_split
from hyperflax.data.p3_templates import templates_for

log = logging.getLogger('hyperflax.peft_data')

# dataset -> (promptsource template name, the paper's dataset-prompt name).
B1_PROMPTS = {
    'anli': ('GPT-3 style', 'anli_GPT_3_style_r1'),
    'hellaswag': ('complete_first_then', 'hellaswag_complete_first_then'),
    'super_glue/cb': ('GPT-3 style', 'super_glue_cb_GPT_3_style'),
    'super_glue/copa': ('C1 or C2? premise, so/because\u2026',
                        'super_glue_copa_C1_or_C2_premise_so_because_'),
    'super_glue/rte': ('GPT-3 style', 'super_glue_rte_GPT_3_style'),
    'super_glue/wic': ('GPT-3-prompt', 'super_glue_wic_GPT_3_prompt'),
    'super_glue/wsc.fixed': ('GPT-3 Style', 'super_glue_wsc.fixed_GPT_3_Style'),
    'winogrande/winogrande_xl': ('Replace', 'winogrande_winogrande_debiased_Replace'),
}
METAICL_SEEDS = (100, 13, 21, 42, 87)


def _wsc_metaicl(path):
  """MetaICL's WSC lines: 'text: T [SEP] span1_textS1 [SEP] span2_text: S2' (the
  colon after span1_text is missing upstream), labels 'false'/'true'."""
  out = []
  for n, obj in io_utils.iter_jsonl(path, ('input', 'output')):
    o = f'{path}:{n}'
    m = re.match(r'text: (.*) \[SEP\] span1_text:? ?(.*) \[SEP\] span2_text: (.*)$',
                 obj['input'], re.S)
    if not m:
      raise ValueError(f'{o}: expected "text: ... [SEP] span1_text... [SEP] span2_text: ..."')
    out.append(({'text': m.group(1), 'span1_text': m.group(2), 'span2_text': m.group(3),
                 'label': heldout._label(obj['output'], {'false': 0, 'true': 1}, o)}, o))
  return out


def _hellaswag_metaicl(path):
  """MetaICL's HellaSwag lines (input = context, options = the four endings)."""
  out = []
  strip = lambda s: re.sub(r'\s*\[\w+\]\s*', ' ', s).strip()
  for n, obj in io_utils.iter_jsonl(path, ('input', 'output', 'options')):
    o = f'{path}:{n}'
    ctx, endings = strip(obj['input']), [strip(e) for e in obj['options']]
    if len(endings) != 4:
      raise ValueError(f'{o}: expected 4 options')
    # As the dev-file reader: ctx_b is the trailing lower-case fragment.
    m = re.match(r'(.*[.!?])\s+([a-z][^.!?]*)$', ctx, re.S)
    ctx_a, ctx_b = (m.group(1), m.group(2)) if m else (ctx, '')
    label = heldout._label(obj['output'], {e: str(i) for i, e in enumerate(obj['options'])}, o)
    out.append(({'activity_label': '', 'ctx': ctx, 'ctx_a': ctx_a, 'ctx_b': ctx_b,
                 'endings': endings, 'label': label}, o))
  return out


# dataset -> (MetaICL task folder, reader of its lines)
TRAIN_SOURCES = {
    'anli': ('anli', heldout.HELDOUT['anli'][1]),
    'hellaswag': ('hellaswag', _hellaswag_metaicl),
    'super_glue/cb': ('superglue-cb', heldout.HELDOUT['super_glue/cb'][1]),
    'super_glue/copa': ('superglue-copa', heldout._copa),
    'super_glue/rte': ('superglue-rte',
                       heldout._nli({'entailment': 0, 'not_entailment': 1})),
    'super_glue/wic': ('superglue-wic', heldout._wic),
    'super_glue/wsc.fixed': ('superglue-wsc', _wsc_metaicl),
    'winogrande/winogrande_xl': ('wino_grande', heldout._winogrande),
}


@dataclasses.dataclass
class PeftTask:
  """One held-out dataset-prompt.

  Attributes:
    data: demos = the Hyper Init's 16 training examples, queries = the dev set.
    train: the examples PEFT is tuned on.
    train_source: 'metaicl_train' or, without training data, 'dev_demos'.
  """
  data: EvalTaskData
  train: list
  train_source: str


def _render(tpl, record, name):
  fields, origin = record
  prompt, target, choices = tpl.render(fields, origin.rsplit('/', 1)[-1])
  if not target or target not in choices:
    return None
  return Example(prompt, target, choices, origin=f'{origin} [{tpl.name}]')


def _template(root, dataset):
  want = B1_PROMPTS[dataset][0]
  for tpl in templates_for(root, dataset):
    if tpl.name == want:
      return tpl
  raise ValueError(f'{Path(root) / "templates" / dataset}: no template {want!r} (App. B.1)')


def peft_tasks(data_dir, *, num_shots: int = 16, seed: int = 0, datasets=None,
               max_queries: int | None = None, max_train: int | None = None) -> list[PeftTask]:
  """The B.1 dataset-prompts with their training and dev examples."""
  data_dir = Path(data_dir)
  p3, metaicl = data_dir / 'p3', data_dir / 'metaicl' / 'data'
  out = []
  for dataset in datasets or sorted(B1_PROMPTS):
    tpl = _template(p3, dataset)
    name = f'{dataset}/{tpl.name}'
    dev = [e for e in (_render(tpl, r, name) for r in heldout.read_heldout(p3, dataset)) if e]
    folder, reader = TRAIN_SOURCES[dataset]
    files = [metaicl / folder / f'{folder}_16_{s}_{part}.jsonl'
             for s in METAICL_SEEDS for part in ('train', 'dev')]
    files = [f for f in files if f.exists()]
    if files:
      seen, train = {e.input for e in dev}, []
      for f in files:
        for e in (_render(tpl, r, name) for r in reader(f)):
          if e is not None and e.input not in seen:  # distinct, and never a dev query
            seen.add(e.input)
            train.append(e)
      rng = np.random.default_rng([seed, len(train)])
      demos = [train[i] for i in sorted(rng.choice(len(train), min(num_shots, len(train)),
                                                   replace=False))]
      source, queries = 'metaicl_train', dev
    else:
      log.warning('%s: no MetaICL training files under %s; tuning on %d demonstrations '
                  'drawn from the dev set instead (the rest are the queries)', dataset,
                  metaicl / folder, num_shots)
      demos, queries = eval_split(dev, num_shots, seed, name)
      train, source = list(demos), 'dev_demos'
    if max_train:
      train = train[:max_train]
    if max_queries:
      queries = queries[:max_queries]
    log.info('%s: tuning on %d %s examples, scoring %d dev queries', name, len(train), source,
             len(queries))
    out.append(PeftTask(EvalTaskData(name, demos, queries, metric='accuracy', group=dataset),
                        train, source))
  return out


def task_sets(config, modes=('zero_shot', 'hyper'), max_queries: int | None = None, max_train: int | None = None):
  """(tasks per mode, training examples per task, train sources) of the
  paper's protocol for `config` (its data_dir, vocabulary, lengths, seed)."""
  from hyperflax.data.converters import Converter
  from hyperflax.data.examples import Lengths
  from hyperflax.data.fewshot import DataStats
  from hyperflax.data.pipeline import EvalTask
  from hyperflax.data.vocab import load_vocabulary, resolve_data_dir
  d, e = config.data, config.eval
  data_dir = resolve_data_dir(d.get('data_dir') or None)
  tokenizer = load_vocabulary(d.get('vocab_path') or data_dir / 't5' / 'spiece.model')
  lengths = Lengths.make(tuple(e.get('lengths') or d.get('lengths') or ()) or None)
  datasets = (e.get('options', {}) or {}).get('datasets')
  found = peft_tasks(data_dir, num_shots=int(d.num_shots), seed=int(config.seed),
                     datasets=datasets, max_queries=max_queries, max_train=max_train)
  stats = DataStats('peft_p3_heldout')
  tasks = {m: [EvalTask(t.data, Converter(tokenizer, lengths, m, stats), i, int(d.num_shots))
               for i, t in enumerate(found)] for m in modes}
  return tasks, [t.train for t in found], [t.train_source for t in found]
