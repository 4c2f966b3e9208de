r"""One command per paper table: every run a table needs, in order, then the table.

  python -m hyperflax.pipeline --list
  python -m hyperflax.pipeline --recipe=hypertuning_p3 --workdir=$WORKDIR \
      --config.model.init_from=/path/to/t5-v1_1-large [--dry-run]
  python -m hyperflax.pipeline --recipe=hart_sni --workdir=$WORKDIR \
      --config.model.init_from=$T5_LARGE --flan_t5=/path/to/flan-t5-large
  python -m hyperflax.pipeline --recipe=hypertuning_p3 --workdir=/tmp/p3 --scale=tiny  # CPU

A recipe (`hyperflax.recipes`) is a table of HyperTuning or HART. Its stages
run in order, each a normal resumable `hyperflax.train` workdir
`$WORKDIR/<stage>` — CACLM hyperpretraining, then multi-task fine-tuning with
`hyper.init_from` = the CACLM stage's workdir, then evaluation of the stage
on its held-out set — and a stage that finished (`pipeline_stage.json`) is
skipped, after checking it was run with the same config. Recipes given the
same `--workdir` share the runs they have in common. Finally the table is
written in the paper's layout, beside the published numbers:
`$WORKDIR/<recipe>.md` and `$WORKDIR/<recipe>.json`.

`--config.SECTION.FIELD=VALUE` applies to every stage (e.g. the frozen T5).
`--scale=tiny` runs each stage's `:tiny` config on the real shared data with
tiny lengths, one or two steps and a few evaluation queries (a smoke run of
the whole recipe; the numbers mean nothing).
"""

from __future__ import annotations

import ast
import importlib.util
import json
import logging
import os
import sys
import time
from pathlib import Path

import ml_collections
import numpy as np

from hyperflax import recipes as recipes_lib
from hyperflax.workdir import as_path, read_json, write_atomic
from hyperflax.data.synthetic import WORD_KINDS

CONFIGS_DIR = Path(__file__).resolve().parent.parent / 'configs'
MARKER = 'pipeline_stage.json'
SCALES = ('full', 'tiny')

# --scale=tiny: the real datasets, shrunk. Lengths are the same for every
# few-shot stage (and CACLM's windows fit them) so that equal programs repeat.
TINY_LENGTHS = (64, 32, 8)
TINY = {
    # One layer each side (the `:tiny` T5 has two): every code path, half the compiling.
    'model.overrides': {'num_layers': 1, 'num_decoder_layers': 1},
    'train.num_steps': 1, 'train.checkpoint_every': 1, 'train.log_every': 1,
    'data.batch_size': 2, 'data.num_shots': 2, 'data.lengths': TINY_LENGTHS,
    'eval.batch_size': 16, 'eval.max_decode_length': 4,
}
TINY_DATA = {  # per dataset tag: data / eval options
    'caclm': {'data.name': 'caclm_c4', 'data.options': {'segments': (24, 8, 8, 24),
                                                        'num_docs': 64}},
    # Three T0-train datasets' prompts (all of P3 is read three times a stage otherwise);
    # every held-out dataset and original-task template is scored.
    'p3': {'data.options': {'length_sample': 4, 'include': '^(ag_news|glue_mrpc|rotten_tomatoes)_'},
           'eval.options': {'max_queries': 6}},
    'metaicl': {'eval.options': {'max_queries': 2}},
    'sni': {'data.options': {'max_train_instances': 8},
            'eval.options': {'max_test_instances': 2}},
}


# ---- configs -----------------------------------------------------------------------

def load_config(name: str, arg: str | None = None,
                configs_dir: Path = CONFIGS_DIR) -> ml_collections.ConfigDict:
  path = Path(configs_dir) / f'{name}.py'
  if not path.exists():
    raise FileNotFoundError(f'{path}: no such config (recipes read configs/)')
  spec = importlib.util.spec_from_file_location(f'_config_{name}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


_FREE = ('model.overrides', 'data.options', 'eval.options')


def set_field(config: ml_collections.ConfigDict, key: str, value, where: str = '') -> None:
  """config[a][b] = value for key 'a.b' (a dict replaces a section), refusing
  fields the config lacks."""
  node = config
  *parents, leaf = key.split('.')
  for part in parents:
    if part not in node:
      raise ValueError(f'{where}config.{key}: no section {part!r}')
    node = node[part]
  if leaf not in node and '.'.join(parents) not in _FREE:
    raise ValueError(f'{where}config.{key}: unknown field (fields: hyperflax/config_base.py)')
  with config.unlocked():
    node[leaf] = ml_collections.ConfigDict(value) if isinstance(value, dict) else value


def parse_overrides(argv: list[str]) -> tuple[list[str], dict]:
  """Splits `--config.a.b=value` arguments (values read as Python literals,
  else strings) off `argv`."""
  rest, overrides = [], {}
  for arg in argv:
    if arg.startswith('--config.'):
      key, sep, text = arg[len('--config.'):].partition('=')
      if not sep:
        raise ValueError(f'{arg}: expected --config.SECTION.FIELD=VALUE')
      try:
        value = ast.literal_eval(text)
      except (ValueError, SyntaxError):
        value = text
      overrides[key] = value
    else:
      rest.append(arg)
  return rest, overrides


def _tag_of(stage) -> str:
  if not stage.data:
    return 'caclm'
  return 'metaicl' if stage.data in recipes_lib.METAICL else stage.data.split('_')[0]


def stage_dir(workdir, recipe, stage, scale: str):
  """`<workdir>/<stage>` as an epath (a `gs://` workdir stays a URL; a local
  one is absolute, so the chaining fields read the same however it was
  spelled); at tiny scale a recipe that changes the tiny model (HART's random
  order needs 3 layers) keeps its runs apart."""
  suffix = f'_{recipe.tiny_tag}' if scale == 'tiny' and recipe.tiny_tag else ''
  return as_path(workdir) / (stage.name + suffix)


def stage_config(recipe, stage, workdir, scale: str = 'full', overrides: dict | None = None,
                 flan_t5: str = '', configs_dir: Path = CONFIGS_DIR) -> ml_collections.ConfigDict:
  """The config `stage` trains with: its config file (`:tiny` at tiny scale),
  the recipe's overrides, the chaining fields, then the user's overrides."""
  if scale not in SCALES:
    raise ValueError(f'--scale={scale!r}; allowed: {", ".join(SCALES)}')
  tiny = scale == 'tiny'
  config = load_config(stage.config, 'tiny' if tiny else None, configs_dir)
  where = f'{recipe.name}/{stage.name}: '
  for key, value in stage.overrides:
    if tiny and key == 'model.preset':  # the :tiny variant's own model
      continue
    set_field(config, key, value, where)
  if tiny:
    for key, value in {**TINY, **TINY_DATA[_tag_of(stage)]}.items():
      set_field(config, key, value, where)
    if not stage.evaluates:
      set_field(config, 'eval.name', '', where)
    for key, value in recipe.tiny_overrides:
      set_field(config, key, value, where)
    if config.hyper.decoder_layers is not None:  # as `:tiny` does (HART keeps 8 of 24)
      set_field(config, 'hyper.decoder_layers', 1)
  if stage.after:
    set_field(config, 'hyper.init_from',
              os.fspath(stage_dir(workdir, recipe, recipe.stage(stage.after), scale)), where)
  if stage.backbone == 'flan':
    if not flan_t5 and not tiny:
      raise ValueError(f'{where}HART-FLAN-T5 needs --flan_t5=<FLAN-T5 directory of the frozen '
                       "T5's width> (a transformers dir or hyperflax.convert output)")
    # At tiny scale the FT-Zero-Shot run's multi-task fine-tuned T5 stands in.
    source = flan_t5 or os.fspath(
        stage_dir(workdir, recipe, recipe.stage(recipe.flan_stand_in), scale) / 'downstream')
    set_field(config, 'hyper.backbone_from', source, where)
  for key, value in (overrides or {}).items():
    set_field(config, key, value, '--')
  return config


# ---- running -----------------------------------------------------------------------

def _config_json(config) -> dict:
  return json.loads(config.to_json_best_effort())


# Written absolute by `train` (`workdir.absolute_paths`) or pinned to the run's
# tokenizer: compared as paths in a finished stage, not at all in a started one.
_PATHS = ('model.init_from', 'hyper.init_from', 'hyper.backbone_from', 'data.data_dir',
          'data.vocab_path')


def _same_path(a, b) -> bool:
  if not (isinstance(a, str) and isinstance(b, str) and a and b) or {a, b} & set(WORD_KINDS):
    return a == b
  return as_path(a) == as_path(b)


def _differing(old: dict, new: dict, paths: bool) -> list[str]:
  old, new = _flat(old), _flat(new)
  out = []
  for k in sorted(set(old) | set(new)):
    if k.startswith('runtime.'):  # this machine's settings, not the run's (as evaluate)
      continue
    if k in _PATHS:
      if paths and not _same_path(old.get(k), new.get(k)):
        out.append(k)
    elif old.get(k) != new.get(k):
      out.append(k)
  return out


def stage_status(path, config) -> str:
  """'done' (finished with this config), 'started', or 'new'; a finished or
  started stage with another config is refused, naming the fields."""
  path = as_path(path)
  marker = path / MARKER
  if marker.exists():
    record = read_json(marker)
    if not isinstance(record, dict) or not isinstance(record.get('config'), dict):
      raise ValueError(f'{marker}: not a pipeline stage record (a JSON object with a config)')
    diff = _differing(record['config'], _config_json(config), paths=True)
    if diff:
      raise ValueError(f'{path}: finished with another config ({", ".join(diff[:6])} '
                       'differ); use another --workdir or delete that stage')
    return 'done'
  if not (path / 'checkpoints').exists():
    return 'new'
  saved = path / 'config.json'
  if saved.exists():
    old = read_json(saved)
    diff = _differing(old if isinstance(old, dict) else {}, _config_json(config), paths=False)
    if diff:
      raise ValueError(f'{path}: started with another config ({", ".join(diff[:6])} differ, '
                       f'see {saved}); use another --workdir or delete that stage')
  return 'started'


def _flat(d, prefix=''):
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flat(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = v
  return out


def run_stage(stage, config, path, label: str = '') -> dict | None:
  """Trains (or resumes) one stage, evaluates it, records it; returns the
  evaluation summary (None for CACLM). A finished stage is read back."""
  path = as_path(path)
  if stage_status(path, config) == 'done':
    logging.info('stage %s: finished, skipped', stage.name)
    return read_json(path / MARKER).get('results')
  from hyperflax import evaluate
  from hyperflax.train import train
  t0, cpu0 = time.time(), time.process_time()
  logging.info('stage %s: training (%s)', stage.name, stage.config)
  recorded = _config_json(config)
  out = train(config.copy_and_resolve_references(), os.fspath(path))
  results = None
  if stage.evaluates:
    results = evaluate.evaluate(config, out['experiment'], out['trainable'], out['frozen'],
                                os.fspath(path / 'eval'), label=label or stage.name)
    results = {k: results[k] for k in ('per_task', 'per_group', 'average') if k in results}
  write_atomic(path / MARKER, json.dumps({'config': recorded, 'results': results,
                                           'seconds': round(time.time() - t0, 1),
                                           'cpu_seconds': round(time.process_time() - cpu0, 1)},
                                          indent=1))
  return results


def plan(recipe, workdir, scale='full', overrides=None, flan_t5='', configs_dir=CONFIGS_DIR):
  """[(stage, config, path)] in running order."""
  workdir = as_path(workdir)
  return [(s, stage_config(recipe, s, workdir, scale, overrides, flan_t5, configs_dir),
           stage_dir(workdir, recipe, s, scale)) for s in recipe.stages]


def run(recipe, workdir, scale='full', overrides=None, flan_t5='', configs_dir=CONFIGS_DIR,
        peft_settings: dict | None = None) -> dict:
  """Runs every stage of `recipe` and writes its table; returns the table dict."""
  steps = plan(recipe, workdir, scale, overrides, flan_t5, configs_dir)
  if scale == 'full':  # a missing frozen T5 or accelerator fails now, not after CACLM
    from hyperflax import runtime
    for stage, config, _ in steps:
      runtime.preflight(config)
  labels = {}
  for row in recipe.rows:
    for _, names in row.cells:
      for name in names:
        labels.setdefault(name, row.label)
  results = {}
  for stage, config, path in steps:
    results[stage.name] = run_stage(stage, config, path, labels.get(stage.name, ''))
  peft = None
  if recipe.peft:
    from hyperflax import peft_tuning
    peft = peft_tuning.pipeline_sweep(
        {k: [stage_dir(workdir, recipe, recipe.stage(n), scale) for n in v]
         for k, v in recipe.peft.items()}, as_path(workdir) / f'{recipe.name}_peft',
        tiny=scale == 'tiny', **(peft_settings or {}))
  table = make_table(recipe, results, peft)
  table.update(scale=scale, workdir=os.fspath(as_path(workdir)))
  write_table(recipe, table, workdir)
  return table


# ---- the table ---------------------------------------------------------------------

def _p3_columns(per_group: dict) -> dict:
  cols = {recipes_lib.P3_GROUPS[g]: v for g, v in per_group.items() if g in recipes_lib.P3_GROUPS}
  if cols:
    cols['AVG'] = float(np.mean(list(cols.values())))
  return cols


def _no_headline(stage: str, why: str) -> None:
  logging.warning('stage %s: %s in its results; its table cells are left empty (NaN)',
                  stage, why)


def make_table(recipe, results: dict, peft: dict | None = None) -> dict:
  """{'rows': {label: {column: value}}, ...} in the recipe's columns."""
  rows = {}
  for row in recipe.rows:
    cells: dict[str, list] = {}
    for column, names in row.cells:
      for name in names:
        r = results.get(name) or {}
        p3 = _p3_columns(r.get('per_group') or {})
        if column == 'P3' and not p3:
          _no_headline(name, 'no P3 task groups')
          p3 = {c: float('nan') for c in [*recipes_lib.P3_GROUPS.values(), 'AVG']}
        if column == 'P3' and 'P3' not in recipe.columns:  # all P3 columns
          for c, v in p3.items():
            cells.setdefault(c, []).append(v)
        elif column == 'P3':  # one P3 column (HART's ablation): the average
          cells.setdefault(column, []).append(p3['AVG'])
        else:
          if r.get('average') is None:
            _no_headline(name, 'no average')
          cells.setdefault(column, []).append(
              float('nan') if r.get('average') is None else r['average'])
    # NaN (an empty cell in the markdown) where a stage has no headline number.
    rows[row.label] = {c: float(np.mean(v)) for c, v in cells.items()}
  if peft is not None:
    rows = peft
  return {'recipe': recipe.name, 'paper': recipe.paper, 'title': recipe.title,
          'columns': list(recipe.columns), 'rows': rows,
          'sections': {row.label: row.section for row in recipe.rows},
          'paper_numbers': {k: dict(zip(recipe.columns, v))
                            for k, v in recipe.paper_numbers.items()},
          'notes': list(recipe.notes)}


def markdown(table: dict) -> str:
  cols = table['columns']

  def render(rows, sections):
    lines = ['| Method | ' + ' | '.join(cols) + ' |', '|:--' + '|--:' * len(cols) + '|']
    current = None
    for label, values in rows.items():
      section = sections.get(label, '')
      if section and section != current:
        lines.append(f'| *{section}* |' + ' |' * len(cols))
        current = section
      cell = lambda v: '' if v is None or (isinstance(v, float) and np.isnan(v)) else f'{v:.1f}'
      lines.append(f'| {label} | ' + ' | '.join(cell(values.get(c)) for c in cols) + ' |')
    return '\n'.join(lines)

  out = [f'## {table["paper"]}: {table["title"]}',
         f'\nThis run ({table.get("scale", "full")} scale, `{table.get("workdir", "")}`):\n',
         render(table['rows'], table['sections'])]
  if table['paper_numbers']:
    out += ['\nPublished:\n', render(table['paper_numbers'], table['sections'])]
  out += [f'\n- {n}' for n in table['notes']]
  return '\n'.join(out) + '\n'


def write_table(recipe, table: dict, workdir) -> str:
  text = markdown(table)
  workdir = as_path(workdir)
  write_atomic(workdir / f'{recipe.name}.md', text)
  write_atomic(workdir / f'{recipe.name}.json', json.dumps(table, indent=1))
  return text


# ---- command line ------------------------------------------------------------------

def describe(recipes: dict) -> str:
  lines = []
  for r in recipes.values():
    lines.append(f'{r.name:24s} {r.paper}: {r.title}')
    lines.append(f'{"":24s} rows: {", ".join(row.label for row in r.rows)}; '
                 f'{len(r.stages)} runs')
  return '\n'.join(lines)


def describe_plan(recipe, steps, workdir) -> str:
  lines = [f'{recipe.name} ({recipe.paper}) in {workdir}:']
  for i, (stage, config, path) in enumerate(steps, 1):
    try:
      status = stage_status(path, config)
    except ValueError as e:
      status = f'CONFLICT: {e}'
    extra = [f'{k}={v}' for k, v in stage.overrides]
    if config.hyper.get('init_from') and config.method == 'hypermodel':
      extra.append(f'hyper.init_from={config.hyper.init_from}')
    if config.hyper.get('backbone_from'):
      extra.append(f'hyper.backbone_from={config.hyper.backbone_from}')
    what = f'evaluate on {config.eval.name}/{config.eval.split}' if stage.evaluates else \
        'hyperpretraining (CACLM)'
    lines.append(f'{i:2d}. {stage.name} [{status}]: configs/{stage.config}.py, '
                 f'{config.train.num_steps} steps, {what}' +
                 (f'\n      {"; ".join(extra)}' if extra else ''))
  if recipe.peft:
    lines.append(f'{len(steps) + 1:2d}. hyper-init PEFT sweep over the held-out tasks '
                 '(hyperflax.peft_tuning)')
  lines.append(f'then {workdir}/{recipe.name}.md and .json')
  return '\n'.join(lines)


def main(argv=None) -> int:
  from absl import flags
  from hyperflax import cli
  argv = list(sys.argv if argv is None else argv)
  argv, overrides = parse_overrides(argv)
  argv = ['--dry_run' if a == '--dry-run' else a for a in argv]

  def define(fv):
    flags.DEFINE_string('recipe', None, 'a recipe name (--list)', flag_values=fv)
    flags.DEFINE_string('workdir', None, 'root of the stage workdirs and the tables',
                        flag_values=fv)
    flags.DEFINE_enum('scale', 'full', list(SCALES), "'tiny': every stage's :tiny config on "
                      'the real data, a smoke run', flag_values=fv)
    flags.DEFINE_string('flan_t5', '', 'FLAN-T5 directory for HART-FLAN-T5 (hyper.backbone_from)',
                        flag_values=fv)
    flags.DEFINE_bool('list', False, 'print the recipes and what each reproduces', flag_values=fv)
    flags.DEFINE_bool('dry_run', False, 'print the stage plan and exit', flag_values=fv)

  def body(fv):
    recipes = recipes_lib.all_recipes()
    if fv.list:
      print(describe(recipes))
      return 0
    if fv.recipe not in recipes:
      raise ValueError(f'--recipe={fv.recipe!r}; known: {", ".join(recipes)} (see --list)')
    if not fv.workdir:
      raise ValueError('--workdir required (see --help)')
    recipe = recipes[fv.recipe]
    if fv.dry_run:
      steps = plan(recipe, fv.workdir, fv.scale, overrides, fv.flan_t5)
      print(describe_plan(recipe, steps, fv.workdir))
      return 0
    table = run(recipe, fv.workdir, fv.scale, overrides, fv.flan_t5)
    print(markdown(table))
    return 0

  return cli.absl_main(__doc__, define, body, argv, 'hyperflax.pipeline')


if __name__ == '__main__':
  sys.exit(main())
