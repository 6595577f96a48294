"""The example attncli grew from: a tutorial's `self_attention` and its 3-position sample.

`attn demo` shows this function's source, runs it, and runs attncli's core on the same sample,
so the first thing a user sees is the textbook formula and attncli agreeing with it.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # imported when the tutorial's own code runs (`run_tutorial`): `attn demo` needs no torch
    import torch
    import torch.nn.functional as F  # noqa: N812 - the tutorial's spelling

# Batch 1, 3 positions, 4 features; the tutorial uses the query as the key too.
SAMPLE_QUERY = [[[1.0, 0.0, 1.0, 0.0], [0.0, 2.0, 0.0, 2.0], [1.0, 1.0, 1.0, 1.0]]]
SAMPLE_KEY = SAMPLE_QUERY
SAMPLE_VALUE = [[[0.0, 1.0, 0.0, 1.0], [1.0, 0.0, 1.0, 0.0], [0.0, 0.0, 1.0, 1.0]]]


def self_attention(query, key, value):  # type: ignore[no-untyped-def]  # the tutorial's code, verbatim
    scores = torch.matmul(query, key.transpose(-2, -1)) / (query.size(-1) ** 0.5)
    weights = F.softmax(scores, dim=-1)
    output = torch.matmul(weights, value)
    return output, weights


def tutorial_source() -> str:
    return inspect.getsource(self_attention).replace(
        "  # type: ignore[no-untyped-def]  # the tutorial's code, verbatim", ""
    )


def sample_source() -> str:
    """The sample as the tutorial writes it."""

    def rows(tensor: list[list[list[float]]], indent: int) -> str:
        lines = ["[" + ", ".join(f"{x:g}." for x in row) + "]" for row in tensor[0]]
        return (",\n" + " " * indent).join(lines)

    return (
        f"query = torch.tensor([[{rows(SAMPLE_QUERY, 23)}]])\n"
        "key = query.clone()\n"
        f"value = torch.tensor([[{rows(SAMPLE_VALUE, 23)}]])"
    )


def run_tutorial(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The tutorial's `self_attention` itself, with torch imported under the names it uses."""
    import torch
    import torch.nn.functional as F  # noqa: N812

    globals().update(torch=torch, F=F)
    output, weights = self_attention(query, key, value)  # type: ignore[no-untyped-call]
    return output, weights


def tutorial_in_numpy(query: np.ndarray, key: np.ndarray, value: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The tutorial's `self_attention`, step for step in NumPy (what `attn demo` compares attncli
    with, without importing torch): the same product, division and softmax, which subtracts each
    row's largest score first, as torch's does."""
    scores = np.matmul(query, key.swapaxes(-2, -1)) / (query.shape[-1] ** 0.5)
    exp = np.exp(scores - scores.max(axis=-1, keepdims=True))
    weights = exp / exp.sum(axis=-1, keepdims=True)
    output = np.matmul(weights, value)
    return output, weights


def sample_tensors() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    import torch

    return torch.tensor(SAMPLE_QUERY), torch.tensor(SAMPLE_KEY), torch.tensor(SAMPLE_VALUE)


def sample_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The sample as float32 NumPy arrays: the values of `sample_tensors`."""
    return tuple(np.array(x, dtype=np.float32) for x in (SAMPLE_QUERY, SAMPLE_KEY, SAMPLE_VALUE))  # type: ignore[return-value]
