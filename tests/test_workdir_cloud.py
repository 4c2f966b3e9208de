"""A `gs://` workdir, on a mock GCS that never leaves this machine.

The mock: fsspec's `gs`/`gcs` protocol is a directory-backed filesystem (so
etils.epath takes its real fsspec code path for `gs://`, as it does without
TensorFlow), and orbax's TensorStore kvstore for `gs://` paths is the `file`
driver under the same directory. Everything above those two seams is the real
code: epath URL paths, orbax's GCS branches (commit-file atomicity instead of
renames, GCS deletion), our atomic writes, the lock, metrics/TensorBoard/PNG.

Not testable without a bucket: TensorStore's real GCS driver (HTTP, auth,
retries), gcsfs itself, hierarchical-namespace buckets (orbax asks the GCS API),
and concurrent lock creation on an object store (no O_EXCL there).
"""

import glob
import importlib
import json
import logging
import os
import sys
import types

import jax
import numpy as np
import pytest

import fault_helpers as fh
from hyperflax import workdir as workdir_lib


@pytest.fixture
def mock_gcs(tmp_path, monkeypatch):
  from etils.epath import backend, gpath
  from fsspec.implementations.dirfs import DirFileSystem
  from fsspec.implementations.local import LocalFileSystem
  from orbax.checkpoint._src.path import gcs_utils
  storage = tmp_path / 'gcs-storage'
  storage.mkdir()

  class MockGCS(DirFileSystem):
    protocol = ('gs', 'gcs')
    cachable = False

    def __init__(self, *args, **kwargs):
      super().__init__(path=str(storage), fs=LocalFileSystem())

    @classmethod
    def _strip_protocol(cls, path):
      path = os.fspath(path)
      for prefix in ('gs://', 'gcs://'):
        if path.startswith(prefix):
          path = path[len(prefix):]
      return path.rstrip('/')

  registry = importlib.import_module('fsspec.registry')  # the module (fsspec.registry is a dict)
  for name in ('gs', 'gcs'):
    monkeypatch.setitem(registry._registry, name, MockGCS)  # pylint: disable=protected-access
  # etils.epath: its fsspec backend, not tf.io.gfile (which would try the network).
  monkeypatch.setattr(gpath, '_is_tf_installed', lambda: False)
  monkeypatch.setattr(gcs_utils, 'is_hierarchical_namespace_enabled', lambda path: False)
  monkeypatch.setitem(sys.modules, 'google.cloud.storage', types.ModuleType('storage'))

  def kvstore(path):
    bucket, rel = gcs_utils.parse_gcs_path(path, add_trailing_slash=False)
    return {'driver': 'file', 'path': str(storage / bucket / rel)}
  monkeypatch.setattr(gcs_utils, 'get_kvstore_for_gcs', kvstore)
  backend.fsspec_backend._get_filesystem.cache_clear()  # pylint: disable=protected-access
  cwd = tmp_path / 'cwd'
  cwd.mkdir()
  monkeypatch.chdir(cwd)
  yield storage
  backend.fsspec_backend._get_filesystem.cache_clear()  # pylint: disable=protected-access
  # Nothing may land on the local disk under a URL-shaped name.
  assert not glob.glob(str(cwd / '**' / 'gs:*'), recursive=True)
  assert not glob.glob(os.path.join(fh.ROOT, 'gs:*'))


def test_as_path_keeps_urls_and_makes_local_paths_absolute(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert str(workdir_lib.as_path('gs://bucket/run/x')) == 'gs://bucket/run/x'
  assert str(workdir_lib.as_path('s3://bucket/run')) == 's3://bucket/run'
  assert str(workdir_lib.as_path('runs/a')) == str(tmp_path / 'runs' / 'a')
  assert workdir_lib.is_url('gs://b/x') and not workdir_lib.is_url('/gs:/b/x')
  if not workdir_lib._importable('google.cloud.storage'):  # pylint: disable=protected-access
    with pytest.raises(workdir_lib.WorkdirError, match='pip install .*google-cloud-storage'):
      workdir_lib.Workdir('gs://bucket/run')


def test_tiny_training_on_gcs_resumes_bit_exactly(mock_gcs, tmp_path_factory, caplog):
  from hyperflax import hypertune
  from hyperflax.train import train
  base = fh.trained_workdir(tmp_path_factory)  # the same run, 4 steps in one go, locally
  url = 'gs://bucket/runs/lora'
  with fh.env(HYPERFLAX_DATA_DIR=base['data']):
    first = train(fh.tiny(**{'train.num_steps': 2, 'train.tensorboard': True}), url)
    assert int(first['state'].step) == 2
    with caplog.at_level(logging.INFO):
      resumed = train(fh.tiny(**{'train.tensorboard': True}), url)
  assert any('resumed from step 2' in r.getMessage() for r in caplog.records)
  run = mock_gcs / 'bucket' / 'runs' / 'lora'
  for name in ('config.json', 'run.json', 'metrics.jsonl', 'loss.png',
               'checkpoints/2/CHECKSUMS.json', 'checkpoints/4/CHECKSUMS.json'):
    assert (run / name).is_file(), name
  assert glob.glob(str(run / 'tb' / 'events.out.tfevents.*'))
  assert not (run / 'LOCK').exists()
  steps = [json.loads(line)['step'] for line in (run / 'metrics.jsonl').read_text().splitlines()]
  assert steps == [1, 2, 3, 4]
  # Bit-exact: the resumed run equals the uninterrupted local one.
  reference = workdir_lib.load_trainable(base['workdir'])
  for a, b in zip(jax.tree.leaves(resumed['trainable']), jax.tree.leaves(reference)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  step, from_url = workdir_lib.load_trainable(url, with_step=True)
  assert step == 4
  for a, b in zip(jax.tree.leaves(from_url), jax.tree.leaves(reference)):
    np.testing.assert_array_equal(a, b)
  # Loaders open the URL workdir the same way (config.json, tokenizer, checkpoint).
  hm = hypertune.load_hypermodel(url)
  assert hm.step == 4 and hm.checkpoint == url


def test_lock_and_atomic_writes_on_gcs(mock_gcs):
  wd = workdir_lib.Workdir('gs://bucket/locked')
  wd.lock.acquire()
  assert (mock_gcs / 'bucket' / 'locked' / 'LOCK').is_file()
  other = workdir_lib.Lock('gs://bucket/locked')
  other.record = dict(other.record, host='another-host')
  other.path.write_text(json.dumps(other.record))
  with pytest.raises(workdir_lib.WorkdirError, match='in use by pid .* on another-host'):
    workdir_lib.Workdir('gs://bucket/locked').lock.acquire()
  workdir_lib.write_atomic('gs://bucket/locked/x.json', '{"a": 1}')
  assert workdir_lib.read_json('gs://bucket/locked/x.json') == {'a': 1}


def test_adapters_and_peft_exports_go_to_the_bucket(mock_gcs, tmp_path_factory):
  from hyperflax import adapters, hypertune
  from hyperflax.data.examples import Example
  base = fh.trained_workdir(tmp_path_factory)
  with fh.env(HYPERFLAX_DATA_DIR=base['data']):
    hm = hypertune.load_hypermodel(base['workdir'])
    adapter = hypertune.hypertune(hm, [Example('a cat 12', 'red'), Example('a dog 13', 'blue')])
  adapters.save_adapter(adapter, 'gs://bucket/adapters/t0')
  stored = mock_gcs / 'bucket' / 'adapters' / 't0'
  assert (stored / adapters.MANIFEST_FILE).is_file() and (stored / adapters.TENSORS_FILE).is_file()
  back = adapters.load_adapter('gs://bucket/adapters/t0')
  assert back.manifest == adapter.manifest and back.tensors.keys() == adapter.tensors.keys()
  for name, value in adapter.tensors.items():
    np.testing.assert_array_equal(back.tensors[name], value)
  adapters.export_peft(adapter, 'gs://bucket/peft/t0')
  assert (mock_gcs / 'bucket' / 'peft' / 't0' / adapters.PEFT_CONFIG_FILE).is_file()
  imported = adapters.import_peft('gs://bucket/peft/t0', hm.t5_config)
  local = adapters.import_peft(adapters.export_peft(adapter, str(tmp_path_factory.mktemp('p'))),
                               hm.t5_config)
  for name, value in local.tensors.items():
    np.testing.assert_array_equal(imported.tensors[name], value)
  with pytest.raises(FileNotFoundError, match='gs://bucket/adapters/none: no'):
    adapters.load_adapter('gs://bucket/adapters/none')
