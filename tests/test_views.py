"""What a new user sees at 80 and 160 columns, through pipes and with or without colour: lines that
break between items, marks that stand in for colours, colour scales fitted to what is shown, and
the --color switch. Numbers are checked against the float64 reference, layouts against golden files
(ATTNCLI_UPDATE_GOLDEN=1 rewrites them; read the diff before committing)."""

from __future__ import annotations

import itertools
import os
import re
from pathlib import Path

import numpy as np
import pytest
from reference import reference_attention
from rich.style import Style
from safetensors.numpy import load_file
from typer.testing import CliRunner

from attncli.cli import app
from attncli.present.tables import weights_legend

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).resolve().parent / "golden"
UPDATE = os.environ.get("ATTNCLI_UPDATE_GOLDEN") == "1"
ESCAPE = re.compile(r"\x1b\[[0-9;]*m")
COLOUR = re.compile(r"\x1b\[[0-9;]*(3[0-9]|4[0-9]|38;|48;|9[0-7]|10[0-7])[0-9;]*m")
MULTIHEAD = ["sample_inputs/multihead.safetensors", "--mask", "sample_inputs/padding_mask.npy", "--causal"]

runner = CliRunner()


def attn(*args: str, columns: int = 100, env: dict[str, str] | None = None):
    """`attn ARGS` in the repository's folder (so the header names the sample files as typed)."""
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        return runner.invoke(app, list(args), env={"COLUMNS": str(columns), **(env or {})})
    finally:
        os.chdir(cwd)


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if UPDATE:
        path.write_text(text)
    assert path.exists(), f"{path} is missing: ATTNCLI_UPDATE_GOLDEN=1 writes it"
    assert text == path.read_text()


def multihead_reference() -> tuple[np.ndarray, np.ndarray]:
    tensors = load_file(str(ROOT / "sample_inputs/multihead.safetensors"))
    mask = np.load(ROOT / "sample_inputs/padding_mask.npy")
    return reference_attention(tensors["query"], tensors["key"], tensors["value"], mask=mask, causal=True)


@pytest.mark.parametrize("columns", [80, 160])
def test_a_plain_table_marks_row_maxima_and_breaks_lines_between_items(columns):
    """Through a pipe: no colour and no bold, so each row's largest weight is marked `*` and the
    legend says so (not `colour: ... bold: row maximum`); the header and titles break between
    items, never inside a shape or a figure."""
    result = attn("compute", *MULTIHEAD, "--batch", "1", "--head", "2", columns=columns)
    assert result.exit_code == 0, result.output
    text = result.stdout
    check_golden(f"plain_table_{columns}.txt", text)
    assert not ESCAPE.search(text)
    assert all(len(line) <= columns for line in text.splitlines())
    for line in text.splitlines():  # a shape or an index is never cut across lines
        assert line.count("(") == line.count(")"), line
        assert line.count("[") == line.count("]"), line
    assert "colour:" not in text
    assert "bold" not in text
    assert "*: row maximum · ·: masked" in text
    weights, _ = multihead_reference()
    rows = [line.split() for line in text.split("q\\k")[1].splitlines()[2:8]]
    for i, row in enumerate(rows):
        assert row[0] == str(i)
        cells = row[1:]
        expected = weights[1, 2, i]
        open_keys = [j for j, cell in enumerate(cells) if cell != "·"]
        assert [float(cells[j].rstrip("*")) for j in open_keys] == [round(expected[j], 4) for j in open_keys]
        starred = [j for j, cell in enumerate(cells) if cell.endswith("*")]
        assert starred == [int(np.argmax(expected))]


def test_the_header_keeps_each_input_whole_at_80_columns():
    result = attn("compute", "/tmp/../" + str(ROOT / "sample_inputs/seed.npz"), columns=80)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    inputs = [line for line in lines if line.startswith(("query ", "key ", "value "))]
    assert [line.split()[0] for line in inputs] == ["query", "key", "value"]  # one a line: none fits two
    assert all(line.endswith("(3, 4)") for line in inputs)


@pytest.mark.parametrize(
    ("args", "env", "coloured"),
    [
        (["--color", "always"], {}, True),  # through a pipe, for less -R
        (["--color", "always"], {"NO_COLOR": "1"}, True),  # the option wins over the variable
        ([], {"FORCE_COLOR": "1"}, True),
        (["--color", "never"], {"FORCE_COLOR": "1"}, False),
        (["--no-color"], {"FORCE_COLOR": "1"}, False),  # the older spelling
        ([], {}, False),  # auto, and not a terminal
    ],
)
def test_color_auto_always_never(args, env, coloured):
    result = attn("compute", "sample_inputs/seed.npz", *args, env=env)
    assert result.exit_code == 0, result.output
    assert bool(COLOUR.search(result.stdout)) is coloured
    if not coloured:
        assert not ESCAPE.search(result.stdout)  # no bold or dim either: plain text
        assert "*: row maximum" in result.stdout
    else:
        assert "bold: row maximum" in result.stdout


def test_a_bad_color_value_is_one_line():
    result = attn("compute", "sample_inputs/seed.npz", "--color", "sometimes")
    assert result.exit_code == 2
    assert result.stderr.startswith("attn: error: Invalid value for '--color': 'sometimes'")
    assert len(result.stderr.splitlines()) == 1


def test_the_output_colour_scale_spans_the_matrices_shown():
    """With --head 1 the output colours run to the largest |output| of head 1, not of every head."""
    _, output = multihead_reference()
    shown = attn("compute", *MULTIHEAD, "--head", "1", "--color", "always", "--show", "output")
    assert shown.exit_code == 0, shown.output
    legend = ESCAPE.sub("", shown.stdout).splitlines()[-1]
    limit = np.abs(output[:, 1]).max()
    assert legend.startswith(f"colour: -{limit:.4g} ")
    assert f"{np.abs(output).max():.4g}" not in legend


def test_the_colour_bar_is_not_dimmed():
    """The legend's words are dim; its colour bar shows the cells' own colours, undimmed."""
    legend = weights_legend().items[0]
    assert not Style.normalize(str(legend.style)) or not Style.parse(str(legend.style)).dim
    bars = [span for span in legend.spans if legend.plain[span.start : span.end] == "█"]
    assert len(bars) == 16
    assert not any(Style.parse(str(span.style)).dim for span in bars)


COMMANDS = ["compute", "demo", "diff", "heads", "rollout", "inspect", "model", "capture"]


@pytest.mark.parametrize("command", COMMANDS)
def test_help_shows_flags_as_flags_and_arguments_as_typed(command):
    """No `<bool>`, `<list[str]>` or `[[...]]...`: flags alone, values by their metavars."""
    result = attn(command, "--help", columns=100)
    assert result.exit_code == 0, result.output
    text = result.stdout
    for python_type in ("<bool>", "<list[str]>", "<str>", "<int>", "<float>", "[[QUERY"):
        assert python_type not in text
    flags = [line for line in text.splitlines() if "--help" in line]
    assert flags
    assert flags[0].split() == ["│", "--help", "-h", "Show", "this", "message", "and", "exit.", "│"]
    usage = next(line for line in text.splitlines() if "Usage:" in line).split("Usage: ")[1].rstrip()
    expected = {
        "compute": "attn compute [OPTIONS] [QUERY KEY VALUE | FILE]",
        "diff": "attn diff [OPTIONS] A B",
        "rollout": "attn rollout [OPTIONS] FILE",
        "demo": "attn demo [OPTIONS]",
    }
    if command in expected:
        assert usage == expected[command]


@pytest.mark.parametrize("command", COMMANDS)
def test_help_paragraphs_are_wrapped_once(command):
    """Docstring lines are joined before Rich wraps them to the terminal: within a paragraph of
    prose, every line but the last fills the width (no ragged lines left by the source's breaks)."""
    columns = 80
    text = attn(command, "--help", columns=columns).stdout
    description = text.split("Usage:")[1].split("╭")[0]
    for paragraph in description.split("\n \n")[1:]:
        lines = [line.rstrip() for line in paragraph.strip("\n").splitlines()]
        if any(line.startswith("   ") for line in lines):  # examples stay as written
            continue
        for line, following in itertools.pairwise(lines):
            first_word = following.split()[0]
            assert len(line) + 1 + len(first_word) > columns - 2, (line, following)


@pytest.mark.parametrize("columns", [80, 160])
def test_a_small_heatmap_has_cells_of_several_characters(columns):
    """A 6x6 matrix is six lines of six two-character cells (not 6 characters by 3 lines), each
    row named by its index; the characters are the weights' ninths, from the float64 reference."""
    result = attn("compute", *MULTIHEAD, "--batch", "1", "--head", "2", "--view", "heatmap", columns=columns)
    assert result.exit_code == 0, result.output
    check_golden(f"plain_heatmap_{columns}.txt", result.stdout)
    weights, _ = multihead_reference()
    causal = np.tril(np.ones((6, 6), dtype=bool))
    keys = np.load(ROOT / "sample_inputs/padding_mask.npy")[1, 0, 0]
    ramp = " .:-=+*#%@"
    lines = result.stdout.split("q\\k")[1].splitlines()[1:7]
    for i, line in enumerate(lines):
        label, *cells = line.split(" ")[1:] if line.startswith(" ") else line.split(" ")
        assert label == str(i)
        expected = [
            "··" if not (causal[i, j] and keys[j]) else ramp[int(np.ceil(weights[1, 2, i, j] * 9))] * 2
            for j in range(6)
        ]
        assert " ".join(cells) == " ".join(expected)


def test_the_heatmap_legend_says_what_its_colour_bar_is():
    result = attn("compute", "sample_inputs/seed.npz", "--view", "heatmap", "--color", "always")
    lines = ESCAPE.sub("", result.stdout).splitlines()
    legend = next(line for line in lines if "██████████" in line)
    assert legend.startswith("colour: 0 ██████████ 1")  # not a bare 0 in the row labels' column


@pytest.mark.parametrize("columns", [80, 160])
def test_inspect_never_cuts_a_shape_dtype_or_number(tmp_path, columns):
    """At 80 columns each tensor is a block of lines (name, shape, dtype, size; then its figures);
    where the table fits, a table. Nothing is cut to '…'; the figures are the tensors' own,
    from NumPy; metadata numbers have a table's figures, not 17 digits."""
    path = tmp_path / "r.safetensors"
    made = attn("compute", *MULTIHEAD, "--stats", "-o", str(path), "-q")
    assert made.exit_code == 0, made.output
    result = attn("inspect", str(path), columns=columns)
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert "…" not in text
    assert all(len(line.rstrip()) <= columns for line in text.splitlines())
    words = " ".join(text.split())
    tensors = load_file(str(path))
    for name, array in tensors.items():
        values = array.astype(np.float64)
        shape = str(tuple(array.shape))
        assert f"{name} {shape} {array.dtype}" in words
        finite = values[np.isfinite(values)]  # inspect counts NaN and Inf apart
        for figure in (finite.min(), finite.max(), finite.mean()):
            assert f"{figure:.4g}" in words, (name, figure)
    means = re.findall(r"\d\.\d{8,}", text)
    assert not means  # no wall of 17-digit numbers
    assert re.search(r"stats_means +distance +\[", text)
