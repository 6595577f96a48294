"""Which kernel computes a problem: the one place it is chosen.

The torch kernel (`compute.blocks._block`) computes anything: every dtype, the CPU and CUDA, runs in
blocks, the fused output (`run.fused`) and `--check`. The NumPy kernel (`compute.numpy_kernel`)
computes small float32 and float64 problems on the CPU in one block, with the same sinks and result,
and never imports torch, whose import (1.8-2 s) is nearly all of such a run. No I/O, no printing.
"""

from __future__ import annotations

import math

import numpy as np

#: The most weights (every matrix, query rows x keys) the NumPy kernel takes: a 2048 x 2048 matrix,
#: 16 MiB in float32. Measured here (causal, --stats, --top-k 3, a heatmap's picture and a table's
#: cells, in-process, best of 3): 1024 positions 0.10 s in NumPy, 0.12 s in torch; 2048: 0.30 s and
#: 0.40 s; 4096: 1.8 s and 1.6 s, as long as importing torch (1.5-2.1 s) itself. Up to here NumPy
#: costs a fraction of torch's import; past it, the torch kernel's in-place buffers and threads win.
NUMPY_MAX_WEIGHTS = 1 << 22


def choose(
    query_shape: tuple[int, ...],
    key_shape: tuple[int, ...],
    *,
    heads: int | None = None,
    dtype: str = "auto",
    device: str = "cpu",
    whole: bool = True,
    check: bool = False,
) -> str:
    """The kernel of a problem: "numpy" for a small one the NumPy kernel computes, else "torch".
    Given the inputs' shapes as loaded (before heads are split), the --dtype and --device asked for,
    `whole` (nothing asks for blocks: --stream, --weights-to) and `check` (--check compares with
    torch's scaled_dot_product_attention)."""
    if check or not whole or device.strip().lower() != "cpu":
        return "torch"
    if dtype not in ("auto", "float32", "float64"):
        return "torch"  # half precision: the torch kernel rounds as the fused kernels do
    return "numpy" if weights_count(query_shape, key_shape, heads) <= NUMPY_MAX_WEIGHTS else "torch"


def weights_count(query_shape: tuple[int, ...], key_shape: tuple[int, ...], heads: int | None) -> int:
    """About how many weights a problem has: its matrices (the batch axes of query and key, and the
    heads --heads makes) times query rows times keys; a mask's batch axes are left out (they add
    matrices only where the mask is as large itself). Unbroadcastable shapes count as 0: `prepare`
    reports them."""
    query = (1, *query_shape) if len(query_shape) == 1 else query_shape
    key = (1, *key_shape) if len(key_shape) == 1 else key_shape
    try:
        lead = np.broadcast_shapes(query[:-2], key[:-2])
    except ValueError:
        lead = query[:-2]  # grouped-query heads differ on axis -3: the query's are the weights'
    return math.prod(lead) * (heads or 1) * query[-2] * key[-2]
