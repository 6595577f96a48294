"""The maths, one block of query rows at a time: `weights = softmax(query @ key^T * scale + mask)`,
`output = weights @ value`.

Computed by hand in torch, because the fused `scaled_dot_product_attention` returns no weights; the
tests hold this against it and against a float64 reference. A whole computation is the one block that
holds every query row. A problem prepared for the NumPy kernel (NumPy arrays) has its blocks made by
`attncli.compute.numpy_kernel.block` instead: the same blocks, as NumPy arrays. No I/O, no printing.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np

from attncli.arrays import Array
from attncli.compute.prepare import Prepared, block_operands, blocked_keys, causal_hidden, mask_rows
from attncli.compute.summary import RowSummary
from attncli.errors import InputError

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Block:
    """Query rows [start, stop) of every matrix, computed.

    `weights` (..., n, W) and `output` (..., n, Dv, heads apart) are in the result dtype. W is Lk,
    or under causal the keys up to the block's last row (the weights of the keys after them are 0).
    `masked_rows` (..., n) marks rows with every key masked (None without a mask); `blocked` is
    bool (True = masked), broadcastable to the weights, None when nothing is masked. `scores`, when
    asked for: each row less its largest score, in the compute dtype (float32 for half inputs): <= 0,
    exactly 0 at the largest, the dtype's lowest finite number at masked keys (where the weights are
    0), 0 across a fully masked row; log(weights) is these less log(sum of exp). `summary`: a block
    of the fused kernel (`kernel_numba`) holds its rows' statistics and picture cells there instead,
    and no weights (shape (..., n, 0)): only sinks that read the summary are fed it.
    """

    start: int
    stop: int
    weights: Array  # torch tensors from the torch kernel, NumPy arrays from the NumPy kernel
    output: Array
    masked_rows: Array | None
    blocked: Array | None
    scores: Array | None = None
    summary: RowSummary | None = None  # the fused kernel's blocks only (torch tensors)


def blocks(problem: Prepared, block_rows: int, *, keep_scores: bool = False) -> Iterator[Block]:
    """The blocks of `block_rows` query rows of `problem`, in order (one empty block when Lq is 0)."""
    if isinstance(block_rows, bool) or not isinstance(block_rows, int) or block_rows < 1:
        raise ValueError(f"block_rows must be a positive whole number, not {block_rows}")
    query, key, value = problem.compute_inputs()
    *_, lq, _ = problem.weights_shape
    make_block: Callable[..., Block] = _block
    if problem.kernel == "numpy":
        from attncli.compute import numpy_kernel

        def make_block(p: Prepared, q: Array, *inputs: Any) -> Block:
            first_row = inputs[-2]
            return Block(first_row, first_row + q.shape[-2], *numpy_kernel.block(p, q, *inputs))

    for start in range(0, max(lq, 1), block_rows):
        stop = min(start + block_rows, lq)
        block_mask = mask_rows(problem.mask, start, stop)
        yield make_block(problem, query[..., start:stop, :], key, value, block_mask, start, keep_scores)


def _block(
    p: Prepared,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    first_row: int,
    keep_scores: bool,
) -> Block:
    """Rows first_row.. of the weights: `q` (..., n, D) in the compute dtype, as `k` and `v`; `mask`
    cut to the block's rows where it has a query axis. One (n x W) buffer, updated in place, and a
    second one for the scores when they are kept."""
    import torch

    from attncli.compute import buffers

    n = q.shape[-2]
    q, k, v, mask, weights_shape = block_operands(p, q, k, v, mask, first_row)
    whole = first_row == 0 and n == p.weights_shape[-2]  # one block: its weights are the result's
    into = None
    if whole and not (q.requires_grad or k.requires_grad):  # out= takes no part in autograd
        # a buffer of huge pages where it is large; blocks of a longer run reuse what malloc kept
        into = partial(buffers.empty, dtype=q.dtype, device=q.device)
    scores = block_scores(p, q, k, weights_shape, into)
    if p.may_overflow and not bool(torch.isfinite(scores).all()):
        wider = "" if scores.dtype == torch.float64 else ", or use --dtype float64"
        raise InputError(
            f"query . key scores overflow {str(scores.dtype).removeprefix('torch.')} with these inputs "
            f"(finite, but too large): scale them down or pass a smaller --scale{wider}"
        )
    apply_mask(scores, mask)
    width = weights_shape[-1]
    blocked = blocked_keys(mask, p.causal, n, width, first_row, device=scores.device)
    masked_rows = None
    if p.causal:
        # Keys up to first_row are seen by every row: only those after it can lie past the diagonal.
        edge = min(first_row + 1, width)
        if edge < width:
            hidden = causal_hidden(n, width - edge, first_row - edge, scores.device)
            scores[..., edge:].masked_fill_(hidden, -math.inf)
    if mask is not None:
        # A row with every key masked has no softmax; it gets zero weights instead of NaN.
        masked_rows = scores.amax(dim=-1) == -math.inf  # (..., n)
        scores.masked_fill_(masked_rows.unsqueeze(-1), 0.0)
    if keep_scores:
        if width:
            scores.sub_(scores.amax(dim=-1, keepdim=True))  # what softmax subtracts first
        weights = torch.softmax(scores, dim=-1)  # (..., n, W): a second buffer
        if mask is not None or p.causal:
            # -inf at masked keys -> the lowest finite number: their weight 0 times it is then 0
            scores.clamp_min_(torch.finfo(scores.dtype).min)
    else:
        weights = torch.softmax(scores, dim=-1, out=scores)  # in place: no second buffer
    if masked_rows is not None:
        weights.masked_fill_(masked_rows.unsqueeze(-1), 0.0)

    if p.group > 1:
        # (..., Hkv, G, n, W) @ (..., Hkv, 1, W, Dv) -> (..., Hkv, G, n, Dv) -> (..., Hq, n, Dv)
        grouped = weights.reshape(*weights.shape[:-3], k.shape[-4], p.group, *weights.shape[-2:])
        output = torch.matmul(grouped, v).flatten(-4, -3)
    else:
        output = torch.matmul(weights, v)  # (..., n, W) @ (..., W, Dv) -> (..., n, Dv)
    result_dtype = p.query.dtype
    if weights.dtype != result_dtype:  # half precision, computed in float32: rounded into a kept mapping
        weights = buffers.empty(tuple(weights.shape), result_dtype, weights.device).copy_(weights)
    return Block(
        start=first_row,
        stop=first_row + n,
        weights=weights,
        output=output.to(result_dtype),
        masked_rows=masked_rows,
        blocked=blocked,
        scores=scores if keep_scores else None,
    )


def block_scores(
    p: Prepared,
    q: torch.Tensor,
    k: torch.Tensor,
    weights_shape: tuple[int, ...],
    into: Callable[[tuple[int, ...]], torch.Tensor] | None = None,
) -> torch.Tensor:
    """query @ key^T x scale of one block's operands (`prepare.block_operands`): (..., n, W) as
    `weights_shape`, a group's query heads flattened into the heads' axis, expanded where a mask adds
    batch axes. The product goes into `into(shape)` when given (a buffer to reuse), else a new tensor."""
    import torch

    scaled = q * p.scale  # scaling the query (n x D numbers) costs less than scaling the scores (n x W)
    if into is None:
        scores = torch.matmul(scaled, k.transpose(-2, -1))
    else:
        # NumPy's: torch.broadcast_shapes imports sympy (0.8 s) on its first call
        lead = np.broadcast_shapes(tuple(scaled.shape[:-2]), tuple(k.shape[:-2]))
        out = into((*lead, scaled.shape[-2], k.shape[-2]))
        scores = torch.matmul(scaled, k.transpose(-2, -1), out=out)  # (..., n, D) @ (..., D, W)
    if p.group > 1:
        scores = scores.flatten(-4, -3)  # (..., Hkv, G, n, W) -> (..., Hq, n, W)
    if tuple(scores.shape) != weights_shape:
        scores = scores.expand(weights_shape).contiguous()  # a mask with more batch axes than the inputs
    return scores


def apply_mask(scores: torch.Tensor, mask: torch.Tensor | None) -> None:
    """A block's mask applied to its scores in place: -inf where a bool mask is False, a float mask added
    (in the scores' dtype)."""
    import torch

    if mask is None:
        return
    if mask.dtype == torch.bool:
        scores.masked_fill_(~mask, -math.inf)
    else:
        scores.add_(mask.to(scores.dtype))
