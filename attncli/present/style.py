"""The palette and marks every view shares: colour scales, the masked mark, cut labels, numbers.

The same colour means the same weight in every table and heatmap: weights on a fixed 0..1 scale
(viridis), outputs on a diverging scale centred on zero.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from rich.color import Color
from rich.style import Style

# Perceptually ordered anchors (viridis) for weights in [0, 1].
SEQUENTIAL = ((68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37))
# Blue for negative, light grey for zero, red for positive (RdBu, reversed).
DIVERGING = ((5, 48, 97), (67, 147, 195), (230, 230, 230), (214, 96, 77), (103, 0, 31))
LEVELS = 65  # colours are quantised (odd, so zero sits exactly mid-scale): few distinct styles
ELLIPSIS = "…"
MASKED = "·"
LABEL_WIDTH = 12  # longer labels are cut, with an ellipsis, to keep columns narrow


#: How weights map to the colour scale: `fixed` 0..1 (the same colour is the same weight everywhere),
#: `max` 0..each matrix's largest weight, `row` 0..each row's largest, `log` log10 from 1e-4 to 1.
COLOR_SCALES = ("fixed", "max", "row", "log")
LOG_FLOOR = 1e-4
SCALE_WORDS = {
    "fixed": "0 to 1, one scale for all",
    "max": "0 to each matrix's largest weight",
    "row": "0 to each row's largest weight",
    "log": "log10 of the weight, 1e-4 to 1",
}

#: The ends of the weights' colour bar and what it spans, for each colour scale.
SCALE_ENDS = {
    "fixed": ("0", "1", "one scale for all tables"),
    "max": ("0", "max", "each matrix to its largest weight"),
    "row": ("0", "max", "each row to its largest weight"),
    "log": ("1e-4", "1", "log10 of the weight"),
}


def rescaled(values: np.ndarray, scale: str, largest: float | None = None) -> np.ndarray:
    """Weights (rows, cols) as positions 0..1 on the colour scale `scale` (COLOR_SCALES); NaN stays
    NaN. `largest` is the matrix's largest weight for `max` (default: the largest of `values`)."""
    if scale not in COLOR_SCALES:
        raise ValueError(f"scale must be one of {', '.join(COLOR_SCALES)}, not {scale!r}")
    v = np.asarray(values, dtype=np.float64)
    if scale == "fixed" or v.size == 0:
        return v
    known = np.where(np.isnan(v), -np.inf, v)  # NaN (no weight to draw) never counts as the largest
    if scale == "log":
        with np.errstate(divide="ignore"):
            position = (np.log10(np.maximum(v, LOG_FLOOR)) + 4) / 4
        return np.where(np.isnan(v), np.nan, np.where(v > 0, np.clip(position, 0.0, 1.0), 0.0))
    if scale == "max":
        top = float(known.max()) if largest is None else largest
        return v / top if np.isfinite(top) and top > 0 else v
    tops = known.max(axis=-1, keepdims=True)  # each row's largest
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(np.isfinite(tops) & (tops > 0), v / tops, v)


def cut_label(label: str) -> str:
    """A label short enough for a column header, and on one line."""
    label = " ".join(label.split()) or "␣"
    return label if len(label) <= LABEL_WIDTH else label[: LABEL_WIDTH - 1] + ELLIPSIS


def levels(t: np.ndarray) -> np.ndarray:
    """The colour level of each position `t` on the 0..1 scale (NaN at its bottom)."""
    scaled = np.nan_to_num(np.asarray(t, dtype=np.float64) * (LEVELS - 1), nan=0.0)
    return np.clip(np.rint(scaled), 0, LEVELS - 1).astype(np.int64)


def cell_style(anchors: tuple[tuple[int, int, int], ...], level: int, bold: bool) -> Style:
    # A new Style each time: Rich caches a Style's escape codes for the first console it meets.
    foreground, background = _colours(anchors, level)
    return Style(color=foreground, bgcolor=rgb_color(background), bold=bold)


@lru_cache(maxsize=2 * LEVELS)
def _colours(anchors: tuple[tuple[int, int, int], ...], level: int) -> tuple[str, tuple[int, int, int]]:
    """Text and background colour for a level: black text on light backgrounds, white on dark."""
    red, green, blue = lerp(anchors, level / (LEVELS - 1))
    luminance = (0.2126 * red + 0.7152 * green + 0.0722 * blue) / 255
    return ("black" if luminance > 0.45 else "white"), (red, green, blue)


def lerp(anchors: tuple[tuple[int, int, int], ...], t: float) -> tuple[int, int, int]:
    position = min(max(t, 0.0), 1.0) * (len(anchors) - 1)
    low = min(int(position), len(anchors) - 2)
    fraction = position - low
    a, b = anchors[low], anchors[low + 1]
    red, green, blue = (round(x + (y - x) * fraction) for x, y in zip(a, b, strict=True))
    return red, green, blue


def rgb_color(rgb: tuple[int, int, int]) -> Color:
    return Color.from_rgb(*rgb)


def number_text(value: float | int | bool | None) -> str:
    """A number as a table shows it: ints exactly, floats to 4 significant digits, None as a dash."""
    if value is None:
        return "–"
    if isinstance(value, bool | int):
        return str(value)
    return f"{value:.4g}"
