"""Episode sampling: a target example plus K disjoint demonstrations.

Batch `n` of a training stream is a pure function of `(seed, n)`: every step
draws from `numpy.random.default_rng([seed, n])`, so resuming at step n needs
no replay and two runs with one seed agree exactly.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
from typing import Sequence

import numpy as np

from hyperflax.data.examples import EvalTaskData, Example, FewShotTask

log = logging.getLogger('hyperflax.data')


@dataclasses.dataclass(frozen=True)
class Episode:
  """What one batch row is built from.

  Attributes:
    task: task name.
    query: the target example (downstream input and gold output).
    demos: demonstrations, never equal to `query`.
    definition: optional instruction (one more `<x>` segment).
    task_index: index of the task in its collection / eval list.
    example_index: index of `query` in its task's pool / query list.
  """
  task: str
  query: Example
  demos: tuple[Example, ...]
  definition: str | None = None
  task_index: int = 0
  example_index: int = 0


class DataStats:
  """Per-task counters of everything dropped, skipped or truncated.

  The first occurrence of each (task, kind) is logged at once (as a warning
  for `warn=True` kinds: truncations, dropped demonstrations); `log_summary()`
  logs the totals (streams call it periodically and after each eval task).
  """

  def __init__(self, name: str = ''):
    self.name = name
    self.counts: dict[str, collections.Counter] = collections.defaultdict(
        collections.Counter)
    self._warned: set[tuple[str, str]] = set()
    # Structured reports of what a source provides (e.g. P3 vs. Figure 6),
    # for `data_report` / results.json.
    self.reports: dict[str, dict] = {}

  def add(self, task: str, kind: str, n: int = 1, warn: bool = False) -> None:
    if not n:
      return
    self.counts[task][kind] += n
    if (task, kind) not in self._warned:
      self._warned.add((task, kind))
      log.log(logging.WARNING if warn else logging.INFO,
              '[%s] task %s: %s (%d so far; later ones are counted in the '
              'summary)', self.name, task, kind, self.counts[task][kind])

  def total(self, kind: str) -> int:
    return sum(c[kind] for c in self.counts.values())

  def summary(self) -> dict[str, dict[str, int]]:
    return {t: dict(c) for t, c in sorted(self.counts.items())}

  def log_summary(self) -> None:
    for task, counter in sorted(self.counts.items()):
      log.info('[%s] task %s: %s', self.name, task,
               ', '.join(f'{k}={v}' for k, v in sorted(counter.items())))


def same_example(a: Example, b: Example) -> bool:
  return a.input == b.input and a.target == b.target


def dedup_examples(examples: Sequence[Example], task: str,
                   stats: DataStats | None = None) -> list[Example]:
  """Drops exact (input, target) duplicates, counting them.

  Duplicates would let a demonstration equal the target example.
  """
  seen, out = set(), []
  for ex in examples:
    key = (ex.input, ex.target)
    if key in seen:
      continue
    seen.add(key)
    out.append(ex)
  if stats is not None:
    stats.add(task, 'duplicate_examples_removed', len(examples) - len(out))
  return out


class EpisodeSampler:
  """Draws training episodes; row `b` of step `n` depends only on (seed, n).

  Args:
    tasks: the training tasks.
    num_shots: K, demonstrations per episode (fewer when a pool is small).
    seed: the stream seed.
    task_sampling: 'proportional' (to pool size, capped by `size_cap`, as in
      MetaICL/T0) or 'uniform'.
    size_cap: cap on a task's weight for proportional sampling.
    stats: counters for logging.
  """

  def __init__(self, tasks: Sequence[FewShotTask], num_shots: int = 16,
               seed: int = 0, task_sampling: str = 'proportional',
               size_cap: int | None = None, stats: DataStats | None = None):
    self.tasks = [t for t in tasks if t.examples]
    self.stats = stats or DataStats()
    for t in tasks:
      if not t.examples:
        self.stats.add(t.name, 'empty_task_skipped')
    if not self.tasks:
      raise ValueError('no training task has any example')
    self.num_shots = num_shots
    self.seed = seed
    sizes = np.array([len(t.examples) for t in self.tasks], dtype=np.float64)
    if size_cap:
      sizes = np.minimum(sizes, size_cap)
    if task_sampling == 'uniform':
      sizes = np.ones_like(sizes)
    elif task_sampling != 'proportional':
      raise ValueError(f'task_sampling={task_sampling!r}; expected '
                       "'proportional' or 'uniform'")
    self.task_probs = sizes / sizes.sum()

  def episodes(self, step: int, batch_size: int) -> list[Episode]:
    """The `batch_size` episodes of training step `step`."""
    if step < 0:
      raise ValueError(f'step must be >= 0, got {step}')
    rng = np.random.default_rng([self.seed, step])
    task_ids = rng.choice(len(self.tasks), size=batch_size, p=self.task_probs)
    return [self._episode(rng, int(t)) for t in task_ids]

  def _episode(self, rng: np.random.Generator, task_index: int) -> Episode:
    task = self.tasks[task_index]
    n = len(task.examples)
    target = int(rng.integers(n))
    query = task.examples[target]
    if task.fixed_demos is not None:
      demos = list(task.fixed_demos[:self.num_shots])
    else:
      k = min(self.num_shots, n - 1)
      # Draw from the n-1 other indices, then shift past the target: disjoint
      # by construction, without building an index list per row.
      idx = rng.choice(n - 1, size=k, replace=False) if k > 0 else []
      demos = [task.examples[i + (i >= target)] for i in idx]
      if k < self.num_shots:
        self.stats.add(task.name, 'episodes_with_fewer_demos_than_k')  # small pool
    kept = [d for d in demos if not same_example(d, query)]
    self.stats.add(task.name, 'demos_equal_to_query_removed',
                   len(demos) - len(kept))
    return Episode(task.name, query, tuple(kept), task.definition,
                   task_index, target)


def eval_split(examples: Sequence[Example], num_shots: int, seed: int,
               name: str) -> tuple[list[Example], list[Example]]:
  """Splits one labelled set into a fixed demo set and the remaining queries.

  Used where a held-out task has no separate demonstration file (P3 held-out,
  synthetic): the demos are fixed for all queries (as MetaICL/HART evaluate)
  and never appear among the queries.
  """
  n = len(examples)
  if n <= num_shots:
    raise ValueError(f'{name}: {n} examples cannot give {num_shots} '
                     'demonstrations and at least one query')
  rng = np.random.default_rng([seed, _stable_hash(name)])
  demo_idx = set(rng.choice(n, size=num_shots, replace=False).tolist())
  demos = [examples[i] for i in sorted(demo_idx)]
  queries = [examples[i] for i in range(n) if i not in demo_idx]
  return demos, queries


def eval_episodes(task: EvalTaskData, task_index: int = 0,
                  num_shots: int | None = None) -> list[Episode]:
  """One episode per query, all sharing the task's fixed demonstrations."""
  demos = tuple(task.demos if num_shots is None else task.demos[:num_shots])
  return [Episode(task.name, q, tuple(d for d in demos if not same_example(d, q)),
                  task.definition, task_index, i)
          for i, q in enumerate(task.queries)]


def _stable_hash(text: str) -> int:
  """A process-independent hash (Python's `hash` is salted per process)."""
  h = 2166136261
  for ch in text.encode('utf-8'):
    h = ((h ^ ch) * 16777619) & 0xFFFFFFFF
  return h
