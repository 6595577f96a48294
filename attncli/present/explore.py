"""The pieces of `attn explore`'s screens that are drawings: the heatmap of a window of one matrix
with a cursor, and the panel of one weight's figures. Plain values in (computed by
`attncli.explore.session`), Rich renderables out; no torch.

The window's picture is drawn as `heatmap.pooled_heatmap` draws a whole matrix (the same colour
codes, two matrix rows per line in colour, a density character per cell without), with the
indices in the gutter and on the ruler counted from the window's first row and key.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from rich.console import Group, RenderableType
from rich.style import Style
from rich.table import Table
from rich.text import Text

from attncli.present.heatmap import (
    CELL_CHARACTERS,
    GUTTER_EVERY,
    RULER_EVERY,
    cell_codes,
    colour_lines,
    colour_table,
    plain_lines,
)
from attncli.present.style import SCALE_WORDS, cut_label, rescaled

#: The cursor's colour: on no colour scale (viridis runs purple to yellow; masked is grey, NaN red).
MIN_CELL, MAX_CELL = 3, 8  # columns per weight of a magnified small matrix
MAX_CELL_LINES = 3  # lines per matrix row of a magnified small matrix
CURSOR_UPPER = Style(color="#ff00ff")
CURSOR_LOWER = Style(bgcolor="#ff00ff")


@dataclass(frozen=True)
class WindowPicture:
    """The pooled picture of `span` (rows, keys) of an (Lq, Lk) matrix (`shape`) from `origin`
    (first row, first key): max and mean (R, C) of each `blocks` (rows, keys) cell, NaN where every
    weight of a cell is masked; `picture_all_mean` the mean over every weight of a cell, masked ones
    counted as the 0 they are (the mean drawn when masked keys are shown plainly)."""

    picture_max: np.ndarray
    picture_mean: np.ndarray
    blocks: tuple[int, int]
    origin: tuple[int, int]
    span: tuple[int, int]
    shape: tuple[int, int]
    picture_all_mean: np.ndarray


@dataclass(frozen=True)
class CellFigures:
    """One weight and its row: the query and key (their tokens where known), the weight, the score
    the softmax took (None where the key is masked, or where only the weights were saved), its
    rank among the row's open keys (1: the largest; ties share one), the row's entropy (nats), sink
    (weight on key 0), mean distance, and its largest keys (key, weight, token)."""

    query: int
    key: int
    query_token: str | None
    key_token: str | None
    weight: float
    score: float | None
    rank: int | None
    open_keys: int
    masked: bool
    entropy: float
    sink: float
    distance: float
    top: Sequence[tuple[int, float, str | None]]


def gutter_width(shape: tuple[int, int], query_labels: Sequence[str] | None = None) -> int:
    """Columns left of the picture: the widest query index (and label), and a space."""
    widest = len(str(max(shape[0] - 1, 0)))
    if query_labels is not None:
        widest += 1 + max((len(cut_label(label)) for label in query_labels), default=0)
    return widest + 1


def picture_cells(width: int, height: int, shape: tuple[int, int], colour: bool = True) -> tuple[int, int]:
    """(rows, cols) of cells a compact window heatmap fits in `width` x `height` characters: a
    title, a ruler and a legend line around the picture, the query indices in a gutter."""
    lines = max(1, height - 3)
    return lines * (2 if colour else 1), max(1, width - gutter_width(shape))


def magnified_cell(
    width: int, height: int, shape: tuple[int, int], query_labels: Sequence[str] | None = None
) -> int:
    """Columns per weight when the whole (Lq, Lk) matrix fits one row per line and at least
    MIN_CELL columns per key (a small matrix drawn large, not as a speck); 0 when it does not."""
    room = width - gutter_width(shape, query_labels)
    cell = min(MAX_CELL, room // max(shape[1], 1))
    return cell if cell >= MIN_CELL and shape[0] <= height - 3 else 0


def magnified_lines(height: int, shape: tuple[int, int], cell_width: int) -> int:
    """Lines per matrix row of a magnified matrix (`magnified_cell` columns a key): as many as fit
    `height` with the title, ruler and legend, up to a cell about as tall as it is wide (a
    character is about twice as tall as it is wide), at most MAX_CELL_LINES."""
    fits = (height - 3) // max(shape[0], 1)
    return max(1, min(fits, cell_width // 2, MAX_CELL_LINES))


def window_heatmap(
    window: WindowPicture,
    *,
    title: str,
    pool: str = "max",
    scale: str = "fixed",
    colour: bool = True,
    cursor: tuple[int, int] | None = None,
    cell_width: int = 0,
    cell_lines: int = 1,
    query_labels: Sequence[str] | None = None,
    show_masked: bool = True,
) -> Group:
    """The heatmap of `window`, pooled by `pool`, on colour `scale`, with the cell that holds the
    weight `cursor` (query, key) marked: in colour, magenta in its half of the line; without, in
    reverse video. `cell_width` > 0 draws each cell that many columns wide and `cell_lines` lines
    tall, the rows named by `query_labels` (`magnified_cell`, `magnified_lines`). `show_masked`
    False draws masked weights plainly, as the 0 they are: no cell marked masked, and the mean
    taken over every weight of a cell (`picture_all_mean`)."""
    if show_masked:
        values = window.picture_max if pool == "max" else window.picture_mean
        masked = np.isnan(values)
    else:
        values = window.picture_max if pool == "max" else window.picture_all_mean
        masked = np.zeros(values.shape, dtype=bool)
    known = np.where(np.isnan(values), 0.0, values)
    largest = float(known.max()) if known.size else None
    codes = cell_codes(rescaled(known, scale, largest), masked, colour)
    block_rows, block_cols = window.blocks
    first_row, first_key = window.origin
    labels = query_labels if cell_width else None
    gutter = gutter_width(window.shape, labels)
    rows_per_line = 1 if cell_width or not colour else 2
    cursor_cell = None
    if cursor is not None:
        cursor_cell = ((cursor[0] - first_row) // block_rows, (cursor[1] - first_key) // block_cols)
    if cell_width:
        lines = _magnified_lines(codes, cell_width, cell_lines, colour, cursor_cell)
    else:
        lines = colour_lines(codes, 0, block_rows) if colour else plain_lines(codes, 0, block_rows)
        if (
            cursor_cell is not None
            and 0 <= cursor_cell[0] // rows_per_line < len(lines)
            and 0 <= cursor_cell[1] < codes.shape[1]
        ):
            column = cursor_cell[1]
            if colour:
                style = CURSOR_UPPER if cursor_cell[0] % 2 == 0 else CURSOR_LOWER
            else:
                style = Style(reverse=True)
            lines[cursor_cell[0] // rows_per_line].stylize(style, column, column + 1)
    drawn: list[Text] = []
    for number, line in enumerate(lines):
        if labels is not None:  # magnified: `cell_lines` lines a row, named on its first
            row = first_row + number // max(cell_lines, 1)
            digits = len(str(max(window.shape[0] - 1, 0)))
            name = cut_label(labels[row]) if row < len(labels) else ""
            label = f"{str(row).rjust(digits)} {name}" if number % max(cell_lines, 1) == 0 else ""
            label = label.ljust(gutter - 1)
        else:
            row = first_row + number * rows_per_line * block_rows
            label = (str(row) if number % GUTTER_EVERY == 0 else "").rjust(gutter - 1)
        text = Text(label + " ", style="dim", no_wrap=True, overflow="crop")
        text.append_text(line)
        drawn.append(text)
    step = max(1, cell_width)
    ruler = [" "] * (codes.shape[1] * step)
    every = max(1, RULER_EVERY // step) if cell_width else RULER_EVERY
    for column in range(0, codes.shape[1], every):
        label = str(first_key + column * block_cols)
        at = column * step
        if at + len(label) > len(ruler):
            break
        ruler[at : at + len(label)] = label
    corner = "q\\k" if gutter > 3 else ""
    ruler_line = Text(corner.ljust(gutter) + "".join(ruler).rstrip(), style="dim", no_wrap=True)
    lq, lk = window.shape
    rows, keys = window.span
    cells = "one weight per cell" if window.blocks == (1, 1) else f"{pool} of {block_rows}×{block_cols}"
    legend = Text(
        f"rows {first_row}–{first_row + rows - 1} of {lq}, keys {first_key}–{first_key + keys - 1} of "
        f"{lk} · {cells} · {SCALE_WORDS[scale]}" + ("" if show_masked else " · masked weights shown as 0"),
        style="dim",
    )
    return Group(Text(title, style="bold", no_wrap=True, overflow="ellipsis"), ruler_line, *drawn, legend)


def _magnified_lines(
    codes: np.ndarray, cell_width: int, cell_lines: int, colour: bool, cursor_cell: tuple[int, int] | None
) -> list[Text]:
    """Each row of cells on `cell_lines` lines, each cell `cell_width` columns: in colour a block of
    its colour, without colour its density character repeated; the cursor's cell framed in
    magenta, a diamond in its middle (reverse video without colour)."""
    colours = colour_table()
    middle_line = (cell_lines - 1) // 2
    lines = []
    for row, row_codes in enumerate(codes.tolist()):
        for line in range(cell_lines):
            text = Text(no_wrap=True, overflow="crop")
            for column, code in enumerate(row_codes):
                here = cursor_cell == (row, column)
                if not colour:
                    text.append(CELL_CHARACTERS[code] * cell_width, Style(reverse=True) if here else None)
                    continue
                cell = " " * cell_width
                style = Style(bgcolor=colours[code])
                if here:
                    inner = "◆" if line == middle_line else " "
                    cell = ("▌" + inner.center(cell_width - 2) + "▐") if cell_width >= 3 else "◆" * cell_width
                    style += Style(color="#ff00ff", bold=True)
                text.append(cell, style)
            lines.append(text)
    return lines


def _number(value: float | None, precision: int, absent: str = "masked") -> str:
    if value is None:
        return absent
    if np.isnan(value):
        return "–"
    return f"{value:.{precision}f}"


def _named(position: int, token: str | None) -> str:
    return str(position) if token is None else f"{position} {cut_label(token)!r}"


def cell_panel(figures: CellFigures, precision: int = 4) -> Table:
    """The side panel: the weight under the cursor, then its row's statistics and largest keys."""
    table = Table.grid(padding=(0, 1))
    table.add_column(style="bold", no_wrap=True)
    table.add_column(no_wrap=True, overflow="ellipsis")
    rank = "masked" if figures.rank is None else f"{figures.rank} of {figures.open_keys}"
    rows: list[tuple[str, RenderableType]] = [
        ("query", _named(figures.query, figures.query_token)),
        ("key", _named(figures.key, figures.key_token)),
        ("weight", _number(figures.weight, precision)),
        ("score", "masked" if figures.masked else _number(figures.score, precision, absent="not saved")),
        ("rank", rank),
        ("", ""),
        ("row", Text("statistics", style="dim")),
        ("entropy", _number(figures.entropy, precision) + " nats"),
        ("sink", _number(figures.sink, precision)),
        ("distance", _number(figures.distance, 2)),
        ("", ""),
        ("top keys", Text("weight  key", style="dim")),
    ]
    for key, weight, token in figures.top:
        mark = "▸" if key == figures.key else " "
        rows.append((mark, f"{weight:.{precision}f}  {_named(key, token)}"))
    for name, value in rows:
        table.add_row(name, value)
    return table
