"""The Python API shows what the CLI shows: a result's repr, `__rich__`, `_repr_html_`, `attncli.show`,
and `row_stats` / `top_k` of a result, which give the CLI's figures on masked, causal and GQA input."""

from __future__ import annotations

import io
import json
import math
import subprocess
import sys
import time

import numpy as np
import pytest
import rich
import torch
from reference import reference_attention
from rich.console import Console
from test_render import check_golden
from typer.testing import CliRunner

import attncli
from attncli.analysis import row_stats, top_k
from attncli.analysis.rows import matrix_means
from attncli.cli import app
from attncli.compute.result import AttentionResult
from attncli.errors import UsageError


def console(width: int = 80) -> Console:
    return Console(file=io.StringIO(), width=width, color_system=None, highlight=False)


def printed(renderable, width: int = 80) -> str:
    screen = console(width)
    screen.print(renderable)
    return screen.file.getvalue()


def shown(*args, width: int = 80, **kwargs) -> str:
    screen = console(width)
    attncli.show(*args, console=screen, **kwargs)
    return screen.file.getvalue()


def causal_problem() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Multiples of 1/4, so that every weight and figure is the same on any CPU."""
    query = np.array([[1.0, 0, 1, 0], [0, 2, 0, 2], [1, 1, 1, 1], [2, 0, 0, 1]])
    value = np.array([[0.0, 1, 0, 1], [1, 0, 1, 0], [0, 0, 1, 1], [1, 1, 0, 0]])
    return query, query, value


def gqa_problem() -> dict[str, np.ndarray]:
    """Two batch entries, 4 query heads over 2 key/value heads, 5 positions; the mask pads key 4 of
    batch 1 and lets query 4 see no key at all (fully masked rows)."""
    mask = np.ones((2, 1, 5, 5), dtype=bool)
    mask[1, :, :, 4] = False  # batch 1: key 4 padded
    mask[:, :, 4, :] = False  # query 4 sees nothing: fully masked rows
    rng = np.random.default_rng(17)
    return {
        "query": rng.standard_normal((2, 4, 5, 8)),
        "key": rng.standard_normal((2, 2, 5, 8)),
        "value": rng.standard_normal((2, 2, 5, 8)),
        "mask": mask,
    }


# --- repr ------------------------------------------------------------------------------------


def test_repr_is_a_few_lines_of_settings_and_figures_never_a_tensor():
    problem = gqa_problem()
    result = attncli.attention(
        problem["query"], problem["key"], problem["value"], mask=problem["mask"], causal=True
    )
    text = repr(result)
    weights, _ = reference_attention(
        problem["query"], problem["key"], problem["value"], mask=problem["mask"], causal=True
    )
    open_keys = np.broadcast_to(np.tril(np.ones((5, 5), bool)) & problem["mask"], weights.shape)
    assert len(text.splitlines()) <= 4
    assert "tensor(" not in text
    assert text.startswith("AttentionResult weights (2, 4, 5, 5) float64 cpu · output (2, 4, 5, 8)")
    assert "query (2, 4, 5, 8) · key (2, 2, 5, 8) · value (2, 2, 5, 8)" in text
    assert f"scale {1 / math.sqrt(8):.6g}" in text
    assert "causal" in text
    assert "mask bool (2, 1, 5, 5)" in text
    assert "grouped: 2 query heads per key/value head" in text
    assert "8 rows fully masked" in text  # query 4 of each of 2 x 4 matrices
    assert f"min={weights[open_keys].min():.3g} max={weights[open_keys].max():.3g} (open keys)" in text


def test_repr_of_an_8_by_16_by_1024_by_1024_result_is_four_short_lines_and_quick():
    weights = torch.full((1, 1, 1, 1), 1 / 1024).expand(8, 16, 1024, 1024)  # no 512 MB to fill
    result = AttentionResult(
        output=torch.zeros(1).expand(8, 1024, 2048),
        masked_rows=None,
        scale=128**-0.5,
        causal=False,
        heads=16,
        query_heads_per_key_head=1,
        input_shapes={"query": (8, 1024, 2048), "key": (8, 1024, 2048), "value": (8, 1024, 2048)},
        weights_shape=(8, 16, 1024, 1024),
        dtype=torch.float32,
        device=torch.device("cpu"),
        weights=weights,
    )
    started = time.perf_counter()
    text = repr(result)
    took = time.perf_counter() - started
    lines = text.splitlines()
    assert len(lines) == 4, text
    assert max(map(len, lines)) < 120
    assert lines[0] == "AttentionResult weights (8, 16, 1024, 1024) float32 cpu · output (8, 1024, 2048)"
    assert f"weights min={1 / 1024:.3g} max={1 / 1024:.3g}" in lines[3]
    assert took < 1.0, took


def test_repr_of_a_run_in_blocks_says_the_weights_were_not_kept():
    from attncli.compute import prepare, run

    query, key, value = causal_problem()
    result = run(prepare(query, key, value, causal=True), block_rows=2, stats=True)
    text = repr(result)
    assert "weights not kept" in text
    assert "blocks, blocks of 2 rows" in text
    assert "min=" in text  # the output's range
    assert "weights min" not in text


def test_repr_says_nan():
    import dataclasses

    result = attncli.attention(np.ones((1, 2)), np.ones((2, 2)), np.ones((2, 2)))
    result = dataclasses.replace(result, weights=torch.tensor([[math.nan, 1.0]]))
    assert "weights min=nan max=nan" in repr(result)


# --- __rich__, _repr_html_, show: the CLI's view ------------------------------------------------


def cli_view(tmp_path, *args: str, width: int = 80) -> str:
    query, key, value = causal_problem()
    np.savez(tmp_path / "qkv.npz", query=query, key=key, value=value)
    done = CliRunner().invoke(app, ["compute", str(tmp_path / "qkv.npz"), *args], env={"COLUMNS": str(width)})
    assert done.exit_code == 0, done.output
    return done.stdout


@pytest.mark.parametrize("width", [80, 120])
def test_rich_print_of_a_result_is_the_cli_view_at_the_console_width(tmp_path, width):
    result = attncli.attention(*causal_problem(), causal=True)
    text = printed(result, width)
    check_golden(f"python_rich_causal_{width}.txt", text)
    expected = cli_view(tmp_path, "--causal", width=width)
    # the CLI's header names the file each input came from; from the weights on, the same text
    assert text.split("\nweights  ", 1)[1] == expected.split("\nweights  ", 1)[1]
    assert "  ·" in text  # masked cells as the CLI's dot
    weights, _ = reference_attention(*causal_problem(), causal=True)
    open_min = weights[np.tril(np.ones((4, 4), bool))].min()
    assert f"min={open_min:.3g} " in text  # over open keys, not the masked zeros


def test_rich_print_works_through_rich_print_and_the_pretty_printer():
    result = attncli.attention(*causal_problem(), causal=True)
    screen = console()
    rich.print(result, file=screen.file)
    assert "weights  4×4  float64" in screen.file.getvalue()
    from rich.pretty import pprint

    screen = console()
    pprint(result, console=screen)
    assert screen.file.getvalue().startswith("AttentionResult weights (4, 4) float64 cpu")


def test_repr_html_is_standalone_and_holds_the_weights_shown():
    query, key, value = causal_problem()
    result = attncli.attention(query, key, value, causal=True)
    html = result._repr_html_()
    assert "http" not in html
    assert html.lstrip().startswith("<!DOCTYPE html>")
    weights, _ = reference_attention(query, key, value, causal=True)
    for row in range(4):
        for col in range(row + 1):
            assert f"{weights[row, col]:.4f}" in html
    assert "·" in html


def test_show_of_a_result_equals_its_rich_view():
    result = attncli.attention(*causal_problem(), causal=True)
    assert shown(result) == printed(result)


def test_show_of_query_key_value_computes_first():
    query, key, value = causal_problem()
    result = attncli.attention(query, key, value, causal=True)
    assert shown(query, key, value, causal=True) == printed(result)


@pytest.mark.parametrize("width", [60, 100])
def test_show_of_weights_alone_matches_golden(width):
    weights, _ = reference_attention(*causal_problem(), causal=True)
    text = shown(torch.from_numpy(np.stack([weights, weights])), causal=True, width=width, precision=3)
    check_golden(f"python_show_weights_{width}.txt", text)
    assert text.startswith("weights  (2, 4, 4)  float64  causal\n")
    assert "output" not in text
    for row in range(4):
        for col in range(row + 1):
            assert f"{weights[row, col]:.3f}" in text


def test_show_heatmap_with_labels_matches_golden():
    text = shown(*causal_problem(), causal=True, view="heatmap", labels=list("abcd"), sections=["weights"])
    check_golden("python_show_heatmap_80.txt", text)
    assert "keys: 0 a · 1 b · 2 c · 3 d" in text
    assert "output[" not in text
    assert "\noutput " not in text


def test_show_chooses_batch_and_heads_of_grouped_masked_inputs():
    problem = gqa_problem()
    inputs = {role: problem[role] for role in ("query", "key", "value")}
    text = shown(
        **dict(zip(("x", "key", "value"), inputs.values(), strict=True)),
        mask=problem["mask"],
        batch=1,
        head="0:4:3",
    )
    titles = [line.split("  ")[0] for line in text.splitlines() if line.startswith(("weights[", "output["))]
    assert titles == [
        "weights[1, 0] (batch 1, head 0)",
        "weights[1, 3] (batch 1, head 3)",
        "output[1, 0] (batch 1, head 0)",
        "output[1, 3] (batch 1, head 3)",
    ]
    weights, _ = reference_attention(**inputs, mask=problem["mask"])
    assert f"{weights[1, 3, 0, 0]:.4f}" in text


def test_show_of_a_numpy_array_with_leading_axes_and_a_mask():
    weights = np.full((3, 2, 2, 3), 0.5)
    weights[..., 2] = 0.0
    text = shown(weights, mask=np.array([True, True, False]), head=[1], batch=2)
    assert text.startswith("weights  (3, 2, 2, 3)  float64  mask bool (3,)")
    assert "weights[2, 1] (batch 2, head 1)" in text
    assert "weights[0, 0]" not in text
    assert "min=0.5 max=0.5" in text  # the masked key's 0 is left out


@pytest.mark.parametrize(
    ("args", "kwargs", "words"),
    [
        ((np.ones((2, 2)),), {"head": 0}, "head 0: the weights (2, 2) have no head axis"),
        ((np.ones((2, 3, 2, 2)),), {"head": 3}, "head 3: out of range, there are 3 heads (0 to 2)"),
        ((np.ones((2, 2)),), {"labels": ["a"]}, "query_labels: 1 labels, but the query has 2 positions"),
        ((np.ones((2, 2)),), {"view": "pie"}, "view 'pie': choose from table, heatmap, grid"),
        ((np.ones(3),), {}, "weights must be floating point with query and key axes"),
        ((np.ones((2, 2)), np.ones((2, 2))), {}, "give query, key and value together"),
        ((np.ones((2, 2)),), {"scale": 2.0}, "scale and heads need query, key and value"),
        ((np.ones((2, 2)),), {"stats": True}, "stats and top_k need a result or query, key and value"),
        ((np.ones((2, 2)), np.ones((2, 2)), np.ones((2, 2))), {"top_k": 0}, "top_k 0: give a whole number"),
    ],
)
def test_show_refuses_bad_arguments_in_one_line(args, kwargs, words):
    with pytest.raises(UsageError) as caught:
        shown(*args, **kwargs)
    assert words in str(caught.value)
    assert "\n" not in str(caught.value)


def test_show_is_importable_from_attncli_and_always_the_function():
    from attncli import show as first
    from attncli.display import show as direct

    screen = console()
    first(np.eye(2), console=screen)
    attncli.show(np.eye(2), console=screen)
    assert first is direct is attncli.show  # no module of that name: importing nothing rebinds it
    assert screen.file.getvalue().count("weights  2×2  float64") == 2


@pytest.mark.slow
def test_import_attncli_and_reaching_show_import_no_torch():
    """Then a computation and its statistics import no more than they use: not sympy, which torch
    loads for some calls (torch.broadcast_shapes, torch.unravel_index) at 0.5-0.8 s."""
    probe = (
        "import sys, attncli\n"
        "attncli.show\n"  # the name resolves lazily; only a call that needs torch imports it
        "print(sorted(m for m in ('torch', 'attncli.compute') if m in sys.modules))\n"
        "import numpy as np\n"
        "from attncli.analysis import head_scores, row_stats\n"
        "x = np.random.default_rng(0).standard_normal((2, 4, 64, 8))\n"
        "result = attncli.attention(x, x, x, causal=True)\n"
        "row_stats(result), head_scores(result)\n"
        "print('sympy' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["[]", "False"]


# --- row_stats and top_k of a result: the CLI's figures -----------------------------------------


def cli_json(tmp_path, problem: dict[str, np.ndarray], *args: str) -> dict:
    np.savez(tmp_path / "qkv.npz", query=problem["query"], key=problem["key"], value=problem["value"])
    extra = []
    if "mask" in problem:
        np.save(tmp_path / "mask.npy", problem["mask"])
        extra = ["--mask", str(tmp_path / "mask.npy")]
    command = [
        "compute",
        str(tmp_path / "qkv.npz"),
        *extra,
        *args,
        "--stats",
        "--top-k",
        "3",
        "--format",
        "json",
    ]
    done = CliRunner().invoke(app, command)
    assert done.exit_code == 0, done.output
    return json.loads(done.stdout)


@pytest.mark.parametrize(
    ("name", "causal"),
    [("gqa_masked", True), ("gqa_masked", False), ("causal", True)],
)
def test_row_stats_and_top_k_of_a_result_equal_the_cli_json(tmp_path, name, causal):
    if name == "causal":
        query, key, value = causal_problem()
        problem = {"query": query, "key": key, "value": value}
    else:
        problem = gqa_problem()
    inputs = {role: problem[role] for role in ("query", "key", "value")}
    result = attncli.attention(**inputs, mask=problem.get("mask"), causal=causal)
    expected = cli_json(tmp_path, problem, *(["--causal"] if causal else []))
    stats = row_stats(result)
    for field in ("entropy", "entropy_normalised", "max_weight", "sink", "distance"):
        np.testing.assert_allclose(
            getattr(stats, field).numpy(), np.array(expected[field], float), rtol=1e-12
        )
    np.testing.assert_array_equal(stats.argmax.numpy(), expected["argmax"])
    for field, mean in matrix_means(stats).items():
        np.testing.assert_allclose(mean.numpy(), expected["meta"]["stats_means"][field], rtol=1e-12)
    values, keys = top_k(result, 3)
    np.testing.assert_array_equal(keys.numpy(), expected["top_k_keys"])
    np.testing.assert_allclose(values.numpy(), np.array(expected["top_k_weights"], float), rtol=1e-6)


def test_row_stats_of_a_result_agree_with_the_float64_reference_on_masked_rows():
    problem = gqa_problem()
    inputs = {role: problem[role] for role in ("query", "key", "value")}
    result = attncli.attention(**inputs, mask=problem["mask"], causal=True)
    weights, _ = reference_attention(**inputs, mask=problem["mask"], causal=True)
    open_keys = np.broadcast_to(np.tril(np.ones((5, 5), bool)) & problem["mask"], weights.shape)
    stats = row_stats(result)
    counts = open_keys.sum(-1)
    live = counts > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.where(weights > 0, np.log(np.where(weights > 0, weights, 1)), 0.0)
        entropy = -(weights * logs).sum(-1)
        normalised = entropy / np.log(counts)
    positions = np.arange(5)
    distance = (weights * np.abs(positions[:, None] - positions[None, :])).sum(-1)
    np.testing.assert_allclose(stats.entropy.numpy()[live], entropy[live], atol=1e-12)
    assert np.isnan(stats.entropy.numpy()[~live]).all()
    several = counts >= 2
    np.testing.assert_allclose(stats.entropy_normalised.numpy()[several], normalised[several], atol=1e-12)
    assert np.isnan(stats.entropy_normalised.numpy()[~several]).all()
    np.testing.assert_allclose(stats.distance.numpy()[live], distance[live], atol=1e-12)
    np.testing.assert_allclose(stats.max_weight.numpy()[live], weights.max(-1)[live], atol=1e-12)
    values, keys = top_k(result, 5)
    # masked keys are never returned: each row ends in as many -1 as it has masked keys
    np.testing.assert_array_equal((keys.numpy() == -1).sum(-1), 5 - counts)
    for index in zip(*np.nonzero(live), strict=True):
        chosen = keys.numpy()[index]
        chosen = chosen[chosen >= 0]
        assert open_keys[index][chosen].all()
        np.testing.assert_allclose(values.numpy()[index][: len(chosen)], weights[index][chosen], atol=1e-12)


def test_the_issue_s_causal_row_no_longer_counts_masked_keys():
    """`row_stats(result.weights)` alone takes every key as open; `row_stats(result)` does not."""
    query, key, value = causal_problem()
    result = attncli.attention(query, key, value, causal=True)
    weights, _ = reference_attention(query, key, value, causal=True)
    row = weights[1, :2]
    entropy = -(row * np.log(row)).sum()
    assert float(row_stats(result).entropy_normalised[1]) == pytest.approx(entropy / math.log(2), abs=1e-12)
    assert float(row_stats(result.weights).entropy_normalised[1]) == pytest.approx(
        entropy / math.log(4), abs=1e-12
    )


def test_row_stats_of_a_result_refuse_blocked_and_results_without_weights():
    from attncli.compute import prepare, run

    query, key, value = causal_problem()
    result = attncli.attention(query, key, value, causal=True)
    with pytest.raises(ValueError, match="give no blocked with it"):
        row_stats(result, np.zeros((4, 4), bool))
    blocked = run(prepare(query, key, value), block_rows=2)
    with pytest.raises(ValueError, match="kept no weights"):
        top_k(blocked, 2)
    with pytest.raises(TypeError, match="not list"):  # NumPy arrays are taken: the NumPy kernel's
        row_stats([[1.0, 0.0]])


def test_show_with_stats_and_top_k_is_the_cli_view_with_stats_and_top_k(tmp_path):
    query, key, value = causal_problem()
    text = shown(query, key, value, causal=True, stats=True, top_k=2)
    expected = cli_view(tmp_path, "--causal", "--stats", "--top-k", "2")
    assert text.split("\nweights  ", 1)[1] == expected.split("\nweights  ", 1)[1]
    assert "statistics per query row" in text
    assert "most attended keys per query row" in text


def test_a_result_computed_in_blocks_shows_the_table_it_kept():
    from attncli.compute import prepare, run
    from attncli.present.options import ViewOptions
    from attncli.present.tables import kept_views

    query, key, value = causal_problem()
    _, table = kept_views((4, 4), ViewOptions())
    result = run(prepare(query, key, value, causal=True), block_rows=2, table=table, entropy=True)
    text = printed(result)
    assert "computed in blocks of 2 query rows; the weights were not kept" in text
    whole = printed(attncli.attention(query, key, value, causal=True))
    assert text.split("\nweights  ", 1)[1] == whole.split("\nweights  ", 1)[1]


def doc_examples(text: str) -> list[tuple[str, str]]:
    """The (source, printed) pairs of a page's ```python blocks, written as a REPL session: `>>> `
    and `... ` lines are the source, the lines up to the next prompt or the block's end what it printed."""
    examples: list[tuple[list[str], list[str]]] = []
    for block in text.split("```python\n")[1:]:
        for line in block.split("\n```")[0].splitlines():
            if line.startswith(">>> "):
                examples.append(([line[4:]], []))
            elif line.startswith("... ") and examples and not examples[-1][1]:
                examples[-1][0].append(line[4:])
            elif examples:
                examples[-1][1].append(line)
    return [("\n".join(source), "\n".join(printed)) for source, printed in examples]


def test_docs_python_md_is_what_the_program_prints(monkeypatch, capsys):
    """docs/python.md, run as a REPL session at 80 columns without colour: every example is current."""
    from pathlib import Path

    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.setattr(rich, "_console", None)  # rich.print's console, made anew at that width
    examples = doc_examples((Path(__file__).parent.parent / "docs" / "python.md").read_text())
    assert len(examples) > 10
    namespace: dict = {}
    for source, expected in examples:
        capsys.readouterr()
        exec(compile(source + "\n", "<docs/python.md>", "single"), namespace)
        got = capsys.readouterr().out
        assert [line.rstrip() for line in got.rstrip("\n").splitlines()] == expected.splitlines(), source


@pytest.mark.parametrize("causal", [True, False])
def test_head_scores_of_a_result_equal_attn_heads_json(tmp_path, causal):
    """`analysis.heads.head_scores(result, tokens)` gives what `attn heads --format json` prints
    for the same masked, grouped input: every score of every (batch, head), token scores included."""
    from attncli.analysis.heads import head_scores

    problem = gqa_problem()
    tokens = ["a", "b", "a", "b", "a"]
    inputs = {role: problem[role] for role in ("query", "key", "value")}
    result = attncli.attention(**inputs, mask=problem["mask"], causal=causal)
    np.savez(tmp_path / "qkv.npz", **inputs)
    np.save(tmp_path / "mask.npy", problem["mask"])
    command = ["heads", str(tmp_path / "qkv.npz"), "--mask", str(tmp_path / "mask.npy")]
    command += [*(["--causal"] if causal else []), "--labels", ",".join(tokens), "--format", "json"]
    done = CliRunner().invoke(app, command)
    assert done.exit_code == 0, done.output
    expected = json.loads(done.stdout)["scores"]
    scores = head_scores(result, tokens)
    assert sorted(scores) == sorted(expected)
    for name, values in scores.items():
        cli = np.array([[np.nan if v is None else v for v in row] for row in expected[name]], float)
        np.testing.assert_allclose(values.reshape(cli.shape), cli, rtol=1e-6, atol=1e-12, err_msg=name)
