"""Serving: mixed-task batches row by row, fusion adapters, the CLI, warm compiled steps."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from test_serving_utils import (make_workdir, shared_env, torch_inputs, until_eos,
                                write_examples)
from hyperflax import adapters as adapters_lib
from hyperflax import hypertune, predict, serving
from hyperflax.model.decoding import greedy_decode


@pytest.fixture(scope='module')
def env(tmp_path_factory):
  env = dict(shared_env(tmp_path_factory))
  root = env['root']
  prefix_wd = os.path.join(root, 'wd_prefix')
  if not os.path.exists(prefix_wd):
    make_workdir(prefix_wd, env['model_dir'], 'prefix', seed=1)
  env['prefix_adapters'] = [
      serving.hypertune(prefix_wd, os.path.join(root, f'task{i}.jsonl'),
                        out=os.path.join(root, f'prefix{i}')) for i in range(3)]
  # Three hypertune calls, one loaded hypermodel (the compiled pass stays warm).
  assert sum(k == os.path.abspath(prefix_wd) for k in serving._HYPERMODELS) == 1  # pylint: disable=protected-access
  for i in range(3):  # the shared server (batches of 4 rows) holds lora0..2 already
    env['server'].add_adapter(f'prefix{i}', env['prefix_adapters'][i])
  return env


def _mixed_rows(tasks, kinds):
  """Queries of all tasks interleaved, so that every batch of 4 mixes tasks."""
  rows = []
  for q in range(len(tasks[0].queries)):
    for kind in kinds:
      for t, task in enumerate(tasks):
        rows.append((task.queries[q], f'{kind}{t}'))
  return rows


def test_mixed_batch_rows_equal_each_task_alone(env):
  server, tasks = env['server'], env['tasks']
  rows = _mixed_rows(tasks, ('lora', 'prefix'))
  texts, names = [q.input for q, _ in rows], [n for _, n in rows]
  first_step = next(server._steps(names))[0]  # pylint: disable=protected-access
  assert len({names[i] for i in first_step}) > 1  # one compiled step, several tasks
  mixed = server.generate(texts, names)
  mixed_scores = server.score(texts, [q.options for q, _ in rows], names)
  lora = [i for i, n in enumerate(names) if n.startswith('lora')]
  mixed_beam = server.generate([texts[i] for i in lora], [names[i] for i in lora],
                               method='beam', num_beams=3)
  for name in sorted(set(names)):
    idx = [i for i, n in enumerate(names) if n == name]
    alone = server.generate([texts[i] for i in idx], name)
    assert [mixed[i]['tokens'] for i in idx] == [r['tokens'] for r in alone], name
    alone_scores = server.score([texts[i] for i in idx], [rows[i][0].options for i in idx], name)
    np.testing.assert_allclose([mixed_scores[i]['scores'] for i in idx],
                               [r['scores'] for r in alone_scores], atol=1e-5)
    if name.startswith('lora'):
      alone_beam = server.generate([texts[i] for i in idx], name, method='beam', num_beams=3)
      got = [mixed_beam[lora.index(i)]['tokens'] for i in idx]
      assert got == [r['tokens'] for r in alone_beam], name
  # Independently: every LoRA row equals PEFT + transformers with its task's adapter.
  from peft import PeftModel
  from transformers import T5ForConditionalGeneration
  for t in range(3):
    ref = PeftModel.from_pretrained(
        T5ForConditionalGeneration.from_pretrained(env['model_dir']), env['pefts'][t]).eval()
    idx = [i for i, n in enumerate(names) if n == f'lora{t}']
    with torch.no_grad():
      want = ref.generate(**torch_inputs(server, [texts[i] for i in idx]), do_sample=False,
                          max_new_tokens=server.lengths[1]).numpy()[:, 1:]
    assert [until_eos(mixed[i]['tokens']) for i in idx] == [until_eos(w) for w in want]
  # Adapters really differ per task (otherwise mixing would prove nothing).
  assert len({tuple(mixed[i]['tokens']) for i in range(len(rows)) if rows[i][0] is
              tasks[0].queries[0]}) > 1


def test_prefix_adapters_are_not_faked_as_peft_prefix_tuning(env, tmp_path):
  adapter = env['prefix_adapters'][0]
  assert adapter.peft_type == 'prefix' and adapter.manifest['prefix_len'] == 4
  with pytest.raises(ValueError, match='prefix'):
    adapters_lib.export_peft(adapter, str(tmp_path / 'peft'))
  reloaded = adapters_lib.load_adapter(os.path.join(env['root'], 'prefix0'))
  for name, value in adapter.tensors.items():
    np.testing.assert_array_equal(reloaded.tensors[name], value)


def test_hart_fusion_adapter_stores_states_and_serves_them(env, tmp_path):
  """The stored fusion keys/values reproduce the in-graph (hypermodel + T5) forward,
  which projects the fusion states per query; a version-1 adapter (raw states)
  still loads and serves the same."""
  from hyperflax.data.examples import Example
  from hyperflax.data.fewshot import Episode
  workdir = make_workdir(str(tmp_path / 'hart'), env['model_dir'], 'hart', seed=2,
                         decoder_layers=1, fusion_in_decoder=True)
  task = env['tasks'][1]
  examples = write_examples(str(tmp_path / 'task.jsonl'), task)
  hm = hypertune.load_hypermodel(workdir)
  adapter = hypertune.hypertune(hm, examples)
  assert adapter.manifest['fusion']['length'] == 64 and adapter.manifest['format_version'] == 2
  assert adapter.manifest['fusion']['precomputed_kv'] and not adapter.has_fusion_states
  cfg = hm.t5_config
  for kv in 'kv':  # per decoder layer, per fusion position: keys/values, no states
    assert adapter.tensors[f'decoder/cross/fusion/{kv}'].shape == (
        cfg.num_decoder_layers, 64, cfg.inner_dim)
  ids, _, _ = hm.converter.hyper_ids(Episode('t', Example('', ''), tuple(task.demos[:16])))
  assert int(adapter.tensors['fusion/mask'].sum()) == len(ids)  # the real few-shot tokens
  with pytest.raises(ValueError, match='fusion'):
    adapters_lib.export_peft(adapter, str(tmp_path / 'peft'))
  adapters_lib.save_adapter(adapter, str(tmp_path / 'adapter'))
  server = env['server']
  server.add_adapter('hart', str(tmp_path / 'adapter'))
  texts, targets = [q.input for q in task.queries], [q.target for q in task.queries]
  ours = server.logits(texts, targets, 'hart')
  # Reference: the training forward, generating prefixes + fusion states in-graph.
  hyper_inputs = np.zeros((len(texts), 64), np.int32)
  hyper_inputs[:, :len(ids)] = ids
  enc, dec, _, _ = server._target_batch(texts, targets)  # pylint: disable=protected-access
  batch = {'hyper_inputs': jnp.asarray(hyper_inputs), 'encoder_inputs': jnp.asarray(enc),
           'decoder_inputs': jnp.asarray(dec)}
  want, aux = jax.jit(hm.exp.forward)({'hyper': hm.hyper_params},
                                      {'downstream': hm.downstream_params()}, batch)
  assert aux['fusion_states'].shape == (len(texts), 64, 32)
  np.testing.assert_allclose(ours, np.asarray(want), atol=1e-5, rtol=0)
  # Version 1 stored the raw states: written by hand here, it loads, is
  # projected once on registration, and serves the same logits.
  v1 = adapters_lib.from_generated(*hm._generate(  # pylint: disable=protected-access
      hm.hyper_params, jnp.asarray(hyper_inputs[:1])), dict(adapter.manifest))
  assert v1.has_fusion_states and 'decoder/cross/fusion/k' not in v1.tensors
  v1.manifest['format_version'] = 1
  adapters_lib.save_adapter(v1, str(tmp_path / 'v1'))
  assert adapters_lib.load_adapter(str(tmp_path / 'v1')).has_fusion_states
  server.add_adapter('hart_v1', str(tmp_path / 'v1'))
  assert not server.adapters['hart_v1'].has_fusion_states
  np.testing.assert_allclose(server.logits(texts, targets, 'hart_v1'), ours, atol=1e-5, rtol=0)
  v1.manifest['format_version'] = 99
  adapters_lib.save_adapter(v1, str(tmp_path / 'v99'))
  with pytest.raises(ValueError, match='version 99 is not readable'):
    adapters_lib.load_adapter(str(tmp_path / 'v99'))


def test_predict_cli_mixes_tasks_and_matches_the_api(env, tmp_path):
  server, tasks = env['server'], env['tasks']
  lines, expected_names = [], []
  for q in range(4):
    for t in range(2):
      query = tasks[t].queries[q]
      row = {'input': query.input, 'adapter': f'a{t}'}
      if q % 2:
        row['options'] = list(query.options)
      lines.append(row)
      expected_names.append(f'lora{t}')
  inputs = tmp_path / 'queries.jsonl'
  inputs.write_text(''.join(json.dumps(r) + '\n' for r in lines))
  args = ['--model', env['model_dir'], '--adapter', f'a0={env["adapters"][0]}',
          '--adapter', f'a1={env["adapters"][1]}', '--inputs', str(inputs), '--batch-size', '4']
  for decode in ('greedy', 'beam'):
    out = tmp_path / f'{decode}.jsonl'
    assert predict.main(args + ['--out', str(out), '--decode', decode, '--num-beams', '3']) == 0
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert [g['adapter'] for g in got] == [r['adapter'] for r in lines]
    api = serving.predict(server, expected_names, lines, method=decode, num_beams=3)
    for g, a, r in zip(got, api, lines):
      assert g['prediction'] == a['prediction']
      if 'options' in r:
        assert g['prediction'] in r['options']
        np.testing.assert_allclose(g['scores'], a['scores'], atol=1e-6)
      else:
        assert g['tokens'] == a['tokens']
  missing = tmp_path / 'missing.jsonl'
  missing.write_text(json.dumps({'input': 'x'}) + '\n')
  assert predict.main(args[:6] + ['--inputs', str(missing)]) == 2  # which adapter?


def test_predict_api_stays_warm(env):
  """Repeated predict calls reuse the cached server and compiled decoder."""
  rows = [q.input for q in env['tasks'][0].queries]
  first = serving.predict(env['model_dir'], env['adapters'][0], rows)
  size = greedy_decode._cache_size()  # pylint: disable=protected-access
  again = serving.predict(env['model_dir'], env['adapters'][0], rows[::-1])
  assert greedy_decode._cache_size() == size  # pylint: disable=protected-access
  assert serving.get_server(env['model_dir']) is serving.get_server(env['model_dir'])
  assert [r['prediction'] for r in again] == [r['prediction'] for r in first][::-1]


def test_read_queries_takes_objects_and_bare_strings_and_names_bad_lines(tmp_path):
  from hyperflax.predict import read_queries
  path = tmp_path / 'q.jsonl'
  path.write_text('"hello"\n\n{"input": "x", "options": ["a", "b"]}\n')
  assert read_queries(str(path)) == [{'input': 'hello'}, {'input': 'x', 'options': ['a', 'b']}]
  path.write_text('"hello"\n{"input": 3}\n')
  with pytest.raises(ValueError, match=rf'{path}:2: needs a string field "input"'):
    read_queries(str(path))
  path.write_text('"hello"\nnot json\n')
  with pytest.raises(ValueError, match=rf'{path}:2: malformed JSON line'):
    read_queries(str(path))
  path.write_text('{"input": "x", "options": []}\n')
  with pytest.raises(ValueError, match=rf'{path}:1: "options" must be a non-empty list'):
    read_queries(str(path))
