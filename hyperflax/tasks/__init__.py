"""SeqIO registrations of hyperflax's datasets (imports TensorFlow/SeqIO).

`import hyperflax.tasks` (or the root entry point `import tasks`) registers:

* one `seqio.Task` per name of `hyperflax.data.names()` (caclm_c4,
  synthetic_caclm, p3_t0_train, p3_heldout, metaicl_*, sni_def,
  sni_def_2pos, synthetic_fewshot): the examples a T5X user trains on, plus
  the `seqio.Mixture` `hyperflax_fewshot_mixture`; the CACLM Tasks carry
  their validation metrics (teacher-forced token accuracy and loss);
* evaluation Tasks per published unit with their postprocessors and metric
  functions (`eval_tasks`: T0-named `*_score_eval` rank classification for
  P3, per-task S-NI ROUGE-L / exact match, MetaICL, the synthetic suite) and
  the Mixtures `<collection>_eval` grouping them as the papers' tables do.

Data paths come from $HYPERFLAX_DATA_DIR (else `<repo>/../shared/data`);
collection Tasks read lazily, evaluation Tasks list their units at import (a
collection whose data is missing is skipped). To point elsewhere or use a
run's own lengths / K / seed, call `register_all(...)` or
`register_eval_tasks(...)`; re-registering replaces earlier registrations.

  import seqio, hyperflax.tasks
  ds = seqio.get_mixture_or_task('metaicl_hr_to_lr').get_dataset(
      {'hyper_inputs': 1024, 'inputs': 384, 'targets': 128}, split='train')
  batches = hyperflax.tasks.HyperEncDecFeatureConverter()(ds, {...same lengths...})

`python -m hyperflax.seqio_eval --workdir=...` runs a `seqio.Evaluator` over
these Tasks with a trained workdir. The trainer does not import this package:
`hyperflax.data.get_dataset` gives the same data without TensorFlow.
"""

from hyperflax.tasks.eval_tasks import (EVAL_COLLECTIONS, SUITES, EvalSuite, Unit,
                                        register_default_eval_tasks,
                                        register_eval_tasks)
from hyperflax.tasks.feature_converter import EncDecFeatureConverter, HyperEncDecFeatureConverter
from hyperflax.tasks.registrations import MIXTURE, register_all
from hyperflax.tasks.vocabulary import HyperflaxVocabulary

TASK_NAMES = tuple(register_all())
EVAL_TASK_NAMES = tuple(register_default_eval_tasks())

__all__ = ['EVAL_COLLECTIONS', 'EVAL_TASK_NAMES', 'EvalSuite',
           'EncDecFeatureConverter', 'HyperEncDecFeatureConverter', 'HyperflaxVocabulary',
           'MIXTURE',
           'SUITES', 'TASK_NAMES', 'Unit', 'register_all',
           'register_default_eval_tasks', 'register_eval_tasks']
