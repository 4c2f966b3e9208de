"""promptsource templates, parsed and rendered without the promptsource package
(it does not install on Python 3.11).

A `templates.yaml` holds `!Template` objects with a jinja string whose `|||`
separates the prompt from the target, and an `answer_choices` jinja string
split on `|||`. promptsource's random `choice` filter is made deterministic
here: it draws from a generator seeded by (template id, example key).
"""

from __future__ import annotations

import dataclasses
import os
import random
from pathlib import Path

import jinja2
import yaml

from hyperflax.data import io_utils


class _Loader(yaml.SafeLoader):
  """SafeLoader that reads `!Template`/`!TemplateMetadata` tags as mappings."""


_Loader.add_multi_constructor(
    '!', lambda loader, suffix, node: loader.construct_mapping(node, deep=True))

_RNG = random.Random(0)


def _most_frequent(items):
  return max(set(items), key=list(items).count) if items else None


_ENV = jinja2.Environment(undefined=jinja2.StrictUndefined)
_ENV.filters['choice'] = lambda seq: _RNG.choice(list(seq))
_ENV.filters['most_frequent'] = _most_frequent
_ENV.filters['highlight'] = lambda x: x


@dataclasses.dataclass(frozen=True)
class Template:
  """One promptsource template.

  Attributes:
    id: the template uuid.
    name: its human name (e.g. 'GPT-3 style').
    jinja: the prompt `|||` target jinja source.
    answer_choices: jinja source of the `|||`-separated choices, or None.
    original_task: whether it poses the dataset's original task (T0 evaluates
      only those).
    origin: the YAML file.
  """
  id: str
  name: str
  jinja: str
  answer_choices: str | None
  original_task: bool
  origin: str

  def render(self, fields: dict, key: str) -> tuple[str, str, tuple[str, ...]]:
    """Renders (prompt, target, answer choices) for one example.

    Args:
      fields: the dataset fields (HF `datasets` names).
      key: a stable example key seeding the `choice` filter.

    Raises:
      ValueError: naming the template and example when jinja fails.
    """
    try:
      choices: list[str] = []
      if self.answer_choices:
        _RNG.seed(f'{self.id}:{key}:choices')
        text = _compiled(self.answer_choices).render(**fields)
        choices = [c.strip() for c in text.split('|||')]
      _RNG.seed(f'{self.id}:{key}')
      rendered = _compiled(self.jinja).render(**fields, answer_choices=choices)
    except jinja2.TemplateError as e:
      raise ValueError(f'{self.origin}: template {self.name!r} failed on '
                       f'example {key}: {e}') from e
    parts = [p.strip() for p in rendered.split('|||')]
    target = parts[1] if len(parts) > 1 else ''
    return parts[0], target, tuple(choices)


_COMPILED: dict[str, jinja2.Template] = {}


def _compiled(source: str) -> jinja2.Template:
  if source not in _COMPILED:
    _COMPILED[source] = _ENV.from_string(source)
  return _COMPILED[source]


def load_templates(path: str | os.PathLike) -> list[Template]:
  """Parses a promptsource `templates.yaml` (sorted by template name)."""
  path = io_utils.require_file(path, 'promptsource templates file')
  with open(path, encoding='utf-8') as f:
    try:
      doc = yaml.load(f, Loader=_Loader)  # nosec: SafeLoader subclass
    except yaml.YAMLError as e:
      raise ValueError(f'{path}: malformed YAML: {e}') from e
  if not isinstance(doc, dict) or not isinstance(doc.get('templates'), dict):
    raise ValueError(f'{path}: missing mapping field \'templates\'')
  out = []
  for uid, t in doc['templates'].items():
    where = f'{path}: template {uid}'
    for key in ('name', 'jinja'):
      if key not in t:
        raise ValueError(f'{where}: missing field {key!r}')
    meta = t.get('metadata') or {}
    out.append(Template(str(t.get('id', uid)), t['name'], t['jinja'],
                        t.get('answer_choices'),
                        bool(meta.get('original_task', False)), str(path)))
  return sorted(out, key=lambda t: t.name)


def templates_for(root: str | os.PathLike, dataset: str) -> list[Template]:
  """Templates of `dataset` ('super_glue/cb') under `<root>/templates`."""
  return load_templates(Path(root) / 'templates' / dataset / 'templates.yaml')
