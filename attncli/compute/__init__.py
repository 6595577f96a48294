"""Computing attention: prepare a problem, run it as blocks of query rows, feed the blocks to sinks.

`attention(query, key, value, ...)` is the whole computation (one block of every row, keeping the
weights); `run` computes in blocks of any size, keeping what its caller asks for; `fused` gives the
output alone by `scaled_dot_product_attention`. See docs/design.md for the flow.
"""

from typing import Any

from attncli.compute.prepare import (
    Prepared,
    TensorLike,
    blocked_keys,
    broadcast_shapes,
    causal_hidden,
    check_scale,
    heads_note,
    prepare,
    resolve_device,
    resolve_dtype,
    settings,
)
from attncli.compute.result import (
    AttentionResult,
    KeptTable,
    bfloat16_arrays,
    describe,
    masked_positions,
    result_arrays,
)
from attncli.compute.run import (
    BLOCK_OVERHEAD,
    MAX_BLOCK_BYTES,
    attend,
    attention,
    choose_block_rows,
    full_weights_bytes,
    fused,
    run,
)

__all__ = [
    "BLOCK_OVERHEAD",
    "DTYPES",
    "HALF_DTYPES",
    "MAX_BLOCK_BYTES",
    "AttentionResult",
    "KeptTable",
    "Prepared",
    "TensorLike",
    "attend",
    "attention",
    "bfloat16_arrays",
    "blocked_keys",
    "broadcast_shapes",
    "causal_hidden",
    "check_scale",
    "choose_block_rows",
    "describe",
    "full_weights_bytes",
    "fused",
    "heads_note",
    "masked_positions",
    "prepare",
    "resolve_device",
    "resolve_dtype",
    "result_arrays",
    "run",
    "settings",
]


def __getattr__(name: str) -> Any:
    # torch's dtypes, made on first use: the NumPy kernel never imports torch
    if name in ("DTYPES", "HALF_DTYPES"):
        from attncli.compute import prepare as preparing

        return getattr(preparing, name)
    raise AttributeError(f"module 'attncli.compute' has no attribute {name!r}")
