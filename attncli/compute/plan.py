"""Planning a run: whole (one block of every row), in blocks, or fused, and the block size.

The command line parses its options into a `Request`; `plan` decides from it and the problem's size
against the memory budget (by default half the memory available now). No I/O but reading
/proc/meminfo, no printing.
"""

from __future__ import annotations

from dataclasses import dataclass

from attncli.compute.prepare import Prepared
from attncli.compute.run import choose_block_rows, full_weights_bytes
from attncli.errors import UsageError
from attncli.io.source import available_memory
from attncli.selection import size_text

#: Full weights larger than this are computed in blocks when nothing needs them whole.
STREAM_ABOVE = 256 << 20


@dataclass(frozen=True)
class Request:
    """What a command asks of a computation, as far as planning goes."""

    memory_limit: int | None = None  # bytes the full weights may take; None: half what is available
    blocks: bool = False  # --stream, or --weights-to (the weights go to a file block by block)
    as_text: bool = False  # the weights go out as JSON text: --format json, -o FILE.json
    check: bool = False  # --check: compares the whole weights
    full_table: bool = False  # a --full table is shown: every weight
    output_only: bool = False  # nothing made of the weights is shown or kept
    stats: bool = False  # per-row statistics (a second buffer for the scores in a whole run)

    @property
    def needs_weights(self) -> bool:
        """Something needs the whole weights at once."""
        return self.as_text or self.check or self.full_table


@dataclass(frozen=True)
class Plan:
    """`method`: "whole" (one block of every row, the weights kept), "blocks" (`block_rows` rows at a
    time, the weights never whole) or "fused" (the output alone, by scaled_dot_product_attention)."""

    method: str
    block_rows: int | None = None


def plan(problem: Prepared, request: Request) -> Plan:
    """Whole when the weights fit the budget and (past STREAM_ABOVE) something needs them whole;
    otherwise in blocks sized to the budget, fused when only the output is wanted."""
    limit = available_memory() // 2 if request.memory_limit is None else request.memory_limit
    size = full_weights_bytes(problem, scores=request.stats)
    whole = not request.blocks and size <= limit
    if whole and (size <= STREAM_ABOVE or request.needs_weights):
        return Plan("whole")
    if request.check:
        raise UsageError(
            "--check compares the full weights, which a blocked computation does not keep; "
            "drop --stream/--weights-to or raise --memory-limit"
        )
    if request.as_text and not request.blocks:  # with --stream, JSON holds all but the weights
        raise UsageError(
            f"the weights ({size_text(size)}) do not fit the memory limit ({size_text(limit)}), and "
            "--format json and -o FILE.json write them whole, as text; use -o FILE.safetensors or "
            "FILE.npz (written block by block), --stream for JSON without the weights, or raise "
            "--memory-limit"
        )
    if request.full_table:
        raise UsageError(
            "--full shows every weight, which a blocked computation does not keep; "
            "use --view heatmap, or drop --stream/--weights-to, or raise --memory-limit"
        )
    block_rows = choose_block_rows(problem, limit)
    return Plan("fused" if request.output_only else "blocks", block_rows)
