r"""The embedded default: hypertuning, shrunk to run on a CPU, in the regime where it binds.

  python -m hyperflax.demo --workdir=runs/demo [--quick] [--kinds=prefix,lora,hart] [--classic]

Default recipe (`hyperflax.curriculum`; each stage a `hyperflax.train` run in its own
sub-workdir, so rerunning the command resumes or skips finished stages), on the synthetic
suite's word vocabulary (`words_compact`) and a small T5 v1.1 (2+2 layers, d_model 128):
  1. recall_adjacent, recall_separated   the T5's pretraining: in-context recall rows
                  (`synthetic_recall`), which teach it to bind a key to the value next to it
                  in the input; a stage still on the plateau goes on 250 steps at a time;
  2. fewshot, t5_mtf   side by side from that T5: T5-MTF-Few-shot (demonstrations in the
                  encoder, the query read in the decoder) and T5-MTF (queries alone);
  3. <hypermodel>  HART (`--kinds=prefix,lora,hart` adds HyperT5-Prefix and -LoRA, about
                  2.5 minutes more; at this size they stay near T5-MTF) against the frozen
                  few-shot T5, its backbone initialised from that T5's encoder;
then every model is scored (rank classification, options shown) on held-out task families and
on held-out tasks of the seen families, beside chance and the demonstrations' most frequent
answer, and the table is printed and written to `workdir/results.md` / `results.json`.

`--classic` runs the recipe before the curriculum (`run`, which the learning benchmarks use
with other data): the real T5 vocabulary, T5-MTF as the frozen downstream, CACLM
hyperpretraining, then multi-task fine-tuning; at this size it learns what a task answers with,
not which input gets which answer (bench/RESULTS.md, "Learning").
"""

from __future__ import annotations

import json
import logging
import os
import time

import ml_collections

from hyperflax.config_base import base_config

# A T5 v1.1 small enough for two CPU cores.
DEMO_T5 = dict(d_model=128, d_kv=32, d_ff=256, num_heads=4, num_layers=2,
               num_decoder_layers=2)
CHANCE = '38.9%'
# Hypermodel variants: name -> (table label, generator kind, config overrides).
VARIANTS = {
    'prefix': ('HyperT5-Prefix', 'prefix', {}),
    'lora': ('HyperT5-LoRA', 'lora', {}),
    'hart': ('HART', 'hart', {}),
    'prefix_mlp': ('HyperT5-Prefix-MLP', 'prefix_mlp', {}),
    'shared_prefix': ('T5-MTF (Prefix)', 'shared_prefix', {}),
    'shared_lora': ('T5-MTF (LoRA)', 'shared_lora', {}),
    'hart_no_consistency': ('HART, no consistency loss', 'hart',
                            {'hyper.consistency_alpha': 0.0}),
    'hart_top_down': ('HART, top-down order', 'hart', {'hyper.generation_order': 'top_down'}),
    'hart_random_order': ('HART, random order', 'hart', {'hyper.generation_order': 'random'}),
}
KIND_LABELS = {name: label for name, (label, _, _) in VARIANTS.items()}


def plan(quick: bool = False) -> ml_collections.ConfigDict:
  p = ml_collections.ConfigDict()
  p.kinds = ('prefix', 'lora', 'hart')
  p.downstream_steps, p.fewshot_steps, p.caclm_steps, p.mtf_steps = 300, 150, 40, 300
  p.eval_splits = ('heldout_families', 'heldout_tasks')
  p.seed = 0
  if quick:
    p.downstream_steps, p.fewshot_steps, p.caclm_steps, p.mtf_steps = 4, 2, 2, 4
  return p


def stage_config(method: str, kind: str = 'prefix', steps: int = 100, seed: int = 0,
                 **overrides) -> ml_collections.ConfigDict:
  c = base_config()
  c.seed = seed
  c.method = method
  c.model.preset = 'tiny'
  c.model.overrides = ml_collections.ConfigDict(DEMO_T5)
  # A CPU job whose first stage trains its own small T5 (later stages set init_from).
  c.model.allow_random_init = True
  c.runtime.allow_cpu = True
  c.model.dtype = 'float32'
  c.model.dropout_rate = 0.0
  c.hyper.kind = kind
  c.hyper.dtype = 'float32'
  c.hyper.prefix_len = 8
  c.hyper.lora_rank = 4
  if kind == 'hart':
    c.hyper.consistency_alpha = 1.0
    c.hyper.fusion_in_decoder = True
    c.hyper.decoder_layers = 1
  c.data.name = 'synthetic_fewshot'
  c.data.batch_size = 16
  c.data.num_shots = 16
  c.data.lengths = (192, 16, 8)
  c.optim.learning_rate = 1e-3
  c.optim.warmup_steps = min(20, steps // 5)
  c.train.num_steps = steps
  c.train.log_every = max(1, steps // 6)
  c.train.checkpoint_every = max(1, steps // 3)
  c.train.tensorboard = False
  c.eval.name = 'synthetic_fewshot'
  # One batch per held-out task (<= 24 queries x 3 options); the adapter is
  # generated once per task.
  c.eval.batch_size = 72
  c.eval.max_decode_length = 4
  c.eval.also_generate = True
  c.eval.options = ml_collections.ConfigDict({'max_queries': 24,
                                              'heldout_tasks_per_family': 10})
  for key, value in overrides.items():
    node = c
    *parents, leaf = key.split('.')
    for part in parents:
      node = node[part]
    node[leaf] = value
  return c


def _train(config, workdir):
  from hyperflax.train import train
  return train(config, workdir)


def check_kinds(kinds) -> tuple[str, ...]:
  """`kinds` without repeats (two processes would share one stage directory), or a
  ValueError naming the unknown ones."""
  kinds = tuple(dict.fromkeys(kinds))
  unknown = [k for k in kinds if k not in VARIANTS]
  if unknown:
    raise ValueError(f'unknown hypermodel variant(s) {unknown}; known: {sorted(VARIANTS)}')
  return kinds


def map_stages(fn, args: list, jobs: int) -> list:
  """[fn(a) for a in args], in up to `jobs` processes: one process uses about one core on
  these small programs. Every stage is seeded alone, so the results do not depend on it."""
  if jobs > 1 and len(args) > 1:
    import multiprocessing
    # spawn: a forked JAX runtime is unsafe.
    with multiprocessing.get_context('spawn').Pool(min(jobs, len(args))) as pool:
      return pool.map(fn, args, chunksize=1)
  return [fn(a) for a in args]


METRICS = {'accuracy': 'rank-classification accuracy (%) — options shown',
           'generated_exact_match': 'exact match (%) of greedy generation — no options shown'}


def _evaluate(config, out, workdir, splits, label, metrics=METRICS, majority=None) -> dict:
  """{metric: {split: task-average}} for the metrics of `metrics` (keys of
  `evaluate`'s `average_metrics`, or 'headline': its per-task headline metric,
  e.g. MetaICL's macro-F1 / accuracy, averaged). `majority`, if given, gets
  {split: the demonstrations' majority-answer average} where evaluate has it."""
  from hyperflax import evaluate
  results = {m: {} for m in metrics}
  for split in splits:
    summary = evaluate.evaluate(config, out['experiment'], out['trainable'], out['frozen'],
                                os.path.join(workdir, f'eval_{split}'), split, label)
    for m in metrics:
      results[m][split] = (summary['average'] if m == 'headline'
                           else summary['average_metrics'][m])
    if majority is not None and 'majority' in summary['average_metrics']:
      majority[split] = summary['average_metrics']['majority']
  return results


MAJORITY_LABEL = "Demos' most frequent answer"


def _majority_row(majority: dict, splits, metrics) -> dict | None:
  """The reference a binding model must beat, not only chance: answering every
  query with the option its demonstrations give most often (`EvalTask.majority`,
  which `evaluate` records with every run; `_evaluate(majority=...)` collects
  it); no model involved."""
  if 'accuracy' not in metrics or any(split not in majority for split in splits):
    return None
  row = {m: {split: None for split in splits} for m in metrics}  # None: printed as '-'
  row['accuracy'] = {split: majority[split] for split in splits}
  return row


def _pipeline(args) -> tuple[str, dict]:
  """One model after the downstream: the few-shot baseline, or CACLM +
  multi-task fine-tuning of a hypermodel variant; returns (label, results)."""
  name, workdir, frozen_t5, p, common, metrics, caclm_overrides = args
  logging.getLogger().setLevel(logging.WARNING)
  if name == 'fewshot':
    few_dir = os.path.join(workdir, 'fewshot')
    cfg = stage_config('t5_mtf_fewshot', steps=p['fewshot_steps'], seed=p['seed'],
                       **{'model.init_from': frozen_t5, **common})
    out = _train(cfg, few_dir)
    return 'T5-MTF-Few-shot', _evaluate(cfg, out, few_dir, p['eval_splits'], 'T5-MTF-Few-shot',
                                        metrics)
  label, kind, overrides = VARIANTS[name]
  overrides = {**common, 'model.init_from': frozen_t5, **overrides}
  if not kind.startswith('shared_'):  # the shared baselines read no text to pretrain on
    caclm_dir = os.path.join(workdir, f'caclm_{name}')
    cfg = stage_config('hypermodel', kind, p['caclm_steps'], p['seed'],
                       **{**overrides, 'data.name': 'synthetic_caclm', 'data.lengths': (),
                          'data.options': {}, **(caclm_overrides or {}), 'eval.name': ''})
    _train(cfg, caclm_dir)
    overrides['hyper.init_from'] = caclm_dir
  mtf_dir = os.path.join(workdir, f'mtf_{name}')
  cfg = stage_config('hypermodel', kind, p['mtf_steps'], p['seed'], **overrides)
  out = _train(cfg, mtf_dir)
  return label, _evaluate(cfg, out, mtf_dir, p['eval_splits'], label, metrics)


def run(workdir: str, quick: bool = False, kinds=None, scale: float = 1.0, seed: int = 0,
        fewshot: bool = True, overrides: dict | None = None, eval_splits=None,
        metrics: dict | None = None, caclm_overrides: dict | None = None,
        jobs: int = 1) -> dict:
  """Trains and scores every stage; returns {model: {metric: {split: value}}}.

  `kinds` names entries of `VARIANTS`; `seed` seeds every stage (model
  initialisation, data order, dropout); the synthetic tasks stay the same.
  `overrides` ({'a.b': value}) apply to every few-shot stage's config (another
  dataset: `data.name`, `eval.name`, `data.lengths`, ...) and `eval_splits`
  replaces the synthetic suite's splits; `metrics` replaces `METRICS` (see
  `_evaluate`) and `caclm_overrides` the CACLM stages' data (default: CACLM
  on synthetic documents). `jobs` > 1 runs the stages after the downstream
  in that many processes (same results: every stage is seeded alone).
  """
  metrics = metrics or METRICS
  p = plan(quick)
  p.seed = seed
  if eval_splits:
    p.eval_splits = tuple(eval_splits)
  common = dict(overrides or {})
  if quick and 'eval.options' not in common:  # a smoke test: one task of each family
    common['eval.options'] = {'max_queries': 4, 'heldout_tasks_per_family': 1}
  if kinds:
    p.kinds = check_kinds(kinds)
  for key in ('downstream_steps', 'fewshot_steps', 'caclm_steps', 'mtf_steps'):
    p[key] = max(1, int(round(p[key] * scale)))
  from hyperflax import workdir as workdir_lib
  if (workdir_lib.as_path(workdir) / 'recall_adjacent').exists():
    raise ValueError(f'{workdir}: holds a run of the default (curriculum) demo; give the '
                     'classic recipe another --workdir')
  workdir_lib.as_path(workdir).mkdir(parents=True, exist_ok=True)  # may be a gs:// URL
  t0 = time.time()
  table: dict[str, dict] = {}

  down_dir = os.path.join(workdir, 'downstream')
  cfg = stage_config('t5_mtf', steps=p.downstream_steps, seed=p.seed, **common)
  out = _train(cfg, down_dir)
  majority_by_split = {}
  table['T5-MTF'] = _evaluate(cfg, out, down_dir, p.eval_splits, 'T5-MTF', metrics,
                              majority_by_split)
  majority = _majority_row(majority_by_split, p.eval_splits, metrics)
  if majority:
    table[MAJORITY_LABEL] = majority
  frozen_t5 = os.path.join(down_dir, 'downstream')

  # After the downstream, the stages form independent pipelines.
  names = (['fewshot'] if fewshot else []) + list(p.kinds)
  pipelines = [(name, workdir, frozen_t5, p.to_dict(), common, metrics, caclm_overrides)
               for name in names]
  table.update(map_stages(_pipeline, pipelines, jobs))

  text = tables(table, p.eval_splits, metrics)
  if 'eval.name' in common:
    header = f'{common["eval.name"]}, seed {p.seed}; {time.time() - t0:.0f}s on this machine\n\n'
  else:
    header = (f'The synthetic suite, seed {p.seed}; chance: {CHANCE} rank classification, '
              f'~0 generation for lookup/category; {time.time() - t0:.0f}s on this machine\n\n')
  root = workdir_lib.as_path(workdir)
  workdir_lib.write_atomic(root / 'results.md', header + text + '\n')
  workdir_lib.write_atomic(root / 'results.json', json.dumps(table, indent=2))
  print('\n' + header + text)
  return table


def tables(table: dict, splits, metrics=METRICS) -> str:
  """One markdown table per metric of `metrics` (cells may be strings)."""
  from hyperflax.metrics import format_table
  return '\n\n'.join(
      f'Held-out {what}:\n\n' + format_table({k: v[m] for k, v in table.items()}, list(splits))
      for m, what in metrics.items())


def main(argv=None) -> int:
  from hyperflax import cli

  def define(fv):
    from absl import flags
    flags.DEFINE_string('workdir', 'runs/demo', 'where every stage writes its workdir',
                        flag_values=fv)
    flags.DEFINE_bool('quick', False, 'a few steps per stage (smoke test)', flag_values=fv)
    flags.DEFINE_list('kinds', None, 'hypermodel variants to train (default: hart, or '
                      f'prefix,lora,hart with --classic; known: {",".join(VARIANTS)})',
                      flag_values=fv)
    flags.DEFINE_float('scale', 1.0, "multiply every stage's step count (and the recall "
                       "stages' cap)", flag_values=fv)
    flags.DEFINE_integer('seed', 0, 'seeds every stage (initialisation, data order)',
                         flag_values=fv)
    flags.DEFINE_integer('jobs', min(2, os.cpu_count() or 1),
                         'processes for the stages that run side by side', flag_values=fv)
    flags.DEFINE_bool('classic', False,
                      'the recipe before the recall curriculum: real T5 vocabulary, T5-MTF as '
                      'the frozen downstream, CACLM then multi-task fine-tuning (no binding at '
                      'this size: bench/RESULTS.md, "Learning")', flag_values=fv)

  def body(f):
    logging.getLogger().setLevel(logging.WARNING)
    if f.scale <= 0:
      raise ValueError(f'--scale={f.scale}: expected a positive number')
    if not f.workdir:
      raise ValueError('--workdir is empty')
    if f.classic:
      run(f.workdir, f.quick, f.kinds, f.scale, seed=f.seed, jobs=f.jobs)
      return 0
    from hyperflax import curriculum
    kinds = f.kinds or list(curriculum.DEMO_KINDS)
    scaled = lambda n: max(1, int(round(n * f.scale)))
    steps = {k: scaled(v) for k, v in curriculum.DEMO_STEPS.items()}
    curriculum.run_demo(f.workdir, f.seed, kinds, steps, jobs=f.jobs, quick=f.quick,
                        max_recall_steps=scaled(curriculum.DEMO_MAX_RECALL_STEPS))
    return 0

  return cli.absl_main(__doc__, define, body, argv, 'hyperflax.demo')


if __name__ == '__main__':
  raise SystemExit(main())
