r"""The embedded default: the whole hypertuning recipe, shrunk to run on a CPU.

  python -m hyperflax.demo --workdir=runs/demo [--quick]

Stages (each a `hyperflax.train` run in its own sub-workdir; rerunning the
command resumes or skips finished stages):
  1. downstream   T5-MTF: a small T5 v1.1 (real T5 vocabulary) trained on the
                  synthetic suite's queries alone, then frozen. It is also the
                  T5-MTF baseline, which cannot see the demonstrations;
  2. fewshot      T5-MTF-Few-shot: that T5 trained further on demonstrations
                  and query concatenated (MetaICL-style);
  3. caclm_<kind> hyperpretraining (CACLM) of each hypermodel on synthetic text;
  4. mtf_<kind>   multi-task fine-tuning of each hypermodel (frozen T5);
then every model is scored (rank classification accuracy) on held-out task
families and on held-out tasks of the seen families, and a table is printed
and written to `workdir/results.md` / `results.json`.
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
KIND_LABELS = {'prefix': 'HyperT5-Prefix', 'lora': 'HyperT5-LoRA', 'hart': 'HART',
               'prefix_mlp': 'HyperT5-Prefix-MLP', 'shared_prefix': 'T5-MTF (Prefix)',
               'shared_lora': 'T5-MTF (LoRA)'}


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


def _evaluate(config, out, workdir, splits, label) -> dict:
  from hyperflax import evaluate
  results = {}
  for split in splits:
    summary = evaluate.evaluate(config, out['experiment'], out['trainable'], out['frozen'],
                                os.path.join(workdir, f'eval_{split}'), split, label)
    results[split] = summary['average']
  return results


def run(workdir: str, quick: bool = False, kinds=None, scale: float = 1.0) -> dict:
  p = plan(quick)
  if kinds:
    p.kinds = tuple(kinds)
  for key in ('downstream_steps', 'fewshot_steps', 'caclm_steps', 'mtf_steps'):
    p[key] = max(1, int(round(p[key] * scale)))
  os.makedirs(workdir, exist_ok=True)
  t0 = time.time()
  table: dict[str, dict[str, float]] = {}

  down_dir = os.path.join(workdir, 'downstream')
  cfg = stage_config('t5_mtf', steps=p.downstream_steps, seed=p.seed)
  out = _train(cfg, down_dir)
  table['T5-MTF'] = _evaluate(cfg, out, down_dir, p.eval_splits, 'T5-MTF')
  frozen_t5 = os.path.join(down_dir, 'downstream')

  few_dir = os.path.join(workdir, 'fewshot')
  cfg = stage_config('t5_mtf_fewshot', steps=p.fewshot_steps, seed=p.seed,
                     **{'model.init_from': frozen_t5, 'data.lengths': (192, 16, 8)})
  out = _train(cfg, few_dir)
  table['T5-MTF-Few-shot'] = _evaluate(cfg, out, few_dir, p.eval_splits, 'T5-MTF-Few-shot')

  for kind in p.kinds:
    caclm_dir = os.path.join(workdir, f'caclm_{kind}')
    cfg = stage_config('hypermodel', kind, p.caclm_steps, p.seed,
                       **{'model.init_from': frozen_t5, 'data.name': 'synthetic_caclm',
                          'data.lengths': (), 'eval.name': ''})
    _train(cfg, caclm_dir)
    mtf_dir = os.path.join(workdir, f'mtf_{kind}')
    cfg = stage_config('hypermodel', kind, p.mtf_steps, p.seed,
                       **{'model.init_from': frozen_t5, 'hyper.init_from': caclm_dir})
    out = _train(cfg, mtf_dir)
    label = KIND_LABELS[kind]
    table[label] = _evaluate(cfg, out, mtf_dir, p.eval_splits, label)

  from hyperflax.metrics import format_table
  text = format_table(table, list(p.eval_splits))
  header = (f'Held-out accuracy (%) on the synthetic suite, rank classification; '
            f'{time.time() - t0:.0f}s on this machine\n\n')
  with open(os.path.join(workdir, 'results.md'), 'w') as f:
    f.write(header + text + '\n')
  with open(os.path.join(workdir, 'results.json'), 'w') as f:
    json.dump(table, f, indent=2)
  print('\n' + header + text)
  return table


def main(argv=None) -> None:
  from absl import app, flags
  flags.DEFINE_string('workdir', 'runs/demo', 'where every stage writes its workdir')
  flags.DEFINE_bool('quick', False, 'a few steps per stage (smoke test)')
  flags.DEFINE_list('kinds', None, 'hypermodel kinds to train (default: prefix,lora,hart)')
  flags.DEFINE_float('scale', 1.0, "multiply every stage's step count")

  def _run(_):
    logging.getLogger().setLevel(logging.WARNING)
    run(flags.FLAGS.workdir, flags.FLAGS.quick, flags.FLAGS.kinds, flags.FLAGS.scale)

  app.run(_run, argv=argv)


if __name__ == '__main__':
  main()
