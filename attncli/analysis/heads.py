"""Scores of attention heads: what each head does, one number per head, from its weights.

For a weight matrix W (Lq x Lk), query i is aligned with key a(i) = i + Lk - Lq (the alignment of
`--causal`: the last query with the last key). Per query row:

- `self`: W[i, a(i)]; `previous`: W[i, a(i) - 1], for rows with a(i) >= 1;
- `duplicate`: the sum of W[i, j] over open keys j < a(i) whose token is query i's token, for rows
  that have such a key; `induction`: the sum of W[i, j] over open keys 1 <= j <= a(i) whose
  preceding token (j - 1) is query i's token, for rows that have such a key (both need tokens);

and, from `analysis.rows.row_stats`, `entropy` (nats), `sink` (W[i, 0]) and `distance`. A head's
score is the mean of a figure over the query rows that count: real tokens (not padding), not every
key masked, the figure defined. `pattern_rows` works on one block of rows (a consumer of computed
blocks, compute/sinks.py); `head_means` takes the rows of every block. No I/O, no printing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from attncli.analysis import PATTERN_NAMES, SCORE_NAMES, SCORE_WORDS, TOKEN_SCORES

if TYPE_CHECKING:
    from attncli.analysis.rows import MaskedWeights

__all__ = [
    "PATTERN_NAMES",
    "SCORE_NAMES",
    "SCORE_WORDS",
    "TOKEN_SCORES",
    "head_means",
    "head_scores",
    "pattern_rows",
    "rollout",
    "token_ids",
]


def pattern_rows(
    weights: torch.Tensor,
    blocked: torch.Tensor | None,
    *,
    row_offset: int,
    queries: int,
    query_ids: torch.Tensor | None = None,
    key_ids: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """`self`, `previous` and, with token ids, `duplicate` and `induction` of each row of `weights`
    (..., n, Lk): rows row_offset.. of matrices with `queries` query rows. NaN where a figure is not
    defined for a row. `blocked` (bool, True = masked) broadcasts to the weights; `query_ids`
    (..., Lq) and `key_ids` (..., Lk) are integer token ids (>= 0) broadcasting to the weights'
    leading axes. Computed in float64 for float64 weights, else float32."""
    *lead, n, keys = weights.shape
    device = weights.device
    dtype = torch.float64 if weights.dtype == torch.float64 else torch.float32
    w = weights.to(dtype)
    aligned = torch.arange(row_offset, row_offset + n, device=device) + (keys - queries)  # (n,): a(i)
    nan = torch.tensor(math.nan, dtype=dtype, device=device)

    def at(column: torch.Tensor) -> torch.Tensor:
        """W[..., i, column[i]], NaN where column[i] is not a key."""
        inside = (column >= 0) & (column < keys)
        index = column.clamp(0, max(keys - 1, 0)).expand(*lead, n).unsqueeze(-1)  # (..., n, 1)
        return w.gather(-1, index).squeeze(-1).where(inside, nan)

    rows = {"self": at(aligned), "previous": at(aligned - 1)}
    if query_ids is None or key_ids is None:
        return rows
    key_axis = torch.arange(keys, device=device)
    query_tokens = query_ids[..., row_offset : row_offset + n].unsqueeze(-1)  # (..., n, 1)
    # the token before each key; key 0 has none (-1 matches no token)
    preceding = torch.cat([torch.full_like(key_ids[..., :1], -1), key_ids[..., :-1]], dim=-1)
    is_open = torch.ones((), dtype=torch.bool, device=device) if blocked is None else ~blocked
    matches = {
        "duplicate": (key_ids.unsqueeze(-2) == query_tokens) & (key_axis < aligned.unsqueeze(-1)),
        "induction": (preceding.unsqueeze(-2) == query_tokens)
        & (key_axis <= aligned.unsqueeze(-1))
        & (key_axis >= 1),
    }
    for name, match in matches.items():
        chosen = (match & is_open).expand(*lead, n, keys)  # (..., n, Lk)
        total = (w * chosen).sum(dim=-1)
        rows[name] = total.where(chosen.any(dim=-1), nan)
    return rows


def head_means(rows: Mapping[str, np.ndarray], counted: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Each figure's mean over the query rows (the last axis) that are `counted` (bool,
    broadcasting to the rows; None: all) and where it is defined (finite); NaN for a head with no
    such row. Summed in float64."""
    means = {}
    for name, values in rows.items():
        values = np.asarray(values, dtype=np.float64)
        use = np.isfinite(values)
        if counted is not None:
            use &= np.broadcast_to(counted, values.shape)
        count = use.sum(axis=-1)
        total = np.where(use, values, 0.0).sum(axis=-1)
        with np.errstate(invalid="ignore", divide="ignore"):
            means[name] = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    return means


def token_ids(tokens: list[list[str]]) -> np.ndarray:
    """Tokens (per batch entry, per position) as int64 ids, equal ids for equal strings: (B, L)."""
    vocabulary: dict[str, int] = {}
    return np.array([[vocabulary.setdefault(token, len(vocabulary)) for token in row] for row in tokens])


def rollout(layer_weights: list[np.ndarray]) -> np.ndarray:
    """Attention rollout (Abnar & Zuidema 2020) of one text: each layer's weights (heads, L, L)
    averaged over heads, plus the identity, halved, rows renormalised; the product from the first
    layer to the last, R = A_L ... A_2 A_1, in float64: (L, L), each row summing to 1."""
    result: np.ndarray | None = None
    for weights in layer_weights:
        mean = np.asarray(weights, dtype=np.float64).mean(axis=0)  # (heads, L, L) -> (L, L)
        mixed = 0.5 * (mean + np.eye(mean.shape[-1]))
        mixed /= mixed.sum(axis=-1, keepdims=True)
        result = mixed if result is None else mixed @ result
    if result is None:
        raise ValueError("rollout needs at least one layer")
    return result


def head_scores(
    result: MaskedWeights,
    tokens: Sequence[str] | Sequence[Sequence[str]] | None = None,
    counted: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Every head score of an `AttentionResult` (its weights kept, as `attention` keeps them), as
    `attn heads` gives them: each (...) of the weights' leading axes (batch and heads), the mean over
    the query rows that are not fully masked (and `counted`, bool broadcasting to (..., Lq), e.g.
    False for padding) of each row's figure; its mask and causal flag are the masked keys.
    `tokens` (one list of the positions' tokens, or one per batch entry) add `duplicate` and
    `induction` (self-attention only: as many queries as keys)."""
    from attncli.analysis.rows import row_stats, weights_and_blocked

    weights, blocked = weights_and_blocked(result, None)
    shut = None if blocked is None else torch.as_tensor(np.asarray(blocked), device=weights.device)
    *lead, lq, lk = weights.shape
    ids = None
    if tokens is not None and lq == lk:
        rows_of_tokens = (
            [[str(t) for t in tokens]]
            if tokens and isinstance(tokens[0], str)
            else [[str(t) for t in row] for row in tokens]
        )
        array = torch.as_tensor(token_ids(rows_of_tokens), device=weights.device)  # (B or 1, L)
        ids = array.reshape(array.shape[0], *([1] * max(len(lead) - 1, 0)), lq) if lead else array[0]
    stats = row_stats(weights, shut)
    rows = {name: getattr(stats, name) for name in ("entropy", "sink", "distance")}
    rows |= pattern_rows(weights, shut, row_offset=0, queries=lq, query_ids=ids, key_ids=ids)
    live: np.ndarray | None = None
    if shut is not None:
        live = np.asarray(~np.broadcast_to(shut.cpu().numpy(), weights.shape).all(axis=-1))
    if counted is not None:
        live = counted if live is None else live & counted
    figures = {name: values.detach().cpu().double().numpy() for name, values in rows.items()}
    return head_means(figures, live)
