"""Consumers of computed blocks: each takes every block of a run (`add`) and gives one result.

A run feeds each block to the sinks its request needs, in order: the output rows and fully masked
rows, the full weights, the per-row statistics, the rows' head-score figures, top-k, a pooled
picture, the cells a table shows, and files the weights are written to block by block. A view or
statistic is written once, here, whatever the number of blocks, and for both kernels: a block holds
torch tensors or NumPy arrays (`attncli.arrays` for what the two spell differently; torch is imported
only for tensors). No printing.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import numpy.typing as npt

from attncli import arrays
from attncli.analysis import PATTERN_NAMES
from attncli.analysis import rows as analysis
from attncli.analysis.rows import RowStats
from attncli.arrays import Array
from attncli.compute.blocks import Block
from attncli.compute.result import KeptTable, as_array
from attncli.compute.summary import RowSummary

if TYPE_CHECKING:
    import torch

_FloatArray = npt.NDArray[np.float32]
_STAT_FIELDS = ("entropy", "entropy_normalised", "max_weight", "argmax", "sink", "distance")


class Sink(Protocol):
    """A consumer of a run's blocks, fed each in order."""

    def add(self, block: Block) -> None: ...


class _Rows:
    """One tensor of every query row, filled block by block along the query axis (`axis`, counted
    from the end). A block that holds every row is taken as it is, without a copy. `shape` (else
    the first block's, with every row) may be wider after the query axis than a block (a causal
    block's top-k): the rest keeps `fill` (None: left empty, every place is written)."""

    def __init__(
        self, rows: int, axis: int, shape: tuple[int, ...] | None = None, fill: float | None = None
    ) -> None:
        self.rows, self.axis, self.shape, self.fill = rows, axis, shape, fill
        self.tensor: Array | None = None

    def put(self, part: Array, start: int, stop: int) -> None:
        if self.tensor is None:
            shape = list(part.shape) if self.shape is None else list(self.shape)
            shape[self.axis] = self.rows
            if start == 0 and stop == self.rows and list(part.shape) == shape:
                self.tensor = part
                return
            if self.fill is None:
                self.tensor = arrays.empty(part, tuple(shape))
            else:
                self.tensor = arrays.full(part, tuple(shape), self.fill)
        place = [slice(0, size) for size in part.shape]
        place[self.axis] = slice(start, stop)
        self.tensor[tuple(place)] = part


class OutputSink:
    """The output rows (heads apart; value's batch axes may add to the weights') and the fully
    masked rows (with a mask) of every block."""

    def __init__(self, weights_shape: tuple[int, ...], masked: bool) -> None:
        rows = weights_shape[-2]
        self.output = _Rows(rows, axis=-2)
        self.masked_rows = _Rows(rows, axis=-1) if masked else None

    def add(self, block: Block) -> None:
        self.output.put(block.output, block.start, block.stop)
        if self.masked_rows is not None and block.masked_rows is not None:
            self.masked_rows.put(block.masked_rows, block.start, block.stop)


def full_width(block: Block, keys: int) -> Array:
    """A block's weights over every key: the keys a causal block left out have weight 0."""
    weights = block.weights
    if weights.shape[-1] < keys:
        weights = arrays.pad_last(weights, keys)
    return weights


class WeightsSink:
    """The full weights (..., Lq, Lk): a one-block run's own buffer, else the blocks copied in."""

    def __init__(self, weights_shape: tuple[int, ...]) -> None:
        self.keys = weights_shape[-1]
        self.weights = _Rows(weights_shape[-2], axis=-2, shape=weights_shape)

    def add(self, block: Block) -> None:
        self.weights.put(full_width(block, self.keys), block.start, block.stop)


class EntropySink:
    """The entropy of every row alone (a title's figure when no other statistic is asked for):
    `analysis.rows.row_entropy` of each block's weights."""

    def __init__(self, weights_shape: tuple[int, ...]) -> None:
        self.entropy = _Rows(weights_shape[-2], axis=-1)

    def add(self, block: Block) -> None:
        if block.summary is not None:  # the fused kernel's block: its entropy comes computed
            self.entropy.put(block.summary.stats.entropy, block.start, block.stop)
            return
        self.entropy.put(analysis.row_entropy(block.weights, block.blocked), block.start, block.stop)


class StatsSink:
    """`analysis.row_stats` of every row, from each block's weights and, where the block kept them,
    its shifted scores (the entropy then costs one product per weight instead of a logarithm): the
    same function on the same numbers whatever the block size."""

    def __init__(self, weights_shape: tuple[int, ...]) -> None:
        self.fields = [_Rows(weights_shape[-2], axis=-1) for _ in _STAT_FIELDS]

    def add(self, block: Block) -> None:
        if block.summary is not None:  # the fused kernel's block: its statistics come computed
            self.put(block.summary.stats, block.start, block.stop)
            return
        stats = analysis.row_stats(
            block.weights,
            block.blocked,
            row_offset=block.start,
            shifted_scores=block.scores,
            zero_where_blocked=True,
            overwrite_scores=True,  # the block's scores are not needed after
            non_negative=True,
        )
        self.put(stats, block.start, block.stop)

    def put(self, stats: RowStats, start: int, stop: int) -> None:
        for field, name in zip(self.fields, _STAT_FIELDS, strict=True):
            field.put(getattr(stats, name), start, stop)

    def result(self) -> RowStats | None:
        tensors = [field.tensor for field in self.fields if field.tensor is not None]
        return RowStats(*tensors) if len(tensors) == len(self.fields) else None


class PatternSink:
    """`analysis.heads.pattern_rows` of every row: self, previous and, with token ids, duplicate and
    induction, each (..., Lq), NaN where a row has no such figure."""

    def __init__(
        self,
        weights_shape: tuple[int, ...],
        token_ids: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> None:
        self.queries, self.keys = weights_shape[-2:]
        self.token_ids = token_ids
        names = PATTERN_NAMES if token_ids is not None else PATTERN_NAMES[:2]
        self.fields = {name: _Rows(self.queries, axis=-1) for name in names}

    def add(self, block: Block) -> None:
        from attncli.analysis.heads import pattern_rows

        weights = full_width(block, self.keys)
        blocked = block.blocked
        if blocked is not None and 1 < blocked.shape[-1] < self.keys:  # a causal block's keys
            blocked = arrays.pad_last(blocked, self.keys, value=True)
        query_ids, key_ids = self.token_ids if self.token_ids is not None else (None, None)
        rows = pattern_rows(
            weights,
            blocked,
            row_offset=block.start,
            queries=self.queries,
            query_ids=query_ids,
            key_ids=key_ids,
        )
        for name, field in self.fields.items():
            field.put(rows[name], block.start, block.stop)

    def result(self) -> dict[str, torch.Tensor]:
        return {name: field.tensor for name, field in self.fields.items() if field.tensor is not None}


class TopKSink:
    """`analysis.top_k` of every row: values (..., Lq, k) and int64 keys, NaN and -1 past the open
    keys (a causal block has fewer keys to give)."""

    def __init__(self, weights_shape: tuple[int, ...], k: int) -> None:
        if k < 1:
            raise ValueError(f"top_k must be at least 1, not {k}")
        *lead, rows, keys = weights_shape
        self.k = k
        shape = (*lead, rows, min(k, keys))
        self.values = _Rows(rows, axis=-2, shape=shape, fill=math.nan)
        self.keys = _Rows(rows, axis=-2, shape=shape, fill=-1)

    def add(self, block: Block) -> None:
        values, keys = analysis.top_k(block.weights, self.k, block.blocked)
        self.values.put(values, block.start, block.stop)
        self.keys.put(keys, block.start, block.stop)

    def result(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        if self.values.tensor is None or self.keys.tensor is None:
            return None
        return self.values.tensor, self.keys.tensor


class RowsFile(Protocol):
    """A file the weights go into row block by row block (`writers.ResultFile`, `writers.WeightsFile`)."""

    def write_rows(self, start: int, weights: np.ndarray) -> None: ...


class FileSink:
    """The weights of each block, over every key, written to files that take row blocks
    (`writers.ResultFile`, `writers.WeightsFile`): bfloat16 widened to float32, as NumPy lacks it."""

    def __init__(self, files: Sequence[RowsFile], keys: int) -> None:
        self.files, self.keys = list(files), keys

    def add(self, block: Block) -> None:
        weights = as_array(full_width(block, self.keys))
        for file in self.files:
            file.write_rows(block.start, weights)


class PictureSink:
    """Max and mean of (rows, keys) blocks of each matrix, masked weights left out, built row block
    by row block: the columns pooled first within a block, then added to the picture's rows.
    `device` "numpy" keeps the picture in NumPy (the NumPy kernel's blocks), else in torch on it."""

    def __init__(self, weights_shape: tuple[int, ...], size: tuple[int, int], device: Any) -> None:
        *lead, lq, lk = weights_shape
        rows, cols = size
        self.block_rows = max(1, math.ceil(lq / rows))  # the smallest blocks that fit, as heatmap's
        self.block_cols = max(1, math.ceil(lk / cols))
        self.blocks = (self.block_rows, self.block_cols)
        grid = (*lead, math.ceil(lq / self.block_rows), math.ceil(lk / self.block_cols))
        self.numpy = isinstance(device, str) and device == "numpy"
        if self.numpy:
            self.largest: Array = np.full(grid, -math.inf, dtype=np.float32)
            self.sums: Array = np.zeros(grid, dtype=np.float64)
            self.counts: Array = np.zeros(grid, dtype=np.int64)
            return
        import torch

        self.largest = torch.full(grid, -math.inf, dtype=torch.float32, device=device)
        self.sums = torch.zeros(grid, dtype=torch.float64, device=device)
        self.counts = torch.zeros(grid, dtype=torch.int64, device=device)

    def add(self, block: Block) -> None:
        summary = block.summary
        if summary is None:
            self.pool(block.start, block.weights, block.blocked)
            return
        # The fused kernel's block: its cells' maxima, sums and open keys come computed.
        if summary.cell_keys != self.block_cols:
            raise ValueError(f"a block pooled by {summary.cell_keys} keys, the picture by {self.block_cols}")
        self._add_cells(block.start, summary.cell_largest, summary.cell_sums, summary.cell_open)

    def pool(self, start: int, weights: Array, blocked: Array | None) -> None:
        """Pool weights (..., n, W) of query rows start.. into the picture (W <= Lk: the keys past W
        are masked, as causal leaves them out of a block). The weights are 0 at every blocked key
        (softmax gives exp(-inf) = 0, and fully masked rows are zeroed), so they pool as they are:
        `blocked` only decides how many weights each cell's mean divides by."""
        width = weights.shape[-1]
        columns = math.ceil(width / self.block_cols)  # the picture's columns these keys reach
        if columns == 0:
            return  # no keys: nothing to pool
        if self.numpy:
            self._pool_numpy(start, weights, blocked, columns)
            return
        import torch

        values = weights.to(torch.float64 if weights.dtype == torch.float64 else torch.float32)
        # (..., n, W) -> (..., n, c), then each row added to its picture row
        row_largest = self._columns(values, analysis.amax_non_negative).float()  # weights are >= 0
        if blocked is None:
            open_count = torch.full((columns,), self.block_cols, device=weights.device)
            open_count[-1] = width - self.block_cols * (columns - 1)
        else:
            # counted on the blocked keys' own shape (a causal triangle is (n, W)), then broadcast
            open_count = self._columns(~blocked, analysis.count_true)
        sums = self._columns(values, torch.sum).double()
        self._add_cells(start, row_largest, sums, open_count.expand(*weights.shape[:-1], columns))

    def _add_cells(self, start: int, largest: torch.Tensor, sums: torch.Tensor, counts: torch.Tensor) -> None:
        """Each row's cells (..., n, c) of query rows start.. added to the picture's rows: the largest
        weight (float32), the sum of weights (float64) and the open keys (int64) of each."""
        import torch

        n, columns = largest.shape[-2:]
        row_of = torch.arange(start, start + n, device=largest.device) // self.block_rows
        spread = row_of.view(-1, 1).expand(largest.shape)  # (..., n, c): each row's picture row
        self.largest[..., :columns].scatter_reduce_(-2, spread, largest, reduce="amax")
        self.sums[..., :columns].index_add_(-2, row_of, sums)
        self.counts[..., :columns].index_add_(-2, row_of, counts)

    def _pool_numpy(self, start: int, weights: np.ndarray, blocked: np.ndarray | None, columns: int) -> None:
        """`pool` of NumPy weights: the rows of one picture row are consecutive, so each picture
        row's figures are reductions over a run of rows (reduceat), merged into what it holds."""
        n, width = weights.shape[-2:]
        values = weights.astype(np.float64 if weights.dtype == np.float64 else np.float32, copy=False)
        rows = np.arange(start, start + n) // self.block_rows  # (n,): each row's picture row
        firsts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])  # where each run of rows starts
        shown = rows[firsts]  # the picture rows these rows reach, ascending

        def total(x: np.ndarray, dim: int, keepdim: bool = False) -> np.ndarray:
            summed: np.ndarray = np.sum(x, axis=dim, keepdims=keepdim)
            return summed

        # (..., n, W) -> (..., n, c) -> (..., r, c): keys pooled, then runs of rows
        largest = np.maximum.reduceat(self._columns(values, analysis.amax_non_negative), firsts, axis=-2)
        sums = np.add.reduceat(self._columns(values, total).astype(np.float64), firsts, axis=-2)
        if blocked is None:
            open_count = np.full(columns, self.block_cols, dtype=np.int64)
            open_count[-1] = width - self.block_cols * (columns - 1)
        else:
            open_count = self._columns(~blocked, analysis.count_true)
        counts = np.add.reduceat(np.broadcast_to(open_count, (*weights.shape[:-1], columns)), firsts, axis=-2)
        cells = (..., shown, slice(0, columns))
        self.largest[cells] = np.maximum(self.largest[cells], largest.astype(np.float32))
        self.sums[cells] += sums
        self.counts[cells] += counts

    def _columns(self, values: Array, reduce: Callable[..., Array]) -> Array:
        """Reduce each run of block_cols keys: (..., n, W) -> (..., n, c), the last run ragged."""
        lk = values.shape[-1]
        whole = lk // self.block_cols * self.block_cols
        parts = []
        if whole:
            if self.numpy:  # (..., n, whole) -> (..., n, c, block_cols)
                runs = values[..., :whole].reshape(*values.shape[:-1], -1, self.block_cols)
            else:
                runs = values[..., :whole].unfold(-1, self.block_cols, self.block_cols)
            parts.append(reduce(runs, dim=-1))
        if whole < lk:
            parts.append(reduce(values[..., whole:], dim=-1, keepdim=True))
        return parts[0] if len(parts) == 1 else arrays.concat(parts, axis=-1)

    def arrays(self) -> tuple[_FloatArray, _FloatArray]:
        """(max, mean), float32 NumPy arrays, NaN where every weight of a cell was masked."""
        empty = self.counts == 0
        if self.numpy:
            largest = np.where(empty, np.float32(math.nan), self.largest)
            with np.errstate(invalid="ignore"):
                mean = np.where(empty, math.nan, self.sums / np.maximum(self.counts, 1)).astype(np.float32)
            return largest, mean
        largest = self.largest.masked_fill(empty, math.nan)
        mean = (self.sums / self.counts.clamp(min=1)).masked_fill(empty, math.nan).float()
        return largest.cpu().numpy(), mean.cpu().numpy()


class TableSink:
    """`KeptTable`: the cells and figures a table of the weights shows, kept from each block (its
    arrays made like the first block's: NumPy or torch, on its device)."""

    def __init__(
        self,
        weights_shape: tuple[int, ...],
        rows: list[int],
        cols: list[int],
        dtype: Any,
        device: Any = None,
    ) -> None:
        *lead_list, lq, lk = weights_shape
        if any(not 0 <= i < lq for i in rows) or any(not 0 <= j < lk for j in cols):
            raise ValueError(f"table rows and columns must lie in the weights' {lq} x {lk}")
        self.lead = tuple(lead_list)
        self.rows, self.cols, self.keys = list(rows), list(cols), lk
        self.dtype = dtype
        self.any_blocked = False
        self.made = False

    def _make(self, like: Array) -> None:
        lead, rows, cols = self.lead, len(self.rows), len(self.cols)
        float64, flag = arrays.dtype_of(like, "float64"), arrays.dtype_of(like, "bool")
        self.columns = arrays.index(like, self.cols)
        self.cells = arrays.full(like, (*lead, rows, cols), 0, dtype=self.dtype)
        self.row_max = arrays.full(like, (*lead, rows), 0, dtype=self.dtype)
        self.blocked = arrays.full(like, (*lead, rows, cols), False, dtype=flag)
        self.minimum = arrays.full(like, lead, math.inf, dtype=float64)
        self.maximum = arrays.full(like, lead, -math.inf, dtype=float64)
        self.deviation = arrays.full(like, lead, 0, dtype=float64)
        self.live = arrays.full(like, lead, False, dtype=flag)
        self.made = True

    def add(self, block: Block) -> None:
        if block.summary is not None:
            self.keep_figures(block.summary, block.blocked, block.masked_rows)
            return
        self.keep(block.start, block.weights, block.blocked, block.masked_rows)

    @property
    def figures_only(self) -> bool:
        """No cell is kept, only the figures of a title (a heatmap's): what a fused block gives."""
        return not self.rows and not self.cols

    def keep_figures(
        self, summary: RowSummary, blocked: torch.Tensor | None, masked_rows: torch.Tensor | None
    ) -> None:
        """The title's figures from a fused kernel's block (`figures_only` tables): the largest and
        smallest weight over open keys, the largest |row sum - 1| and which matrices have an open key,
        as `keep` finds them in weights."""
        if not self.figures_only:
            raise ValueError("a fused block holds no weights: a table of cells needs the torch path")
        import torch

        if not self.made:
            self._make(summary.smallest)  # the fused kernel's tensors: torch, on the CPU
        n = summary.smallest.shape[-1]
        if not n or not summary.keys:
            return
        if not self.any_blocked:
            self.any_blocked = summary.keys < self.keys or (blocked is not None and bool(blocked.any()))
        largest = summary.stats.max_weight.nan_to_num(0.0)  # a row with no open key: weights 0
        self.maximum = torch.maximum(self.maximum, largest.amax(dim=-1).double())
        self.minimum = torch.minimum(self.minimum, summary.smallest.amin(dim=-1).double())
        off = (summary.row_sums - 1).abs()  # (..., n)
        live = None if masked_rows is None else ~masked_rows
        if live is not None:
            off = off.masked_fill(~live, 0.0)
        self.deviation = torch.maximum(self.deviation, off.amax(dim=-1))
        if live is None:
            self.live.fill_(True)
        else:
            self.live |= live.any(dim=-1)

    def keep(
        self,
        start: int,
        weights: Array,
        blocked: Array | None,
        masked_rows: Array | None,
    ) -> None:
        """Weights (..., n, W) of query rows start.. (W <= Lk: keys past W are masked), 0 at every
        `blocked` key (bool, broadcastable; None if none); `masked_rows` (..., n): rows with no open
        key (None: every row has one)."""
        if not self.made:
            self._make(weights)
        n, lk = weights.shape[-2:]
        if not n or not lk:
            return
        here = [(k, i - start) for k, i in enumerate(self.rows) if start <= i < start + n]
        if here:
            kept = arrays.index(weights, [k for k, _ in here])
            local = arrays.index(weights, [i for _, i in here])
            picked = arrays.take(weights, local, -2)  # (..., h, W)
            # Columns past the block's keys (left out under causal) are masked, weight 0.
            inside = self.columns < lk
            columns = arrays.minimum(self.columns, arrays.full(self.columns, (), lk - 1))
            cells = arrays.masked_fill(arrays.take(picked, columns, -1), ~inside, 0)
            arrays.put(self.cells, -2, kept, cells)
            arrays.put(self.row_max, -1, kept, analysis.amax_non_negative(picked, dim=-1))
            if blocked is not None or not bool(inside.all()):
                shut = arrays.full(picked, tuple(picked.shape), False, dtype=arrays.dtype_of(picked, "bool"))
                if blocked is not None:
                    shut |= arrays.take(arrays.expand(blocked, tuple(weights.shape)), local, -2)
                arrays.put(self.blocked, -2, kept, arrays.take(shut, columns, -1) | ~inside)
        if not self.any_blocked:
            self.any_blocked = lk < self.keys or (blocked is not None and bool(blocked.any()))
        # Masked weights are 0: the largest weight is over every key; the smallest, over open ones.
        float64 = arrays.dtype_of(weights, "float64")
        largest = analysis.amax_non_negative(weights, dim=(-2, -1))
        self.maximum = arrays.maximum(self.maximum, arrays.astype(largest, float64))
        open_weights = weights if blocked is None else arrays.masked_fill(weights, blocked, math.inf)
        smallest = arrays.amin(open_weights, axis=(-2, -1))
        self.minimum = arrays.minimum(self.minimum, arrays.astype(smallest, float64))
        off = abs(_row_sums(weights) - 1)  # (..., n)
        live = None if masked_rows is None else ~masked_rows
        if live is not None:
            off = arrays.masked_fill(off, ~live, 0.0)
        self.deviation = arrays.maximum(self.deviation, arrays.amax(off, axis=-1))
        if live is None:
            self.live[...] = True
        else:
            self.live |= arrays.any_of(live, axis=-1)

    def kept(self) -> KeptTable:
        array = as_array
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


def _row_sums(weights: Array) -> Array:
    """Float64 sums of the rows of `weights` (..., Lk), from sums of 64 keys in float32 (float64 for
    float64 weights): within about 1e-8 of the exact sum, ten times faster than converting every
    weight to float64 first."""
    if arrays.is_float64(weights):
        return arrays.total(weights, axis=-1)
    float32, float64 = arrays.dtype_of(weights, "float32"), arrays.dtype_of(weights, "float64")
    lk = weights.shape[-1]
    whole = lk // 64 * 64
    sums = arrays.full(weights, tuple(weights.shape[:-1]), 0, dtype=float64)
    if whole:
        chunks = arrays.total(
            weights[..., :whole].reshape(*weights.shape[:-1], whole // 64, 64), axis=-1, dtype=float32
        )
        sums += arrays.total(chunks, axis=-1, dtype=float64)
    if whole < lk:
        sums += arrays.total(weights[..., whole:], axis=-1, dtype=float64)
    return sums
