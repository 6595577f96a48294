"""The row passes of the fused kernel, compiled by Numba (imported only where Numba is installed).

One function, `summarise_rows`, over float32 scores rows (rows, W), three passes over each row,
the last two while it sits in cache: pass 1 the largest score of each picture cell (which give the
row's largest, its key and each cell's largest weight) and, with a mask, the open keys of each
cell; pass 2 each weight's numerator e = exp(score - largest) in place and the row's sums the
statistics need; pass 3 each cell's sum of e, for the picture's means. `cache=True` keeps the
machine code on disk (beside this file, or in Numba's user cache directory where site-packages is
read-only), so only the first process compiles.
"""

from __future__ import annotations

import math

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
def _open(values: np.ndarray) -> int:
    """How many of `values` are above -inf (open keys)."""
    count = 0
    for key in range(values.shape[0]):
        count += 1 if values[key] > _MINUS_INF else 0
    return count


#: Keys per piece of pass 2: summed in float32 within a piece (vector lanes), float64 across pieces.
_PIECE = 1024
_INT_LOWEST = np.int32(-(2**31))
_INT_HIGHEST = np.int32(2**31 - 1)
_SIGN_OFF = np.int32(0x7FFFFFFF)
#: -inf's bits as `_ordered` maps them
_ORDERED_MINUS_INF = np.int32(np.array([-np.inf], np.float32).view(np.int32)[0] ^ 0x7FFFFFFF)


@njit(inline="always", cache=True)
def _ordered(bits: np.int32) -> np.int32:
    """A float32's bits (as int32) mapped to an int32 that orders as the floats do (no NaN): the
    negative ones' magnitude bits flipped. Its own inverse. Integer maxima vectorise; float ones
    here did not."""
    return bits ^ ((bits >> np.int32(31)) & _SIGN_OFF)


@njit(inline="always", cache=True)
def _int_extremes(bits: np.ndarray) -> tuple[np.int32, np.int32]:
    """The largest of float32 `bits` (int32 view) and the smallest above -inf, both `_ordered`
    (_INT_LOWEST when empty, _INT_HIGHEST when nothing is open)."""
    top = _INT_LOWEST
    bottom = _INT_HIGHEST
    for key in range(bits.shape[0]):
        ordered = _ordered(bits[key])
        top = max(top, ordered)
        bottom = min(bottom, ordered if ordered != _ORDERED_MINUS_INF else _INT_HIGHEST)
    return top, bottom


@njit(inline="always", cache=True)
def _as_float(ordered: np.int32) -> np.float32:
    """The float32 an `_ordered` int stands for."""
    return _float_from_bits(_ordered(ordered))  # type: ignore[call-arg]


@njit(inline="always", fastmath=_FAST, cache=True)
def _piece_sums(
    values: np.ndarray, best: np.float32, offset: np.float32
) -> tuple[np.float32, np.float32, np.float32]:
    """`values` (scores) replaced by e = exp(score - best); returns sum e, sum e (score - best) and
    sum e |offset - key| (offset: the query's position less the first key's), in float32."""
    z = _ZERO
    weighted = _ZERO
    distance = _ZERO
    position = offset  # offset - key, counted down: no integer-to-float conversion per key
    for key in range(values.shape[0]):
        shifted = values[key] - best
        # exp of a score below _LOWEST (a masked key's -inf among them) is taken as 0; the entropy's
        # product takes the clamped score, as 0 * -inf would be NaN. One clamp for both.
        clamped = shifted if shifted > _LOWEST else _LOWEST
        e = _ZERO if shifted < _LOWEST else _exp(clamped)
        values[key] = e
        z += e
        weighted += e * clamped
        distance += e * abs(position)
        position -= np.float32(1.0)
    return z, weighted, distance


@njit(inline="always", fastmath=_FAST, cache=True)
def _sum(values: np.ndarray) -> np.float32:
    total = _ZERO
    for key in range(values.shape[0]):
        total += values[key]
    return total


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
    else W or the causal row's), `sink_open` key 0 open, `totals` (rows, 4) float64: Z = sum e,
    sum e (s - largest), sum e |query - key|, and the sum of the cells' weights (1 within float64
    rounding; 0 where every key is masked). Per row and cell of `cell_keys` keys (rows, C), as the
    picture pools them: the largest weight (float32, 0 where no key is open), the sum of the
    weights (float64) and the open keys (int64).

    Pass 1, per cell, finds the largest and smallest open score on the scores' bits as ordered
    integers; pass 2, over the whole row in pieces of _PIECE keys, makes e and the row's sums; pass
    3, per cell, sums e (in cache: the row was just written)."""
    width = scores.shape[1]
    cells = cell_largest.shape[1]
    bits = scores.view(np.int32)
    for row in range(first, last):
        values = scores[row]
        row_bits = bits[row]
        query = query_of_row[row]
        limit = min(query + 1, width) if causal else width  # keys from here on are masked
        # Pass 1: the largest score of each cell and of the row, its smallest open one; the open keys.
        best = _INT_LOWEST
        worst = _INT_HIGHEST
        best_cell = -1
        opened = 0
        for cell in range(cells):
            start = min(cell * cell_keys, limit)
            stop = min(start + cell_keys, limit)
            top, bottom = _int_extremes(row_bits[start:stop])
            worst = min(worst, bottom)
            top_value = _as_float(top) if stop > start else _MINUS_INF
            cell_largest[row, cell] = top_value  # a score here; a weight after pass 2
            count = _open(values[start:stop]) if masked else stop - start
            cell_open[row, cell] = count
            opened += count
            if top_value > _MINUS_INF and top > best:
                best, best_cell = top, cell
        open_keys[row] = opened if masked else limit
        sink_open[row] = limit > 0 and values[0] > _MINUS_INF
        largest = _as_float(best) if best_cell >= 0 else _MINUS_INF
        largest_of_row[row] = largest
        smallest_of_row[row] = _as_float(worst) if worst != _INT_HIGHEST else _PLUS_INF
        totals[row, :] = 0.0
        cell_sums[row, :] = 0.0
        if best_cell < 0:  # every key masked: no weights
            argmax[row] = -1
            values[:] = 0.0
            cell_largest[row, :] = 0.0
            continue
        for key in range(best_cell * cell_keys, limit):
            if row_bits[key] == _ordered(best):
                argmax[row] = key
                break
        # Pass 2: e in place and the row's sums, float32 within a piece, float64 across pieces.
        for start in range(0, limit, _PIECE):
            stop = min(start + _PIECE, limit)
            sums = _piece_sums(values[start:stop], largest, np.float32(query - start))
            totals[row, 0] += sums[0]
            totals[row, 1] += sums[1]
            totals[row, 2] += sums[2]
        values[limit:] = 0.0
        # Pass 3: each cell's sum of e; the cells' largest scores become weights.
        z = totals[row, 0]
        for cell in range(cells):
            start = min(cell * cell_keys, limit)
            stop = min(start + cell_keys, limit)
            share = _sum(values[start:stop]) / z
            cell_sums[row, cell] = share
            totals[row, 3] += share
            top_score = cell_largest[row, cell]
            if top_score > _MINUS_INF:
                cell_largest[row, cell] = math.exp(np.float64(top_score) - np.float64(largest)) / z
            else:
                cell_largest[row, cell] = 0.0
