"""--check: the weights path against scaled_dot_product_attention and float64 maths."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from reference import reference_attention
from typer.testing import CliRunner

from attncli.cli import app
from attncli.compute import attend, prepare
from attncli.compute.check import TOLERANCES, check, compare, float64_reference

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


@pytest.mark.cuda
def test_check_on_cuda():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA")
    inputs = case_inputs(CASES["gqa"])
    for dtype in ("float32", "float16", "bfloat16"):
        problem = prepare(**inputs, dtype=dtype, device="cuda")
        assert all(c.passed for c in check(problem, attend(problem)))
