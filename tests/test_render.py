"""Rendering: golden files at a fixed width with colour off, cropping of large matrices, styles."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from reference import reference_attention
from rich.console import Console

from attncli.render import output_table, result_view, visible_indices, weight_table

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"  # UPDATE_GOLDEN=1 pytest tests/test_render.py rewrites them


def render(renderable, width: int = 80, colour: bool = False) -> str:
    console = Console(
        file=io.StringIO(),
        width=width,
        force_terminal=colour,
        color_system="truecolor" if colour else None,
        highlight=False,
    )
    console.print(renderable)
    return console.file.getvalue()


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if UPDATE or not path.exists():
        path.write_text(text)
    assert text == path.read_text()


def seed_meta(weights: np.ndarray, output: np.ndarray) -> dict:
    return {
        "scale": 0.5,
        "causal": False,
        "heads": None,
        "dtype": "float64",
        "device": "cpu",
        "input_shapes": {"query": [3, 4], "key": [3, 4], "value": [3, 4]},
        "sources": {"query": "q.npy", "key": "k.npy", "value": "v.npy"},
        "weights_axes": ["query", "key"],
    }


def seed_result() -> tuple[np.ndarray, np.ndarray]:
    query = np.array([[1.0, 0, 1, 0], [0, 2, 0, 2], [1, 1, 1, 1]])
    value = np.array([[0.0, 1, 0, 1], [1, 0, 1, 0], [0, 0, 1, 1]])
    return reference_attention(query, query, value)


def test_seed_view_matches_golden():
    weights, output = seed_result()
    check_golden("seed_view.txt", render(result_view(weights, output, seed_meta(weights, output))))


def test_batched_heads_titles_and_the_matrix_limit_match_golden():
    rng = np.random.default_rng(3)
    scores = rng.standard_normal((2, 5, 4, 4))
    weights = np.exp(scores) / np.exp(scores).sum(-1, keepdims=True)
    output = rng.standard_normal((2, 5, 4, 2))
    meta = {
        **seed_meta(weights, output),
        "weights_axes": ["batch", "head", "query", "key"],
        "input_shapes": {"query": [2, 5, 4, 2], "key": [2, 5, 4, 2], "value": [2, 5, 4, 2]},
    }
    text = render(result_view(weights, output, meta, precision=2, max_matrices=3))
    check_golden("heads_view.txt", text)
    assert "weights[0, 2] (batch 0, head 2)  4×4" in text
    assert "7 more weights matrices not shown" in text


def test_every_number_shown_is_the_value_rounded():
    weights, output = seed_result()
    text = render(result_view(weights, output, seed_meta(weights, output), precision=3))
    for number in (*weights.ravel(), *output.ravel()):
        assert f"{number:.3f}" in text


def test_visible_indices_keep_first_and_last():
    assert visible_indices(5, 8) == [0, 1, 2, 3, 4]
    assert visible_indices(100, 7) == [0, 1, 2, None, 97, 98, 99]
    assert visible_indices(100, 8) == [0, 1, 2, 3, None, 97, 98, 99]


@pytest.mark.parametrize("width", [60, 120])
def test_a_2048_square_matrix_fits_the_width_and_a_bounded_number_of_lines(width):
    weights = np.full((2048, 2048), 1 / 2048)
    text = render(weight_table(weights, width=width, title="weights"), width=width)
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= width
    assert len(lines) < 40
    assert "2047" in text
    assert "…" in text
    assert "(showing 31 rows × " in text  # 31 rows and the ellipsis row


def test_row_maximum_is_bold():
    table = weight_table(np.array([[0.1, 0.9], [0.7, 0.3]])).renderables[1]
    bold = [[bool(table.columns[c + 1]._cells[r].style.bold) for c in range(2)] for r in range(2)]
    assert bold == [[False, True], [True, False]]


def cell_background(group, row: int = 0, column: int = 0) -> tuple[int, int, int]:
    """The background colour of one value cell of a table made by weight_table/output_table."""
    table = group.renderables[1]
    text = table.columns[column + 1]._cells[row]  # column 0 holds the row labels
    triplet = text.style.bgcolor.triplet
    return (triplet.red, triplet.green, triplet.blue)


def test_output_colours_are_symmetric_around_zero():
    assert cell_background(output_table(np.array([[1.0]]), 1.0)) == (103, 0, 31)  # dark red at +limit
    assert cell_background(output_table(np.array([[-1.0]]), 1.0)) == (5, 48, 97)  # dark blue at -limit
    assert cell_background(output_table(np.array([[0.0]]), 1.0)) == (230, 230, 230)  # grey at zero


def test_weight_colours_use_one_fixed_scale():
    low, high = np.array([[0.0, 1.0]]), np.array([[0.25, 0.5]])
    assert cell_background(weight_table(low), column=0) == (68, 1, 84)  # 0 is always the darkest
    assert cell_background(weight_table(low), column=1) == (253, 231, 37)  # 1 is always the brightest
    # 0.5 is mid-scale whatever else the matrix holds: colours compare across tables
    assert cell_background(weight_table(high), column=1) == (33, 145, 140)
