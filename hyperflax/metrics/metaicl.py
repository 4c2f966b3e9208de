"""MetaICL's accuracy and macro-F1 (``MetaICLData.evaluate``) and HyperTuning's
generation protocol for MetaICL (§5.2)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from hyperflax.metrics.sni import normalize_answer, rouge_l


def _metaicl_correctness(predictions, groundtruths, normalize):
    if len(predictions) != len(groundtruths):
        raise ValueError(
            f"Got {len(predictions)} predictions but {len(groundtruths)} groundtruths."
        )
    if not predictions:
        raise ValueError("Cannot compute metrics over zero examples.")
    clean = normalize_answer if normalize else str.strip
    out = []
    for pred, gold in zip(predictions, groundtruths):
        pred = clean(pred)
        if isinstance(gold, str):
            gold = clean(gold)
            out.append((pred, gold, pred == gold))
        else:
            gold = [clean(g) for g in gold]
            out.append((pred, gold, pred in gold))
    return out


def accuracy(
    predictions: Sequence[str],
    groundtruths: Sequence[str | Sequence[str]],
    normalize: bool = False,
) -> float:
    """MetaICL accuracy, x100.

    As in ``MetaICLData.evaluate``: both sides are ``.strip()``-ed and
    compared exactly (case and punctuation matter); a list groundtruth counts
    as correct if the prediction equals any element. This is the metric
    MetaICL reports for non-classification (multi-choice / generation) tasks.

    Args:
      predictions: Predicted strings (for rank classification, the text of
        the chosen option).
      groundtruths: Per example, the gold string or a list of acceptable ones.
      normalize: If True, use S-NI ``normalize_answer`` instead of ``strip``
        on both sides, i.e. exact-match accuracy for free-form generation.
        MetaICL itself does not normalise.

    Returns:
      Percentage of correct predictions.
    """
    results = _metaicl_correctness(predictions, groundtruths, normalize)
    return 100.0 * float(np.mean([ok for _, _, ok in results]))


def macro_f1(
    predictions: Sequence[str],
    groundtruths: Sequence[str],
    normalize: bool = False,
) -> float:
    """MetaICL macro-F1 over the gold classes, x100.

    Reproduces ``MetaICLData.evaluate(..., is_classification=True)``, which
    differs from e.g. scikit-learn's macro-F1 in two ways:

    * The average runs over the labels that occur in the *groundtruths* only.
      A label that is predicted but never gold gets no F1 of its own; such
      predictions only lower the recall of the examples' true labels (their
      false positives land in the ignored label's precision).
    * For a gold label: precision = fraction of examples *predicted* as that
      label that are correct (1.0 if it is never predicted); recall =
      fraction of examples *labelled* with it that are correct; F1 = 2PR/(P+R)
      or 0 when P+R = 0. A never-predicted gold label thus has P=1, R=0,
      F1=0.

    Strings are ``.strip()``-ed first, as in MetaICL.

    Args:
      predictions: Predicted label strings.
      groundtruths: Gold label strings (one per example).
      normalize: If True, compare ``normalize_answer`` forms instead.

    Returns:
      The unweighted mean of per-gold-label F1, x100.
    """
    results = _metaicl_correctness(predictions, groundtruths, normalize)
    precisions: dict[str, list[bool]] = defaultdict(list)
    recalls: dict[str, list[bool]] = defaultdict(list)
    for pred, gold, ok in results:
        if not isinstance(gold, str):
            raise ValueError("macro_f1 needs a single gold label per example.")
        recalls[gold].append(ok)
        precisions[pred].append(ok)
    f1s = []
    for label, label_recalls in recalls.items():
        p = float(np.mean(precisions[label])) if label in precisions else 1.0
        r = float(np.mean(label_recalls))
        f1s.append(0.0 if p + r == 0 else 2 * p * r / (p + r))
    return 100.0 * float(np.mean(f1s))


def metaicl_metrics(
    predictions: Sequence[str],
    groundtruths: Sequence[str | Sequence[str]],
    is_classification: bool,
) -> dict[str, float]:
    """MetaICL's per-task metrics.

    Args:
      predictions: Predicted strings.
      groundtruths: Gold strings (or lists of them for non-classification).
      is_classification: Whether the task is a classification task, for
        which MetaICL reports macro-F1 (accuracy is returned too).

    Returns:
      ``{"accuracy": ...}`` plus ``"macro_f1"`` for classification tasks,
      each x100.
    """
    out = {"accuracy": accuracy(predictions, groundtruths)}
    if is_classification:
        out["macro_f1"] = macro_f1(predictions, groundtruths)
    return out


def metaicl_generation_metrics(
    predictions: Sequence[str],
    groundtruths: Sequence[str | Sequence[str]],
    is_classification: bool,
) -> dict[str, float]:
    """MetaICL test tasks scored as HyperTuning §5.2 does, on generations.

    "ROUGE or Macro-F1 on model generations depending on the task": for a
    classification task the generated strings are scored by MetaICL's own
    macro-F1 (``macro_f1``: stripped exact strings, F1 averaged over the gold
    labels, a never-predicted gold label has precision 1 and F1 0, a
    generation matching no label only lowers its example's recall); for every
    other task by ROUGE-L (``rouge_l``: the S-NI scorer, max over
    references). Rank classification is a different protocol (the output
    space is given) and is reported separately.

    Args:
      predictions: Greedy generations, one per example.
      groundtruths: Gold strings (for classification, one label each;
        otherwise a string or a list of acceptable strings).
      is_classification: Whether the task is a classification task.

    Returns:
      ``{"macro_f1": ...}`` or ``{"rougeL": ...}``, x100.
    """
    if is_classification:
        return {"macro_f1": macro_f1(predictions, groundtruths)}
    if len(predictions) != len(groundtruths):
        raise ValueError(
            f"Got {len(predictions)} predictions but {len(groundtruths)} groundtruths."
        )
    if not predictions:
        raise ValueError("Cannot compute metrics over zero examples.")
    scores = [rouge_l(p, g) for p, g in zip(predictions, groundtruths)]
    return {"rougeL": 100.0 * float(np.mean(scores))}
