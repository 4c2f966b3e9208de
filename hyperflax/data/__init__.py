"""Data pipeline of hyperflax: few-shot episodes, CACLM windows, batches.

Pure Python/numpy (no TensorFlow or SeqIO at import): the trainer imports
this. SeqIO registrations of the same sources live in the top-level `tasks`
package.

Entry points:
  get_dataset(name, split='train', *, batch_size, seed=0, lengths=None,
              num_shots=16, start_step=0, data_dir=None, mode='hyper',
              vocab_path=None, scoring=None, **options)
      -> TrainStream | CaclmStream (infinite) or EvalStream (finite, ordered)
  get_eval_tasks(name, split='validation', *, seed=0, lengths=None,
                 num_shots=16, data_dir=None, mode='hyper', vocab_path=None,
                 **options) -> list[EvalTask]
  data_report(name, *, seed=0, num_shots=16, data_dir=None, vocab_path=None,
              **options) -> dict   (what the sources provide / leave out)
  names() / REGISTRY
Batch fields are documented in `converters` (few-shot) and `caclm`.
"""

from hyperflax.data import synthetic
from hyperflax.data.caclm import CaclmStream, Segments
from hyperflax.data.converters import Converter
from hyperflax.data.examples import EvalTaskData, Example, FewShotTask, Lengths
from hyperflax.data.fewshot import DataStats, Episode
from hyperflax.data.pipeline import EvalStream, EvalTask, TrainStream
from hyperflax.data.registry import (REGISTRY, data_report, get_dataset, get_eval_tasks,
                                     names)
from hyperflax.data.vocab import (EOS_ID, PAD_ID, SEGMENT_A_ID, SEGMENT_D_ID,
                                  X_ID, Y_ID, load_vocabulary)

__all__ = [
    'CaclmStream', 'Converter', 'DataStats', 'EOS_ID', 'Episode', 'EvalStream',
    'EvalTask', 'EvalTaskData', 'Example', 'FewShotTask', 'Lengths', 'PAD_ID',
    'REGISTRY', 'SEGMENT_A_ID', 'SEGMENT_D_ID', 'Segments', 'TrainStream',
    'X_ID', 'Y_ID', 'data_report', 'get_dataset', 'get_eval_tasks', 'load_vocabulary',
    'names', 'synthetic',
]
