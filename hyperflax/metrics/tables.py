"""Paper-style results tables."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence


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
