"""`attn heads`: a table of rows (layers, or batch entries) x heads for each head score, and the top
heads of each; `attn rollout`: the rollout matrix, drawn as weights are. Returns Rich renderables;
no torch, no printing.

Each score's cells are coloured on that score's own range over the table (its smallest value at the
scale's bottom, its largest at the top), as the legend under it says: scores have different units
(nats, positions, weights), and one head stands out by its place in its own score's range.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
from rich.console import Group
from rich.table import Table
from rich.text import Text

from attncli.analysis import SCORE_WORDS
from attncli.present.options import ViewOptions
from attncli.present.style import SEQUENTIAL, cell_style, levels


def heads_view(
    row_axis: str,
    rows: Sequence[str],
    scores: dict[str, np.ndarray],
    *,
    title: str,
    notes: Sequence[str] = (),
    top: int = 3,
    precision: int = 2,
    colour: bool = True,
    width: int = 80,
) -> Group:
    """One table per score (rows x heads), each followed by its `top` heads; `notes` last. Heads that
    do not fit `width` go on into a second table below the first (heads 12.. of the same rows), so
    that no number is ever cut."""
    parts: list[Any] = [Text(title, style="bold")]
    for name, values in scores.items():
        label_width = max(len(row_axis), *(len(row) for row in rows)) + 1  # and its right padding
        texts = [_number(v, precision) for v in values[np.isfinite(values)]] or ["-"]
        content = max(len(f"h{values.shape[1] - 1}"), *(len(text) for text in texts))
        per_table = max(1, (width - label_width - 1) // (content + 2))  # padding on both sides
        low, high = _range(values)
        for first in range(0, values.shape[1], per_table):
            heads = range(first, min(first + per_table, values.shape[1]))
            titled, last = first == 0, heads.stop == values.shape[1]
            parts.append(
                _score_table(
                    name, row_axis, rows, values, heads, (low, high), precision, colour, titled, last
                )
            )
        parts.append(_top_line(name, row_axis, rows, values, top, precision))
    parts.extend(Text(f"note: {note}", style="dim") for note in notes)
    return Group(*parts)


def _score_table(
    name: str,
    row_axis: str,
    rows: Sequence[str],
    values: np.ndarray,
    heads: range,
    limits: tuple[float, float],
    precision: int,
    colour: bool,
    titled: bool,
    legend: bool,
) -> Table:
    low, high = limits
    caption = f"colour: {_number(low, precision)} to {_number(high, precision)}" if colour and legend else ""
    table = Table(
        title=f"{name}: {SCORE_WORDS[name]}" if titled else None,
        title_justify="left",
        caption=caption or None,
        caption_justify="left",
        box=None,
        pad_edge=False,
        padding=(0, 1),
    )
    table.add_column(row_axis, justify="right", style="bold", no_wrap=True)
    for head in heads:
        table.add_column(f"h{head}", justify="right", no_wrap=True)
    scaled = (values - low) / (high - low) if high > low else np.zeros_like(values)
    for row, label in enumerate(rows):
        cells: list[Text] = []
        for head in heads:
            value = values[row, head]
            if not np.isfinite(value):
                cells.append(Text("-", style="dim"))
            elif colour:
                style = cell_style(SEQUENTIAL, int(levels(np.array(scaled[row, head]))), False)
                cells.append(Text(_number(value, precision), style=style))
            else:
                cells.append(Text(_number(value, precision)))
        table.add_row(Text(label), *cells)
    return table


def _top_line(
    name: str, row_axis: str, rows: Sequence[str], values: np.ndarray, top: int, precision: int
) -> Text:
    """`top previous: layer 2 h3 0.91, ...`: the highest values, ties in table order."""
    flat = np.where(np.isfinite(values), values, -np.inf).reshape(-1)
    order = np.argsort(-flat, kind="stable")[: max(top, 0)]
    picked = [
        f"{row_axis} {rows[int(index) // values.shape[1]]} h{int(index) % values.shape[1]} "
        f"{_number(float(flat[index]), precision)}"
        for index in order
        if np.isfinite(flat[index])
    ]
    return Text(f"top {name}: " + (", ".join(picked) if picked else "none") + "\n")


def _range(values: np.ndarray) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return 0.0, 1.0
    return float(finite.min()), float(finite.max())


def _number(value: float, precision: int) -> str:
    return f"{value:.{precision}f}"


def heads_json(
    row_axis: str, rows: Sequence[str], heads: int, scores: dict[str, np.ndarray], meta: dict[str, Any]
) -> dict[str, Any]:
    """`{"layers": [...], "heads": [...], "scores": {NAME: [[per head] per layer]}}` (null for NaN);
    "batch" in place of "layers" for inputs that are not captures."""
    key = "layers" if row_axis == "layer" else "batch"
    return {
        key: [int(row) if row.isdigit() else row for row in rows],
        "heads": list(range(heads)),
        "scores": {
            name: [[float(v) if np.isfinite(v) else None for v in row] for row in values]
            for name, values in scores.items()
        },
        "meta": meta,
    }


def rollout_view(
    matrix: np.ndarray, *, title: str, options: ViewOptions, labels: Sequence[str] | None = None
) -> Group:
    """A rollout (L, L), rows summing to 1, as the weights are drawn: a table or a heatmap, with
    the tokens naming both axes, the weights' legend under a table."""
    from attncli.present.heatmap import heatmap
    from attncli.present.tables import weight_table, weights_legend

    if options.view == "heatmap":
        picture = heatmap(
            matrix,
            title=title,
            width=options.width,
            max_lines=matrix.shape[0] if options.full else options.max_rows,
            pool=options.pool,
            colour=options.colour,
            query_labels=labels,
            key_labels=labels,
            scale=options.color_scale,
        )
        return Group(picture)
    shown = replace(options, query_labels=labels, key_labels=labels)
    return Group(weight_table(matrix, options=shown, title=title), weights_legend(scale=options.color_scale))
