"""`attn diff` and attncli.analysis.diff: exit statuses like cmp, tolerances per dtype (stored or
computed), tensors held by one file only, weights rows.

Expected numbers come from NumPy (and torch.isclose) on the arrays written here, never from attncli.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_error
from safetensors.numpy import save_file
from typer.testing import CliRunner

from attncli.cli import app

runner = CliRunner()
RNG = np.random.default_rng(3)


def invoke(*args: str, input: bytes | None = None):
    return runner.invoke(app, list(args), input=input, env={"COLUMNS": "120"})


def diff_json(*args: str, status: int = 0, input: bytes | None = None) -> dict:
    result = invoke("diff", *args, "--format", "json", input=input)
    assert result.exit_code == status, result.output
    assert result.stderr == ""
    return json.loads(result.stdout)


def save(path: Path, tensors: dict[str, np.ndarray] | np.ndarray) -> str:
    if isinstance(tensors, np.ndarray):
        np.save(path, tensors)
    elif path.suffix == ".npz":
        np.savez(path, **tensors)
    else:
        save_file(tensors, str(path))
    return str(path)


def softmax(scores: np.ndarray) -> np.ndarray:
    shifted = np.exp(scores - scores.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


# --- exit statuses ------------------------------------------------------------------------------------


def test_equal_files_in_different_formats_exit_0(tmp_path: Path) -> None:
    tensors = {"query": RNG.standard_normal((2, 5, 8)).astype(np.float32), "ids": np.arange(6)}
    first, second = save(tmp_path / "a.npz", tensors), save(tmp_path / "b.safetensors", tensors)
    result = invoke("diff", first, second, "--no-color")
    assert result.exit_code == 0, result.output
    assert "equal within tolerance" in result.stdout
    assert "different:" not in result.stdout
    report = diff_json(first, second)
    assert report["close"] is True
    assert {t["name"]: t["verdict"] for t in report["tensors"]} == {"query": "equal", "ids": "equal"}
    assert all(t["max_abs"] == 0 and t["outside"] == 0 for t in report["tensors"])


def test_slightly_different_inside_tolerance_exit_0(tmp_path: Path) -> None:
    reference = RNG.standard_normal((64, 64)).astype(np.float32)
    nudged = np.nextafter(reference, np.float32(np.inf))  # one float32 step: far inside rtol 1.3e-6
    first, second = save(tmp_path / "a.npy", nudged), save(tmp_path / "b.npy", reference)
    result = invoke("diff", first, second)
    assert result.exit_code == 0, result.output
    assert "close" in result.stdout
    (tensor,) = diff_json(first, second)["tensors"]
    gap = np.abs(nudged.astype(np.float64) - reference)
    assert tensor["max_abs"] == gap.max()
    assert tensor["max_rel"] == pytest.approx((gap / np.abs(reference.astype(np.float64))).max(), rel=1e-12)
    assert (tensor["verdict"], tensor["outside"]) == ("close", 0)
    # Nothing outside: the worst element is the one using the largest share of its tolerance.
    share = gap / (1e-5 + 1.3e-6 * np.abs(reference.astype(np.float64)))
    assert tuple(tensor["worst_index"]) == np.unravel_index(np.argmax(share), share.shape)
    assert tensor["worst_excess"] < 0


def test_different_exit_1_with_the_worst_element(tmp_path: Path) -> None:
    reference = RNG.standard_normal((3, 4, 5))
    changed = reference.copy()
    changed[1, 2, 3] += 0.5
    changed[2, 0, 1] += 1e-3
    changed[0, 0, 0] = reference[0, 0, 0] + 5e-8  # inside rtol 1e-7 * |b| + atol 1e-7 for most values
    first, second = save(tmp_path / "a.npy", changed), save(tmp_path / "b.npy", reference)
    result = invoke("diff", first, second, "--no-color")
    assert result.exit_code == 1, result.output
    assert "different: 1 of 1" in result.stdout
    assert "(1, 2, 3)" in result.stdout
    (tensor,) = diff_json(first, second, status=1)["tensors"]
    gap = np.abs(changed - reference)
    allowed = 1e-7 + 1e-7 * np.abs(reference)
    assert tensor["max_abs"] == gap.max()
    assert tensor["max_rel"] == (gap / np.abs(reference)).max()
    assert tuple(tensor["worst_index"]) == np.unravel_index(np.argmax(gap - allowed), gap.shape)
    assert tensor["outside"] == int((gap > allowed).sum())
    assert tensor["outside_share"] == pytest.approx((gap > allowed).mean())
    assert (tensor["rtol"], tensor["atol"]) == (1e-7, 1e-7)


def test_quiet_prints_nothing(tmp_path: Path) -> None:
    first = save(tmp_path / "a.npy", np.zeros(3))
    second = save(tmp_path / "b.npy", np.ones(3))
    for other, status in ((first, 0), (second, 1)):
        result = invoke("diff", "-q", first, other)
        assert (result.exit_code, result.stdout, result.stderr) == (status, "", "")
    assert_error(invoke("diff", "-q", first, str(tmp_path / "c.npy")), "c.npy", "no such file")


def test_mismatched_shapes_exit_2_naming_both(tmp_path: Path) -> None:
    first = save(tmp_path / "a.npz", {"weights": np.zeros((2, 3)), "output": np.zeros(4)})
    second = save(tmp_path / "b.npz", {"weights": np.zeros((3, 2)), "output": np.zeros(4)})
    assert_error(invoke("diff", first, second), "'weights'", "(2, 3)", "(3, 2)", first, second)
    single = save(tmp_path / "c.npy", np.zeros(5))
    assert_error(invoke("diff", single, f"{second}:output"), "(5,)", "(4,)")


def test_names_in_one_file_only_are_listed_and_make_the_files_different(tmp_path: Path) -> None:
    first = save(tmp_path / "a.npz", {"weights": np.zeros(3), "output": np.zeros(3), "extra": np.zeros(1)})
    second = save(tmp_path / "b.npz", {"weights": np.zeros(3), "scores": np.zeros(2)})
    result = invoke("diff", first, second, "--no-color")
    assert (result.exit_code, result.stderr) == (1, "")
    text = " ".join(result.stdout.split())
    assert f"only in A ({first}): output, extra" in text
    assert f"only in B ({second}): scores" in text
    assert "different: 3 tensor(s) in one file only" in text
    assert "--common compares only those" in text
    report = diff_json(first, second, status=1)
    assert (report["close"], report["only_in_a"], report["only_in_b"]) == (
        False,
        ["output", "extra"],
        ["scores"],
    )
    assert report["common_only"] is False
    assert [(t["name"], t["verdict"]) for t in report["tensors"]] == [("weights", "equal")]


def test_common_compares_only_the_tensors_both_hold(tmp_path: Path) -> None:
    weights = softmax(RNG.standard_normal((3, 4)))
    first = save(tmp_path / "a.npz", {"weights": weights, "entropy": np.ones(3), "argmax": np.zeros(3, int)})
    second = save(tmp_path / "b.safetensors", {"weights": weights.copy(), "scores": np.zeros(2)})
    result = invoke("diff", first, second, "--common", "--no-color")
    assert result.exit_code == 0, result.output
    text = " ".join(result.stdout.split())
    assert f"only in A ({first}): entropy, argmax" in text
    assert f"only in B ({second}): scores" in text
    assert "equal within tolerance (3 tensor(s) in one file only left out: --common)" in text
    report = diff_json(first, second, "--common")
    assert (report["close"], report["common_only"]) == (True, True)
    assert (report["only_in_a"], report["only_in_b"]) == (["entropy", "argmax"], ["scores"])
    # The status follows the common tensors: one of them different is status 1, --common or not.
    moved = save(tmp_path / "c.npz", {"weights": weights[::-1].copy(), "entropy": np.ones(3)})
    assert invoke("diff", "-q", first, moved, "--common").exit_code == 1
    assert diff_json(moved, second, "--common", status=1)["tensors"][0]["verdict"] == "different"
    text = " ".join(invoke("diff", moved, second, "--no-color").stdout.split())
    assert "different: 1 of 1 tensor(s) outside tolerance; 2 tensor(s) in one file only" in text


def test_no_tensor_name_in_common_exit_2(tmp_path: Path) -> None:
    first = save(tmp_path / "a.npz", {"weights": np.zeros(3), "output": np.zeros(3)})
    second = save(tmp_path / "b.npz", {"query": np.zeros(3), "key": np.zeros(3)})
    for extra in ((), ("--common",)):
        assert_error(
            invoke("diff", first, second, *extra),
            "no tensor of the same name",
            "weights, output",
            "query, key",
        )


def test_unreadable_file_exit_2(tmp_path: Path) -> None:
    first = save(tmp_path / "a.npy", np.zeros(3))
    broken = tmp_path / "b.safetensors"
    broken.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    assert_error(invoke("diff", first, str(broken)), str(broken), "not a valid .safetensors file")
    assert_error(invoke("diff", first, str(tmp_path / "nope.npz")), "nope.npz", "no such file")
    assert_error(invoke("diff", first, f"{first}:missing"), "no tensor named 'missing'")


def test_bad_usage_exit_2(tmp_path: Path) -> None:
    first = save(tmp_path / "a.npy", np.zeros(3))
    assert_error(invoke("diff", first, first, "--rtol", "-1"), "--rtol", ">= 0")
    assert_error(invoke("diff", first, first, "--atol", "nan"), "--atol")
    assert_error(invoke("diff", first, first, "--top-k", "0"), "--top-k")
    assert_error(invoke("diff", first), "B")
    assert_error(invoke("diff", "-", "-", input=b"[1]"), "stdin")


def test_stdin_against_a_file(tmp_path: Path) -> None:
    array = RNG.standard_normal((4, 4)).astype(np.float32)
    path = Path(save(tmp_path / "a.npy", array))
    report = diff_json("-", str(path), input=path.read_bytes())
    assert report["a"] == "<stdin>"
    assert report["close"] is True


def test_help_documents_the_exit_statuses() -> None:
    result = invoke("diff", "--help")
    text = " ".join(result.stdout.split())
    assert (
        "0 equal within tolerance, 1 different (or tensors in one file only, without --common), 2 trouble"
        in text
    )


# --- tolerances ---------------------------------------------------------------------------------------

# torch.testing.assert_close's documented defaults, but for half precision an atol of the dtype's
# resolution near 1 (its eps: 2**-10 and 2**-7, rounded), as `attn compute --check` takes them.
DEFAULTS = {
    "bfloat16": (1.6e-2, 1e-2),
    "float16": (1e-3, 1e-3),
    "float32": (1.3e-6, 1e-5),
    "float64": (1e-7, 1e-7),
}


def test_the_defaults_are_those_of_compute_check() -> None:
    import torch

    from attncli.analysis.diff import DEFAULT_TOLERANCES
    from attncli.compute.check import TOLERANCES

    assert DEFAULT_TOLERANCES == DEFAULTS
    assert {str(dtype).removeprefix("torch."): limits for dtype, limits in TOLERANCES.items()} == DEFAULTS
    assert torch.finfo(torch.float16).eps == pytest.approx(DEFAULTS["float16"][1], rel=0.03)
    assert torch.finfo(torch.bfloat16).eps == pytest.approx(DEFAULTS["bfloat16"][1], rel=0.3)


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_default_tolerances_per_dtype(tmp_path: Path, dtype: str) -> None:
    rtol, atol = DEFAULTS[dtype]
    reference = np.array([1.0, 100.0, -20.0, 0.0], dtype=dtype)
    limit = (atol + rtol * np.abs(reference.astype(np.float64))).astype(dtype)
    inside = (reference + 0.5 * limit).astype(dtype)
    outside = (reference + 3 * limit).astype(dtype)
    second = save(tmp_path / "b.npy", reference)
    for values, status in ((inside, 0), (outside, 1)):
        first = save(tmp_path / "a.npy", values)
        (tensor,) = diff_json(first, second, status=status)["tensors"]
        assert (tensor["rtol"], tensor["atol"], tensor["tolerance_dtype"]) == (rtol, atol, dtype)


def test_bfloat16_defaults_and_the_less_precise_dtype_wins(tmp_path: Path) -> None:
    values = np.array([1.0, 2.0, 3.0], dtype=np.float32)
    stored = (values.view(np.uint32) >> 16).astype("<u2").tobytes()
    header = json.dumps({"x": {"dtype": "BF16", "shape": [3], "data_offsets": [0, 6]}}).encode()
    bf16 = tmp_path / "x.safetensors"
    bf16.write_bytes(len(header).to_bytes(8, "little") + header + stored)
    (tensor,) = diff_json(str(bf16), save(tmp_path / "x32.npy", values * (1 + 1e-2)))["tensors"]
    assert (tensor["dtype_a"], tensor["rtol"], tensor["atol"]) == ("bfloat16", 1.6e-2, 1e-2)
    assert tensor["tolerance_dtype"] == "bfloat16"
    (mixed,) = diff_json(
        save(tmp_path / "h.npy", values.astype(np.float16)),
        save(tmp_path / "d.npy", values.astype(np.float64)),
    )["tensors"]
    assert (mixed["rtol"], mixed["atol"], mixed["tolerance_dtype"]) == (1e-3, 1e-3, "float16")


def test_a_files_computed_dtype_sets_the_tolerance(tmp_path: Path) -> None:
    """A result's metadata `dtype` (what it was computed in) counts as its dtype: a bfloat16 result
    stored as float32 takes bfloat16's tolerance; a finer computed dtype than stored changes nothing;
    a `dtype` that is not a float dtype's name is not one; integers stay exact."""
    reference = RNG.standard_normal((4, 8)).astype(np.float32) + 3.0
    nudged = reference * np.float32(1 + 5e-3)  # inside bfloat16's rtol, far outside float32's
    ids = np.arange(4)

    def result(name: str, values: np.ndarray, meta: object) -> str:
        path = tmp_path / name
        np.savez(path, output=values, ids=ids, meta=np.array(json.dumps({"dtype": meta})))
        return str(path)

    plain = save(tmp_path / "b.npz", {"output": reference, "ids": ids})
    report = diff_json(result("bf16.npz", nudged, "bfloat16"), plain)
    assert (report["computed_dtype_a"], report["computed_dtype_b"]) == ("bfloat16", None)
    tensors = {t["name"]: t for t in report["tensors"]}
    assert (tensors["output"]["tolerance_dtype"], tensors["output"]["rtol"]) == ("bfloat16", 1.6e-2)
    assert (tensors["ids"]["tolerance_dtype"], tensors["ids"]["atol"]) == (None, 0)
    text = " ".join(invoke("diff", str(tmp_path / "bf16.npz"), plain, "--no-color").stdout.split())
    assert (
        "the defaults for bfloat16, the coarser of A's bfloat16 (stored as float32) and B's float32" in text
    )
    # The same values said to be computed in float64, or in no float dtype: float32's tolerance.
    for name, meta in (("f64.npz", "float64"), ("odd.npz", "int8"), ("num.npz", 5)):
        report = diff_json(result(name, nudged, meta), plain, status=1)
        assert report["tensors"][0]["tolerance_dtype"] == "float32", name
    # Either side's computed dtype counts, and the coarser one wins.
    both = diff_json(result("h.npz", reference, "float16"), result("bf.npz", nudged, "bfloat16"))
    assert both["tensors"][0]["tolerance_dtype"] == "bfloat16"


def qkv_inputs(tmp_path: Path) -> tuple[str, dict[str, np.ndarray]]:
    rng = np.random.default_rng(11)
    tensors = {
        name: rng.standard_normal((2, 4, 6, 8)).astype(np.float32) for name in ("query", "key", "value")
    }
    return save(tmp_path / "qkv.npz", tensors), tensors


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
def test_a_bfloat16_result_round_trips_and_diffs_as_bfloat16(
    tmp_path: Path, suffix: str, stream: bool
) -> None:
    """`attn compute --dtype bfloat16 -o` stores bfloat16 (.safetensors) or float32 saying so (.npz);
    `attn diff` against the float32 run of the same inputs says equal, within bfloat16's tolerance,
    and against a different computation (causal) says different. The file reads back everywhere."""
    import torch
    from helpers import read_result, safetensors_dtypes
    from reference import reference_attention

    inputs, qkv = qkv_inputs(tmp_path)
    blocks = ["--stream", "--memory-limit", "20KiB"] if stream else []
    runs = {"bf16": ["--dtype", "bfloat16", *blocks], "f32": [], "causal": ["--causal"]}
    paths = {}
    for name, options in runs.items():
        paths[name] = str(tmp_path / f"{name}{suffix if name == 'bf16' else '.safetensors'}")
        done = invoke("compute", inputs, "-q", *options, "-o", paths[name])
        assert done.exit_code == 0, done.output

    # In the file itself: bfloat16, or float32 values that are bfloat16, and the metadata says which.
    bf16 = Path(paths["bf16"])
    saved, meta = read_result(bf16)
    assert meta["dtype"] == "bfloat16"
    assert ("computed_by" in meta) == stream  # the streamed file is written block by block
    if suffix == ".safetensors":
        assert safetensors_dtypes(bf16) == {"weights": "BF16", "output": "BF16"}
        assert "stored_dtype" not in meta
    else:
        assert meta["stored_dtype"] == "float32"
        assert {name: str(array.dtype) for name, array in saved.items()} == {
            "weights": "float32",
            "output": "float32",
        }
        for array in saved.values():
            assert not (array.view(np.uint32) & 0xFFFF).any()  # bfloat16 values, widened exactly
    rounded = {name: torch.from_numpy(x).to(torch.bfloat16).double().numpy() for name, x in qkv.items()}
    weights, output = reference_attention(rounded["query"], rounded["key"], rounded["value"])
    np.testing.assert_allclose(saved["weights"], weights, rtol=1e-2, atol=1e-3)
    np.testing.assert_allclose(saved["output"], output, rtol=1e-2, atol=1e-2)

    report = diff_json(paths["bf16"], paths["f32"])
    assert report["computed_dtype_a"] == "bfloat16"
    assert [(t["name"], t["tolerance_dtype"], t["verdict"]) for t in report["tensors"]] == [
        ("weights", "bfloat16", "close"),
        ("output", "bfloat16", "close"),
    ]
    text = " ".join(invoke("diff", paths["bf16"], paths["f32"], "--no-color").stdout.split())
    assert "the defaults for bfloat16, the coarser of A's bfloat16" in text
    assert "equal within tolerance" in text
    # Not a tolerance that passes anything: float32's calls them different, and so does bfloat16's
    # against another computation.
    assert (
        invoke("diff", "-q", paths["bf16"], paths["f32"], "--rtol", "1.3e-6", "--atol", "1e-5").exit_code == 1
    )
    different = diff_json(paths["bf16"], paths["causal"], status=1)
    assert {t["verdict"] for t in different["tensors"]} == {"different"}

    # Read back by inspect, and by compute (self-attention on the stored output).
    listed = json.loads(invoke("inspect", paths["bf16"], "--no-stats", "--format", "json").stdout)
    expected_dtype = "bfloat16" if suffix == ".safetensors" else "float32"
    assert {t["dtype"] for t in listed["files"][0]["tensors"]} == {expected_dtype}
    again = invoke("compute", f"{paths['bf16']}:output", "--dtype", "float64", "--format", "json")
    assert again.exit_code == 0, again.output
    stored = saved["output"].astype(np.float64)
    _, self_output = reference_attention(stored, stored, stored)
    np.testing.assert_allclose(
        np.array(json.loads(again.stdout)["output"]), self_output, rtol=1e-12, atol=1e-12
    )


def test_integers_are_exact_and_options_replace_defaults(tmp_path: Path) -> None:
    first = save(tmp_path / "a.npy", np.array([2**53, 7], dtype=np.int64))
    second = save(tmp_path / "b.npy", np.array([2**53 + 1, 7], dtype=np.int64))  # equal as float64
    (tensor,) = diff_json(first, second, status=1)["tensors"]
    assert (tensor["rtol"], tensor["atol"], tensor["outside"], tensor["tolerance_dtype"]) == (0, 0, 1, None)
    near = save(tmp_path / "c.npy", np.array([1.0, 2.0]))
    far = save(tmp_path / "d.npy", np.array([1.1, 2.0]))
    diff_json(near, far, status=1)
    (given,) = diff_json(near, far, "--atol", "0.2")["tensors"]
    assert (given["rtol"], given["atol"]) == (1e-7, 0.2)
    diff_json(near, far, "--rtol", "0.1", "--atol", "0")


def test_outside_count_agrees_with_torch_isclose(tmp_path: Path) -> None:
    import torch

    reference = RNG.standard_normal(500).astype(np.float32)
    reference[:20] = 0.0
    reference[20:23] = [np.inf, -np.inf, np.nan]
    other = reference + RNG.standard_normal(500).astype(np.float32) * np.float32(3e-5)
    other[:10] = 0.0  # equal zeros
    other[20:26] = [
        np.inf,
        np.inf,
        np.nan,
        np.nan,
        1.0,
        2.0,
    ]  # same inf, opposite inf, NaN both, NaN one side
    first, second = save(tmp_path / "a.npy", other), save(tmp_path / "b.npy", reference)
    (tensor,) = diff_json(first, second, status=1)["tensors"]
    close = torch.isclose(
        torch.from_numpy(other), torch.from_numpy(reference), rtol=1.3e-6, atol=1e-5, equal_nan=True
    )
    assert tensor["outside"] == int((~close).sum())
    assert (tensor["nan_a"], tensor["nan_b"], tensor["nan_both"]) == (2, 1, 1)
    assert tensor["max_abs"] == float("inf")  # -inf against inf


def test_nan_in_both_counts_as_equal_and_in_one_as_different(tmp_path: Path) -> None:
    base = np.array([[1.0, np.nan], [3.0, 4.0]], dtype=np.float32)
    second = save(tmp_path / "b.npy", base)
    (tensor,) = diff_json(save(tmp_path / "a.npy", base.copy()), second)["tensors"]
    assert (tensor["nan_a"], tensor["nan_b"], tensor["nan_both"], tensor["verdict"]) == (1, 1, 1, "equal")
    one_sided = base.copy()
    one_sided[0, 1] = 2.0
    result = invoke("diff", save(tmp_path / "c.npy", one_sided), second, "--no-color")
    assert result.exit_code == 1
    assert "NaN in A 0, in B 1, in both 0" in " ".join(result.stdout.split())
    (tensor,) = diff_json(str(tmp_path / "c.npy"), second, status=1)["tensors"]
    assert (tensor["outside"], tensor["worst_index"], tensor["max_abs"]) == (1, [0, 1], 0.0)


def test_max_rel_ignores_zeros_within_tolerance_as_assert_close(tmp_path: Path) -> None:
    reference = np.array([0.0, 2.0, 4.0])
    second = save(tmp_path / "b.npy", reference)
    (inside,) = diff_json(save(tmp_path / "a.npy", np.array([5e-8, 2.0, 4.0 + 2e-7])), second)["tensors"]
    assert inside["max_rel"] == pytest.approx(2e-7 / 4.0)  # 5e-8 against 0 is within atol: ignored
    (outside,) = diff_json(save(tmp_path / "c.npy", np.array([1e-3, 2.0, 4.0])), second, status=1)["tensors"]
    assert outside["max_rel"] == float("inf")  # as assert_close reports a mismatch against 0


# --- weights: KL divergence and top-k agreement --------------------------------------------------------


def reference_rows(first: np.ndarray, second: np.ndarray, k: int) -> dict:
    """KL(A||B) and top-k agreement row by row, in plain NumPy and Python."""
    kls, same, overlaps = [], 0, []
    for p, q in zip(first.reshape(-1, first.shape[-1]), second.reshape(-1, second.shape[-1]), strict=True):
        p, q = p.astype(np.float64), q.astype(np.float64)
        if p.sum() == 0 or q.sum() == 0:
            continue
        p, q = p / p.sum(), q / q.sum()
        with np.errstate(divide="ignore"):
            kls.append(sum(pi * np.log(pi / qi) for pi, qi in zip(p, q, strict=True) if pi > 0))
        top_p = set(sorted(range(len(p)), key=lambda j: (-p[j], j))[:k])
        top_q = set(sorted(range(len(q)), key=lambda j: (-q[j], j))[:k])
        same += top_p == top_q
        overlaps.append(len(top_p & top_q) / k)
    return {
        "rows_compared": len(kls),
        "kl_mean": float(np.mean(kls)),
        "kl_max": float(np.max(kls)),
        "top_k_same": same / len(kls),
        "top_k_overlap": float(np.mean(overlaps)),
    }


@pytest.mark.parametrize("top_k", [1, 3, 50])
def test_kl_and_top_k_of_weights_against_numpy(tmp_path: Path, top_k: int) -> None:
    scores = RNG.standard_normal((2, 3, 6, 7))
    first = softmax(scores).astype(np.float32)
    second = softmax(scores + RNG.standard_normal(scores.shape) * 0.3).astype(np.float32)
    first[0, 1, 2] = 0.0  # a fully masked row in A
    second[1, 2, 5] = 0.0  # and another in B
    second[1, 0, 0, 3] = 0.0  # a key B never attends to: that row's KL(A||B) is infinite
    output = RNG.standard_normal((2, 3, 6, 4))
    a = save(tmp_path / "a.safetensors", {"weights": first, "output": output})
    b = save(tmp_path / "b.npz", {"weights": second, "output": output})
    report = diff_json(a, b, "--top-k", str(top_k), status=1)
    tensors = {t["name"]: t for t in report["tensors"]}
    assert "rows" not in tensors["output"]
    assert tensors["output"]["verdict"] == "equal"
    rows = tensors["weights"]["rows"]
    k = min(top_k, 7)
    expected = reference_rows(first, second, k)
    assert rows["rows"] == 36
    assert rows["top_k"] == k
    assert rows["rows_compared"] == expected["rows_compared"] == 34
    assert rows["kl_max"] == expected["kl_max"] == float("inf")
    assert rows["top_k_same"] == pytest.approx(expected["top_k_same"])
    assert rows["top_k_overlap"] == pytest.approx(expected["top_k_overlap"])
    finite = second.copy()
    finite[1, 0, 0, 3] = 1e-3
    b_finite = save(tmp_path / "c.npz", {"weights": finite, "output": output})
    rows = {t["name"]: t for t in diff_json(a, b_finite, status=1)["tensors"]}["weights"]["rows"]
    assert rows["kl_mean"] == pytest.approx(reference_rows(first, finite, 5)["kl_mean"], rel=1e-9)
    assert rows["kl_max"] == pytest.approx(reference_rows(first, finite, 5)["kl_max"], rel=1e-9)
    table = " ".join(invoke("diff", a, b_finite, "--no-color").stdout.split())
    assert "KL(A‖B) per row: mean" in table
    assert "over 34 of 36 rows" in table
    assert "top-5 keys" in table


def test_weights_picked_by_name_against_a_single_tensor(tmp_path: Path) -> None:
    weights = softmax(RNG.standard_normal((4, 5)))
    a = save(tmp_path / "a.npz", {"weights": weights, "output": np.zeros(2)})
    b = save(tmp_path / "b.npy", weights)
    (tensor,) = diff_json(f"{a}:weights", b)["tensors"]
    assert tensor["name"] == "weights"
    assert tensor["rows"]["kl_max"] == 0.0
    assert tensor["rows"]["top_k_same"] == 1.0


# Not marked slow: its figure is its own subprocess's peak resident size (ru_maxrss), which tests
# running beside it do not change, so it need not hold up the other slow tests (as the capture memory test).
def test_two_large_files_compare_in_bounded_memory(tmp_path: Path) -> None:
    """Two sparse 100 MB .npy files of zeros, one with a single changed value: one block in memory."""
    script = r"""
import json, resource, sys
import numpy as np
from typer.testing import CliRunner
from attncli.cli import app
count = 25_000_000
for path in sys.argv[1:]:
    with open(path, "wb") as file:
        header = {"descr": "<f4", "fortran_order": False, "shape": (count,)}
        np.lib.format.write_array_header_1_0(file, header)
        end = file.tell() + 4 * count
        file.truncate(end)
with open(sys.argv[2], "r+b") as file:
    file.seek(end - 4 * 1000)
    file.write(np.float32(1.0).tobytes())
small = sys.argv[1] + ".small.npy"
np.save(small, np.zeros(1000, np.float32))
runner = CliRunner()
# Imports on a small file: a warm-up on the large ones would already reach the peak measured below.
runner.invoke(app, ["diff", "-q", small, small])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
result = runner.invoke(app, ["diff", "--format", "json", *sys.argv[1:]])
print(result.exit_code, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before)
print(result.stdout)
"""
    paths = [str(tmp_path / "a.npy"), str(tmp_path / "b.npy")]
    done = subprocess.run([sys.executable, "-c", script, *paths], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    first, *rest = done.stdout.splitlines()
    status, growth = first.split()
    assert int(status) == 1
    assert float(growth) < 100  # MB, for 200 MB of data compared
    (tensor,) = json.loads("\n".join(rest))["tensors"]
    assert tensor["worst_index"] == [25_000_000 - 1000]
    assert tensor["outside"] == 1
    assert tensor["max_abs"] == 1.0
