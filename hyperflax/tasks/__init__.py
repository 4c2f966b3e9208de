"""SeqIO registrations of hyperflax's datasets (imports TensorFlow/SeqIO).

`import tasks` registers, as `seqio.Task`s, every name of
`hyperflax.data.names()`: caclm_c4, synthetic_caclm, p3_t0_train, p3_heldout,
metaicl_hr_to_lr, metaicl_non_nli_to_nli, metaicl_non_class_to_class,
sni_def, sni_def_2pos, synthetic_fewshot; plus the `seqio.Mixture`
`hyperflax_fewshot_mixture`. Data paths come from $HYPERFLAX_DATA_DIR (else
`<repo>/../shared/data`) and are read lazily, when a dataset is requested.
To point elsewhere, call `tasks.register_all(data_dir=..., vocab_path=...)`;
re-importing or re-registering replaces the previous registrations.

  import seqio, tasks
  ds = seqio.get_mixture_or_task('metaicl_hr_to_lr').get_dataset(
      {'hyper_inputs': 1024, 'inputs': 384, 'targets': 128}, split='train')
  batches = tasks.HyperEncDecFeatureConverter()(ds, {...same lengths...})

The trainer should not import this package: `hyperflax.data.get_dataset`
gives the same data without TensorFlow.
"""

from hyperflax.tasks.feature_converter import HyperEncDecFeatureConverter
from hyperflax.tasks.registrations import MIXTURE, register_all

TASK_NAMES = tuple(register_all())

__all__ = ['HyperEncDecFeatureConverter', 'MIXTURE', 'TASK_NAMES',
           'register_all']
