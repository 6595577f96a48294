"""`--check`: is the weights path the same as the maths and as the fused kernel?

The result of `attend` is compared with two references computed here from the same prepared inputs:
- `scaled_dot_product_attention` on the same device and dtype (the fused kernel people run; it
  returns no weights, so only the outputs are compared);
- a float64 computation on the CPU written the plain way (repeat the key/value heads, matmul,
  scale, mask, softmax), for both weights and output.
Rows whose every key is masked are left out: attncli defines them as zero, the fused kernel as NaN.
Any other NaN, on either side, fails the check.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch

from attncli.compute.prepare import Prepared, broadcast_shapes
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


@dataclass(frozen=True)
class ReferenceCheck:
    """How far one tensor of the result is from a reference."""

    tensor: str  # "weights" or "output"
    reference: str  # what it was compared with
    max_abs: float
    max_rel: float  # |a - b| / |b| where b != 0
    worst_index: tuple[int, ...]  # where |a - b| most exceeds atol + rtol * |b|
    outside: int  # elements outside the tolerance
    compared: int  # elements compared (fully masked rows left out)
    rtol: float
    atol: float

    @property
    def passed(self) -> bool:
        return self.outside == 0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "worst_index": list(self.worst_index), "passed": self.passed}


def check(problem: Prepared, result: AttentionResult) -> list[ReferenceCheck]:
    """Compare `result` (from `attend(problem)`) with the fused kernel and the float64 maths."""
    rtol, atol = TOLERANCES[result.dtype]
    assert result.weights is not None, "--check compares the full weights"
    live = None if result.masked_rows is None else ~result.masked_rows  # (..., [H,] Lq)
    # Outputs are compared with their heads apart, so that the rows line up with `live`.
    output = problem.split_heads(result.output)
    # The kernel in the inputs' own dtype, as people run it (not rounded from float32 as attncli's).
    kernel_output = problem.split_heads(fused(problem, upcast_half=False).output)
    weights64, output64 = float64_reference(problem)
    kernel = (
        f"scaled_dot_product_attention ({str(kernel_output.dtype).removeprefix('torch.')}, "
        f"{kernel_output.device})"
    )
    return [
        compare("output", kernel, output, kernel_output, live, rtol, atol),
        compare("weights", "float64 maths on the CPU", result.weights, weights64, live, rtol, atol),
        compare("output", "float64 maths on the CPU", output, output64, live, rtol, atol),
    ]


def compare(
    tensor: str,
    reference: str,
    actual: torch.Tensor,
    expected: torch.Tensor,
    live_rows: torch.Tensor | None,
    rtol: float,
    atol: float,
) -> ReferenceCheck:
    """`actual` against `expected` (..., rows, cols), over the rows where `live_rows` (..., rows) holds."""
    a = actual.detach().to("cpu", torch.float64)
    b = expected.detach().to("cpu", torch.float64)
    shape = broadcast_shapes(tuple(a.shape), tuple(b.shape))
    a, b = a.expand(shape), b.expand(shape)
    keep = torch.ones(a.shape, dtype=torch.bool)
    if live_rows is not None:
        keep = keep & live_rows.detach().cpu().unsqueeze(-1)
    gap = (a - b).abs()
    excess = torch.where(keep, gap - (atol + rtol * b.abs()), torch.tensor(-math.inf, dtype=torch.float64))
    # A NaN on either side is outside any tolerance (NaN > 0 is false: it would pass unnoticed).
    excess = excess.masked_fill(keep & excess.isnan(), math.inf)
    relative = torch.where(keep & (b != 0), gap / b.abs(), torch.zeros((), dtype=torch.float64))
    compared = int(keep.sum())
    if compared == 0:
        return ReferenceCheck(tensor, reference, 0.0, 0.0, (), 0, 0, rtol, atol)
    worst = int(excess.argmax())
    return ReferenceCheck(
        tensor=tensor,
        reference=reference,
        max_abs=float(torch.where(keep, gap, 0.0).max()),
        max_rel=float(relative.max()),
        worst_index=tuple(int(i) for i in torch.unravel_index(torch.tensor(worst), a.shape)),
        outside=int((excess > 0).sum()),
        compared=compared,
        rtol=rtol,
        atol=atol,
    )


def float64_reference(problem: Prepared) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights and output (heads apart) in float64 on the CPU, the plain way; fully masked rows are 0."""
    q, k, v = (t.detach().to("cpu", torch.float64) for t in (problem.query, problem.key, problem.value))
    if problem.group > 1:
        k = k.repeat_interleave(problem.group, dim=-3)  # query head h reads key/value head h // group
        v = v.repeat_interleave(problem.group, dim=-3)
    scores = (q @ k.transpose(-2, -1)) * problem.scale
    scores = scores.expand(problem.weights_shape).clone()
    if problem.mask is not None:
        mask = problem.mask.detach().cpu()
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, -math.inf)
        else:
            scores = scores + mask.to(torch.float64)
    if problem.causal:
        lq, lk = scores.shape[-2:]
        scores = scores.masked_fill(torch.ones(lq, lk, dtype=torch.bool).triu(1), -math.inf)
    dead = (scores == -math.inf).all(dim=-1, keepdim=True)
    weights = torch.softmax(scores.masked_fill(dead, 0.0), dim=-1).masked_fill(dead, 0.0)
    return weights, weights @ v
