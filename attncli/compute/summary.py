"""What the fused kernel gives for a block of query rows in place of its weights (no I/O, no printing)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from attncli.analysis.rows import RowStats

if TYPE_CHECKING:  # sinks and blocks import this module on the NumPy kernel too, which never imports torch
    import torch


@dataclass(frozen=True)
class RowSummary:
    """Per query row of a block (..., n) of `keys` keys: `stats`, the figures `analysis.rows.row_stats`
    gives of its weights; `smallest`, its smallest weight over open keys (inf where none is open);
    `row_sums`, the float64 sum of its weights (0 where none is open; the kernel never rounds the
    weights to float32, so this is 1 within float64 rounding). Per row and cell of `cell_keys` keys
    (..., n, C), C = ceil(W / cell_keys): the largest weight (0 where none is open), the float64 sum
    of the weights and how many keys are open (the picture's max and mean: `PictureSink`)."""

    stats: RowStats
    keys: int
    smallest: torch.Tensor
    row_sums: torch.Tensor
    cell_keys: int
    cell_largest: torch.Tensor
    cell_sums: torch.Tensor
    cell_open: torch.Tensor
