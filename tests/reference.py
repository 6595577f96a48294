"""An independent float64 NumPy reference for attention, written from the formula alone.

It shares no code with attncli.compute: its own broadcasting, head splitting, grouping, masking and
softmax (with the row maximum subtracted), so the tests compare two implementations, not one.
"""

from __future__ import annotations

import numpy as np


def reference_attention(
    query: np.ndarray,
    key: np.ndarray,
    value: np.ndarray,
    *,
    scale: float | None = None,
    mask: np.ndarray | None = None,
    causal: bool = False,
    heads: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(weights, output) in float64; rows whose every key is masked get zero weights."""
    q, k, v = (np.atleast_2d(np.asarray(x, dtype=np.float64)) for x in (query, key, value))
    if heads is not None:
        q, k, v = (_split(x, heads) for x in (q, k, v))
    if q.ndim >= 4 and k.ndim >= 4 and q.shape[-3] != k.shape[-3] and k.shape[-3] > 1:
        group = q.shape[-3] // k.shape[-3]
        k = np.repeat(k, group, axis=-3)  # query head h reads key/value head h // group
        v = np.repeat(v, group, axis=-3)
    if scale is None:
        scale = 1.0 / np.sqrt(k.shape[-1])
    scores = np.einsum("...qd,...kd->...qk", q, k) * scale
    allowed = np.ones(scores.shape[-2:], dtype=bool)
    if causal:
        allowed = np.tril(allowed)
    additive = np.zeros(scores.shape[-2:])
    if mask is not None:
        mask = np.asarray(mask)
        if mask.dtype == bool:
            allowed = allowed & mask
        else:
            additive = additive + mask.astype(np.float64)
    scores, allowed, additive = np.broadcast_arrays(scores, allowed, additive)
    scores = np.where(allowed, scores + additive, -np.inf)
    weights = np.zeros_like(scores)
    live = np.isfinite(scores).any(axis=-1)
    row_max = np.where(live, np.max(np.where(np.isfinite(scores), scores, -np.inf), axis=-1), 0.0)
    exp = np.where(np.isfinite(scores), np.exp(scores - row_max[..., None]), 0.0)
    total = exp.sum(axis=-1, keepdims=True)
    weights = np.divide(exp, total, out=weights, where=total > 0)
    output = np.einsum("...qk,...kd->...qd", weights, v)
    if heads is not None:
        output = np.moveaxis(output, -3, -2)  # (..., H, L, Dv/H) -> (..., L, H, Dv/H)
        output = output.reshape(*output.shape[:-2], -1)
    return weights, output


def _split(x: np.ndarray, heads: int) -> np.ndarray:
    # (..., L, D) -> (..., L, H, D/H) -> (..., H, L, D/H)
    return np.moveaxis(x.reshape(*x.shape[:-1], heads, x.shape[-1] // heads), -2, -3)
