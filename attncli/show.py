"""The view `attn compute` draws, of weights held whole: arrays from a script, a debugger or a test.

Drawn as every run's view is: the weights go once through the consumers a computation feeds (the
table's cells and figures, the pooled picture, the row statistics), then `present.tables.result_view`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from rich.console import Group

from attncli.present.options import ViewOptions


def weights_view(
    weights: np.ndarray,
    output: np.ndarray,
    meta: Mapping[str, Any],
    options: ViewOptions | None = None,
    blocked: np.ndarray | None = None,
    analysis: Mapping[str, np.ndarray] | None = None,
) -> Group:
    """The view of `weights` (..., Lq, Lk) and `output` (..., Lq, Dv) described by `meta` (as
    `compute.describe` gives it). `blocked` (bool, True = masked, broadcastable to the weights) marks
    masked keys; their weights count as 0. `analysis` may hold statistics and top-k to show."""
    import torch

    from attncli.analysis.rows import row_entropy
    from attncli.compute.sinks import PictureSink, TableSink
    from attncli.present import tables

    options = options or ViewOptions()
    values = np.asarray(weights)
    if values.dtype != np.float64:
        values = values.astype(np.float32)
    shape = tuple(values.shape)
    lq, lk = shape[-2:]
    matrix = torch.from_numpy(np.ascontiguousarray(values))  # (..., Lq, Lk)
    shut = None if blocked is None else torch.from_numpy(np.broadcast_to(blocked, shape).copy())
    masked_rows = None if shut is None else shut.all(dim=-1)  # (..., Lq)
    if shut is not None:
        matrix = matrix.masked_fill(shut, 0.0)
    size, (rows, cols) = tables.kept_views((lq, lk), options)
    table = TableSink(shape, rows, cols, matrix.dtype, matrix.device)
    table.keep(0, matrix, shut, masked_rows)
    pictures, blocks = None, (1, 1)
    if size is not None:
        picture = PictureSink(shape, size, matrix.device)
        picture.pool(0, matrix, shut)
        largest, mean = picture.arrays()
        pictures, blocks = (largest if options.pool == "max" else mean), picture.blocks
    entropy = row_entropy(matrix, shut).double().numpy()
    return tables.result_view(
        np.asarray(output),
        {**meta, "weights_shape": list(shape)},
        options,
        table.kept(),
        entropy,
        analysis=analysis,
        pictures=pictures,
        picture_blocks=blocks,
    )
