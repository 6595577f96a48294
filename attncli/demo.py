"""The example attncli grew from: a tutorial's `self_attention` and its 3-position sample.

`attn demo` shows this function's source, runs it, and runs attncli's core on the same sample,
so the first thing a user sees is the textbook formula and attncli agreeing with it.
"""

from __future__ import annotations

import inspect

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


def sample_tensors() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return torch.tensor(SAMPLE_QUERY), torch.tensor(SAMPLE_KEY), torch.tensor(SAMPLE_VALUE)
