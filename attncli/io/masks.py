"""Capture masks stored as a description instead of a bool tensor.

A model's keep-mask over a long text is mostly pattern: a causal triangle, maybe cut to a sliding
window, with the keys past each text's length closed (right padding). Stored whole it is L x L
bools per text and per distinct mask (a 32k-token mask is 1 GiB); stored as its pattern it is a few
numbers. `describe` recognises the pattern (checking every element, so a mask it describes expands
to exactly itself); `expand` rebuilds the bool mask for the readers. A mask that is no such pattern
(a learned bias, a prefix-LM mask, left padding) has no description and is stored whole.

A description is JSON in the file's metadata, under `masks`: `{"kind": "causal" | "padding",
"window": int | null, "lengths": [per batch entry], "shape": [batch, 1, Lq, Lk]}`. Element
`[b, 0, i, j]` is True when `j < lengths[b]`, and for "causal" also `j <= i + Lk - Lq` and, with a
window, `i + Lk - Lq - j < window`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from attncli.errors import InputError

#: Rows compared at a time while recognising a mask: the expected block stays small however long the text.
_ROWS = 1024
KINDS = ("causal", "padding")


def _block(kind: str, window: int | None, length: int, rows: range, keys: int, offset: int) -> np.ndarray:
    """Rows `rows` of one batch entry's keep-mask, (len(rows), keys) bool."""
    query = np.arange(rows.start, rows.stop)[:, None] + offset  # (rows, 1): the key position each row is
    key = np.arange(keys)[None, :]  # (1, keys)
    keep = np.broadcast_to(key < length, (len(rows), keys))
    if kind == "causal":
        keep = keep & (key <= query)
        if window is not None:
            keep = keep & (query - key < window)
    return keep


def _matches(mask: np.ndarray, kind: str, window: int | None, lengths: list[int]) -> bool:
    """Whether `mask` (batch, 1, Lq, Lk) is exactly the pattern, compared `_ROWS` rows at a time."""
    _, _, lq, lk = mask.shape
    for entry, length in enumerate(lengths):
        for start in range(0, lq, _ROWS):
            rows = range(start, min(start + _ROWS, lq))
            expected = _block(kind, window, length, rows, lk, lk - lq)
            if not np.array_equal(mask[entry, 0, rows.start : rows.stop], expected):
                return False
    return True


def describe(mask: np.ndarray) -> dict[str, Any] | None:
    """The description of a bool keep-mask (batch, 1, Lq, Lk), or None when it is no causal, window
    or right-padding pattern (it is then stored whole)."""
    if mask.dtype != np.bool_ or mask.ndim != 4 or mask.shape[1] != 1 or 0 in mask.shape:
        return None
    batch = mask.shape[0]
    opened = np.any(mask, axis=2)[:, 0]  # (batch, Lk): the keys some row may attend to
    lengths = []
    for entry in range(batch):
        open_keys = np.flatnonzero(opened[entry])
        lengths.append(int(open_keys[-1]) + 1 if open_keys.size else 0)
    shape = [int(n) for n in mask.shape]
    if _matches(mask, "padding", None, lengths):
        return {"kind": "padding", "window": None, "lengths": lengths, "shape": shape}
    if _matches(mask, "causal", None, lengths):
        return {"kind": "causal", "window": None, "lengths": lengths, "shape": shape}
    # A window keeps at most `window` keys a row: the widest row is the window (or the whole text,
    # when no row is cut, which the plain causal pattern above has matched already).
    window = int(mask.sum(axis=-1).max())
    if window > 0 and _matches(mask, "causal", window, lengths):
        return {"kind": "causal", "window": window, "lengths": lengths, "shape": shape}
    return None


def expand(description: Any, label: str) -> np.ndarray:
    """The bool keep-mask (batch, 1, Lq, Lk) a description stands for; an InputError naming
    `label` (the file and mask) when the description is not one `describe` writes."""
    if not isinstance(description, Mapping):
        raise InputError(f"{label}: the mask's description is not a JSON object")
    kind, window = description.get("kind"), description.get("window")
    lengths, shape = description.get("lengths"), description.get("shape")

    def whole(value: Any) -> bool:
        return type(value) is int and value >= 0

    if kind not in KINDS:
        raise InputError(f"{label}: the mask's kind is {kind!r}; attncli knows {', '.join(KINDS)}")
    if not (isinstance(shape, list) and len(shape) == 4 and all(whole(n) for n in shape) and shape[1] == 1):
        raise InputError(f"{label}: the mask's shape {shape!r} is not [batch, 1, queries, keys]")
    batch, _, lq, lk = shape
    if lq > lk:
        raise InputError(f"{label}: the mask's shape {shape!r} has more queries than keys")
    if not (
        isinstance(lengths, list) and len(lengths) == batch and all(whole(n) and n <= lk for n in lengths)
    ):
        raise InputError(f"{label}: the mask's lengths {lengths!r} are not {batch} counts of keys up to {lk}")
    if window is not None and not (whole(window) and window > 0):
        raise InputError(f"{label}: the mask's window {window!r} is not a positive whole number")
    mask = np.empty((batch, 1, lq, lk), dtype=np.bool_)
    for entry, length in enumerate(lengths):
        mask[entry, 0] = _block(kind, window, length, range(lq), lk, lk - lq)
    return mask


__all__ = ["KINDS", "describe", "expand"]
