"""Which matrices and labels: `--head 0:4`, `--batch 1,3`, `--labels "The cat sat"`.

Plain values and parsing only (no Rich, no torch, no files). Problems are `UsageError`s naming the
option.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence

from attncli.errors import UsageError


def parse_indices(text: str, option: str) -> list[int | slice]:
    """`2`, `1,3`, `0:4`, `:4`, `4:`, `0:8:2`, or a mix like `0,2:4`; checked against a size later."""
    items: list[int | slice] = []
    for part in (p.strip() for p in text.split(",")):
        try:
            if ":" in part:
                pieces = [int(piece) if piece else None for piece in part.split(":")]
                if (
                    len(pieces) > 3
                    or any(piece is not None and piece < 0 for piece in pieces)
                    or pieces[2:] == [0]
                ):
                    raise ValueError
                items.append(slice(*pieces))
            else:
                index = int(part)
                if index < 0:
                    raise ValueError
                items.append(index)
        except ValueError:
            raise UsageError(
                f"{option} {text!r}: not an index, list or range; use e.g. 2, 1,3 or 0:4"
            ) from None
    return items


def parse_layers(text: str | None, option: str = "--layer") -> int | str | list[int | slice] | None:
    """--layer: one layer (N: an int), several (1,3 or 0:4: items to resolve against a file's
    layers, `loaders.chosen_layers`), "all", or None when not given."""
    if text is None or text.strip() == "all":
        return None if text is None else "all"
    items = parse_indices(text, option)
    return items[0] if len(items) == 1 and isinstance(items[0], int) else items


def resolve_indices(items: Sequence[int | slice], size: int, option: str, what: str) -> list[int]:
    """The indices that `items` (from `parse_indices`) name on an axis of `size` `what` (e.g. 'heads')."""
    resolved: set[int] = set()
    for item in items:
        first = item if isinstance(item, int) else (item.start or 0)
        if first >= size:
            raise UsageError(_out_of_range(option, first, size, what))
        resolved.update([item] if isinstance(item, int) else range(*item.indices(size)))
    return sorted(resolved)


def no_axis_message(axis: str, spec: str, weights_shape: tuple[int, ...], axes: Sequence[str]) -> str:
    """Why --head or --batch (`axis`: 'head' or 'batch') picks nothing: the weights of
    `weights_shape`, whose leading axes are named `axes`, have no such axis; and what they have."""
    option = f"--{axis}"
    text = f"{option} {spec}: the weights {weights_shape} have no {axis} axis"
    if axis == "head":
        where = "4-D inputs (batch, heads, positions, features) have heads; --heads N splits merged features"
        if "batch" in axes:
            entries = weights_shape[list(axes).index("batch")]
            return (
                f"{text}: a 3-D input is (batch, positions, features), so their first axis is "
                f"batch ({entries} entries), which --batch picks; {where}"
            )
        return f"{text}: they are one matrix; {where}"
    if "head" in axes:
        heads = weights_shape[list(axes).index("head")]
        return f"{text}: their first axis is heads ({heads}), which --head picks"
    return f"{text}: they are one matrix"


def _out_of_range(option: str, index: int, size: int, what: str) -> str:
    return f"{option} {index}: out of range, there are {size} {what} (0 to {size - 1})"


def parse_labels(text: str) -> list[str]:
    """`--labels "The cat sat"` or `"The,cat,sat"`: commas separate when there are any, else spaces."""
    if "," in text:
        return [label.strip() for label in text.split(",")]
    return text.split()


def given_labels(text: str | None, option: str = "--labels") -> list[str] | None:
    """`--labels TEXT` as labels (None when not given); an empty TEXT is refused, not ignored."""
    if text is None:
        return None
    labels = parse_labels(text)
    if not labels:
        raise UsageError(f'{option}: no labels given; give one per position, e.g. {option} "The cat sat"')
    return labels


def check_label_count(labels: Sequence[str] | None, positions: int, option: str, axis: str) -> None:
    if labels is not None and len(labels) != positions:
        raise UsageError(f"{option}: {len(labels)} labels, but the {axis} has {positions} positions")


def matrix_indices(
    leading_shape: tuple[int, ...],
    axes: Sequence[str],
    batch: Sequence[int] | None,
    head: Sequence[int] | None,
) -> Iterator[tuple[int, ...]]:
    """The (batch..., head) indices of the matrices to show, in order.

    `batch` selects along the first batch axis and `head` along the head axis; other axes are
    shown whole.
    """
    choices: list[Sequence[int]] = []
    batch_done = False
    for size, axis in zip(leading_shape, axes, strict=False):
        if axis == "head" and head is not None:
            choices.append(head)
        elif axis == "batch" and batch is not None and not batch_done:
            choices.append(batch)
            batch_done = True
        else:
            choices.append(range(size))
    yield from itertools.product(*choices)


def parse_size(text: str, option: str) -> int:
    """A size in bytes from option text: '2GiB', '500MB', '1e9'."""
    units = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
    units |= {"kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
    number = text.strip().lower()
    digits = number.rstrip("abcdefghijklmnopqrstuvwxyz ")
    unit = number[len(digits) :].strip()
    try:
        value = float(digits) * units[unit]
    except (KeyError, ValueError):
        raise UsageError(f"{option} {text!r} is not a size; use e.g. 2GiB, 500MB or 1e9") from None
    if not math.isfinite(value) or value < 1:
        raise UsageError(f"{option} {text!r} must be a positive size")
    return int(value)


def size_text(nbytes: int) -> str:
    """1536 -> '1.5 KiB'."""
    if nbytes < 1024:
        return f"{nbytes} B"
    size = nbytes / 1024
    for unit in ("KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"
