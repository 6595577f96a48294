"""What `attn inspect` shows of a file: a table of its tensors and its metadata, or one JSON document."""

from __future__ import annotations

import json
from typing import Any

from rich import box
from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from attncli.errors import escaped
from attncli.io.lazy import FileReport
from attncli.present.items import ItemLines
from attncli.present.style import number_text
from attncli.selection import size_text


def reports_json(reports: list[FileReport]) -> str:
    """One JSON document for every file: `{"files": [{"path", "format", "bytes", "tensors", "metadata"}]}`."""
    files = []
    for report in reports:
        tensors = []
        for tensor in report.tensors:
            entry: dict[str, Any] = {
                "name": tensor.name,
                "shape": list(tensor.shape),
                "dtype": tensor.dtype,
                "bytes": tensor.nbytes,
            }
            if tensor.stats is not None:
                stats = tensor.stats
                entry |= {"min": stats.min, "max": stats.max, "mean": stats.mean, "std": stats.std}
                entry |= {"nan": stats.nan, "inf": stats.inf}
            tensors.append(entry)
        files.append(
            {
                "path": report.label,
                "format": report.format,
                "bytes": report.nbytes,
                "tensors": tensors,
                "metadata": report.metadata,
            }
        )
    return json.dumps({"files": files}, indent=2)


def report_view(report: FileReport) -> RenderableType:
    """A table of the file's tensors (one row each), then its metadata, one key per line. Where the
    table is wider than the terminal, each tensor is a short block of lines instead, so that no
    shape, dtype or number is ever cut."""
    with_stats = any(tensor.stats is not None for tensor in report.tensors)
    count = len(report.tensors)
    title = Text.assemble(
        (escaped(report.label), "bold"),
        f"  {report.format}, {size_text(report.nbytes)}, {count} tensor{'s' if count != 1 else ''}",
    )
    table = Table(
        box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=0
    )  # the box puts a space between
    for heading in ("tensor", "shape", "dtype"):
        table.add_column(heading, no_wrap=True)
    numbers = ["size", *(_STATS if with_stats else ())]
    for heading in numbers:
        table.add_column(heading, justify="right", no_wrap=True)
    blocks: list[RenderableType] = []
    for tensor in report.tensors:
        cells = [escaped(tensor.name), str(tensor.shape), tensor.dtype, size_text(tensor.nbytes)]
        figures = []
        if tensor.stats is not None:
            stats = tensor.stats
            figures = [number_text(value) for value in (stats.min, stats.max, stats.mean, stats.std)]
            figures += [str(stats.nan), str(stats.inf)]
        table.add_row(Text(cells[0]), *cells[1:], *figures)
        blocks.append(ItemLines([Text(cells[0], style="bold"), *cells[1:]], separator="  "))
        if figures:
            blocks.append(
                ItemLines(
                    [f"{name} {value}" for name, value in zip(_STATS, figures, strict=True)], "  ", "dim"
                )
            )
    tensors = _Fitted(table, Group(*blocks))
    if not report.metadata:
        return Group(title, tensors, Text())
    return Group(
        title, tensors, Text(), Text("metadata", style="bold"), metadata_view(report.metadata), Text()
    )


_STATS = ("min", "max", "mean", "std", "NaN", "Inf")


def metadata_view(metadata: dict[str, Any]) -> Table:
    """One key per line, sorted (safetensors keeps no order of its own); numbers to the figures a
    table shows, nested objects as keys under their key, lists as their values (the rows of a
    list of lists one a line); `--format json` gives every digit."""
    lines = Table.grid(padding=(0, 2))
    lines.add_column(style="bold", no_wrap=True)
    lines.add_column()
    for key, value in sorted(metadata.items()):
        lines.add_row(Text(escaped(str(key))), _value_view(value))
    return lines


def _value_view(value: Any) -> RenderableType:
    if isinstance(value, dict) and value:
        return metadata_view(value)
    if isinstance(value, list) and value and all(isinstance(row, list) for row in value):
        return Group(*(_value_view(row) for row in value))
    if isinstance(value, list) and all(_is_number(item) or item is None for item in value):
        # four figures, as the tables show; lines break between the numbers
        return Text("[" + ", ".join(number_text(item) for item in value) + "]")
    if isinstance(value, str):
        return Text(escaped(value))
    if _is_number(value):
        return Text(_scalar_text(value))
    return Text(escaped(json.dumps(value)))


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _scalar_text(value: Any) -> str:
    if value is None:
        return "null"
    return f"{value:.6g}" if isinstance(value, float) else str(value)


class _Fitted:
    """`wide` where it fits the width it is drawn at, else `narrow`."""

    def __init__(self, wide: RenderableType, narrow: RenderableType) -> None:
        self.wide, self.narrow = wide, narrow

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        needed = Measurement.get(console, options.update_width(1 << 20), self.wide).maximum
        yield self.wide if needed <= options.max_width else self.narrow
