"""What `attn inspect` shows of a file: a table of its tensors and its metadata, or one JSON document."""

from __future__ import annotations

import json
from typing import Any

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from attncli.errors import escaped
from attncli.io.lazy import FileReport
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
    """A table of the file's tensors (one row each), then its metadata, one key per line."""
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
    numbers = ["size", *(("min", "max", "mean", "std", "NaN", "Inf") if with_stats else ())]
    for heading in numbers:
        table.add_column(heading, justify="right", no_wrap=True)
    for tensor in report.tensors:
        cells: list[Text | str] = [
            Text(escaped(tensor.name)),
            str(tensor.shape),
            tensor.dtype,
            size_text(tensor.nbytes),
        ]
        if tensor.stats is not None:
            stats = tensor.stats
            cells += [number_text(value) for value in (stats.min, stats.max, stats.mean, stats.std)]
            cells += [str(stats.nan), str(stats.inf)]
        table.add_row(*cells)
    if not report.metadata:
        return Group(title, table, Text())
    lines = Table.grid(padding=(0, 2))
    lines.add_column(style="bold")
    lines.add_column()
    for key, value in sorted(report.metadata.items()):  # safetensors keeps no order of its own
        text = value if isinstance(value, str) else json.dumps(value)
        lines.add_row(Text(escaped(key)), Text(escaped(text)))
    return Group(title, table, Text(), Text("metadata", style="bold"), lines, Text())
