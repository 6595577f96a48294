"""What to show of a result: which view, how large, with which labels and selection.

Plain values only (no Rich, no torch): the CLI turns options into a `ViewOptions`, the views in
`attncli.present` draw what it says.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

VIEWS = ("table", "heatmap", "grid")
#: The sections a view may show (`--show`).
SECTIONS = ("weights", "output", "stats")
POOLS = ("max", "mean")
DEFAULT_MAX_MATRICES = 8


@dataclass(frozen=True)
class ViewOptions:
    """How the views of `attncli.present` show a result."""

    view: str = "table"
    precision: int = 4
    width: int = 80  # the console's columns
    max_rows: int = 32  # rows of a table (an ellipsis row included), lines of a heatmap
    max_cols: int | None = None  # None: as many as fit in `width`
    full: bool = False  # every row and column, whatever the size
    pool: str = "max"  # heatmaps larger than the terminal: max or mean of each block
    color_scale: str = "fixed"  # how weights map to colours: fixed, max, row or log (style.COLOR_SCALES)
    #: what is shown (SECTIONS): the weights, the output, the statistics (when they were computed)
    sections: Sequence[str] = SECTIONS
    colour: bool = True  # False: no colours to rely on (heatmaps use characters)
    query_labels: Sequence[str] | None = None
    key_labels: Sequence[str] | None = None
    batch: Sequence[int] | None = None  # None: every batch entry
    head: Sequence[int] | None = None  # None: every head
    max_matrices: int = DEFAULT_MAX_MATRICES  # when no selection was made
    axes: Sequence[str] = field(default_factory=tuple)  # names of the weights' leading axes
    #: what each index of an axis stands for, where it is not the index itself: {"layer": [1, 3]}
    axis_values: Mapping[str, Sequence[int]] = field(default_factory=dict)
