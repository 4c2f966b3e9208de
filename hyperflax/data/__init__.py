"""Data pipeline of hyperflax: few-shot episodes, CACLM windows, batches.

Pure Python/numpy (no TensorFlow or SeqIO at import): the trainer imports
this. SeqIO registrations of the same sources live in the top-level `tasks`
package.

Entry points:
  get_dataset(name, split, *, batch_size, seed, lengths, num_shots,
              start_step, data_dir, mode, vocab_path, scoring, **options)
  get_eval_tasks(name, split, *, seed, lengths, num_shots, data_dir, mode,
                 vocab_path, **options)
  names() / REGISTRY
"""

from hyperflax.data.examples import EvalTaskData, Example, FewShotTask, Lengths
from hyperflax.data.registry import REGISTRY, get_dataset, get_eval_tasks, names
from hyperflax.data.vocab import (EOS_ID, PAD_ID, SEGMENT_A_ID, SEGMENT_D_ID,
                                  X_ID, Y_ID, load_vocabulary)

__all__ = [
    'EOS_ID', 'EvalTaskData', 'Example', 'FewShotTask', 'Lengths', 'PAD_ID',
    'REGISTRY', 'SEGMENT_A_ID', 'SEGMENT_D_ID', 'X_ID', 'Y_ID', 'get_dataset',
    'get_eval_tasks', 'load_vocabulary', 'names',
]
