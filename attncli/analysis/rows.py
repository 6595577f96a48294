"""Numbers about attention weights: per query row entropy, largest weight, sink and distance; top-k keys.

Plain functions over torch tensors or NumPy arrays (the NumPy kernel's; `attncli.arrays` where the
two differ, torch imported only for tensors). They run on the weights' own device, with no copies to
the host (`stats_arrays` aside, which is for writing files), and in blocks of rows, so that the
memory they need beyond the weights stays that of one block. No I/O, no printing.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from attncli import arrays
from attncli.analysis import MEAN_NAMES, STAT_NAMES
from attncli.arrays import Array

if TYPE_CHECKING:
    import torch

__all__ = [
    "MEAN_NAMES",
    "STAT_NAMES",
    "MaskedWeights",
    "RowStats",
    "amax_non_negative",
    "matrix_means",
    "row_stats",
    "stats_arrays",
    "top_k",
]

#: Rows x keys in one block: bounds the temporaries, whatever the size of the weights.
_BLOCK_ELEMENTS = 1 << 22


@runtime_checkable
class MaskedWeights(Protocol):
    """What the functions here take in place of weights: a `compute.AttentionResult`, whose mask
    and causal flag say which keys were masked (named by shape, so that analysis/ needs no compute/)."""

    @property
    def weights(self) -> Array | None: ...

    def masked_keys(self) -> np.ndarray | None: ...


def weights_and_blocked(weights: Array | MaskedWeights, blocked: Array | None) -> tuple[Array, Array | None]:
    """The weights and masked keys of `weights`: a tensor (or NumPy array) and `blocked` as given, or
    a result's kept weights and the keys its mask and causal triangle hid (then `blocked` must be None)."""
    if arrays.is_tensor(weights) or arrays.is_numpy(weights):
        return weights, blocked
    if not isinstance(weights, MaskedWeights):
        given = type(weights).__name__
        raise TypeError(f"weights must be a torch tensor, a NumPy array or an AttentionResult, not {given}")
    if blocked is not None:
        raise ValueError("a result's masked keys come from its mask and causal flag: give no blocked with it")
    if weights.weights is None:
        raise ValueError(
            "the result kept no weights (it was computed in blocks): compute it with attention(), or ask "
            "the run for stats=True / top_k=K"
        )
    return weights.weights, weights.masked_keys()


@dataclass(frozen=True)
class RowStats:
    """Statistics of each query row; every field has shape (..., Lq), the weights' shape less the keys.

    NaN (-1 for `argmax`) marks a row where the statistic has no value: every key masked, or, for
    `entropy_normalised`, fewer than two keys open, or, for `sink`, key 0 masked.
    """

    entropy: Array  # -sum_j w_ij log w_ij, in nats, with 0 log 0 = 0
    entropy_normalised: Array  # entropy / log(open keys): 0 = one key, 1 = uniform over the open keys
    max_weight: Array
    argmax: Array  # int64 key of max_weight, the lowest on ties
    sink: Array  # weight on key 0
    distance: Array  # mean attention distance sum_j w_ij |i - j|


def row_stats(
    weights: Array | MaskedWeights,
    blocked: Array | None = None,
    *,
    row_offset: int = 0,
    shifted_scores: Array | None = None,
    zero_where_blocked: bool = False,
    overwrite_scores: bool = False,
    non_negative: bool = False,
) -> RowStats:
    """Per query row of `weights` (..., Lq, Lk): entropy, normalised entropy, largest weight and its
    key, weight on key 0 and mean distance from the query to the keys it attends to.

    `weights` may be an `AttentionResult` (with its weights kept, as `attention` keeps them): its
    mask and causal flag are the blocked keys, so the figures are those `attn compute --stats` gives.
    `blocked` (bool, True = masked, broadcastable to the weights, a tensor or a NumPy array) says
    which keys each query could not see: they count neither as keys nor as weight (a weight there
    is taken as 0). Computed in float64 for float64 weights, else float32, and returned so.
    `row_offset` is the query index of the first row (the weights being a block of a larger
    matrix's rows); only the distance uses it. `shifted_scores`, when the weights are their
    softmax (as a `compute.blocks.Block` holds both: finite, each row's largest 0), makes
    the entropy cost one product instead of a logarithm per weight: log w = shifted score -
    log(sum of exp) = shifted score + log(largest weight), since the largest weight is exp(0) / sum.
    `zero_where_blocked` says the weights are already 0 at every blocked key (softmax gives that),
    which spares a masked copy of every block. `overwrite_scores` lets the entropy's product be
    made in the shifted scores' own memory (they are left holding it): no temporary of their size.
    `non_negative` says no weight is below 0 (a softmax's), which finds the largest faster.
    """
    weights, blocked = weights_and_blocked(weights, blocked)
    compute_dtype = _compute_dtype(weights)
    blocked_keys = _blocked_view(blocked, weights)
    if shifted_scores is not None and tuple(shifted_scores.shape) != tuple(weights.shape):
        raise ValueError(
            f"shifted_scores {tuple(shifted_scores.shape)} must have the weights' shape "
            f"{tuple(weights.shape)}"
        )
    *lead, lq, lk = weights.shape
    rows = math.prod(lead) * lq
    floats = [arrays.full(weights, (rows,), math.nan, dtype=compute_dtype) for _ in range(5)]
    entropy, entropy_normalised, max_weight, sink, distance = floats
    argmax = arrays.full(weights, (rows,), -1, dtype=arrays.int64(weights))
    keys = arrays.arange(weights, lk)
    open_counts = sink_opens = None
    if blocked_keys is not None and lk:
        # Counted on the blocked keys' own shape (one causal triangle for every head), then spread
        # to every row: (..., Lq) -> (rows,)
        small = _unexpanded(blocked_keys)
        open_counts = arrays.expand(lk - count_true(small), (*lead, lq)).reshape(-1)
        sink_opens = arrays.expand(~small[..., 0], (*lead, lq)).reshape(-1)
    for span, index in _row_blocks(weights):
        block = arrays.astype(_rows(weights, span, index), compute_dtype)  # (n, Lk)
        query = index[-1] + row_offset  # (n,): the query position of each row in its matrix
        closed = None
        if blocked_keys is None or open_counts is None or sink_opens is None:
            open_count = arrays.full(query, tuple(query.shape), lk)
            sink_open = arrays.full(query, tuple(query.shape), True, dtype=arrays.bool_dtype(query))
        else:
            open_count, sink_open = open_counts[span], sink_opens[span]
            if not zero_where_blocked:
                closed = blocked_keys[index]  # (n, Lk)
                block = arrays.masked_fill(block, closed, 0.0)
        live = open_count > 0
        largest, key_of_largest = _max_and_argmax(block, non_negative)
        if blocked_keys is not None:
            # A masked key holds 0 here: it can be the largest only where no open weight is above 0.
            redo = largest <= 0
            if bool(redo.any()):
                shut = blocked_keys[tuple(axis[redo] for axis in index)] if closed is None else closed[redo]
                ranked = arrays.masked_fill(block[redo], shut, -math.inf)
                largest[redo], key_of_largest[redo] = arrays.max_and_argmax(ranked)  # the lowest key on ties
        if shifted_scores is None:
            row_entropy = _entropy_of_weights(block, non_negative)
        else:
            # -sum w log w = log(sum of exp) - sum w s, both >= 0: no cancellation.
            scores = arrays.astype(_rows(shifted_scores, span, index), compute_dtype)
            if arrays.is_numpy(scores):
                weighted = np.einsum("nk,nk->n", block, scores)
            elif overwrite_scores:
                weighted = scores.mul_(block).sum(dim=-1)
            else:
                import torch

                weighted = torch.linalg.vecdot(block, scores)
            row_entropy = (0.0 - weighted) - arrays.log(largest)
        entropy[span] = arrays.where(live, row_entropy, math.nan)
        # log(1) = 0: a row with one open key has no spread to normalise
        spread = arrays.log(arrays.astype(open_count, compute_dtype))
        with np.errstate(divide="ignore", invalid="ignore"):  # rows of one key or none: NaN below
            entropy_normalised[span] = arrays.where(open_count >= 2, row_entropy / spread, math.nan)
        max_weight[span] = arrays.where(live, largest, math.nan)
        argmax[span] = arrays.where(live, key_of_largest, -1)
        sink[span] = arrays.where(sink_open, block[:, 0], math.nan)
        lowest, highest = _query_range(span, lq, row_offset)
        distance[span] = arrays.where(live, _distance(block, query, keys, lowest, highest), math.nan)
    fields = (entropy, entropy_normalised, max_weight, argmax, sink, distance)
    return RowStats(*(field.reshape(*lead, lq) for field in fields))


def row_entropy(weights: Array, blocked: Array | None = None) -> Array:
    """`row_stats(weights, blocked).entropy` of weights that are 0 at every `blocked` key (a
    softmax's), alone: (..., Lq), NaN where every key is masked; computed from the weights the way
    `row_stats` computes it without scores, in the same precision."""
    compute_dtype = _compute_dtype(weights)
    *lead, lq, lk = weights.shape
    entropy = arrays.full(weights, (math.prod(lead) * lq,), math.nan, dtype=compute_dtype)
    blocked_keys = _blocked_view(blocked, weights)
    live_rows = None
    if blocked_keys is not None and lk:
        small = _unexpanded(blocked_keys)
        live_rows = arrays.expand(count_true(small) < lk, (*lead, lq)).reshape(-1)
    for span, index in _row_blocks(weights):
        block = arrays.astype(_rows(weights, span, index), compute_dtype)  # (n, Lk)
        row = _entropy_of_weights(block, non_negative=True)
        entropy[span] = row if live_rows is None else arrays.where(live_rows[span], row, math.nan)
    if not lk:
        entropy[...] = math.nan
    return entropy.reshape(*lead, lq)


def _entropy_of_weights(block: Array, non_negative: bool = False) -> Array:
    """-sum w log w of each row of (n, Lk), 0 log 0 = 0. With `non_negative` (no weight below 0, as
    a softmax's), log max(w, tiny) * w: the same where w >= tiny, exactly 0 where w is 0, off by less
    than tiny * 90 where w is subnormal; twice as fast as xlogy, whose log is not vectorised."""
    if arrays.is_numpy(block):
        with np.errstate(divide="ignore", invalid="ignore"):  # 0 log 0 = 0, as xlogy
            if non_negative:
                products = np.log(np.maximum(block, np.finfo(block.dtype).tiny)) * block
            else:
                products = np.where(block == 0, 0.0, block * np.log(block)).astype(block.dtype)
        return 0.0 - products.sum(axis=-1)  # 0 - 0 = +0: one key shows as 0, not -0
    import torch

    if non_negative and block.dtype in (torch.float32, torch.float64):
        tiny = torch.finfo(block.dtype).tiny
        products = block.clamp_min(tiny).log_().mul_(block)
    else:
        products = torch.xlogy(block, block)
    return 0.0 - products.sum(dim=-1)  # 0 - 0 = +0: one key shows as 0, not -0


def _rows(tensor: Array, span: slice, index: tuple[Array, ...]) -> Array:
    """The (n, Lk) rows of a block: a view of a contiguous tensor, else gathered by `index`."""
    if arrays.is_numpy(tensor):
        return tensor.reshape(-1, tensor.shape[-1])[span] if tensor.flags.c_contiguous else tensor[index]
    if tensor.is_contiguous():
        return tensor.view(-1, tensor.shape[-1])[span]
    return tensor[index]


#: Keys per chunk in `_max_and_argmax`: a row's maximum is found among chunk maxima first.
_CHUNK = 64
_SAME_SIZE_INTEGERS = {"float32": "int32", "float64": "int64"}


def amax_non_negative(values: Array, dim: int | tuple[int, ...], keepdim: bool = False) -> Array:
    """`values.amax(dim)` of values known to be >= 0 (or NaN), such as weights: found on their bit
    patterns as integers, which order non-negative floats (and NaN above them) exactly as the floats
    are ordered, and which torch reduces two to four times faster (no NaN test per element)."""
    integers = _SAME_SIZE_INTEGERS.get(arrays.dtype_name(values.dtype))
    if integers is None or not math.prod(values.shape):
        return arrays.amax(values, axis=dim, keepdims=keepdim)
    as_integers = arrays.dtype_of(values, integers)
    if arrays.is_numpy(values):
        return np.amax(values.view(as_integers), axis=dim, keepdims=keepdim).view(values.dtype)
    return values.view(as_integers).amax(dim=dim, keepdim=keepdim).view(values.dtype)


def _max_and_argmax(block: Array, non_negative: bool = False) -> tuple[Array, Array]:
    """`block.max(dim=-1)` of (n, Lk), Lk > 0: the largest value and its first key (NaN counting as
    largest, as max does), found from the maxima of chunks of keys, which a vectorised reduction
    gives several times faster than max's own search over every key (and `amax_non_negative`
    faster still, for values known to be >= 0)."""
    lk = block.shape[-1]
    if lk <= 4 * _CHUNK or arrays.is_numpy(block):  # NumPy's argmax needs no chunks
        return arrays.max_and_argmax(block)
    import torch

    amax = amax_non_negative if non_negative else torch.amax
    whole = lk // _CHUNK * _CHUNK
    chunks = amax(block[:, :whole].reshape(block.shape[0], -1, _CHUNK), dim=-1)  # (n, C); a view
    if whole < lk:
        chunks = torch.cat([chunks, amax(block[:, whole:], dim=-1, keepdim=True)], dim=-1)
    largest, chunk = chunks.max(dim=-1)  # the first chunk that holds the largest
    columns = (chunk[:, None] * _CHUNK + torch.arange(_CHUNK, device=block.device)).clamp_max(lk - 1)
    within = block.gather(-1, columns).max(dim=-1).indices  # the first in it; clamped repeats come after
    return largest, columns.gather(-1, within[:, None]).squeeze(-1)


def _query_range(span: slice, lq: int, row_offset: int) -> tuple[int, int]:
    """Lowest and highest query position among the flat rows `span` (matrices of `lq` rows each)."""
    first, last = span.start, span.stop - 1
    if first // lq == last // lq:
        return first % lq + row_offset, last % lq + row_offset
    return row_offset, lq - 1 + row_offset  # the block crosses from one matrix into the next


def _distance(block: Array, query: Array, keys: Array, lowest: int, highest: int) -> Array:
    """sum_j w_ij |i - j| for rows (n, Lk) whose query positions lie in [lowest, highest]: |i - j| in
    full only for keys in that range; outside it, |i - j| = |i - edge| + |edge - j|, whose sums are
    a row sum and a product with a vector. Every term is >= 0, so nothing cancels."""
    lk = block.shape[-1]
    dtype = block.dtype
    near_start = min(lowest, lk)
    near_stop = max(near_start, min(highest + 1, lk))
    band = block[:, near_start:near_stop]
    offset = arrays.astype(abs(query[:, None] - keys[near_start:near_stop]), dtype)  # (n, 1) - (b,) -> (n, b)
    distance = arrays.total(band * offset, axis=-1)
    if near_start > 0:  # keys j < lowest <= i: (i - lowest) + (lowest - j)
        before = block[:, :near_start]
        distance += before @ arrays.astype(near_start - keys[:near_start], dtype)
        distance += arrays.astype(query - near_start, dtype) * arrays.total(before, axis=-1)
    if near_stop < lk:  # keys j > highest >= i: (j - highest) + (highest - i)
        after = block[:, near_stop:]
        distance += after @ arrays.astype(keys[near_stop:] - highest, dtype)
        distance += arrays.astype(highest - query, dtype) * arrays.total(after, axis=-1)
    return distance


def matrix_means(stats: RowStats, counted: Array | None = None) -> dict[str, Array]:
    """Per matrix, shape (...): the mean over its query rows of each statistic in MEAN_NAMES,
    leaving out the rows where it is NaN (NaN when every row is) and, with `counted` (bool,
    broadcasting to the rows), the rows it marks False: a capture's padding tokens."""
    means = {}
    for name in MEAN_NAMES:
        values = getattr(stats, name)
        if arrays.is_numpy(values):
            if counted is not None:
                values = np.where(np.broadcast_to(np.asarray(counted), values.shape), values, math.nan)
            with np.errstate(invalid="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # a matrix of NaN rows: its mean is NaN
                means[name] = np.nanmean(values, axis=-1)
            continue
        import torch

        if counted is not None:
            keep = torch.as_tensor(np.asarray(counted), device=values.device).expand(values.shape)
            values = values.where(keep, math.nan)
        means[name] = torch.nanmean(values, dim=-1)
    return means


def top_k(weights: Array | MaskedWeights, k: int, blocked: Array | None = None) -> tuple[Array, Array]:
    """Each query row's `k` most attended keys, largest first, ties by the lower key.

    Returns values (..., Lq, k), in the weights' dtype, and int64 key indices (..., Lq, k); `k` past
    the number of keys is cut to it. Keys that `blocked` masks (as in `row_stats`) are never
    returned: a row with fewer than `k` open keys ends in value NaN, index -1. `weights` may be an
    `AttentionResult`, as in `row_stats`: its mask and causal flag are the blocked keys.
    """
    weights, blocked = weights_and_blocked(weights, blocked)
    if k < 1:
        raise ValueError(f"k must be at least 1, not {k}")
    compute_dtype = _compute_dtype(weights)
    blocked_keys = _blocked_view(blocked, weights)
    *lead, lq, lk = weights.shape
    rows, kept = math.prod(lead) * lq, min(k, lk)
    values = arrays.full(weights, (rows, kept), math.nan)
    indices = arrays.full(weights, (rows, kept), -1, dtype=arrays.int64(weights))
    numpy = arrays.is_numpy(weights)
    for span, index in _row_blocks(weights):
        block = arrays.astype(weights[index], compute_dtype)  # (n, Lk); widening keeps order and ties
        # NaN ranks below every number, and a masked key below every open one.
        if numpy:
            ranking = np.nan_to_num(block, nan=-math.inf, posinf=math.inf, neginf=-math.inf)
        else:
            ranking = block.nan_to_num(nan=-math.inf, posinf=math.inf, neginf=-math.inf)
        if blocked_keys is not None:
            ranking = arrays.masked_fill(ranking, blocked_keys[index], -math.inf)
        order: Array
        if numpy:  # a stable sort of the negated ranking: largest first, the lower key first on ties
            order = np.argsort(-ranking, axis=-1, kind="stable")[:, :kept]  # (n, k)
            ranked = np.take_along_axis(block, order, axis=-1)
        else:
            order = _largest_keys(ranking, kept)  # (n, k)
            ranked = block.gather(-1, order)
        if blocked_keys is not None:
            masked = blocked_keys[index]
            masked = np.take_along_axis(masked, order, axis=-1) if numpy else masked.gather(-1, order)
            ranked, order = (
                arrays.masked_fill(ranked, masked, math.nan),
                arrays.masked_fill(order, masked, -1),
            )
        values[span] = arrays.astype(ranked, weights.dtype)
        indices[span] = order
    return values.reshape(*lead, lq, kept), indices.reshape(*lead, lq, kept)


def _largest_keys(ranking: torch.Tensor, kept: int) -> torch.Tensor:
    """The keys of the `kept` largest values of each row of `ranking` (n, Lk), no NaN, largest first
    and the lower key first among equal values: what a stable descending sort gives, without
    sorting every key (a sort of each row costs most of a long run). topk finds each row's k-th
    largest value t; every key above t is taken, then the lowest keys equal to t, up to k."""
    import torch

    n, lk = ranking.shape
    if not n or kept * 8 >= lk:  # few keys per key kept: sorting them all costs little
        return ranking.sort(dim=-1, descending=True, stable=True).indices[:, :kept]
    threshold = ranking.topk(kept, dim=-1, sorted=False).values.amin(dim=-1, keepdim=True)  # (n, 1)
    chosen = ranking > threshold
    tied = ranking == threshold
    room = kept - count_true(chosen, keepdim=True)  # (n, 1): at least 1
    crowded = (count_true(tied, keepdim=True) > room).squeeze(-1)  # more ties than room: keep the lowest
    if bool(crowded.any()):
        first = tied[crowded].cumsum(dim=-1, dtype=torch.int32) <= room[crowded]
        tied[crowded] &= first
    chosen |= tied
    keys = chosen.nonzero()[:, 1].view(n, kept)  # row by row, each row's keys ascending
    order = ranking.gather(-1, keys).sort(dim=-1, descending=True, stable=True).indices
    return keys.gather(-1, order)


def stats_arrays(stats: RowStats) -> dict[str, np.ndarray]:
    """The statistics as NumPy arrays on the CPU (copies, not views), keyed by STAT_NAMES."""
    return {name: np.array(arrays.to_numpy(getattr(stats, name))) for name in STAT_NAMES}


def _compute_dtype(weights: Array) -> Any:
    floating = weights.dtype.kind == "f" if arrays.is_numpy(weights) else weights.is_floating_point()
    if not floating:
        raise TypeError(f"weights must be floating point, not {weights.dtype}")
    if weights.ndim < 2:
        raise ValueError(
            f"weights must have query and key axes (..., Lq, Lk), not shape {tuple(weights.shape)}"
        )
    return arrays.compute_float(weights)


def _blocked_view(blocked: Array | None, weights: Array) -> Array | None:
    """`blocked` as a bool tensor on the weights' device, expanded (a view, not a copy) to their shape
    (a NumPy array, for NumPy weights)."""
    if blocked is None:
        return None
    if arrays.is_numpy(weights):
        blocked = arrays.to_numpy(blocked)
        if blocked.dtype != np.bool_:
            raise TypeError(f"blocked must be boolean (True = masked), not {blocked.dtype}")
        try:
            return np.broadcast_to(blocked, tuple(weights.shape))
        except ValueError:
            shapes = f"{tuple(blocked.shape)} does not broadcast to the weights' shape {tuple(weights.shape)}"
            raise ValueError(f"blocked {shapes}") from None
    import torch

    if isinstance(blocked, np.ndarray):
        if blocked.dtype != np.bool_:
            raise TypeError(f"blocked must be boolean (True = masked), not {blocked.dtype}")
        tensor = _from_numpy(blocked)
    elif blocked.dtype != torch.bool:
        raise TypeError(f"blocked must be boolean (True = masked), not {blocked.dtype}")
    else:
        tensor = blocked
    shape, target = tuple(tensor.shape), tuple(weights.shape)
    try:
        fits = np.broadcast_shapes(shape, target) == target
    except ValueError:
        fits = False
    if not fits:
        raise ValueError(f"blocked {shape} does not broadcast to the weights' shape {target}")
    return tensor.to(weights.device).expand(target)


def count_true(flags: Array, dim: int = -1, keepdim: bool = False) -> Array:
    """How many of bool `flags` are True along `dim`, as int64. Summed as bytes into int32: torch's
    sum of a bool tensor converts every element to int64 first, forty times slower."""
    if arrays.is_numpy(flags):
        return np.sum(flags, axis=dim, keepdims=keepdim, dtype=np.int64)
    import torch

    if not flags.numel():
        return flags.sum(dim=dim, keepdim=keepdim)
    return flags.view(torch.uint8).sum(dim=dim, keepdim=keepdim, dtype=torch.int32).long()


def _unexpanded(tensor: Array) -> Array:
    """`tensor` with every axis but the last that `expand` stretched (stride 0) cut back to one
    entry: a view, whose sums over the last axis still count every key."""
    index = tuple(
        slice(0, 1) if stride == 0 and size > 1 else slice(None)
        for size, stride in zip(
            tensor.shape[:-1],
            (tensor.strides if arrays.is_numpy(tensor) else tensor.stride())[:-1],
            strict=True,
        )
    )
    return tensor[(*index, slice(None))]


def _from_numpy(array: np.ndarray) -> torch.Tensor:
    import torch

    # Axes broadcast by stride 0 shrink to one entry, so a broadcast view is never copied in full.
    array = array[
        tuple(
            slice(0, 1) if stride == 0 and size > 1 else slice(None)
            for size, stride in zip(array.shape, array.strides, strict=True)
        )
    ]
    if not array.flags.writeable or any(stride < 0 for stride in array.strides):
        array = np.array(array)  # torch refuses negative strides and warns on read-only memory
    return torch.from_numpy(array)


def _row_blocks(weights: Array) -> Iterator[tuple[slice, tuple[Array, ...]]]:
    """Blocks of query rows, all matrices' rows counted in order: for each, its span in the flat
    rows and one index tensor per axis but the last, to pick its rows of any tensor expanded to
    the weights' shape: `tensor[index]` -> (n, Lk). None when there are no keys."""
    if weights.shape[-1] == 0:
        return
    row_shape = tuple(weights.shape[:-1])  # (..., Lq)
    rows = math.prod(row_shape)
    step = max(1, _BLOCK_ELEMENTS // weights.shape[-1])
    for start in range(0, rows, step):
        stop = min(start + step, rows)
        flat = arrays.arange(weights, start, stop)
        index = []
        for size in reversed(row_shape):
            index.append(flat % size)
            flat = flat // size
        yield slice(start, stop), tuple(reversed(index))
