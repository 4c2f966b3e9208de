"""Adapters on disk: manifest, PEFT export/import against `peft` + transformers,
downstream identity, HyperT5+ downstream export, hyper-init."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from test_serving_utils import (MODEL, make_model_dir, make_workdir, shared_env, torch_inputs,
                                until_eos, write_examples)
from hyperflax import adapters as adapters_lib
from hyperflax import hypertune, predict, serving
from hyperflax.pretrained import load_pretrained


@pytest.fixture(scope='module')
def env(tmp_path_factory):
  return shared_env(tmp_path_factory)


def _torch_models(model_dir, peft_dir):
  from peft import PeftModel
  from transformers import T5ForConditionalGeneration
  base = T5ForConditionalGeneration.from_pretrained(model_dir).eval()
  return PeftModel.from_pretrained(base, peft_dir).eval()


def _torch_logits(model, inputs):
  with torch.no_grad():
    return model(**inputs).logits.numpy()


def test_manifest_records_what_and_for_which_model(env):
  adapter_dir, task = env['adapters'][0], env['tasks'][0]
  with open(os.path.join(adapter_dir, 'manifest.json')) as f:
    manifest = json.load(f)
  assert (manifest['kind'], manifest['peft_type'], manifest['lora_rank']) == ('lora', 'lora', 2)
  assert manifest['fusion'] is None
  assert manifest['format_version'] == 1  # version 2 is only for stored fusion K/V
  shapes = {k: tuple(v['shape']) for k, v in manifest['tensors'].items()}
  d, inner, enc_layers, dec_layers = (MODEL['d_model'], MODEL['num_heads'] * MODEL['d_kv'],
                                      MODEL['num_layers'], MODEL['num_decoder_layers'])
  assert shapes['encoder/self/query/a'] == (enc_layers, d, 2)
  assert shapes['decoder/cross/value/b'] == (dec_layers, 2, inner)
  assert shapes['decoder/self/value/gate'] == (dec_layers,)
  assert len(shapes) == 3 * 2 * 3  # 3 sites x (q, v) x (a, b, gate)
  demos = manifest['demonstrations']
  assert demos['given'] == 16 and demos['used'] + demos['dropped_to_fit'] == 16
  assert demos['used'] > 0 and demos['dropped_to_fit'] > 0  # 64 tokens hold only a few
  assert demos['stored'] is False
  _, params = load_pretrained(env['model_dir'])
  assert manifest['downstream']['params_sha256'] == adapters_lib.params_sha256(params)
  with open(os.path.join(env['model_dir'], 'config.json')) as f:
    hf_config = json.load(f)
  for key in ('d_model', 'd_ff', 'num_layers', 'num_decoder_layers', 'vocab_size'):
    assert manifest['downstream']['config'][key] == hf_config[key]
  assert manifest['hypermodel']['step'] == 5
  assert manifest['hypermodel']['checkpoint'] == os.path.abspath(env['lora_workdir'])
  # The demonstrations themselves are nowhere in the adapter directory.
  blobs = b''.join(open(os.path.join(adapter_dir, n), 'rb').read()
                   for n in os.listdir(adapter_dir))
  assert not any(demo.input.encode() in blobs for demo in task.demos)


def test_peft_export_loads_in_torch_and_matches_predict(env):
  """PEFT + transformers give our greedy/beam generations, logits and scores."""
  model_dir, task = env['model_dir'], env['tasks'][0]
  server = env['server']
  ref = _torch_models(model_dir, env['pefts'][0])
  texts = [q.input for q in task.queries]
  targets = [q.target for q in task.queries]
  inputs, target_ids = torch_inputs(server, texts, targets)
  ours = server.logits(texts, targets, 'lora0')
  theirs = _torch_logits(ref, inputs)
  np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)
  with ref.disable_adapter():
    plain = _torch_logits(ref, inputs)
  assert np.abs(theirs - plain).max() > 1e-3  # the adapter is not a no-op
  # Rank scores: summed target log-likelihood from torch's logits.
  logp = torch.log_softmax(torch.tensor(theirs), -1).numpy()
  token = np.take_along_axis(logp, target_ids[..., None], -1)[..., 0]
  want = (token * (target_ids > 0)).sum(-1)
  got = [r['scores'][q.options.index(q.target)]
         for r, q in zip(server.score(texts, [q.options for q in task.queries], 'lora0'),
                         task.queries)]
  np.testing.assert_allclose(got, want, atol=1e-4)
  steps = server.lengths[1]
  gen_inputs = torch_inputs(server, texts)
  for kwargs in ({'num_beams': 1}, {'num_beams': 3}):
    with torch.no_grad():
      expected = ref.generate(**gen_inputs, max_new_tokens=steps, do_sample=False,
                              **kwargs).numpy()[:, 1:]
    method = 'greedy' if kwargs['num_beams'] == 1 else 'beam'
    rows = server.generate(texts, 'lora0', method=method, num_beams=kwargs['num_beams'])
    for row, want_row in zip(rows, expected):
      assert until_eos(row['tokens']) == until_eos(want_row)


def test_import_of_a_peft_library_adapter(env, tmp_path):
  """A LoRA trained with `peft` (per-module alpha) serves with the same logits."""
  from peft import LoraConfig, get_peft_model
  from transformers import T5ForConditionalGeneration
  model_dir, task = env['model_dir'], env['tasks'][1]
  base = T5ForConditionalGeneration.from_pretrained(model_dir).eval()
  cfg = LoraConfig(r=4, lora_alpha=8, target_modules=['q', 'v'], lora_dropout=0.0,
                   init_lora_weights=False, alpha_pattern={'EncDecAttention.q': 20})
  ref = get_peft_model(base, cfg).eval()
  ref.save_pretrained(str(tmp_path / 'peft'))
  server = env['server']
  adapter = adapters_lib.import_peft(str(tmp_path / 'peft'), server.config)
  server.add_adapter('imported', adapter)
  texts, targets = [q.input for q in task.queries], [q.target for q in task.queries]
  inputs, _ = torch_inputs(server, texts, targets)
  want = _torch_logits(ref, inputs)
  np.testing.assert_allclose(server.logits(texts, targets, 'imported'), want, atol=1e-4, rtol=0)
  # ... and exports back to PEFT unchanged in function.
  adapters_lib.export_peft(adapter, str(tmp_path / 'again'))
  again = _torch_models(model_dir, str(tmp_path / 'again'))
  np.testing.assert_allclose(_torch_logits(again, inputs), want, atol=1e-5, rtol=0)


def test_adapter_for_another_model_is_refused(env, tmp_path, capsys):
  from hyperflax import convert
  converted = str(tmp_path / 'converted')  # the same model as a hyperflax.convert dir: accepted
  convert.hf_to_flax(env['model_dir'], converted)
  assert serving.Server(converted).sha256 == env['server'].sha256
  serving.Server(converted).add_adapter('lora0', env['adapters'][0])
  other = str(tmp_path / 'other')
  make_model_dir(other, seed=7)
  with open(os.path.join(env['adapters'][0], 'manifest.json')) as f:
    made_for = json.load(f)['downstream']['params_sha256']
  server = serving.Server(other)
  with pytest.raises(adapters_lib.AdapterMismatchError) as err:
    server.add_adapter('lora0', env['adapters'][0])
  assert made_for in str(err.value) and server.sha256 in str(err.value)
  queries = tmp_path / 'q.jsonl'
  queries.write_text(json.dumps({'input': 'cat 12'}) + '\n')
  assert predict.main(['--model', other, '--adapter', env['adapters'][0],
                       '--inputs', str(queries)]) == 2
  assert made_for in capsys.readouterr().err
  wider = str(tmp_path / 'wider')
  make_model_dir(wider, d_ff=64)
  with pytest.raises(adapters_lib.AdapterMismatchError, match='d_ff: adapter 48 vs model 64'):
    serving.Server(wider).add_adapter('lora0', env['adapters'][0])


def test_hypert5_plus_exports_its_trained_downstream(env, tmp_path):
  """HyperT5+: the adapter fits the trained T5, exported through the HF conversion."""
  workdir = make_workdir(str(tmp_path / 'plus'), env['model_dir'], 'lora', seed=3,
                         train_downstream=True, hyper_from=env['lora_workdir'])
  examples = write_examples(str(tmp_path / 'task.jsonl'), env['tasks'][2])
  out, hf_dir, peft_dir = (str(tmp_path / n) for n in ('adapter', 'hf', 'peft'))
  assert hypertune.main(['--checkpoint', workdir, '--examples', examples, '--out', out,
                         '--export-downstream', hf_dir, '--export-peft', peft_dir]) == 0
  with pytest.raises(adapters_lib.AdapterMismatchError, match='sha256'):
    env['server'].add_adapter('plus', out)  # the untrained T5
  server = serving.Server(hf_dir, batch_size=4)
  server.add_adapter('plus', out)
  task = env['tasks'][2]
  texts, targets = [q.input for q in task.queries], [q.target for q in task.queries]
  inputs, _ = torch_inputs(server, texts, targets)
  np.testing.assert_allclose(server.logits(texts, targets, 'plus'),
                             _torch_logits(_torch_models(hf_dir, peft_dir), inputs),
                             atol=1e-4, rtol=0)


def test_hyper_init_starts_peft_tuning_at_the_adapter(env, tmp_path):
  """write_hyper_init -> a shared_lora checkpoint computing the adapter's function."""
  import flax.linen as nn
  from hyperflax.hyper import HyperConfig, abstract_params, build_hypermodel
  from hyperflax.train import load_trainable
  adapter = adapters_lib.load_adapter(env['adapters'][0])
  init_dir = str(tmp_path / 'init')
  assert hypertune.main(['--adapter', env['adapters'][0], '--hyper-init', init_dir]) == 0
  params = load_trainable(init_dir)['hyper']
  server = env['server']
  hyper = HyperConfig(kind='shared_lora', lora_rank=adapter.manifest['lora_rank'])
  fresh = nn.unbox(abstract_params(hyper, server.config))
  assert jax.tree.map(np.shape, params) == jax.tree.map(np.shape, fresh)  # train() accepts it
  task = env['tasks'][0]
  texts, targets = [q.input for q in task.queries], [q.target for q in task.queries]
  inputs, _ = torch_inputs(server, texts, targets)
  peft, _ = build_hypermodel(hyper, server.config).apply(
      {'params': params}, jnp.ones((len(texts), 1), jnp.int32))
  # SharedLoRA has no gate (it is folded into b); a unit gate keeps the slot
  # structure of the generated adapters, so the compiled function is reused.
  peft = jax.tree.map(lambda x: x, peft)
  for site in adapters_lib.peft_lib.flatten(peft):
    if site.endswith('/a'):
      stack, kind, proj, _ = site.split('/')
      peft[stack][kind][proj]['gate'] = jnp.ones(peft[stack][kind][proj]['a'].shape[:2])
  ours = serving.teacher_forced_logits(server.config, server.params,
                                       jnp.asarray(inputs['input_ids'].numpy()),
                                       jnp.asarray(inputs['decoder_input_ids'].numpy()), peft)
  np.testing.assert_allclose(np.asarray(ours), _torch_logits(
      _torch_models(env['model_dir'], env['pefts'][0]), inputs), atol=1e-4, rtol=0)


def test_bad_example_lines_name_file_and_line(tmp_path):
  path = tmp_path / 'bad.jsonl'
  path.write_text('{"input": "a", "output": "b"}\n\n{"input": "a"}\n')
  with pytest.raises(ValueError, match=rf'{path}:3: needs string fields'):
    hypertune.read_examples(str(path))
  path.write_text('{"input": "a", "target": "b"}\nnot json\n')
  with pytest.raises(ValueError, match=rf'{path}:2: malformed JSON line'):
    hypertune.read_examples(str(path))


@pytest.mark.slow  # one more hypermodel to initialise and compile (~15 s); pytest -m slow
def test_hyper_init_of_prefix_mlp_reproduces_the_generated_prefixes(env, tmp_path):
  """Prefix-MLP (Hyper) init: shared_prefix's embeddings + MLP give the adapter's prefixes."""
  from hyperflax.hyper import HyperConfig, build_hypermodel
  from hyperflax.train import load_trainable
  workdir = make_workdir(str(tmp_path / 'pmlp'), env['model_dir'], 'prefix_mlp', seed=4)
  adapter = hypertune.hypertune(hypertune.load_hypermodel(workdir),
                                os.path.join(env['root'], 'task0.jsonl'))
  assert adapter.tensors['init/embeddings'].shape == (2 * 4, MODEL['d_model'])
  assert hypertune.write_hyper_init(adapter, str(tmp_path / 'init')) == 'shared_prefix'
  params = load_trainable(str(tmp_path / 'init'))['hyper']
  hyper = HyperConfig(kind='shared_prefix', prefix_len=4)
  peft, _ = build_hypermodel(hyper, env['server'].config).apply(
      {'params': params}, jnp.ones((1, 1), jnp.int32))
  for name, value in adapters_lib.peft_lib.flatten(peft).items():
    np.testing.assert_allclose(np.asarray(value)[0], adapter.tensors[name], atol=1e-5)


def test_query_in_decoder_adapters_are_scored_in_their_training_format(tmp_path_factory):
  """A hypermodel trained with the query in the downstream's decoder records that in its
  adapters, and serving scores them with the rows its evaluation scores (the query read
  unscored in the decoder), not with the query in the encoder; generation and the PEFT
  export, which would read it in the encoder, are refused in one line."""
  import json
  import fault_helpers as fh
  from hyperflax import hypertune, serving
  from hyperflax.data.converters import Converter
  from hyperflax.data.examples import Example
  from hyperflax.data.fewshot import Episode
  base = fh.trained_workdir(tmp_path_factory)
  run = fh.copy_run(base, tmp_path_factory.mktemp('qd') / 'run')
  path = os.path.join(run, 'config.json')
  cfg = json.load(open(path))
  cfg['data']['options'] = {**(cfg['data'].get('options') or {}), 'query_in_decoder': True,
                            'query_marks': 'none'}
  json.dump(cfg, open(path, 'w'))
  with fh.env(HYPERFLAX_DATA_DIR=base['data']):
    hm = hypertune.load_hypermodel(run)
    adapter = hypertune.hypertune(hm, [Example('red apple', 'yes'), Example('blue sky', 'no')])
  assert adapter.manifest['query'] == {'in_decoder': True, 'marks': 'none'}
  assert adapters_lib._describe(adapter.manifest, adapter.tensors)['format_version'] == 3
  server = serving.Server(config=hm.t5_config, params=hm.downstream_params())
  server.add_adapter('task', adapter)
  options = ('yes', 'no')
  enc, dec, tgt, weights = server._target_batch(['green apple'] * 2, list(options), [options] * 2)
  lengths = hm.converter.lengths
  ref = Converter(hm.converter.tokenizer, lengths, 'hyper', query_in_decoder=True,
                  query_marks='none')
  rows = next(ref.choice_batches([Episode('t', Example('green apple', 'yes', options), ())], 2))
  np.testing.assert_array_equal(tgt, rows['targets'][:2])
  np.testing.assert_array_equal(weights, rows['target_weights'][:2])
  np.testing.assert_array_equal(enc, rows['encoder_inputs'][:2])
  query_len = len(hm.converter.ids('green apple'))
  assert (weights[:, :query_len] == 0).all() and weights[:, query_len].all()
  # The same tensors without the record would be scored with the query in the encoder.
  as_encoder = adapters_lib.Adapter(adapter.tensors, {k: v for k, v in adapter.manifest.items()
                                                      if k != 'query'})
  other = serving.Server(config=hm.t5_config, params=hm.downstream_params())
  other.add_adapter('task', as_encoder)
  assert not np.allclose(server.score(['green apple'], [options], 'task')[0]['scores'],
                         other.score(['green apple'], [options], 'task')[0]['scores'])
  with pytest.raises(ValueError, match='serve them separately'):
    server.add_adapter('other', as_encoder)
  with pytest.raises(ValueError, match='only rank scoring'):
    server.generate(['green apple'], 'task')
  with pytest.raises(ValueError, match='reads the query in its decoder'):
    adapters_lib.export_peft(adapter, str(tmp_path_factory.mktemp('peft')))
