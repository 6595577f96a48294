"""Head scores of a whole capture (layers x heads) or of one computation (batch x heads).

Each layer is computed once, in blocks like any run, with the row statistics and the head-score
figures of `analysis.heads` taken from its blocks by their sinks; a head's score is then the mean
over the query rows that count (`analysis.heads.head_means`). No I/O of its own, no printing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from attncli.analysis.heads import SCORE_NAMES, TOKEN_SCORES, head_means, token_ids
from attncli.compute.prepare import Prepared
from attncli.compute.result import AttentionResult, as_array
from attncli.compute.run import run


@dataclass(frozen=True)
class HeadScores:
    """Scores (rows x heads) by name; a row is a layer of a capture, or a batch entry."""

    row_axis: str  # "layer" or "batch"
    rows: list[str]  # each row's name: the layer's number, or the batch entry's index
    heads: int
    scores: dict[str, np.ndarray]  # name -> float64 (rows, heads), NaN where a head has no such row
    batch: int | None = None  # the text of a capture scored; None: the mean over its texts
    notes: list[str] = field(default_factory=list)


def row_figures(result: AttentionResult) -> dict[str, np.ndarray]:
    """Every per-row figure a head score is the mean of, (..., Lq) float64 NumPy arrays."""
    assert result.stats is not None, "run(stats=True, patterns=True)"
    assert result.patterns is not None, "run(stats=True, patterns=True)"
    figures = {name: as_array(getattr(result.stats, name)) for name in ("entropy", "sink", "distance")}
    figures |= {name: as_array(tensor) for name, tensor in result.patterns.items()}
    return {name: np.asarray(values, dtype=np.float64) for name, values in figures.items()}


def score_problem(
    problem: Prepared, tokens: list[list[str]] | None, real_rows: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """The head scores of every matrix of `problem`, each (...) of the weights' leading axes.

    `tokens` (per batch entry, or one list for all, per position) give the token scores; self-
    attention only (queries and keys are the same tokens). `real_rows` (bool, broadcasting to the
    weights less their key axis) says which query rows are real tokens (not padding)."""
    *lead, lq, lk = problem.weights_shape
    ids = None
    if tokens is not None and lq == lk:
        array = torch.as_tensor(token_ids(tokens), device=problem.query.device)  # (B, L)
        # (B, L) -> (B, 1, ..., L): the token of each position, for every axis after the batch
        shaped = array.reshape(array.shape[0], *([1] * max(len(lead) - 1, 0)), lq) if lead else array[0]
        ids = (shaped, shaped)
    result = run(problem, stats=True, patterns=True, token_ids=ids)
    counted = None if result.masked_rows is None else ~as_array(result.masked_rows)
    if real_rows is not None:
        counted = real_rows if counted is None else counted & real_rows
    return head_means(row_figures(result), counted)


def score_capture(
    layers: Sequence[tuple[int, Prepared]],
    tokens: list[list[str]] | None,
    lengths: list[int] | None,
    batch: int | None,
) -> HeadScores:
    """Layers x heads of a capture: each layer's problem (batch, heads, L, L) scored over the real
    tokens of each text, then of text `batch`, or the mean over the texts (where defined)."""
    rows: list[str] = []
    scores: dict[str, list[np.ndarray]] = {name: [] for name in SCORE_NAMES}
    heads = 0
    for layer, problem in layers:
        *lead, lq, _ = problem.weights_shape
        real = None
        if lengths is not None and len(lead) == 2 and len(lengths) == lead[0]:
            real = np.arange(lq)[None, None, :] < np.asarray(lengths)[:, None, None]  # (B, 1, L)
        means = score_problem(problem, tokens, real)
        heads = lead[-1] if lead else 1
        rows.append(str(layer))
        for name in SCORE_NAMES:
            if name not in means:
                continue
            per_text = means[name].reshape(-1, heads)  # (B, H)
            if batch is not None:
                scores[name].append(per_text[batch])
            else:  # the mean over the texts where the head has the figure
                scores[name].append(head_means({name: per_text.T})[name])
    notes = []
    if tokens is None:
        notes.append(f"{' and '.join(TOKEN_SCORES)} need tokens: the file holds none")
    kept = {name: np.array(values) for name, values in scores.items() if len(values) == len(rows)}
    return HeadScores("layer", rows, heads, kept, batch, notes)


def score_matrices(problem: Prepared, tokens: list[list[str]] | None) -> HeadScores:
    """Batch x heads of one computation: its weights' leading axes before the heads as rows."""
    means = score_problem(problem, tokens)
    *lead, _, _ = problem.weights_shape
    axes = problem.describe()["weights_axes"][:-2]
    has_heads = bool(axes) and axes[-1] == "head"
    heads = lead[-1] if has_heads else 1
    batch_shape = lead[:-1] if has_heads else lead
    entries = math.prod(batch_shape)
    names = [",".join(map(str, index)) for index in np.ndindex(*batch_shape)] or ["0"]
    scores = {name: values.reshape(entries, heads) for name, values in means.items()}
    notes = [] if tokens is not None else [f"{' and '.join(TOKEN_SCORES)} need tokens: give --labels"]
    return HeadScores("batch", names, heads, scores, None, notes)


def capture_rollout(layers: Sequence[tuple[int, Prepared]], batch: int, length: int | None) -> np.ndarray:
    """Attention rollout of text `batch` of a capture over `layers` (in order), over its first
    `length` positions (its real tokens; None: all): `analysis.heads.rollout` of each layer's
    weights (batch, heads, L, L), computed once as one block. (L, L) float64."""
    from attncli.analysis.heads import rollout
    from attncli.compute.run import attend
    from attncli.errors import ShapeError

    per_layer = []
    for layer, problem in layers:
        *lead, lq, lk = problem.weights_shape
        if lq != lk:
            raise ShapeError(
                f"layer {layer} has {lq} queries and {lk} keys; rollout multiplies layers' weights, "
                "which needs as many queries as keys"
            )
        kept = attend(problem).weights
        assert kept is not None, "attend keeps the weights"
        weights = as_array(kept)
        per_text = weights.reshape(-1, *weights.shape[-3:]) if len(lead) >= 2 else weights[None]
        shown = per_text[batch][..., :length, :length] if length is not None else per_text[batch]
        per_layer.append(shown if shown.ndim == 3 else shown[None])  # (heads, L, L)
    return rollout(per_layer)
