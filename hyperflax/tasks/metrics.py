"""SeqIO postprocessors and metric functions of the evaluation Tasks.

Each wraps the code `hyperflax.evaluate` scores with (`hyperflax.metrics`:
`group_option_scores`, `macro_f1`, `compute_metrics`) and returns the same
keys with the same values, so a SeqIO eval job and `hyperflax.evaluate`
report identical numbers (tests/test_seqio_eval.py checks it).

Rank-classification Tasks (`*_score_eval`, T0's convention) hold one example
per (query, option); their `score_metric_fns` get one summed log-likelihood
per row (`score_fn`) and the postprocessed targets below, which carry the row's
(example_index, option_index, label).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from hyperflax import metrics as metrics_lib


def _text(value) -> str:
  return value.decode('utf-8') if isinstance(value, bytes) else str(value)


def rank_postprocessor(output_or_target, example=None, is_target=False):
  """Targets become the row's rank-classification record; scores pass."""
  if not is_target:
    return output_or_target
  return {'example_index': int(example['example_index']),
          'option_index': int(example['option_index']),
          'label': int(example['label']),
          'option': _text(example['targets_pretokenized']),
          'answer': _text(example['answer']),
          'num_options': int(example['num_options']),
          'majority': float(example['majority'])}


def generation_postprocessor(output_or_target, example=None, is_target=False):
  """Targets become the example's references and gold answer; predictions pass."""
  if not is_target:
    return output_or_target
  return {'references': [_text(r) for r in example['references']],
          'answer': _text(example['answer'])}


def rank_classification(targets: Sequence[dict[str, Any]], scores,
                        macro_f1: bool = False, prefix: str = '') -> dict[str, float]:
  """`hyperflax.evaluate`'s rank-classification result of one task.

  Args:
    targets: one `rank_postprocessor` record per scored row.
    scores: one summed target log-likelihood per row.
    macro_f1: also MetaICL's macro-F1 over the chosen options' texts (the
      task's metric is 'macro_f1').
    prefix: 'rank_' where the headline is on generations (MetaICL).

  Returns:
    {'accuracy', 'chance', 'majority'} (+ 'macro_f1'), all x100, `prefix` on
    all but 'chance' and 'majority'.
  """
  rows = list(targets)
  ex = np.array([r['example_index'] for r in rows], np.int64)
  num_examples = int(ex.max()) + 1
  pred = metrics_lib.group_option_scores(
      ex, [r['option_index'] for r in rows], np.asarray(scores, np.float64).reshape(-1),
      num_examples=num_examples)
  first = {}
  options: dict[int, dict[int, str]] = {}
  for r in rows:
    first.setdefault(r['example_index'], r)
    options.setdefault(r['example_index'], {})[r['option_index']] = r['option']
  queries = [first[i] for i in range(num_examples)]
  gold = np.array([q['label'] for q in queries])
  result = {f'{prefix}accuracy': float(np.mean(pred == gold) * 100)}
  if macro_f1:
    texts = [options[i].get(int(p), '') if p >= 0 else '' for i, p in enumerate(pred)]
    result[f'{prefix}macro_f1'] = metrics_lib.macro_f1(texts, [q['answer'] for q in queries])
  # EvalTaskData.chance, summed in query order as it does.
  result['chance'] = sum(1.0 / q['num_options'] for q in queries) / len(queries) * 100
  # `EvalTask.majority` (the demonstrations' most frequent option), the same way.
  credits = [float(q['majority']) for q in queries if 'majority' in q]
  if credits and len(credits) == len(queries) and not np.isnan(credits).any():
    result['majority'] = sum(credits) / len(credits) * 100
  return result


def generation(targets: Sequence[dict[str, Any]], predictions: Sequence[str]
               ) -> dict[str, float]:
  """S-NI exact match and ROUGE-L (official normalisation), x100."""
  return metrics_lib.compute_metrics(list(predictions), [t['references'] for t in targets])


def option_generation(targets: Sequence[dict[str, Any]], predictions: Sequence[str],
                      on_generations: bool = False, classification: bool = False,
                      exact_match: bool = True) -> dict[str, float]:
  """Greedy generation on a task with options, keys as `hyperflax.evaluate`.

  Args:
    targets: `generation_postprocessor` records.
    predictions: decoded generations.
    on_generations: MetaICL's headline (HyperTuning §5.2):
      `generated_macro_f1` for classification, else `generated_rougeL`.
    classification: the task's metric is macro-F1.
    exact_match: `generated_exact_match` (`eval.also_generate`).
  """
  result = {}
  if on_generations:
    gen = metrics_lib.metaicl_generation_metrics(
        list(predictions), [t['answer'] for t in targets], classification)
    result.update({f'generated_{k}': v for k, v in gen.items()})
  if exact_match:
    result['generated_exact_match'] = generation(targets, predictions)['exact_match']
  return result


def caclm_validation(targets, predictions, aux_values) -> dict[str, float]:
  """Teacher-forced CACLM validation: token accuracy (x100) and loss.

  `aux_values` (from `seqio_eval`'s teacher-forced predict_with_aux_fn) hold
  per example the summed target log-likelihood, the number of target tokens
  and how many of them the argmax predicts; both metrics are token-weighted
  over the whole split (what the training loss averages over).
  """
  del targets, predictions
  tokens = float(np.sum(aux_values['num_tokens']))
  return {'token_accuracy': float(np.sum(aux_values['num_correct'])) / tokens * 100,
          'loss': -float(np.sum(aux_values['log_likelihood'])) / tokens}
