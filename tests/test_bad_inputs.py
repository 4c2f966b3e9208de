"""Bad inputs across the CLIs: each exits 2 with one line naming the file/flag/field.

The table is docs/ERRORS.md's (set HYPERFLAX_ERRORS_TABLE=PATH to write the
messages seen, as markdown rows).
"""

import json
import os
import re
import shutil

import pytest

import fault_helpers as fh

PREFIX = os.path.join(fh.ROOT, 'configs/hypert5_prefix_large.py')


@pytest.fixture(scope='module')
def env(tmp_path_factory):
  """A trained workdir, a tiny transformers T5 and small broken files."""
  from hf_fixtures import build_torch_t5, save_torch_t5
  from hyperflax import adapters
  base = fh.trained_workdir(tmp_path_factory)
  d = tmp_path_factory.mktemp('bad')
  e = {'run': base['workdir'], 'dir': str(d)}
  e['hf'] = save_torch_t5(build_torch_t5(), str(d / 'hf'))
  e['hf_cut'] = shutil.copytree(e['hf'], str(d / 'hf_cut'))
  _truncate(os.path.join(e['hf_cut'], 'model.safetensors'))
  os.makedirs(d / 'bert')
  (d / 'bert' / 'config.json').write_text(json.dumps({
      'model_type': 'bert', 'architectures': ['BertModel'], 'hidden_size': 32,
      'num_hidden_layers': 2, 'vocab_size': 100}))
  os.makedirs(d / 'adapter')
  (d / 'adapter' / adapters.MANIFEST_FILE).write_text(json.dumps(
      {'format': adapters.FORMAT, 'format_version': 1}))
  (d / 'adapter' / adapters.TENSORS_FILE).write_bytes(b'\x40\x00\x00\x00\x00\x00\x00\x00{"a"')
  (d / 'empty.jsonl').write_text('')
  (d / 'latin1.jsonl').write_bytes(b'{"input": "a", "output": "b"}\n{"input": "caf\xe9"}\n')
  (d / 'broken.jsonl').write_text('{"input": "a", "output": \n')
  (d / 'ok.jsonl').write_text('{"input": "a b", "output": "c"}\n')
  e['no_run'] = str(d / 'no_run')
  os.makedirs(e['no_run'])
  e['empty_config'] = shutil.copytree(base['workdir'], str(d / 'empty_config'))
  open(os.path.join(e['empty_config'], 'config.json'), 'w').close()
  e['lora_workdir'] = shutil.copytree(base['workdir'], str(d / 'lora_workdir'))
  from hyperflax import convert
  assert convert.main(['hf-to-flax', '--hf', e['hf'], '--out', str(d / 'flax')]) == 0
  os.remove(d / 'flax' / 'params' / '_METADATA')
  e['classic_demo'] = str(d / 'classic_demo')
  os.makedirs(d / 'classic_demo' / 'mtf_lora')
  return e


def _truncate(path):
  with open(path, 'r+b') as f:
    f.truncate(os.path.getsize(path) // 2)


def _train(*extra):
  return ('train', ['train', *fh.cli_args(), *extra])


# (id, entry point + argv from env, what the one line must name)
CASES = [
    ('misspelled override', lambda e: _train(f'--workdir={e["dir"]}/w',
                                             '--config.trian.num_steps=3'),
     ["unknown field 'trian'", 'Did you mean "train"']),
    ('new key in a free-form section', lambda e: _train(
        f'--workdir={e["dir"]}/w', '--config.model.overrides.vocab_size=512'),
     ["--config.model.overrides.vocab_size (no field 'vocab_size' under 'model.overrides')"]),
    ('new nested key, beside a valid override of the same name', lambda e: _train(
        f'--workdir={e["dir"]}/w', '--config.train.num_steps=2',
        '--config.model.overrides.num_steps.x=1'),
     ["--config.model.overrides.num_steps.x (no field 'num_steps' under 'model.overrides')"]),
    ('missing config file', lambda e: ('train', ['train', '--config=configs/nope.py',
                                                 f'--workdir={e["dir"]}/w']),
     ['--config=configs/nope.py: no such config file']),
    ('unknown config variant', lambda e: ('train', [
        'train', f'--config={fh.ROOT}/configs/hypert5_lora_large.py:tnyi',
        f'--workdir={e["dir"]}/w']), ["unknown config variant 'tnyi'"]),
    ('negative batch size', lambda e: _train(f'--workdir={e["dir"]}/w',
                                             '--config.data.batch_size=-4'),
     ['config.data.batch_size=-4', '>= 1']),
    ('float64 dtype', lambda e: _train(f'--workdir={e["dir"]}/w', '--config.model.dtype=float64'),
     ["config.model.dtype='float64'", 'float32, bfloat16, float16']),
    ('one length', lambda e: _train(f'--workdir={e["dir"]}/w', '--config.data.lengths=64'),
     ['config.data.lengths=(64,)', '3 positive integers']),
    ('unknown hyper kind', lambda e: _train(f'--workdir={e["dir"]}/w',
                                            '--config.hyper.kind=lorra'),
     ["config.hyper.kind='lorra'", 'prefix_mlp']),
    ('zero learning rate', lambda e: _train(f'--workdir={e["dir"]}/w',
                                            '--config.optim.learning_rate=0'),
     ['config.optim.learning_rate=0', '> 0']),
    ('not an integer', lambda e: _train(f'--workdir={e["dir"]}/w',
                                        '--config.data.batch_size=abc'),
     ['--config.data.batch_size=abc', 'invalid literal']),
    ('no --workdir', lambda e: _train(), ['--workdir required']),
    ('misspelled flag', lambda e: _train('--wokdir=/tmp/x'), ["'wokdir'"]),
    ('another kind on a run', lambda e: ('train', [
        'train', f'--config={PREFIX}:tiny', f'--workdir={e["lora_workdir"]}']),
     ["hyper.kind='lora' (now 'prefix')", 'lora_workdir']),
    ('evaluate: not a run', lambda e: ('evaluate', ['evaluate', f'--workdir={e["no_run"]}']),
     ['no_run: no config.json']),
    ('evaluate: config of another kind', lambda e: ('evaluate', [
        'evaluate', f'--config={PREFIX}:tiny', f'--workdir={e["run"]}']),
     ["hyper.kind='prefix' (the run has 'lora')", 'drop --config']),
    ('evaluate: empty config.json', lambda e: ('evaluate', [
        'evaluate', f'--workdir={e["empty_config"]}']), ['config.json: not valid JSON',
                                                         'empty file']),
    ('hypertune: non-UTF-8 JSONL', lambda e: ('hypertune', [
        '--checkpoint', e['run'], '--examples', f'{e["dir"]}/latin1.jsonl', '--out',
        f'{e["dir"]}/a1']), ['latin1.jsonl:2: not UTF-8']),
    ('hypertune: malformed JSONL', lambda e: ('hypertune', [
        '--checkpoint', e['run'], '--examples', f'{e["dir"]}/broken.jsonl', '--out',
        f'{e["dir"]}/a2']), ['broken.jsonl:1: malformed JSON line']),
    ('hypertune: truncated adapter.safetensors', lambda e: ('hypertune', [
        '--adapter', f'{e["dir"]}/adapter', '--export-peft', f'{e["dir"]}/peft']),
     ['adapter/adapter.safetensors: unreadable safetensors']),
    ('hypertune: not a run', lambda e: ('hypertune', [
        '--checkpoint', e['no_run'], '--examples', f'{e["dir"]}/ok.jsonl', '--out',
        f'{e["dir"]}/a3']), ['no_run: no config.json']),
    ('predict: empty input', lambda e: ('predict', [
        '--model', e['hf'], '--vocab', 'words', '--lengths', '16', '8', '--inputs',
        f'{e["dir"]}/empty.jsonl']), ['empty.jsonl: no queries']),
    ('predict: truncated model.safetensors', lambda e: ('predict', [
        '--model', e['hf_cut'], '--vocab', 'words', '--lengths', '16', '8', '--inputs',
        f'{e["dir"]}/ok.jsonl']), ['hf_cut/model.safetensors: unreadable safetensors']),
    ('convert: a BERT config.json', lambda e: ('convert', [
        'hf-to-flax', '--hf', f'{e["dir"]}/bert', '--out', f'{e["dir"]}/c1']),
     ["bert/config.json: model_type='bert'"]),
    ('convert: params without _METADATA', lambda e: ('convert', [
        'flax-to-hf', '--checkpoint', f'{e["dir"]}/flax', '--out', f'{e["dir"]}/c2']),
     ['flax/params: no _METADATA']),
    ('convert: a training workdir', lambda e: ('convert', [
        'flax-to-hf', '--checkpoint', e['run'], '--out', f'{e["dir"]}/c3']),
     ['is a training workdir', '--export-downstream']),
    ('convert: no such directory', lambda e: ('convert', [
        'hf-to-flax', '--hf', f'{e["dir"]}/missing', '--out', f'{e["dir"]}/c4']),
     ['missing/config.json: No such file or directory']),
    ('peft_tuning: not a run', lambda e: ('peft_tuning', [
        'peft_tuning', f'--workdir={e["dir"]}/pt', f'--hyper_workdir={e["no_run"]}']),
     ['no_run: no config.json']),
    ('demo: unknown hypermodel', lambda e: ('demo', [
        'demo', f'--workdir={e["dir"]}/d1', '--kinds=hart,hyperlora']),
     ["unknown hypermodel variant(s) ['hyperlora']", 'known:']),
    ('demo: a --classic run in the workdir', lambda e: ('demo', [
        'demo', f'--workdir={e["classic_demo"]}']),
     ['classic_demo: holds a --classic demo run', 'another --workdir']),
]


def _main(name):
  import importlib
  return importlib.import_module(f'hyperflax.{name}').main


@pytest.mark.parametrize('case', CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_named_line_and_exit_2(env, case, capsys):
  label, build, expected = case
  name, argv = build(env)
  rc = _main(name)(argv)
  err = capsys.readouterr().err
  # Everything but our timestamped log lines ("W 12:34:56 ...") is the error line.
  lines = [ln for ln in err.strip().splitlines()
           if ln.strip() and not re.match(r'[DIWEF] \d\d:\d\d:\d\d ', ln)]
  assert rc == 2, err[-3000:]
  assert 'Traceback' not in err and len(lines) == 1 and 'error: ' in lines[0], err[-3000:]
  for text in expected:
    assert text in lines[0], lines[0]
  table = os.environ.get('HYPERFLAX_ERRORS_TABLE')
  if table:
    defaults = set(fh.cli_args()[1:])  # the tiny test settings, not the point of the row
    shown = ' '.join(a for a in (argv[1:] if name in ('train', 'evaluate', 'peft_tuning', 'demo')
                                 else argv) if a not in defaults)
    message = lines[0]
    for path, short in ((env['dir'], '$T'), (env['run'], '$RUN'), (fh.ROOT + '/', '')):
      shown, message = shown.replace(path, short), message.replace(path, short)
    with open(table, 'a') as f:
      message = message.split(' error: ', 1)[-1].replace('|', '\\|')
      f.write(f'| {label} | `{name} {shown}` | {message} |\n')


@pytest.mark.parametrize('error', [KeyError('params'), TypeError('bad operand'),
                                   IndexError('list index out of range')])
def test_an_internal_error_is_a_bug_with_its_traceback_and_exit_1(error, capsys):
  from hyperflax import cli

  def body():
    raise error
  assert cli.guard(body, verbose=False, prog='x') == 1
  err = capsys.readouterr().err
  assert 'Traceback' in err and 'x: internal error' in err.strip().splitlines()[-1], err


def test_a_misspelled_override_is_still_a_user_error(capsys):
  from hyperflax import cli

  def body():
    raise KeyError("'num_stepz'\nDid you mean 'num_steps' instead of 'num_stepz'?")
  assert cli.guard(body, verbose=False, prog='x') == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert err == ["x: error: --config override names an unknown field 'num_stepz': Did you mean "
                 "'num_steps' instead of 'num_stepz'?"], err
