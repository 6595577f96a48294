"""Planning a run: whole (one block of every row), in blocks, or fused, and the block size.

The command line parses its options into a `Request`; `plan` decides from it and the problem's size
against the memory budget. No I/O but reading the memory available, no printing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from attncli.compute.prepare import Prepared
from attncli.compute.run import choose_block_rows, full_weights_bytes
from attncli.errors import UsageError

#: Full weights larger than this are computed in blocks when nothing needs them whole.
STREAM_ABOVE = 256 << 20


@dataclass(frozen=True)
class Request:
    """What a command asks of a computation, as far as planning goes."""

    memory_limit: int  # bytes the full weights may take
    blocks: bool = False  # --stream, or --weights-to (the weights go to a file block by block)
    needs_weights: bool = False  # something needs the whole weights: JSON, a text file, --full, --check
    check: bool = False  # --check: compares the whole weights
    full_table: bool = False  # a --full table is shown: every weight
    output_only: bool = False  # nothing made of the weights is shown or kept
    stats: bool = False  # per-row statistics (a second buffer for the scores in a whole run)


@dataclass(frozen=True)
class Plan:
    """`method`: "whole" (one block of every row, the weights kept), "blocks" (`block_rows` rows at a
    time, the weights never whole) or "fused" (the output alone, by scaled_dot_product_attention)."""

    method: str
    block_rows: int | None = None


def plan(problem: Prepared, request: Request) -> Plan:
    """Whole when the weights fit the budget and (past STREAM_ABOVE) something needs them whole;
    otherwise in blocks sized to the budget, fused when only the output is wanted."""
    size = full_weights_bytes(problem, scores=request.stats)
    whole = not request.blocks and size <= request.memory_limit
    if whole and (size <= STREAM_ABOVE or request.needs_weights):
        return Plan("whole")
    if request.check:
        raise UsageError(
            "--check compares the full weights, which a blocked computation does not keep; "
            "drop --stream/--weights-to or raise --memory-limit"
        )
    if request.full_table:
        raise UsageError(
            "--full shows every weight, which a blocked computation does not keep; "
            "use --view heatmap, or drop --stream/--weights-to, or raise --memory-limit"
        )
    block_rows = choose_block_rows(problem, request.memory_limit)
    return Plan("fused" if request.output_only else "blocks", block_rows)


def memory_limit(text: str | None) -> int:
    """A size in bytes: '2GiB', '500MB', '1e9'; None: half the memory available now. ValueError
    saying what is wrong otherwise."""
    if text is None:
        return available_memory() // 2
    units = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
    units |= {"kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
    number = text.strip().lower()
    digits = number.rstrip("abcdefghijklmnopqrstuvwxyz ")
    unit = number[len(digits) :].strip()
    try:
        value = float(digits) * units[unit]
    except (KeyError, ValueError):
        raise ValueError(f"{text!r} is not a size; use e.g. 2GiB, 500MB or 1e9") from None
    if not math.isfinite(value) or value < 1:
        raise ValueError(f"{text!r} must be a positive size")
    return int(value)


def available_memory() -> int:
    """MemAvailable from /proc/meminfo (Linux); 4 GiB where it cannot be read."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 * 2**30
