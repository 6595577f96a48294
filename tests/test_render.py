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


def test_row_maximum_is_bold_and_colours_follow_the_value():
    weights = np.array([[0.1, 0.9], [0.7, 0.3]])
    text = render(weight_table(weights, title="w"), colour=True)
    assert "\x1b[1;" in text  # bold cells exist
    # the largest weights sit on the brightest (yellow-green) backgrounds, the small ones on dark purple
    assert text.count("48;2;") == 4


def test_output_colours_are_symmetric_around_zero():
    positive = render(output_table(np.array([[1.0]]), 1.0, title="o"), colour=True)
    negative = render(output_table(np.array([[-1.0]]), 1.0, title="o"), colour=True)
    zero = render(output_table(np.array([[0.0]]), 1.0, title="o"), colour=True)
    assert "48;2;103;0;31" in positive  # dark red at +limit
    assert "48;2;5;48;97" in negative  # dark blue at -limit
    assert "48;2;230;230;230" in zero  # grey at zero
