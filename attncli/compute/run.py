"""Running a prepared problem: its blocks of query rows fed to the sinks a request needs.

`run` is the one way attncli computes weights: `attention(q, k, v)` is the run of one block that
holds every query row, kept by the output and weights sinks; a long sequence is the same run in
smaller blocks, kept by the sinks of what is shown or saved, so that the full weights never exist.
`fused` is the other, named choice: the output alone, by torch's `scaled_dot_product_attention`.
Who computes the blocks follows the prepared problem (`Prepared.kernel`: torch, or NumPy for small
CPU inputs, which never imports torch); the sinks and the result are the same for both.
No I/O but the files handed to a run, no printing.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from attncli import arrays
from attncli.compute.blocks import Block, blocks
from attncli.compute.prepare import (
    HALF_NAMES,
    Prepared,
    TensorLike,
    broadcast_shapes,
    causal_hidden,
    mask_rows,
    memory_message,
    prepare,
)
from attncli.compute.result import AttentionResult
from attncli.compute.sinks import (
    EntropySink,
    FileSink,
    OutputSink,
    PatternSink,
    PictureSink,
    RowsFile,
    Sink,
    StatsSink,
    TableSink,
    TopKSink,
    WeightsSink,
)
from attncli.errors import ComputeError
from attncli.io.writers import ResultFile, WeightsFile

if TYPE_CHECKING:
    import torch

#: The most bytes of scores one block of a run in blocks holds: larger blocks fall out of cache.
MAX_BLOCK_BYTES = 16 << 20
#: Peak memory growth of a run in blocks over one block's scores: the temporaries of statistics,
#: top-k and picture, and the allocator's reuse of freed blocks.
BLOCK_OVERHEAD = 10


def attention(
    query: TensorLike,
    key: TensorLike,
    value: TensorLike,
    *,
    scale: float | None = None,
    mask: TensorLike | None = None,
    causal: bool = False,
    heads: int | None = None,
    dtype: str | torch.dtype | None = "auto",
    device: str | torch.device = "cpu",
    names: Mapping[str, str] | None = None,
) -> AttentionResult:
    """Compute attention weights and output.

    query (..., Lq, D), key (..., Lk, D), value (..., Lk, Dv): torch tensors or NumPy arrays; a 1-D
    vector is one position; leading axes broadcast. 4-D query and key/value with different head
    counts (axis -3) are grouped-query attention. `mask` is boolean (True = may attend) or float
    (added to the scores) and broadcasts against the weights. `causal` lets query i see keys j <= i.
    `heads` splits the feature axis into that many heads. `names` says how error messages name
    each of query/key/value/mask (file names, say).
    """
    problem = prepare(
        query,
        key,
        value,
        scale=scale,
        mask=mask,
        causal=causal,
        heads=heads,
        dtype=dtype,
        device=device,
        names=names,
    )
    return attend(problem)


def attend(problem: Prepared, *, stats: bool = False, top_k: int | None = None) -> AttentionResult:
    """`run` of one block holding every query row, keeping the weights (and what else is asked)."""
    return run(problem, keep_weights=True, stats=stats, top_k=top_k)


def run(
    problem: Prepared,
    *,
    block_rows: int | None = None,
    keep_weights: bool = False,
    stats: bool = False,
    entropy: bool = False,
    top_k: int | None = None,
    picture: tuple[int, int] | None = None,
    table: tuple[list[int], list[int]] | None = None,
    patterns: bool = False,
    token_ids: tuple[torch.Tensor, torch.Tensor] | None = None,
    weights_to: str | os.PathLike[str] | None = None,
    result_file: RowsFile | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> AttentionResult:
    """Compute `problem` `block_rows` query rows at a time (None: one block of every row), keeping
    the output and what is asked for: `keep_weights`, the full weights; `stats`, `analysis.rows.row_stats`
    of every row; `entropy`, each row's entropy alone (`stats` has it too);
    `top_k`, `analysis.rows.top_k` of every row (both with the mask and causal triangle as
    `blocked`); `picture`, (rows, cols) of a pooled picture of each matrix, by max and by mean;
    `table`, the rows and columns of each matrix whose weights to keep, with the figures a table's
    title gives (`KeptTable`); `patterns`, `analysis.heads.pattern_rows` of every row (with
    `token_ids`, (query ids, key ids) broadcasting to the weights' leading axes, the token ones too);
    `weights_to`, a .npy or .safetensors path the weights are written to
    block by block, atomically; `result_file`, a `writers.ResultFile` the weights are written to as
    well, which the caller commits or discards. `progress(done, total)` is called with query rows
    after each block; an exception it raises stops the work and leaves no `weights_to` file behind.
    Whatever the block size, each consumer is fed the same numbers: one block of every row gives
    every kept tensor bit for bit, and smaller blocks the same up to the rounding of the products.
    """
    if picture is not None and (len(picture) != 2 or min(picture) < 1):
        raise ValueError(f"picture must be (rows, cols), each at least 1, not {picture}")
    p = problem
    weights_shape = tuple(p.weights_shape)
    lq = weights_shape[-2]
    rows = max(lq, 1) if block_rows is None else block_rows
    dtype, device = p.query.dtype, p.query.device
    half = arrays.dtype_name(dtype) in HALF_NAMES

    outputs = OutputSink(weights_shape, p.mask is not None)
    weights = WeightsSink(weights_shape) if keep_weights else None
    row_stats = StatsSink(weights_shape) if stats else None
    entropies = EntropySink(weights_shape) if entropy and not stats else None
    top = None if top_k is None else TopKSink(weights_shape, top_k)
    # the NumPy kernel's picture is NumPy's too
    picture_device = "numpy" if p.kernel == "numpy" else device
    pictures = None if picture is None else PictureSink(weights_shape, picture, picture_device)
    tables = None if table is None else TableSink(weights_shape, *table, dtype, device)
    pattern_rows = PatternSink(weights_shape, token_ids) if patterns else None
    writer = None
    if weights_to is not None:
        bfloat16 = arrays.dtype_name(dtype) == "bfloat16"
        writer = WeightsFile(weights_to, weights_shape, file_dtype(dtype), p.describe(), bfloat16=bfloat16)
    files = [file for file in (writer, result_file) if file is not None]
    # The statistics, last, take the scores over (their product is made in the scores' memory).
    sinks: list[Sink | None] = [outputs, weights, top, pictures, tables, entropies, pattern_rows]
    sinks += [FileSink(files, weights_shape[-1]) if files else None, row_stats]
    consumers = [sink for sink in sinks if sink is not None]
    # The entropy from the scores saves a logarithm per weight; half-precision weights are rounded
    # from the float32 scores' softmax, so theirs comes from the weights themselves.
    keep_scores = stats and not half
    # A run in blocks on the torch kernel that keeps only the output, statistics, picture and a
    # title's figures: the fused kernel's blocks, which carry those instead of weights, where it fits
    # the problem (else, or where Numba is missing, the torch path's, which every sink reads). A
    # problem prepared for the NumPy kernel (`kernels.choose`, before `prepare`) keeps its own blocks:
    # the fused kernel is for long runs, and importing it (torch, Numba) is what that kernel avoids.
    summaries = (
        p.kernel == "torch"
        and block_rows is not None
        and all(
            sink is None
            or type(sink) in (OutputSink, StatsSink, PictureSink, EntropySink)
            or (isinstance(sink, TableSink) and sink.figures_only)  # a heatmap's title
            for sink in sinks
        )
    )
    kernel = p.kernel  # "numpy" or "torch"; "numba" where the fused kernel makes the blocks
    computed: Iterator[Block] | None = None
    if summaries:
        from attncli.compute import kernel_numba  # imports torch: only for the torch kernel's problems

        if kernel_numba.fits(p):
            kernel = "numba"
            # the memory a torch block may take holds larger fused blocks, one for each thread
            rows = kernel_numba.block_rows_for(p, rows, BLOCK_OVERHEAD)
            computed = kernel_numba.fused_blocks(p, rows, None if pictures is None else pictures.block_cols)
    if computed is None:
        computed = blocks(p, rows, keep_scores=keep_scores)
    try:
        for block in computed:
            for sink in consumers:
                sink.add(block)
            done = block.stop
            del block  # its buffers go before the next block's are made
            if progress is not None:
                progress(done, lq)
        if writer is not None:
            writer.commit()
    except BaseException as error:
        if writer is not None:
            writer.discard()
        # torch's OutOfMemoryError, NumPy's MemoryError, or a RuntimeError of an allocator that says so
        memory = isinstance(error, MemoryError) or (
            isinstance(error, RuntimeError) and "memory" in str(error).lower()
        )
        torch = sys.modules.get("torch")  # loaded by the torch kernel; an error of the NumPy one is not its
        if memory or (torch is not None and isinstance(error, torch.OutOfMemoryError)):
            raise ComputeError(memory_message(_block_shape(weights_shape, rows), dtype, error)) from None
        raise
    assert outputs.output.tensor is not None  # the loop runs at least once
    picture_max, picture_mean = (None, None) if pictures is None else pictures.arrays()
    return _result(
        p,
        outputs.output.tensor,
        None if outputs.masked_rows is None else outputs.masked_rows.tensor,
        rows,
        weights=None if weights is None else weights.weights.tensor,
        stats=None if row_stats is None else row_stats.result(),
        entropy=None if entropies is None else entropies.entropy.tensor,
        top_k=None if top is None else top.result(),
        picture_max=picture_max,
        picture_mean=picture_mean,
        picture_blocks=(0, 0) if pictures is None else pictures.blocks,
        table=None if tables is None else tables.kept(),
        patterns=None if pattern_rows is None else pattern_rows.result(),
        kernel=kernel,
    )


def fused(
    problem: Prepared,
    *,
    block_rows: int | None = None,
    upcast_half: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> AttentionResult:
    """The output of `problem` by torch's `scaled_dot_product_attention`, which never holds the
    weights: the fastest way to the output alone, in memory that grows with the sequence, not its
    square. The same numbers as `run` up to rounding (the kernel sums in another order); fully masked
    rows are 0, as in `run`. With `upcast_half`, half-precision inputs are computed in float32 and
    rounded, as `run` does; without it, in their own dtype (what `--check` compares against: the
    kernel people run). With a mask or `causal`, the query rows go `block_rows` at a time (None: all
    at once), each block with its own (rows x keys) mask; otherwise in one call."""
    import torch
    import torch.nn.functional as F  # noqa: N812

    if block_rows is not None and (
        isinstance(block_rows, bool) or not isinstance(block_rows, int) or block_rows < 1
    ):
        raise ValueError(f"block_rows must be a positive whole number, not {block_rows}")
    p = problem
    weights_shape = tuple(p.weights_shape)
    *lead, lq, lk = weights_shape
    if lq == 0 or lk == 0 or p.kernel == "numpy":
        # nothing to fuse; or a small problem of the NumPy kernel, which has no fused kernel: the
        # output of its blocks (a --memory-limit below a small problem's weights)
        return run(p, block_rows=block_rows, progress=progress)
    dtype, device = p.query.dtype, p.query.device
    q, k, v = p.compute_inputs() if upcast_half else (p.query, p.key, p.value)
    if p.group > 1:
        # (..., Hkv, Lk, D) -> (..., Hq, Lk, D): query head h uses key/value head h // group
        k, v = k.repeat_interleave(p.group, dim=-3), v.repeat_interleave(p.group, dim=-3)
    # The weights' batch axes (a mask may add some), and value's, which may add more, flattened into
    # one: the kernel that never holds the weights takes (batch, heads, positions, features) only.
    batch = broadcast_shapes(tuple(lead), tuple(v.shape[:-2]))
    matrices = math.prod(batch)

    def four_axes(x: torch.Tensor, positions: int) -> torch.Tensor:
        return x.expand(*batch, positions, x.shape[-1]).reshape(matrices, 1, positions, x.shape[-1])

    q, k, v = four_axes(q, lq), four_axes(k, lk), four_axes(v, lk)
    mask = p.mask
    masked_rows = None if mask is None else torch.zeros((*lead, lq), dtype=torch.bool, device=device)
    step = lq if (mask is None and not p.causal) or block_rows is None else block_rows
    parts = []
    for start in range(0, lq, step):
        stop = min(start + step, lq)
        # Under causal, rows up to stop - 1 see no key past it: those keys need no work at all.
        keys = min(stop, lk) if p.causal else lk
        block_mask = None
        if mask is not None or p.causal:
            block_mask = _block_mask(mask, p.causal, start, stop, lk, device)[..., :keys]
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
            part = part.masked_fill(dead.unsqueeze(-1), 0.0)  # NaN or 0 from the kernel: 0 as run
        parts.append(part)
        if progress is not None:
            progress(stop, lq)
    output = torch.cat(parts, dim=-2) if len(parts) > 1 else parts[0]
    return _result(p, output.to(dtype), masked_rows, step, method="scaled_dot_product_attention")


def _block_mask(
    mask: torch.Tensor | None,
    causal: bool,
    start: int,
    stop: int,
    keys: int,
    device: torch.device,
) -> torch.Tensor:
    """The mask of query rows [start, stop) with the causal triangle folded in, as
    scaled_dot_product_attention takes it (bool True = may attend, or float added to the scores)."""
    import torch

    part: torch.Tensor | None = mask_rows(mask, start, stop)
    if not causal:
        assert part is not None
        return part
    hidden: torch.Tensor = causal_hidden(stop - start, keys, start, device)
    if part is None:
        return ~hidden
    if part.dtype == torch.bool:
        return part & ~hidden
    return part.masked_fill(hidden, -math.inf)


def _result(
    p: Prepared,
    output: torch.Tensor,
    masked_rows: torch.Tensor | None,
    block_rows: int,
    **kept: Any,
) -> AttentionResult:
    """The result of computing `p`: its output (heads still split), the settings it came from, and
    what else was `kept` (weights, statistics, top-k, pictures, table, method)."""
    return AttentionResult(
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
        mask=p.mask,
        block_rows=block_rows,
        **kept,
    )


def full_weights_bytes(problem: Prepared, *, scores: bool = False) -> int:
    """Bytes of the (Lq x Lk) buffers a run of one block allocates: the scores (float32 for half
    dtypes), the half-precision copy of the weights it returns, and with `scores` (statistics of
    non-half weights) a second buffer for the kept scores."""
    count = math.prod(problem.weights_shape)
    dtype = problem.query.dtype
    if arrays.dtype_name(dtype) in HALF_NAMES:
        return count * (4 + arrays.itemsize(dtype))
    return count * arrays.itemsize(dtype) * (2 if scores else 1)


def choose_block_rows(problem: Prepared, memory_limit_bytes: int) -> int:
    """Query rows per block so that a block's scores take about 1/BLOCK_OVERHEAD of
    `memory_limit_bytes` (the rest goes to the temporaries of statistics, top-k and picture), and
    never more than MAX_BLOCK_BYTES; at least 1 row, at most Lq (when there are any)."""
    *lead, lq, lk = problem.weights_shape
    compute_size = 8 if arrays.is_float64(problem.query) else 4
    row_bytes = max(1, math.prod(lead) * lk * compute_size)
    budget = min(memory_limit_bytes // BLOCK_OVERHEAD, MAX_BLOCK_BYTES)
    return max(1, min(lq, budget // row_bytes))


def open_result_file(target: str | os.PathLike[str], problem: Prepared) -> ResultFile:
    """-o of a run in blocks: a `writers.ResultFile` for `problem`'s weights, which `run` fills
    block by block (`result_file=`) and its caller commits with the rest of the result."""
    shape = tuple(problem.weights_shape)
    dtype = problem.query.dtype
    bfloat16 = arrays.dtype_name(dtype) == "bfloat16"
    return ResultFile(target, shape, file_dtype(dtype), problem.describe(), bfloat16=bfloat16)


def file_dtype(dtype: Any) -> np.dtype[Any]:
    """NumPy's dtype of the weights given to a file; bfloat16, which NumPy lacks, widened to float32
    (and stored as bfloat16 again where the format has it: `bfloat16=` of the writers)."""
    name = arrays.dtype_name(dtype)
    return np.dtype(name if name in ("float64", "float16") else "float32")


def _block_shape(weights_shape: tuple[int, ...], rows: int) -> tuple[int, ...]:
    return (*weights_shape[:-2], min(rows, weights_shape[-2]), weights_shape[-1])
