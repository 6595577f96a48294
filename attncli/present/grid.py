"""`--view grid`: every chosen weight matrix as a small heatmap, side by side, wrapped to the width.

One thumbnail per matrix, drawn from the picture the computation pooled for it (as the heatmap
view's, at `thumbnail_size`), on the weights' fixed 0..1 colour scale, two matrix rows per line in
colour ('▀'), one per line as density characters without. A row of thumbnails per value of the
leading axes before the head axis (a capture's layers, or batch entries), named in a gutter, each
thumbnail labelled with its head and mean entropy; one legend for all. Returns Rich renderables.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import groupby

import numpy as np
from rich.console import Group, RenderableType
from rich.text import Text

from attncli.present.heatmap import RAMP, cell_codes, colour_lines, drawn_rows, plain_lines
from attncli.present.items import ItemLines
from attncli.present.options import ViewOptions
from attncli.present.style import SCALE_WORDS, rescaled
from attncli.selection import matrix_indices

#: The largest thumbnail, in matrix cells: 16 x 16 (8 lines in colour).
THUMBNAIL_CELLS = 16
GAP = 1  # columns between thumbnails
_SHORT = {"layer": "L", "head": "H", "batch": "b"}


def thumbnail_size(shape: tuple[int, int]) -> tuple[int, int]:
    """The (rows, cols) of pooled cells of each thumbnail: one per weight up to 16 x 16."""
    queries, keys = shape
    return max(min(queries, THUMBNAIL_CELLS), 1), max(min(keys, THUMBNAIL_CELLS), 1)


def grid_view(
    pictures: np.ndarray,
    blocks: tuple[int, int],
    shape: tuple[int, int],
    entropy: np.ndarray | None,
    options: ViewOptions,
    padding_rows: np.ndarray | None = None,
    selected: tuple[int, ...] | None = None,
) -> Group:
    """Thumbnails of `pictures` (..., R, C), each cell pooling `blocks` weights of an (Lq, Lk)
    matrix (`shape`): a row per value of the axes before the head axis, named in a left gutter
    (`L2` for layer 2, `b1` for batch entry 1), each thumbnail labelled with its head and the mean
    of `entropy` (..., Lq) when given. `padding_rows` (bool, broadcasting to (..., Lq)): rows of
    padding tokens, not drawn once they alone are left. `selected`: the index of a matrix whose
    label is drawn in reverse video (the explorer's cursor)."""
    leading = pictures.shape[:-2]
    axes = list(options.axes)[: len(leading)]
    indices = list(matrix_indices(leading, axes, options.batch, options.head))
    row_axes = len(leading) - 1 if axes and axes[-1] == "head" else len(leading)
    groups = [(key, [*group]) for key, group in groupby(indices, key=lambda index: index[:row_axes])]
    # An axis with one value in every row (--batch 0) is said once, above the grid, not per row.
    varying = [axis for axis in range(row_axes) if len({key[axis] for key, _ in groups}) > 1]
    fixed = [axis for axis in range(row_axes) if axis not in varying]
    parts: list[RenderableType] = []
    if fixed and groups:
        first = groups[0][0]
        said = [f"{axes[axis]} {_value(axes[axis], first[axis], options.axis_values)}" for axis in fixed]
        parts.append(Text(", ".join(said), style="bold"))

    varying_axes = [axes[axis] for axis in varying]
    names = [
        _name(tuple(key[axis] for axis in varying), varying_axes, options.axis_values) for key, _ in groups
    ]
    gutter = max((len(text) for text in names), default=0) + 1 if any(names) else 0
    padding = None if padding_rows is None else np.broadcast_to(padding_rows, (*leading, shape[0]))
    cut = False
    for name, (_, group) in zip(names, groups, strict=True):
        thumbnails = []
        for index in group:
            picture = pictures[index]
            if padding is not None:
                drawn, left_out = drawn_rows(padding[index], blocks[0], len(picture))
                picture, cut = picture[:drawn], cut or bool(left_out)
            label = _label(index[row_axes:], axes[row_axes:], options.axis_values, entropy, index)
            thumbnails.append(_thumbnail(picture, label, options, selected=index == selected))
        parts.extend(_wrapped(name, gutter, thumbnails, options.width))
    parts.append(_legend(blocks, shape, options, cut))
    return Group(*parts)


def _wrapped(name: str, gutter: int, thumbnails: list[list[Text]], width: int) -> list[Text]:
    """One row's thumbnails side by side after the row's name, on as many lines as `width` needs."""
    cell = max(max(len(line) for line in lines) for lines in thumbnails) if thumbnails else 1
    per_line = max(1, (width - gutter + GAP) // (cell + GAP))
    out: list[Text] = []
    for first in range(0, len(thumbnails), per_line):
        chunk = thumbnails[first : first + per_line]
        for line in range(max(len(lines) for lines in chunk)):
            label = name if first == 0 and line == 0 else ""
            text = Text(label.ljust(gutter), style="bold", no_wrap=True, overflow="crop")
            for number, lines in enumerate(chunk):
                if number:
                    text.append(" " * GAP)
                piece = lines[line] if line < len(lines) else Text("")
                text.append_text(piece)
                text.append(" " * (cell - len(piece)))
            text.rstrip()
            out.append(text)
    return out


def _name(key: tuple[int, ...], axes: Sequence[str], values: Mapping[str, Sequence[int]]) -> str:
    """`L2 b1`: the short name and value of each axis (the value it stands for, where known)."""
    return " ".join(
        f"{_SHORT.get(axis, axis[:1])}{_value(axis, i, values)}" for axis, i in zip(axes, key, strict=False)
    )


def _value(axis: str, index: int, values: Mapping[str, Sequence[int]]) -> int:
    return values[axis][index] if axis in values else index


def _thumbnail(picture: np.ndarray, label: str, options: ViewOptions, selected: bool = False) -> list[Text]:
    """The label, then the picture: in colour two rows of cells per line ('▀', the upper cell's
    colour on the lower's), else one row per line of density characters."""
    masked = np.isnan(picture)  # a cell whose every weight was masked: grey, as in the heatmap
    codes = cell_codes(rescaled(np.where(masked, 0.0, picture), options.color_scale), masked, options.colour)
    lines = colour_lines(codes, 0, 1) if options.colour else plain_lines(codes, 0, 1)
    style = "bold reverse" if selected else "bold"
    return [Text(label, style=style, no_wrap=True, overflow="crop"), *lines]


def _label(
    key: tuple[int, ...],
    axes: Sequence[str],
    values: Mapping[str, Sequence[int]],
    entropy: np.ndarray | None,
    index: tuple[int, ...],
) -> str:
    """`h3 1.83`: the head (the axes after the row's), then the matrix's mean entropy (nats)."""
    named = _name(key, axes, values).lower()
    if entropy is None:
        return named
    rows = np.asarray(entropy[index], dtype=np.float64)
    finite = rows[np.isfinite(rows)]
    return f"{named} {finite.mean():.2f}".strip() if finite.size else named


def _legend(
    blocks: tuple[int, int], shape: tuple[int, int], options: ViewOptions, cut: bool = False
) -> ItemLines:
    block_rows, block_cols = blocks
    pooled = (
        f"each cell the {options.pool} of {block_rows}×{block_cols} weights of each "
        f"{shape[0]}×{shape[1]} matrix"
        if blocks != (1, 1)
        else "one cell per weight"
    )
    scale = (
        f"colour: {SCALE_WORDS[options.color_scale]}"
        if options.colour
        else f"'{RAMP[0]}'=0 {RAMP[1:]} ninths to 1"
        + ("" if options.color_scale == "fixed" else f" ({SCALE_WORDS[options.color_scale]})")
    )
    padding = " · rows of padding tokens not drawn" if cut else ""
    words = f"{scale} · {pooled} · each labelled with its head and mean entropy (nats){padding}"
    return ItemLines.split(words, " · ", style="dim")
