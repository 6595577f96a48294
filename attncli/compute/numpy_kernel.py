"""The NumPy kernel: one block of query rows computed in NumPy, for small inputs on the CPU.

Importing torch takes 1.8-2 s, against 0.1-0.2 s for NumPy: for a few hundred positions, that import
is nearly all of a run. A problem prepared with `kernel="numpy"` (`compute.kernels.choose` decides)
has its blocks made here, in the same steps as the torch kernel (`compute.blocks._block`), the same
`Block` for the same sinks; float32 and float64 only (half precision, other devices and `--check`
go to torch). No I/O, no printing.
"""

from __future__ import annotations

import math

import numpy as np

from attncli.compute.prepare import Prepared, block_operands, blocked_keys, causal_hidden
from attncli.errors import InputError

#: `blocked_keys` and `causal_hidden` give NumPy arrays for this device.
DEVICE = "numpy"


@np.errstate(all="ignore")
def block(
    p: Prepared,
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    mask: np.ndarray | None,
    first_row: int,
    keep_scores: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """Rows first_row.. of the weights, as `compute.blocks._block` gives them: `q` (..., n, D), `k`
    and `v` in the compute dtype (float32 or float64); `mask` cut to the block's rows. Returns the
    fields of that rows' `compute.blocks.Block`: weights, output, masked rows, blocked keys, scores.
    NumPy's floating-point warnings are off, as torch has none: an overflow of the scores is an
    error below, and what else is not finite is in the numbers, as the torch kernel leaves it."""
    n = q.shape[-2]
    q, k, v, mask, weights_shape = block_operands(p, q, k, v, mask, first_row)
    # Scaling the query (n x D numbers) costs less than scaling the scores (n x W); the Python float
    # keeps the query's dtype (NumPy 2's promotion rules).
    scaled = q * p.scale
    scores = np.matmul(scaled, k.swapaxes(-2, -1))  # (..., n, D) @ (..., D, W) -> (..., n, W)
    if p.may_overflow and not np.isfinite(scores).all():
        wider = "" if scores.dtype == np.float64 else ", or use --dtype float64"
        raise InputError(
            f"query . key scores overflow {scores.dtype} with these inputs "
            f"(finite, but too large): scale them down or pass a smaller --scale{wider}"
        )
    if p.group > 1:
        scores = scores.reshape(
            *scores.shape[:-4], -1, *scores.shape[-2:]
        )  # (..., Hkv, G, n, W) -> (..., Hq, n, W)
    if tuple(scores.shape) != weights_shape:
        scores = np.broadcast_to(scores, weights_shape).copy()  # a mask with more batch axes than the inputs

    width = weights_shape[-1]
    blocked = blocked_keys(mask, p.causal, n, width, first_row, device=DEVICE)
    masked_rows = None
    if mask is not None:
        if mask.dtype == np.bool_:
            np.copyto(scores, -math.inf, where=~mask)
        else:
            scores += mask.astype(scores.dtype, copy=False)
    if p.causal:
        # Keys up to first_row are seen by every row: only those after it can lie past the diagonal.
        edge = min(first_row + 1, width)
        if edge < width:
            hidden = causal_hidden(n, width - edge, first_row - edge, DEVICE)
            np.copyto(scores[..., edge:], -math.inf, where=hidden)
    if mask is not None:
        # A row with every key masked has no softmax; it gets zero weights instead of NaN.
        masked_rows = scores.max(axis=-1, initial=-math.inf) == -math.inf  # (..., n)
        np.copyto(scores, 0.0, where=masked_rows[..., None])
    if width:
        scores -= scores.max(axis=-1, keepdims=True)  # what softmax subtracts first: each row <= 0
    weights = np.exp(scores)  # (..., n, W): exp(-inf) = 0 at masked keys
    weights /= weights.sum(axis=-1, keepdims=True)
    if keep_scores and (mask is not None or p.causal):
        # -inf at masked keys -> the lowest finite number: their weight 0 times it is then 0
        np.maximum(scores, np.finfo(scores.dtype).min, out=scores)
    if masked_rows is not None:
        np.copyto(weights, 0.0, where=masked_rows[..., None])

    if p.group > 1:
        # (..., Hkv, G, n, W) @ (..., Hkv, 1, W, Dv) -> (..., Hkv, G, n, Dv) -> (..., Hq, n, Dv)
        grouped = weights.reshape(*weights.shape[:-3], k.shape[-4], p.group, *weights.shape[-2:])
        output = np.matmul(grouped, v)
        output = output.reshape(*output.shape[:-4], -1, *output.shape[-2:])
    else:
        output = np.matmul(weights, v)  # (..., n, W) @ (..., W, Dv) -> (..., n, Dv)
    return weights, output, masked_rows, blocked, scores if keep_scores else None
