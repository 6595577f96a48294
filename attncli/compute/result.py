"""The one result type of every computation, whole or in blocks, and its plain descriptions.

No I/O, no printing. A result shows itself from Python: `repr` is a few lines of shapes, settings
and figures (never a tensor's values); `__rich__` and `_repr_html_` are the CLI's own view, drawn
by `attncli.display` (the layer above `present/`, imported when a result is first drawn).
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from attncli import arrays
from attncli.analysis.rows import RowStats
from attncli.arrays import Array
from attncli.compute.prepare import blocked_keys, settings

if TYPE_CHECKING:
    import torch

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


@dataclass(frozen=True, repr=False)
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

    output: Array  # torch tensors, or NumPy arrays from the NumPy kernel (the CLI's small inputs)
    masked_rows: Array | None
    scale: float
    causal: bool
    heads: int | None  # the feature axis was split into this many heads
    query_heads_per_key_head: int  # grouped-query attention: > 1 when key/value heads are shared
    input_shapes: Mapping[str, tuple[int, ...]]
    weights_shape: tuple[int, ...]
    dtype: Any  # torch.dtype, or NumPy's for the NumPy kernel
    device: Any  # torch.device, or "cpu" for the NumPy kernel
    mask: Array | None = None  # the mask as given: bool (True = may attend) or float (added)
    weights: Array | None = None
    block_rows: int = 0  # query rows per block; every row, when the run was one block
    #: "blocks" (attncli's own maths, one or more blocks of query rows) or
    #: "scaled_dot_product_attention" (the fused kernel: the output alone).
    method: str = "blocks"
    #: What made a run's blocks: "torch", "numpy" (compute/numpy_kernel.py) or "numba" (the fused
    #: kernel of runs in blocks, compute/kernel_numba.py).
    kernel: str = "torch"
    stats: RowStats | None = None
    entropy: Array | None = None  # (..., Lq) of every row, when kept without `stats`
    top_k: tuple[Array, Array] | None = None  # values (..., Lq, k), int64 keys (..., Lq, k)
    picture_max: _FloatArray | None = None
    picture_mean: _FloatArray | None = None
    picture_blocks: tuple[int, int] = (0, 0)  # (0, 0) when no picture was asked for
    table: KeptTable | None = None
    #: `analysis.heads.pattern_rows` of every row, each (..., Lq), when asked for (`run(patterns=...)`)
    patterns: Mapping[str, Array] | None = None

    def fully_masked_rows(self) -> list[tuple[int, ...]]:
        """Indices (batch..., row) of the query rows that could attend to no key: their weights are 0."""
        if self.masked_rows is None:
            return []
        return arrays.nonzero(self.masked_rows)

    def masked_keys(self) -> np.ndarray | None:
        """Where a key was masked for a query (`masked_positions`): bool, True = masked,
        broadcastable to the weights' shape; None when nothing was masked."""
        return masked_positions(self)

    def __repr__(self) -> str:
        return summary(self)

    def __rich__(self) -> Any:
        """The CLI's view of the result (`rich.print(result)`), as wide as the console."""
        return _views().ResultView(self)

    def _repr_html_(self) -> str:
        """The CLI's view as a standalone HTML fragment with inline styles, for notebooks."""
        html: str = _views().result_html(self)
        return html


def _views() -> Any:
    # The drawing of a result lives in the layer above present/ (attncli.display); a result reaches it
    # only when it is drawn, by name, as attncli's lazy exports do, so compute/ never imports Rich.
    return importlib.import_module("attncli.display")


#: Weights per piece when `summary` finds the smallest open weight: bounds its temporaries.
_SUMMARY_ELEMENTS = 1 << 24


def summary(result: AttentionResult) -> str:
    """A few lines about `result`, in the spirit of lovely-tensors: shapes, dtype, device, scale,
    mask and causal flag, the smallest and largest weight over open keys, the fully masked rows.
    Never a tensor's values, whatever the size; one pass over the weights for their range."""
    if arrays.is_numpy(result.output):
        import torch  # the NumPy kernel's results are the CLI's, drawn, not summed up: a repr may import it

        result = _as_torch(result, torch)
    shapes = " · ".join(f"{role} {_shape(shape)}" for role, shape in result.input_shapes.items())
    kept = "weights" if result.weights is not None else "weights not kept"
    lines = [
        f"AttentionResult {kept} {_shape(result.weights_shape)} {_dtype(result.dtype)} {result.device}"
        f" · output {_shape(tuple(result.output.shape))}",
        f"  {shapes}",
    ]
    settings = [f"scale {result.scale:.6g}"]
    if result.causal:
        settings.append("causal")
    if result.mask is not None:
        settings.append(f"mask {_dtype(result.mask.dtype)} {_shape(tuple(result.mask.shape))}")
    if result.heads:
        settings.append(f"{result.heads} heads")
    if result.query_heads_per_key_head > 1:
        settings.append(f"grouped: {result.query_heads_per_key_head} query heads per key/value head")
    if result.masked_rows is not None:
        rows = int(result.masked_rows.sum())
        settings.append(f"{rows} row{'' if rows == 1 else 's'} fully masked")
    if result.method != "blocks" or result.weights is None:
        settings.append(f"{result.method}, blocks of {result.block_rows} rows")
    lines.append("  " + " · ".join(settings))
    figures = []
    if result.weights is not None and result.weights.numel():
        low, high = _open_range(result.weights, masked_positions(result))
        open_keys = " (open keys)" if result.mask is not None or result.causal else ""
        figures.append(f"weights min={low:.3g} max={high:.3g}{open_keys}")
    if result.output.numel():
        output = result.output.detach()
        figures.append(f"output min={float(output.min()):.3g} max={float(output.max()):.3g}")
    if figures:
        lines.append("  " + " · ".join(figures))
    return "\n".join(lines)


def _shape(shape: tuple[int, ...]) -> str:
    return str(tuple(shape))


def _dtype(dtype: Any) -> str:
    return arrays.dtype_name(dtype)


def _open_range(weights: torch.Tensor, blocked: np.ndarray | None) -> tuple[float, float]:
    """The smallest and largest weight over keys not `blocked` (inf, -inf when none is open; NaN
    when a weight is NaN), a piece of at most _SUMMARY_ELEMENTS weights at a time."""
    import torch

    from attncli.analysis.rows import amax_non_negative

    weights = weights.detach()
    # An axis that `expand` stretched (stride 0) repeats one matrix: its range is that one's.
    weights = weights[tuple(slice(0, 1) if stride == 0 else slice(None) for stride in weights.stride())]
    if blocked is None:
        smallest, largest = torch.aminmax(weights)
        return float(smallest), float(largest)
    shut = torch.from_numpy(np.ascontiguousarray(blocked)).to(weights.device)
    shut = shut.reshape((1,) * (weights.ndim - shut.ndim) + tuple(shut.shape))
    low: float = math.inf
    high: float = -math.inf
    for part, part_shut in _pieces(weights, shut):
        if part.dtype not in (torch.float32, torch.float64):
            part = part.float()
        piece_low = float(part.masked_fill(part_shut, math.inf).amin())
        # Masked weights are 0 and none is below: the largest over every key is the largest open
        # one, wherever a key is open (NaN counts as largest here too).
        piece_high = float(amax_non_negative(part, dim=tuple(range(part.ndim))))
        if math.isnan(piece_low) or math.isnan(piece_high):
            return math.nan, math.nan
        low, high = min(low, piece_low), max(high, piece_high)
    return (low, high) if low != math.inf else (math.inf, -math.inf)


def _as_torch(result: AttentionResult, torch: Any) -> AttentionResult:
    """`result` with its weights, output, masked rows and mask as torch tensors (for `summary`)."""
    from dataclasses import replace

    def tensor(x: Array | None) -> Any:
        return None if x is None else torch.from_numpy(np.array(x))

    return replace(
        result,
        output=tensor(result.output),
        weights=tensor(result.weights),
        masked_rows=tensor(result.masked_rows),
        mask=tensor(result.mask),
        dtype=getattr(torch, arrays.dtype_name(result.dtype)),
        device=torch.device("cpu"),
    )


def _pieces(weights: torch.Tensor, shut: torch.Tensor) -> Any:
    """(weights, blocked) pieces along the leading axes, each of at most _SUMMARY_ELEMENTS weights
    (or one matrix), `shut` (the weights' rank) broadcast to each."""
    if weights.numel() <= _SUMMARY_ELEMENTS or weights.ndim <= 2:
        yield weights, shut.expand(weights.shape)
        return
    for index in range(weights.shape[0]):
        part_shut = shut[index if shut.shape[0] > 1 else 0]
        yield from _pieces(weights[index], part_shut)


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
    if result.mask is None and not result.causal:
        return None
    if arrays.is_numpy(result.output):  # the NumPy kernel's: its mask is a NumPy array
        return blocked_keys(result.mask, result.causal, lq, lk, device="numpy")
    import torch

    mask = None if result.mask is None else result.mask.detach().cpu()
    blocked = blocked_keys(mask, result.causal, lq, lk, device=torch.device("cpu"))
    return None if blocked is None else blocked.numpy()


def as_array(tensor: Array) -> np.ndarray:
    """A tensor as a NumPy array on the CPU; bfloat16, which NumPy lacks, widened exactly to float32.
    A NumPy array (the NumPy kernel's) is itself."""
    return arrays.to_numpy(tensor)


def result_arrays(result: AttentionResult) -> dict[str, np.ndarray]:
    """The weights (when kept) and the output as NumPy arrays on the CPU (see `as_array`)."""
    arrays = {} if result.weights is None else {"weights": as_array(result.weights)}
    return arrays | {"output": as_array(result.output)}


def bfloat16_arrays(result: AttentionResult) -> tuple[str, ...]:
    """The arrays of a result that hold bfloat16 values widened to float32 (`as_array`): those a
    writer stores as bfloat16 again (`writers.write_result(bfloat16=...)`). The weights and output
    of a bfloat16 computation, and the weights of its top-k; statistics are float32 of their own."""
    names: tuple[str, ...] = ("weights", "output")
    if result.top_k is not None and arrays.dtype_name(result.top_k[0].dtype) == "bfloat16":
        names += ("top_k_weights",)
    return names if arrays.dtype_name(result.dtype) == "bfloat16" else ()
