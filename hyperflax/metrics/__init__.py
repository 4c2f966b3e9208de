"""Evaluation metrics for hyperflax.

Pure Python + numpy (plus ``rouge_score``); deliberately free of jax and
tensorflow so that scoring can run anywhere, e.g. on a CPU box over saved
predictions.

Three families of metrics live here:

* **Super-NaturalInstructions (S-NI)** generation metrics, re-implemented to
  match the official ``allenai/natural-instructions``
  ``eval/automatic/evaluation.py`` (English / default track):

  - ``normalize_answer``: lower-case, drop every character in
    ``string.punctuation``, collapse whitespace.  The official script is
    "adapted from SQuAD v1.1 evaluation, *without removing the articles*", so
    articles (a/an/the) are kept by default.  The SQuAD behaviour is
    available through ``remove_articles=True`` but is NOT what the S-NI
    numbers use.
  - exact match: normalised string equality, max over references.
  - ROUGE-L: ``rouge_score.rouge_scorer.RougeScorer(['rougeL'],
    use_stemmer=True)`` F-measure on the *raw* (un-normalised) strings with
    the library's default tokenizer, max over references.  (The official
    script swaps in a GPT-2 tokenizer only for the cross-lingual track, which
    we do not evaluate.)
  - ``compute_metrics``: mean over examples, x100, rounded to 4 decimals.
  - ``compute_grouped_metrics``: the same per group (task or category), keys
    ``f"{metric}_for_{group}"``.

* **Rank classification**: pick the option with the highest log-likelihood
  for each example, then accuracy x100.

* **MetaICL** metrics (``facebookresearch/MetaICL``, ``MetaICLData.evaluate``):
  accuracy and the MetaICL flavour of macro-F1, both x100; and
  ``metaicl_generation_metrics``, HyperTuning's protocol (§5.2): macro-F1 of
  generations for classification tasks, ROUGE-L of generations otherwise.

Finally ``format_table`` renders a paper-style results table.
"""

from hyperflax.metrics.metaicl import (accuracy, macro_f1, metaicl_generation_metrics,
                                       metaicl_metrics)
from hyperflax.metrics.ranking import (argmax_options, group_option_scores,
                                       rank_classification_accuracy,
                                       rank_classification_accuracy_flat)
from hyperflax.metrics.sni import (category_group_name, compute_grouped_metrics,
                                   compute_metrics, exact_match, normalize_answer, rouge_l)
from hyperflax.metrics.tables import format_table

import numpy as np

__all__ = [
    "normalize_answer",
    "category_group_name",
    "exact_match",
    "rouge_l",
    "compute_metrics",
    "compute_grouped_metrics",
    "argmax_options",
    "group_option_scores",
    "rank_classification_accuracy",
    "rank_classification_accuracy_flat",
    "accuracy",
    "macro_f1",
    "metaicl_metrics",
    "metaicl_generation_metrics",
    "format_table",
]
