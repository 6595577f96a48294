"""Rich renderables for attention results: headers, weight heatmap tables, output tables.

Everything here takes NumPy arrays and plain metadata and returns renderables; the caller prints
them. Weights are coloured on a fixed 0..1 scale (the same colour means the same weight in every
table); outputs on a diverging scale centred on zero. Large matrices are cropped the way NumPy
prints large arrays (first and last rows and columns around an ellipsis), so the time to show a
matrix depends on what is shown, not on its size.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from rich import box
from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.measure import Measurement
from rich.padding import Padding
from rich.segment import Segment
from rich.style import Style
from rich.table import Table
from rich.text import Text

from attncli.analysis import STAT_NAMES
from attncli.present.items import ItemLines
from attncli.present.options import ViewOptions
from attncli.present.style import (
    DIVERGING,
    ELLIPSIS,
    LEVELS,
    MASKED,
    SCALE_ENDS,
    SEQUENTIAL,
    cell_style,
    cut_label,
    lerp,
    levels,
    rescaled,
    rgb_color,
)
from attncli.selection import matrix_indices

if TYPE_CHECKING:
    from attncli.compute import KeptTable


def result_view(
    output: np.ndarray,
    meta: Mapping[str, Any],
    options: ViewOptions,
    table: KeptTable,
    entropy: np.ndarray | None,
    *,
    analysis: Mapping[str, np.ndarray] | None = None,
    pictures: np.ndarray | None = None,
    picture_blocks: tuple[int, int] = (1, 1),
    counted_rows: np.ndarray | None = None,
) -> Group:
    """The view of a result, however it was computed: the header, each weight matrix with its
    statistics, then each output matrix. `counted_rows` (bool, broadcasting to (..., Lq)): the
    query rows of real tokens, False for a capture's padding, which the statistics tables dim and
    leave out of their means.

    What is drawn was kept by the computation's consumers: `table` (`compute.KeptTable`), the cells
    a table shows and every matrix's figures for its title; `entropy` (..., Lq), each row's, whose
    mean the title gives; `pictures` (..., R, C), each cell the max or mean of `picture_blocks`
    weights, for the heatmap view (`options.view == "heatmap"`). `analysis` may hold the per-row
    statistics (STAT_NAMES, each (..., Lq)) and `top_k_weights`/`top_k_keys` (..., Lq, K), shown
    under each matrix. A run in blocks (`meta["block_rows"]`) gets a line saying so.
    """
    from attncli.present.heatmap import pooled_heatmap

    analysis = analysis or {}
    weights_shape = tuple(meta["weights_shape"])
    weight_axes = list(options.axes or meta.get("weights_axes") or [])[: max(len(weights_shape) - 2, 0)]
    rows, cols = weights_shape[-2:]
    dtype = str(meta.get("dtype", ""))
    heatmap = options.view == "heatmap"
    # the counted rows of each matrix: (..., Lq), a view however few axes the mask has
    counted = None if counted_rows is None else np.broadcast_to(counted_rows, weights_shape[:-1])
    padded = counted is not None and not bool(counted.all())
    if options.view in ("heatmap", "grid") and pictures is None:
        raise ValueError("the heatmap and grid views draw the pooled pictures: pass pictures")
    if options.view == "grid":  # the weights alone, every chosen matrix at once
        from attncli.present.grid import grid_view

        assert pictures is not None
        padding = None if counted is None or not padded else ~counted
        return Group(
            header(meta),
            Text(),
            grid_view(pictures, picture_blocks, (rows, cols), entropy, options, padding),
        )

    def padding_of(index: tuple[int, ...]) -> np.ndarray | None:
        return None if counted is None or not padded else ~counted[index]

    def show_weights(index: tuple[int, ...], name: str) -> RenderableType:
        live = bool(table.live[index])
        mean_entropy = _nanmean(entropy[index]) if live and entropy is not None else math.nan
        figures = (float(table.minimum[index]), float(table.maximum[index]), float(table.deviation[index]))
        title = summary_line(name, (rows, cols), dtype, *figures, mean_entropy, live)
        picture: RenderableType
        if heatmap:
            assert pictures is not None
            picture = pooled_heatmap(
                pictures[index],
                blocks=picture_blocks,
                shape=(rows, cols),
                title=title,
                width=options.width,
                pool=options.pool,
                colour=options.colour,
                query_labels=options.query_labels,
                key_labels=options.key_labels,
                scale=options.color_scale,
                largest=float(table.maximum[index]),
                padding_rows=padding_of(index),
            )
        else:
            picture = kept_weight_table(
                table.cells[index],
                (rows, cols),
                table.row_max[index],
                options=options,
                title=title,
                blocked=None if table.blocked is None else table.blocked[index],
                matrix_max=float(table.maximum[index]),
                padding_rows=padding_of(index),
            )
        extras = (
            _analysis_parts(name, index, analysis, options, None if counted is None else counted[index])
            if "stats" in options.sections
            else []
        )
        return Group(picture, *extras) if extras else picture

    parts: list[RenderableType] = [header(meta)]
    block_rows = meta.get("block_rows")
    if block_rows is not None:
        shown = (
            f"the heatmap shows the {options.pool} of each block"
            if heatmap
            else "the table shows the rows and columns that fit"
        )
        rows_text = f"{block_rows} query row" + ("" if block_rows == 1 else "s")
        parts.append(
            Text(f"computed in blocks of {rows_text}; the weights were not kept, {shown}", style="dim")
        )
    parts.append(Text())
    every_matrix = np.broadcast_to(table.live[..., None, None], weights_shape)  # a view, for the shape
    if "weights" in options.sections:
        parts += _matrices("weights", every_matrix, weight_axes, options, show_weights)
        if not heatmap:
            parts.append(weights_legend(table.any_blocked, options.color_scale, padded, options.colour))
        parts.append(Text())
    elif "stats" in options.sections and analysis:  # the statistics alone, matrix by matrix

        def show_stats(index: tuple[int, ...], name: str) -> RenderableType:
            return Group(
                *_analysis_parts(name, index, analysis, options, None if counted is None else counted[index])
            )

        parts += _matrices("weights", every_matrix, weight_axes, options, show_stats)
        parts.append(Text())
    if "output" in options.sections:
        parts += _output_section(output, meta, options, weight_axes, None if not padded else counted)
    return Group(*parts)


def _analysis_parts(
    name: str,
    index: tuple[int, ...],
    analysis: Mapping[str, np.ndarray],
    options: ViewOptions,
    counted: np.ndarray | None = None,
) -> list[RenderableType]:
    """The --stats and --top-k tables of one matrix, when they were asked for."""
    parts: list[RenderableType] = []
    if "entropy" in analysis:
        parts += [Text(), Text(f"{name}: statistics per query row", style="bold")]
        parts.append(stats_table({stat: analysis[stat][index] for stat in STAT_NAMES}, options, counted))
    if "top_k_keys" in analysis:
        parts += [Text(), Text(f"{name}: most attended keys per query row", style="bold")]
        parts.append(top_k_table(analysis["top_k_weights"][index], analysis["top_k_keys"][index], options))
    return parts


def _output_section(
    output: np.ndarray,
    meta: Mapping[str, Any],
    options: ViewOptions,
    weight_axes: Sequence[str],
    counted: np.ndarray | None = None,
) -> list[RenderableType]:
    """Each output matrix as a table on the diverging scale, and its legend. `counted` (bool, the
    weights' leading axes and Lq): the rows of real tokens; the others are dimmed."""
    dtype = str(meta.get("dtype", output.dtype))
    merged = bool(meta.get("heads")) and "head" in weight_axes  # --heads: one output for all heads
    output_axes = [a for a in weight_axes if a != "head"] if merged else list(weight_axes)
    output_axes = output_axes[: max(output.ndim - 2, 0)]
    # one colour scale for the matrices shown (not for those --batch/--head left out)
    shown = (
        [output[index] for index in _shown_indices(output.shape, output_axes, options)]
        if output.ndim >= 2
        else [output]
    )
    limit = max((float(np.abs(matrix).max()) for matrix in shown if matrix.size), default=0.0)
    if counted is not None and merged:  # padding is the same for every head: take head 0's rows
        counted = np.take(counted, 0, axis=list(weight_axes).index("head"))

    def show_output(index: tuple[int, ...], name: str) -> RenderableType:
        matrix = output[index]
        return output_table(
            matrix,
            limit,
            options=options,
            title=output_summary(name, matrix, dtype),
            padding_rows=None if counted is None else ~counted[index],
        )

    return [
        *_matrices("output", output, output_axes, options, show_output),
        *([output_legend(limit, options.precision, counted is not None)] if options.colour else []),
    ]


def header(meta: Mapping[str, Any]) -> Group:
    """Two or three lines saying what was computed, from what, and how; with `attn model`, a line
    saying whether the weights agree with the model's own. Lines break between their items (an
    input and its shape, a setting), never inside one."""
    shapes = meta.get("input_shapes", {})
    sources = meta.get("sources", {})
    formula = "softmax(query @ keyᵀ × scale" + (" + mask" if meta.get("mask") else "") + ")"
    text = Text("attention", style="bold")
    text.append(f"  weights = {formula}", style="dim")
    what = ItemLines([text, Text("output = weights @ value", style="dim")], separator=", ")
    inputs = []
    for role in ("query", "key", "value"):
        source = sources.get(role)
        where = f" {source}" if source else ""
        inputs.append(f"{role}{where} {_shape_text(shapes.get(role, ()))}")
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
    lines: list[RenderableType] = [what, ItemLines(inputs), ItemLines(settings)]
    agreement = meta.get("agreement")
    if isinstance(agreement, Mapping):  # attn model: against the model's own probabilities
        passed = agreement.get("passed")
        words = "agrees with" if passed else "DISAGREES with"
        limit = "" if passed else f" > {agreement.get('tolerance')}"
        lines.append(
            Text(
                f"{words} the model's attention probabilities: max abs diff "
                f"{agreement.get('max_abs_diff', float('nan')):.2g}{limit} ({agreement.get('reference')})",
                style="" if passed else "bold red",
            )
        )
    return Group(*lines)


def summary_line(
    name: str,
    shape: tuple[int, int],
    dtype: str,
    minimum: float,
    maximum: float,
    deviation: float,
    entropy: float,
    live: bool,
) -> str:
    """A weight matrix's title, in the spirit of lovely-tensors, e.g.
    `weights[0, 3] (batch 0, head 3)  12×12  float32  min=0.001 max=0.873 rowsum=1±2e-07 entropy=1.21 nats`:
    the smallest and largest weight over open keys, the largest |row sum - 1| and the mean entropy
    over rows with an open key (`live`: any), as `compute.KeptTable` and the statistics keep them."""
    rows, cols = shape
    text = f"{name}  {rows}×{cols}  {dtype}"
    if not live:
        return text + "  every key masked"
    spread = "0" if deviation == 0 else f"{deviation:.0e}"
    # key=value, so that a line too long for the terminal breaks between figures, not inside one
    return f"{text}  min={minimum:.3g} max={maximum:.3g} rowsum=1±{spread} entropy={entropy:.3g} nats"


def output_summary(name: str, matrix: np.ndarray, dtype: str) -> str:
    """`output[0]  12×64  float32  min=-1.2 max=0.93 mean=0.012 std=0.41`."""
    values = matrix.astype(np.float64)
    rows, cols = matrix.shape
    return (
        f"{name}  {rows}×{cols}  {dtype}  min={values.min():.3g} max={values.max():.3g}"
        f" mean={values.mean():.3g} std={values.std():.3g}"
    )


def weight_table(
    matrix: np.ndarray,
    *,
    options: ViewOptions | None = None,
    title: str = "",
    blocked: np.ndarray | None = None,
    cursor: tuple[int, int] | None = None,
) -> Group:
    """One (Lq, Lk) weight matrix as a heatmap table: the largest weight of each row in bold,
    masked keys as a dim dot, the cell (row, key) `cursor` in reverse video where it is shown."""
    options = options or ViewOptions()
    row_max = matrix.max(axis=1) if matrix.size else np.zeros(matrix.shape[0])
    shut = None if blocked is None else np.broadcast_to(blocked, matrix.shape)
    top = float(np.where(shut, -np.inf, matrix).max()) if shut is not None and matrix.size else None
    return _weights_table(
        matrix, lambda row: float(row_max[row]), options, title, shut, matrix_max=top, cursor=cursor
    )


def table_window(shape: tuple[int, int], options: ViewOptions) -> tuple[list[int], list[int]]:
    """The rows and columns of a (Lq, Lk) weight matrix that `weight_table` shows with `options`:
    what a computation in blocks keeps of each matrix for its table."""
    cell_width = _weight_cell_width(options)
    row_names, col_names = _axis_names(shape, options.query_labels, options.key_labels)
    row_indices, col_indices = _layout(shape, options, cell_width, "q\\k", row_names, col_names)
    return [i for i in row_indices if i is not None], [j for j in col_indices if j is not None]


def kept_views(
    shape: tuple[int, int], options: ViewOptions
) -> tuple[tuple[int, int] | None, tuple[list[int], list[int]]]:
    """What a computation keeps of each (Lq, Lk) matrix for `result_view` with `options`: the
    (rows, cols) of its pooled picture for a heatmap (None for a table), and the rows and columns a
    table shows (none for a heatmap, whose title still takes the table's figures)."""
    if options.view == "grid":
        from attncli.present.grid import thumbnail_size

        return thumbnail_size(shape), ([], [])
    if options.view != "heatmap":
        return None, table_window(shape, options)
    from attncli.present.heatmap import picture_size

    size = picture_size(
        shape,
        width=options.width,
        max_lines=max(shape[0], 1) if options.full else options.max_rows,
        colour=options.colour,
        query_labels=options.query_labels,
        key_labels=options.key_labels,
    )
    return size, ([], [])


def kept_weight_table(
    cells: np.ndarray,
    shape: tuple[int, int],
    row_max: np.ndarray,
    *,
    options: ViewOptions,
    title: str = "",
    blocked: np.ndarray | None = None,
    matrix_max: float | None = None,
    padding_rows: np.ndarray | None = None,
) -> Group:
    """`weight_table` of a matrix of `shape` of which only `cells`, its weights at `table_window`'s
    rows and columns, were kept (with `row_max`, those rows' largest weights, `blocked`, bool like
    `cells`, and `matrix_max`, the largest weight of all): the same table, drawn from them.
    `padding_rows` (bool, one per matrix row): rows of padding tokens, drawn dim and uncoloured."""
    rows, cols = table_window(shape, options)
    position = {i: n for n, i in enumerate(rows)}

    def largest(row: int) -> float:
        return float(row_max[position[row]])

    return _weights_table(
        cells,
        largest,
        options,
        title,
        blocked,
        window=(shape, rows, cols),
        matrix_max=matrix_max,
        padding_rows=padding_rows,
    )


def _weights_table(
    matrix: np.ndarray,
    row_max: Callable[[int], float],
    options: ViewOptions,
    title: str,
    blocked: np.ndarray | None,
    window: tuple[tuple[int, int], list[int], list[int]] | None = None,
    matrix_max: float | None = None,
    padding_rows: np.ndarray | None = None,
    cursor: tuple[int, int] | None = None,
) -> Group:
    """A weight table on `options.color_scale` (`matrix_max`: the matrix's largest weight, for
    `max`), each row's largest weight (`row_max(row)`) in bold, the cell `cursor` highlighted."""

    def shade(values: np.ndarray, rows: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        largest = np.array([row_max(i) for i in rows], dtype=np.float64).reshape(-1, 1)
        scale = options.color_scale
        if scale == "row":  # each row to its own largest, over every key (not only those shown)
            with np.errstate(invalid="ignore", divide="ignore"):
                position = np.where(largest > 0, values / largest, values)
        else:
            top = matrix_max if matrix_max is not None else float(np.nanmax(largest, initial=0.0))
            position = rescaled(values, scale, top)
        return levels(position), (values == largest) & (values > 0)

    return _matrix_table(
        matrix,
        SEQUENTIAL,
        shade,
        options,
        title,
        corner="q\\k",
        row_labels=options.query_labels,
        col_labels=options.key_labels,
        blocked=blocked,
        window=window,
        padding_rows=padding_rows,
        mark_bold=not options.colour,
        cursor=cursor,
    )


def output_table(
    matrix: np.ndarray,
    limit: float,
    *,
    options: ViewOptions | None = None,
    title: str = "",
    padding_rows: np.ndarray | None = None,
) -> Group:
    """One (Lq, Dv) output matrix; colour from -limit (blue) through 0 (grey) to +limit (red);
    `padding_rows` (bool, per row) dim and uncoloured."""
    options = options or ViewOptions()

    def shade(values: np.ndarray, rows: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        shades = levels(0.5 + 0.5 * values / limit) if limit > 0 else np.full(values.shape, LEVELS // 2)
        return shades, np.zeros(values.shape, dtype=bool)

    return _matrix_table(
        matrix,
        DIVERGING,
        shade,
        options,
        title,
        corner="q\\f",
        row_labels=options.query_labels,
        padding_rows=padding_rows,
    )


def stats_table(
    stats: Mapping[str, np.ndarray], options: ViewOptions, counted: np.ndarray | None = None
) -> Table:
    """Per query row of one matrix: entropy (nats and normalised), largest weight and its key,
    weight on key 0 (sink), mean attention distance; a last row with their means over live rows.
    Rows that `counted` (bool, per row) marks False (a capture's padding) are dimmed and left out
    of the means."""
    rows = len(stats["entropy"])
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, title_justify="left")
    for heading in ("query", "entropy", "normalised", "max", "argmax", "sink", "distance"):
        table.add_column(heading, justify="right", no_wrap=True, style="dim" if heading == "query" else None)
    key_names = options.key_labels
    for i in visible_indices(rows, options.max_rows):
        if i is None:
            table.add_row(*([ELLIPSIS] * 7))
            continue
        argmax = int(stats["argmax"][i])
        key = "" if argmax < 0 else cut_label(key_names[argmax]) if key_names else str(argmax)
        table.add_row(
            cut_label(options.query_labels[i]) if options.query_labels else str(i),
            *(
                _number(stats[name][i], options.precision)
                for name in ("entropy", "entropy_normalised", "max_weight")
            ),
            key,
            *(_number(stats[name][i], options.precision) for name in ("sink", "distance")),
            style="dim" if counted is not None and not counted[i] else None,
        )
    kept = np.ones(rows, dtype=bool) if counted is None else np.asarray(counted, dtype=bool)
    means = {
        name: _nanmean(np.asarray(stats[name])[kept])
        for name in ("entropy", "entropy_normalised", "max_weight", "sink", "distance")
    }
    shown = {name: _number(mean, options.precision) for name, mean in means.items()}
    table.add_section()
    table.add_row(
        "mean" if kept.all() else "mean of tokens",
        shown["entropy"],
        shown["entropy_normalised"],
        shown["max_weight"],
        "",
        shown["sink"],
        shown["distance"],
        style="bold",
    )
    return table


def top_k_table(weights: np.ndarray, keys: np.ndarray, options: ViewOptions) -> Table:
    """Per query row of one matrix: its most attended keys, largest first, with their weights."""
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    table.add_column("query", justify="right", style="dim", no_wrap=True)
    table.add_column(f"top {keys.shape[-1]} keys (weight)", no_wrap=True)
    for i in visible_indices(len(keys), options.max_rows):
        if i is None:
            table.add_row(ELLIPSIS, ELLIPSIS)
            continue
        picks = [
            f"{cut_label(options.key_labels[j]) if options.key_labels else j} ({w:.{options.precision}f})"
            for j, w in zip(keys[i].tolist(), weights[i].tolist(), strict=True)
            if j >= 0
        ]
        table.add_row(
            cut_label(options.query_labels[i]) if options.query_labels else str(i), "  ".join(picks) or "–"
        )
    return table


def check_table(comparisons: Sequence[Any]) -> Group:
    """The --check report: each comparison of the weights path with a reference, the figures its
    verdict rests on (the element that uses the largest share of its tolerance: its |difference|
    beside what it was allowed there), and the verdict. Fitted to the width it is rendered at: the
    index and the counts wrap at their spaces, so that no number or verdict is cut at 80 columns."""

    def figure(value: float) -> str:
        return "0" if value == 0 else f"{value:.2e}" if math.isfinite(value) else str(value)

    tolerances = dict.fromkeys((c.rtol, c.atol) for c in comparisons)
    limits = "; ".join(f"rtol {rtol:g}, atol {atol:g}" for rtol, atol in tolerances)
    references = dict.fromkeys((c.against, c.reference) for c in comparisons)
    lines = [
        Text("check: the weights path against the fused kernel and the float64 maths", style="bold"),
        *(Text(f"{short}: {reference}", style="dim") for short, reference in references),
        Text(
            f"|diff| = |attncli − reference|; allowed = atol + rtol × |reference| ({limits}); "
            "outside: |diff| > allowed. Each row shows the element with the largest |diff| / allowed.",
            style="dim",
        ),
    ]
    rows = []
    for c in comparisons:
        sign = "≤" if c.worst_abs <= c.worst_allowed else ">"
        rows.append(
            (
                Text(f"{c.tensor} vs {c.against}"),
                Text(f"{figure(c.worst_abs)} {sign} {figure(c.worst_allowed)}" if c.compared else "–"),
                Text(_shape_text(c.worst_index) if c.worst_index else "–"),
                Text(f"{c.outside:,} of {c.compared:,}"),
                Text("✓ same", style="bold green") if c.passed else Text("✗ DIFFERENT", style="bold red"),
            )
        )
    return Group(*lines, _CheckTable(rows))


class _CheckTable:
    """check_table's rows, as a table fitted to the width: the index and count columns wrap at
    their spaces, never below their longest word (Rich would shrink them further, and cut)."""

    HEADINGS = ("compared", "|diff| vs allowed", "at", "outside", "")
    WRAPPING = (2, 3)  # columns that may take several lines
    GAPS = 2 * (len(HEADINGS) - 1)  # a space of padding and a divider between columns

    def __init__(self, rows: Sequence[tuple[Text, ...]]) -> None:
        self.rows = rows

    def table(self, width: int) -> RenderableType:
        """The table at `width`; narrower than its longest words need, a few lines per comparison."""
        columns = list(zip(*self.rows, strict=True)) if self.rows else [()] * len(self.HEADINGS)
        natural = [
            max([cell_len(heading), *(cell.cell_len for cell in cells)])
            for heading, cells in zip(self.HEADINGS, columns, strict=True)
        ]
        widths: list[int | None] = [None] * len(natural)
        if sum(natural) + self.GAPS > width:
            at, outside = self.WRAPPING
            shortest = [
                max(
                    [
                        cell_len(self.HEADINGS[i]),
                        *(len(word) for cell in columns[i] for word in cell.plain.split()),
                    ]
                )
                for i in self.WRAPPING
            ]
            room = width - self.GAPS - sum(w for i, w in enumerate(natural) if i not in self.WRAPPING)
            if room < sum(shortest):
                return self.lines()
            # the index whole where the counts can wrap instead, each at least its longest word
            widths[outside] = min(natural[outside], max(shortest[1], room - natural[at]))
            widths[at] = max(shortest[0], min(natural[at], room - widths[outside]))
        table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1, 0, 0))
        for index, heading in enumerate(self.HEADINGS):
            table.add_column(heading, width=widths[index], no_wrap=index not in self.WRAPPING)
        for row in self.rows:
            table.add_row(*row)
        return table

    def lines(self) -> Group:
        """Each comparison as lines that wrap at their spaces, for a terminal too narrow for the table."""
        texts = []
        for label, figures, at, outside, verdict in self.rows:
            texts.append(Text.assemble(label, ": ", verdict))
            texts.append(Text.assemble("  |diff| vs allowed ", figures, " at ", at, "; outside ", outside))
        return Group(*texts)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield self.table(options.max_width)

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        return Measurement.get(console, options, self.table(options.max_width))


def _number(value: float, precision: int) -> str:
    return "–" if not math.isfinite(value) else f"{value:.{precision}f}"


def _nanmean(values: np.ndarray) -> float:
    """The mean of the finite values (rows with every key masked have none), NaN when there are none."""
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else math.nan


def weights_legend(
    masked: bool = False, scale: str = "fixed", padding: bool = False, colour: bool = True
) -> ItemLines:
    """What the weight tables' colours and marks mean. The colour bar is not dimmed: it shows the
    cells' own colours. Without colour, the row maximum is marked `*` and the legend says so."""
    notes = []
    text = Text()
    if colour:
        low, high, words = SCALE_ENDS[scale]
        text.append(f"colour: {low} ", style="dim")
        for step in range(16):
            text.append("█", style=Style(color=rgb_color(lerp(SEQUENTIAL, step / 15))))
        text.append(f" {high}, {words}", style="dim")
        notes.append("bold: row maximum")
    else:
        notes.append(f"{ROW_MAX_MARK}: row maximum")
    if masked:
        notes.append(f"{MASKED}: masked")
    if padding:
        notes.append(
            "dim rows: padding tokens, left out of the statistics"
            if colour
            else "[PAD] rows: padding tokens, left out of the statistics"
        )
    return ItemLines([text, *(Text(note, style="dim") for note in notes)], separator_style="dim")


#: The mark after each row's largest weight where there are no colours (and so no bold).
ROW_MAX_MARK = "*"
#: The cell under `attn explore`'s cursor in a table: reverse video, in colour and without.
CURSOR_CELL = Style(reverse=True, bold=True)


def output_legend(limit: float, precision: int, padding: bool = False) -> Text:
    """The output tables' colour bar (shown with colours only: without, it has nothing to explain)."""
    text = Text(f"colour: -{limit:.{precision}g} ", style="dim")
    for step in range(16):
        text.append("█", style=Style(color=rgb_color(lerp(DIVERGING, step / 15))))
    text.append(f" +{limit:.{precision}g}, grey at 0", style="dim")
    if padding:
        text.append(" · dim rows: padding tokens", style="dim")
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
    options: ViewOptions,
    show: Callable[[tuple[int, ...], str], RenderableType],
) -> list[RenderableType]:
    """One titled renderable per chosen matrix of `tensor` (..., rows, cols).

    With no --batch/--head choice, at most `options.max_matrices`, then a line saying how to choose.
    """
    if tensor.ndim < 2:
        tensor = tensor.reshape(1, -1)
    indices = list(matrix_indices(tensor.shape[:-2], axes, options.batch, options.head))
    limit = len(_shown_indices(tensor.shape, axes, options))
    parts: list[RenderableType] = []
    for number, index in enumerate(indices[:limit]):
        if number:
            parts.append(Text())  # a blank line between matrices
        parts.append(show(index, _title(name, index, axes, options.axis_values)))
    if len(indices) > limit:
        options_named = [
            option for axis, option in (("batch", "--batch I"), ("head", "--head H")) if axis in axes
        ]
        choose = f"choose them with {' '.join(options_named)} (e.g. 0:4 or 1,3), or " if options_named else ""
        parts.append(
            Text(
                f"{ELLIPSIS} {len(indices) - limit} more {name} matrices not shown ({name} "
                f"{_shape_text(tensor.shape)}); {choose}save them all with -o FILE",
                style="yellow",
            )
        )
    return parts


def _shown_indices(shape: Sequence[int], axes: Sequence[str], options: ViewOptions) -> list[tuple[int, ...]]:
    """The indices of the matrices of a tensor of `shape` (..., rows, cols) that `_matrices` shows:
    the chosen ones (--batch, --head), else the first `options.max_matrices`."""
    indices = list(matrix_indices(tuple(shape[:-2]), axes, options.batch, options.head))
    chosen = options.batch is not None or options.head is not None
    return indices if chosen else indices[: options.max_matrices]


def _title(
    name: str, index: tuple[int, ...], axes: Sequence[str], values: Mapping[str, Sequence[int]] | None = None
) -> str:
    """`weights[0, 2] (layer 3, head 2)`: the index, and each axis by name with what it stands for."""
    where = f"[{', '.join(map(str, index))}]" if index else ""
    values = values or {}
    named = ", ".join(
        f"{axis} {values[axis][i] if axis in values else i}" for axis, i in zip(axes, index, strict=False)
    )
    return f"{name}{where}" + (f" ({named})" if named else "")


# The colour level (0..LEVELS-1) and boldness of each cell shown, from their values (float64,
# shown rows x shown columns) and the indices of their rows.
Shade = Callable[[np.ndarray, Sequence[int]], tuple[np.ndarray, np.ndarray]]


def _matrix_table(
    matrix: np.ndarray,
    anchors: tuple[tuple[int, int, int], ...],
    shade: Shade,
    options: ViewOptions,
    title: str,
    corner: str,
    row_labels: Sequence[str] | None = None,
    col_labels: Sequence[str] | None = None,
    blocked: np.ndarray | None = None,
    window: tuple[tuple[int, int], list[int], list[int]] | None = None,
    padding_rows: np.ndarray | None = None,
    mark_bold: bool = False,
    cursor: tuple[int, int] | None = None,
) -> Group:
    """A matrix as a table, cropped to what fits (all of it with --full, as wide as its columns).
    With `window` = (shape, rows, cols), `matrix` (and `blocked`) hold only those rows and columns
    of a matrix of that shape: the ones shown. `padding_rows` (bool, one per row of the matrix):
    rows of padding tokens, their numbers dim and uncoloured. `mark_bold`: the cells `shade` makes
    bold also get ROW_MAX_MARK after them (the others a space), for output without styles. `cursor`
    (row, column of `matrix`): that cell drawn in reverse video, where it is shown."""
    precision = options.precision
    if window is None:
        shape = matrix.shape
        # The widest text is that of the smallest or the largest value: no need to format them all.
        extremes = [float(matrix.min()), float(matrix.max())] if matrix.size else [0.0]
        cell_width = max(len(f"{x:.{precision}f}") for x in extremes) + mark_bold
    else:
        shape = window[0]
        cell_width = _weight_cell_width(options)  # weights lie in [0, 1]
    rows, cols = shape
    row_names, col_names = _axis_names((rows, cols), row_labels, col_labels)
    row_indices, col_indices = _layout((rows, cols), options, cell_width, corner, row_names, col_names)
    shown_row_list = [i for i in row_indices if i is not None]
    shown_col_list = [j for j in col_indices if j is not None]
    if window is None:
        values = matrix[np.ix_(shown_row_list, shown_col_list)]
        shown_blocked = None if blocked is None else blocked[np.ix_(shown_row_list, shown_col_list)]
    else:
        if (shown_row_list, shown_col_list) != (window[1], window[2]):
            raise ValueError("the kept cells are not the ones this table shows")
        values, shown_blocked = matrix, blocked
    values = np.asarray(values, dtype=np.float64).reshape(len(shown_row_list), len(shown_col_list))
    shades, bold = shade(values, shown_row_list)
    texts = _formatted(values, precision)
    if mark_bold:
        texts = np.char.add(texts, np.where(bold, ROW_MAX_MARK, " "))
    shown_blocked = None if shown_blocked is None else np.asarray(shown_blocked, dtype=bool)
    lengths = np.char.str_len(texts)
    if shown_blocked is not None:
        lengths = np.where(shown_blocked, cell_len(MASKED), lengths)
    if (len(shown_row_list), len(shown_col_list)) != (rows, cols):
        title += f"  (showing {len(shown_row_list)} rows × {len(shown_col_list)} columns)"
    cells = _MatrixCells(
        corner,
        [ELLIPSIS if j is None else col_names[j] for j in col_indices],
        [ELLIPSIS if i is None else row_names[i] for i in row_indices],
        _positions(row_indices),
        _positions(col_indices),
        texts.tolist(),
        (shades * 2 + bold).tolist(),
        None if shown_blocked is None else shown_blocked.tolist(),
        (lengths.max(axis=0) if len(shown_row_list) else np.zeros(len(shown_col_list), int)).tolist(),
        anchors,
        None if padding_rows is None else np.asarray(padding_rows, dtype=bool)[shown_row_list].tolist(),
        highlight=(
            (shown_row_list.index(cursor[0]), shown_col_list.index(cursor[1]))
            if cursor is not None and cursor[0] in shown_row_list and cursor[1] in shown_col_list
            else None
        ),
    )
    # Drawn itself, the table is as wide as its columns (--full, or --max-cols beyond what fits);
    # otherwise it is drawn so too where it fits, else as Rich's table, which shrinks to the width.
    return Group(
        ItemLines.split(title, style="bold"), cells if options.full or options.max_cols else cells.fitted()
    )


def _positions(indices: Sequence[int | None]) -> list[int | None]:
    """For each index shown (None: the ellipsis), its position among those that are not None."""
    positions: list[int | None] = []
    count = 0
    for index in indices:
        positions.append(None if index is None else count)
        count += index is not None
    return positions


class _MatrixCells:
    """The cells of a matrix table. `table()` is the Rich table of them; drawn itself, it is that
    table with every column as wide as its widest cell, whatever the console's width (--full prints
    it uncropped), made segment by segment in time proportional to the cells.

    `headers` and `labels` name the columns and rows shown (an ellipsis among them, maybe);
    `col_positions` and `row_positions` place them in the lists of rows `texts`, `looks` (2 x colour
    level + bold), `blocked` and `quiet` (rows of padding, drawn dim without colour), or are None for
    the ellipsis. `widest`: each shown column's widest cell, in characters."""

    def __init__(
        self,
        corner: str,
        headers: list[str],
        labels: list[str],
        row_positions: list[int | None],
        col_positions: list[int | None],
        texts: list[list[str]],
        looks: list[list[int]],
        blocked: list[list[bool]] | None,
        widest: list[int],
        anchors: tuple[tuple[int, int, int], ...],
        quiet: list[bool] | None = None,
        highlight: tuple[int, int] | None = None,
    ) -> None:
        self.corner, self.headers, self.labels = corner, headers, labels
        self.highlight = highlight  # (row, column) position of the cell drawn in reverse video
        self.row_positions, self.col_positions = row_positions, col_positions
        self.texts, self.looks, self.blocked, self.widest = texts, looks, blocked, widest
        self.anchors = anchors
        self.quiet = quiet or [False] * len(texts)

    def _style(self, look: int) -> Style:
        if look < 0:  # a row of padding
            return Style(dim=True)
        return cell_style(self.anchors, look // 2, bold=bool(look % 2))

    def _looks(self, r: int) -> list[int]:
        """Row `r`'s looks; -1 for every cell of a row of padding."""
        return [-1] * len(self.looks[r]) if self.quiet[r] else self.looks[r]

    def table(self) -> Table:
        table = Table(
            box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1), collapse_padding=True
        )
        table.add_column(self.corner, justify="right", style="dim", no_wrap=True)
        for heading in self.headers:
            table.add_column(heading, justify="right", no_wrap=True)
        for label, r in zip(self.labels, self.row_positions, strict=True):
            if r is None:
                table.add_row(ELLIPSIS, *(ELLIPSIS for _ in self.col_positions))
                continue
            cells: list[RenderableType] = [label]
            looks = self._looks(r)
            for c in self.col_positions:
                if c is None:
                    cells.append(ELLIPSIS)
                elif self.blocked is not None and self.blocked[r][c]:
                    cells.append(Text(MASKED, style="dim reverse" if (r, c) == self.highlight else "dim"))
                else:
                    style = self._style(looks[c])
                    cells.append(
                        Text(
                            self.texts[r][c], style=style + CURSOR_CELL if (r, c) == self.highlight else style
                        )
                    )
            table.add_row(*cells)
        return table

    def fitted(self) -> _Fitted:
        """This table drawn itself where it fits the width it is drawn at (the same characters and
        styles as Rich's table of it, in a fraction of the time), else `table()`."""
        return _Fitted(self)

    def _pads(self) -> list[int]:
        """Each column's padding, on its right: Rich's collapsed padding, none at the edges."""
        return [1] * len(self.headers) + [0]

    def _widths(self, console: Console, options: ConsoleOptions) -> list[int]:
        """Each column's width with its padding, as Rich's table measures it given room enough."""
        measure = options.update_width(1 << 30)
        pads = self._pads()

        def width(renderable: RenderableType, column: int) -> int:
            return Measurement.get(console, measure, Padding(renderable, (0, pads[column], 0, 0))).maximum

        ellipsis_row = None in self.row_positions
        widths = [max(width(name, 0) for name in [self.corner, *self.labels])]
        for n, (heading, c) in enumerate(zip(self.headers, self.col_positions, strict=True), 1):
            widest = width(heading, n)
            if c is None or ellipsis_row:
                widest = max(widest, width(ELLIPSIS, n))
            if c is not None:
                widest = max(widest, self.widest[c] + pads[n])
            widths.append(widest or 1)
        return widths

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        width = sum(self._widths(console, options)) + len(self.headers)
        return Measurement(width, width)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        # Rich's Table, for this table's box, padding and styles; but each number is one segment, its
        # text right-justified in the column's style, not a cell laid out by Rich.
        widths = self._widths(console, options)
        pads = self._pads()
        options = options.update(width=sum(widths) + len(self.headers), highlight=False, height=None)
        lines_box = box.SIMPLE_HEAD.substitute(options, safe=console.safe_box)
        border = console.get_style("none") + console.get_style("")
        header_style = console.get_style("table.header") + console.get_style("")
        label_style, value_style = console.get_style("dim"), console.get_style("")
        column_options = [
            options.update(
                width=w, justify="right", no_wrap=True, overflow="ellipsis", height=None, highlight=False
            )
            for w in widths
        ]

        def divider(character: str) -> Segment:
            if character.strip():
                return Segment(character, border)
            return Segment(character, Style.null().background_style + border)

        def cell(renderable: RenderableType, column: int, style: Style) -> list[Segment]:
            padded = Padding(renderable, (0, pads[column], 0, 0))
            (line,) = console.render_lines(padded, column_options[column], style=style)
            return line

        new_line = Segment.line()
        heading = divider(lines_box.head_vertical)
        for n, name in enumerate([self.corner, *self.headers]):
            if n:
                yield heading
            yield from cell(name, n, header_style)
        yield new_line
        yield Segment(lines_box.get_row(widths, "head", edge=False), border)
        yield new_line

        marks: dict[tuple[bool, int], list[Segment]] = {}

        def mark(masked: bool, column: int) -> list[Segment]:
            """The segments of a masked cell or an ellipsis in `column`."""
            if (masked, column) not in marks:
                renderable = Text(MASKED, style="dim") if masked else ELLIPSIS
                marks[masked, column] = cell(renderable, column, value_style)
            return marks[masked, column]

        pad = [Segment(" " * n, console.get_style("none")) if n else None for n in pads]
        styles: dict[int, Style] = {}
        middle, foot = divider(lines_box.mid_vertical), divider(lines_box.foot_vertical)
        columns = [(n, c, widths[n] - pads[n], pad[n]) for n, c in enumerate(self.col_positions, 1)]
        last = len(self.col_positions)
        for number, (label, r) in enumerate(zip(self.labels, self.row_positions, strict=True), 1):
            between = foot if number == len(self.labels) else middle
            yield from cell(label, 0, label_style)
            if r is None:
                for n, _, _, _ in columns:
                    yield between
                    yield from mark(False, n)
                yield new_line
                continue
            texts, looks = self.texts[r], self._looks(r)
            blocked = None if self.blocked is None else self.blocked[r]
            for n, c, width, padding in columns:
                yield between
                here = (r, c) == self.highlight
                if c is None:
                    yield from mark(False, n)
                elif blocked is not None and blocked[c] and here:
                    yield from cell(Text(MASKED, style="dim reverse"), n, value_style)
                elif blocked is not None and blocked[c]:
                    yield from mark(True, n)
                else:
                    look = looks[c]
                    style = styles.get(look)
                    if style is None:
                        style = styles[look] = self._style(look)
                    if here:
                        style += CURSOR_CELL
                    text = texts[c].rjust(width)
                    # A row maximum's mark, or the space kept for it, ends each cell; the last
                    # column's space would end the line with blanks.
                    yield Segment(text if n < last else text.rstrip(), style)
                    if padding is not None:
                        yield padding
            yield new_line


def _weight_cell_width(options: ViewOptions) -> int:
    """Characters of a weight in a table: every number in [0, 1] takes as many; one more without
    colour, for the mark of the row maximum."""
    precision = options.precision
    return max(len(f"{0.0:.{precision}f}"), len(f"{1.0:.{precision}f}")) + (not options.colour)


def _axis_names(
    shape: tuple[int, int], row_labels: Sequence[str] | None, col_labels: Sequence[str] | None
) -> tuple[list[str], list[str]]:
    rows, cols = shape
    row_names = [cut_label(label) for label in row_labels] if row_labels else [str(i) for i in range(rows)]
    col_names = [cut_label(label) for label in col_labels] if col_labels else [str(j) for j in range(cols)]
    return row_names, col_names


def _layout(
    shape: tuple[int, int],
    options: ViewOptions,
    cell_width: int,
    corner: str,
    row_names: Sequence[str],
    col_names: Sequence[str],
) -> tuple[list[int | None], list[int | None]]:
    """The rows and columns a table shows (None: the ellipsis between first and last): as many
    columns as fit the width, or `options.max_cols` when given, however wide the table gets."""
    rows, cols = shape
    if options.full:
        return list(range(rows)), list(range(cols))
    if options.max_cols:
        return visible_indices(rows, options.max_rows), visible_indices(cols, options.max_cols)
    cell_width = max(cell_width, len(col_names[-1]) if col_names else 0, *(len(n) for n in col_names[:64]))
    label_width = max(len(corner), *(len(n) for n in row_names[:64]), len(row_names[-1]) if row_names else 0)
    fit = columns_that_fit(options.width, cell_width, label_width)
    return visible_indices(rows, options.max_rows), visible_indices(cols, fit)


def _formatted(matrix: np.ndarray, precision: int) -> np.ndarray:
    """Every value as fixed-point text with `precision` digits (NumPy's own formatter, all at once)."""
    formatted = np.char.mod(f"%.{precision}f", matrix.astype(np.float64))
    return np.asarray(formatted, dtype=str)


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


class _Fitted:
    """`_MatrixCells` drawn itself when its columns fit the width, else as Rich's table, which
    shrinks them (`_MatrixCells.fitted`)."""

    def __init__(self, cells: _MatrixCells) -> None:
        self.cells = cells

    def _chosen(self, console: Console, options: ConsoleOptions) -> RenderableType:
        width = self.cells.__rich_measure__(console, options).maximum
        return self.cells if width <= options.max_width else self.cells.table()

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        return Measurement.get(console, options, self._chosen(console, options))

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield self._chosen(console, options)
