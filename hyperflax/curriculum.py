r"""The recall curriculum: the stages with which the synthetic suite's binding appears at the
demo's size (issue 13; bench/RESULTS.md, "Session 7" and "Session 8").

Every stage uses the `words_compact` vocabulary, the demo's T5 v1.1 (2+2 layers, d_model 128),
batch 32, AdamW 1e-3 constant after 100 warm-up steps and no gradient clipping:

  recall_adjacent   `synthetic_recall`: 40 animal keys, each next to its value
  recall_separated  `synthetic_recall`: ~4,900 keys, `<y>` between key and value (the suite's
                    demonstrations put `<y>` there). These two stages are the pretrained T5.
  fewshot           T5-MTF-Few-shot: the suite with the query read in the decoder
                    (`query_in_decoder`, `query_marks='none'`) and up to 8 demonstrations moved
                    to the decoder as scored lookups (`decoder_recall`); key-last layouts
  t5_mtf            T5-MTF: the suite without demonstrations (the zero-shot baseline)
  <hypermodel>      a `demo.VARIANTS` entry against the frozen few-shot T5, its backbone
                    initialised from that T5's encoder (the papers adapt the frozen pretrained
                    T5; here that worked less well: bench/RESULTS.md, "Session 8")

`run_demo` is the embedded default (`python -m hyperflax.demo`); `bench/curriculum.py` runs the
longer chain with learning curves.

The transition to binding in `recall_adjacent` comes after a plateau whose length depends on
the initialisation (830-1,000 steps for the demo's seed; later or not within 3,000 for others),
so `bound` tells a stage that is still on it (training loss above ~0.3: the plateau is ~1.1
nats per answer) and callers go on 250 steps at a time.
"""

from __future__ import annotations

import json
import os

from hyperflax import demo

SUITE = {'train_tasks_per_family': 2000, 'pool_size': 32, 'num_labels': 12,
         'layouts': 'varied_key_last', 'many_keys': True}
QUERY = {'query_in_decoder': True, 'query_marks': 'none'}
EVAL = {'max_queries': 12, 'heldout_tasks_per_family': 5, 'num_labels': 12,
        'layouts': 'varied_key_last', 'many_keys': True}
COMMON = {'data.vocab_path': 'words_compact', 'model.overrides.vocab_size': 5248,
          'eval.also_generate': False, 'optim.max_grad_norm': 0.0, 'data.batch_size': 32,
          'data.lengths': (136, 12, 56)}
RECALL = {'data.name': 'synthetic_recall', 'data.lengths': (16, 4, 36),
          'eval.lengths': (136, 12, 56)}
BOUND_LOSS = 0.3
CONTINUE_STEPS = 250


def config_for(model: str, steps: int, seed: int, overrides: dict, downstream: str = ''):
  """A stage's config (the demo's `stage_config`, constant learning rate after 100 warm-up
  steps, so that a run stopped at any step and resumed equals one long run), validated by
  `config_check` before anything trains. `model`: 't5_mtf', 'fewshot' or a `demo.VARIANTS`
  name, which needs `downstream` (a frozen T5 directory)."""
  from hyperflax import config_check
  o = {'optim.schedule': 'constant', 'optim.warmup_steps': 100, **overrides}
  if model in ('t5_mtf', 'fewshot'):
    if downstream:
      o.setdefault('model.init_from', downstream)
    cfg = demo.stage_config({'t5_mtf': 't5_mtf', 'fewshot': 't5_mtf_fewshot'}[model],
                            steps=steps, seed=seed, **o)
  else:
    _, kind, extra = demo.VARIANTS[model]
    if not downstream:
      raise ValueError(f'model {model!r} needs a downstream (a frozen T5 directory)')
    cfg = demo.stage_config('hypermodel', kind, steps, seed,
                            **{'model.init_from': downstream, **extra, **o})
  return config_check.validate(cfg)


def stages(steps: dict, hypermodels,
           t5_mtf_from: str = '') -> list[tuple[str, str, int, dict, str]]:
  """(name, model, steps, overrides, the stage whose downstream it starts from) in order.

  The hypermodels adapt the frozen `fewshot` T5; `t5_mtf_from`: the stage T5-MTF starts from
  ('' = from scratch)."""
  recall = {'pairs': 4, 'queries': 8, 'num_labels': 12, **QUERY}
  few = {**COMMON, 'data.options': {**SUITE, **QUERY, 'decoder_recall': 8},
         'eval.options': {**EVAL, **QUERY}}
  out = [('recall_adjacent', 'fewshot', steps['recall_adjacent'],
          {**few, **RECALL, 'data.options': {**recall, 'keys': 'animals'}}, ''),
         ('recall_separated', 'fewshot', steps['recall_separated'],
          {**few, **RECALL, 'data.options': {**recall, 'keys': 'train', 'separated': True}},
          'recall_adjacent'),
         ('fewshot', 'fewshot', steps['fewshot'], few, 'recall_separated')]
  out += [(h, h, steps['hypermodel'], few, 'fewshot') for h in hypermodels]
  out.append(('t5_mtf', 't5_mtf', steps['t5_mtf'],
              {**COMMON, 'data.options': SUITE, 'eval.options': EVAL}, t5_mtf_from))
  return out


def bound(loss: float) -> bool:
  """Whether a recall stage's training loss says it binds (off the ~1.1-nat plateau)."""
  return loss <= BOUND_LOSS


# The demo's steps (the README's first command: about 8 minutes on 2 cores, 11 with the
# installation; bench/RESULTS.md, "Session 8").
DEMO_STEPS = {'recall_adjacent': 1000, 'recall_separated': 500, 'fewshot': 250, 't5_mtf': 250,
              'hypermodel': 150}
DEMO_MAX_RECALL_STEPS = 2000
# HyperT5-Prefix and -LoRA stay at the level of T5-MTF within the demo's budget (48.3 % on
# held-out families after 150 steps; bench/RESULTS.md, "Session 8"); they bind at learning rate
# 3e-4 after 2,000 steps ("Session 10"), beyond that budget. So the default trains HART only;
# `--kinds=prefix,lora,hart` adds them.
DEMO_KINDS = ('hart',)
# The shared baselines here adapt the few-shot T5, not T5-MTF as in the papers' tables.
LABELS = {'fewshot': 'T5-MTF-Few-shot', 't5_mtf': 'T5-MTF', **demo.KIND_LABELS,
          'shared_prefix': 'Shared prefix (one for every task)',
          'shared_lora': 'Shared LoRA (one for every task)'}
STAMP = 'curriculum.json'


def _stage_dir(workdir: str, name: str) -> str:
  return os.path.join(workdir, name)


def claim(workdir: str, name: str, seed: int, steps: dict, upstream: dict | None) -> None:
  """Records in a stage's directory the seed, the planned steps and the upstream state
  (`{'stage', 'steps'}`) it trains from, and refuses in one line a directory trained with
  others: resuming it would pair a checkpoint with an upstream T5 it was never trained against
  (a rerun with another --seed or --scale, or after --quick, in the same --workdir)."""
  from hyperflax import workdir as workdir_lib
  path = workdir_lib.as_path(_stage_dir(workdir, name)) / STAMP
  want = {'seed': seed, 'steps': steps, 'upstream': upstream}
  if path.exists():
    have = workdir_lib.read_json(path)
    have = have if isinstance(have, dict) else {}
    if have != want:
      diff = '; '.join(f'{k} {have.get(k)} (now {v})' for k, v in want.items()
                       if have.get(k) != v)
      raise ValueError(f'{path}: this stage was trained with other settings: {diff}; use '
                       'another --workdir (or the flags of that run)')
    return
  path.parent.mkdir(parents=True, exist_ok=True)
  workdir_lib.write_atomic(path, json.dumps(want))


def _train_scored(args) -> tuple[str, int, dict, dict]:
  """One stage after pretraining: train, then score on `splits`; returns (name, steps trained,
  {split: accuracy}, {split: (chance, majority)}). Top-level: it runs in a spawned pool."""
  import logging
  logging.getLogger().setLevel(logging.WARNING)
  workdir, name, model, n, overrides, upstream, seed, plan, splits, quick_eval = args
  stage_dir = _stage_dir(workdir, name)
  claim(workdir, name, seed, plan, upstream)
  if quick_eval:
    overrides = {**overrides, 'eval.options': {**overrides['eval.options'], **quick_eval}}
  downstream = os.path.join(_stage_dir(workdir, upstream['stage']), 'downstream')
  cfg = config_for(model, n, seed, overrides, downstream)
  out = demo._train(cfg, stage_dir)
  m = demo._evaluate(cfg, out, stage_dir, splits, LABELS[name],
                     metrics={'accuracy': '', 'chance': '', 'majority': ''})
  reference = {split: (m['chance'][split], m['majority'][split]) for split in splits}
  return name, int(out['state'].step), m['accuracy'], reference


def pretrain(workdir: str, seed: int, steps: dict, max_recall_steps: int) -> list[dict]:
  """The two recall stages, in order; a stage still on the plateau goes on `CONTINUE_STEPS`
  at a time up to `max_recall_steps` (a rerun asks for the steps the stage reached). Returns
  one {'stage', 'steps', 'loss', 'bound'} per stage."""
  log = []
  plan = {s[0]: s for s in stages(steps, [])}
  upstream = None
  for name in ('recall_adjacent', 'recall_separated'):
    _, model, n, overrides, after = plan[name]
    claim(workdir, name, seed, steps, upstream)
    downstream = os.path.join(_stage_dir(workdir, after), 'downstream') if after else ''
    while True:
      cfg = config_for(model, n, seed, overrides, downstream)
      cfg.eval.name = ''  # pretraining: nothing to score
      out = demo._train(cfg, _stage_dir(workdir, name))
      done = int(out['state'].step)  # a finished stage trains nothing: the steps it reached
      loss = float(out['metrics'].get('loss', float('nan')))
      if bound(loss) or done + CONTINUE_STEPS > max_recall_steps:
        break
      n = done + CONTINUE_STEPS
    log.append({'stage': name, 'steps': done, 'loss': loss, 'bound': bound(loss)})
    upstream = {'stage': name, 'steps': done}
  return log


def _refuse_classic_workdir(root) -> None:
  if (root / 'downstream').exists() or any(root.glob('mtf_*')):
    raise ValueError(f'{root}: holds a --classic demo run (downstream/, mtf_*/); give this '
                     'recipe another --workdir')


def run_demo(workdir: str, seed: int = 0, kinds=DEMO_KINDS,
             steps: dict | None = None, jobs: int = 1, quick: bool = False,
             max_recall_steps: int = DEMO_MAX_RECALL_STEPS,
             splits=('heldout_families', 'heldout_tasks')) -> dict:
  """The embedded default: recall pretraining, then T5-MTF and T5-MTF-Few-shot from the
  recall-pretrained T5 side by side, then the hypermodels against the frozen few-shot T5;
  prints and writes (`results.md` / `results.json`) the held-out rank-accuracy table with
  chance and the demonstrations' majority answer. Returns the table."""
  import logging
  import time
  from hyperflax import workdir as workdir_lib
  from hyperflax.metrics import format_table
  if not workdir:
    raise ValueError('--workdir is empty')
  kinds = demo.check_kinds(kinds)
  steps = {**DEMO_STEPS, **(steps or {})}
  quick_eval = None
  if quick:  # a smoke test: a few steps, one task of each family
    steps = {k: 4 for k in steps}
    max_recall_steps = 0
    quick_eval = {'max_queries': 4, 'heldout_tasks_per_family': 1}
  root = workdir_lib.as_path(workdir)
  _refuse_classic_workdir(root)
  root.mkdir(parents=True, exist_ok=True)  # may be a gs:// URL
  t0 = time.time()
  recall = pretrain(workdir, seed, steps, max_recall_steps)
  if not all(r['bound'] for r in recall):
    logging.warning('the recall stages did not bind within %d steps (training loss above %.1f):'
                    ' the few-shot models below cannot read demonstrations', max_recall_steps,
                    BOUND_LOSS)
  plan = {s[0]: s for s in stages(steps, kinds, t5_mtf_from='recall_separated')}
  trained = {r['stage']: r['steps'] for r in recall}

  def args(names):
    return [(workdir, name, *plan[name][1:4],
             {'stage': plan[name][4], 'steps': trained[plan[name][4]]}, seed, steps,
             tuple(splits), quick_eval) for name in names]

  done = []
  for group in (['fewshot', 't5_mtf'], list(kinds)):
    done += demo.map_stages(_train_scored, args(group), jobs)
    trained.update({name: n for name, n, _, _ in done})
  reference = done[0][3]  # the same held-out tasks and options for every model
  table = {'Chance': {s: reference[s][0] for s in splits},
           demo.MAJORITY_LABEL: {s: reference[s][1] for s in splits}}
  results = {name: acc for name, _, acc, _ in done}
  table.update({LABELS[name]: results[name] for name in ['t5_mtf', 'fewshot', *kinds]})
  pre = '; '.join(f'{r["stage"]} {r["steps"]} steps, loss {r["loss"]:.3f}'
                  + ('' if r['bound'] else ' (NOT BOUND: still on the plateau)') for r in recall)
  header = (f'The synthetic suite, seed {seed}: held-out rank-classification accuracy (%), '
            f'answer options shown. Recall pretraining: {pre}. Hypermodels: no '
            'hyperpretraining, backbone from the frozen few-shot T5\'s encoder. '
            f'{time.time() - t0:.0f}s on this machine.\n\n')
  text = format_table(table, list(splits))
  workdir_lib.write_atomic(root / 'results.md', header + text + '\n')
  workdir_lib.write_atomic(root / 'results.json', json.dumps(
      {'seed': seed, 'steps': trained, 'pretraining': recall, 'table': table}, indent=2))
  print('\n' + header + text)
  return table
