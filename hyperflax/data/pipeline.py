"""Batch streams: infinite training streams and ordered evaluation sets."""

from __future__ import annotations

import logging
from typing import Iterator, Sequence

import numpy as np

from hyperflax.data.converters import Converter
from hyperflax.data.examples import EvalTaskData, majority_credit
from hyperflax.data.fewshot import Episode, EpisodeSampler, eval_episodes

log = logging.getLogger('hyperflax.data')


class TrainStream:
  """Infinite training batches; batch n is a pure function of (seed, n).

  Iterating yields batches `start_step`, `start_step + 1`, ...; `batch(n)`
  and `episodes(n)` give random access (the raw strings of a batch).
  """

  def __init__(self, sampler: EpisodeSampler, converter: Converter,
               batch_size: int, start_step: int = 0, log_every: int = 1000):
    self.sampler, self.converter = sampler, converter
    self.batch_size, self.start_step = batch_size, start_step
    self.log_every = log_every
    self.stats = converter.stats

  @property
  def tasks(self):
    return self.sampler.tasks

  def episodes(self, step: int) -> list[Episode]:
    return self.sampler.episodes(step, self.batch_size)

  def batch(self, step: int) -> dict[str, np.ndarray]:
    return self.converter.train_batch(self.episodes(step))

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    step = self.start_step
    while True:
      yield self.batch(step)
      step += 1
      if self.log_every and step % self.log_every == 0:
        self.stats.log_summary()


class EvalTask:
  """One evaluation task bound to a converter.

  Attributes:
    data: the `EvalTaskData` (name, demos, queries with options/references).
    task_index: its index in the evaluation list (the `task_index` field).
  """

  def __init__(self, data: EvalTaskData, converter: Converter,
               task_index: int, num_shots: int | None):
    self.data, self.converter = data, converter
    self.task_index, self.num_shots = task_index, num_shots

  name = property(lambda self: self.data.name)
  metric = property(lambda self: self.data.metric)
  group = property(lambda self: self.data.group)
  chance = property(lambda self: self.data.chance)
  has_options = property(lambda self: self.data.has_options)
  on_generations = property(lambda self: self.data.on_generations)
  queries = property(lambda self: self.data.queries)
  demos = property(lambda self: self.data.demos)

  def episodes(self) -> list[Episode]:
    return eval_episodes(self.data, self.task_index, self.num_shots)

  @property
  def majority(self) -> float | None:
    """`majority_credit` over the queries, from the demonstrations each
    episode holds (the first `num_shots`, none equal to the query)."""
    if not self.has_options:
      return None
    eps = [ep for ep in self.episodes() if ep.demos]
    if len(eps) < len(self.data.queries):
      return None
    return sum(majority_credit(ep.demos, ep.query) for ep in eps) / len(eps)

  def batches(self, batch_size: int, scoring: bool | None = None
              ) -> Iterator[dict[str, np.ndarray]]:
    """Ordered batches: rank-classification rows when `scoring` (default:
    whenever the queries have options), else one generation row per query."""
    scoring = self.has_options if scoring is None else scoring
    eps = self.episodes()
    if scoring:
      yield from self.converter.choice_batches(eps, batch_size)
    else:
      yield from self.converter.generation_batches(eps, batch_size)
    self.converter.stats.log_summary()


class EvalStream:
  """All batches of a list of evaluation tasks, task after task (a batch
  never spans two tasks). `tasks[batch['task_index'][i]].queries[
  batch['example_index'][i]]` is the raw example of row i."""

  def __init__(self, tasks: Sequence[EvalTask], batch_size: int,
               scoring: bool | None = None):
    self.tasks, self.batch_size, self.scoring = list(tasks), batch_size, scoring

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    for task in self.tasks:
      if self.scoring and not task.has_options:
        log.info('eval task %s has no options: skipped when scoring',
                 task.name)
        continue
      yield from task.batches(self.batch_size, self.scoring)
