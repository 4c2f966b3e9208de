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

from __future__ import annotations

import functools
import math
import re
import string
from collections import defaultdict
from collections.abc import Mapping, Sequence

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

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES_RE = re.compile(r"\b(a|an|the)\b")

# ---------------------------------------------------------------------------
# Super-NaturalInstructions
# ---------------------------------------------------------------------------


def normalize_answer(s: str, remove_articles: bool = False) -> str:
    """Normalises an answer string the way the official S-NI script does.

    Steps, in the official order: lower-case, remove every character in
    ``string.punctuation``, then collapse runs of whitespace into a single
    space (stripping both ends).

    Args:
      s: The raw string.
      remove_articles: If True, additionally replace the whole words
        ``a``/``an``/``the`` by a space before the whitespace fix, i.e. the
        original SQuAD v1.1 normaliser. Off by default because the official
        S-NI ``normalize_answer`` explicitly keeps articles; turning it on
        gives numbers that are not comparable with published S-NI results.

    Returns:
      The normalised string.
    """
    text = s.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    if remove_articles:
        # SQuAD removes articles after punctuation so that "the," is caught.
        text = _ARTICLES_RE.sub(" ", text)
    return " ".join(text.split())


def category_group_name(category: str) -> str:
    """Turns an S-NI task category into the group key the official script uses.

    The official script groups by ``"_".join(category.lower().split())``, so
    e.g. ``"Textual Entailment"`` becomes ``"textual_entailment"`` and the
    metric key ``"rougeL_for_textual_entailment"``.

    Args:
      category: The ``task_category`` / ``Categories[0]`` string.

    Returns:
      The group name.
    """
    return "_".join(category.lower().split())


def _as_reference_list(references: str | Sequence[str]) -> list[str]:
    # A bare string would otherwise be iterated character by character, which
    # silently produces nonsense scores; the official script asserts a list,
    # we accept a single string as the one reference instead.
    if isinstance(references, str):
        return [references]
    refs = list(references)
    if not refs:
        raise ValueError("Each example needs at least one reference.")
    return refs


def exact_match(
    prediction: str,
    references: str | Sequence[str],
    remove_articles: bool = False,
) -> float:
    """S-NI exact match of one prediction against its references.

    Args:
      prediction: The generated string.
      references: One reference string or a non-empty sequence of them.
      remove_articles: Forwarded to ``normalize_answer`` (default False, as in
        the official script).

    Returns:
      1.0 if the normalised prediction equals the normalised form of any
      reference, else 0.0.
    """
    pred = normalize_answer(prediction, remove_articles=remove_articles)
    return max(
        float(pred == normalize_answer(ref, remove_articles=remove_articles))
        for ref in _as_reference_list(references)
    )


@functools.lru_cache(maxsize=1)
def _rouge_l_scorer():
    # Imported lazily and built once: RougeScorer construction loads the
    # Porter stemmer, which is too slow to repeat per example.
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(prediction: str, references: str | Sequence[str]) -> float:
    """S-NI ROUGE-L F-measure of one prediction, max over references.

    The strings are scored as-is (no ``normalize_answer``): rouge_score's
    default tokenizer already lower-cases, replaces non-alphanumerics by
    spaces and, with ``use_stemmer=True``, Porter-stems tokens longer than 3
    characters -- exactly what the official script relies on.

    Args:
      prediction: The generated string.
      references: One reference string or a non-empty sequence of them.

    Returns:
      The best ROUGE-L F-measure, a fraction in [0, 1] (not x100).
    """
    scorer = _rouge_l_scorer()
    return max(
        float(scorer.score(target=ref, prediction=prediction)["rougeL"].fmeasure)
        for ref in _as_reference_list(references)
    )


def compute_metrics(
    predictions: Sequence[str],
    references: Sequence[str | Sequence[str]],
    round_digits: int | None = 4,
) -> dict[str, float]:
    """Corpus-level S-NI metrics.

    Args:
      predictions: One generated string per example.
      references: Per example, one reference string or a sequence of them.
      round_digits: Decimal places to round to; the official script rounds
        to 4. ``None`` disables rounding.

    Returns:
      ``{"exact_match": ..., "rougeL": ...}``, each the mean over examples of
      the per-example max-over-references score, x100.

    Raises:
      ValueError: If the lengths differ or there are no examples.
    """
    if len(predictions) != len(references):
        raise ValueError(
            f"# of predictions {len(predictions)} doesn't match "
            f"# of references {len(references)}."
        )
    if not predictions:
        raise ValueError("Cannot compute metrics over zero examples.")
    em = sum(exact_match(p, r) for p, r in zip(predictions, references))
    rl = sum(rouge_l(p, r) for p, r in zip(predictions, references))
    metrics = {
        "exact_match": 100.0 * em / len(predictions),
        "rougeL": 100.0 * rl / len(predictions),
    }
    if round_digits is not None:
        metrics = {k: round(v, round_digits) for k, v in metrics.items()}
    return metrics


def compute_grouped_metrics(
    predictions: Sequence[str],
    references: Sequence[str | Sequence[str]],
    groups: Sequence[str],
    round_digits: int | None = 4,
) -> dict[str, float]:
    """S-NI metrics computed separately for each group (task or category).

    Each group's score is the plain mean over that group's examples (not a
    mean of sub-groups), as in the official script.

    Args:
      predictions: One generated string per example.
      references: Per example, one reference string or a sequence of them.
      groups: Per example, its group name (e.g. task id, or
        ``category_group_name(category)``).
      round_digits: See ``compute_metrics``.

    Returns:
      ``{f"exact_match_for_{g}": ..., f"rougeL_for_{g}": ...}`` for every
      group ``g``, in first-appearance order.

    Raises:
      ValueError: If the three sequences differ in length.
    """
    if not len(predictions) == len(references) == len(groups):
        raise ValueError(
            "predictions, references and groups must have the same length, got "
            f"{len(predictions)}, {len(references)}, {len(groups)}."
        )
    by_group: dict[str, tuple[list, list]] = {}
    for pred, ref, group in zip(predictions, references, groups):
        preds, refs = by_group.setdefault(group, ([], []))
        preds.append(pred)
        refs.append(ref)
    results = {}
    for group, (preds, refs) in by_group.items():
        for metric, value in compute_metrics(preds, refs, round_digits).items():
            results[f"{metric}_for_{group}"] = value
    return results


# ---------------------------------------------------------------------------
# Rank classification
# ---------------------------------------------------------------------------


def argmax_options(scores: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    """Per-example predicted option from per-option scores.

    Ties are broken towards the lowest option index (``np.argmax``
    semantics), which also matches MetaICL's ``np.argmin`` over losses.

    Args:
      scores: Either a sequence with one 1-D array of option scores
        (log-likelihoods; higher is better) per example -- the number of
        options may vary -- or a 2-D ``[num_examples, num_options]`` array.
        For ragged data packed into a 2-D array, fill the missing options
        with ``-inf``.

    Returns:
      int64 array ``[num_examples]`` of predicted option indices.

    Raises:
      ValueError: If an example has no options or a score is NaN.
    """
    preds = []
    for i, row in enumerate(scores):
        row = np.asarray(row, dtype=np.float64).reshape(-1)
        if row.size == 0:
            raise ValueError(f"Example {i} has no options.")
        # NaN would make argmax return the NaN's position, a silent
        # "prediction" from a numerically broken forward pass.
        if np.isnan(row).any():
            raise ValueError(f"Example {i} has a NaN score.")
        preds.append(int(np.argmax(row)))
    return np.asarray(preds, dtype=np.int64)


def group_option_scores(
    example_index: Sequence[int] | np.ndarray,
    option_index: Sequence[int] | np.ndarray,
    scores: Sequence[float] | np.ndarray,
    is_padding: Sequence[bool] | np.ndarray | None = None,
    num_examples: int | None = None,
) -> np.ndarray:
    """Per-example argmax from flat ``(example, option, score)`` rows.

    This is the layout produced by batched scoring, where every (example,
    option) pair is one row, rows may arrive in any order, and the last batch
    is padded with dummy rows.

    Ties are broken towards the lowest ``option_index`` (regardless of row
    order), matching ``argmax_options``.

    Args:
      example_index: int ``[num_rows]``, the example each row belongs to.
      option_index: int ``[num_rows]``, the option each row scores.
      scores: float ``[num_rows]``, the option's score (log-likelihood;
        higher is better).
      is_padding: Optional bool ``[num_rows]``; True rows are ignored
        entirely (their indices and scores may be anything).
      num_examples: Length of the output. Defaults to one more than the
        largest non-padding example index.

    Returns:
      int64 array ``[num_examples]``: the winning ``option_index`` for each
      example, or -1 for an example without any non-padding row (which
      ``rank_classification_accuracy_flat`` then counts as wrong).

    Raises:
      ValueError: On mismatched lengths, negative indices, NaN scores, or a
        duplicated (example, option) pair among non-padding rows.
    """
    ex = np.asarray(example_index, dtype=np.int64).reshape(-1)
    opt = np.asarray(option_index, dtype=np.int64).reshape(-1)
    sc = np.asarray(scores, dtype=np.float64).reshape(-1)
    if is_padding is None:
        keep = np.ones(ex.shape, dtype=bool)
    else:
        keep = ~np.asarray(is_padding, dtype=bool).reshape(-1)
    if not ex.shape == opt.shape == sc.shape == keep.shape:
        raise ValueError(
            "example_index, option_index, scores and is_padding must have the "
            f"same length, got {ex.shape}, {opt.shape}, {sc.shape}, {keep.shape}."
        )
    ex, opt, sc = ex[keep], opt[keep], sc[keep]
    if (ex < 0).any() or (opt < 0).any():
        raise ValueError("Non-padding rows must have non-negative indices.")
    if np.isnan(sc).any():
        raise ValueError("Non-padding rows contain NaN scores.")
    if num_examples is None:
        num_examples = int(ex.max()) + 1 if ex.size else 0
    elif ex.size and ex.max() >= num_examples:
        raise ValueError(f"example_index {ex.max()} >= num_examples {num_examples}.")

    preds = np.full((num_examples,), -1, dtype=np.int64)
    if ex.size == 0:
        return preds
    # lexsort: last key is primary. Sort by example, then score descending,
    # then option ascending, so the first row of each example is the winner
    # with ties going to the lowest option index.
    order = np.lexsort((opt, -sc, ex))
    ex_s, opt_s = ex[order], opt[order]
    pairs = ex_s * (int(opt.max()) + 1) + opt_s
    if np.unique(pairs).size != pairs.size:
        # Two rows for the same option usually means an un-flagged padding
        # row that duplicates a real one; scoring would then be ambiguous.
        raise ValueError("Duplicate (example_index, option_index) rows.")
    first = np.ones(ex_s.shape, dtype=bool)
    first[1:] = ex_s[1:] != ex_s[:-1]
    preds[ex_s[first]] = opt_s[first]
    return preds


def _index_accuracy(predicted: np.ndarray, labels) -> float:
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if predicted.shape != labels.shape:
        raise ValueError(
            f"Got {predicted.shape[0]} predictions but {labels.shape[0]} labels."
        )
    if labels.size == 0:
        raise ValueError("Cannot compute accuracy over zero examples.")
    return 100.0 * float(np.mean(predicted == labels))


def rank_classification_accuracy(
    scores: Sequence[Sequence[float]] | np.ndarray,
    labels: Sequence[int] | np.ndarray,
) -> float:
    """Rank-classification accuracy: argmax option vs. gold option, x100.

    Args:
      scores: Per-example option scores, as accepted by ``argmax_options``
        (ties go to the lowest option index).
      labels: int ``[num_examples]``, index of the gold option.

    Returns:
      Percentage of examples whose highest-scoring option is the gold one.
    """
    return _index_accuracy(argmax_options(scores), labels)


def rank_classification_accuracy_flat(
    example_index: Sequence[int] | np.ndarray,
    option_index: Sequence[int] | np.ndarray,
    scores: Sequence[float] | np.ndarray,
    labels: Sequence[int] | np.ndarray,
    is_padding: Sequence[bool] | np.ndarray | None = None,
) -> float:
    """``rank_classification_accuracy`` for flat (example, option, score) rows.

    Args:
      example_index: See ``group_option_scores``.
      option_index: See ``group_option_scores``.
      scores: See ``group_option_scores``.
      labels: int ``[num_examples]``, gold option per example; its length
        fixes the number of examples, so an example with only padding rows
        counts as wrong rather than disappearing.
      is_padding: See ``group_option_scores``.

    Returns:
      Accuracy x100.
    """
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    preds = group_option_scores(
        example_index, option_index, scores, is_padding, num_examples=labels.size
    )
    return _index_accuracy(preds, labels)


# ---------------------------------------------------------------------------
# MetaICL
# ---------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------


def format_table(
    rows: Mapping[str, Mapping[str, float]],
    columns: Sequence[str],
    precision: int = 1,
    row_header: str = "Model",
) -> str:
    """Renders a paper-style results table (models x tasks + AVG).

    The output is a Markdown pipe table with padded cells, so it reads well
    in a terminal and pastes into a README. Numbers are right-aligned.

    The AVG column is the unweighted mean over ``columns``. If a row lacks
    any of them (or has a NaN), its cell shows ``-`` and its AVG is ``-``
    too, because an average over a different subset of tasks would not be
    comparable across rows.

    Args:
      rows: ``{model_name: {column_name: value}}``; row order is preserved.
        Keys not listed in ``columns`` are ignored.
      columns: The task columns, in display order.
      precision: Decimal places for every number.
      row_header: Header of the first (model name) column.

    Returns:
      The table as a string, without a trailing newline.

    Raises:
      ValueError: If ``columns`` contains ``"AVG"`` or duplicates.
    """
    columns = list(columns)
    if "AVG" in columns or len(set(columns)) != len(columns):
        raise ValueError("columns must be unique and must not contain 'AVG'.")

    def fmt(value):
        return "-" if value is None else f"{value:.{precision}f}"

    header = [row_header, *columns, "AVG"]
    body = []
    for name, values in rows.items():
        cells = []
        for col in columns:
            v = values.get(col)
            cells.append(None if v is None or math.isnan(float(v)) else float(v))
        avg = None if (not cells or None in cells) else sum(cells) / len(cells)
        body.append([str(name), *(fmt(c) for c in cells), fmt(avg)])

    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]

    def line(cells):
        parts = [cells[0].ljust(widths[0])]
        parts += [c.rjust(w) for c, w in zip(cells[1:], widths[1:])]
        return "| " + " | ".join(parts) + " |"

    sep = "|" + "|".join(
        [":" + "-" * (widths[0] + 1)] + ["-" * (w + 1) + ":" for w in widths[1:]]
    ) + "|"
    return "\n".join([line(header), sep, *(line(r) for r in body)])
