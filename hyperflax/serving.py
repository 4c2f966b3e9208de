"""Serving generated adapters: a task is one adapter, a batch may mix many tasks.

  from hyperflax import serving
  adapter = serving.hypertune('runs/hypert5_lora', 'task.jsonl', out='adapters/task')
  rows = serving.predict('models/t5', 'adapters/task', ['query one', 'query two'])
  rows = serving.predict('models/t5', ['adapters/a', 'adapters/b'],      # one per row
                         [{'input': 'q1'}, {'input': 'q2', 'options': ['yes', 'no']}],
                         method='beam', num_beams=4)

`Server` holds one downstream T5 and any number of adapters (each checked
against the model's parameter hash). Every row of a batch carries its own
adapter: rows whose adapters have the same shapes run in one compiled step
(`greedy_decode`, `beam_search` or teacher-forced scoring); batches are padded
to power-of-two sizes and fixed lengths, so compiled functions are reused
across calls. `hypertune` / `predict` keep loaded hypermodels and servers in
module caches keyed by path, so repeated calls stay warm.
"""

from __future__ import annotations

import functools
import logging
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from hyperflax import adapters as adapters_lib
from hyperflax.model.beam_search import beam_search
from hyperflax.model.config import T5Config
from hyperflax.model import peft as peft_lib
from hyperflax.model import xent
from hyperflax.model.decoding import greedy_decode
from hyperflax.model.transformer import T5

log = logging.getLogger('hyperflax.serving')


@functools.partial(jax.jit, static_argnames=('config',))
def teacher_forced_logits(config: T5Config, params, encoder_inputs, decoder_inputs, peft=None,
                          fusion_states=None, fusion_mask=None):
  """[B, T, vocab] float32 logits of `decoder_inputs` (shifted targets)."""
  return T5(config).apply({'params': params}, encoder_inputs, decoder_inputs, peft=peft,
                          fusion_states=fusion_states,
                          fusion_mask=fusion_mask).astype(jnp.float32)


@functools.partial(jax.jit, static_argnames=('config',))
def target_log_likelihood(config: T5Config, params, encoder_inputs, decoder_inputs, targets,
                          weights, peft=None, fusion_states=None, fusion_mask=None):
  """[B] summed log-likelihood of `targets` (rank classification, T0's rule).

  The output layer is fused into a chunked log-softmax (`model.xent`): no
  [B, T, vocab] array is formed.
  """
  hidden = T5(config).apply({'params': params}, encoder_inputs, decoder_inputs, peft=peft,
                            fusion_states=fusion_states, fusion_mask=fusion_mask,
                            return_hidden=True)
  return xent.target_loglik(hidden, xent.lm_head_kernel(params), targets, weights)


def tokenizer_from(info: dict, override: str | None = None):
  """The tokenizer a manifest names (or `override`: 'words', 'words_compact' or an
  spiece.model path)."""
  from hyperflax.data import synthetic, vocab
  if override:
    if override in synthetic.WORD_KINDS:
      return synthetic.word_tokenizer(override)
    return vocab.load_vocabulary(override)
  if info['kind'] in synthetic.WORD_KINDS:
    return synthetic.word_tokenizer(info['kind'])
  if not info.get('path') or not os.path.exists(info['path']):
    raise FileNotFoundError(f'the adapter was made with the SentencePiece model {info.get("path")}'
                            ', which is not here: pass its copy as the vocabulary (--vocab)')
  return vocab.load_vocabulary(info['path'])


class Server:
  """One downstream T5 plus registered adapters; see the module docstring.

  Args:
    model_dir: transformers T5 directory or `hyperflax.convert` output.
    config / params: an in-memory model instead of `model_dir`.
    dtype: compute dtype ('float32' or 'bfloat16').
    vocab: tokenizer override ('words' or an spiece.model path); by default
      the tokenizer recorded in the first adapter's manifest.
    lengths: (encoder, decoder) token lengths; default from the adapters.
    query_marks: the downstream reads the query in its decoder, with these marks
      ('none' or 'xy'; `Converter.query_marks`): for zero-shot rows of a model
      trained with query_in_decoder; by default the adapters' record says.
    batch_size: most rows per compiled step.
  """

  def __init__(self, model_dir: str | None = None, *, config: T5Config | None = None,
               params=None, dtype: str = 'float32', vocab: str | None = None,
               lengths: tuple[int, int] | None = None, batch_size: int = 32,
               query_marks: str | None = None):
    from hyperflax.pretrained import load_pretrained
    if model_dir:
      model, params = load_pretrained(model_dir, dropout_rate=0.0, dtype=dtype)
      config = model.config
      self.where = f'--model {model_dir}'
      self.sha256 = adapters_lib.model_dir_sha256(model_dir, params, config)
    else:
      config = config.replace(dropout_rate=0.0, dtype=dtype, scan_layers=False)
      self.where = 'the in-memory model'
      self.sha256 = adapters_lib.params_sha256(params, config)
    self.config, self.batch_size = config, batch_size
    self.params = jax.tree.map(jnp.asarray, params)
    self.adapters: dict[str, adapters_lib.Adapter] = {}
    self._on_device: dict[str, dict[str, jax.Array]] = {}
    self.tokenizer = tokenizer_from({}, vocab) if vocab else None
    self._vocab_key = ('override', vocab) if vocab else None
    self.lengths = lengths
    self._converter = None
    # {'in_decoder': True, 'marks': ...} for adapters of a downstream trained with the query
    # in its decoder (hypertune.query_format); None: the query is the encoder's input.
    self._query = {'in_decoder': True, 'marks': query_marks} if query_marks else None

  # ---- adapters and tokens ---------------------------------------------------

  def add_adapter(self, name: str, adapter: adapters_lib.Adapter | str) -> adapters_lib.Adapter:
    """Registers an adapter (a directory or an `Adapter`) after checking it fits."""
    if isinstance(adapter, str):
      adapter = adapters_lib.load_adapter(adapter)
    adapters_lib.check_downstream(adapter, self.config, self.sha256, self.where,
                                  name=f'adapter {name!r}')
    # A version-1 fusion adapter: project its states once, here, not per query.
    adapter = adapter.with_fusion_kv(self.config, self.params)
    info = adapter.manifest.get('tokenizer')
    if info and self._vocab_key is None:
      self.tokenizer, self._vocab_key = tokenizer_from(info), (info['kind'], info.get('sha256'))
    elif info and self._vocab_key[0] != 'override' and self._vocab_key != (
        info['kind'], info.get('sha256')):
      raise ValueError(f'adapter {name!r} was made with tokenizer {info}, the server already '
                       f'serves {self._vocab_key}: serve them separately')
    query = adapter.manifest.get('query')
    if (self.adapters or self._query) and query != self._query:
      where = ('the other adapters' if self.adapters else
               'the query format asked for (--query-in-decoder / query_marks)')
      raise ValueError(f'adapter {name!r} reads the query as {query or "encoder input"}, '
                       f'{where} as {self._query or "encoder input"}: serve them separately')
    self._query = query
    lengths = adapter.manifest.get('lengths')
    if lengths and self.lengths is None:
      self.lengths = (lengths['encoder'], lengths['decoder'])
    elif lengths and tuple(self.lengths) != (lengths['encoder'], lengths['decoder']):
      log.warning('adapter %r used lengths %s; serving with %s', name, lengths, self.lengths)
    self.adapters[name] = adapter
    # Device-resident copies: a batch's per-row adapters are stacked on the
    # device (one gather-like copy), not re-stacked on the host and transferred
    # on every call, so mixing adapters costs what repeating one does.
    self._on_device[name] = {k: jnp.asarray(v) for k, v in adapter.tensors.items()
                             if k not in ('fusion/states',) and not k.startswith('init/')}
    self._converter = None
    return adapter

  @property
  def converter(self):
    """Formats queries and targets exactly as training's 'hyper' mode does."""
    from hyperflax.data.converters import Converter
    from hyperflax.data.examples import Lengths
    if self.tokenizer is None or self.lengths is None:
      raise ValueError('no tokenizer/lengths yet: add an adapter or pass vocab= and lengths=')
    if self._converter is None:
      q = self._query or {}
      self._converter = Converter(self.tokenizer, Lengths(1, *self.lengths), 'hyper',
                                  query_in_decoder=bool(q.get('in_decoder')),
                                  query_marks=q.get('marks', 'xy'))
    return self._converter

  def _episode(self, text: str):
    from hyperflax.data.examples import Example
    from hyperflax.data.fewshot import Episode
    return Episode('predict', Example(text, ''), ())

  def encode(self, texts: Sequence[str]) -> np.ndarray:
    """[N, encoder_length] query tokens (query + EOS, truncated as in training)."""
    out = np.zeros((len(texts), self.lengths[0]), np.int32)
    for i, text in enumerate(texts):
      ids = self.converter.query_ids(self._episode(text))
      out[i, :len(ids)] = ids
    return out

  def decode(self, ids) -> str:
    ids = [int(i) for i in ids]
    ids = ids[:ids.index(1)] if 1 in ids else ids
    return self.tokenizer.decode([i for i in ids if i > 1])

  # ---- batching ----------------------------------------------------------------

  def _names(self, adapters, n: int) -> list[str | None]:
    names = list(adapters) if isinstance(adapters, (list, tuple)) else [adapters] * n
    if len(names) != n:
      raise ValueError(f'{len(names)} adapters for {n} rows')
    unknown = sorted({x for x in names if x is not None and x not in self.adapters})
    if unknown:
      raise KeyError(f'unknown adapter(s) {unknown}; registered: {sorted(self.adapters)}')
    return names

  def _steps(self, names: list[str | None]):
    """Yields (row indices, padded size, peft, fusion states, fusion mask) per step."""
    groups: dict[Any, list[int]] = {}
    for i, name in enumerate(names):
      sig = None if name is None else self.adapters[name].signature()
      groups.setdefault(sig, []).append(i)
    for sig, rows in groups.items():
      for start in range(0, len(rows), self.batch_size):
        chunk = rows[start:start + self.batch_size]
        size = min(self.batch_size, 1 << (len(chunk) - 1).bit_length())
        padded = chunk + [chunk[0]] * (size - len(chunk))  # pad with copies: dropped later
        if sig is None:
          yield chunk, padded, None, None, None
          continue
        chosen = [self.adapters[names[i]] for i in padded]
        on_device = [self._on_device[names[i]] for i in padded]
        peft = peft_lib.unflatten({k: _stack([d[k] for d in on_device])
                                   for k in chosen[0].slots()})
        states = mask = None
        if chosen[0].has_fusion:  # keys/values are among the slots; states only in v1 form
          if chosen[0].has_fusion_states:
            states = jnp.asarray(np.stack([a.tensors['fusion/states'] for a in chosen]))
          mask = _stack([d['fusion/mask'] for d in on_device]).astype(bool)
        yield chunk, padded, peft, states, mask

  # ---- predictions ---------------------------------------------------------------

  def generate(self, texts: Sequence[str], adapters=None, *, method: str = 'greedy',
               num_beams: int = 4, length_penalty: float = 1.0,
               early_stopping: bool | str = False,
               max_new_tokens: int | None = None) -> list[dict]:
    """Greedy or beam generation; `adapters` is one name, None, or one per row.

    Returns:
      Per row {'text', 'tokens'} (+ 'score' for beam search).
    """
    if method not in ('greedy', 'beam'):
      raise ValueError(f"method must be 'greedy' or 'beam', got {method!r}")
    if self._query:
      raise ValueError('these adapters read the query in the decoder (trained with '
                       'query_in_decoder): only rank scoring is supported, give each query '
                       '"options"')
    names = self._names(adapters, len(texts))
    tokens = self.encode(texts)
    steps = max_new_tokens or self.lengths[1]
    out: list[dict] = [{} for _ in texts]
    for rows, padded, peft, states, mask in self._steps(names):
      enc = jnp.asarray(tokens[padded])
      if method == 'greedy':
        result, scores = greedy_decode(self.config, self.params, enc, steps, peft=peft,
                                       fusion_states=states, fusion_mask=mask), None
      else:
        result, scores = beam_search(self.config, self.params, enc, steps, num_beams=num_beams,
                                     length_penalty=float(length_penalty),
                                     early_stopping=early_stopping, peft=peft,
                                     fusion_states=states, fusion_mask=mask)
      result = np.asarray(result)
      for j, i in enumerate(rows):
        out[i] = {'text': self.decode(result[j]), 'tokens': result[j].tolist()}
        if scores is not None:
          out[i]['score'] = float(np.asarray(scores)[j])
    return out

  def _target_batch(self, texts, targets, options=None):
    """Encoder ids, decoder inputs, targets and their weights (the query the decoder reads
    before a target, with query_in_decoder, is not scored); `options`: per row, the options
    scored with it (one query cut for all of them, as in training)."""
    from hyperflax.data.converters import pad_to
    from hyperflax.data.examples import Example
    from hyperflax.data.fewshot import Episode
    enc = self.encode(texts)
    tgt = np.zeros((len(targets), self.lengths[1]), np.int32)
    weights = np.zeros(tgt.shape, np.float32)
    for i, (text, t) in enumerate(zip(texts, targets)):
      opts = tuple(options[i]) if options else ()
      ids, read = self.converter.target_and_read(
          Episode('predict', Example(text, t, opts), ()), t)
      tgt[i] = pad_to(ids, self.lengths[1])
      weights[i] = tgt[i] != 0
      weights[i, :read] = 0.0
    dec = np.concatenate([np.zeros((len(targets), 1), np.int32), tgt[:, :-1]], axis=1)
    return enc, dec, tgt, weights

  def logits(self, texts: Sequence[str], targets: Sequence[str], adapters=None) -> np.ndarray:
    """[N, decoder_length, vocab] teacher-forced logits of `targets` (+ EOS)."""
    if self._query:
      raise ValueError('these adapters read the query in the decoder (trained with '
                       'query_in_decoder): the decoder positions would start with it; use '
                       'score()')
    names = self._names(adapters, len(texts))
    enc, dec, _, _ = self._target_batch(texts, targets)
    out = np.zeros(dec.shape + (self.config.vocab_size,), np.float32)
    for rows, padded, peft, states, mask in self._steps(names):
      got = teacher_forced_logits(self.config, self.params, jnp.asarray(enc[padded]),
                                  jnp.asarray(dec[padded]), peft, states, mask)
      out[rows] = np.asarray(got)[:len(rows)]
    return out

  def score(self, texts: Sequence[str], options: Sequence[Sequence[str]], adapters=None
            ) -> list[dict]:
    """Rank classification: per row {'scores': summed log-likelihood per option,
    'best': argmax index, 'text': best option}."""
    names = self._names(adapters, len(texts))
    flat = [(i, o) for i, opts in enumerate(options) for o in opts]
    if any(not opts for opts in options):
      raise ValueError('every scored row needs at least one option')
    enc, dec, tgt, weights = self._target_batch([texts[i] for i, _ in flat],
                                                [o for _, o in flat],
                                                [options[i] for i, _ in flat])
    values = np.zeros(len(flat), np.float32)
    for rows, padded, peft, states, mask in self._steps([names[i] for i, _ in flat]):
      got = target_log_likelihood(self.config, self.params, jnp.asarray(enc[padded]),
                                  jnp.asarray(dec[padded]), jnp.asarray(tgt[padded]),
                                  jnp.asarray(weights[padded]), peft, states, mask)
      values[rows] = np.asarray(got)[:len(rows)]
    out, k = [], 0
    for opts in options:
      scores = values[k:k + len(opts)].tolist()
      k += len(opts)
      best = int(np.argmax(scores))
      out.append({'scores': scores, 'best': best, 'text': opts[best]})
    return out


@jax.jit
def _stack(arrays):
  return jnp.stack(arrays)


# ---- the small API: warm across calls ----------------------------------------------

_SERVERS: dict[tuple, Server] = {}
_HYPERMODELS: dict[str, Any] = {}


def _location(path: str) -> str:
  """One name per model or adapter location (a gs:// URL stays one)."""
  from hyperflax.workdir import is_url
  return path if is_url(path) else os.path.abspath(path)


def _manifest(adapter) -> dict:
  if isinstance(adapter, adapters_lib.Adapter):
    return adapter.manifest
  from hyperflax.workdir import as_path, read_json
  path = as_path(adapter) / adapters_lib.MANIFEST_FILE
  return read_json(path) if path.exists() else {}  # load_adapter says why


def get_server(model_dir: str, dtype: str = 'float32', vocab: str | None = None,
               query_marks: str | None = None) -> Server:
  """A cached server per model, dtype, tokenizer and query format (`query_marks`: the
  query read in the decoder, as `Server`'s)."""
  key = (_location(model_dir), dtype, vocab, query_marks)
  if key not in _SERVERS:
    _SERVERS[key] = Server(model_dir, dtype=dtype, vocab=vocab, query_marks=query_marks)
  return _SERVERS[key]


def hypertune(checkpoint: str, examples, definition: str | None = None,
              out: str | None = None, max_demos: int | None = None) -> adapters_lib.Adapter:
  """One hypermodel pass (the loaded hypermodel is cached); saves to `out` if given."""
  from hyperflax import hypertune as hypertune_lib
  from hyperflax.workdir import as_path
  key = str(as_path(checkpoint))  # a gs:// URL stays one
  if key not in _HYPERMODELS:
    _HYPERMODELS[key] = hypertune_lib.load_hypermodel(checkpoint)
  adapter = hypertune_lib.hypertune(_HYPERMODELS[key], examples, definition, max_demos)
  if out:
    adapters_lib.save_adapter(adapter, out)
  return adapter


def predict(model: str | Server, adapter, queries: Sequence[str | dict], **generate_kwargs
            ) -> list[dict]:
  """Predictions for `queries` (strings, or dicts with 'input' and optional 'options').

  Args:
    model: a model directory (server cached) or a `Server`.
    adapter: an adapter directory or `Adapter` for every row, a list with one
      per row (mixed-task batch), or None (zero-shot, needs the server's vocab).
    queries: rows with options are rank-scored, the others generated.
    **generate_kwargs: `Server.generate` options (method, num_beams, ...).

  Returns:
    Per query {'input', 'adapter', 'prediction', ...} ('scores' for options).
  """
  rows = [{'input': q} if isinstance(q, str) else dict(q) for q in queries]
  per_row = adapter if isinstance(adapter, (list, tuple)) else [adapter] * len(rows)
  if isinstance(model, Server):
    server = model
  else:
    # The adapters' query format picks the cached server (their manifests say it).
    unique = {a if isinstance(a, str) else id(a): a for a in per_row if a is not None}
    marks = {(_manifest(a).get('query') or {}).get('marks') for a in unique.values()}
    server = get_server(model, query_marks=marks.pop() if len(marks) == 1 else None)
  names = []
  for a in per_row:
    if a is None or (isinstance(a, str) and a in server.adapters):
      names.append(a)
      continue
    name = _location(a) if isinstance(a, str) else f'adapter-{id(a)}'
    if name not in server.adapters:
      server.add_adapter(name, a)
    names.append(name)
  out: list[dict] = [{} for _ in rows]
  scored = [i for i, r in enumerate(rows) if r.get('options')]
  generated = [i for i, r in enumerate(rows) if not r.get('options')]
  if scored:
    res = server.score([rows[i]['input'] for i in scored], [rows[i]['options'] for i in scored],
                       [names[i] for i in scored])
    for i, r in zip(scored, res):
      out[i] = {'prediction': r['text'], 'scores': r['scores']}
  if generated:
    res = server.generate([rows[i]['input'] for i in generated], [names[i] for i in generated],
                          **generate_kwargs)
    for i, r in zip(generated, res):
      out[i] = {'prediction': r['text'], **{k: v for k, v in r.items() if k != 'text'}}
  return [{'input': r['input'], 'adapter': n, **o} for r, n, o in zip(rows, names, out)]
