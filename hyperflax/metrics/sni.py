"""Super-NaturalInstructions generation metrics, as the official
``allenai/natural-instructions`` ``eval/automatic/evaluation.py`` computes them
(see the package docstring)."""

from __future__ import annotations

import functools
import re
import string
from collections.abc import Sequence


_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES_RE = re.compile(r"\b(a|an|the)\b")


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
