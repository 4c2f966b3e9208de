"""SeqIO registrations (`tasks/`) and P3's TFRecord layout (import TF)."""

import importlib
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hyperflax.data import registry, sources_p3, vocab  # noqa: E402

SHARED = Path(os.environ.get('HYPERFLAX_SHARED_DATA') or
              ROOT.parent / 'shared' / 'data')
needs_shared = pytest.mark.skipif(
    not (SHARED / 't5' / 'spiece.model').is_file(),
    reason=f'shared data not found at {SHARED} (set HYPERFLAX_SHARED_DATA)')

REQUIRED = {'caclm_c4', 'p3_t0_train', 'p3_heldout', 'metaicl_hr_to_lr',
            'metaicl_non_nli_to_nli', 'metaicl_non_class_to_class', 'sni_def',
            'sni_def_2pos', 'synthetic_fewshot'}


@pytest.fixture(scope='module')
def tasks_pkg():
  seqio = pytest.importorskip('seqio')
  import tasks
  importlib.reload(tasks)  # re-import must be safe (idempotent registration)
  tasks.register_all(data_dir=SHARED if SHARED.is_dir() else None)
  return tasks, seqio


def test_all_names_registered_idempotently(tasks_pkg):
  tasks, seqio = tasks_pkg
  # Training-only streams of query_in_decoder rows (synthetic_recall) have no SeqIO task.
  fewshot = {n for n in registry.names() if registry.REGISTRY[n].kind != 'recall'}
  assert REQUIRED <= set(tasks.TASK_NAMES) == fewshot != set(registry.names())
  before = set(seqio.TaskRegistry.names())
  again = tasks.register_all(data_dir=SHARED)
  assert set(again) == set(tasks.TASK_NAMES)
  assert set(seqio.TaskRegistry.names()) == before
  assert REQUIRED <= before
  assert tasks.MIXTURE in seqio.MixtureRegistry.names()
  import hyperflax.tasks  # the root package is a thin entry point to it
  assert tasks.register_all is hyperflax.tasks.register_all


@needs_shared
def test_seqio_task_matches_core_pipeline(tasks_pkg):
  tasks, seqio = tasks_pkg
  lengths = {'hyper_inputs': 1024, 'inputs': 384, 'targets': 128}
  ds = seqio.get_mixture_or_task('metaicl_hr_to_lr').get_dataset(
      lengths, split='train', shuffle=False, seed=4)
  got = [ex for _, ex in zip(range(3), ds.as_numpy_iterator())]
  core = registry.get_dataset('metaicl_hr_to_lr', batch_size=1, seed=4,
                              data_dir=SHARED)
  for step, ex in enumerate(got):
    b = core.batch(step)
    for feat, field in (('hyper_inputs', 'hyper_inputs'),
                        ('inputs', 'encoder_inputs'), ('targets', 'targets')):
      want = b[field][0][b[field][0] != 0]
      assert ex[feat].tolist() == want.tolist(), feat
    assert ex['hyper_inputs'][0] == vocab.X_ID and ex['hyper_inputs'][-1] == vocab.EOS_ID

  conv = tasks.HyperEncDecFeatureConverter()
  out = next(conv(seqio.get_mixture_or_task('sni_def_2pos').get_dataset(
      lengths, split='train', shuffle=False), lengths).as_numpy_iterator())
  assert {k: v.shape for k, v in out.items()} == {
      'hyper_input_tokens': (1024,), 'encoder_input_tokens': (384,),
      'decoder_input_tokens': (128,), 'decoder_target_tokens': (128,),
      'decoder_loss_weights': (128,)}
  assert out['decoder_input_tokens'][0] == 0
  assert (out['decoder_input_tokens'][1:5] == out['decoder_target_tokens'][:4]).all()


@needs_shared
def test_seqio_eval_split_carries_raw_strings(tasks_pkg):
  _, seqio = tasks_pkg
  lengths = {'hyper_inputs': 1024, 'inputs': 384, 'targets': 128}
  ds = seqio.get_mixture_or_task('sni_def').get_dataset(
      lengths, split='test', shuffle=False)
  ex = next(ds.as_numpy_iterator())
  first = registry.get_eval_tasks('sni_def', 'test', data_dir=SHARED)[0]
  assert ex['task'].decode() == first.name and ex['example_index'] == 0
  assert ex['inputs_pretokenized'].decode() == first.queries[0].input
  assert ex['targets_pretokenized'].decode() == first.queries[0].target
  h = ex['hyper_inputs'].tolist()
  assert h[0] == vocab.X_ID and vocab.Y_ID not in h  # Def only: no examples
  caclm = seqio.get_mixture_or_task('caclm_c4').get_dataset(
      {'hyper_inputs': 400, 'inputs': 40, 'targets': 128}, split='train',
      shuffle=False)
  c = next(caclm.as_numpy_iterator())
  assert c['hyper_inputs'][0] == vocab.sentinel_id(0)
  assert len(c['inputs']) == 33 and len(c['targets']) == 128


def _write_p3(root, tok_lengths):
  import tensorflow as tf
  def feat(inp, tgt, n_tokens, choices=()):
    f = {'inputs_pretokenized': tf.train.Feature(bytes_list=tf.train.BytesList(value=[inp.encode()])),
         'targets_pretokenized': tf.train.Feature(bytes_list=tf.train.BytesList(value=[tgt.encode()])),
         'inputs': tf.train.Feature(int64_list=tf.train.Int64List(value=[5] * n_tokens))}
    if choices:
      f['answer_choices'] = tf.train.Feature(
          bytes_list=tf.train.BytesList(value=[c.encode() for c in choices]))
    return tf.train.Example(features=tf.train.Features(feature=f)).SerializeToString()
  for task, n in tok_lengths.items():
    d = root / 'data' / task
    d.mkdir(parents=True)
    with tf.io.TFRecordWriter(str(d / 'train.tfrecord-00000-of-00001')) as w:
      for i in range(3):
        w.write(feat(f'{task} question {i}?', 'yes' if i % 2 else 'no', n,
                     ('yes', 'no')))


def test_p3_tfrecord_layout(tmp_path):
  pytest.importorskip('tensorflow')
  _write_p3(tmp_path, {'ag_news_classify': 40, 'xsum_long': 500,
                       'super_glue_rte_GPT_3_style': 30})
  tasks = sources_p3.t0_train_tasks(tmp_path, tokenizer=None, layout='auto')
  assert [t.name for t in tasks] == ['ag_news_classify']  # long + held-out out
  ex = tasks[0].examples
  assert [(e.input, e.target, e.options) for e in ex] == [
      (f'ag_news_classify question {i}?', 'yes' if i % 2 else 'no', ('yes', 'no'))
      for i in range(3)]
  assert ex[1].origin.endswith('train.tfrecord-00000-of-00001:record 1')

  import tensorflow as tf
  bad = tmp_path / 'bad' / 'data' / 'broken'
  bad.mkdir(parents=True)
  with tf.io.TFRecordWriter(str(bad / 'train.tfrecord-00000-of-00001')) as w:
    w.write(tf.train.Example().SerializeToString())
  with pytest.raises(ValueError, match=r"record 0: missing feature 'inputs_pretokenized'"):
    sources_p3.t0_train_tasks(tmp_path / 'bad', tokenizer=None)


def test_read_query_is_left_out_of_the_loss_weights():
  """`targets_read` ids at the start of `targets` (a query the decoder reads) get weight 0;
  without the feature the converter is seqio's; packing, which would drop it, is refused."""
  seqio = pytest.importorskip('seqio')
  tf = pytest.importorskip('tensorflow')
  from hyperflax.tasks.feature_converter import EncDecFeatureConverter
  targets = [[5, 6, 7, 1], [5, 9, 1], [8, 1]]
  lengths = {'inputs': 3, 'targets': 6}

  def convert(read, pack=False):
    features = {'inputs': tf.ragged.constant([[4, 1]] * 3).to_tensor(),
                'targets': tf.ragged.constant(targets).to_tensor()}
    if read is not None:
      features['targets_read'] = tf.constant(read, tf.int32)
    # Each row padded to its own length, as a SeqIO Task's examples are.
    ds = tf.data.Dataset.from_tensor_slices(features).map(
        lambda ex: {**ex, 'targets': tf.boolean_mask(ex['targets'], ex['targets'] > 0)})
    conv = EncDecFeatureConverter(pack=pack)
    return [ex['decoder_loss_weights'].tolist() for ex in conv(ds, lengths).as_numpy_iterator()]

  assert convert(None) == [[1, 1, 1, 1, 0, 0], [1, 1, 1, 0, 0, 0], [1, 1, 0, 0, 0, 0]]
  assert convert([2, 0, 9]) == [[0, 0, 1, 1, 0, 0], [1, 1, 1, 0, 0, 0], [0, 0, 0, 0, 0, 0]]
  plain = seqio.EncDecFeatureConverter(pack=False)
  ds = tf.data.Dataset.from_tensor_slices({'inputs': [[4, 1]], 'targets': [[5, 6, 1]]})
  want = next(plain(ds, lengths).as_numpy_iterator())
  got = next(EncDecFeatureConverter(pack=False)(ds, lengths).as_numpy_iterator())
  assert {k: v.tolist() for k, v in got.items()} == {k: v.tolist() for k, v in want.items()}
  with pytest.raises(ValueError, match='targets_read .* cannot be packed; use pack=False'):
    convert([1, 1, 1], pack=True)
