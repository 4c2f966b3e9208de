"""MetaICL few-shot data (Min et al., 2022): `<task>_<k>_<seed>_<split>.jsonl`.

Layout under `root` (default `<data_dir>/metaicl`):
  config/<split_name>.json   {"train": [task, ...], "test": [task, ...], ...}
  data/<task>/<task>_<k>_<seed>_<split>.jsonl   lines {task, input, output, options}

Training pool of a train task: `<task>_<train_k>_<train_seed>_train.jsonl` (the
full MetaICL release uses k=16384, seed 100). When that file is absent (the
shared sample only has k=16 files) the pool is the union of every
`<task>_16_<seed>_{train,dev}.jsonl`, de-duplicated; this fallback is logged.
Evaluation of a test task: demonstrations are the k-shot train file of a seed,
queries the `<task>_<k>_100_test.jsonl` file, with options when it has them.
The headline is scored on greedy generations (HyperTuning §5.2: macro-F1 for
classification, ROUGE-L otherwise); rank classification over the options is
kept as a secondary metric.
Tasks named in the config whose files are absent are skipped and counted (or
raise with `strict=True`). A task listed under both "train" and "test" (`sick`
in `non_nli_to_nli`) is a test task: it is removed from training, with a log
line naming it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Sequence

from hyperflax.data import io_utils
from hyperflax.data.examples import EvalTaskData, Example, FewShotTask
from hyperflax.data.fewshot import DataStats, dedup_examples

log = logging.getLogger('hyperflax.data')

SPLITS = ('hr_to_lr', 'non_nli_to_nli', 'non_class_to_class')
_FIELDS = ('input', 'output')


def read_metaicl_file(path: str | os.PathLike) -> list[Example]:
  """Parses one MetaICL JSONL file; errors name the file and line."""
  out = []
  for lineno, obj in io_utils.iter_jsonl(path, required=_FIELDS):
    origin = f'{path}:{lineno}'
    inp = io_utils.field(obj, 'input', origin, str)
    tgt = io_utils.field(obj, 'output', origin, str)
    options = obj.get('options') or []
    if not isinstance(options, list) or not all(isinstance(o, str) for o in options):
      raise ValueError(f'{origin}: field \'options\' must be a list of strings')
    if options and tgt not in options:
      raise ValueError(f'{origin}: output {tgt!r} is not among options {options}')
    out.append(Example(inp, tgt, tuple(options), origin=origin))
  return out


def read_split_config(root: str | os.PathLike, split: str) -> dict[str, list[str]]:
  path = Path(root) / 'config' / f'{split}.json'
  cfg = io_utils.read_json(path)
  for key in ('train', 'test'):
    if not isinstance(cfg.get(key), list):
      raise ValueError(f'{path}: missing list field {key!r}')
  return cfg


def _task_file(root: Path, task: str, k: int, seed: int, split: str) -> Path:
  return root / 'data' / task / f'{task}_{k}_{seed}_{split}.jsonl'


def _missing(path: Path, task: str, strict: bool, stats: DataStats) -> int:
  """Raises (strict) or counts and logs a task whose file is absent."""
  if strict:
    raise FileNotFoundError(f'MetaICL task {task}: file not found: {path}')
  stats.add(task, 'task_skipped_missing_file')
  log.warning('MetaICL task %s skipped: %s not found', task, path)
  return 1


def train_tasks(root: str | os.PathLike, split: str, *, train_k: int = 16384,
                train_seed: int = 100, strict: bool = False,
                stats: DataStats | None = None) -> list[FewShotTask]:
  """The training tasks of a MetaICL split config."""
  root, stats = Path(root), stats or DataStats(f'metaicl_{split}')
  tasks, skipped = [], 0
  config = read_split_config(root, split)
  for name in _without_test_tasks(config, split, stats):
    full = _task_file(root, name, train_k, train_seed, 'train')
    if full.is_file():
      examples = read_metaicl_file(full)
    else:
      files = sorted((root / 'data' / name).glob(f'{name}_16_*_train.jsonl'))
      files += sorted((root / 'data' / name).glob(f'{name}_16_*_dev.jsonl'))
      if not files:
        skipped += _missing(full, name, strict, stats)
        continue
      stats.add(name, 'pool_from_k16_files_fallback')
      examples = [e for f in files for e in read_metaicl_file(f)]
    examples = dedup_examples(examples, name, stats)
    tasks.append(FewShotTask(name, examples, group=name))
  if not tasks:
    raise FileNotFoundError(f'no MetaICL training task of {split!r} found '
                            f'under {root / "data"}')
  _log_loaded(split, 'train', len(tasks), skipped)
  return tasks


def _without_test_tasks(config: dict, split: str, stats: DataStats) -> list[str]:
  """The config's training tasks minus its test tasks.

  Upstream `non_nli_to_nli.json` lists `sick` under both "train" and "test";
  MetaICL's premise is that test tasks are unseen, so they never train here.
  """
  held_out = set(config['test']) | set(config.get('unseen_domain_test') or ())
  removed = [t for t in config['train'] if t in held_out]
  if removed:
    log.warning('MetaICL %s: test task(s) removed from the training list: %s',
                split, ', '.join(removed))
    for t in removed:
      stats.add(t, 'test_task_removed_from_training')
  return [t for t in config['train'] if t not in held_out]


def metric_for(queries: Sequence[Example]) -> str:
  """The headline metric on generations (HyperTuning §5.2): macro-F1 for
  classification, ROUGE-L otherwise.

  MetaICL reads "classification" from `config/tasks/<task>.json`, which the
  shared data lacks; a task whose queries all share one option set is taken
  as classification (per-query options = multiple choice; none = generation).
  """
  if queries and queries[0].options and len({q.options for q in queries}) == 1:
    return 'macro_f1'
  return 'rouge_l'


def eval_tasks(root: str | os.PathLike, split: str, *, k: int = 16,
               seeds: Sequence[int] = (100,), test_seed: int = 100,
               max_queries: int | None = None, strict: bool = False,
               stats: DataStats | None = None) -> list[EvalTaskData]:
  """Test tasks: fixed k-shot demonstrations per seed, ordered test queries."""
  root, stats = Path(root), stats or DataStats(f'metaicl_{split}')
  out, skipped = [], 0
  for name in read_split_config(root, split)['test']:
    test = _task_file(root, name, k, test_seed, 'test')
    if not test.is_file():
      skipped += _missing(test, name, strict, stats)
      continue
    queries = read_metaicl_file(test)
    if max_queries is not None:
      queries = queries[:max_queries]
    for seed in seeds:
      demo_file = _task_file(root, name, k, seed, 'train')
      if not demo_file.is_file():
        skipped += _missing(demo_file, name, strict, stats)
        continue
      demos = read_metaicl_file(demo_file)
      suffix = f'/seed{seed}' if len(seeds) > 1 else ''
      out.append(EvalTaskData(f'{name}{suffix}', demos, queries,
                              metric=metric_for(queries), group=name,
                              on_generations=True))
  if not out:
    raise FileNotFoundError(f'no MetaICL test task of {split!r} found under '
                            f'{root / "data"}')
  _log_loaded(split, 'test', len(out), skipped)
  return out


def _log_loaded(split: str, part: str, kept: int, skipped: int) -> None:
  log.info('MetaICL %s/%s: %d tasks loaded, %d skipped for missing files',
           split, part, kept, skipped)
