"""The row passes of the fused kernel, compiled by Numba (imported only where Numba is installed).

One function, `summarise_rows`, over float32 scores rows (rows, W), each row's two passes made
while it sits in cache: pass 1 the largest score of each picture cell (which give the row's
largest, its key and each cell's largest weight) and, with a mask, the open keys of each cell;
pass 2 each weight's numerator e = exp(score - largest) in place and every sum the statistics and
the picture's means need. `cache=True` keeps the machine code on disk (beside this file, or in
Numba's user cache directory where site-packages is read-only), so only the first process compiles.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

#: reassoc lets the sums split into vector lanes, nnan the maxima (the caller passes no NaN);
#: no "ninf": masked scores are -inf.
_FAST = {"nnan", "reassoc", "contract", "nsz", "arcp"}
_MINUS_INF = np.float32(-np.inf)
_PLUS_INF = np.float32(np.inf)
_ZERO = np.float32(0.0)
#: exp(x) for x below this is under float32's smallest normal number: taken as 0 (as masked keys).
_LOWEST = np.float32(-87.33)
_LOG2E = np.float32(1.442695040888963)
_LN2_HIGH = np.float32(0.693359375)
_LN2_LOW = np.float32(-2.12194440e-4)


@intrinsic
def _float_from_bits(typingctx, bits):  # type: ignore[no-untyped-def]
    """An int32's bits read as a float32 (2**n from its exponent field): vectorises, as ldexp does not."""
    signature = types.float32(types.int32)

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        return builder.bitcast(args[0], ir.FloatType())

    return signature, codegen


@njit(inline="always", fastmath=_FAST, cache=True)
def _exp(x: np.float32) -> np.float32:
    """exp(x) for _LOWEST <= x <= 0 in float32, within 6e-7 relative (Cephes' expf polynomial):
    Numba's own exp is a call per element since it dropped SVML (0.62), and is not vectorised."""
    n = np.floor(x * _LOG2E + np.float32(0.5))
    r = x - n * _LN2_HIGH - n * _LN2_LOW  # |r| <= ln(2) / 2
    p = np.float32(1.9875691500e-4)
    p = p * r + np.float32(1.3981999507e-3)
    p = p * r + np.float32(8.3334519073e-3)
    p = p * r + np.float32(4.1665795894e-2)
    p = p * r + np.float32(1.6666665459e-1)
    p = p * r + np.float32(5.0000001201e-1)
    p = p * r * r + r + np.float32(1.0)
    exponent = (np.int32(n) + np.int32(127)) << np.int32(23)
    power: np.float32 = _float_from_bits(exponent)  # type: ignore[call-arg]  # 2**n, n in [-126, 0]
    return p * power


@njit(inline="always", fastmath=_FAST, cache=True)
def _extremes(values: np.ndarray, high: np.ndarray, low: np.ndarray) -> tuple[np.float32, np.float32]:
    """The largest of `values` (-inf when empty) and the smallest above -inf (+inf when none): 16
    running maxima and minima in `high` and `low`, which LLVM turns into vector instructions (a
    single running one it leaves scalar)."""
    count = values.shape[0]
    whole = count - count % 16
    high[:] = _MINUS_INF
    low[:] = _PLUS_INF
    for start in range(0, whole, 16):
        for lane in range(16):
            value = values[start + lane]
            high[lane] = value if value > high[lane] else high[lane]
            low[lane] = value if value < low[lane] and value > _MINUS_INF else low[lane]
    top = _MINUS_INF
    bottom = _PLUS_INF
    for lane in range(16):
        top = high[lane] if high[lane] > top else top
        bottom = low[lane] if low[lane] < bottom else bottom
    for key in range(whole, count):
        value = values[key]
        top = value if value > top else top
        bottom = value if value < bottom and value > _MINUS_INF else bottom
    return top, bottom


@njit(inline="always", fastmath=_FAST, cache=True)
def _open(values: np.ndarray) -> int:
    """How many of `values` are above -inf (open keys)."""
    count = 0
    for key in range(values.shape[0]):
        count += 1 if values[key] > _MINUS_INF else 0
    return count


@njit(inline="always", fastmath=_FAST, cache=True)
def _exp_and_sums(
    values: np.ndarray, best: np.float32, offset: np.float32
) -> tuple[np.float32, np.float32, np.float32]:
    """`values` (scores) replaced by e = exp(score - best); returns sum e, sum e (score - best) and
    sum e |offset - key| (offset: the query's position less the first key's), in float32."""
    z = _ZERO
    weighted = _ZERO
    distance = _ZERO
    for key in range(values.shape[0]):
        shifted = values[key] - best
        # exp of a score below _LOWEST (a masked key's -inf among them) is taken as 0; the entropy's
        # product takes the clamped score, as 0 * -inf would be NaN. One clamp for both: 15% faster.
        clamped = shifted if shifted > _LOWEST else _LOWEST
        e = _ZERO if shifted < _LOWEST else _exp(clamped)
        values[key] = e
        z += e
        weighted += e * clamped
        distance += e * abs(offset - np.float32(np.int32(key)))
    return z, weighted, distance


@njit(nogil=True, cache=True, fastmath=_FAST, error_model="numpy", boundscheck=False)
def summarise_rows(
    scores: np.ndarray,
    first: int,
    last: int,
    query_of_row: np.ndarray,
    causal: bool,
    masked: bool,
    cell_keys: int,
    largest_of_row: np.ndarray,
    smallest_of_row: np.ndarray,
    argmax: np.ndarray,
    open_keys: np.ndarray,
    sink_open: np.ndarray,
    totals: np.ndarray,
    cell_largest: np.ndarray,
    cell_sums: np.ndarray,
    cell_open: np.ndarray,
) -> None:
    """Rows [first, last) of `scores` (rows, W) float32, masked keys at -inf, no NaN: each row's
    numerators e = exp(score - largest) left in place (0 at masked keys, past a causal row's query
    and across a row with every key masked). `query_of_row` (rows,) int64: each row's query
    position (under `causal`, the keys after it are masked). Per row: `largest_of_row` the largest
    score (-inf: every key masked), `smallest_of_row` the smallest open one (+inf: none), `argmax`
    the largest's first key (-1), `open_keys` how many keys are open (counted only when `masked`,
    else W or the causal row's), `sink_open` key 0 open, `totals` (rows, 3) float64: Z = sum e,
    sum e (s - largest), sum e |query - key|. Per row and cell of `cell_keys` keys (rows, C): the
    largest score, the sum of e, and (when `masked`) the open keys."""
    width = scores.shape[1]
    cells = cell_largest.shape[1]
    high = np.empty(16, np.float32)
    low = np.empty(16, np.float32)
    for row in range(first, last):
        values = scores[row]
        query = query_of_row[row]
        limit = min(query + 1, width) if causal else width  # keys from here on are masked
        # Pass 1: the largest score of each cell and of the row, its smallest open one; the open keys.
        best = _MINUS_INF
        worst = _PLUS_INF
        best_cell = -1
        opened = 0
        for cell in range(cells):
            start = min(cell * cell_keys, limit)
            stop = min(start + cell_keys, limit)
            top, bottom = _extremes(values[start:stop], high, low)
            worst = bottom if bottom < worst else worst
            cell_largest[row, cell] = top
            if masked:
                count = _open(values[start:stop])
                cell_open[row, cell] = count
                opened += count
            if top > best:
                best, best_cell = top, cell
        open_keys[row] = opened if masked else limit
        sink_open[row] = limit > 0 and values[0] > _MINUS_INF
        largest_of_row[row] = best
        smallest_of_row[row] = worst
        totals[row, :] = 0.0
        cell_sums[row, :] = 0.0
        if best_cell < 0:  # every key masked: no weights
            argmax[row] = -1
            values[:] = 0.0
            continue
        for key in range(best_cell * cell_keys, limit):
            if values[key] == best:
                argmax[row] = key
                break
        # Pass 2: e in place and the sums, float32 within a cell, float64 across cells.
        for cell in range(cells):
            start = min(cell * cell_keys, limit)
            stop = min(start + cell_keys, limit)
            sums = _exp_and_sums(values[start:stop], best, np.float32(query - start))
            cell_sums[row, cell] = sums[0]
            totals[row, 0] += sums[0]
            totals[row, 1] += sums[1]
            totals[row, 2] += sums[2]
        values[limit:] = 0.0
