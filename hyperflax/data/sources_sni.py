"""Super-NaturalInstructions (Wang et al., 2022) task files and default split.

Layout under `root` (default `<data_dir>/sni`):
  splits/default/{train,test}_tasks.txt   one task name per line
  tasks/<task>.json   {Definition: [str], Positive Examples: [{input, output}],
                       Instances: [{id, input, output: [str]}], Input_language..}

Settings (paper §5.2): 'def' (the definition alone is the hypermodel input, as
one `<x>` segment) and 'def_2pos' (definition + the first two positive
examples, fixed for every query). English tasks only. Test tasks use their
first 100 instances; training tasks at most `max_train_instances` each.
Baselines: T5-MTF (Def) / (Def+2Pos) read the same definition (+ positives)
concatenated with the query, i.e. `mode='concat'` of the converter.
Split-listed tasks without a file are skipped and counted (or raise with
`strict=True`): the shared sample holds only 30 of the 875 tasks.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from hyperflax.data import io_utils
from hyperflax.data.examples import EvalTaskData, Example, FewShotTask
from hyperflax.data.fewshot import DataStats

log = logging.getLogger('hyperflax.data')

SETTINGS = {'def': 0, 'def_2pos': 2}


def read_task(path: str | os.PathLike) -> dict:
  """Loads and validates one task JSON; errors name the file and field."""
  obj = io_utils.read_json(path)
  origin = str(path)
  if not isinstance(obj, dict):
    raise ValueError(f'{origin}: expected a JSON object')
  definition = io_utils.field(obj, 'Definition', origin, list)
  if not definition or not isinstance(definition[0], str):
    raise ValueError(f'{origin}: field \'Definition\' must be a non-empty list '
                     'of strings')
  io_utils.field(obj, 'Positive Examples', origin, list)
  io_utils.field(obj, 'Instances', origin, list)
  return obj


def is_english(obj: dict) -> bool:
  return all(obj.get(k, ['English']) == ['English']
             for k in ('Input_language', 'Output_language',
                       'Instruction_language'))


def _positives(obj: dict, origin: str, n: int) -> list[Example]:
  out = []
  for i, ex in enumerate(obj['Positive Examples'][:n]):
    where = f'{origin}: Positive Examples[{i}]'
    out.append(Example(io_utils.field(ex, 'input', where, str),
                       io_utils.field(ex, 'output', where, str), origin=where))
  return out


def _instances(obj: dict, origin: str, limit: int | None, task: str,
               stats: DataStats) -> list[Example]:
  out = []
  for i, inst in enumerate(obj['Instances']):
    if limit is not None and len(out) >= limit:
      break
    where = f'{origin}: Instances[{i}]'
    if not isinstance(inst, dict):
      raise ValueError(f'{where}: expected an object')
    inp = io_utils.field(inst, 'input', where, str)
    outputs = io_utils.field(inst, 'output', where, (list, str))
    outputs = [outputs] if isinstance(outputs, str) else outputs
    if not outputs:
      stats.add(task, 'instances_without_output_skipped')
      continue
    out.append(Example(inp, outputs[0], references=tuple(outputs),
                       origin=f'{where} id={inst.get("id", "?")}'))
  return out


def _load(root: Path, part: str, strict: bool, stats: DataStats):
  names = io_utils.read_lines(root / 'splits' / 'default' / f'{part}_tasks.txt')
  found = missing = non_english = 0
  for name in names:
    path = root / 'tasks' / f'{name}.json'
    if not path.is_file():
      if strict:
        raise FileNotFoundError(f'S-NI task {name}: file not found: {path}')
      missing += 1
      stats.add('(split)', f'{part}_tasks_missing_file')
      continue
    obj = read_task(path)
    if not is_english(obj):
      non_english += 1
      stats.add(name, 'task_skipped_non_english')
      continue
    found += 1
    yield name, path, obj
  log.info('S-NI %s: %d tasks loaded, %d listed without a file under %s, '
           '%d non-English skipped', part, found, missing, root / 'tasks',
           non_english)
  if not found:
    raise FileNotFoundError(f'no S-NI {part} task file found under '
                            f'{root / "tasks"} (split list {len(names)} names)')


def train_tasks(root: str | os.PathLike, setting: str = 'def_2pos', *,
                max_train_instances: int | None = 100, strict: bool = False,
                stats: DataStats | None = None) -> list[FewShotTask]:
  """Training tasks of `splits/default/train_tasks.txt`."""
  num_pos = SETTINGS[setting]
  stats = stats or DataStats(f'sni_{setting}')
  tasks = []
  for name, path, obj in _load(Path(root), 'train', strict, stats):
    definition = obj['Definition'][0]
    demos = _positives(obj, str(path), num_pos)
    examples = _instances(obj, str(path), max_train_instances, name, stats)
    tasks.append(FewShotTask(name, examples, fixed_demos=demos,
                             definition=definition, group=name))
  return tasks


def eval_tasks(root: str | os.PathLike, setting: str = 'def_2pos', *,
               max_test_instances: int | None = 100, strict: bool = False,
               stats: DataStats | None = None) -> list[EvalTaskData]:
  """Test tasks: first `max_test_instances` instances, ROUGE-L references."""
  num_pos = SETTINGS[setting]
  stats = stats or DataStats(f'sni_{setting}')
  out = []
  for name, path, obj in _load(Path(root), 'test', strict, stats):
    out.append(EvalTaskData(
        name, _positives(obj, str(path), num_pos),
        _instances(obj, str(path), max_test_instances, name, stats),
        definition=obj['Definition'][0], metric='rouge_l', group=name))
  return out
