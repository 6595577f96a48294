"""Attention in blocks of query rows, keeping only what was asked for: bounded memory at any length.

`attend` holds every weight at once: N x N numbers per matrix, 4 GiB in float32 at 32,768
positions. `stream_attention` computes the same maths (`core.attend_rows`) on
`block_rows` query rows at a time and keeps, from each block's weights, only the output rows, the
per-row statistics and top-k, a pooled picture, and (when asked) the weights themselves, written
block by block to a file. Memory beyond the inputs and the output is a few blocks of
(block_rows x Lk x matrices) numbers. No I/O but that weights file, no printing.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import numpy.typing as npt
import torch

from attncli import analysis
from attncli.analysis import RowStats
from attncli.core import (
    HALF_DTYPES,
    Prepared,
    attend_rows,
    attend_rows_with_scores,
    blocked_keys,
    broadcast_shapes,
    settings,
)
from attncli.errors import OutputError, UsageError
from attncli.writers import META_KEY, mode_for_replacing, safetensors_header

__all__ = [
    "BLOCK_OVERHEAD",
    "MAX_BLOCK_BYTES",
    "RESULT_FORMATS",
    "WEIGHTS_FORMATS",
    "KeptTable",
    "ResultFile",
    "StreamResult",
    "choose_block_rows",
    "describe",
    "full_weights_bytes",
    "fused_output",
    "stream_attention",
]

#: The most bytes of scores one block holds: larger blocks are no faster (measured: 8192 positions
#: with statistics took 1.1 s in 16 MiB blocks, 2.0 s in 64 MiB ones) and fall out of cache.
MAX_BLOCK_BYTES = 16 << 20
#: Peak memory growth over a block's scores, statistics, top-k and picture included (measured 7x
#: to 9.5x at 8192 and 32,768 positions: the temporaries, and malloc's reuse of freed blocks).
BLOCK_OVERHEAD = 10
#: Suffixes `weights_to` takes.
WEIGHTS_FORMATS = (".npy", ".safetensors")
#: Suffixes `ResultFile` (-o of a computation in blocks) takes.
RESULT_FORMATS = (".safetensors", ".npz")
_COPY_BYTES = 16 << 20  # a copy from file to file goes through a buffer of this size

_FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True)
class KeptTable:
    """What a table view of the weights shows, kept from each block: for every matrix (...), the
    weights at `rows` x `cols` and those rows' largest weights, and its figures over all weights
    (NumPy arrays on the CPU; bfloat16 widened to float32, as `core.result_arrays` does)."""

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
class StreamResult:
    """What `stream_attention` kept of one attention computation; no weights, unless written to a file.

    `output` is exactly `attend`'s (heads merged). `masked_rows` is (..., Lq) bool, or None without
    a mask, as in `AttentionResult`. `picture_max` / `picture_mean` are float32 (..., R, C): each
    cell pools `picture_blocks` = (rows, keys) weights, masked weights left out, NaN where all are.
    """

    output: torch.Tensor
    masked_rows: torch.Tensor | None
    scale: float
    causal: bool
    heads: int | None
    query_heads_per_key_head: int
    input_shapes: Mapping[str, tuple[int, ...]]
    weights_shape: tuple[int, ...]  # of the weights that were never held
    dtype: torch.dtype
    device: torch.device
    block_rows: int
    mask: torch.Tensor | None = None
    stats: RowStats | None = None
    top_k: tuple[torch.Tensor, torch.Tensor] | None = None  # values (..., Lq, k), int64 keys (..., Lq, k)
    picture_max: _FloatArray | None = None
    picture_mean: _FloatArray | None = None
    picture_blocks: tuple[int, int] = (0, 0)  # (0, 0) when no picture was asked for
    table: KeptTable | None = None
    #: How the output was computed: "blocks" (attncli's own maths, row block by row block) or
    #: "scaled_dot_product_attention" (`fused_output`: no weights, statistics or picture).
    method: str = "blocks"

    @classmethod
    def of(
        cls, p: Prepared, output: torch.Tensor, masked_rows: torch.Tensor | None, block_rows: int, **kept: Any
    ) -> StreamResult:
        """The result of computing `p`: its output (heads still split), the settings it came from,
        and what else was `kept` (statistics, top-k, pictures, method)."""
        return cls(
            output=p.merge_heads(output),
            masked_rows=masked_rows,
            scale=p.scale,
            causal=p.causal,
            heads=p.heads,
            query_heads_per_key_head=p.group,
            input_shapes=p.input_shapes,
            weights_shape=tuple(p.weights_shape),
            dtype=p.query.dtype,
            device=p.query.device,
            block_rows=block_rows,
            mask=p.mask,
            **kept,
        )

    def fully_masked_rows(self) -> list[tuple[int, ...]]:
        """Indices (batch..., row) of the query rows that could attend to no key: their weights are 0."""
        if self.masked_rows is None:
            return []
        return [tuple(int(i) for i in index) for index in self.masked_rows.nonzero().tolist()]


def full_weights_bytes(problem: Prepared) -> int:
    """Bytes of N x N buffers `attend` allocates: the scores (float32 for half dtypes), plus the
    half-precision copy of the weights it returns."""
    count = math.prod(problem.weights_shape)
    dtype = problem.query.dtype
    if dtype in HALF_DTYPES:
        return count * (4 + _itemsize(dtype))
    return count * _itemsize(dtype)


def choose_block_rows(problem: Prepared, memory_limit_bytes: int) -> int:
    """Query rows per block so that a block's scores take about 1/BLOCK_OVERHEAD of
    `memory_limit_bytes` (the rest goes to the temporaries of statistics, top-k and picture), and
    never more than MAX_BLOCK_BYTES; at least 1 row, at most Lq (when there are any)."""
    *lead, lq, lk = problem.weights_shape
    compute_size = 8 if problem.query.dtype == torch.float64 else 4
    row_bytes = max(1, math.prod(lead) * lk * compute_size)
    budget = min(memory_limit_bytes // BLOCK_OVERHEAD, MAX_BLOCK_BYTES)
    return max(1, min(lq, budget // row_bytes))


def stream_attention(
    problem: Prepared,
    *,
    block_rows: int,
    stats: bool = False,
    top_k: int | None = None,
    picture: tuple[int, int] | None = None,
    table: tuple[list[int], list[int]] | None = None,
    weights_to: str | os.PathLike[str] | None = None,
    result_file: ResultFile | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> StreamResult:
    """`attend(problem)`, computed `block_rows` query rows at a time; the full weights never exist.

    `stats`: `analysis.row_stats` of every row; `top_k`: `analysis.top_k` of every row (both with
    the mask and causal triangle as `blocked`, as `core.masked_positions` gives them). `picture`:
    (rows, cols) of a pooled picture of each matrix, by max and by mean. `table`: the rows and
    columns of each matrix whose weights to keep, with the figures a table's title gives
    (`KeptTable`). `weights_to`: a .npy or .safetensors path the weights are written to,
    atomically (bfloat16 widened to float32, as `core.result_arrays` does). `result_file`: a
    `ResultFile` the weights are written to as well, which the caller commits or discards.
    `progress(done, total)` is called with query rows after each block; an exception it raises
    stops the work and leaves no `weights_to` file behind.
    """
    if isinstance(block_rows, bool) or not isinstance(block_rows, int) or block_rows < 1:
        raise ValueError(f"block_rows must be a positive whole number, not {block_rows}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be at least 1, not {top_k}")
    if picture is not None and (len(picture) != 2 or min(picture) < 1):
        raise ValueError(f"picture must be (rows, cols), each at least 1, not {picture}")
    p = problem
    weights_shape = tuple(p.weights_shape)
    *lead_list, lq, _ = weights_shape
    lead = tuple(lead_list)
    dtype, device = p.query.dtype, p.query.device

    writer = None if weights_to is None else _weights_alone(Path(weights_to), p)
    pictures = None if picture is None else _Picture(weights_shape, picture, device)
    tables = None if table is None else _Table(weights_shape, *table, dtype, device)
    masked_rows = None if p.mask is None else torch.zeros((*lead, lq), dtype=torch.bool, device=device)
    stats_fields: list[torch.Tensor] | None = None
    kept: tuple[torch.Tensor, torch.Tensor] | None = None
    output: torch.Tensor | None = None
    # The entropy from the scores saves a logarithm per weight; half-precision weights are rounded
    # from the float32 scores' softmax, so theirs comes from the weights as in the full path.
    compute = _Blocks(p, keep_scores=stats and dtype not in HALF_DTYPES)
    try:
        for start in range(0, max(lq, 1), block_rows):
            stop = min(start + block_rows, lq)
            weights, block_output, block_masked, blocked, scores = compute.block(start, stop)
            if output is None:
                # (..., n, Dv) -> (..., Lq, Dv): value's batch axes may add to the weights'
                output = block_output.new_empty((*block_output.shape[:-2], lq, block_output.shape[-1]))
            output[..., start:stop, :] = block_output
            if masked_rows is not None and block_masked is not None:
                masked_rows[..., start:stop] = block_masked
            if stats:
                block_stats = analysis.row_stats(
                    weights,
                    blocked,
                    row_offset=start,
                    shifted_scores=scores,
                    zero_where_blocked=True,
                    overwrite_scores=True,  # this block's scores are not needed after
                    non_negative=True,
                )
                fields = [getattr(block_stats, name) for name in _STAT_FIELDS]
                if stats_fields is None:
                    stats_fields = [field.new_empty((*lead, lq)) for field in fields]
                for whole, part in zip(stats_fields, fields, strict=True):
                    whole[..., start:stop] = part
            if top_k is not None:
                values, keys = analysis.top_k(weights, top_k, blocked)
                if kept is None:
                    columns = min(top_k, weights_shape[-1])  # as analysis.top_k of the whole weights
                    kept = (
                        values.new_full((*lead, lq, columns), math.nan),
                        keys.new_full((*lead, lq, columns), -1),
                    )
                # A block of fewer keys (causal) has fewer to give: the rest stay NaN and -1.
                kept[0][..., start:stop, : values.shape[-1]] = values
                kept[1][..., start:stop, : keys.shape[-1]] = keys
            if pictures is not None:
                pictures.add(start, weights, blocked)
            if tables is not None:
                tables.add(start, weights, blocked, block_masked)
            if writer is not None or result_file is not None:
                if weights.shape[-1] < weights_shape[-1]:  # keys a causal block left out: weight 0
                    weights = torch.nn.functional.pad(weights, (0, weights_shape[-1] - weights.shape[-1]))
                for file in (writer, result_file):
                    if file is not None:
                        file.write_rows(start, weights)
            del weights, block_output, block_masked, blocked, scores
            if progress is not None:
                progress(stop, lq)
        if writer is not None:
            writer.commit()
    except BaseException:
        if writer is not None:
            writer.discard()
        raise
    assert output is not None  # the loop runs at least once
    picture_max, picture_mean = (None, None) if pictures is None else pictures.arrays()
    return StreamResult.of(
        p,
        output,
        masked_rows,
        block_rows,
        stats=None if stats_fields is None else RowStats(*stats_fields),
        top_k=kept,
        picture_max=picture_max,
        picture_mean=picture_mean,
        picture_blocks=(0, 0) if pictures is None else pictures.blocks,
        table=None if tables is None else tables.kept(),
    )


def fused_output(
    problem: Prepared, *, block_rows: int, progress: Callable[[int, int], None] | None = None
) -> StreamResult:
    """`attend(problem).output` by torch's `scaled_dot_product_attention`, which never holds the
    weights: the fastest way to the output alone, in memory that grows with the sequence, not its
    square. The same numbers up to rounding (the fused kernel sums in another order); fully masked
    rows are 0, as in `attend`. Half-precision inputs are computed in float32 and rounded, as
    `attend` does. With a mask or `causal`, the query rows go `block_rows` at a time, each block
    with its own (rows x keys) mask; otherwise in one call."""
    import torch.nn.functional as F  # noqa: N812

    if isinstance(block_rows, bool) or not isinstance(block_rows, int) or block_rows < 1:
        raise ValueError(f"block_rows must be a positive whole number, not {block_rows}")
    p = problem
    weights_shape = tuple(p.weights_shape)
    *lead, lq, lk = weights_shape
    if lq == 0 or lk == 0:
        return stream_attention(p, block_rows=block_rows, progress=progress)  # nothing to fuse
    dtype, device = p.query.dtype, p.query.device
    q, k, v = p.query, p.key, p.value
    if dtype in HALF_DTYPES:
        q, k, v = q.float(), k.float(), v.float()
    if p.group > 1:
        # (..., Hkv, Lk, D) -> (..., Hq, Lk, D): query head h uses key/value head h // group
        k, v = k.repeat_interleave(p.group, dim=-3), v.repeat_interleave(p.group, dim=-3)
    # The weights' batch axes (a mask may add some), and value's, which may add more, flattened into
    # one: the kernel that never holds the weights takes (batch, heads, positions, features) only,
    # and anything else went through a path that did (9 GiB at 32,768 positions).
    batch = broadcast_shapes(tuple(lead), tuple(v.shape[:-2]))
    matrices = math.prod(batch)

    def four_axes(x: torch.Tensor, positions: int) -> torch.Tensor:
        return x.expand(*batch, positions, x.shape[-1]).reshape(matrices, 1, positions, x.shape[-1])

    q, k, v = four_axes(q, lq), four_axes(k, lk), four_axes(v, lk)
    mask = p.mask
    rows_axis = mask is not None and mask.ndim >= 2 and mask.shape[-2] > 1
    masked_rows = None if mask is None else torch.zeros((*lead, lq), dtype=torch.bool, device=device)
    step = lq if mask is None and not p.causal else block_rows
    parts = []
    for start in range(0, lq, step):
        stop = min(start + step, lq)
        # Under causal, rows up to stop - 1 see no key past it: those keys need no work at all.
        keys = min(stop, lk) if p.causal else lk
        block_mask = None
        if mask is not None or p.causal:
            block_mask = _block_mask(mask, rows_axis, p.causal, start, stop, lk, device)[..., :keys]
            if block_mask.is_floating_point():
                block_mask = block_mask.to(q.dtype)  # the kernel takes a float mask in its own dtype
        kernel_mask = None
        if block_mask is not None:
            kernel_mask = block_mask.expand(*batch, stop - start, keys).reshape(
                matrices, 1, stop - start, keys
            )
        part = F.scaled_dot_product_attention(
            q[..., start:stop, :], k[..., :keys, :], v[..., :keys, :], attn_mask=kernel_mask, scale=p.scale
        ).reshape(*batch, stop - start, v.shape[-1])  # (M, 1, n, Dv) -> (..., n, Dv)
        if masked_rows is not None and block_mask is not None:
            open_keys = block_mask if block_mask.dtype == torch.bool else block_mask != -math.inf
            dead = ~open_keys.any(dim=-1).expand(*lead, stop - start)  # (..., n)
            masked_rows[..., start:stop] = dead
            part = part.masked_fill(dead.unsqueeze(-1), 0.0)  # NaN or 0 from the kernel: 0 as attend
        parts.append(part)
        if progress is not None:
            progress(stop, lq)
    output = torch.cat(parts, dim=-2) if len(parts) > 1 else parts[0]
    return StreamResult.of(p, output.to(dtype), masked_rows, step, method="scaled_dot_product_attention")


def _block_mask(
    mask: torch.Tensor | None,
    rows_axis: bool,
    causal: bool,
    start: int,
    stop: int,
    keys: int,
    device: torch.device,
) -> torch.Tensor:
    """The mask of query rows [start, stop) with the causal triangle folded in, as
    scaled_dot_product_attention takes it (bool True = may attend, or float added to the scores)."""
    part = None if mask is None else (mask[..., start:stop, :] if rows_axis else mask)
    if not causal:
        assert part is not None
        return part
    hidden = torch.ones(stop - start, keys, dtype=torch.bool, device=device).triu_(start + 1)
    if part is None:
        return ~hidden
    if part.dtype == torch.bool:
        return part & ~hidden
    return part.masked_fill(hidden, -math.inf)


_STAT_FIELDS = ("entropy", "entropy_normalised", "max_weight", "argmax", "sink", "distance")


def describe(result: StreamResult) -> dict[str, Any]:
    """The settings of a streamed result as plain JSON-able values, the keys of `core.describe`."""
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


class _Blocks:
    """`core.attend_rows` on query rows [start, stop): the same maths as `attend`, so each block's
    weights and output are those rows of `attend`'s (up to BLAS rounding a row block differently)."""

    def __init__(self, p: Prepared, *, keep_scores: bool = False) -> None:
        self.p = p
        self.keep_scores = keep_scores
        *self.lead, self.lq, self.lk = p.weights_shape
        # Half-precision key and value become float32 once here, not once per block (attend_rows
        # computes in float32 anyway, and .float() of a float32 tensor is free).
        half = p.query.dtype in HALF_DTYPES
        self.key, self.value = (p.key.float(), p.value.float()) if half else (p.key, p.value)
        # The mask's query axis, when it has one longer than 1, is cut to the block's rows.
        self.mask_rows = p.mask is not None and p.mask.ndim >= 2 and p.mask.shape[-2] > 1

    def block(
        self, start: int, stop: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """Weights (..., n, W) in the result dtype, output (..., n, Dv) in the result dtype, masked
        rows (..., n) (None without a mask), the blocked keys (bool, broadcastable to the weights;
        None if none) and, with `keep_scores`, the shifted scores of `core.attend_rows_with_scores`
        (else None). W is Lk, or under causal the keys up to the block's last row: the weights of
        the keys after them are 0."""
        p = self.p
        mask = p.mask[..., start:stop, :] if p.mask is not None and self.mask_rows else p.mask
        shape = (*self.lead, stop - start, self.lk)
        arguments = (
            p.query[..., start:stop, :],
            self.key,
            self.value,
            p.scale,
            mask,
            p.causal,
            p.group,
            shape,
            p.may_overflow,
            start,
        )
        scores = None
        if self.keep_scores:
            weights, output, masked_rows, scores = attend_rows_with_scores(*arguments, skip_unseen_keys=True)
        else:
            weights, output, masked_rows = attend_rows(*arguments, skip_unseen_keys=True)
        width = weights.shape[-1]  # under causal, only the keys the block's rows see
        if mask is not None and mask.ndim and mask.shape[-1] > 1:
            mask = mask[..., :width]
        blocked = blocked_keys(mask, p.causal, stop - start, width, start, device=weights.device)
        return weights, output, masked_rows, blocked, scores


class _Picture:
    """Max and mean of (rows, keys) blocks of each matrix, masked weights left out, built row block
    by row block: the columns pooled first within a block, then added to the picture's rows."""

    def __init__(self, weights_shape: tuple[int, ...], size: tuple[int, int], device: torch.device) -> None:
        *lead, lq, lk = weights_shape
        rows, cols = size
        self.block_rows = max(1, math.ceil(lq / rows))  # the smallest blocks that fit, as heatmap's
        self.block_cols = max(1, math.ceil(lk / cols))
        self.blocks = (self.block_rows, self.block_cols)
        grid = (*lead, math.ceil(lq / self.block_rows), math.ceil(lk / self.block_cols))
        self.largest = torch.full(grid, -math.inf, dtype=torch.float32, device=device)
        self.sums = torch.zeros(grid, dtype=torch.float64, device=device)
        self.counts = torch.zeros(grid, dtype=torch.int64, device=device)

    def add(self, start: int, weights: torch.Tensor, blocked: torch.Tensor | None) -> None:
        """Pool weights (..., n, W) of query rows start.. into the picture (W <= Lk: the keys past W
        are masked, as causal leaves them out of a block). The weights are 0 at every blocked key
        (softmax gives exp(-inf) = 0, and fully masked rows are zeroed), so they pool as they are:
        `blocked` only decides how many weights each cell's mean divides by."""
        n, width = weights.shape[-2:]
        columns = math.ceil(width / self.block_cols)  # the picture's columns these keys reach
        if columns == 0:
            return  # no keys: nothing to pool
        values = weights.to(torch.float64 if weights.dtype == torch.float64 else torch.float32)
        # (..., n, W) -> (..., n, c), then each row added to its picture row
        row_of = torch.arange(start, start + n, device=weights.device) // self.block_rows
        row_largest = self._columns(values, analysis.amax_non_negative).float()  # weights are >= 0
        spread = row_of.view(-1, 1).expand(row_largest.shape)  # (..., n, c): each row's picture row
        self.largest[..., :columns].scatter_reduce_(-2, spread, row_largest, reduce="amax")
        self.sums[..., :columns].index_add_(-2, row_of, self._columns(values, torch.sum).double())
        if blocked is None:
            open_count = torch.full((columns,), self.block_cols, device=weights.device)
            open_count[-1] = width - self.block_cols * (columns - 1)
        else:
            # counted on the blocked keys' own shape (a causal triangle is (n, W)), then broadcast
            open_count = self._columns(~blocked, analysis.count_true)
        self.counts[..., :columns].index_add_(-2, row_of, open_count.expand(*weights.shape[:-1], columns))

    def _columns(self, values: torch.Tensor, reduce: Callable[..., torch.Tensor]) -> torch.Tensor:
        """Reduce each run of block_cols keys: (..., n, W) -> (..., n, c), the last run ragged."""
        lk = values.shape[-1]
        whole = lk // self.block_cols * self.block_cols
        parts = []
        if whole:
            parts.append(reduce(values[..., :whole].unfold(-1, self.block_cols, self.block_cols), dim=-1))
        if whole < lk:
            parts.append(reduce(values[..., whole:], dim=-1, keepdim=True))
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)

    def arrays(self) -> tuple[_FloatArray, _FloatArray]:
        """(max, mean), float32 NumPy arrays, NaN where every weight of a cell was masked."""
        empty = self.counts == 0
        largest = self.largest.masked_fill(empty, math.nan)
        mean = (self.sums / self.counts.clamp(min=1)).masked_fill(empty, math.nan).float()
        return largest.cpu().numpy(), mean.cpu().numpy()


class _Table:
    """`KeptTable`, built row block by row block."""

    def __init__(
        self,
        weights_shape: tuple[int, ...],
        rows: list[int],
        cols: list[int],
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        *lead_list, lq, lk = weights_shape
        if any(not 0 <= i < lq for i in rows) or any(not 0 <= j < lk for j in cols):
            raise ValueError(f"table rows and columns must lie in the weights' {lq} x {lk}")
        lead = tuple(lead_list)
        self.rows, self.cols, self.keys = list(rows), list(cols), lk
        self.columns = torch.tensor(self.cols, dtype=torch.int64, device=device)
        self.cells = torch.zeros((*lead, len(rows), len(cols)), dtype=dtype, device=device)
        self.row_max = torch.zeros((*lead, len(rows)), dtype=dtype, device=device)
        self.blocked = torch.zeros((*lead, len(rows), len(cols)), dtype=torch.bool, device=device)
        self.any_blocked = False
        self.minimum = torch.full(lead, math.inf, dtype=torch.float64, device=device)
        self.maximum = torch.full(lead, -math.inf, dtype=torch.float64, device=device)
        self.deviation = torch.zeros(lead, dtype=torch.float64, device=device)
        self.live = torch.zeros(lead, dtype=torch.bool, device=device)

    def add(
        self,
        start: int,
        weights: torch.Tensor,
        blocked: torch.Tensor | None,
        masked_rows: torch.Tensor | None,
    ) -> None:
        """Weights (..., n, W) of query rows start.. (W <= Lk: keys past W are masked), 0 at every
        `blocked` key (bool, broadcastable; None if none); `masked_rows` (..., n): rows with no open
        key (None: every row has one)."""
        n, lk = weights.shape[-2:]
        if not n or not lk:
            return
        here = [(k, i - start) for k, i in enumerate(self.rows) if start <= i < start + n]
        if here:
            kept = torch.tensor([k for k, _ in here], device=weights.device)
            local = torch.tensor([i for _, i in here], device=weights.device)
            picked = weights.index_select(-2, local)  # (..., h, W)
            # Columns past the block's keys (left out under causal) are masked, weight 0.
            inside = self.columns < lk
            columns = self.columns.clamp_max(lk - 1)
            cells = picked.index_select(-1, columns).masked_fill(~inside, 0)
            self.cells.index_copy_(-2, kept, cells)
            self.row_max.index_copy_(-1, kept, analysis.amax_non_negative(picked, dim=-1))
            if blocked is not None or not bool(inside.all()):
                shut = torch.zeros(picked.shape, dtype=torch.bool, device=weights.device)
                if blocked is not None:
                    shut |= blocked.expand(weights.shape).index_select(-2, local)
                self.blocked.index_copy_(-2, kept, shut.index_select(-1, columns) | ~inside)
        if not self.any_blocked:
            self.any_blocked = lk < self.keys or (blocked is not None and bool(blocked.any()))
        # Masked weights are 0: the largest weight is over every key; the smallest, over open ones.
        largest = analysis.amax_non_negative(weights, dim=(-2, -1))
        self.maximum = torch.maximum(self.maximum, largest.double())
        open_weights = weights if blocked is None else weights.masked_fill(blocked, math.inf)
        self.minimum = torch.minimum(self.minimum, open_weights.amin(dim=(-2, -1)).double())
        off = (_row_sums(weights) - 1).abs()  # (..., n)
        live = None if masked_rows is None else ~masked_rows
        if live is not None:
            off = off.masked_fill(~live, 0.0)
        self.deviation = torch.maximum(self.deviation, off.amax(dim=-1))
        if live is None:
            self.live.fill_(True)
        else:
            self.live |= live.any(dim=-1)

    def kept(self) -> KeptTable:
        def array(tensor: torch.Tensor) -> np.ndarray:
            tensor = tensor.detach().cpu()
            return (tensor.float() if tensor.dtype == torch.bfloat16 else tensor).numpy()

        return KeptTable(
            rows=self.rows,
            cols=self.cols,
            cells=array(self.cells),
            row_max=array(self.row_max),
            blocked=array(self.blocked) if self.any_blocked else None,
            any_blocked=self.any_blocked,
            minimum=array(self.minimum),
            maximum=array(self.maximum),
            deviation=array(self.deviation),
            live=array(self.live),
        )


def _row_sums(weights: torch.Tensor) -> torch.Tensor:
    """Float64 sums of the rows of `weights` (..., Lk), from sums of 64 keys in float32 (float64 for
    float64 weights): within about 1e-8 of the exact sum, ten times faster than converting every
    weight to float64 first."""
    if weights.dtype == torch.float64:
        return weights.sum(dim=-1)
    lk = weights.shape[-1]
    whole = lk // 64 * 64
    sums = torch.zeros(weights.shape[:-1], dtype=torch.float64, device=weights.device)
    if whole:
        chunks = (
            weights[..., :whole]
            .reshape(*weights.shape[:-1], whole // 64, 64)
            .sum(dim=-1, dtype=torch.float32)
        )
        sums += chunks.sum(dim=-1, dtype=torch.float64)
    if whole < lk:
        sums += weights[..., whole:].sum(dim=-1, dtype=torch.float64)
    return sums


class _WeightsWriter:
    """The full weights, row block by row block, into a temporary file beside the target, after
    `header`; renamed over the target when complete. Each block's rows are written at their place
    in the data (positioned writes, not a memory map, whose dirty pages would count as the
    process's)."""

    def __init__(
        self, target: Path, shape: tuple[int, ...], dtype: np.dtype[Any], header: bytes, option: str
    ) -> None:
        if not target.parent.is_dir():
            raise UsageError(f"{option} {target}: the folder {target.parent} does not exist")
        self.target, self.shape, self.dtype, self.option = target, shape, dtype, option
        self.rows, self.keys = shape[-2], shape[-1]
        self.data_start = len(header)
        self.data_bytes = math.prod(shape) * dtype.itemsize
        self.file: BinaryIO | None = None
        try:
            descriptor, self.temporary = tempfile.mkstemp(
                dir=target.parent, prefix=f".{target.name}.", suffix=".partial"
            )
        except OSError as error:
            raise self.error(error) from None
        try:
            self.file = os.fdopen(descriptor, "w+b")
            self.file.write(header)
        except BaseException as error:
            self.discard()
            if isinstance(error, OSError):
                raise self.error(error) from None
            raise

    def write_rows(self, start: int, weights: torch.Tensor) -> None:
        """Weights (..., n, Lk) of query rows start..start+n, each matrix's rows at their offset."""
        assert self.file is not None
        if weights.dtype == torch.bfloat16:
            weights = weights.float()  # NumPy has no bfloat16; the widening is exact
        block = weights.detach().cpu().numpy().astype(self.dtype, copy=False)
        n = block.shape[-2]
        matrices = block.reshape(-1, n * self.keys)  # one contiguous run of rows per matrix
        itemsize = self.dtype.itemsize
        try:
            for index, rows in enumerate(matrices):
                self.file.seek(self.data_start + (index * self.rows + start) * self.keys * itemsize)
                self.file.write(np.ascontiguousarray(rows).data.cast("B"))
        except OSError as error:
            raise self.error(error) from None

    def commit(self) -> None:
        assert self.file is not None
        try:
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
            os.chmod(self.temporary, mode_for_replacing(self.target))
            os.replace(self.temporary, self.target)
        except OSError as error:
            self.discard()
            raise self.error(error) from None

    def discard(self) -> None:
        if self.file is not None and not self.file.closed:
            self.file.close()
        Path(self.temporary).unlink(missing_ok=True)

    def error(self, error: OSError) -> OutputError:
        return OutputError(f"{self.option} {self.target}: could not be written: {error.strerror or error}")


def _weights_alone(target: Path, problem: Prepared) -> _WeightsWriter:
    """--weights-to: a .npy or .safetensors file of the weights alone."""
    suffix = target.suffix.lower()
    if suffix not in WEIGHTS_FORMATS:
        shown = f"suffix '{suffix}'" if suffix else "no suffix"
        raise UsageError(f"weights file {target}: {shown} is not supported; use {', '.join(WEIGHTS_FORMATS)}")
    shape, dtype = tuple(problem.weights_shape), _file_dtype(problem.query.dtype)
    header = (
        _npy_header(shape, dtype)
        if suffix == ".npy"
        else safetensors_header({"weights": (dtype, shape)}, problem.describe())
    )
    return _WeightsWriter(target, shape, dtype, header, option="weights file")


class ResultFile:
    """`attn compute -o` for a computation in blocks: the weights go into the file block by block
    as they are computed, the output, statistics and metadata once they are known (`commit`); the
    file replaces the target only when complete, and `discard` leaves nothing behind.

    .safetensors: room is left for the header before the weights, and the header is written last,
    its JSON padded with spaces (as the format allows); should it not fit, the file is written again
    behind a header that does. .npz: the weights go to a temporary .npy file, copied into the
    archive as its member `weights.npy`, the others written as `np.savez` writes them. Memory stays
    that of one block either way. (JSON is not written so: the weights as text would be larger
    still than the 4 bytes a weight takes in these files.)
    """

    def __init__(self, target: str | os.PathLike[str], problem: Prepared) -> None:
        self.target = Path(target)
        self.suffix = self.target.suffix.lower()
        if self.suffix not in RESULT_FORMATS:
            raise UsageError(
                f"--output {self.target}: a blocked computation writes the weights block by block to "
                f"{' or '.join(RESULT_FORMATS)}, not as JSON text; use one of those, or drop "
                "--stream/--weights-to, or raise --memory-limit"
            )
        shape, dtype = tuple(problem.weights_shape), _file_dtype(problem.query.dtype)
        self.entry = (dtype, shape)
        if self.suffix == ".safetensors":
            guess = len(safetensors_header({"weights": self.entry}, problem.describe()))
            self.room = 2 * guess + 4096  # header JSON bytes: settings, sources, statistics' names
            self.room += -self.room % 8
            header = bytes(8 + self.room)
        else:
            header = _npy_header(shape, dtype)
        self.weights = _WeightsWriter(self.target, shape, dtype, header, option="--output")

    def __enter__(self) -> ResultFile:
        return self

    def __exit__(self, *_: object) -> None:
        self.discard()  # after commit, nothing is left to remove; before it, nothing is left behind

    def write_rows(self, start: int, weights: torch.Tensor) -> None:
        self.weights.write_rows(start, weights)

    def commit(self, arrays: Mapping[str, np.ndarray], metadata: Mapping[str, Any]) -> None:
        """Add `arrays` (all but the weights) and `metadata` to the weights, then replace the target."""
        if "weights" in arrays:
            raise ValueError("the weights are in the file already")
        try:
            if self.suffix == ".safetensors":
                self._commit_safetensors(arrays, metadata)
            else:
                self._commit_npz(arrays, metadata)
        except OSError as error:
            self.discard()
            raise self.weights.error(error) from None
        except BaseException:
            self.discard()
            raise

    def discard(self) -> None:
        self.weights.discard()

    def _commit_safetensors(self, arrays: Mapping[str, np.ndarray], metadata: Mapping[str, Any]) -> None:
        file = self.weights.file
        assert file is not None
        rest = {
            name: np.asarray(array, dtype=array.dtype.newbyteorder("<"), order="C")
            for name, array in arrays.items()
        }
        header = safetensors_header(
            {"weights": self.entry, **{name: (a.dtype, a.shape) for name, a in rest.items()}}, metadata
        )
        file.seek(self.weights.data_start + self.weights.data_bytes)
        for array in rest.values():
            if array.size:
                file.write(array.data.cast("B"))
        text = header[8:]
        if len(text) <= self.room:
            file.seek(0)
            file.write(self.room.to_bytes(8, "little") + text + b" " * (self.room - len(text)))
            self.weights.commit()
            return
        # A header longer than the room left for it: the data again, behind it, in a second file.
        file.flush()
        file.seek(self.weights.data_start)

        def write(out: BinaryIO) -> None:
            out.write(header)
            shutil.copyfileobj(file, out, _COPY_BYTES)

        self._replace_with(write)

    def _commit_npz(self, arrays: Mapping[str, np.ndarray], metadata: Mapping[str, Any]) -> None:
        file = self.weights.file
        assert file is not None
        file.flush()
        members = {**arrays, META_KEY: np.array(json.dumps(dict(metadata)))}

        def write(out: BinaryIO) -> None:
            # Stored, not compressed, as np.savez writes; ZIP64 past 4 GiB.
            with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
                archive.write(self.weights.temporary, "weights.npy")
                for name, array in members.items():
                    with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                        np.lib.format.write_array(member, np.asanyarray(array), allow_pickle=False)

        self._replace_with(write)

    def _replace_with(self, write: Callable[[BinaryIO], object]) -> None:
        """Write a second temporary file beside the target, rename it over the target, and remove
        the first."""
        descriptor, temporary = tempfile.mkstemp(
            dir=self.target.parent, prefix=f".{self.target.name}.", suffix=".partial"
        )
        try:
            with os.fdopen(descriptor, "wb") as out:
                write(out)
                out.flush()
                os.fsync(out.fileno())
            os.chmod(temporary, mode_for_replacing(self.target))
            os.replace(temporary, self.target)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        self.weights.discard()


def _npy_header(shape: tuple[int, ...], dtype: np.dtype[Any]) -> bytes:
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
    buffer = _Bytes()
    try:
        np.lib.format.write_array_header_1_0(buffer, header)
    except ValueError:  # a header over 64 KiB: never for a shape, but version 2.0 takes it
        buffer = _Bytes()
        np.lib.format.write_array_header_2_0(buffer, header)
    return bytes(buffer.data)


class _Bytes:
    """The one method NumPy's header writers call."""

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, chunk: bytes) -> None:
        self.data += chunk


def _file_dtype(dtype: torch.dtype) -> np.dtype[Any]:
    """NumPy's dtype for the weights file; bfloat16, which NumPy lacks, widened to float32."""
    if dtype == torch.float64:
        return np.dtype(np.float64)
    return np.dtype(np.float16) if dtype == torch.float16 else np.dtype(np.float32)


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()
