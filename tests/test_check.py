"""--check: the weights path against scaled_dot_product_attention and float64 maths."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from reference import reference_attention
from test_render import check_golden, render
from typer.testing import CliRunner

from attncli.cli import app
from attncli.compute import attend, fused, prepare
from attncli.compute import check as check_module
from attncli.compute.check import (
    TOLERANCES,
    Comparison,
    ReferenceCheck,
    check,
    compare,
    float64_blocks,
    float64_reference,
)
from attncli.present.tables import check_table

runner = CliRunner()
RNG = np.random.default_rng(11)

CASES = {
    "plain": {"query": RNG.standard_normal((2, 5, 8)), "key": RNG.standard_normal((2, 6, 8))},
    "causal, broadcast batch": {
        "query": RNG.standard_normal((3, 5, 8)),
        "key": RNG.standard_normal((5, 8)),
        "causal": True,
    },
    "gqa": {
        "query": RNG.standard_normal((2, 6, 4, 8)),
        "key": RNG.standard_normal((2, 2, 4, 8)),
        "causal": True,
    },
    "heads and a mask with a dead row": {
        "query": RNG.standard_normal((2, 5, 12)),
        "key": RNG.standard_normal((2, 5, 12)),
        "heads": 3,
        "mask": np.array([[True] * 5, [False] * 5, [True, False, True, False, True], [True] * 5, [True] * 5]),
    },
    "float mask with more batch axes": {
        "query": RNG.standard_normal((5, 8)),
        "key": RNG.standard_normal((6, 8)),
        "mask": RNG.standard_normal((2, 5, 6)),
        "causal": True,
    },
}


def case_inputs(case: dict) -> dict:
    inputs = dict(case)
    inputs["value"] = RNG.standard_normal((*inputs["key"].shape[:-1], 4 * (inputs.get("heads") or 1)))
    return inputs


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "bfloat16"])
@pytest.mark.parametrize("name", list(CASES))
def test_correct_results_pass(name, dtype):
    inputs = case_inputs(CASES[name])
    problem = prepare(**inputs, dtype=dtype)
    comparisons = check(problem, attend(problem))
    assert [c.reference.split(" ")[0] for c in comparisons] == [
        "scaled_dot_product_attention",
        "float64",
        "float64",
    ]
    for comparison in comparisons:
        assert comparison.passed, comparison
        assert comparison.compared > 0
        assert (comparison.rtol, comparison.atol) == TOLERANCES[getattr(torch, dtype)]


def test_the_float64_maths_matches_the_numpy_reference():
    inputs = case_inputs(CASES["heads and a mask with a dead row"])
    weights, output = float64_reference(prepare(**inputs, dtype="float64"))
    expected_weights, expected_output = reference_attention(**inputs)
    np.testing.assert_allclose(weights.numpy(), expected_weights, atol=1e-12)
    # float64_reference keeps the heads apart: (..., H, Lq, Dv/H)
    merged = output.transpose(-3, -2).flatten(-2).numpy()
    np.testing.assert_allclose(merged, expected_output, atol=1e-12)


def test_a_perturbed_result_fails_with_the_worst_index():
    inputs = case_inputs(CASES["plain"])
    problem = prepare(**inputs)
    result = attend(problem)
    perturbed = result.weights.clone()
    perturbed[1, 3, 2] += 1e-3
    comparison = compare("weights", "test", perturbed, float64_reference(problem)[0], None, 1.3e-6, 1e-5)
    assert not comparison.passed
    assert comparison.outside == 1
    assert comparison.worst_index == (1, 3, 2)
    assert comparison.max_abs == pytest.approx(1e-3, rel=1e-3)
    assert comparison.worst_abs == comparison.max_abs  # the element outside is the worst one
    assert comparison.worst_allowed == pytest.approx(1e-5 + 1.3e-6 * float(result.weights[1, 3, 2]))


def test_fully_masked_rows_are_left_out_not_compared_as_nan():
    inputs = case_inputs(CASES["heads and a mask with a dead row"])
    problem = prepare(**inputs)
    result = attend(problem)
    comparisons = check(problem, result)
    rows = 2 * 3 * 5  # batch x heads x query rows
    live_rows = rows - 2 * 3  # row 1 is dead in every batch entry and head
    assert comparisons[1].compared == live_rows * 5  # weights: 5 keys per row
    assert all(c.passed for c in comparisons)


def test_cli_check_passes_and_reports(samples):
    result = runner.invoke(
        app, ["compute", str(samples / "gqa.npz"), "--check", "--head", "0"], env={"COLUMNS": "160"}
    )
    assert result.exit_code == 0, result.output
    assert "check: the weights path against the fused kernel and the float64 maths" in result.stdout
    assert result.stdout.count("✓ same") == 3


def test_cli_check_fails_with_status_1_when_the_kernel_disagrees(samples, monkeypatch, tmp_path):
    real = torch.nn.functional.scaled_dot_product_attention

    def off_by_a_little(*args, **kwargs):
        return real(*args, **kwargs) + 1e-3

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", off_by_a_little)
    target = tmp_path / "r.json"
    result = runner.invoke(
        app, ["compute", str(samples / "seed.npz"), "--check", "--format", "json", "-o", str(target)]
    )
    assert result.exit_code == 1, result.output
    verdicts = {
        (c["tensor"], c["reference"].split(" ")[0]): c["passed"]
        for c in json.loads(result.stdout)["meta"]["check"]
    }
    assert verdicts == {
        ("output", "scaled_dot_product_attention"): False,
        ("weights", "float64"): True,
        ("output", "float64"): True,
    }
    assert json.loads(target.read_text())["meta"]["check"][0]["passed"] is False  # the file was still written
    kernel_row = json.loads(result.stdout)["meta"]["check"][0]
    assert kernel_row["against"] == "kernel"
    assert kernel_row["worst_abs"] == pytest.approx(1e-3, rel=1e-3)  # the kernel's offset
    assert kernel_row["worst_abs"] > kernel_row["worst_allowed"]
    assert "max_rel" not in kernel_row


@pytest.mark.cuda
def test_check_on_cuda():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA")
    inputs = case_inputs(CASES["gqa"])
    for dtype in ("float32", "float16", "bfloat16"):
        problem = prepare(**inputs, dtype=dtype, device="cuda")
        assert all(c.passed for c in check(problem, attend(problem)))


# --- the comparison, block by block, against a whole-matrix float64 one -------------------------


def whole_comparison(actual, expected, dead, rtol, atol) -> dict:
    """The figures of one comparison, from the criterion, over whole matrices in float64 NumPy: an
    element is outside when |a - b| > atol + rtol * |b| or |a - b| is NaN or infinite; the worst
    element is the first (row-major) that uses the largest share of its tolerance; rows where
    `dead` (..., rows) holds are left out."""
    a, b = np.broadcast_arrays(np.asarray(actual, np.float64), np.asarray(expected, np.float64))
    keep = np.ones(a.shape, bool)
    if dead is not None:
        keep = np.broadcast_to(~np.asarray(dead)[..., None], a.shape)
    with np.errstate(invalid="ignore"):
        gap = np.abs(a - b)
        allowed = atol + rtol * np.abs(b)
        inside = (gap <= allowed) & np.isfinite(gap)
        share = gap / allowed
    share = np.where(keep, np.where(np.isnan(share), np.inf, share), -np.inf)
    compared = int(keep.sum())
    worst = tuple(int(i) for i in np.unravel_index(np.argmax(share), share.shape)) if compared else ()
    return {
        "max_abs": float(gap[keep].max()) if compared else 0.0,
        "worst_index": worst,
        "worst_abs": float(gap[worst]) if compared else 0.0,
        "worst_allowed": float(allowed[worst]) if compared else 0.0,
        "outside": int((keep & ~inside).sum()),
        "compared": compared,
    }


def figures(comparison: ReferenceCheck) -> dict:
    return {name: getattr(comparison, name) for name in whole_comparison([0.0], [0.0], None, 1, 1)}


def fed_in_blocks(actual, expected, dead, rtol, atol, rows, part=None) -> ReferenceCheck:
    """`Comparison` fed `rows` query rows (axis -2) at a time, each taken in parts of about `part`
    elements (None: check's own); arrays with a single row or fewer axes broadcast along them."""

    def block(array, start, stop, axis):
        if array is None or array.ndim < -axis or array.shape[axis] == 1:
            return array
        return array[..., start:stop, :] if axis == -2 else array[..., start:stop]

    comparison = Comparison("weights", "test", "test", rtol, atol)
    with pytest.MonkeyPatch.context() as patch:
        if part is not None:
            patch.setattr(check_module, "PART_ELEMENTS", part)
        lq = np.broadcast_shapes(actual.shape, expected.shape)[-2]
        for start in range(0, lq, rows):
            stop = start + rows
            dead_rows = block(dead, start, stop, -1)
            comparison.add(
                torch.from_numpy(block(actual, start, stop, -2)),
                torch.from_numpy(block(expected, start, stop, -2)),
                None if dead_rows is None else torch.from_numpy(dead_rows),
                start,
            )
    return comparison.result()


def awkward_pair() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(actual float32, expected float64, dead rows) over (2, 3, 7, 5): small gaps, some outside,
    a NaN on each side, an infinity on one side, a dead row holding NaN, and ties of the worst
    element across blocks and matrices (an infinite share at (1, 0, 0, 1) and (0, 2, 5, 3))."""
    rng = np.random.default_rng(5)
    expected = rng.random((2, 3, 7, 5))
    actual = (expected + rng.uniform(-8e-6, 8e-6, expected.shape)).astype(np.float32)
    actual[0, 1, 3, 2] += 3e-4  # outside
    actual[1, 2, 6, 4] -= 1e-4  # outside
    actual[1, 0, 0, 1] = np.nan
    expected[0, 2, 5, 3] = np.nan
    actual[0, 0, 4, 0] = np.inf
    dead = np.zeros((2, 3, 7), bool)
    dead[1, 1, 2] = True
    actual[1, 1, 2, :] = np.nan  # left out with its row
    return actual, expected, dead


#: Parts of a block, in elements: one row of (2, 3, rows, 5) at a time (30 elements), two rows,
#: and check's own (the whole block here).
PARTS = [1, 60, None]


@pytest.mark.parametrize("part", PARTS)
@pytest.mark.parametrize("rows", [1, 2, 3, 7])
def test_blocks_give_the_whole_comparisons_figures(rows, part):
    actual, expected, dead = awkward_pair()
    whole = whole_comparison(actual, expected, dead, 1.3e-6, 1e-5)
    assert whole["outside"] == 5
    assert whole["worst_index"] == (0, 0, 4, 0)
    comparison = fed_in_blocks(actual, expected, dead, 1.3e-6, 1e-5, rows, part)
    np.testing.assert_equal(figures(comparison), whole)


@pytest.mark.parametrize("part", PARTS)
@pytest.mark.parametrize("rows", [1, 3, 7])
def test_blocks_give_the_whole_comparisons_figures_when_all_are_inside(rows, part):
    _, expected, _ = awkward_pair()
    expected = np.nan_to_num(expected)
    inside = (expected + np.linspace(-9e-6, 9e-6, expected.size).reshape(expected.shape)).astype(np.float32)
    for dead in (None, np.arange(2 * 3 * 7).reshape(2, 3, 7) % 4 == 1):
        whole = whole_comparison(inside, expected, dead, 1.3e-6, 1e-5)
        comparison = fed_in_blocks(inside, expected, dead, 1.3e-6, 1e-5, rows, part)
        np.testing.assert_equal(figures(comparison), whole)
        assert comparison.passed
        assert comparison.worst_abs <= comparison.worst_allowed


def test_ties_of_the_worst_element_go_to_the_first_in_row_major_order():
    expected = np.zeros((2, 4, 3))
    actual = expected.copy()
    actual[1, 0, 0] = actual[0, 3, 2] = 1.0  # the same share: (0, 3, 2) comes first in the whole
    for rows in (1, 2, 4):
        for part in (1, 6, None):  # parts of one row, two rows, the whole block
            assert fed_in_blocks(actual, expected, None, 0.0, 0.5, rows, part).worst_index == (0, 3, 2)


@pytest.mark.parametrize("sizes", [(1, 3, 2, 1), (2, 5), (4, 1, 1, 1)])
def test_blocks_of_any_sizes_give_the_whole_comparisons_figures(sizes):
    """Blocks larger than the first (the comparison's buffers grow), smaller, and in parts."""
    actual, expected, dead = awkward_pair()
    whole = whole_comparison(actual, expected, dead, 1.3e-6, 1e-5)
    for part in (1, 60, None):
        with pytest.MonkeyPatch.context() as patch:
            if part is not None:
                patch.setattr(check_module, "PART_ELEMENTS", part)
            comparison = Comparison("weights", "test", "test", 1.3e-6, 1e-5)
            for start, stop in zip(np.cumsum((0, *sizes[:-1])), np.cumsum(sizes), strict=True):
                comparison.add(
                    torch.from_numpy(actual[..., start:stop, :]),
                    torch.from_numpy(expected[..., start:stop, :]),
                    torch.from_numpy(dead[..., start:stop]),
                    int(start),
                )
        np.testing.assert_equal(figures(comparison.result()), whole)


def infinite_pair(dtype) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(actual in `dtype`, expected float64, dead rows) over (3, 6, 4), every element inside but
    for infinities: on the expected side only (|a - b| and its tolerance both infinite), on both
    sides alike (|a - b| NaN), on both sides opposite (infinite), on the actual side only; a dead
    row holding infinities; the largest finite share tied at (0, 4, 1) and (2, 1, 3)."""
    rng = np.random.default_rng(3)
    expected = rng.uniform(-1, 1, (3, 6, 4))
    actual = (expected + rng.uniform(-4e-6, 4e-6, expected.shape)).astype(dtype)
    expected = expected.copy()
    expected[1, 2, 0] = np.inf
    actual[1, 4, 2] = expected[1, 4, 2] = -np.inf
    actual[2, 0, 1], expected[2, 0, 1] = np.inf, -np.inf
    actual[0, 5, 3] = np.inf
    dead = np.zeros((3, 6), bool)
    dead[0, 1] = dead[2, 5] = True
    actual[0, 1, :] = np.inf
    expected[2, 5, :] = -np.inf
    expected[0, 4, 1] = expected[2, 1, 3] = 0.5
    actual[0, 4, 1] = actual[2, 1, 3] = 0.5 + 8e-6  # twice the other gaps at most
    return actual, expected, dead


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("part", [1, 8, None])
@pytest.mark.parametrize("rows", [1, 2, 4, 6])
def test_infinities_on_either_side_are_outside_as_the_whole_comparison_says(rows, part, dtype):
    actual, expected, dead = infinite_pair(dtype)
    whole = whole_comparison(actual, expected, dead, 1.3e-6, 1e-5)
    assert whole["outside"] == 4
    assert whole["worst_index"] == (0, 5, 3)  # the first of the four in row-major order
    assert math.isnan(whole["max_abs"])
    np.testing.assert_equal(figures(fed_in_blocks(actual, expected, dead, 1.3e-6, 1e-5, rows, part)), whole)
    # without them every element is inside, and the worst is the largest finite share
    finite = ~np.isinf(actual) & ~np.isinf(expected)
    actual, expected = np.where(finite, actual, 0), np.where(finite, expected, 0)
    whole = whole_comparison(actual, expected, dead, 1.3e-6, 1e-5)
    assert (whole["outside"], whole["worst_index"]) == (0, (0, 4, 1))
    np.testing.assert_equal(figures(fed_in_blocks(actual, expected, dead, 1.3e-6, 1e-5, rows, part)), whole)


@pytest.mark.parametrize("part", [1, 5, 40, None])
@pytest.mark.parametrize("rows", [1, 3, 5, 8])
def test_many_ties_and_failures_in_parts_give_the_whole_comparisons_figures(rows, part):
    """Gaps and expected values on coarse grids, so that hundreds of elements tie for the worst
    share and many are outside, some where the subtraction rounds; dead rows everywhere."""
    rng = np.random.default_rng(17)
    expected = rng.integers(-8, 9, (2, 3, 8, 5)) / 8
    actual = (expected + rng.integers(-3, 4, expected.shape) * 2.0**-10).astype(np.float32)
    dead = rng.random((2, 3, 8)) < 0.2
    live = np.broadcast_to(~dead[..., None], expected.shape)
    for rtol, atol in ((0.0, 2.0**-10), (2.0**-9, 2.0**-11), (1.3e-6, 1e-5)):
        whole = whole_comparison(actual, expected, dead, rtol, atol)
        assert 0 < whole["outside"] < whole["compared"]
        share = np.abs(actual - expected) / (atol + rtol * np.abs(expected))
        assert (share[live] == share[live].max()).sum() > 1  # ties for the worst (59 with rtol 0)
        comparison = fed_in_blocks(actual, expected, dead, rtol, atol, rows, part)
        np.testing.assert_equal(figures(comparison), whole)


@pytest.mark.parametrize("part", [1, 5, None])
@pytest.mark.parametrize("rows", [1, 2, 7])
def test_an_expected_side_and_dead_rows_that_broadcast(rows, part):
    """Expected values with fewer axes, and with one row for every query row; dead rows with fewer
    axes: the figures of the whole comparison over the broadcast shape."""
    actual, expected, _ = awkward_pair()
    dead = np.zeros(7, bool)
    dead[[2, 5]] = True
    for shared in (expected[1, 0], expected[1, 0, :1], expected[:, :1]):
        whole = whole_comparison(actual, shared, dead, 1.3e-6, 1e-5)
        assert whole["outside"] > 0
        comparison = fed_in_blocks(actual, shared, dead, 1.3e-6, 1e-5, rows, part)
        np.testing.assert_equal(figures(comparison), whole)


def test_nothing_to_compare_passes_with_no_worst_element():
    comparison = compare("weights", "test", torch.zeros(2, 0, 3), torch.zeros(2, 0, 3), None, 1e-6, 1e-6)
    assert (comparison.compared, comparison.outside, comparison.worst_index) == (0, 0, ())
    everything_dead = torch.zeros(2, 3, dtype=torch.bool)
    comparison = compare("weights", "test", torch.ones(2, 3, 4), torch.zeros(2, 3, 4), everything_dead, 1, 1)
    assert comparison.passed
    assert comparison.compared == 0


def split_heads(output: np.ndarray, heads: int | None) -> np.ndarray:
    """(..., Lq, Dv) -> (..., H, Lq, Dv/H), as check compares outputs."""
    if heads is None:
        return output
    return np.moveaxis(output.reshape(*output.shape[:-1], heads, -1), -2, -3)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("name", list(CASES))
def test_check_in_blocks_gives_the_verdicts_and_figures_of_a_whole_float64_comparison(name, dtype):
    """check's figures, for blocks of 1, 2 and every query row, against whole-matrix NumPy
    comparisons with the float64 reference of tests/reference.py (the kernel's output: torch's)."""
    inputs = case_inputs(CASES[name])
    # Inputs that the dtype holds exactly (a float mask is added in float32), so that both
    # references start from the same numbers.
    for role in ("query", "key", "value"):
        inputs[role] = inputs[role].astype(dtype).astype(np.float64)
    if "mask" in inputs and inputs["mask"].dtype != bool:
        inputs["mask"] = inputs["mask"].astype(np.float32).astype(np.float64)
    problem = prepare(**inputs, dtype=dtype)
    result = attend(problem)
    # Every weight of one element off (one outside each matrix), so that something fails too.
    result = dataclasses.replace(result, weights=result.weights.clone())
    result.weights[..., 2, 0] += 1e-2
    weights64, output64 = reference_attention(**inputs)
    heads = inputs.get("heads")
    dead = weights64.sum(axis=-1) == 0  # (..., [H,] Lq): rows with every key masked
    output = split_heads(result.output.double().numpy(), heads)
    rtol, atol = TOLERANCES[getattr(torch, dtype)]
    for rows in (1, 2, None):
        # the kernel run as check runs it: with a mask, in the same blocks of rows
        kernel = fused(problem, upcast_half=False, block_rows=rows).output.double().numpy()
        expected = [
            whole_comparison(output, split_heads(kernel, heads), dead, rtol, atol),
            whole_comparison(result.weights.double().numpy(), weights64, dead, rtol, atol),
            whole_comparison(output, split_heads(output64, heads), dead, rtol, atol),
        ]
        assert expected[1]["outside"] > 0
        assert expected[2]["outside"] == 0
        comparisons = check(problem, result, block_rows=rows)
        for comparison, whole in zip(comparisons, expected, strict=True):
            assert comparison.passed == (whole["outside"] == 0)
            got = figures(comparison)
            assert {k: got[k] for k in ("worst_index", "outside", "compared")} == {
                k: whole[k] for k in ("worst_index", "outside", "compared")
            }, (comparison, whole)
            # the references differ from each other by float64 rounding alone
            for key in ("max_abs", "worst_abs", "worst_allowed"):
                assert got[key] == pytest.approx(whole[key], rel=1e-6, abs=1e-12), key


@pytest.mark.parametrize("rows", [1, 2, 3])
@pytest.mark.parametrize("name", list(CASES))
def test_the_float64_blocks_are_the_numpy_reference(name, rows):
    inputs = case_inputs(CASES[name])
    problem = prepare(**inputs, dtype="float64")
    blocks = list(float64_blocks(problem, rows))
    assert [start for start, _, _ in blocks] == list(range(0, problem.weights_shape[-2], rows))
    weights = torch.cat([block for _, block, _ in blocks], dim=-2).numpy()
    output = torch.cat([block for _, _, block in blocks], dim=-2).numpy()
    expected_weights, expected_output = reference_attention(**inputs)
    np.testing.assert_allclose(weights, expected_weights, atol=1e-12)
    np.testing.assert_allclose(output, split_heads(expected_output, inputs.get("heads")), atol=1e-12)


def test_check_reports_its_progress_in_query_rows():
    inputs = case_inputs(CASES["plain"])
    problem = prepare(**inputs)
    seen = []
    check(problem, attend(problem), block_rows=2, progress=lambda done, total: seen.append((done, total)))
    assert seen == [(2, 5), (4, 5), (5, 5)]


def test_cli_check_gives_the_progress_bar_its_rows(samples, monkeypatch):
    from attncli.cli import _display

    bars = []
    real = _display._progress

    def recording(total, *, enabled, what="query rows"):
        bars.append((total, enabled, what, []))
        with real(total, enabled=enabled, what=what) as advance:

            def advance_and_record(done, total_):
                bars[-1][3].append(done)
                advance(done, total_)

            yield advance_and_record

    monkeypatch.setattr(_display, "_progress", _display.contextmanager(recording))
    result = runner.invoke(app, ["compute", str(samples / "seed.npz"), "--check"])
    assert result.exit_code == 0, result.output
    (total, enabled, what, done), *_ = [bar for bar in bars if bar[2] != "query rows"]
    assert (total, enabled, what) == (3, True, "checking query rows")
    assert done[-1] == 3


def test_the_progress_bar_names_what_it_counts(monkeypatch, capsys):
    """Shown once a second has gone and stderr is a terminal, labelled with `what`."""
    import time

    from rich.console import Console

    from attncli.cli._display import _progress

    clock = iter(range(0, 1000, 5))
    monkeypatch.setattr(time, "monotonic", lambda: float(next(clock)))
    monkeypatch.setattr(Console, "is_terminal", property(lambda self: True))
    with _progress(10, enabled=True, what="checking query rows") as advance:
        advance(5, 10)
        advance(10, 10)
    assert "checking query rows" in capsys.readouterr().err


# --- the table ------------------------------------------------------------------------------------


def golden_comparisons() -> tuple[list[ReferenceCheck], list[dict]]:
    """Three comparisons of designed float32 results (2 batches x 4 heads x 16 query rows) with
    exact figures: expected values are multiples of 2**-12 under 1, the differences multiples of
    2**-24, so that both sides are exact in float32, every |a - b| is exact, and the table is the
    same on any machine. The weights have five elements
    outside and a dead row; the outputs are inside. Returns them and the whole-matrix figures."""
    rng = np.random.default_rng(8)
    rtol, atol = TOLERANCES[torch.float32]
    cases = []
    for tensor, against, cols in (
        ("output", "kernel", 8),
        ("weights", "float64", 16),
        ("output", "float64", 8),
    ):
        low, high = (-1, 1) if tensor == "output" else (0, 0.5)
        expected = np.round(rng.uniform(low, high, (2, 4, 16, cols)) * 4095) / 4096
        actual = expected + np.round(rng.uniform(-8e-6, 8e-6, expected.shape) * 2**24) / 2**24
        dead = None
        if tensor == "weights":
            dead = np.zeros((2, 4, 16), bool)
            dead[0, 2, 9] = True
            actual[dead] = expected[dead] = 0.0
            for index in ((0, 1, 3, 2), (1, 3, 12, 7), (1, 0, 15, 15), (0, 3, 0, 0), (1, 2, 8, 11)):
                actual[index] += 2**-12 if index != (1, 3, 12, 7) else 3 * 2**-12
        assert np.array_equal(actual.astype(np.float32), actual)  # exact in float32
        cases.append((tensor, against, actual, expected, dead))
    kernel = "scaled_dot_product_attention (float32, cpu)"
    comparisons = [
        compare(
            tensor,
            kernel if against == "kernel" else "float64 maths on the CPU",
            torch.from_numpy(actual.astype(np.float32)),
            torch.from_numpy(expected),
            None if dead is None else torch.from_numpy(~dead),
            rtol,
            atol,
            against=against,
        )
        for tensor, against, actual, expected, dead in cases
    ]
    wholes = [whole_comparison(actual, expected, dead, rtol, atol) for _, _, actual, expected, dead in cases]
    return comparisons, wholes


@pytest.mark.parametrize("width", [80, 160])
def test_the_check_table_matches_golden_and_cuts_nothing(width):
    comparisons, wholes = golden_comparisons()
    for comparison, whole in zip(comparisons, wholes, strict=True):
        np.testing.assert_equal(figures(comparison), whole)
    assert [c.passed for c in comparisons] == [True, False, True]
    text = render(check_table(comparisons), width=width)
    check_golden(f"check_{width}.txt", text)
    assert "…" not in text
    assert all(len(line) <= width for line in text.splitlines())
    rows = text.splitlines()[-3:]
    for row, whole in zip(rows, wholes, strict=True):
        sign = "≤" if whole["outside"] == 0 else ">"
        assert f"{whole['worst_abs']:.2e} {sign} {whole['worst_allowed']:.2e}" in row
        assert ", ".join(map(str, whole["worst_index"])) in row
        assert f"{whole['outside']} of {whole['compared']:,}" in row
    assert "(rtol 1.3e-06, atol 1e-05)" in " ".join(text.split())  # wrapped at 80


@pytest.mark.parametrize("width", [80, 60])
def test_the_check_table_wraps_long_cells_and_cuts_no_figure(width):
    """A 16k-position case on 4 axes: at 80 columns the index and the counts wrap at their spaces;
    narrower than the table can go, each comparison takes a few lines."""
    huge = ReferenceCheck(
        tensor="weights",
        reference="float64 maths on the CPU",
        against="float64",
        max_abs=1.25e-6,
        worst_index=(3, 15, 16383, 16383),
        worst_abs=math.nan,
        worst_allowed=1.1e-5,
        outside=123456789,
        compared=17179869184,
        rtol=1.3e-6,
        atol=1e-5,
    )
    text = render(check_table([huge]), width=width)
    assert "…" not in text
    assert all(len(line) <= width for line in text.splitlines())
    words = [word.strip("(),;") for word in text.split()]  # a figure folded or cut is not among them
    for figure in ("nan", "1.10e-05", "3", "15", "16383", "123,456,789", "17,179,869,184"):
        assert figure in words, figure
    assert words.count("16383") == 2
    assert "✗ DIFFERENT" in text


def test_cli_check_table_fits_80_columns(samples):
    result = runner.invoke(
        app, ["compute", str(samples / "gqa.npz"), "--check", "--head", "0"], env={"COLUMNS": "80"}
    )
    assert result.exit_code == 0, result.output
    table = result.stdout[result.stdout.index("check: the weights path") :]
    assert "…" not in table
    assert table.count("✓ same") == 3
    assert "output vs kernel" in table
    assert "weights vs float64" in table
