"""The exit statuses docs/exit-codes.md promises, where a run used to end otherwise: masks that turn
into NaN weights, NaN passing --check, too many axes, JSON without its weights, memory failures, a
stdout that takes only part of the output, a closed stderr, names a terminal cannot show.

Expected values are computed by tests/reference.py (float64 NumPy) or written here by hand from
the input; statuses and messages are what the documentation says.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import assert_error
from reference import reference_attention
from typer.testing import CliRunner

from attncli import compute
from attncli.cli import app
from attncli.compute import check
from attncli.compute.prepare import MAX_AXES, prepare
from attncli.errors import InputError, ShapeError, escaped

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args), env={"COLUMNS": "100"})


def attn(*args: str, **popen: object) -> subprocess.CompletedProcess[str]:
    """`attn` in a process of its own, as a shell starts it (its stdout and stderr real files)."""
    command = [sys.executable, "-m", "attncli", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False, **popen)  # type: ignore[call-overload]


def qkv(folder: Path, shape: tuple[int, ...] = (3, 4)) -> list[str]:
    rng = np.random.default_rng(1)
    paths = []
    for role in ("query", "key", "value"):
        path = folder / f"{role}.npy"
        np.save(path, rng.standard_normal(shape).astype(np.float32))
        paths.append(str(path))
    return paths


# --- masks are checked in the dtype they are added in -------------------------------------------


def test_a_finite_mask_that_overflows_the_scores_dtype_is_refused(tmp_path):
    mask = np.zeros((3, 3))
    mask[1, 2] = 1e300  # finite in float64, +inf in the float32 scores: NaN weights, once
    np.save(tmp_path / "m.npy", mask)
    assert_error(
        invoke("compute", *qkv(tmp_path), "--mask", str(tmp_path / "m.npy")),
        "m.npy",
        "1 values that are NaN or +inf in float32",
        "index (1, 2)",
    )


def test_the_same_mask_is_used_when_computing_in_float64(tmp_path):
    mask = np.zeros((3, 3))
    mask[1, 2] = 1e300
    np.save(tmp_path / "m.npy", mask)
    out = tmp_path / "r.json"
    paths = qkv(tmp_path)
    mask_option = ["--mask", str(tmp_path / "m.npy")]
    result = invoke("compute", *paths, *mask_option, "--dtype", "float64", "-o", str(out))
    assert result.exit_code == 0, result.output
    expected, _ = reference_attention(*(np.load(p) for p in paths), mask=mask)
    np.testing.assert_allclose(json.loads(out.read_text())["weights"], expected, rtol=1e-12)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_a_mask_given_by_python_or_a_capture_file_is_checked_too(bad):
    q = np.ones((2, 4), np.float32)
    mask = np.zeros((2, 2), np.float32)
    mask[0, 1] = bad
    with pytest.raises(InputError, match=r"layers\.0\.mask: the mask holds 1 values .* index \(0, 1\)"):
        prepare(q, q, q, mask=mask, names={"mask": "cap.safetensors:layers.0.mask"})


def test_minus_infinity_in_a_mask_stays_what_it_means():
    q = np.random.default_rng(2).standard_normal((3, 4)).astype(np.float32)
    mask = np.zeros((3, 3))
    mask[:, 0] = -1e300  # -inf in float32: masked, as -inf is
    result = compute.attention(q, q, q, mask=mask)
    expected, _ = reference_attention(q, q, q, mask=np.where(mask < 0, -np.inf, 0.0))
    np.testing.assert_allclose(result.weights.numpy(), expected, atol=1e-6)


# --- --check fails on NaN -------------------------------------------------------------------------


@pytest.mark.parametrize("side", ["actual", "expected", "both"])
def test_check_counts_a_nan_on_either_side_as_outside_the_tolerance(side):
    actual = torch.full((2, 3), 0.25, dtype=torch.float64)
    expected = actual.clone()
    if side in ("actual", "both"):
        actual[1, 2] = torch.nan
    if side in ("expected", "both"):
        expected[1, 2] = torch.nan
    comparison = check.compare("weights", "test", actual, expected, None, 1e-6, 1e-6)
    assert not comparison.passed
    assert comparison.outside == 1
    assert comparison.worst_index == (1, 2)


def test_check_still_passes_equal_tensors():
    values = torch.rand(3, 4, dtype=torch.float64)
    comparison = check.compare("output", "test", values, values.clone(), None, 1e-9, 1e-9)
    assert comparison.passed
    assert comparison.outside == 0
    assert comparison.compared == 12


# --- axes ---------------------------------------------------------------------------------------


def test_inputs_of_more_axes_than_attncli_takes_are_a_usage_error(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.ones((1,) * (MAX_AXES - 1) + (3, 4), np.float32))
    assert_error(invoke("compute", str(path)), "x.npy", f"{MAX_AXES + 1} axes", f"at most {MAX_AXES}")


def test_inputs_of_the_most_axes_are_computed(tmp_path):
    rng = np.random.default_rng(3)
    q = rng.standard_normal((1,) * (MAX_AXES - 2) + (3, 4)).astype(np.float32)
    result = compute.attention(q, q, q, causal=True)
    expected, output = reference_attention(q.reshape(3, 4), q.reshape(3, 4), q.reshape(3, 4), causal=True)
    assert result.weights.ndim == MAX_AXES
    np.testing.assert_allclose(result.weights.numpy().reshape(3, 3), expected, atol=1e-6)
    np.testing.assert_allclose(result.output.numpy().reshape(3, 4), output, atol=1e-6)


def test_heads_that_would_make_too_many_axes_are_refused():
    q = np.ones((1,) * (MAX_AXES - 2) + (3, 4), np.float32)
    with pytest.raises(ShapeError, match=f"{MAX_AXES + 1} axes: .* split into 2 heads"):
        prepare(q, q, q, heads=2)


def test_a_mask_of_too_many_axes_is_refused(tmp_path):
    mask = tmp_path / "m.npy"
    np.save(mask, np.ones((1,) * (MAX_AXES - 1) + (3, 3), bool))
    assert_error(invoke("compute", *qkv(tmp_path), "--mask", str(mask)), "m.npy", "the mask has 33 axes")


# --- JSON holds the weights or is refused -----------------------------------------------------------


def test_json_of_weights_beyond_the_memory_limit_is_refused_not_printed_without_them(tmp_path):
    paths = qkv(tmp_path, (64, 4))  # 64 x 64 float32 weights: 16 KiB
    for output in (("--format", "json"), ("-o", str(tmp_path / "r.json"))):
        assert_error(
            invoke("compute", *paths, "--memory-limit", "4KiB", *output),
            "the weights (16.0 KiB) do not fit the memory limit (4.0 KiB)",
            "-o FILE.safetensors",
            "--stream for JSON without the weights",
        )
    assert not (tmp_path / "r.json").exists()


def test_json_asked_with_stream_holds_all_but_the_weights(tmp_path):
    paths = qkv(tmp_path, (64, 4))
    result = invoke("compute", *paths, "--memory-limit", "4KiB", "--stream", "--format", "json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert "weights" not in document
    assert document["meta"]["computed_by"] == "scaled_dot_product_attention"
    _, expected = reference_attention(*(np.load(p) for p in paths))
    np.testing.assert_allclose(document["output"], expected, atol=1e-6)


# --- memory failures are status 3 -------------------------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [
        MemoryError(),
        RuntimeError(
            "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: "
            "you tried to allocate 3600000000 bytes. Error code 12 (Cannot allocate memory)"
        ),
    ],
    ids=["MemoryError", "torch-allocator"],
)
def test_running_out_of_memory_anywhere_is_status_3_with_one_line(tmp_path, monkeypatch, error):
    def exhausted(*args, **kwargs):
        raise error

    monkeypatch.setattr("attncli.cli._display.finish", exhausted)
    line = assert_error(invoke("compute", *qkv(tmp_path)), "out of memory", "fewer positions", status=3)
    assert "alloc_cpu.cpp" not in line or "\n" not in line.rstrip("\n")


def test_another_runtime_error_is_still_reported_as_a_bug(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("shape mismatch in something")

    monkeypatch.setattr("attncli.cli._display.finish", broken)
    assert_error(invoke("compute", *qkv(tmp_path)), "internal error", "--traceback", status=70)


# --- the standard streams ---------------------------------------------------------------------------


# Not marked slow (nor the two tests below): small `attn` processes whose figures are their own
# status and streams, which neither measure time or memory nor send a signal, so they need not wait
# for the slow tests' lock (1.7-2.1 s of waiting at the end of a parallel run).
def test_a_stdout_cut_short_by_the_file_size_limit_is_status_3(tmp_path):
    paths = qkv(tmp_path)
    out = tmp_path / "out.json"

    def limit_files() -> None:  # the JSON document of three files is about 1.5 kB
        resource.setrlimit(resource.RLIMIT_FSIZE, (500, 500))

    with out.open("w") as stdout:
        done = subprocess.run(
            [sys.executable, "-m", "attncli", "inspect", *paths, "--format", "json"],
            stdout=stdout,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            preexec_fn=limit_files,
            check=False,
        )
    assert done.returncode == 3, done.stderr
    assert done.stderr == "attn: error: stdout: cannot be written: File too large\n"


def test_a_closed_stderr_keeps_the_status_of_the_error(tmp_path):
    done = attn("inspect", str(tmp_path / "missing.npy"), preexec_fn=lambda: os.close(2))
    assert done.returncode == 2
    assert done.stdout == ""


def test_names_a_terminal_cannot_show_are_escaped_not_a_crash(tmp_path):
    path = tmp_path / "odd.json"
    path.write_text('{"a\\ud800b": [[1.0, 2.0]], "c\\nd": [[3.0, 4.0]], "meta": {"k\\udc00": "v"}}')
    for command in (("inspect", str(path)), ("diff", str(path), str(path))):
        done = attn(*command, env={**os.environ, "COLUMNS": "100"})
        assert done.returncode == 0, done.stderr
        assert done.stderr == ""
        assert "a\\ud800b" in done.stdout
        assert "c\\nd" in done.stdout
    assert "k\\udc00" in attn("inspect", str(path)).stdout


def test_escaped_shows_each_unprintable_character_as_python_writes_it():
    assert escaped("plain name") == "plain name"
    assert escaped("a\nb\x07\ud800") == "a\\nb\\x07\\ud800"
    assert escaped("é ✓ 注意") == "é ✓ 注意"
