"""The one result type of every computation, whole or in blocks, and its plain descriptions.

No I/O, no printing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from attncli.analysis.rows import RowStats
from attncli.compute.prepare import blocked_keys, settings

_FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True)
class KeptTable:
    """What a table view of the weights shows, kept from each block: for every matrix (...), the
    weights at `rows` x `cols` and those rows' largest weights, and its figures over all weights
    (NumPy arrays on the CPU; bfloat16 widened to float32, as `result_arrays` does)."""

    rows: list[int]
    cols: list[int]
    cells: np.ndarray  # (..., len(rows), len(cols))
    row_max: np.ndarray  # (..., len(rows)): the largest weight of each kept row, over every key
    blocked: np.ndarray | None  # (..., len(rows), len(cols)) bool, True = masked; None without masking
    any_blocked: bool  # any masked key in any matrix
    minimum: np.ndarray  # (...): the smallest weight over open keys (inf when none is open)
    maximum: np.ndarray  # (...): the largest weight over open keys
    deviation: np.ndarray  # (...): the largest |row sum - 1| over rows with an open key
    live: np.ndarray  # (...) bool: the matrix has a row with an open key


@dataclass(frozen=True)
class AttentionResult:
    """What one attention computation gave, and what it was computed from.

    `output` has shape (..., Lq, Dv), the heads merged back into its features when `heads` split
    them. `weights` (`weights_shape`: (..., Lq, Lk), a heads axis before (Lq, Lk) with heads) is
    there when the run kept them (`attention` does; a run in blocks keeps what its consumers asked
    for instead: `stats`, `top_k`, a pooled picture, a table's cells). `masked_rows` is (..., Lq)
    bool, the query rows whose every key was masked (their weights and output are 0), or None
    without a mask. `picture_max` / `picture_mean` are float32 (..., R, C): each cell pools
    `picture_blocks` = (rows, keys) weights, masked weights left out, NaN where all are.
    """

    output: torch.Tensor
    masked_rows: torch.Tensor | None
    scale: float
    causal: bool
    heads: int | None  # the feature axis was split into this many heads
    query_heads_per_key_head: int  # grouped-query attention: > 1 when key/value heads are shared
    input_shapes: Mapping[str, tuple[int, ...]]
    weights_shape: tuple[int, ...]
    dtype: torch.dtype
    device: torch.device
    mask: torch.Tensor | None = None  # the mask as given: bool (True = may attend) or float (added)
    weights: torch.Tensor | None = None
    block_rows: int = 0  # query rows per block; every row, when the run was one block
    #: "blocks" (attncli's own maths, one or more blocks of query rows) or
    #: "scaled_dot_product_attention" (the fused kernel: the output alone).
    method: str = "blocks"
    stats: RowStats | None = None
    entropy: torch.Tensor | None = None  # (..., Lq) of every row, when kept without `stats`
    top_k: tuple[torch.Tensor, torch.Tensor] | None = None  # values (..., Lq, k), int64 keys (..., Lq, k)
    picture_max: _FloatArray | None = None
    picture_mean: _FloatArray | None = None
    picture_blocks: tuple[int, int] = (0, 0)  # (0, 0) when no picture was asked for
    table: KeptTable | None = None
    #: `analysis.heads.pattern_rows` of every row, each (..., Lq), when asked for (`run(patterns=...)`)
    patterns: Mapping[str, torch.Tensor] | None = None

    def fully_masked_rows(self) -> list[tuple[int, ...]]:
        """Indices (batch..., row) of the query rows that could attend to no key: their weights are 0."""
        if self.masked_rows is None:
            return []
        return [tuple(int(i) for i in index) for index in self.masked_rows.nonzero().tolist()]


def describe(result: AttentionResult) -> dict[str, Any]:
    """The settings of a result as plain JSON-able values (for headers and file metadata)."""
    return {
        **settings(
            result.scale,
            result.causal,
            result.heads,
            result.query_heads_per_key_head,
            result.dtype,
            result.device,
            result.input_shapes,
            result.weights_shape,
        ),
        "output_shape": list(result.output.shape),
        "fully_masked_rows": len(result.fully_masked_rows()),
    }


def masked_positions(result: AttentionResult) -> np.ndarray | None:
    """Where a key was masked for a query: bool, True = masked, broadcastable to the weights' shape.

    None when nothing was masked. Built from the mask and the causal triangle, never N x N per matrix
    unless the mask itself is that large, so showing one matrix costs what that matrix costs.
    """
    lq, lk = result.weights_shape[-2:]
    mask = None if result.mask is None else result.mask.detach().cpu()
    blocked = blocked_keys(mask, result.causal, lq, lk, device=torch.device("cpu"))
    return None if blocked is None else blocked.numpy()


def as_array(tensor: torch.Tensor) -> np.ndarray:
    """A tensor as a NumPy array on the CPU; bfloat16, which NumPy lacks, widened exactly to float32."""
    tensor = tensor.detach().cpu()
    return (tensor.float() if tensor.dtype == torch.bfloat16 else tensor).numpy()


def result_arrays(result: AttentionResult) -> dict[str, np.ndarray]:
    """The weights (when kept) and the output as NumPy arrays on the CPU (see `as_array`)."""
    arrays = {} if result.weights is None else {"weights": as_array(result.weights)}
    return arrays | {"output": as_array(result.output)}


def bfloat16_arrays(result: AttentionResult) -> tuple[str, ...]:
    """The arrays of a result that hold bfloat16 values widened to float32 (`as_array`): those a
    writer stores as bfloat16 again (`writers.write_result(bfloat16=...)`). The weights and output
    of a bfloat16 computation, and the weights of its top-k; statistics are float32 of their own."""
    names: tuple[str, ...] = ("weights", "output")
    if result.top_k is not None and result.top_k[0].dtype == torch.bfloat16:
        names += ("top_k_weights",)
    return names if result.dtype == torch.bfloat16 else ()
