"""The papers' tables as recipes: which runs each row needs, and from which configs.

A recipe is a table of HyperTuning (Phang et al.) or HART: its columns, its
rows in the paper's order (with the paper's section headings and published
numbers), and the `Stage`s (one `hyperflax.train` run each) the rows read.
Stage names say what a run is (`hypert5_prefix_p3_large`), so recipes that
need the same run share it when they are given the same `--workdir`
(HART's HyperTuning-PT row *is* HyperTuning's HyperT5-Prefix run).
`hyperflax.pipeline` runs them; this module is plain data.
"""

from __future__ import annotations

import dataclasses

from hyperflax import published

P3_COLUMNS = ('ANLI', 'HSwag', 'CB', 'COPA', 'RTE', 'WiC', 'WSC', 'WGD')
# p3_heldout task groups -> the paper's column names.
P3_GROUPS = {'anli': 'ANLI', 'hellaswag': 'HSwag', 'super_glue/cb': 'CB',
             'super_glue/copa': 'COPA', 'super_glue/rte': 'RTE', 'super_glue/wic': 'WiC',
             'super_glue/wsc.fixed': 'WSC', 'winogrande/winogrande_xl': 'WGD'}
METAICL = {'hr_to_lr': 'HR→LR', 'non_nli_to_nli': 'Non-NLI→NLI',
           'non_class_to_class': 'Non-Class→Class'}

# Training / evaluation data of each dataset tag.
DATA = {
    'p3': dict(data='p3_t0_train', eval='p3_heldout', split='validation'),
    **{s: dict(data=f'metaicl_{s}', eval=f'metaicl_{s}', split='test') for s in METAICL},
    'sni_def': dict(data='sni_def', eval='sni_def', split='test'),
    'sni_def_2pos': dict(data='sni_def_2pos', eval='sni_def_2pos', split='test'),
}


@dataclasses.dataclass(frozen=True)
class Stage:
  """One training run (then its evaluation) under the recipe workdir.

  Attributes:
    name: its directory; the same name in two recipes is the same run.
    config: a `configs/` file name (without .py).
    overrides: {'section.field': value} applied to that config.
    after: a stage whose workdir becomes this one's `hyper.init_from`
      (CACLM hyperpretraining before multi-task fine-tuning).
    backbone: 'flan' for HART-FLAN-T5: `hyper.backbone_from` is the
      pipeline's `--flan_t5` directory.
    data: the dataset tag of `DATA` it trains and is evaluated on ('' = CACLM).
  """
  name: str
  config: str
  overrides: tuple = ()
  after: str = ''
  backbone: str = ''
  data: str = ''

  @property
  def evaluates(self) -> bool:
    return bool(self.data)


@dataclasses.dataclass(frozen=True)
class Row:
  """A table row: its label, heading, and the stages each of its cells reads.

  `cells` maps a column to the stages it averages (HART's random order is the
  mean of three orders); the column 'P3' (and, in P3 tables, every P3 column)
  comes from a stage's P3 held-out results.
  """
  label: str
  section: str
  cells: tuple  # ((column, (stage names...)), ...)


@dataclasses.dataclass(frozen=True)
class Recipe:
  name: str
  paper: str
  title: str
  columns: tuple
  rows: tuple
  stages: tuple
  paper_numbers: dict  # row label -> published values in column order
  notes: tuple = ()
  peft: dict | None = None  # hyper-init PEFT (Table 6): {'hyper': [...], 'shared': [...]}
  tiny_overrides: tuple = ()  # extra overrides at --scale=tiny
  tiny_tag: str = ''          # ... and the suffix that keeps those runs apart
  flan_stand_in: str = ''     # HART-FLAN-T5 at tiny scale: this stage's trained T5

  def stage(self, name: str) -> Stage:
    return next(s for s in self.stages if s.name == name)


# ---- stage builders ----------------------------------------------------------------

def _data(tag: str) -> tuple:
  d = DATA[tag]
  return (('data.name', d['data']), ('eval.name', d['eval']), ('eval.split', d['split']))


def caclm(kind: str, size: str) -> Stage:
  return Stage(f'caclm_{kind}_{size}', f'caclm_{kind}_{size}')


def baseline(method: str, tag: str, size: str, extra: tuple = ()) -> Stage:
  """Full fine-tuning (t5_mtf, t5_mtf_fewshot) or shared PEFT (t5_mtf_prefix,
  t5_mtf_lora; with `_fewshot` appended their input is demonstrations + query)."""
  fewshot_peft = method.endswith('_fewshot') and method != 't5_mtf_fewshot'
  config = method.removesuffix('_fewshot') if fewshot_peft else method
  overrides = _data(tag) + (('model.preset', size),) + extra
  if fewshot_peft:
    overrides += (('data.mode', 'concat'),)
  return Stage(f'{method}_{tag}_{size}', f'{config}_large', overrides, data=tag)


def hyper(name: str, config: str, tag: str, size: str, after: str = '', extra: tuple = (),
          backbone: str = '') -> Stage:
  overrides = _data(tag) + extra
  if not after:
    overrides += (('hyper.skip_hyperpretraining', True),)
  return Stage(f'{name}_{tag}_{size}', config, overrides, after, backbone, tag)


def hypert5(kind: str, tag: str, size: str, plus: bool = False) -> list[Stage]:
  """CACLM then MTF of HyperT5-<kind> (HyperT5+: the downstream trained too)."""
  pre = caclm(kind, size)
  config = f'hypert5_plus_{kind}_large' if plus else f'hypert5_{kind}_{size}'
  name = f'hypert5_plus_{kind}' if plus else f'hypert5_{kind}'
  return [pre, hyper(name, config, tag, size, after=pre.name)]


# HART's "HyperTuning": HyperTuning-PT without hyperpretraining, with
# fusion-in-decoder and HART's 8-layer hypernetwork decoder (HART §4.1, App. 8.1).
HYPERTUNING = (('hyper.fusion_in_decoder', True), ('hyper.decoder_layers', 8))
NO_CONSISTENCY = (('hyper.consistency_alpha', 0.0),)


def _p3_row(label, section, stage):
  return Row(label, section, (('P3', (stage,)),))


def _avg_row(label, section, stage, column='AVG'):
  return Row(label, section, ((column, (stage,)),))


def _unique(stages):
  out = {}
  for s in stages:
    if s.name in out and out[s.name] != s:
      raise AssertionError(f'two different stages named {s.name}')
    out[s.name] = s
  return tuple(out.values())


# ---- HyperTuning -------------------------------------------------------------------

FULL, PEFT, HYPER, PLUS, OTHER = ('Full Fine-Tuning', 'Parameter-Efficient Fine-Tuning (PEFT)',
                                  'HyperTuning', 'HyperTuning + Fine-Tuning', 'Other results')


def hypertuning_p3(size: str) -> Recipe:
  stages = [baseline('t5_mtf', 'p3', size), baseline('t5_mtf_fewshot', 'p3', size),
            baseline('t5_mtf_prefix', 'p3', size), baseline('t5_mtf_lora', 'p3', size),
            *hypert5('prefix', 'p3', size), *hypert5('lora', 'p3', size)]
  labels = [('T5-MTF', FULL), ('T5-MTF-Few-shot', FULL), ('T5-MTF (Prefix)', PEFT),
            ('T5-MTF (LoRA)', PEFT), ('HyperT5-Prefix', HYPER), ('HyperT5-LoRA', HYPER)]
  finals = [s.name for s in stages if not s.name.startswith('caclm')]
  if size == 'large':
    stages += hypert5('prefix', 'p3', size, plus=True) + hypert5('lora', 'p3', size, plus=True)
    labels += [('HyperT5-Prefix+', PLUS), ('HyperT5-LoRA+', PLUS)]
    finals += [f'hypert5_plus_prefix_p3_{size}', f'hypert5_plus_lora_p3_{size}']
  rows = tuple(_p3_row(l, s, f) for (l, s), f in zip(labels, finals))
  numbers = published.HT_TABLE1 if size == 'large' else published.HT_TABLE2
  return Recipe(f'hypertuning_p3{"" if size == "large" else "_xl"}',
                f'HyperTuning Table {1 if size == "large" else 2}',
                f'P3 held-out tasks (dev), T5-{size.upper() if size == "xl" else "Large"}; '
                'accuracy (rank classification)', P3_COLUMNS + ('AVG',), rows,
                _unique(stages), numbers,
                notes=('T0 (Other results) is Sanh et al.\'s model, not retrained here.',)
                if size == 'xl' else ())


def hypertuning_metaicl() -> Recipe:
  size = 'large'
  stages, rows = [], []
  methods = [('T5-MTF', FULL, 't5_mtf'), ('T5-MTF-Few-shot', FULL, 't5_mtf_fewshot'),
             ('T5-MTF (Prefix)', PEFT, 't5_mtf_prefix'), ('T5-MTF (LoRA)', PEFT, 't5_mtf_lora'),
             ('HyperT5-Prefix', HYPER, 'prefix'), ('HyperT5-LoRA', HYPER, 'lora')]
  for label, section, method in methods:
    cells = []
    for split, column in METAICL.items():
      if method in ('prefix', 'lora'):
        pair = hypert5(method, split, size)
        stages += pair
        final = pair[1].name
      else:
        stages.append(baseline(method, split, size))
        final = stages[-1].name
      cells.append((column, (final,)))
    rows.append(Row(label, section, tuple(cells)))
  return Recipe('hypertuning_metaicl', 'HyperTuning Table 3',
                'MetaICL (test), T5-Large; macro-F1 (classification) / ROUGE-L on generations, '
                'averaged over each split\'s test tasks', tuple(METAICL.values()), tuple(rows),
                _unique(stages), published.HT_TABLE3)


def hypertuning_sni(size: str) -> Recipe:
  stages = [baseline('t5_mtf_fewshot', 'sni_def', size),
            baseline('t5_mtf_fewshot', 'sni_def_2pos', size)]
  rows = [_avg_row('T5-MTF (Def)', FULL, stages[0].name),
          _avg_row('T5-MTF (Def+2Pos)', FULL, stages[1].name)]
  for kind, label in (('prefix', 'HyperT5-Prefix'), ('lora', 'HyperT5-LoRA')):
    for tag, setting in (('sni_def', 'Def'), ('sni_def_2pos', 'Def+2Pos')):
      pair = hypert5(kind, tag, size)
      stages += pair
      rows.append(_avg_row(f'{label} ({setting})', HYPER, pair[1].name))
  return Recipe(f'hypertuning_sni{"" if size == "large" else "_xl"}',
                f'HyperTuning Table {4 if size == "large" else 5}',
                f'Super-NaturalInstructions (test), T5-{"Large" if size == "large" else "XL"}; '
                'ROUGE-L', ('AVG',), tuple(rows), _unique(stages),
                published.HT_TABLE4 if size == 'large' else published.HT_TABLE5,
                notes=('T5-MTF (Def) / (Def+2Pos): the full T5 fine-tuned on definition '
                       '(+ two positive examples) and query concatenated.',
                       'Tk-Instruct (Other results) is Wang et al.\'s model, not retrained here.'))


def hypertuning_peft_init() -> Recipe:
  size = 'large'
  stages = [baseline('t5_mtf_prefix', 'p3', size), baseline('t5_mtf_lora', 'p3', size),
            *hypert5('prefix', 'p3', size), *hypert5('lora', 'p3', size),
            *hypert5('prefix_mlp', 'p3', size)]
  rows = tuple(Row(f'{m} ({i})', '', ()) for m in ('Prefix-Flat', 'Prefix-MLP', 'LoRA')
               for i in ('Rand Init', 'Shared Init', 'Hyper Init'))
  return Recipe('hypertuning_peft_init', 'HyperTuning Table 6 (and Table 7)',
                'Single-task PEFT on P3 held-out tasks from random / shared / hypermodel '
                'initialisations, T5-Large; accuracy, best of the learning rates, mean over '
                'seeds', P3_COLUMNS + ('AVG',), rows, _unique(stages), published.HT_TABLE6,
                peft=dict(hyper=[f'hypert5_prefix_p3_{size}', f'hypert5_prefix_mlp_p3_{size}',
                                 f'hypert5_lora_p3_{size}'],
                          shared=[f't5_mtf_prefix_p3_{size}', f't5_mtf_lora_p3_{size}']),
                notes=('The prefix rows of the paper\'s Table 6 are Prefix-MLP (its Appendix: "The '
                       'results for Prefix-MLP are presented in the body of the paper"); '
                       'Table 7 reports Prefix-Flat and Prefix-MLP separately, as here.',))


# ---- HART --------------------------------------------------------------------------

def _hart_rows(tag: str, size: str, flan: bool) -> tuple[list[Stage], list[tuple]]:
  """(stages, [(label, section, stage)]) of HART Tables 2-5 on one dataset."""
  sections = ('Full Fine-tuning', 'Parameter-Efficient Fine-tuning (PEFT)')
  pt = hypert5('prefix', tag, size)
  stages = [baseline('t5_mtf', tag, size), baseline('t5_mtf_fewshot', tag, size),
            baseline('t5_mtf_prefix_fewshot', tag, size),
            baseline('t5_mtf_lora_fewshot', tag, size), *pt,
            hyper('hypertuning', f'hypert5_prefix_{size}', tag, size, extra=HYPERTUNING),
            hyper('hart', f'hart_{size}', tag, size)]
  labels = [('FT-Zero-Shot', sections[0]), ('FT-Few-Shot', sections[0]),
            ('Prefix-Tuning', sections[1]), ('LoRA', sections[1]),
            ('HyperTuning-PT', sections[1]), ('HyperTuning', sections[1]), ('HART', sections[1])]
  finals = [s.name for s in stages if not s.name.startswith('caclm')]
  if flan:
    stages.append(hyper('hart_flan', f'hart_{size}', tag, size, backbone='flan'))
    labels.append(('HART-FLAN-T5-Large', sections[1]))
    finals.append(stages[-1].name)
  return stages, [(l, s, f) for (l, s), f in zip(labels, finals)]


def hart_sni(size: str) -> Recipe:
  stages, rows = _hart_rows('sni_def_2pos', size, flan=size == 'large')
  return Recipe(f'hart_sni{"" if size == "large" else "_xl"}',
                f'HART Table {2 if size == "large" else 3}',
                f'S-NI held-out test set (Def+2Pos), T5-{"Large" if size == "large" else "XL"} '
                'main model; ROUGE-L', ('AVG',),
                tuple(_avg_row(l, s, f) for l, s, f in rows), _unique(stages),
                published.HART_TABLE2 if size == 'large' else published.HART_TABLE3,
                flan_stand_in=f't5_mtf_sni_def_2pos_{size}',
                notes=('Prefix-Tuning / LoRA: one shared PEFT trained on few-shot '
                       '(concatenated) inputs, as HART applies them to FT-Few-Shot.',
                       'Tk-Instruct and HINT are other works\' models, not retrained here.',
                       'HART-FLAN-T5: the hypernetwork backbone is copied from --flan_t5 (a '
                       'checkpoint of the frozen model\'s width); at --scale=tiny, from the '
                       'FT-Zero-Shot run\'s trained T5.'))


def hart_p3(size: str) -> Recipe:
  stages, rows = _hart_rows('p3', size, flan=False)
  return Recipe(f'hart_p3{"" if size == "large" else "_xl"}',
                f'HART Table {4 if size == "large" else 5}',
                f'P3 held-out validation set, T5-{"Large" if size == "large" else "XL"} main '
                'model; accuracy', P3_COLUMNS + ('AVG',),
                tuple(_p3_row(l, s, f) for l, s, f in rows), _unique(stages),
                published.HART_TABLE4 if size == 'large' else published.HART_TABLE5,
                notes=('T0-3B and HINT are other works\' models, not retrained here.',))


def hart_ablation() -> Recipe:
  size = 'large'
  stages, cells = [], {}
  for tag, column in (('sni_def_2pos', 'S-NI'), ('p3', 'P3')):
    pt = hypert5('prefix', tag, size)
    runs = [pt[1],
            hyper('hypert5_prefix_nopt', f'hypert5_prefix_{size}', tag, size),
            hyper('hypertuning', f'hypert5_prefix_{size}', tag, size, extra=HYPERTUNING),
            hyper('hart_noconsistency', f'hart_{size}', tag, size, extra=NO_CONSISTENCY),
            hyper('hart', f'hart_{size}', tag, size)]
    stages += [pt[0]] + runs
    for i, run in enumerate(runs):
      cells.setdefault(i, []).append((column, (run.name,)))
  labels = ['HyperTuning-PT', '- Continual Pre-training', '+ Fusion-in-Decoder (HyperTuning)',
            '+ Autoregressive Parameter Generation',
            '+ Local Consistency Regularization (HART)']
  rows = tuple(Row(l, '', tuple(cells[i])) for i, l in enumerate(labels))
  return Recipe('hart_ablation', 'HART Table 6',
                'Ablations, T5-Large: S-NI avg. ROUGE-L and P3 avg. accuracy', ('S-NI', 'P3'),
                rows, _unique(stages), published.HART_TABLE6)


def hart_order() -> Recipe:
  size, tag = 'large', 'sni_def_2pos'
  orders = [('bottom_up', 0), ('top_down', 0)] + [('random', s) for s in (0, 1, 2)]
  stages = [hyper('hypertuning', f'hypert5_prefix_{size}', tag, size, extra=HYPERTUNING)]
  for order, seed in orders:
    name = 'hart_noconsistency' if order == 'bottom_up' else \
        f'hart_{order}' + (f'{seed}' if order == 'random' else '')
    stages.append(hyper(name, f'hart_{size}', tag, size, extra=NO_CONSISTENCY + (
        (('hyper.generation_order', order), ('hyper.order_seed', seed))
        if order != 'bottom_up' else ())))
  names = [s.name for s in stages]
  rows = (Row('No / single layer-shared state (HyperTuning)', '', (('AVG', (names[0],)),)),
          Row('Yes / random order*', '', (('AVG', tuple(names[3:])),)),
          Row('Yes / top-down', '', (('AVG', (names[2],)),)),
          Row('Yes / bottom-up (HART)', '', (('AVG', (names[1],)),)))
  return Recipe('hart_order', 'HART Table 7',
                'Layerwise dependency of generated states, T5-Large, S-NI test; ROUGE-L, no '
                'consistency loss', ('AVG',), rows, _unique(stages), {},
                notes=('*mean over three random orders (order_seed 0, 1, 2).',
                       'The paper\'s Table 7 numbers are not in its text; none are listed.'),
                tiny_overrides=(('model.overrides.num_layers', 3),
                                ('model.overrides.num_decoder_layers', 3)),
                tiny_tag='3layers')


def all_recipes() -> dict[str, Recipe]:
  recipes = [hypertuning_p3('large'), hypertuning_p3('xl'), hypertuning_metaicl(),
             hypertuning_sni('large'), hypertuning_sni('xl'), hypertuning_peft_init(),
             hart_sni('large'), hart_sni('xl'), hart_p3('large'), hart_p3('xl'),
             hart_ablation(), hart_order()]
  return {r.name: r for r in recipes}
