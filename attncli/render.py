"""Rich renderables for attention results: headers, weight heatmap tables, output tables.

Everything here takes NumPy arrays and plain metadata and returns renderables; the caller prints
them. Weights are coloured on a fixed 0..1 scale (the same colour means the same weight in every
table); outputs on a diverging scale centred on zero. Large matrices are cropped the way NumPy
prints large arrays (first and last rows and columns around an ellipsis), so the time to show a
matrix depends on what is shown, not on its size.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import lru_cache
from itertools import islice
from typing import Any

import numpy as np
from rich import box
from rich.color import Color
from rich.console import Group, RenderableType
from rich.style import Style
from rich.table import Table
from rich.text import Text

# Perceptually ordered anchors (viridis) for weights in [0, 1].
_SEQUENTIAL = ((68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37))
# Blue for negative, light grey for zero, red for positive (RdBu, reversed).
_DIVERGING = ((5, 48, 97), (67, 147, 195), (230, 230, 230), (214, 96, 77), (103, 0, 31))
_LEVELS = 65  # colours are quantised (odd, so zero sits exactly mid-scale): few distinct styles
_ELLIPSIS = "…"
DEFAULT_MAX_ROWS = 32
DEFAULT_MAX_MATRICES = 8


def result_view(
    weights: np.ndarray,
    output: np.ndarray,
    meta: Mapping[str, Any],
    *,
    precision: int = 4,
    width: int = 80,
    max_rows: int = DEFAULT_MAX_ROWS,
    max_matrices: int = DEFAULT_MAX_MATRICES,
) -> Group:
    """The whole terminal view of a result: header, weight tables, output tables."""
    parts: list[RenderableType] = [header(meta), Text()]
    weight_axes = list(meta.get("weights_axes") or [])[: max(weights.ndim - 2, 0)]
    parts += _matrices(
        "weights",
        weights,
        weight_axes,
        lambda m, t: weight_table(m, precision=precision, width=width, max_rows=max_rows, title=t),
        max_matrices,
    )
    parts.append(weights_legend())
    parts.append(Text())
    limit = float(np.abs(output).max()) if output.size else 0.0
    output_axes = weight_axes[: max(output.ndim - 2, 0)]
    parts += _matrices(
        "output",
        output,
        output_axes,
        lambda m, t: output_table(m, limit, precision=precision, width=width, max_rows=max_rows, title=t),
        max_matrices,
    )
    parts.append(output_legend(limit, precision))
    return Group(*parts)


def header(meta: Mapping[str, Any]) -> Text:
    """Two or three lines saying what was computed, from what, and how."""
    shapes = meta.get("input_shapes", {})
    sources = meta.get("sources", {})
    text = Text()
    text.append("attention", style="bold")
    formula = "softmax(query @ keyᵀ × scale" + (" + mask" if meta.get("mask") else "") + ")"
    text.append(f"  weights = {formula}, output = weights @ value\n", style="dim")
    inputs = []
    for role in ("query", "key", "value"):
        source = sources.get(role)
        where = f" {source}" if source else ""
        inputs.append(f"{role}{where} {_shape_text(shapes.get(role, ()))}")
    text.append(" · ".join(inputs) + "\n")
    settings = [str(meta.get("dtype", "")), str(meta.get("device", "")), _scale_text(meta)]
    if meta.get("causal"):
        settings.append("causal")
    if meta.get("mask"):
        settings.append(f"mask {meta['mask']}")
    if meta.get("heads"):
        settings.append(f"{meta['heads']} heads")
    group = meta.get("query_heads_per_key_head", 1)
    if group and group > 1:
        settings.append(f"grouped: {group} query heads per key/value head")
    text.append(" · ".join(s for s in settings if s))
    return text


def weight_table(
    matrix: np.ndarray,
    *,
    precision: int = 4,
    width: int = 80,
    max_rows: int = DEFAULT_MAX_ROWS,
    title: str = "",
) -> Group:
    """One (Lq, Lk) weight matrix as a heatmap table; the largest weight of each row in bold."""
    row_max = matrix.max(axis=1) if matrix.size else np.zeros(matrix.shape[0])

    def style(row: int, value: float) -> Style:
        return _style(_SEQUENTIAL, _level(value), bold=value == row_max[row] and value > 0)

    return _matrix_table(matrix, style, precision, width, max_rows, title, corner="q\\k")


def output_table(
    matrix: np.ndarray,
    limit: float,
    *,
    precision: int = 4,
    width: int = 80,
    max_rows: int = DEFAULT_MAX_ROWS,
    title: str = "",
) -> Group:
    """One (Lq, Dv) output matrix; colour from -limit (blue) through 0 (grey) to +limit (red)."""

    def style(row: int, value: float) -> Style:
        return _style(
            _DIVERGING, _level(0.5 + 0.5 * value / limit) if limit > 0 else _LEVELS // 2, bold=False
        )

    return _matrix_table(matrix, style, precision, width, max_rows, title, corner="q\\f")


def weights_legend() -> Text:
    text = Text("colour: 0 ", style="dim")
    for step in range(16):
        text.append("█", style=Style(color=_rgb_color(_lerp(_SEQUENTIAL, step / 15))))
    text.append(" 1, one scale for all tables · bold: row maximum", style="dim")
    return text


def output_legend(limit: float, precision: int) -> Text:
    text = Text(f"colour: -{limit:.{precision}g} ", style="dim")
    for step in range(16):
        text.append("█", style=Style(color=_rgb_color(_lerp(_DIVERGING, step / 15))))
    text.append(f" +{limit:.{precision}g}, grey at 0", style="dim")
    return text


def visible_indices(size: int, limit: int) -> list[int | None]:
    """Indices to show along an axis of `size`: all of them, or the first and last around a None."""
    if size <= limit:
        return list(range(size))
    limit = max(limit, 3)
    head = (limit - 1) - (limit - 1) // 2
    tail = (limit - 1) // 2
    return [*range(head), None, *range(size - tail, size)]


def columns_that_fit(width: int, cell_width: int, label_width: int) -> int:
    """How many value columns of `cell_width` characters fit beside the row labels in `width`."""
    return max(3, (width - label_width - 1) // (cell_width + 2))


def _matrices(
    name: str,
    tensor: np.ndarray,
    axes: Sequence[str],
    table: Callable[[np.ndarray, str], Group],
    max_matrices: int,
) -> list[RenderableType]:
    """One titled table per matrix of `tensor` (..., rows, cols), at most `max_matrices` of them."""
    if tensor.ndim < 2:
        tensor = tensor.reshape(1, -1)
    leading = tensor.shape[:-2]
    total = math.prod(leading)
    parts: list[RenderableType] = []
    for index in islice(_indices(leading), max_matrices):
        parts.append(table(tensor[index], _title(name, index, axes, tensor.shape[-2:])))
    if total > max_matrices:
        parts.append(
            Text(
                f"{_ELLIPSIS} {total - max_matrices} more {name} matrices not shown "
                f"({name} {_shape_text(tensor.shape)}); save them all with -o FILE",
                style="yellow",
            )
        )
    return parts


def _indices(shape: tuple[int, ...]) -> Iterator[tuple[int, ...]]:
    yield from np.ndindex(*shape) if shape else iter([()])


def _title(name: str, index: tuple[int, ...], axes: Sequence[str], shape: tuple[int, ...]) -> str:
    where = f"[{', '.join(map(str, index))}]" if index else ""
    named = ", ".join(f"{axis} {i}" for axis, i in zip(axes, index, strict=False)) if axes else ""
    return f"{name}{where}" + (f" ({named})" if named else "") + f"  {shape[0]}×{shape[1]}"


def _matrix_table(
    matrix: np.ndarray,
    style: Callable[[int, float], Style],
    precision: int,
    width: int,
    max_rows: int,
    title: str,
    corner: str,
) -> Group:
    rows, cols = matrix.shape
    # The widest text is that of the smallest or the largest value: no need to format them all.
    extremes = [float(matrix.min()), float(matrix.max())] if matrix.size else [0.0]
    cell_width = max(*(len(f"{x:.{precision}f}") for x in extremes), len(str(cols - 1)))
    label_width = max(len(corner), len(str(rows - 1)))
    row_indices = visible_indices(rows, max_rows)
    col_indices = visible_indices(cols, columns_that_fit(width, cell_width, label_width))
    shown_matrix = matrix[
        np.ix_([i for i in row_indices if i is not None], [j for j in col_indices if j is not None])
    ]
    texts = _formatted(shown_matrix, precision)
    row_position = {i: n for n, i in enumerate(i for i in row_indices if i is not None)}
    col_position = {j: n for n, j in enumerate(j for j in col_indices if j is not None)}
    shown_rows = sum(i is not None for i in row_indices)
    shown_cols = sum(i is not None for i in col_indices)
    if (shown_rows, shown_cols) != (rows, cols):
        title += f"  (showing {shown_rows} rows × {shown_cols} columns)"
    table = Table(
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        padding=(0, 1),
        collapse_padding=True,
    )
    table.add_column(corner, justify="right", style="dim", no_wrap=True)
    for j in col_indices:
        table.add_column(_ELLIPSIS if j is None else str(j), justify="right", no_wrap=True)
    for i in row_indices:
        if i is None:
            table.add_row(_ELLIPSIS, *(_ELLIPSIS for _ in col_indices))
            continue
        cells: list[RenderableType] = [str(i)]
        for j in col_indices:
            if j is None:
                cells.append(_ELLIPSIS)
            else:
                cells.append(
                    Text(texts[row_position[i], col_position[j]], style=style(i, float(matrix[i, j])))
                )
        table.add_row(*cells)
    return Group(Text(title, style="bold"), table)


def _formatted(matrix: np.ndarray, precision: int) -> np.ndarray:
    """Every value as fixed-point text with `precision` digits (NumPy's own formatter, all at once)."""
    formatted = np.char.mod(f"%.{precision}f", matrix.astype(np.float64))
    return np.asarray(formatted, dtype=str)


def _level(t: float) -> int:
    return min(_LEVELS - 1, max(0, round(t * (_LEVELS - 1))))


def _style(anchors: tuple[tuple[int, int, int], ...], level: int, bold: bool) -> Style:
    # A new Style each time: Rich caches a Style's escape codes for the first console it meets.
    foreground, background = _colours(anchors, level)
    return Style(color=foreground, bgcolor=_rgb_color(background), bold=bold)


@lru_cache(maxsize=2 * _LEVELS)
def _colours(anchors: tuple[tuple[int, int, int], ...], level: int) -> tuple[str, tuple[int, int, int]]:
    """Text and background colour for a level: black text on light backgrounds, white on dark."""
    red, green, blue = _lerp(anchors, level / (_LEVELS - 1))
    luminance = (0.2126 * red + 0.7152 * green + 0.0722 * blue) / 255
    return ("black" if luminance > 0.45 else "white"), (red, green, blue)


def _lerp(anchors: tuple[tuple[int, int, int], ...], t: float) -> tuple[int, int, int]:
    position = min(max(t, 0.0), 1.0) * (len(anchors) - 1)
    low = min(int(position), len(anchors) - 2)
    fraction = position - low
    a, b = anchors[low], anchors[low + 1]
    red, green, blue = (round(x + (y - x) * fraction) for x, y in zip(a, b, strict=True))
    return red, green, blue


def _rgb_color(rgb: tuple[int, int, int]) -> Color:
    return Color.from_rgb(*rgb)


def _shape_text(shape: Sequence[int]) -> str:
    return "(" + ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "") + ")"


def _scale_text(meta: Mapping[str, Any]) -> str:
    scale = meta.get("scale")
    if scale is None:
        return ""
    text = f"scale {scale:.6g}"
    key_shape = meta.get("input_shapes", {}).get("key") or []
    if key_shape:
        features = key_shape[-1] // (meta.get("heads") or 1)
        if features and math.isclose(scale, 1 / math.sqrt(features), rel_tol=1e-12):
            text += f" = 1/√{features}"
    return text
