"""`--check`: is the weights path the same as the maths and as the fused kernel?

The result of `attend` is compared with two references computed here from the same prepared inputs:
- `scaled_dot_product_attention` on the same device and dtype (the fused kernel people run; it
  returns no weights, so only the outputs are compared);
- a float64 computation on the CPU written the plain way (repeat the key/value heads, matmul,
  scale, mask, softmax), for both weights and output.
An element is outside the tolerance when |attncli - reference| > atol + rtol * |reference| (that of
`torch.testing.assert_close`), or when either side is NaN; the check passes when none is. Each
comparison reports the element that uses the largest share of its tolerance: its |difference| and
what it was allowed there, which say why the verdict is what it is.
Rows whose every key is masked are left out: attncli defines them as zero, the fused kernel as NaN.

The float64 reference is computed and compared a block of query rows at a time, so that no float64
(Lq, Lk) matrix ever exists whole: the memory it adds is a few blocks, and its time is mostly its
float64 products and softmax (at 4,096 positions on 2 cores: products 79 ms, softmax 38 ms, the
fused kernel 31 ms, the comparisons 26 ms; tests/bench/bench.py, section "check", measures it). So
the check costs about four times the computation it checks: float64 products run at a third of
float32's speed there.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from attncli.compute.prepare import Prepared
from attncli.compute.result import AttentionResult
from attncli.compute.run import fused

#: (rtol, atol) by dtype: torch.testing.assert_close's, except that for float16 and bfloat16 atol is
#: the dtype's own resolution near 1 (its eps), since both sides round every output to it: two
#: correct half-precision results routinely differ by an ulp or two where assert_close's atol of
#: 1e-5 would call that a failure.
TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float16: (1e-3, 1e-3),
    torch.bfloat16: (1.6e-2, 1e-2),
    torch.float32: (1.3e-6, 1e-5),
    torch.float64: (1e-7, 1e-7),
}

#: Bytes of one block's float64 (rows x keys) scores: the float64 products run fastest about there
#: (128 rows of 16,384 keys), and the comparison's few buffers of that size stay bounded.
BLOCK_BYTES = 16 << 20

#: Elements of one part of a block that the comparison takes at once (4 MiB of float64): its two
#: buffers and the rows they come from stay in the cache between its passes. On 4096 x 4096
#: weights (2 cores, 32 MiB of L3), parts of 128 rows took the comparison 21-26 ms, 64 or 256
#: rows 23-28 ms, whole 512-row blocks 33-54 ms; much smaller parts pay for their dozen torch calls.
PART_ELEMENTS = 1 << 19

#: Short names of the references, for tables: what `ReferenceCheck.against` holds.
KERNEL, FLOAT64 = "kernel", "float64"


@dataclass(frozen=True)
class ReferenceCheck:
    """How far one tensor of the result is from a reference."""

    tensor: str  # "weights" or "output"
    reference: str  # what it was compared with
    against: str  # the reference's short name: "kernel" or "float64"
    max_abs: float  # the largest |a - b| (NaN when either side has a NaN)
    #: Where |a - b| uses the largest share of its tolerance atol + rtol * |b| (first such in
    #: row-major order): over 1 there, and the check fails; () when nothing was compared.
    worst_index: tuple[int, ...]
    worst_abs: float  # |a - b| there
    worst_allowed: float  # atol + rtol * |b| there
    outside: int  # elements outside the tolerance
    compared: int  # elements compared (fully masked rows left out)
    rtol: float
    atol: float

    @property
    def passed(self) -> bool:
        return self.outside == 0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "worst_index": list(self.worst_index), "passed": self.passed}


def check(
    problem: Prepared,
    result: AttentionResult,
    *,
    block_rows: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[ReferenceCheck]:
    """Compare `result` (from `attend(problem)`) with the fused kernel and the float64 maths,
    `block_rows` query rows at a time (None: as many as fit BLOCK_BYTES). `progress(done, total)`
    is called with query rows after each block."""
    rtol, atol = TOLERANCES[result.dtype]
    assert result.weights is not None, "--check compares the full weights"
    lq = problem.weights_shape[-2]
    rows = reference_block_rows(problem) if block_rows is None else block_rows
    dead = result.masked_rows  # (..., [H,] Lq) or None
    # Outputs are compared with their heads apart, so that the rows line up with `dead`.
    output = problem.split_heads(result.output)
    # The kernel in the inputs' own dtype, as people run it (not rounded from float32 as attncli's).
    kernel_output = problem.split_heads(fused(problem, upcast_half=False, block_rows=rows).output)
    kernel = (
        f"scaled_dot_product_attention ({str(kernel_output.dtype).removeprefix('torch.')}, "
        f"{kernel_output.device})"
    )
    comparisons = [
        Comparison("output", kernel, KERNEL, rtol, atol),
        Comparison("weights", "float64 maths on the CPU", FLOAT64, rtol, atol),
        Comparison("output", "float64 maths on the CPU", FLOAT64, rtol, atol),
    ]
    for start, weights64, output64 in float64_blocks(problem, rows):
        stop = start + weights64.shape[-2]
        dead_rows = None if dead is None else dead[..., start:stop]
        block_output = output[..., start:stop, :]
        comparisons[0].add(block_output, kernel_output[..., start:stop, :], dead_rows, start)
        comparisons[2].add(block_output, output64, dead_rows, start)
        comparisons[1].add(result.weights[..., start:stop, :], weights64, dead_rows, start)
        if progress is not None:
            progress(stop, lq)
    return [comparison.result() for comparison in comparisons]


def reference_block_rows(problem: Prepared) -> int:
    """Query rows per block of the float64 reference: its (..., rows, Lk) scores in BLOCK_BYTES."""
    *lead, lq, lk = problem.weights_shape
    row_bytes = max(1, math.prod(lead) * lk * 8)
    return max(1, min(lq, BLOCK_BYTES // row_bytes))


def compare(
    tensor: str,
    reference: str,
    actual: torch.Tensor,
    expected: torch.Tensor,
    live_rows: torch.Tensor | None,
    rtol: float,
    atol: float,
    against: str | None = None,
) -> ReferenceCheck:
    """`actual` against `expected` (..., rows, cols), over the rows where `live_rows` (..., rows)
    holds: the one-block case of `Comparison`."""
    comparison = Comparison(tensor, reference, against or reference, rtol, atol)
    comparison.add(actual, expected, None if live_rows is None else ~live_rows.bool(), 0)
    return comparison.result()


class Comparison:
    """One comparison's running figures, fed aligned blocks of query rows (axis -2) in order."""

    def __init__(self, tensor: str, reference: str, against: str, rtol: float, atol: float) -> None:
        self.tensor, self.reference, self.against = tensor, reference, against
        self.rtol, self.atol = rtol, atol
        self.max_abs = 0.0
        self.outside = self.compared = 0
        self.worst_share = -math.inf  # |a - b| / (atol + rtol * |b|) at worst_index
        self.worst_index: tuple[int, ...] = ()
        self.worst_abs = self.worst_allowed = 0.0
        # Two float64 buffers of a part's size, kept from part to part and block to block: the
        # share, and the tolerance it divides by.
        self._buffers = [torch.empty(0, dtype=torch.float64), torch.empty(0, dtype=torch.float64)]

    def add(
        self,
        actual: torch.Tensor,
        expected: torch.Tensor,
        dead_rows: torch.Tensor | None,
        first_row: int,
    ) -> None:
        """Compare one block: `actual` against `expected` (..., n, cols), which broadcast, query
        rows `first_row` onwards, leaving out the rows where `dead_rows` (..., n) holds."""
        a = actual.detach().cpu()
        b = expected.detach().to("cpu", torch.float64)  # itself when it is already (the float64 maths')
        left_out = None if dead_rows is None else dead_rows.detach().cpu()  # (..., n)
        shape = np.broadcast_shapes(tuple(a.shape), tuple(b.shape))
        numel = math.prod(shape)
        left = 0 if left_out is None else int(left_out.expand(shape[:-1]).sum()) * shape[-1]
        self.compared += numel - left
        if numel == left:  # nothing to compare here
            return
        # A few rows at a time, so that the passes over the share and the tolerance run in the cache
        # rather than in memory; parts combine as blocks do.
        n, per_row = shape[-2], numel // max(shape[-2], 1)
        step = max(1, PART_ELEMENTS // max(per_row, 1))
        for start in range(0, n, step):
            stop = min(start + step, n)
            self._add_part(
                _rows(a, start, stop, -2),
                _rows(b, start, stop, -2),
                None if left_out is None else _rows(left_out, start, stop, -1),
                first_row + start,
            )

    def _add_part(
        self, a: torch.Tensor, b: torch.Tensor, left_out: torch.Tensor | None, first_row: int
    ) -> None:
        """`add` for one part of a block, whose rows start at query row `first_row`."""
        shape = np.broadcast_shapes(tuple(a.shape), tuple(b.shape))
        if left_out is not None and bool(left_out.expand(shape[:-1]).all()):
            return  # every row of this part left out
        # |a - b| in float64 (`a` widened exactly): NaN where either is, or both are infinite
        gap = self._buffer(0, shape)
        if a.dtype == torch.float64:
            torch.sub(a, b, out=gap)
        else:  # widened into the buffer first: a mixed subtraction widens `a` into a new tensor
            gap.copy_(a).sub_(b)
        gap.abs_()
        # the largest |a - b| from the rows' (NaN when any is), those left out counting as 0
        row_gap = gap.amax(dim=-1)
        if left_out is not None:
            row_gap.masked_fill_(left_out, 0.0)
        largest = float(row_gap.max())
        self.max_abs = largest if math.isnan(largest) else max(self.max_abs, largest)
        # atol + rtol * |b| in this order of rounding, and the share of it each |a - b| uses, in
        # place: |a - b| is not needed whole again (the worst element's is computed again below).
        allowed = torch.abs(b, out=self._buffer(1, tuple(b.shape))).mul_(self.rtol).add_(self.atol)
        share = gap.div_(allowed)
        finite = math.isfinite(largest)
        # The first largest in row-major order: the first row holding the largest, then its first
        # column there (a flat argmax takes ten times as long). A NaN, or an infinity on one side,
        # is infinitely far (inf / inf too): the rows' maxima say so, and the worst row's shares.
        row_max = share.amax(dim=-1)  # (..., n)
        if not finite:
            row_max.nan_to_num_(nan=math.inf, posinf=math.inf)
        if left_out is not None:
            row_max.masked_fill_(left_out, -math.inf)
        # NumPy's unravel_index: torch's imports sympy on first use (about half a second)
        row = tuple(int(i) for i in np.unravel_index(int(row_max.argmax()), tuple(row_max.shape)))
        shares = share[row] if finite else share[row].nan_to_num(nan=math.inf, posinf=math.inf)
        local = (*row, int(shares.argmax()))
        value = float(shares[local[-1]])
        # gap > allowed makes gap / allowed > 1 before rounding, so >= 1 after: below 1, all are
        # inside, and the count (with |a - b| again) is only needed at 1 or more.
        if value >= 1.0:
            inside = torch.sub(a, b).abs_() <= allowed
            if not finite:
                inside &= share.nan_to_num_(nan=math.inf, posinf=math.inf) != math.inf
            if left_out is not None:
                inside.masked_fill_(left_out.unsqueeze(-1), True)
            self.outside += inside.numel() - int(inside.sum())
        position = (*local[:-2], local[-2] + first_row, local[-1])
        # Ties go to the first in row-major order of the whole, as a whole-matrix argmax gives them:
        # a later part's element comes first when its matrix does.
        if value > self.worst_share or (value == self.worst_share and position < self.worst_index):
            self.worst_share, self.worst_index = value, position
            # |a - b| and atol + rtol * |b| there, as above: float64 operations, in the same order
            here, there = float(a.expand(shape)[local]), float(b.expand(shape)[local])
            self.worst_abs = abs(here - there)
            self.worst_allowed = abs(there) * self.rtol + self.atol

    def _buffer(self, which: int, shape: tuple[int, ...]) -> torch.Tensor:
        """Buffer `which`, viewed as `shape`: grown when a part needs more."""
        size = math.prod(shape)
        if self._buffers[which].numel() < size:
            self._buffers[which] = torch.empty(size, dtype=torch.float64)
        return self._buffers[which][:size].view(shape)

    def result(self) -> ReferenceCheck:
        return ReferenceCheck(
            tensor=self.tensor,
            reference=self.reference,
            against=self.against,
            max_abs=self.max_abs,
            worst_index=self.worst_index,
            worst_abs=self.worst_abs,
            worst_allowed=self.worst_allowed,
            outside=self.outside,
            compared=self.compared,
            rtol=self.rtol,
            atol=self.atol,
        )


def _rows(t: torch.Tensor, start: int, stop: int, axis: int) -> torch.Tensor:
    """Rows start:stop of `t` along `axis` (-2 for values, -1 for row flags), unless it broadcasts
    along that axis."""
    if t.ndim < -axis or t.shape[axis] == 1:
        return t
    return t[..., start:stop, :] if axis == -2 else t[..., start:stop]


def float64_blocks(problem: Prepared, block_rows: int) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """(first row, weights, output) of each block of `block_rows` query rows, in float64 on the CPU,
    the plain way: weights (..., n, Lk), output with the heads apart (..., H, n, Dv/H); fully masked
    rows are 0."""
    q, k, v = (t.detach().to("cpu", torch.float64) for t in (problem.query, problem.key, problem.value))
    if problem.group > 1:
        k = k.repeat_interleave(problem.group, dim=-3)  # query head h reads key/value head h // group
        v = v.repeat_interleave(problem.group, dim=-3)
    *lead, lq, lk = problem.weights_shape
    key_t = k.transpose(-2, -1).contiguous()  # (..., d, Lk): the products run faster on it
    mask = None if problem.mask is None else problem.mask.detach().cpu()
    mask_rows = mask is not None and mask.ndim >= 2 and mask.shape[-2] > 1
    keys = torch.arange(lk)
    for start in range(0, max(lq, 1), block_rows):  # one block of no rows when there are none
        stop = min(start + block_rows, lq)
        scores = torch.matmul(q[..., start:stop, :], key_t).mul_(problem.scale)  # (..., n, Lk)
        scores = scores.expand(*lead, stop - start, lk).contiguous()  # a mask may add batch axes
        if mask is not None:
            part = mask[..., start:stop, :] if mask_rows else mask
            if part.dtype == torch.bool:
                scores.masked_fill_(~part, -math.inf)
            else:
                scores.add_(part.to(torch.float64))
        if problem.causal:  # query i sees keys j <= i
            scores.masked_fill_(keys > torch.arange(start, stop).unsqueeze(-1), -math.inf)
        if mask is not None or problem.causal:
            dead = (scores == -math.inf).all(dim=-1, keepdim=True)
            weights = torch.softmax(scores.masked_fill_(dead, 0.0), dim=-1).masked_fill_(dead, 0.0)
        else:
            weights = torch.softmax(scores, dim=-1)
        del scores
        yield start, weights, torch.matmul(weights, v)  # (..., n, Lk) @ (..., Lk, Dv) -> (..., n, Dv)


def float64_reference(problem: Prepared) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights and output (heads apart) in float64 on the CPU, the plain way; fully masked rows are 0:
    the one-block case of `float64_blocks`."""
    ((_, weights, output),) = float64_blocks(problem, max(problem.weights_shape[-2], 1))
    return weights, output
