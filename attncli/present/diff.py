"""What `attn diff` shows of a comparison: a row per tensor pair, notes, a verdict; or one JSON document."""

from __future__ import annotations

import json
import math
from typing import Any

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from attncli.analysis.diff import COARSEST_FIRST, Comparison, TensorComparison
from attncli.errors import escaped
from attncli.present.style import number_text


def comparison_json(comparison: Comparison) -> str:
    """The facts of a comparison as one JSON document (infinities as JSON's Infinity, as writers do)."""
    tensors = []
    for tensor in comparison.tensors:
        entry: dict[str, Any] = {
            "name": tensor.name,
            "shape": list(tensor.shape),
            "dtype_a": tensor.dtypes[0],
            "dtype_b": tensor.dtypes[1],
            "rtol": tensor.rtol,
            "atol": tensor.atol,
            "tolerance_dtype": tensor.tolerance_dtype,
            "elements": tensor.elements,
            "max_abs": tensor.max_abs,
            "max_rel": tensor.max_rel,
            "worst_index": None if tensor.worst_index is None else list(tensor.worst_index),
            "worst_excess": tensor.worst_excess,
            "outside": tensor.outside,
            "outside_share": tensor.outside_share,
            "nan_a": tensor.nan[0],
            "nan_b": tensor.nan[1],
            "nan_both": tensor.nan_both,
            "verdict": tensor.verdict,
        }
        if tensor.rows is not None:
            rows = tensor.rows
            entry["rows"] = {
                "rows": rows.rows,
                "rows_compared": rows.rows_compared,
                "kl_mean": rows.kl_mean,
                "kl_max": rows.kl_max,
                "top_k": rows.top_k,
                "top_k_same": rows.top_k_same,
                "top_k_overlap": rows.top_k_overlap,
            }
        tensors.append(entry)
    a, b = comparison.labels
    document = {
        "a": a,
        "b": b,
        "close": comparison.close,  # the verdict: exit status 0
        "computed_dtype_a": comparison.computed[0],
        "computed_dtype_b": comparison.computed[1],
        "only_in_a": list(comparison.only[0]),
        "only_in_b": list(comparison.only[1]),
        "common_only": comparison.common_only,
        "tensors": tensors,
    }
    return json.dumps(document, indent=2)


def comparison_view(comparison: Comparison) -> RenderableType:
    """A row per tensor pair, then the tolerance, NaN counts and row agreement of weights, then a verdict."""
    a, b = comparison.labels
    title = Text.assemble("A ", (escaped(a), "bold"), "  B ", (escaped(b), "bold"))
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, padding=(0, 1, 0, 0))
    for heading in ("tensor", "shape", "max abs", "max rel", "worst index", "outside tol", "verdict"):
        table.add_column(
            heading, justify="left" if heading in ("tensor", "shape") else "right", overflow="fold"
        )
    colours = {"equal": "green", "close": "green", "different": "bold red"}
    for tensor in comparison.tensors:
        outside = f"{tensor.outside} ({_percent(tensor.outside_share)})" if tensor.outside else "0"
        table.add_row(
            Text(escaped(tensor.name)),
            str(tensor.shape),
            number_text(tensor.max_abs),
            number_text(tensor.max_rel),
            "–" if tensor.worst_index is None else str(tensor.worst_index),
            outside,
            Text(tensor.verdict, style=colours[tensor.verdict]),
        )
    lines = [Text(line) for line in _notes(comparison)]
    return Group(title, table, *lines, _verdict(comparison))


def _verdict(comparison: Comparison) -> Text:
    differing = sum(not tensor.close for tensor in comparison.tensors)
    count = len(comparison.tensors)
    unpaired = comparison.unpaired
    reasons = [f"{differing} of {count} tensor(s) outside tolerance"] if differing else []
    if unpaired and not comparison.common_only:
        reasons.append(f"{unpaired} tensor(s) in one file only")
    if reasons:
        hint = ""
        if not differing:
            hint = f" (within tolerance: the {count} both hold; --common compares only those)"
        return Text(f"different: {'; '.join(reasons)}{hint}", style="bold red")
    left_out = f" ({unpaired} tensor(s) in one file only left out: --common)" if unpaired else ""
    return Text(f"equal within tolerance{left_out}", style="green")


def _notes(comparison: Comparison) -> list[str]:
    """Lines under the table: the names in one file only, the tolerances, NaN counts, and the row
    agreement of weights."""
    notes = [
        f"only in {side} ({escaped(label)}): {', '.join(escaped(name) for name in names)}"
        for side, label, names in zip("AB", comparison.labels, comparison.only, strict=True)
        if names
    ]
    limits_of = {(tensor.rtol, tensor.atol, tensor.tolerance_dtype) for tensor in comparison.tensors}
    several = len(limits_of) > 1
    for tensor in comparison.tensors if several else comparison.tensors[:1]:
        where = f"{escaped(tensor.name)}: " if several else ""
        defaults = _defaults(tensor, comparison.computed)
        rtol_given, atol_given = comparison.given
        if rtol_given and atol_given:
            source = "as given"
        elif rtol_given or atol_given:
            source = f"{'rtol' if rtol_given else 'atol'} as given, the other {defaults}"
        else:
            source = defaults
        limits = f"rtol {tensor.rtol:g}, atol {tensor.atol:g}"
        notes.append(f"{where}close: |A - B| <= atol + rtol·|B| with {limits} ({source})")
    for tensor in comparison.tensors:
        if tensor.nan[0] or tensor.nan[1]:
            notes.append(
                f"{escaped(tensor.name)}: NaN in A {tensor.nan[0]}, in B {tensor.nan[1]}, "
                f"in both {tensor.nan_both} (counted equal)"
            )
        notes += _row_notes(tensor)
    return notes


def _defaults(tensor: TensorComparison, computed: tuple[str | None, str | None]) -> str:
    """Whose default tolerance applies: 'the defaults for bfloat16, the coarser of A's bfloat16
    (stored as float32) and B's float32'; 'exact' for integers and booleans."""
    if tensor.tolerance_dtype is None:
        return f"exact for {' and '.join(dict.fromkeys(tensor.dtypes))}"
    sides = []
    for stored, made in zip(tensor.dtypes, computed, strict=True):
        coarser = made if made is not None and COARSEST_FIRST.index(made) < _finest(stored) else None
        sides.append(stored if coarser is None else f"{coarser} (stored as {stored})")
    defaults = f"the defaults for {tensor.tolerance_dtype}"
    if sides[0] == sides[1] == tensor.tolerance_dtype:
        return defaults
    return f"{defaults}, the coarser of A's {sides[0]} and B's {sides[1]}"


def _finest(dtype: str) -> int:
    """Where a stored dtype falls in COARSEST_FIRST (integers: after every float)."""
    return COARSEST_FIRST.index(dtype) if dtype in COARSEST_FIRST else len(COARSEST_FIRST)


def _row_notes(tensor: TensorComparison) -> list[str]:
    rows = tensor.rows
    if rows is None:
        return []
    left_out = rows.rows - rows.rows_compared
    skipped = f" ({left_out} with no mass, NaN, Inf or negative weights left out)" if left_out else ""
    if rows.kl_mean is None or rows.top_k_same is None or rows.top_k_overlap is None:
        return [f"{escaped(tensor.name)}: no row to compare as a distribution{skipped}"]
    return [
        f"{escaped(tensor.name)}: KL(A‖B) per row: mean {number_text(rows.kl_mean)}, max "
        f"{number_text(rows.kl_max)}, over {rows.rows_compared} of {rows.rows} rows{skipped}",
        f"{escaped(tensor.name)}: top-{rows.top_k} keys the same in {_percent(rows.top_k_same)} of rows; "
        f"mean overlap {rows.top_k_overlap * rows.top_k:.3g} of {rows.top_k}",
    ]


def _percent(share: float) -> str:
    """0.00012 -> '0.012%': enough digits to tell a few elements from none."""
    if share == 0 or share == 1:
        return f"{share:.0%}"
    digits = max(2, 1 - math.floor(math.log10(share * 100))) if share < 0.01 else 1
    return f"{share * 100:.{digits}f}%"
