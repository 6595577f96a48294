"""A compact heatmap of one attention weight matrix: one character per pooled block of weights.

Takes NumPy arrays, returns Rich renderables; never prints. A matrix larger than the space given
is pooled (max or mean of each block) in one vectorised pass, so the cost of drawing depends on
the cells drawn, not on the matrix size. With colour, each text line holds two matrix rows as
'▀' (foreground: upper row, background: lower row) on the same fixed 0..1 scale as the weight
tables; without colour, each cell is a character of a density ramp.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from rich.color import Color
from rich.console import Group, RenderableType
from rich.constrain import Constrain
from rich.style import Style
from rich.text import Span, Text

from attncli.present.items import ItemLines
from attncli.present.options import POOLS
from attncli.present.style import LEVELS, SCALE_ENDS, SCALE_WORDS, SEQUENTIAL, cut_label, lerp, rescaled
from attncli.present.style import MASKED as MASKED_CHAR  # the tables' mark for a masked weight

RAMP = " .:-=+*#%@"  # weight 0 is ' '; any weight above 0 is at least '.', by ninths up to '@' at 1
NAN_CHAR = "!"
MASKED_RGB = (128, 128, 128)  # neutral grey, not on the viridis scale: masked never looks like a tiny weight
NAN_RGB = (220, 20, 60)  # red, not on the scale either
HALF_BLOCK = "▀"
FULL_BLOCK = "█"
LABELLED_CELL = 3  # columns per key in the labelled layout (without colour: two characters, a space)
VERTICAL_LABEL = 6  # characters of a key's label written downwards under its column
RULER_EVERY = 10  # drawn columns between key indices on the ruler
GUTTER_EVERY = 5  # text lines between query indices in the gutter

# Cell codes: 0..LEVELS-1 are weight levels (colour) or ramp positions (no colour); then these.
_CODE_MASKED = LEVELS
_CODE_NAN = LEVELS + 1
_CODE_NONE = LEVELS + 2  # no lower row under the last line of an odd number of rows
_CODES = LEVELS + 3
#: The character of each cell code without colour: ramp positions, then masked, NaN and none.
CELL_CHARACTERS = [*RAMP, *(" " * (LEVELS - len(RAMP))), MASKED_CHAR, NAN_CHAR, " "]

_FloatArray = npt.NDArray[np.floating]


def heatmap(
    matrix: np.ndarray,
    *,
    title: str,
    width: int,
    max_lines: int,
    pool: str = "max",
    blocked: np.ndarray | None = None,
    colour: bool = True,
    query_labels: Sequence[str] | None = None,
    key_labels: Sequence[str] | None = None,
    scale: str = "fixed",
    wide_cells: bool = True,
) -> Group:
    """One (Lq, Lk) weight matrix (rows = queries, columns = keys) as a compact heatmap, its
    colours on `scale` (`style.COLOR_SCALES`); `wide_cells=False` draws a small matrix without
    labels compactly too, one character per cell.

    The title (bold), a ruler of key indices, at most `max_lines` lines of picture with query
    indices in a left gutter, then a one-line legend; never wider than `width` columns.
    `blocked` (bool, broadcastable to the matrix) is True where a key was masked for a query:
    masked weights are left out of pooling, and a block with every weight masked is drawn grey
    (or '·'). NaN weights that are not masked are drawn red (or '!').

    A matrix small enough to draw one query per line and one key per LABELLED_CELL columns is
    drawn that way (cells of several characters, not a speck), each row named in the gutter by its
    label (tokens, say) and index, the keys named under the picture when they have labels; a larger
    one is pooled, two rows a line in colour.

    Styles are made fresh on each call (Rich caches a Style's escape codes for the first colour
    system it meets): print each heatmap to one console.
    """
    matrix = np.asarray(matrix)
    if matrix.ndim != 2:
        raise ValueError(f"heatmap needs a 2-D (queries, keys) matrix, got shape {matrix.shape}")
    if pool not in POOLS:
        raise ValueError(f"pool must be 'max' or 'mean', not {pool!r}")
    queries, keys = matrix.shape
    open_keys = None
    if blocked is not None:
        try:
            open_keys = ~np.broadcast_to(np.asarray(blocked, dtype=bool), matrix.shape)
        except ValueError:
            raise ValueError(
                f"blocked has shape {np.shape(blocked)}, which does not broadcast to the matrix's "
                f"{matrix.shape}"
            ) from None

    heading = Constrain(ItemLines.split(title, style="bold"), max(width, 1))
    if queries == 0 or keys == 0:
        return Group(heading, Text(f"no weights to draw ({queries}×{keys})", style="dim"))
    largest = float(np.where(open_keys, matrix, -np.inf).max()) if open_keys is not None else None
    if wide_cells or query_labels is not None or key_labels is not None:
        labelled = _labelled(
            matrix, open_keys, width, max_lines, colour, pool, query_labels, key_labels, scale, largest
        )
        if labelled is not None:
            return Group(heading, *labelled)

    gutter = len(str(queries - 1)) + 1  # the widest query index and a space
    width = max(width, gutter + 1)  # clamped: at least one column of cells
    max_lines = max(max_lines, 1)
    rows_per_line = 2 if colour else 1
    block_cols = math.ceil(keys / (width - gutter))  # the smallest blocks that fit
    block_rows = math.ceil(queries / (max_lines * rows_per_line))

    pooled, masked = _pool(matrix, open_keys, block_rows, block_cols, pool)  # (R, C) each
    codes = cell_codes(rescaled(pooled, scale, largest), masked, colour)
    draw = colour_lines if colour else plain_lines
    lines = draw(codes, gutter, block_rows)
    ruler = _ruler(codes.shape[1], block_cols, gutter, width)
    legend = _legend(codes, colour, pool, block_rows, block_cols, scale)
    parts: list[RenderableType] = [heading, ruler, *lines, Constrain(legend, width)]
    return Group(*parts)


def picture_size(
    shape: tuple[int, int],
    *,
    width: int,
    max_lines: int,
    colour: bool = True,
    query_labels: Sequence[str] | None = None,
    key_labels: Sequence[str] | None = None,
) -> tuple[int, int]:
    """The (rows, cols) of pooled cells that a heatmap of a (Lq, Lk) matrix draws in `width` columns
    and `max_lines` lines: one cell per weight where the labelled layout fits, else as many as fit
    (two matrix rows per line in colour). A computation pools its weights to this size."""
    queries, keys = shape
    if _labelled_gutter(queries, keys, width, max_lines, query_labels):
        return max(queries, 1), max(keys, 1)
    gutter = len(str(max(queries - 1, 0))) + 1
    return max(max_lines, 1) * (2 if colour else 1), max(width - gutter, 1)


def pooled_heatmap(
    pooled: np.ndarray,
    *,
    blocks: tuple[int, int],
    shape: tuple[int, int],
    title: str,
    width: int,
    pool: str = "max",
    colour: bool = True,
    query_labels: Sequence[str] | None = None,
    key_labels: Sequence[str] | None = None,
    scale: str = "fixed",
    largest: float | None = None,
    padding_rows: np.ndarray | None = None,
) -> Group:
    """A heatmap of a matrix pooled by the computation (as `picture_size` says), drawn as `heatmap`
    draws a matrix (`largest`: the matrix's largest weight, which the `max` scale reaches).

    `pooled` (R, C) holds the max or mean of each `blocks` = (rows, columns) block of the (Lq, Lk)
    matrix `shape`, NaN where a whole block was masked; indices on the axes are the matrix's own.
    With one weight per cell and labels, the labelled layout is drawn where it fits.
    `padding_rows` (bool, Lq): the rows of padding tokens; the drawing stops where they alone are
    left, and the legend says which rows it left out.
    """
    if pool not in POOLS:
        raise ValueError(f"pool must be 'max' or 'mean', not {pool!r}")
    queries, keys = shape
    heading = Constrain(ItemLines.split(title, style="bold"), max(width, 1))
    if queries == 0 or keys == 0:
        return Group(heading, Text(f"no weights to draw ({queries}×{keys})", style="dim"))
    block_rows, block_cols = blocks
    values = np.asarray(pooled, dtype=np.float32)
    drawn, left_out = drawn_rows(padding_rows, block_rows, len(values))
    values = values[:drawn]
    masked = np.isnan(values)
    codes = cell_codes(rescaled(np.where(masked, 0.0, values), scale, largest), masked, colour)
    if blocks == (1, 1):
        gutter = _labelled_gutter(drawn, keys, width, len(codes), query_labels)
        if gutter:
            labelled = _labelled_lines(
                codes, gutter, width, colour, pool, query_labels, key_labels, scale, left_out
            )
            return Group(heading, *labelled)
    gutter = len(str(max(queries - 1, 0))) + 1
    draw = colour_lines if colour else plain_lines
    lines = draw(codes, gutter, block_rows)
    ruler = _ruler(codes.shape[1], block_cols, gutter, max(width, gutter + 1))
    legend = _legend(codes, colour, pool, block_rows, block_cols, scale, left_out)
    return Group(heading, ruler, *lines, Constrain(legend, width))


def drawn_rows(padding_rows: np.ndarray | None, block_rows: int, pooled_rows: int) -> tuple[int, str]:
    """How many of `pooled_rows` rows of cells (each of `block_rows` matrix rows) to draw when the
    matrix rows `padding_rows` marks (bool) are padding: those up to the last real token's. With
    the note that says which rows were left out ("" when none were)."""
    if padding_rows is None:
        return pooled_rows, ""
    real = np.flatnonzero(~np.asarray(padding_rows, dtype=bool))
    end = int(real[-1]) + 1 if real.size else 0
    drawn = min(pooled_rows, max(-(-end // block_rows), 1))
    first = drawn * block_rows
    queries = len(padding_rows)
    if first >= queries:
        return drawn, ""
    rows = f"row {first}" if first == queries - 1 else f"rows {first}–{queries - 1}"
    return drawn, f"{rows}: padding, not drawn"


def _row_names(queries: int, query_labels: Sequence[str] | None) -> list[str]:
    return [f"{cut_label(query_labels[i]) if query_labels else ''} {i}" for i in range(queries)]


def _labelled_gutter(
    queries: int, keys: int, width: int, max_lines: int, query_labels: Sequence[str] | None
) -> int:
    """The gutter of the labelled layout (one query per line, LABELLED_CELL columns per key), 0
    when the matrix does not fit that way."""
    if not queries or queries > max_lines:
        return 0
    gutter = max(len(row) for row in _row_names(queries, query_labels)) + 1
    return gutter if gutter + keys * LABELLED_CELL <= width else 0


def _labelled(
    matrix: np.ndarray,
    open_keys: np.ndarray | None,
    width: int,
    max_lines: int,
    colour: bool,
    pool: str,
    query_labels: Sequence[str] | None,
    key_labels: Sequence[str] | None,
    scale: str = "fixed",
    largest: float | None = None,
) -> list[RenderableType] | None:
    """Ruler, one line per query named by its label and index, legend, then the keys' names; None
    when the matrix does not fit that way (it is then pooled as usual)."""
    queries, keys = matrix.shape
    gutter = _labelled_gutter(queries, keys, width, max_lines, query_labels)
    if not gutter:
        return None
    pooled, masked = _pool(matrix, open_keys, 1, 1, pool)
    codes = cell_codes(rescaled(pooled, scale, largest), masked, colour)  # (Lq, Lk): one cell per weight
    return _labelled_lines(codes, gutter, width, colour, pool, query_labels, key_labels, scale)


def _labelled_lines(
    codes: npt.NDArray[np.int16],
    gutter: int,
    width: int,
    colour: bool,
    pool: str,
    query_labels: Sequence[str] | None,
    key_labels: Sequence[str] | None,
    scale: str = "fixed",
    left_out: str = "",
) -> list[RenderableType]:
    queries, keys = codes.shape
    rows = _row_names(queries, query_labels)
    ruler = "".join(str(j).rjust(LABELLED_CELL - 1).ljust(LABELLED_CELL) for j in range(keys)).rstrip()
    parts: list[RenderableType] = [
        Text("q\\k".ljust(gutter) + ruler, style="dim", no_wrap=True, overflow="crop")
    ]
    colours = colour_table()
    characters = CELL_CHARACTERS
    for row, label in zip(codes.tolist(), rows, strict=True):
        line = Text(no_wrap=True, overflow="crop")
        line.append(label.rjust(gutter - 1) + " ", style="dim")
        if colour:  # cells side by side, a block of colour
            for code in row:
                line.append(FULL_BLOCK * LABELLED_CELL, style=Style(color=colours[code]))
        else:  # characters, a space between keys
            line.append(" ".join(characters[code] * (LABELLED_CELL - 1) for code in row))
        parts.append(line)
    if key_labels:
        parts += _vertical_labels(key_labels[:keys], gutter)
    parts.append(Constrain(_legend(codes, colour, pool, 1, 1, scale, left_out), width))
    if key_labels:
        names = Text("keys: ", style="dim")
        names.append(" · ".join(f"{j} {cut_label(label)}" for j, label in enumerate(key_labels)), style="dim")
        parts.append(Constrain(names, width))
    return parts


def _vertical_labels(labels: Sequence[str], gutter: int) -> list[Text]:
    """The keys' labels written downwards under their columns, one character per line, at most
    VERTICAL_LABEL characters (a longer one cut with '…'): tokens that do not fit across a column
    still name it where it is."""
    names = [" ".join(label.split()) or "␣" for label in labels]
    names = [name if len(name) <= VERTICAL_LABEL else name[: VERTICAL_LABEL - 1] + "…" for name in names]
    lines = []
    for depth in range(max((len(name) for name in names), default=0)):
        cells = "".join((name[depth] if depth < len(name) else " ").ljust(LABELLED_CELL) for name in names)
        lines.append(Text(" " * gutter + cells.rstrip(), style="dim", no_wrap=True, overflow="crop"))
    return lines


def _pool(
    matrix: np.ndarray,
    open_keys: np.ndarray | None,
    block_rows: int,
    block_cols: int,
    pool: str,
) -> tuple[_FloatArray, npt.NDArray[np.bool_]]:
    """Max or mean of each (block_rows, block_cols) block, masked weights left out, and which
    blocks have every weight masked. The ragged last blocks are simply smaller."""
    queries, keys = matrix.shape
    dtype = np.float64 if matrix.dtype == np.float64 else np.float32
    values: _FloatArray = matrix.astype(dtype, copy=False)
    row_starts = np.arange(0, queries, block_rows)
    col_starts = np.arange(0, keys, block_cols)
    # Reduce along the contiguous key axis first: it is read in order.
    if pool == "max":
        if open_keys is not None:
            values = np.where(open_keys, values, -np.inf)
        pooled: _FloatArray = values
        if block_rows > 1 or block_cols > 1:
            pooled = np.maximum.reduceat(np.maximum.reduceat(values, col_starts, axis=1), row_starts, axis=0)
        return pooled, pooled == -np.inf  # (R, C)
    if open_keys is not None:
        values = np.where(open_keys, values, 0.0)
        counts = np.add.reduceat(
            np.add.reduceat(open_keys, col_starts, axis=1, dtype=np.int64), row_starts, axis=0
        )
    else:
        row_sizes = np.diff(np.append(row_starts, queries))
        col_sizes = np.diff(np.append(col_starts, keys))
        counts = np.outer(row_sizes, col_sizes)
    sums = np.add.reduceat(np.add.reduceat(values, col_starts, axis=1), row_starts, axis=0)
    masked = counts == 0
    means: _FloatArray = (sums / np.maximum(counts, 1)).astype(dtype, copy=False)  # (R, C)
    return means, masked


def cell_codes(pooled: _FloatArray, masked: npt.NDArray[np.bool_], colour: bool) -> npt.NDArray[np.int16]:
    """Each cell's code: a colour level (the tables' quantisation) or a ramp position, or masked/NaN."""
    with np.errstate(invalid="ignore"):
        if colour:
            levels = np.rint(np.clip(pooled, 0.0, 1.0) * (LEVELS - 1))
        else:
            levels = np.ceil(np.clip(pooled, 0.0, 1.0) * (len(RAMP) - 1))
    codes = np.where(np.isnan(pooled), _CODE_NAN, np.nan_to_num(levels)).astype(np.int16)
    codes[masked] = _CODE_MASKED
    return codes


def _gutter_label(line: int, first_query: int, gutter: int) -> str:
    if gutter == 0:  # no gutter (the grid's thumbnails)
        return ""
    label = str(first_query) if line % GUTTER_EVERY == 0 else ""
    return label.rjust(gutter - 1) + " "


def colour_lines(codes: npt.NDArray[np.int16], gutter: int, block_rows: int) -> list[Text]:
    """Two rows of cells per line: '▀' in the upper cell's colour on the lower cell's colour."""
    rows, cols = codes.shape
    if rows % 2:
        codes = np.vstack([codes, np.full((1, cols), _CODE_NONE, dtype=np.int16)])
    pairs = codes[0::2].astype(np.int32) * _CODES + codes[1::2]  # (lines, C): one style per pair
    # Runs of equal styles become one span each: fewer segments for Rich to render.
    starts_mask = np.ones(pairs.shape, dtype=bool)
    starts_mask[:, 1:] = pairs[:, 1:] != pairs[:, :-1]
    colours = colour_table()
    styles: dict[int, Style] = {}  # new Styles for each heatmap: Rich caches escape codes per Style
    cells = HALF_BLOCK * cols
    lines = []
    for line, (pair_row, start_row) in enumerate(zip(pairs, starts_mask, strict=True)):
        starts = np.flatnonzero(start_row).tolist()
        keys = pair_row[starts].tolist()
        ends = [*starts[1:], cols]
        spans = [Span(0, gutter, "dim")]
        for start, end, key in zip(starts, ends, keys, strict=True):
            style = styles.get(key)
            if style is None:
                upper, lower = divmod(key, _CODES)
                style = styles[key] = Style(color=colours[upper], bgcolor=colours[lower])
            spans.append(Span(gutter + start, gutter + end, style))
        plain = _gutter_label(line, line * 2 * block_rows, gutter) + cells
        lines.append(Text(plain, spans=spans, no_wrap=True, overflow="crop"))
    return lines


def colour_table() -> list[Color | None]:
    """The colour of each cell code: the weight tables' levels, then masked, NaN, and none."""
    table: list[Color | None] = [
        Color.from_rgb(*lerp(SEQUENTIAL, level / (LEVELS - 1))) for level in range(LEVELS)
    ]
    return [*table, Color.from_rgb(*MASKED_RGB), Color.from_rgb(*NAN_RGB), None]


def plain_lines(codes: npt.NDArray[np.int16], gutter: int, block_rows: int) -> list[Text]:
    """One row of cells per line, one ramp character per cell; no styles that carry meaning."""
    characters = np.array(CELL_CHARACTERS)
    drawn = characters[codes]  # (R, C)
    return [
        Text(
            _gutter_label(line, line * block_rows, gutter) + "".join(row.tolist()),
            spans=[Span(0, gutter, "dim")],
            no_wrap=True,
            overflow="crop",
        )
        for line, row in enumerate(drawn)
    ]


def _ruler(cols: int, block_cols: int, gutter: int, width: int) -> Text:
    """Key indices (of the matrix, not of the drawn columns) every RULER_EVERY drawn columns."""
    room = width - gutter
    ruler = [" "] * room
    for column in range(0, cols, RULER_EVERY):
        label = str(column * block_cols)
        if column + len(label) > room:
            break
        ruler[column : column + len(label)] = label
    corner = "q\\k" if gutter > 3 else ""
    return Text(corner.ljust(gutter) + "".join(ruler).rstrip(), style="dim", no_wrap=True, overflow="crop")


def _legend(
    codes: npt.NDArray[np.int16],
    colour: bool,
    pool: str,
    block_rows: int,
    block_cols: int,
    scale: str = "fixed",
    left_out: str = "",
) -> ItemLines:
    legend = Text()
    if colour:
        low, high, _ = SCALE_ENDS[scale]
        legend.append(f"colour: {low} ", style="dim")
        for step in range(10):
            rgb = lerp(SEQUENTIAL, step / 9)
            legend.append("█", style=Style(color=Color.from_rgb(*rgb)))
        legend.append(f" {high}", style="dim")
        masked, nan = "grey: masked", "red: NaN"
    else:
        legend.append(f"' '=0 {RAMP[1:]} ninths to 1", style="dim")
        masked, nan = f"{MASKED_CHAR}: masked", f"{NAN_CHAR}: NaN"
    notes = [] if scale == "fixed" else [f"colour scale: {SCALE_WORDS[scale]}"]
    if (codes == _CODE_MASKED).any():
        notes.append(masked)
    if (codes == _CODE_NAN).any():
        notes.append(nan)
    if block_rows == block_cols == 1:
        notes.append("one cell per weight")
    else:
        notes.append(f"each cell: {pool} of {block_rows}×{block_cols} weights")
    if left_out:
        notes.append(left_out)
    return ItemLines([legend, *(Text(note, style="dim") for note in notes)], separator_style="dim")
