"""One validation pass over a training config, before anything is written.

Each problem is one line naming the field, its value and what is allowed;
`validate` raises a `ConfigError` (a ValueError) listing all of them. The
fields themselves are documented in `hyperflax/config_base.py`.
"""

from __future__ import annotations

import numbers
from typing import Any

import ml_collections

DTYPES = ('float32', 'bfloat16', 'float16')
# Free-form sections: their keys belong to a dataset / T5Config, checked there.
_FREE = ('model.overrides', 'data.options', 'eval.options')


class ConfigError(ValueError):
  pass


def _flat(c, prefix='') -> dict[str, Any]:
  out = {}
  for key, value in c.items():
    name = f'{prefix}{key}'
    if isinstance(value, (ml_collections.ConfigDict, dict)) and name not in _FREE:
      out.update(_flat(value, name + '.'))
    else:
      out[name] = value
  return out


def _is_int(v) -> bool:
  return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _problems(config: ml_collections.ConfigDict) -> list[str]:
  from hyperflax.config_base import base_config
  from hyperflax.hyper.config import KINDS, ORDERS
  from hyperflax.model.config import PRESETS
  from hyperflax.training.experiment import METHODS
  flat, known = _flat(config), _flat(base_config())
  out = [f'config.{k}: unknown field (misspelled?); fields of config.{k.rsplit(".", 1)[0]}: '
         f'{sorted(n.rsplit(".", 1)[-1] for n in known if n.rsplit(".", 1)[0] == k.rsplit(".", 1)[0])}'
         for k in sorted(set(flat) - set(known)) if '.' in k]
  out += [f'config.{k}: unknown field' for k in sorted(set(flat) - set(known)) if '.' not in k]

  def get(name):
    return flat.get(name, known.get(name))

  def choice(name, allowed):
    if get(name) not in allowed:
      out.append(f'config.{name}={get(name)!r}: allowed {", ".join(map(str, allowed))}')

  def integer(name, low, high=None, none_ok=False):
    v = get(name)
    if v is None and none_ok:
      return
    if not _is_int(v) or v < low or (high is not None and v > high):
      bound = f'>= {low}' if high is None else f'in [{low}, {high}]'
      out.append(f'config.{name}={v!r}: must be an integer {bound}')

  def number(name, low, strict=False):
    v = get(name)
    if (not isinstance(v, numbers.Real) or isinstance(v, bool) or v < low
        or (strict and v == low)):
      out.append(f'config.{name}={v!r}: must be a number {">" if strict else ">="} {low}')

  choice('method', METHODS)
  choice('model.dtype', DTYPES)
  choice('hyper.dtype', DTYPES)
  choice('optim.moments_dtype', DTYPES)
  if not get('model.init_from'):
    choice('model.preset', sorted(PRESETS))
  if get('method') == 'hypermodel':
    choice('hyper.kind', KINDS)
    choice('hyper.generation_order', ORDERS)
    integer('hyper.prefix_len', 1)
    integer('hyper.lora_rank', 1)
    integer('hyper.decoder_layers', 1, none_ok=True)
    integer('hyper.head_hidden', 1, none_ok=True)
    number('hyper.consistency_alpha', 0)
  choice('optim.name', ('adamw', 'adafactor'))
  choice('optim.schedule', ('linear', 'constant'))
  number('optim.learning_rate', 0, strict=True)
  number('optim.weight_decay', 0)
  number('model.dropout_rate', 0)
  if isinstance(get('model.dropout_rate'), numbers.Real) and get('model.dropout_rate') >= 1:
    out.append(f'config.model.dropout_rate={get("model.dropout_rate")!r}: must be < 1')
  integer('optim.warmup_steps', 0)
  integer('seed', 0)
  integer('data.batch_size', 1)
  integer('data.num_shots', 0)
  integer('train.num_steps', 0)
  integer('train.grad_accum_steps', 1)
  integer('train.log_every', 1)
  integer('train.checkpoint_every', 1)
  integer('train.keep_checkpoints', 1)
  integer('eval.batch_size', 1)
  integer('eval.max_decode_length', 1)
  for name in ('data.lengths', 'eval.lengths'):
    v = get(name)
    if not isinstance(v, (tuple, list)) or (
        v and (len(v) != 3 or not all(_is_int(x) and x > 0 for x in v))):
      out.append(f'config.{name}={v!r}: must be () (the dataset default) or 3 positive '
                 'integers (hypermodel input, downstream input, target), e.g. '
                 '--config.data.lengths="(1024, 384, 128)"')
  # Trained with the query in the decoder but scored with it in the encoder (or the
  # reverse) would evaluate a format the model never saw, silently.
  formats = {k: bool(dict(get(k) or {}).get('query_in_decoder')) for k in
             ('data.options', 'eval.options')}
  if get('eval.name') and formats['data.options'] != formats['eval.options']:
    out.append('config.data.options.query_in_decoder and config.eval.options.query_in_decoder '
               f'differ ({formats["data.options"]} / {formats["eval.options"]}): training '
               'and evaluation must use the same format')
  if get('eval.name') and formats['eval.options'] and get('eval.also_generate'):
    out.append('config.eval.also_generate=True with config.eval.options.query_in_decoder: '
               'greedy decoding would start without the query; a query read in the decoder '
               'is scored by rank classification only')
  from hyperflax.data.converters import QUERY_MARKS
  marks = {k: dict(get(k) or {}).get('query_marks', 'xy') for k in formats}
  for k, v in marks.items():
    if v not in QUERY_MARKS:
      out.append(f'config.{k}.query_marks={v!r}: allowed {", ".join(QUERY_MARKS)}')
    elif v != 'xy' and not formats[k]:
      out.append(f'config.{k}.query_marks={v!r} needs config.{k}.query_in_decoder=True '
                 '(it says how the decoder reads the query)')
  if get('eval.name') and formats['data.options'] and len(set(marks.values())) > 1:
    out.append('config.data.options.query_marks and config.eval.options.query_marks differ '
               f'({marks["data.options"]!r} / {marks["eval.options"]!r}): training and '
               'evaluation must read the query alike')
  for axis in ('data', 'fsdp', 'tensor'):
    v = get(f'mesh.{axis}')
    if not _is_int(v) or (v < 1 and v != -1):
      out.append(f'config.mesh.{axis}={v!r}: must be a positive integer or -1 (all remaining)')
  return out


def validate(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Raises `ConfigError` naming every invalid field; returns `config`."""
  problems = _problems(config)
  if problems:
    more = f' (and {len(problems) - 1} more: {"; ".join(problems[1:])})' if len(problems) > 1 \
        else ''
    raise ConfigError(problems[0] + more)
  return config
