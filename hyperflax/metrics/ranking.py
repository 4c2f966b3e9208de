"""Rank classification: the option with the highest log-likelihood, accuracy x100."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


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
