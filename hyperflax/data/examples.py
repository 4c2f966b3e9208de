"""Plain data records shared by every source: examples, tasks, lengths."""

from __future__ import annotations

import collections

import dataclasses
from typing import Sequence


@dataclasses.dataclass(frozen=True)
class Example:
  """One input/output pair.

  Attributes:
    input: the text the downstream model reads.
    target: the gold output text (for classification, one of `options`).
    options: answer choices for rank classification; empty for generation.
    references: every acceptable output (S-NI lists several); defaults to
      `(target,)`.
    origin: `path:line` (or similar) the example came from, for messages.
  """
  input: str
  target: str
  options: tuple[str, ...] = ()
  references: tuple[str, ...] = ()
  origin: str = ''

  @property
  def label(self) -> int:
    """Index of `target` in `options`, or -1 without options."""
    try:
      return self.options.index(self.target)
    except ValueError:
      return -1

  @property
  def all_references(self) -> tuple[str, ...]:
    return self.references or (self.target,)


@dataclasses.dataclass
class FewShotTask:
  """A training task: a pool to draw target examples and demonstrations from.

  Attributes:
    name: unique task name within its collection.
    examples: the pool of (target) examples.
    fixed_demos: if not None, every episode uses these demonstrations
      (S-NI positive examples) instead of sampling from `examples`.
    definition: an instruction shown as one more `<x>` segment (S-NI).
    group: dataset / family name, for reporting.
  """
  name: str
  examples: Sequence[Example]
  fixed_demos: Sequence[Example] | None = None
  definition: str | None = None
  group: str = ''


def majority_credit(demos: Sequence[Example], query: Example) -> float:
  """Expected accuracy on `query` of answering with the option that `demos`
  give most often (ties: a uniform guess among them).

  What the answers' frequencies alone earn, without reading the query: a model
  must beat this, not only chance, to show that it binds inputs to answers
  (where demonstrations repeat answers, it is well above chance).
  """
  counts = collections.Counter(d.target for d in demos)
  score = {o: counts.get(o, 0) for o in query.options}
  top = max(score.values())
  best = [o for o, c in score.items() if c == top]
  return best.count(query.target) / len(best)


@dataclasses.dataclass
class EvalTaskData:
  """An evaluation task: a fixed demonstration set and ordered queries.

  Attributes:
    name: unique task name.
    demos: the demonstrations used for every query (disjoint from queries).
    queries: examples to predict, in a fixed order.
    definition: optional instruction segment (S-NI).
    metric: suggested metric: 'accuracy' (rank classification), 'macro_f1',
      'rouge_l' or 'exact_match' (generation).
    group: dataset / family used to aggregate scores.
    on_generations: the headline `metric` scores greedy generations even
      though the queries have options (MetaICL, HyperTuning §5.2: "ROUGE or
      Macro-F1 on model generations"); rank classification is then reported
      as a secondary `rank_*` metric.
  """
  name: str
  demos: Sequence[Example]
  queries: Sequence[Example]
  definition: str | None = None
  metric: str = 'accuracy'
  group: str = ''
  on_generations: bool = False

  @property
  def has_options(self) -> bool:
    return bool(self.queries) and all(q.options for q in self.queries)

  @property
  def chance(self) -> float | None:
    """Expected accuracy of a uniform guess over each query's options."""
    if not self.has_options:
      return None
    return sum(1.0 / len(q.options) for q in self.queries) / len(self.queries)

  @property
  def majority(self) -> float | None:
    """`majority_credit` over the queries, with all of `demos`."""
    if not self.has_options or not self.demos:
      return None
    return sum(majority_credit(self.demos, q) for q in self.queries) / len(self.queries)


@dataclasses.dataclass(frozen=True)
class Lengths:
  """Maximum token lengths (paper appendix A: 1024 / 384 / 128).

  Attributes:
    hyper: hypermodel input (few-shot string + EOS).
    encoder: downstream encoder input (query + EOS).
    decoder: target (+ EOS).
  """
  hyper: int = 1024
  encoder: int = 384
  decoder: int = 128

  @property
  def concat(self) -> int:
    """Encoder length of the concatenated few-shot baseline (1408)."""
    return self.hyper + self.encoder

  @classmethod
  def make(cls, value) -> 'Lengths':
    """Accepts a Lengths, a (hyper, encoder, decoder) tuple, a dict or None."""
    if value is None:
      return cls()
    if isinstance(value, Lengths):
      return value
    if isinstance(value, dict):
      return cls(**value)
    return cls(*value)
