"""The view `attn compute` draws, of weights held whole: arrays from a script, a debugger or a test.

Drawn as every run's view is: the weights go once through the consumers a computation feeds (the
table's cells and figures, the pooled picture, the row statistics), then `present.tables.result_view`.
`show(x)` (exported as `attncli.show`) prints it for an `AttentionResult`, a weights array or
query/key/value; `ResultView` and `result_html` are what a result's `__rich__` and `_repr_html_` give.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from rich.console import Console, ConsoleOptions, Group, RenderResult
from rich.text import Text

from attncli.errors import UsageError
from attncli.present.options import VIEWS, ViewOptions

if TYPE_CHECKING:
    from attncli.compute.result import AttentionResult

#: The width of a result's HTML view in a notebook (`_repr_html_`), in characters.
HTML_WIDTH = 100


def weights_view(
    weights: np.ndarray,
    output: np.ndarray,
    meta: Mapping[str, Any],
    options: ViewOptions | None = None,
    blocked: np.ndarray | None = None,
    analysis: Mapping[str, np.ndarray] | None = None,
) -> Group:
    """The view of `weights` (..., Lq, Lk) and `output` (..., Lq, Dv) described by `meta` (as
    `compute.describe` gives it). `blocked` (bool, True = masked, broadcastable to the weights) marks
    masked keys; their weights count as 0. `analysis` may hold statistics and top-k to show."""
    import torch

    from attncli.analysis.rows import row_entropy
    from attncli.compute.sinks import PictureSink, TableSink
    from attncli.present import tables

    options = options or ViewOptions()
    values = np.asarray(weights)
    if values.dtype != np.float64:
        values = values.astype(np.float32)
    shape = tuple(values.shape)
    lq, lk = shape[-2:]
    matrix = torch.from_numpy(np.ascontiguousarray(values))  # (..., Lq, Lk)
    shut = None if blocked is None else torch.from_numpy(np.broadcast_to(blocked, shape).copy())
    masked_rows = None if shut is None else shut.all(dim=-1)  # (..., Lq)
    if shut is not None:
        matrix = matrix.masked_fill(shut, 0.0)
    size, (rows, cols) = tables.kept_views((lq, lk), options)
    table = TableSink(shape, rows, cols, matrix.dtype, matrix.device)
    table.keep(0, matrix, shut, masked_rows)
    pictures, blocks = None, (1, 1)
    if size is not None:
        picture = PictureSink(shape, size, matrix.device)
        picture.pool(0, matrix, shut)
        largest, mean = picture.arrays()
        pictures, blocks = (largest if options.pool == "max" else mean), picture.blocks
    entropy = row_entropy(matrix, shut).double().numpy()
    return tables.result_view(
        np.asarray(output),
        {**meta, "weights_shape": list(shape)},
        options,
        table.kept(),
        entropy,
        analysis=analysis,
        pictures=pictures,
        picture_blocks=blocks,
    )


def result_view(
    result: AttentionResult,
    options: ViewOptions | None = None,
    *,
    mask_label: str | None = None,
    stats: bool = False,
    top_k: int | None = None,
) -> Group:
    """The view `attn compute` prints of `result`: its header, each weight matrix (masked keys as
    `·`, the title's figures over open keys), the statistics and top-k it kept, the output.

    A result whose weights were kept is drawn from them; one computed in blocks, from the table (or
    pictures) it kept. `mask_label` names the mask in the header (default: its dtype and shape).
    `stats` and `top_k` compute them from the kept weights, as `--stats` and `--top-k K` show them."""
    from attncli.analysis import rows
    from attncli.analysis.rows import stats_arrays
    from attncli.compute.result import as_array, describe, masked_positions
    from attncli.present import tables

    options = options or ViewOptions()
    meta: dict[str, Any] = dict(describe(result))
    if result.mask is not None:
        meta["mask"] = (
            mask_label or f"{str(result.mask.dtype).removeprefix('torch.')} {tuple(result.mask.shape)}"
        )
    analysis: dict[str, np.ndarray] = {}
    row_stats = rows.row_stats(result) if stats and result.stats is None else result.stats
    if row_stats is not None:
        analysis |= stats_arrays(row_stats)
    top = rows.top_k(result, top_k) if top_k is not None else result.top_k
    if top is not None:
        analysis["top_k_weights"] = top[0].detach().cpu().float().numpy()
        analysis["top_k_keys"] = top[1].detach().cpu().numpy()
    output = as_array(result.output)
    if result.weights is not None:
        return weights_view(
            as_array(result.weights), output, meta, options, masked_positions(result), analysis
        )
    if result.table is None:
        raise ValueError(
            "this result kept neither its weights nor a table to show: compute it with attention()"
        )
    meta |= {"computed_by": result.method, "block_rows": result.block_rows}
    row_entropy = result.entropy if result.stats is None else result.stats.entropy
    entropy = None if row_entropy is None else row_entropy.detach().cpu().double().numpy()
    pictures = result.picture_max if options.pool == "max" else result.picture_mean
    if options.view != "table" and pictures is None:
        options = ViewOptions(**{**vars(options), "view": "table"})  # no picture was kept
    return tables.result_view(
        output,
        meta,
        options,
        result.table,
        entropy,
        analysis=analysis,
        pictures=pictures,
        picture_blocks=result.picture_blocks,
    )


class ResultView:
    """A result's view for Rich (`AttentionResult.__rich__`): drawn at the width of the console it
    is printed to, in colour where the console has colour."""

    def __init__(self, result: AttentionResult, options: ViewOptions | None = None) -> None:
        self.result = result
        self.options = options

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        view = self.options or ViewOptions(width=options.max_width, colour=console.color_system is not None)
        yield result_view(self.result, view)


def result_html(result: AttentionResult, width: int = HTML_WIDTH) -> str:
    """`result_view` as a standalone HTML page with inline styles: nothing is fetched to show it."""
    from attncli.present.export import export_html

    console = Console(
        record=True, file=io.StringIO(), width=width, color_system="truecolor", force_jupyter=False
    )
    console.print(result_view(result, ViewOptions(width=width)), crop=True)
    return export_html(console)


Indices = int | Sequence[int] | str | None


def show(
    x: Any,
    key: Any = None,
    value: Any = None,
    *,
    mask: Any = None,
    causal: bool = False,
    scale: float | None = None,
    heads: int | None = None,
    view: str = "table",
    batch: Indices = None,
    head: Indices = None,
    labels: Sequence[str] | None = None,
    query_labels: Sequence[str] | None = None,
    key_labels: Sequence[str] | None = None,
    color_scale: str = "fixed",
    precision: int = 4,
    width: int | None = None,
    max_rows: int = 32,
    max_cols: int | None = None,
    full: bool = False,
    pool: str = "max",
    sections: Sequence[str] | None = None,
    stats: bool = False,
    top_k: int | None = None,
    console: Console | None = None,
) -> None:
    """Print the weights view of `attn compute`: of an `AttentionResult`; of a weights tensor or
    array (..., Lq, Lk), whose `mask`/`causal` say which keys were masked; or of `x`, `key` and
    `value` given together (query, key, value), computed first by `attention` (with `mask`,
    `causal`, `scale`, `heads`).

    The options are the CLI's: `view` table, heatmap or grid; `batch`, `head` (an index, a list or
    text such as "0:4" or "1,3"); `labels` (both axes) or `query_labels`/`key_labels`; `color_scale`
    fixed, max, row or log; `precision`; `width` (default: the console's); `max_rows`, `max_cols`,
    `full`, `pool` max or mean; `sections`, any of weights, output, stats; `stats` and `top_k` (K),
    the per-row statistics and K most attended keys under each matrix. Printed to `console`
    (default: a new one: in a notebook Rich shows it as HTML)."""
    from attncli.compute.result import AttentionResult

    console = console or Console()
    if key is not None or value is not None:
        if key is None or value is None:
            raise UsageError("show: give query, key and value together (or a result, or weights)")
        from attncli.compute import attention

        x = attention(x, key, value, mask=mask, causal=causal, scale=scale, heads=heads)
    elif mask is not None or causal or scale is not None or heads is not None:
        if isinstance(x, AttentionResult):
            raise UsageError(
                "show: mask, causal, scale and heads are for query/key/value or weights, not a result"
            )
        if scale is not None or heads is not None:
            raise UsageError("show: scale and heads need query, key and value")
    if view not in VIEWS:
        raise UsageError(f"show: view {view!r}: choose from {', '.join(VIEWS)}")
    if isinstance(x, AttentionResult):
        shape, axes = tuple(x.weights_shape), _result_axes(x)
    else:
        weights = _as_weights(x)
        shape, axes = tuple(weights.shape), _weight_axes(weights.ndim)
    chosen = {name: _chosen(name, spec, shape, axes) for name, spec in (("batch", batch), ("head", head))}
    lq, lk = shape[-2:]
    query_labels = _labels(query_labels if query_labels is not None else labels, lq, "query")
    key_labels = _labels(key_labels if key_labels is not None else labels, lk, "key")
    options = ViewOptions(
        view=view,
        precision=precision,
        width=width or console.width,
        max_rows=max_rows,
        max_cols=max_cols,
        full=full,
        pool=pool,
        color_scale=color_scale,
        sections=tuple(sections) if sections is not None else ("weights", "output", "stats"),
        colour=console.color_system is not None,
        query_labels=query_labels,
        key_labels=key_labels,
        batch=chosen["batch"],
        head=chosen["head"],
        axes=axes,
    )
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise UsageError(f"show: top_k {top_k!r}: give a whole number of keys, at least 1")
    if isinstance(x, AttentionResult):
        renderable: Any = result_view(x, options, stats=stats, top_k=top_k)
    else:
        if stats or top_k is not None:
            raise UsageError("show: stats and top_k need a result or query, key and value, not weights alone")
        renderable = _weights_alone(weights, options, mask, causal)
    wide = full or bool(max_cols)  # as the CLI prints: tables as wide as asked, not cut at the width
    console.print(renderable, crop=not wide, overflow="ignore" if wide else None)


def _as_weights(x: Any) -> np.ndarray:
    """A weights tensor or array as a NumPy array on the CPU (bfloat16 widened), (..., Lq, Lk)."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # a torch tensor, without importing torch for NumPy
        from attncli.compute.result import as_array

        array = as_array(x)
    else:
        array = np.asarray(x)
    if array.ndim < 2 or not np.issubdtype(array.dtype, np.floating):
        raise UsageError(
            f"show: weights must be floating point with query and key axes (..., Lq, Lk), "
            f"not {array.dtype} {array.shape}; or give query, key and value, or a result"
        )
    return array


def _weight_axes(ndim: int) -> list[str]:
    """The leading axes of weights alone, named as the CLI names 4-D inputs': (batch..., head)."""
    names = ["batch"] * (ndim - 2)
    if ndim >= 4:
        names[-1] = "head"
    return names


def _result_axes(result: AttentionResult) -> list[str]:
    from attncli.compute.result import describe

    return list(describe(result)["weights_axes"][:-2])


def _chosen(name: str, spec: Indices, shape: tuple[int, ...], axes: Sequence[str]) -> list[int] | None:
    """`batch` or `head` as the matrices' indices on that axis, checked as --batch and --head are."""
    from attncli.selection import no_axis_message, parse_indices, resolve_indices

    if spec is None:
        return None
    text = spec if isinstance(spec, str) else ",".join(str(int(i)) for i in _items(spec))
    if name not in axes:
        raise UsageError(no_axis_message(name, text, shape, axes).replace(f"--{name}", name, 1))
    what = "heads" if name == "head" else "batch entries"
    size = shape[list(axes).index(name)]
    return resolve_indices(parse_indices(text, name), size, name, what)


def _items(spec: int | Sequence[int]) -> Iterable[int]:
    return [spec] if isinstance(spec, int) else spec


def _labels(labels: Sequence[str] | None, positions: int, axis: str) -> list[str] | None:
    from attncli.selection import check_label_count

    if labels is None:
        return None
    if isinstance(labels, str):
        raise UsageError(f"show: {axis} labels must be a list of strings, one per position, not one string")
    check_label_count(labels, positions, f"{axis}_labels", axis)
    return [str(label) for label in labels]


def _weights_alone(weights: np.ndarray, options: ViewOptions, mask: Any, causal: bool) -> Group:
    """The view of weights without their inputs: a line saying what they are, then the weights
    section of `weights_view` (its header, which names query/key/value, left out)."""
    import torch

    from attncli.compute.prepare import blocked_keys

    lq, lk = weights.shape[-2:]
    mask_tensor = None if mask is None else torch.as_tensor(np.asarray(mask))
    blocked = blocked_keys(mask_tensor, causal, lq, lk, device=torch.device("cpu"))
    dtype = str(weights.dtype)
    meta = {
        "dtype": dtype,
        "causal": causal,
        "input_shapes": {},
        "weights_axes": [*options.axes, "query", "key"],
    }
    output = np.zeros((*weights.shape[:-1], 0), dtype=weights.dtype)
    sections = tuple(section for section in options.sections if section == "weights")
    view = weights_view(
        weights,
        output,
        meta,
        ViewOptions(**{**vars(options), "sections": sections}),
        None if blocked is None else blocked.numpy(),
    )
    what = Text("weights", style="bold")
    what.append(f"  {tuple(weights.shape)}  {dtype}" + ("  causal" if causal else ""), style="dim")
    if mask is not None:
        what.append(f"  mask {np.asarray(mask).dtype} {np.asarray(mask).shape}", style="dim")
    return Group(what, *view.renderables[1:])  # result_view's first part is the header
