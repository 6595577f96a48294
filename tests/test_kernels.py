"""The two kernels, NumPy (small CPU inputs, no torch import) and torch, each against the float64
reference: weights, output, every statistic and top-k; where each is chosen; and the command line's
small jobs never importing torch (in a fresh interpreter)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from reference import reference_attention
from test_analysis import _expected_stats, _expected_top_k
from typer.testing import CliRunner

from attncli.cli import app
from attncli.compute import kernels as kernel_choice
from attncli.compute import prepare, run

ROOT = Path(__file__).resolve().parent.parent
SEED = ROOT / "sample_inputs" / "seed.npz"
KERNELS = ("numpy", "torch")
FLOAT_STATS = ("entropy", "entropy_normalised", "max_weight", "sink", "distance")
TOLERANCE = {"float32": {"rtol": 2e-5, "atol": 2e-6}, "float64": {"rtol": 1e-11, "atol": 1e-12}}


def _array(x: object) -> np.ndarray:
    """A kernel's array as NumPy (a torch tensor copied off)."""
    if isinstance(x, np.ndarray):
        return x
    return x.detach().cpu().numpy()  # type: ignore[attr-defined]


def _case(name: str) -> dict:
    """Inputs and options of one case, random but fixed; masks with a fully masked row where named."""
    rng = np.random.default_rng(sum(map(ord, name)))

    def normal(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape)

    if name == "plain":
        return {"query": normal(2, 5, 8), "key": normal(2, 7, 8), "value": normal(2, 7, 3)}
    if name == "bool mask, a row fully masked":
        mask = rng.random((5, 7)) > 0.4
        mask[2] = False
        return {"query": normal(5, 8), "key": normal(7, 8), "value": normal(7, 4), "mask": mask}
    if name == "additive mask":
        mask = rng.standard_normal((5, 7))
        mask[rng.random((5, 7)) > 0.6] = -np.inf
        mask[4] = -np.inf
        return {"query": normal(5, 8), "key": normal(7, 8), "value": normal(7, 4), "mask": mask}
    if name == "causal":
        return {"query": normal(6, 8), "key": normal(6, 8), "value": normal(6, 8), "causal": True}
    if name == "causal and mask":
        mask = np.ones((2, 1, 6), dtype=bool)
        mask[1, 0, :3] = False  # batch 1: the first three keys are padding
        x = normal(2, 6, 8)
        return {"query": x, "key": x, "value": normal(2, 6, 8), "mask": mask, "causal": True}
    if name == "heads":
        return {"query": normal(6, 12), "key": normal(6, 12), "value": normal(6, 12), "heads": 3}
    if name == "grouped-query":
        return {"query": normal(1, 4, 5, 8), "key": normal(1, 2, 5, 8), "value": normal(1, 2, 5, 8)}
    raise ValueError(name)


CASES = (
    "plain",
    "bool mask, a row fully masked",
    "additive mask",
    "causal",
    "causal and mask",
    "heads",
    "grouped-query",
)


@pytest.mark.parametrize("block_rows", [None, 2], ids=["whole", "blocks-of-2"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("kernel", KERNELS)
def test_each_kernel_matches_the_float64_reference(kernel, case, dtype, block_rows):
    inputs = _case(case)
    expected_weights, expected_output = reference_attention(**inputs)
    given = {role: inputs[role].astype(dtype) for role in ("query", "key", "value")}
    options = {name: inputs[name] for name in ("mask", "causal", "heads") if name in inputs}
    problem = prepare(**given, **options, kernel=kernel)
    assert problem.kernel == kernel
    lq, lk = problem.weights_shape[-2:]
    table = (list(range(lq)), list(range(lk)))
    result = run(problem, block_rows=block_rows, keep_weights=True, stats=True, top_k=3, table=table)
    if kernel == "numpy":  # the NumPy kernel's result holds NumPy arrays: torch was never needed
        assert isinstance(result.weights, np.ndarray)
        assert isinstance(result.output, np.ndarray)
    weights, output = _array(result.weights), _array(result.output)
    assert weights.dtype == output.dtype == np.dtype(dtype)
    tolerance = TOLERANCE[dtype]
    np.testing.assert_allclose(weights, expected_weights, **tolerance)
    np.testing.assert_allclose(output, expected_output, **tolerance)

    blocked = result.masked_keys()
    expected = _expected_stats(expected_weights, blocked)
    assert result.stats is not None
    for name in FLOAT_STATS:
        got = _array(getattr(result.stats, name))
        np.testing.assert_array_equal(np.isnan(got), np.isnan(expected[name]), err_msg=name)
        np.testing.assert_allclose(got, expected[name], **tolerance, err_msg=name)
    np.testing.assert_array_equal(_array(result.stats.argmax), expected["argmax"])
    assert result.top_k is not None
    values, keys = (_array(x) for x in result.top_k)
    expected_values, expected_keys = _expected_top_k(expected_weights, blocked, 3)
    np.testing.assert_array_equal(keys, expected_keys)
    np.testing.assert_allclose(values, expected_values, **tolerance)
    fully_masked = ~np.broadcast_to(blocked, expected_weights.shape).all(-1) if blocked is not None else None
    expected_rows = [] if fully_masked is None else [tuple(map(int, i)) for i in np.argwhere(~fully_masked)]
    assert result.fully_masked_rows() == expected_rows
    assert result.table is not None
    np.testing.assert_allclose(result.table.cells, expected_weights, **tolerance)


def _expected_picture(
    weights: np.ndarray, blocked: np.ndarray | None, cell_rows: int, cell_keys: int
) -> tuple[np.ndarray, np.ndarray]:
    """Max and mean of the open weights of each (cell_rows x cell_keys) cell, NaN where none is open."""
    *lead, lq, lk = weights.shape
    closed = np.zeros(weights.shape, bool) if blocked is None else np.broadcast_to(blocked, weights.shape)
    grid = (*lead, -(-lq // cell_rows), -(-lk // cell_keys))
    largest, mean = np.full(grid, np.nan), np.full(grid, np.nan)
    for index in np.ndindex(*grid):
        *matrix, r, c = index
        cell = (*matrix, slice(r * cell_rows, (r + 1) * cell_rows), slice(c * cell_keys, (c + 1) * cell_keys))
        open_weights = weights[cell][~closed[cell]]
        if open_weights.size:
            largest[index], mean[index] = open_weights.max(), open_weights.mean()
    return largest, mean


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("kernel", KERNELS)
def test_each_kernels_pooled_picture_matches_the_reference(kernel, case):
    """The heatmap's cells (`PictureSink`, NumPy or torch) against the float64 weights pooled by hand."""
    inputs = _case(case)
    expected_weights, _ = reference_attention(**inputs)
    given = {role: inputs[role].astype(np.float32) for role in ("query", "key", "value")}
    options = {name: inputs[name] for name in ("mask", "causal", "heads") if name in inputs}
    result = run(prepare(**given, **options, kernel=kernel), picture=(2, 3))
    assert result.picture_max is not None
    assert result.picture_mean is not None
    expected_max, expected_mean = _expected_picture(
        expected_weights, result.masked_keys(), *result.picture_blocks
    )
    np.testing.assert_allclose(result.picture_max, expected_max, rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(result.picture_mean, expected_mean, rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize(
    ("options", "kernel"),
    [
        ({}, "numpy"),
        ({"dtype": "float64"}, "numpy"),
        ({"dtype": "float16"}, "torch"),
        ({"dtype": "bfloat16"}, "torch"),
        ({"device": "cuda"}, "torch"),
        ({"device": "auto"}, "torch"),
        ({"check": True}, "torch"),
        ({"whole": False}, "torch"),
    ],
)
def test_the_torch_kernel_runs_whatever_the_numpy_one_does_not_do(options, kernel):
    assert kernel_choice.choose((3, 4), (3, 4), **options) == kernel


def test_a_small_problem_below_the_memory_limit_gives_its_output_from_numpy_blocks(tmp_path):
    """--memory-limit below a small problem's weights, nothing shown: the plan is the fused output,
    which the NumPy kernel gives from its blocks (it has no fused kernel)."""
    out = tmp_path / "out.npz"
    result = CliRunner().invoke(
        app, ["compute", str(SEED), "--memory-limit", "40B", "--causal", "-q", "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    inputs = np.load(SEED)
    _, expected_output = reference_attention(inputs["query"], inputs["key"], inputs["value"], causal=True)
    np.testing.assert_allclose(np.load(out)["output"], expected_output, rtol=2e-5, atol=2e-6)
    done = CliRunner().invoke(app, ["compute", str(SEED), "--memory-limit", "40B", "-q"])
    assert done.exit_code == 0, done.output


def test_the_numpy_kernel_takes_small_problems_only():
    limit = kernel_choice.NUMPY_MAX_WEIGHTS
    assert kernel_choice.choose((2048, 64), (2048, 64)) == "numpy"
    assert kernel_choice.choose((2049, 64), (2048, 64)) == "torch"
    assert kernel_choice.choose((1024, 64), (1024, 64), heads=4) == "numpy"  # 4 x 1024 x 1024 = 2 ** 22
    assert kernel_choice.weights_count((2, 1024, 64), (1024, 64), 4) == 2 * 4 * 1024 * 1024 > limit
    assert kernel_choice.choose((1, 8, 1024, 64), (1, 2, 1024, 64)) == "torch"  # grouped: 8 x 1024 x 1024


@pytest.mark.parametrize(
    "args",
    [
        ["compute", str(SEED)],
        ["compute", str(SEED), "--stats", "--top-k", "2"],
        ["compute", str(SEED), "--causal", "--format", "json"],
        [
            "compute",
            "sample_inputs/multihead.safetensors",
            "--mask",
            "sample_inputs/padding_mask.npy",
            "--causal",
        ],
        ["demo"],
    ],
    ids=["seed", "stats", "json", "mask", "demo"],
)
def test_both_kernels_print_the_same(args, monkeypatch):
    """The tables of the NumPy kernel are the torch kernel's (its weights may differ in the last bit:
    the seed's and the demo's are the same bits; a title's row-sum figure may show that bit)."""
    runner = CliRunner()
    printed = []
    for limit in (kernel_choice.NUMPY_MAX_WEIGHTS, -1):  # -1: nothing is small enough for NumPy
        monkeypatch.setattr(kernel_choice, "NUMPY_MAX_WEIGHTS", limit)
        colour = [] if "--color" in args else ["--color", "never"]
        result = runner.invoke(app, [*args, *colour], env={"COLUMNS": "120"})
        assert result.exit_code == 0, result.output
        printed.append(result.output)
    if args[-1] == "json":
        numpy_json, torch_json = (__import__("json").loads(text) for text in printed)
        assert numpy_json["meta"] == torch_json["meta"]
        for name in ("weights", "output"):
            np.testing.assert_allclose(numpy_json[name], torch_json[name], rtol=1e-6, atol=1e-7)
    elif args == ["demo"]:  # the same but for what the tutorial's steps were run in
        numpy_text = printed[0].replace("the tutorial's steps (run in NumPy):", "the tutorial:")
        assert numpy_text == printed[1]
    elif args[1:2] == [str(SEED)]:
        assert printed[0] == printed[1]
    else:  # the row-sum figure of a title may differ in its last bit: the rest is the same
        strip = [[line.split("rowsum=")[0] for line in text.splitlines()] for text in printed]
        assert strip[0] == strip[1]


# Each job through the command line's Typer app, one after the other in one fresh interpreter.
_PROBE = """
import json, sys
from typer.testing import CliRunner
from attncli.cli import app
runner = CliRunner()
codes = []
for args in json.loads(sys.argv[1]):
    result = runner.invoke(app, args)
    codes.append(int(result.exit_code))
    print(result.output)
print("torch imported:", "torch" in sys.modules, "exits:", codes, file=sys.stderr)
"""

SMALL_JOBS = [
    ["compute", str(SEED)],
    ["demo", "--color", "never"],
    ["compute", str(SEED), "--stats", "--top-k", "2"],
    ["compute", str(SEED), "--format", "json", "--stats"],
    ["compute", str(SEED), "-q", "-o", "{tmp}/result.safetensors"],
    ["compute", str(SEED), "-q", "-o", "{tmp}/result.npz", "--stats", "--top-k", "2"],
    ["compute", str(SEED), "-q", "-o", "{tmp}/result.json", "--causal"],
    ["compute", "sample_inputs/multihead.safetensors", "--mask", "sample_inputs/padding_mask.npy"],
    ["compute", "sample_inputs/pattern.safetensors", "--view", "heatmap", "--stats"],
]


def test_small_jobs_never_import_torch(tmp_path):
    """Every small job, one after the other in one fresh interpreter: torch is never imported."""
    jobs = [[arg.replace("{tmp}", str(tmp_path)) for arg in args] for args in SMALL_JOBS]
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, __import__("json").dumps(jobs)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    expected = f"torch imported: False exits: {[0] * len(jobs)}"
    assert done.stderr.strip().splitlines()[-1] == expected, done.stderr[-2000:]
    assert done.stdout.count("attention  weights = softmax") >= 5  # what the jobs printed
    for name in ("result.safetensors", "result.npz", "result.json"):
        assert (tmp_path / name).stat().st_size > 0
