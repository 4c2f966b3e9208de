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
  <hypermodel>      a `demo.VARIANTS` entry against a frozen downstream, its backbone
                    initialised from that downstream's encoder, as the papers do

The transition to binding in `recall_adjacent` comes after a plateau whose length depends on
the initialisation (830-1,000 steps for the demo's seed; later or not within 3,000 for others),
so `bound` tells a stage that is still on it (training loss above ~0.3: the plateau is ~1.1
nats per answer) and callers go on 250 steps at a time.
"""

from __future__ import annotations

import json

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
  if model == 't5_mtf':
    if downstream:
      o.setdefault('model.init_from', downstream)
    cfg = demo.stage_config('t5_mtf', steps=steps, seed=seed, **o)
  elif model == 'fewshot':
    if downstream:
      o.setdefault('model.init_from', downstream)
    cfg = demo.stage_config('t5_mtf_fewshot', steps=steps, seed=seed, **o)
  else:
    _, kind, extra = demo.VARIANTS[model]
    if not downstream:
      raise ValueError(f'model {model!r} needs a downstream (a frozen T5 directory)')
    cfg = demo.stage_config('hypermodel', kind, steps, seed,
                            **{'model.init_from': downstream, **extra, **o})
  return config_check.validate(cfg)


def stages(steps: dict, hypermodels, hyper_downstream: str = 'fewshot',
           t5_mtf_from: str = '') -> list[tuple[str, str, int, dict, str]]:
  """(name, model, steps, overrides, the stage whose downstream it starts from) in order.

  `hyper_downstream`: the stage whose T5 the hypermodels adapt, frozen; `t5_mtf_from`: the
  stage T5-MTF starts from ('' = from scratch)."""
  recall = {'pairs': 4, 'queries': 8, 'num_labels': 12, **QUERY}
  few = {**COMMON, 'data.options': {**SUITE, **QUERY, 'decoder_recall': 8},
         'eval.options': {**EVAL, **QUERY}}
  out = [('recall_adjacent', 'fewshot', steps['recall_adjacent'],
          {**few, **RECALL, 'data.options': {**recall, 'keys': 'animals'}}, ''),
         ('recall_separated', 'fewshot', steps['recall_separated'],
          {**few, **RECALL, 'data.options': {**recall, 'keys': 'train', 'separated': True}},
          'recall_adjacent'),
         ('fewshot', 'fewshot', steps['fewshot'], few, 'recall_separated')]
  out += [(h, h, steps['hypermodel'], few, hyper_downstream) for h in hypermodels]
  out.append(('t5_mtf', 't5_mtf', steps['t5_mtf'],
              {**COMMON, 'data.options': SUITE, 'eval.options': EVAL}, t5_mtf_from))
  return out


def bound(loss: float) -> bool:
  """Whether a recall stage's training loss says it binds (off the ~1.1-nat plateau)."""
  return loss <= BOUND_LOSS


# The demo's steps (the README's first command: <= 15 minutes on 2 cores with installation).
DEMO_STEPS = {'recall_adjacent': 1000, 'recall_separated': 500, 'fewshot': 250, 't5_mtf': 250,
              'hypermodel': 150}
DEMO_MAX_RECALL_STEPS = 2000
# HyperT5-Prefix and -LoRA stay near T5-MTF at this size within the demo's budget (about 48 %
# on held-out families after 150 steps, 48-57 % after 1,000; bench/RESULTS.md), so the default
# trains HART only; `--kinds=prefix,lora,hart` adds them.
DEMO_KINDS = ('hart',)
LABELS = {'fewshot': 'T5-MTF-Few-shot', 't5_mtf': 'T5-MTF', **demo.KIND_LABELS}


def _train(cfg, stage_dir: str) -> dict:
  from hyperflax.train import train
  return train(cfg, stage_dir)


def _train_scored(args) -> tuple[str, dict, dict]:
  """One stage after pretraining: train, then score on `splits`; returns (name, {split:
  accuracy}, {split: (chance, majority)}). A top-level function: it runs in a spawned pool."""
  import logging
  from hyperflax import evaluate
  logging.getLogger().setLevel(logging.WARNING)
  workdir, name, model, n, overrides, downstream, seed, splits, quick_eval = args
  stage_dir = f'{workdir}/{name}'
  if quick_eval:
    overrides = {**overrides, 'eval.options': {**overrides['eval.options'], **quick_eval}}
  cfg = config_for(model, n, seed, overrides, downstream)
  out = _train(cfg, stage_dir)
  accuracy, reference = {}, {}
  for split in splits:
    s = evaluate.evaluate(cfg, out['experiment'], out['trainable'], out['frozen'],
                          f'{stage_dir}/eval_{split}', split, LABELS.get(name, name))
    m = s['average_metrics']
    accuracy[split] = m['accuracy']
    reference[split] = (m.get('chance'), m.get('majority'))
  return name, accuracy, reference


def pretrain(workdir: str, seed: int, steps: dict, max_recall_steps: int) -> list[dict]:
  """The two recall stages, in order; an unbound adjacent stage goes on `CONTINUE_STEPS` at a
  time up to `max_recall_steps`. Returns one {'stage', 'steps', 'loss'} per stage."""
  log = []
  plan = {s[0]: s for s in stages(steps, [])}
  for name in ('recall_adjacent', 'recall_separated'):
    _, model, n, overrides, after = plan[name]
    downstream = f'{workdir}/{after}/downstream' if after else ''
    while True:
      cfg = config_for(model, n, seed, overrides, downstream)
      cfg.eval.name = ''  # pretraining: nothing to score
      out = _train(cfg, f'{workdir}/{name}')
      # A rerun of a finished stage trains nothing and reports its last logged step.
      done = int(out['state'].step) if 'state' in out else n
      loss = float(out['metrics'].get('loss', float('nan')))
      if bound(loss) or done + CONTINUE_STEPS > max_recall_steps:
        break
      n = done + CONTINUE_STEPS
    log.append({'stage': name, 'steps': done, 'loss': loss, 'bound': bound(loss)})
  return log


def run_demo(workdir: str, seed: int = 0, kinds=DEMO_KINDS,
             steps: dict | None = None, jobs: int = 1, quick: bool = False,
             max_recall_steps: int = DEMO_MAX_RECALL_STEPS,
             splits=('heldout_families', 'heldout_tasks')) -> dict:
  """The embedded default: recall pretraining, then T5-MTF and T5-MTF-Few-shot from the
  recall-pretrained T5 side by side, then the hypermodels against the frozen few-shot T5;
  prints and writes (`results.md` / `results.json`) the held-out rank-accuracy table with
  chance and the demonstrations' majority answer. Returns the results."""
  import time
  from hyperflax import workdir as workdir_lib
  from hyperflax.metrics import format_table
  steps = {**DEMO_STEPS, **(steps or {})}
  quick_eval = None
  if quick:  # a smoke test: a few steps, one task of each family
    steps = {k: 4 for k in steps}
    max_recall_steps = 0
    quick_eval = {'max_queries': 4, 'heldout_tasks_per_family': 1}
  unknown = [k for k in kinds if k not in demo.VARIANTS]
  if unknown:
    raise ValueError(f'unknown hypermodel variant(s) {unknown}; known: {sorted(demo.VARIANTS)}')
  workdir_lib.as_path(workdir).mkdir(parents=True, exist_ok=True)  # may be a gs:// URL
  t0 = time.time()
  recall = pretrain(workdir, seed, steps, max_recall_steps)
  plan = {s[0]: s for s in stages(steps, kinds, t5_mtf_from='recall_separated')}

  def jobs_for(names):
    return [(workdir, name, *plan[name][1:4],
             f'{workdir}/{plan[name][4]}/downstream' if plan[name][4] else '',
             seed, tuple(splits), quick_eval) for name in names]

  done = []
  for group in (['fewshot', 't5_mtf'], list(kinds)):
    args = jobs_for(group)
    if jobs > 1 and len(args) > 1:
      import multiprocessing
      with multiprocessing.get_context('spawn').Pool(min(jobs, len(args))) as pool:
        done += pool.map(_train_scored, args, chunksize=1)
    else:
      done += [_train_scored(a) for a in args]
  reference = done[0][2]  # the same held-out tasks and options for every model
  table = {'Chance': {s: reference[s][0] for s in splits},
           demo.MAJORITY_LABEL: {s: reference[s][1] for s in splits}}
  order = ['t5_mtf', 'fewshot', *kinds]
  results = {name: acc for name, acc, _ in done}
  table.update({LABELS[name]: results[name] for name in order})
  pre = '; '.join(f'{r["stage"]} {r["steps"]} steps, loss {r["loss"]:.3f}'
                  + ('' if r['bound'] else ' (NOT BOUND: still on the plateau)') for r in recall)
  header = (f'The synthetic suite, seed {seed}: held-out rank-classification accuracy (%), '
            f'answer options shown. Recall pretraining: {pre}. '
            f'{time.time() - t0:.0f}s on this machine.\n\n')
  text = format_table(table, list(splits))
  root = workdir_lib.as_path(workdir)
  workdir_lib.write_atomic(root / 'results.md', header + text + '\n')
  workdir_lib.write_atomic(root / 'results.json', json.dumps(
      {'seed': seed, 'steps': steps, 'pretraining': recall, 'table': table}, indent=2))
  print('\n' + header + text)
  return table
