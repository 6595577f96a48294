"""The fused kernel of a run in blocks: per block, the output, the statistics and the picture's cells
from passes over each row of scores, two of them while it sits in cache, instead of the weights.

The torch path (`blocks.blocks`) makes the weights of a block and hands them to each sink, which
passes over them again (softmax, the entropy's product, maxima, the distance's sums, the picture's
pooling: about fourteen passes over memory besides the two matrix products). Here the scores of a
block come from the same product (`torch.matmul`, into a buffer each thread reuses); then Numba's
`_numba_rows.summarise_rows` makes, row by row, pass 1 (each picture cell's largest score, which
give the row's largest, its key and the cells' largest weights), pass 2 (e = exp(s - largest) in
place and the row's sums) and pass 3 (each cell's sum); then output = (E @ V) / Z. Blocks run side
by side, each whole in one thread of a pool (`fused_blocks`). They carry a `RowSummary` instead of
weights, which `StatsSink`, `PictureSink` and `OutputSink` read; a run takes this path only when
those are all it feeds (`fits`).

Where Numba is missing or fails to import, or ATTNCLI_KERNEL=torch is set, `available()` is False
and runs take the torch path: the same numbers within rounding (tests/test_kernel_numba.py holds
both against the float64 reference). No I/O, no printing.
"""

from __future__ import annotations

import collections
import importlib
import math
import os
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from attncli.analysis.rows import RowStats
from attncli.compute import buffers
from attncli.compute.blocks import Block, apply_mask, block_scores
from attncli.compute.prepare import Prepared, block_operands, blocked_keys, causal_hidden, mask_rows
from attncli.compute.summary import RowSummary

#: ATTNCLI_KERNEL=torch: runs in blocks take the torch path even where Numba is installed.
ENV = "ATTNCLI_KERNEL"
#: Keys per cell of the kernel's pass 1 when no picture sets them: a few cache lines per maximum.
CELL_KEYS = 256
#: Weights a run needs before the kernel is loaded in a process that has not run it yet (Numba's
#: import, 0.2-0.3 s, and its first call's set-up of its compiler's types, 0.3 s, on 2 cores): below
#: this the torch path's extra passes cost less than that. Measured in-process over the two
#: products: 8 x 8,192 (2^29 weights) the torch path +0.9 s, the kernel +0.0 s; at 2^28 half that.
MIN_WEIGHTS_TO_LOAD = 2**29
#: The scores of one fused block, at most (each thread of the pool holds one block's): larger blocks
#: spread each block's fixed costs (the calls, the hand-over between threads, the sinks) over more
#: rows. Measured on 2 cores, 8 x 8,192 x 64: blocks of 16 MiB took 1.15-1.23x the products, 32 MiB
#: 1.03-1.04x (1 x 32,768: 0.81-0.91x and 0.74-0.82x).
MAX_BLOCK_BYTES = 32 << 20

_lock = threading.Lock()
_state: dict[str, Any] = {}


def available() -> bool:
    """Numba imports and compiles (or loads from its cache) the row passes, and ATTNCLI_KERNEL is not
    "torch". Found once per process; `why_not()` says what failed."""
    return why_not() is None


def why_not() -> str | None:
    """None when the kernel can run; else why runs take the torch path, in a few words."""
    with _lock:
        if "why_not" not in _state:
            _state["why_not"] = _load()
        reason: str | None = _state["why_not"]
        return reason


def _load() -> str | None:
    if os.environ.get(ENV, "").strip().lower() == "torch":
        return f"{ENV}=torch"
    try:
        _numba_rows = importlib.import_module("attncli.compute._numba_rows")
    except Exception as error:  # ImportError, or a Numba that fails on this platform
        return f"numba did not import ({type(error).__name__}: {str(error)[:80]})"
    _state["rows"] = _numba_rows.summarise_rows
    return None


def path_name() -> str:
    """The kernel a run in blocks takes when it may (`fits`): "numba", or "torch (why)"."""
    reason = why_not()
    return "numba" if reason is None else f"torch ({reason})"


def fits(problem: Prepared) -> bool:
    """The kernel computes `problem`, and faster than the torch path: Numba is there, at least
    MIN_WEIGHTS_TO_LOAD weights unless the kernel has run in this process already (its load is paid),
    on the CPU, float32, keys and query rows, scores
    that cannot overflow and no NaN or infinity in the inputs (the kernel assumes none: its
    maxima are vectorised without NaN tests), a float mask's entries either -inf or finite and far
    from float32's lowest (so that a score plus the mask never reaches -inf unless masked)."""
    p = problem
    if p.query.device.type != "cpu" or p.query.dtype != torch.float32 or p.may_overflow:
        return False
    if 0 in p.weights_shape[-2:]:
        return False
    if not _state.get("ran") and math.prod(p.weights_shape) < MIN_WEIGHTS_TO_LOAD:
        return False  # not worth loading Numba for
    if p.query.requires_grad or p.key.requires_grad or p.value.requires_grad:
        return False
    # A finite sum has no NaN or infinity among its terms (finite ones that overflow it send the
    # run to the torch path, which is safe): one pass, no (Lq x D) temporary of flags.
    if not all(bool(torch.isfinite(x.sum())) for x in (p.query, p.key, p.value)):
        return False
    if p.mask is not None and p.mask.is_floating_point():
        finite = torch.isfinite(p.mask)
        if bool((~finite & (p.mask != -math.inf)).any()):  # NaN or +inf
            return False
        if bool((finite & (p.mask < -1e30)).any()):
            return False
    return available()


def block_rows_for(problem: Prepared, rows: int, overhead: int) -> int:
    """Query rows per fused block of a run asked to go `rows` at a time, where a block of the torch
    path may take `overhead` times its scores (the temporaries of statistics and picture): that
    memory shared among the pool's threads, each holding one block's scores and as much again for
    the rest (the kernel makes no weights and no temporaries of their size), up to MAX_BLOCK_BYTES a
    block; at least 1 row, at most every row."""
    *lead, lq, lk = problem.weights_shape
    row_bytes = max(1, math.prod(lead) * lk * 4)  # float32 scores
    threads = max(1, torch.get_num_threads())
    budget = rows * row_bytes * overhead // (2 * threads)
    return max(1, min(lq, budget // row_bytes, MAX_BLOCK_BYTES // row_bytes))


def fused_blocks(problem: Prepared, block_rows: int, cell_keys: int | None = None) -> Iterator[Block]:
    """The blocks of `block_rows` query rows of `problem` (which `fits`), in order, each with its output,
    fully masked rows, masked keys and a `RowSummary` (statistics; the picture's cells of `cell_keys`
    keys, default CELL_KEYS) in place of weights: its `weights` is empty (..., n, 0).

    With torch on several threads and several blocks, each block is computed whole (product, row
    passes, product) by one of as many threads of a pool, each running torch on one thread: the
    blocks run side by side instead of each step's work being split among threads (torch's
    OpenMP workers, spinning while they wait after each product, slowed the row passes between them by half
    on a 2-core machine). At most one block more than threads is computed ahead of the one given."""
    summarise = _state["rows"]
    p = problem
    lq = p.weights_shape[-2]
    keys_per_cell = CELL_KEYS if cell_keys is None else cell_keys
    starts = range(0, lq, block_rows)
    workers = max(1, torch.get_num_threads())
    local = threading.local()  # each thread's scores buffer for this run

    def compute(start: int) -> Block:
        buffer = getattr(local, "buffer", None)
        if buffer is None:
            # The scores of the largest block, made once per thread (huge pages where the platform
            # has them), reused by each of its blocks.
            size = math.prod(p.weights_shape[:-2]) * min(block_rows, lq) * p.weights_shape[-1]
            buffer = local.buffer = buffers.empty((size,), torch.float32, p.query.device)
        return _fused_block(p, summarise, buffer, start, min(start + block_rows, lq), keys_per_cell)

    if workers == 1 or len(starts) == 1:  # torch on one thread, or one block: in the calling thread
        for start in starts:
            yield compute(start)
        return
    pool = _pool(workers)
    pending: collections.deque[Future[Block]] = collections.deque()
    # This thread's torch work between blocks (the sinks') on one thread too: a team of threads
    # would wait for cores the pool's threads hold (measured: the picture's pooling 0.1 -> 4 s).
    torch.set_num_threads(1)
    try:
        for start in starts:
            pending.append(pool.submit(compute, start))
            if len(pending) > workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:  # stopped early (an error, Ctrl-C, a caller that gave up): no more blocks are started
        for future in pending:
            future.cancel()
        torch.set_num_threads(workers)


def _fused_block(
    p: Prepared, summarise: Any, buffer: torch.Tensor, start: int, stop: int, cell_keys: int
) -> Block:
    """Query rows [start, stop) of `p`: their scores made in `buffer`, the row passes, the output."""
    lead = p.weights_shape[:-2]
    n = stop - start
    mask = p.mask
    block_mask = mask_rows(mask, start, stop)
    # the keys a causal block can see, the heads grouped under their key/value head: as the torch path
    q, k, v, block_mask, weights_shape = block_operands(
        p, p.query[..., start:stop, :], p.key, p.value, block_mask, start
    )
    width = weights_shape[-1]
    scores = block_scores(p, q, k, weights_shape, lambda shape: buffer[: math.prod(shape)].view(shape))
    apply_mask(scores, block_mask)
    summary, z = _summarise(summarise, scores, start, n, p.causal, mask is not None, cell_keys)
    if p.group > 1:
        # (..., Hkv, G, n, W) @ (..., Hkv, 1, W, Dv) -> (..., Hkv, G, n, Dv) -> (..., Hq, n, Dv)
        grouped = scores.reshape(*scores.shape[:-3], k.shape[-4], p.group, n, width)
        output = torch.matmul(grouped, v).flatten(-4, -3)
    else:
        output = torch.matmul(scores, v)  # (..., n, W) @ (..., W, Dv) -> (..., n, Dv)
    output.mul_(z.unsqueeze(-1))  # E @ V / Z; 0 where every key is masked
    blocked = None
    masked_rows = None
    if mask is not None:
        blocked = blocked_keys(block_mask, p.causal, n, width, start, device=scores.device)
        masked_rows = summary.stats.argmax < 0  # (..., n)
    elif p.causal:
        blocked = causal_hidden(n, width, start, scores.device)
    return Block(
        start=start,
        stop=stop,
        weights=scores.new_empty((*lead, n, 0)),
        output=output,
        masked_rows=masked_rows,
        blocked=blocked,
        summary=summary,
    )


def _summarise(
    summarise: Any,
    scores: torch.Tensor,
    first_row: int,
    n: int,
    causal: bool,
    masked: bool,
    cell_keys: int,
) -> tuple[RowSummary, torch.Tensor]:
    """The row passes over every row of `scores` (..., n, W), in the calling thread (Numba releases
    the GIL); the summary, and 1 / Z per row (0 where every key is masked), (..., n)."""
    *lead, _, width = scores.shape
    flat = scores.numpy().reshape(-1, width)  # (..., n, W) -> (rows, W), a view
    rows = flat.shape[0]
    cells = max(1, math.ceil(width / cell_keys))
    query_of_row = np.arange(rows, dtype=np.int64) % n + first_row
    largest = np.empty(rows, np.float32)
    smallest = np.empty(rows, np.float32)
    argmax = np.full(rows, -1, np.int64)
    open_keys = np.empty(rows, np.int64)
    sink_open = np.empty(rows, np.bool_)
    totals = np.empty((rows, 4), np.float64)
    cell_largest = np.empty((rows, cells), np.float32)
    cell_sums = np.empty((rows, cells), np.float64)
    cell_open = np.empty((rows, cells), np.int64)
    summarise(
        flat,
        0,
        rows,
        query_of_row,
        causal,
        masked,
        cell_keys,
        largest,
        smallest,
        argmax,
        open_keys,
        sink_open,
        totals,
        cell_largest,
        cell_sums,
        cell_open,
    )
    _state["ran"] = True  # Numba is loaded: smaller runs take the kernel too
    live = largest > -np.inf
    z = totals[:, 0]
    with np.errstate(divide="ignore", invalid="ignore"):
        inverse = np.where(live, 1.0 / z, 0.0)  # (rows,) float64
        entropy = np.where(live, np.log(z) - totals[:, 1] * inverse, np.nan)
        spread = np.log(open_keys.astype(np.float64))
        normalised = np.where(open_keys >= 2, entropy / spread, np.nan)
        sink = np.where(sink_open, flat[:, 0] * inverse, np.nan)
        distance = np.where(live, totals[:, 2] * inverse, np.nan)
        max_weight = np.where(live, inverse, np.nan)
        # the smallest open weight of each row (inf where none is open), as the torch path's float32
        # weights hold it: exp below float32's range is 0
        row_smallest = np.where(live, np.exp(smallest.astype(np.float64) - largest) * inverse, np.inf)
    shape = (*lead, n)

    def field(values: np.ndarray, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return torch.from_numpy(values).to(dtype).reshape(shape)

    stats = RowStats(
        entropy=field(entropy),
        entropy_normalised=field(normalised),
        max_weight=field(max_weight),
        argmax=field(argmax, torch.int64),
        sink=field(sink),
        distance=field(distance),
    )
    cell_shape = (*lead, n, cells)
    summary = RowSummary(
        stats=stats,
        keys=width,
        smallest=field(row_smallest),
        row_sums=torch.from_numpy(totals[:, 3]).reshape(shape),
        cell_keys=cell_keys,
        cell_largest=torch.from_numpy(cell_largest).reshape(cell_shape),
        cell_sums=torch.from_numpy(cell_sums).reshape(cell_shape),
        cell_open=torch.from_numpy(cell_open).reshape(cell_shape),
    )
    return summary, torch.from_numpy(inverse.astype(np.float32)).reshape(shape)


def _pool(workers: int) -> ThreadPoolExecutor:
    """One pool of `workers` threads for the process, each running torch on one thread: a new one when
    the count changes, or in a child forked from the process that made it (a fork copies no thread,
    and the old pool would wait for its threads forever)."""
    with _lock:
        pool: ThreadPoolExecutor | None = _state.get("pool")
        if pool is None or _state.get("pool_of") != (workers, os.getpid()):
            if pool is not None and _state.get("pool_of", (0, 0))[1] == os.getpid():
                pool.shutdown(wait=False)
            pool = ThreadPoolExecutor(workers, thread_name_prefix="attncli-kernel", initializer=_one_thread)
            # Every thread started (and set to one torch thread) before the count is put back below.
            started = threading.Barrier(workers + 1)
            for _ in range(workers):
                pool.submit(started.wait)
            started.wait()
            # torch.set_num_threads is per thread (OpenMP's and MKL's counts) but also sets the count
            # threads started later take: put back as it was (this thread's own count, `workers`).
            torch.set_num_threads(workers)
            _state["pool"], _state["pool_of"] = pool, (workers, os.getpid())
        return pool


def _one_thread() -> None:
    """A pool thread's set-up: torch on this thread alone (its first call sets the thread up with the
    process's count, which would undo a count set before it)."""
    torch.get_num_threads()
    torch.set_num_threads(1)
