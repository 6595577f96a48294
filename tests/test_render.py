"""Rendering: golden files at a fixed width with colour off, cropping of large matrices, styles."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from reference import reference_attention
from rich.console import Console, Group
from rich.style import Style
from rich.text import Text

from attncli.display import weights_view
from attncli.present.options import ViewOptions
from attncli.present.tables import output_table, visible_indices, weight_table

GOLDEN = Path(__file__).parent / "golden"
# ATTNCLI_UPDATE_GOLDEN=1 pytest tests/test_render.py writes the golden files anew, on purpose; without
# it a golden file that is missing fails its test.
UPDATE = os.environ.get("ATTNCLI_UPDATE_GOLDEN") == "1"


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
    if UPDATE:
        path.write_text(text)
    assert path.exists(), f"{path} is missing: ATTNCLI_UPDATE_GOLDEN=1 writes it"
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
    check_golden("seed_view.txt", render(weights_view(weights, output, seed_meta(weights, output))))


def test_batched_heads_titles_and_the_matrix_limit_match_golden():
    rng = np.random.default_rng(3)
    scores = rng.standard_normal((2, 5, 4, 4))
    weights = np.exp(scores) / np.exp(scores).sum(-1, keepdims=True)
    # Multiples of 2^-12, the last key taking the rest: every row sums to exactly 1 on any CPU (the
    # title's rowsum figure would otherwise show how this machine's exp and sum round).
    weights = np.round(weights * 4096) / 4096
    weights[..., -1] = 1 - weights[..., :-1].sum(-1)
    output = rng.standard_normal((2, 5, 4, 2))
    meta = {
        **seed_meta(weights, output),
        "weights_axes": ["batch", "head", "query", "key"],
        "input_shapes": {"query": [2, 5, 4, 2], "key": [2, 5, 4, 2], "value": [2, 5, 4, 2]},
    }
    text = render(weights_view(weights, output, meta, ViewOptions(precision=2, max_matrices=3)))
    check_golden("heads_view.txt", text)
    assert "weights[0, 2] (batch 0, head 2)  4×4  float64\nmin=0.0173 max=0.815" in text  # between items
    assert "7 more weights matrices not shown" in text
    assert "--batch I --head H (e.g. 0:4 or 1,3)" in text


def test_every_number_shown_is_the_value_rounded():
    weights, output = seed_result()
    text = render(weights_view(weights, output, seed_meta(weights, output), ViewOptions(precision=3)))
    for number in (*weights.ravel(), *output.ravel()):
        assert f"{number:.3f}" in text


def test_visible_indices_keep_first_and_last():
    assert visible_indices(5, 8) == [0, 1, 2, 3, 4]
    assert visible_indices(100, 7) == [0, 1, 2, None, 97, 98, 99]
    assert visible_indices(100, 8) == [0, 1, 2, 3, None, 97, 98, 99]


@pytest.mark.parametrize("width", [60, 120])
def test_a_2048_square_matrix_fits_the_width_and_a_bounded_number_of_lines(width):
    weights = np.full((2048, 2048), 1 / 2048)
    text = render(weight_table(weights, options=ViewOptions(width=width), title="weights"), width=width)
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= width
    assert len(lines) < 40
    assert "2047" in text
    assert "…" in text
    assert "(showing 31 rows × " in text  # 31 rows and the ellipsis row


def test_row_maximum_is_bold():
    table = weight_table(np.array([[0.1, 0.9], [0.7, 0.3]])).renderables[1].cells.table()
    bold = [[bool(table.columns[c + 1]._cells[r].style.bold) for c in range(2)] for r in range(2)]
    assert bold == [[False, True], [True, False]]


def cell_background(group, row: int = 0, column: int = 0) -> tuple[int, int, int]:
    """The background colour of one value cell of a table made by weight_table/output_table."""
    table = group.renderables[1].cells.table()
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


# --- labels, selection, limits, masked cells, summaries ---------------------------------------


def test_labels_name_rows_and_columns_and_survive_cropping():
    words = [f"tok{i}" for i in range(100)]
    weights = np.full((100, 100), 0.01)
    options = ViewOptions(width=80, max_rows=9, query_labels=words, key_labels=words)
    text = render(weight_table(weights, options=options, title="w"), width=80)
    lines = text.splitlines()
    assert lines[1].split()[1:4] == ["tok0", "tok1", "tok2"]  # column headers
    assert lines[1].split()[-1] == "tok99"  # the last column keeps its label
    assert lines[3].split()[0] == "tok0"  # row labels
    assert lines[-1].split()[0] == "tok99"  # the last row keeps its label
    assert "…" in text
    assert max(len(line) for line in lines) <= 80


def test_long_and_blank_labels_are_cut_and_shown():
    options = ViewOptions(query_labels=["a" * 30, " "], key_labels=["x", "y"])
    text = render(weight_table(np.array([[0.5, 0.5], [0.2, 0.8]]), options=options, title="w"))
    assert "a" * 11 + "…" in text
    assert "␣" in text


def test_masked_cells_are_dots_and_the_summary_ignores_them():
    weights = np.array([[1.0, 0.0, 0.0], [0.25, 0.75, 0.0], [0.2, 0.3, 0.5]])
    blocked = np.triu(np.ones((3, 3), dtype=bool), 1)
    meta = {**seed_meta(weights, weights), "causal": True}
    text = render(weights_view(weights, weights, meta, ViewOptions(width=120), blocked), width=120)
    weight_rows = text.split("\noutput")[0].split("───\n")[1].splitlines()[:3]
    assert [row.split()[1:] for row in weight_rows] == [
        ["1.0000", "·", "·"],
        ["0.2500", "0.7500", "·"],
        ["0.2000", "0.3000", "0.5000"],
    ]
    assert "·: masked" in text
    # min over the unmasked weights only: 0.2, not the masked zeros
    assert "min=0.2 max=1" in text


def test_summary_figures_match_numpy():
    rng = np.random.default_rng(5)
    scores = rng.standard_normal((6, 7))
    weights = np.exp(scores) / np.exp(scores).sum(1, keepdims=True)
    entropy = float(np.mean(-(weights * np.log(weights)).sum(1)))
    text = render(
        weights_view(weights, weights[:, :3], seed_meta(weights, weights), ViewOptions(width=200)), width=200
    )
    assert f"min={weights.min():.3g} max={weights.max():.3g}" in text
    assert f"entropy={entropy:.3g} nats" in text
    output = weights[:, :3]
    assert f"mean={output.mean():.3g} std={output.std():.3g}" in text


def test_selection_shows_exactly_the_chosen_heads():
    weights = np.full((2, 6, 3, 3), 1 / 3)
    meta = {**seed_meta(weights, weights), "weights_axes": ["batch", "head", "query", "key"]}
    options = ViewOptions(batch=[1], head=[0, 4])
    text = render(weights_view(weights, weights, meta, options), width=100)
    titles = [line.split("  ")[0] for line in text.splitlines() if line.startswith("weights[")]
    assert titles == ["weights[1, 0] (batch 1, head 0)", "weights[1, 4] (batch 1, head 4)"]
    assert "not shown" not in text


def test_full_and_max_cols():
    weights = np.full((40, 40), 1 / 40)
    full = render(weight_table(weights, options=ViewOptions(full=True), title="w"), width=500)
    assert "…" not in full
    assert len(full.splitlines()) == 1 + 2 + 40
    narrow = render(weight_table(weights, options=ViewOptions(max_cols=5), title="w"), width=200)
    assert "(showing 31 rows × 4 columns)" in narrow  # and an ellipsis row and column


def _full_tables():
    """--full tables of weights (masked cells, labels of all widths) and of outputs."""
    rng = np.random.default_rng(11)
    weights = rng.dirichlet(np.ones(60), size=30)
    weights[:, 7] = 0.0
    blocked = rng.random((30, 60)) < 0.2
    blocked[:, -1] = True  # a column of masked cells only: as narrow as its label
    labels = [f"tok{i}" if i % 7 else "猫" * (i % 5 + 1) for i in range(60)]
    options = ViewOptions(full=True, width=80, query_labels=labels[:30], key_labels=labels, precision=3)
    output = rng.standard_normal((30, 9)) * 10.0 ** rng.integers(-3, 3, size=(30, 9))
    return [
        weight_table(weights, options=options, title="w", blocked=blocked),
        output_table(output, float(np.abs(output).max()), options=options, title="o"),
    ]


@pytest.mark.parametrize("colour", [False, True])
def test_a_full_table_is_as_wide_as_its_columns_on_any_console(colour):
    """--full on a narrow console: Rich's table of the same cells drawn where it fits, uncropped."""
    for group in _full_tables():
        _title, cells = group.renderables  # the title breaks between its items to fit, as it should
        texts = []
        for width, picture in ((80, cells), (100_000, cells.table())):
            # Rich caches each sum of two Styles (Style._add), with the escape codes of the first
            # colour system it was drawn for: a test before this one may have drawn equal styles
            # on a 16-colour console. Each console here starts from no such cache.
            Style._add.cache_clear()
            console = Console(
                file=io.StringIO(),
                width=width,
                force_terminal=colour,
                color_system="truecolor" if colour else None,
            )
            console.print(picture, crop=False, overflow="ignore")
            texts.append(console.file.getvalue())
        assert texts[0] == texts[1]
        assert max(len(line) for line in Text.from_ansi(texts[0]).plain.splitlines()) > 80
        assert "…" not in texts[0]


@pytest.mark.parametrize(
    ("width", "label", "drawn_by"),
    [
        (60, None, "attncli"),
        (80, None, "attncli"),
        (200, "a-very-long-token-label-", "attncli"),
        (40, "a-very-long-token-label-", "rich"),  # the labels leave no room: Rich shrinks the columns
    ],
)
def test_a_table_that_fits_is_drawn_as_richs_table_would_draw_it(width, label, drawn_by):
    """The cropped view of a matrix is drawn by attncli itself (in a fraction of Rich's time) where
    its columns fit the console, with Rich's own segments; where they do not, it is Rich's table,
    shrunk to fit. Either way no line is wider than the console."""
    rng = np.random.default_rng(14)
    weights = rng.dirichlet(np.ones(300), size=300)
    labels = None if label is None else [f"{label}{i}" for i in range(300)]
    options = ViewOptions(width=width, query_labels=labels, key_labels=labels)
    fitted = weight_table(weights, options=options, title="w").renderables[1]
    console = Console(file=io.StringIO(), width=width, color_system="truecolor")
    chosen = fitted._chosen(console, console.options)
    assert (chosen is fitted.cells) == (drawn_by == "attncli")
    drawn = list(console.render(fitted))
    assert drawn == list(console.render(fitted.cells.table()))
    plain = "".join(segment.text for segment in drawn)
    assert max(len(line) for line in plain.splitlines()) <= width


@pytest.mark.parametrize("color_system", [None, "standard", "256", "truecolor", "ascii box"])
def test_a_full_table_draws_the_segments_of_richs_table(color_system):
    for group in _full_tables():
        cells = group.renderables[1]
        if color_system == "ascii box":  # a console that cannot print box characters
            console = Console(file=io.TextIOWrapper(io.BytesIO(), encoding="ascii"), width=100_000)
        else:
            console = Console(file=io.StringIO(), width=100_000, color_system=color_system)
        drawn = [(text, style or Style(), control) for text, style, control in console.render(cells)]
        table = [(text, style or Style(), control) for text, style, control in console.render(cells.table())]
        assert drawn == table


@pytest.mark.parametrize("width", [80, 160])
def test_heads_tables_match_golden_and_wrap_their_heads(width):
    """attn heads' view of 3 layers x 16 heads: at 80 columns the heads go on in a second table,
    at 160 they fit one; no number is cut."""
    from attncli.present.heads import heads_view

    values = np.linspace(0, 1, 48).reshape(3, 16)
    scores = {"previous": values, "distance": values * 7.5}
    scores["distance"][1, 3] = np.nan  # a head without the figure
    view = heads_view(
        "layer",
        ["0", "1", "2"],
        scores,
        title="head scores of c.safetensors",
        top=2,
        width=width,
        colour=False,
    )
    text = render(view, width=width)
    check_golden(f"heads_scores_{width}.txt", text)
    assert all(len(line) <= width for line in text.splitlines())
    assert "…" not in text


def _grid_case():
    """Weights (2 layers, 3 heads, 5 x 5) with one pattern per head: the diagonal, the first key,
    the previous position."""
    weights = np.zeros((2, 3, 5, 5))
    eye = np.eye(5)
    weights[:, 0] = eye
    weights[:, 1, :, 0] = 1.0
    weights[:, 2] = np.roll(eye, -1, axis=1)[:, :]
    weights[:, 2, 0] = eye[0]
    return weights


@pytest.mark.parametrize("width", [80, 160])
def test_grid_matches_golden_and_fits_the_width(width):
    from attncli.present.grid import grid_view
    from attncli.present.options import ViewOptions

    weights = _grid_case()
    entropy = np.zeros(weights.shape[:-1])
    options = ViewOptions(
        view="grid", width=width, colour=False, axes=("layer", "head"), axis_values={"layer": [3, 5]}
    )
    text = render(grid_view(weights, (1, 1), (5, 5), entropy, options), width=width)
    check_golden(f"grid_{width}.txt", text)
    assert all(len(line) <= width for line in text.splitlines())
    assert "L3" in text
    assert "L5" in text  # the layers' own numbers


def test_a_pooled_grid_says_how_it_was_pooled():
    from attncli.present.grid import grid_view, thumbnail_size
    from attncli.present.options import ViewOptions

    assert thumbnail_size((64, 40)) == (16, 16)
    pictures = np.random.default_rng(0).random((1, 2, 16, 16))
    options = ViewOptions(view="grid", colour=False, axes=("batch", "head"), pool="mean")
    text = render(grid_view(pictures, (4, 3), (64, 40), None, options), width=160)
    assert "the mean of 4×3 weights of each 64×40 matrix" in text


def test_colour_scales_place_weights_as_documented():
    from attncli.present.style import rescaled

    weights = np.array([[0.28, 0.14, 0.0], [1e-5, 0.01, 1.0], [np.nan, np.nan, np.nan]])
    np.testing.assert_array_equal(rescaled(weights, "fixed"), weights)
    np.testing.assert_allclose(rescaled(weights, "max", 0.5)[0], [0.56, 0.28, 0.0])
    np.testing.assert_allclose(rescaled(weights, "row")[:2], [[1.0, 0.5, 0.0], [1e-5, 0.01, 1.0]])
    # log10 from 1e-4 (0) to 1 (1): 0.01 is halfway; below 1e-4, and 0, at the bottom
    np.testing.assert_allclose(rescaled(weights, "log")[1], [0.0, 0.5, 1.0])
    assert rescaled(weights, "log")[0, 2] == 0.0
    for scale in ("fixed", "max", "row", "log"):
        assert np.isnan(rescaled(weights, scale)[2]).all()  # nothing to draw stays so


@pytest.mark.parametrize(("scale", "words"), [("max", "each matrix to its largest"), ("log", "1e-4")])
def test_a_diffuse_head_fills_the_scale_and_the_legend_says_which(scale, words):
    """A row of weights no higher than 0.28 is a flat field on the fixed scale; on `max` its
    largest weight takes the top colour."""
    from attncli.present.style import LEVELS, SEQUENTIAL, cell_style
    from attncli.present.tables import weight_table, weights_legend

    weights = np.array([[0.28, 0.24, 0.24, 0.24], [0.25, 0.25, 0.25, 0.25]])
    options = ViewOptions(color_scale=scale, precision=2)
    text = render(Group(weight_table(weights, options=options), weights_legend(False, scale)), colour=True)
    assert words in text
    if scale == "max":
        top = cell_style(SEQUENTIAL, LEVELS - 1, True)
        assert top.bgcolor is not None
        assert f"{top.bgcolor.triplet.red};{top.bgcolor.triplet.green};{top.bgcolor.triplet.blue}" in text


def test_show_picks_the_sections_and_the_views_have_their_own():
    """--show weights,output,stats: any of them; by default the table view shows the weights and
    the output, the heatmap and grid views the weights (with --stats, the statistics too)."""
    from typer.testing import CliRunner

    from attncli.cli import app

    seed = str(Path(__file__).resolve().parent.parent / "sample_inputs" / "seed.npz")
    runner = CliRunner()

    def shown(*args: str) -> set[str]:
        result = runner.invoke(app, ["compute", seed, *args], env={"COLUMNS": "100", "NO_COLOR": "1"})
        assert result.exit_code == 0, result.output
        found = {"weights": "weights  3×3", "output": "output  3×4", "stats": "statistics per query row"}
        return {name for name, mark in found.items() if mark in result.stdout}

    assert shown() == {"weights", "output"}
    assert shown("--stats") == {"weights", "output", "stats"}
    assert shown("--view", "heatmap") == {"weights"}
    assert shown("--view", "heatmap", "--stats") == {"weights", "stats"}
    assert shown("--show", "output") == {"output"}
    assert shown("--show", "stats") == {"stats"}  # computes them, as --stats
    assert shown("--view", "heatmap", "--show", "weights,output") == {"weights", "output"}
    refused = runner.invoke(app, ["compute", seed, "--show", "bogus"])
    assert refused.exit_code == 2
    assert "--show bogus: choose from weights, output, stats" in refused.stderr


def test_heatmap_keys_are_labelled_downwards_under_their_columns():
    from attncli.present.heatmap import heatmap

    weights = np.eye(3)
    view = heatmap(
        weights,
        title="w",
        width=80,
        max_lines=20,
        colour=False,
        query_labels=["a", "bb", "cc"],
        key_labels=["the", "quickest", "x"],
    )
    lines = render(view).splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith("t  q  x"))
    column = lines[start].index("t")
    assert [line[column] for line in lines[start : start + 3]] == ["t", "h", "e"]
    quick = [line[column + 3] for line in lines[start : start + 6]]
    assert "".join(quick) == "quick…"  # cut at 6 characters
