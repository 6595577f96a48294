"""The `attn` command line end to end: every input and output format, options, errors, the demo.

Expected numbers come from tests/reference.py (float64 NumPy) on the same inputs, never from attncli.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from helpers import assert_error, read_result
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference import reference_attention
from safetensors.numpy import load_file, save_file
from typer.testing import CliRunner

from attncli.cli import app

runner = CliRunner()
RNG = np.random.default_rng(7)


def invoke(*args: str, input: bytes | str | None = None, env: dict[str, str] | None = None):
    return runner.invoke(app, list(args), input=input, env={"COLUMNS": "100", **(env or {})})


def json_result(*args: str, input: bytes | str | None = None) -> dict:
    result = invoke("compute", *args, "--format", "json", input=input)
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    return json.loads(result.stdout)


@pytest.fixture
def qkv(tmp_path: Path) -> dict[str, np.ndarray]:
    tensors = {
        "query": RNG.standard_normal((2, 5, 8)).astype(np.float32),
        "key": RNG.standard_normal((2, 6, 8)).astype(np.float32),
        "value": RNG.standard_normal((2, 6, 3)).astype(np.float32),
    }
    for name, array in tensors.items():
        np.save(tmp_path / f"{name}.npy", array)
    np.savez(tmp_path / "qkv.npz", **tensors)
    save_file(tensors, str(tmp_path / "qkv.safetensors"))
    (tmp_path / "qkv.json").write_text(json.dumps({k: v.tolist() for k, v in tensors.items()}))
    return tensors


def assert_matches_reference(
    payload: dict, tensors: dict[str, np.ndarray], atol: float = 1e-6, **options
) -> None:
    weights, output = reference_attention(tensors["query"], tensors["key"], tensors["value"], **options)
    np.testing.assert_allclose(np.array(payload["weights"]), weights, atol=atol, rtol=1e-5)
    np.testing.assert_allclose(np.array(payload["output"]), output, atol=atol, rtol=1e-5)


# --- inputs ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "paths",
    [
        ["query.npy", "key.npy", "value.npy"],
        ["qkv.npz"],
        ["qkv.safetensors"],
        ["qkv.json"],
        ["qkv.npz:query", "qkv.safetensors:key", "qkv.json:value"],
    ],
)
def test_every_input_format_matches_the_reference(tmp_path, qkv, paths):
    payload = json_result(*(str(tmp_path / p) for p in paths))
    assert_matches_reference(payload, qkv)
    assert payload["meta"]["input_shapes"] == {k: list(v.shape) for k, v in qkv.items()}


@pytest.mark.parametrize("name", ["qkv.npz", "qkv.safetensors", "qkv.json", "query.npy"])
def test_stdin_is_read_by_content_with_or_without_dash(tmp_path, qkv, name):
    data = (tmp_path / name).read_bytes()
    for args in ([], ["-"]):
        payload = json_result(*args, input=data)
        if name == "query.npy":  # one tensor: self-attention
            q = qkv["query"]
            assert_matches_reference(payload, {"query": q, "key": q, "value": q})
        else:
            assert_matches_reference(payload, qkv)
        assert payload["meta"]["sources"]["query"].startswith("<stdin>")


def test_stdin_can_be_one_of_three_paths(tmp_path, qkv):
    data = (tmp_path / "key.npy").read_bytes()
    payload = json_result(str(tmp_path / "query.npy"), "-", str(tmp_path / "value.npy"), input=data)
    assert_matches_reference(payload, qkv)


def test_one_tensor_is_self_attention(tmp_path):
    x = RNG.standard_normal((4, 6)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    payload = json_result(str(tmp_path / "x.npy"))
    assert_matches_reference(payload, {"query": x, "key": x, "value": x})


def test_integer_inputs_are_promoted_and_one_dimensional_inputs_are_one_position(tmp_path):
    q = np.array([1, 0, 2], dtype=np.int64)
    k = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=np.int32)
    np.save(tmp_path / "q.npy", q)
    np.save(tmp_path / "k.npy", k)
    payload = json_result(str(tmp_path / "q.npy"), str(tmp_path / "k.npy"), str(tmp_path / "k.npy"))
    assert np.array(payload["weights"]).shape == (1, 3)
    assert payload["meta"]["dtype"] == "float32"
    assert_matches_reference(payload, {"query": q, "key": k, "value": k})


def test_json_numbers_are_float64_so_auto_computes_in_float64(tmp_path, qkv):
    payload = json_result(str(tmp_path / "qkv.json"))
    assert payload["meta"]["dtype"] == "float64"
    weights, _ = reference_attention(qkv["query"], qkv["key"], qkv["value"])
    np.testing.assert_allclose(np.array(payload["weights"]), weights, atol=1e-12)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    batch=st.lists(st.integers(1, 3), max_size=2),
    positions=st.tuples(st.integers(1, 6), st.integers(1, 6)),
    features=st.tuples(st.integers(1, 6), st.integers(1, 6)),
    causal=st.booleans(),
    suffix=st.sampled_from([".npz", ".safetensors", ".json"]),
    seed=st.integers(0, 2**16),
)
def test_random_shapes_through_files_match_the_reference(
    tmp_path, batch, positions, features, causal, suffix, seed
):
    rng = np.random.default_rng(seed)
    (lq, lk), (d, dv) = positions, features
    tensors = {
        "query": rng.standard_normal((*batch, lq, d)).astype(np.float32),
        "key": rng.standard_normal((lk, d)).astype(np.float32),  # broadcast against the query's batch axes
        "value": rng.standard_normal((lk, dv)).astype(np.float32),
    }
    path = tmp_path / f"qkv{suffix}"
    if suffix == ".npz":
        np.savez(path, **tensors)
    elif suffix == ".safetensors":
        save_file(tensors, str(path))
    else:
        path.write_text(json.dumps({k: v.tolist() for k, v in tensors.items()}))
    args = [str(path), "--dtype", "float32"] + (["--causal"] if causal else [])
    assert_matches_reference(json_result(*args), tensors, atol=1e-5, causal=causal)


# --- options ---------------------------------------------------------------------------------


def test_causal_bool_mask_and_float_mask_combine(tmp_path, qkv):
    allowed = RNG.random((5, 6)) > 0.3
    allowed[:, 0] = True  # every row keeps one key
    additive = RNG.standard_normal((1, 5, 6)).astype(np.float32)
    np.save(tmp_path / "allowed.npy", allowed)
    np.save(tmp_path / "additive.npy", additive)
    npz = str(tmp_path / "qkv.npz")
    payload = json_result(npz, "--causal", "--mask", str(tmp_path / "allowed.npy"))
    assert_matches_reference(payload, qkv, causal=True, mask=allowed)
    payload = json_result(npz, "--mask", str(tmp_path / "additive.npy"), "--scale", "0.3")
    assert_matches_reference(payload, qkv, mask=additive, scale=0.3)


def test_mask_from_stdin(tmp_path, qkv):
    allowed = np.tril(np.ones((5, 6), dtype=bool))
    buffer = io.BytesIO()
    np.save(buffer, allowed)
    payload = json_result(str(tmp_path / "qkv.npz"), "--mask", "-", input=buffer.getvalue())
    assert_matches_reference(payload, qkv, mask=allowed)
    assert payload["meta"]["mask"] == "<stdin>"


def test_heads_split_features_and_merge_the_output(tmp_path):
    x = RNG.standard_normal((2, 5, 12)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    payload = json_result(str(tmp_path / "x.npy"), "--heads", "3", "--causal")
    assert np.array(payload["weights"]).shape == (2, 3, 5, 5)
    assert np.array(payload["output"]).shape == (2, 5, 12)
    assert_matches_reference(payload, {"query": x, "key": x, "value": x}, heads=3, causal=True)
    # and the fused kernel agrees on the output
    heads = torch.from_numpy(x).view(2, 5, 3, 4).transpose(1, 2)
    fused = (
        F.scaled_dot_product_attention(heads, heads, heads, is_causal=True).transpose(1, 2).reshape(2, 5, 12)
    )
    np.testing.assert_allclose(np.array(payload["output"]), fused.numpy(), atol=1e-5)


def test_grouped_query_sample_matches_sdpa(samples):
    payload = json_result(str(samples / "gqa.npz"))
    with np.load(samples / "gqa.npz") as archive:
        q, k, v = (torch.from_numpy(archive[n]) for n in ("query", "key", "value"))
    fused = F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    np.testing.assert_allclose(np.array(payload["output"]), fused.numpy(), atol=1e-5)
    assert payload["meta"]["query_heads_per_key_head"] == 4


@pytest.mark.parametrize(
    ("dtype", "atol"), [("float64", 1e-12), ("float32", 1e-6), ("float16", 2e-3), ("bfloat16", 2e-2)]
)
def test_dtypes(tmp_path, qkv, dtype, atol):
    payload = json_result(str(tmp_path / "qkv.npz"), "--dtype", dtype)
    assert payload["meta"]["dtype"] == dtype
    assert_matches_reference(payload, qkv, atol=atol)


def test_fully_masked_rows_are_zero_with_a_warning(tmp_path, qkv):
    allowed = np.ones((5, 6), dtype=bool)
    allowed[2] = False
    np.save(tmp_path / "allowed.npy", allowed)
    result = invoke(
        "compute", str(tmp_path / "qkv.npz"), "--mask", str(tmp_path / "allowed.npy"), "--format", "json"
    )
    assert result.exit_code == 0
    assert "attn: warning: 2 query row(s) have every key masked" in result.stderr
    assert "(0, 2), (1, 2)" in result.stderr
    payload = json.loads(result.stdout)
    assert np.all(np.array(payload["weights"])[:, 2] == 0)
    assert np.all(np.array(payload["output"])[:, 2] == 0)


HEADS_NOTE = "attn: note: "


def _compute_json(*args: str) -> tuple[dict, str]:
    result = invoke("compute", *args, "--format", "json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout), str(result.stderr)


@pytest.mark.parametrize("shape", [(16, 768), (2, 16, 768), (16, 320)], ids=["2-D", "3-D", "320"])
def test_merged_heads_without_heads_get_a_note_and_the_numbers_asked_for(tmp_path, shape):
    """(L, 768) without --heads is one head scaled by 1/sqrt(768): said on stderr, once, with the
    file and a --heads to try, and computed just as without the note (-q keeps it, as warnings)."""
    x = RNG.standard_normal(shape).astype(np.float32)
    path = str(tmp_path / "hidden.npy")
    np.save(path, x)
    features = shape[-1]
    payload, stderr = _compute_json(path)
    assert stderr.count("\n") == 1, stderr
    assert stderr.startswith(HEADS_NOTE + f"{path} {tuple(shape)}: query has {features} features"), stderr
    assert f"scale 1/sqrt({features})" in stderr
    assert f"--heads {features // 64} for 64 features each" in stderr
    assert payload["meta"]["heads"] is None
    assert_matches_reference(payload, {"query": x, "key": x, "value": x}, atol=1e-5)
    quiet = invoke("compute", path, "-q", "-o", str(tmp_path / "result.npz"))
    assert quiet.exit_code == 0, quiet.output
    assert quiet.stdout == ""
    assert quiet.stderr == stderr


@pytest.mark.parametrize(
    ("shape", "args"),
    [
        ((16, 64), []),
        ((16, 256), []),
        ((16, 200), []),
        ((16, 768), ["--heads", "12"]),
        ((16, 768), ["--heads", "1"]),
        ((1, 2, 16, 768), []),
    ],
    ids=["64", "256", "200", "heads-12", "heads-1", "4-D"],
)
def test_no_note_when_the_heads_are_settled(tmp_path, shape, args):
    x = RNG.standard_normal(shape).astype(np.float32)
    path = str(tmp_path / "x.npy")
    np.save(path, x)
    payload, stderr = _compute_json(path, *args)
    assert stderr == ""
    heads = int(args[1]) if args else None
    assert_matches_reference(payload, {"query": x, "key": x, "value": x}, atol=1e-5, heads=heads)


def test_the_note_leaves_out_the_scale_when_scale_is_given(tmp_path):
    x = RNG.standard_normal((8, 512)).astype(np.float32)
    path = str(tmp_path / "x.npy")
    np.save(path, x)
    payload, stderr = _compute_json(path, "--scale", "0.125")
    assert stderr.startswith(HEADS_NOTE), stderr
    assert "--heads 8 for 64" in stderr
    assert "1/sqrt" not in stderr
    assert_matches_reference(payload, {"query": x, "key": x, "value": x}, atol=1e-5, scale=0.125)


def test_heads_splitting_an_input_that_has_heads_gets_a_note(tmp_path):
    x = RNG.standard_normal((1, 3, 5, 16)).astype(np.float32)
    path = str(tmp_path / "x.npy")
    np.save(path, x)
    payload, stderr = _compute_json(path, "--heads", "4")
    assert stderr.count("\n") == 1, stderr
    assert stderr.startswith(HEADS_NOTE + f"{path} (1, 3, 5, 16) already has 3 heads, on axis 1"), stderr
    assert "--heads 4 split each into 4 of 4 features" in stderr
    assert_matches_reference(payload, {"query": x, "key": x, "value": x}, atol=1e-5, heads=4)


def test_a_refused_command_prints_its_error_and_no_note(tmp_path):
    path = str(tmp_path / "x.npy")
    np.save(path, RNG.standard_normal((4, 768)).astype(np.float32))
    assert_error(invoke("compute", path, "--head", "0"), "--head 0", "--heads N")


def test_heads_command_notes_merged_heads(tmp_path):
    path = str(tmp_path / "x.npy")
    np.save(path, RNG.standard_normal((8, 768)).astype(np.float32))
    result = invoke("heads", path, "--format", "json")
    assert result.exit_code == 0, result.output
    assert result.stderr.startswith(HEADS_NOTE + f"{path} (8, 768): query has 768 features"), result.stderr
    assert invoke("heads", path, "--heads", "12", "--format", "json").stderr == ""


# --- outputs ---------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".safetensors", ".npz", ".json"])
def test_output_files_hold_weights_output_and_metadata(tmp_path, qkv, suffix):
    target = tmp_path / f"result{suffix}"
    result = invoke("compute", str(tmp_path / "qkv.npz"), "--causal", "-q", "-o", str(target))
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    if suffix == ".safetensors":
        tensors = load_file(str(target))
        from safetensors import safe_open

        with safe_open(str(target), "np") as handle:
            meta = {k: json.loads(v) for k, v in handle.metadata().items()}
    elif suffix == ".npz":
        with np.load(target, allow_pickle=False) as archive:
            tensors = {name: archive[name] for name in ("weights", "output")}
            meta = json.loads(str(archive["meta"]))
    else:
        document = json.loads(target.read_text())
        tensors = {name: np.array(document[name]) for name in ("weights", "output")}
        meta = document["meta"]
    assert_matches_reference(tensors, qkv, causal=True)
    assert meta["causal"] is True
    assert meta["scale"] == pytest.approx(1 / np.sqrt(8))
    assert meta["dtype"] == "float32"
    assert meta["device"] == "cpu"
    assert meta["input_shapes"]["value"] == [2, 6, 3]
    assert meta["attncli_version"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_existing_output_is_kept_without_force_and_replaced_with_it(tmp_path, qkv):
    target = tmp_path / "result.npz"
    target.write_bytes(b"precious")
    assert_error(invoke("compute", str(tmp_path / "qkv.npz"), "-o", str(target)), "--force", str(target))
    assert target.read_bytes() == b"precious"
    result = invoke("compute", str(tmp_path / "qkv.npz"), "-q", "-o", str(target), "--force")
    assert result.exit_code == 0
    with np.load(target) as archive:
        assert archive["weights"].shape == (2, 5, 6)


def test_bad_input_leaves_no_output_file(tmp_path):
    target = tmp_path / "result.safetensors"
    np.save(tmp_path / "q.npy", np.zeros((3, 4)))
    np.save(tmp_path / "k.npy", np.zeros((3, 5)))
    result = invoke("compute", *(str(tmp_path / n) for n in ("q.npy", "k.npy", "k.npy")), "-o", str(target))
    assert_error(result, "query has 4 features but key has 5", "q.npy (3, 4)", "k.npy (3, 5)")
    assert not target.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.npy", "q.npy"]


def test_table_view_shows_every_weight_of_the_seed(samples):
    result = invoke("compute", str(samples / "seed.npz"))
    assert result.exit_code == 0, result.output
    with np.load(samples / "seed.npz") as archive:
        weights, output = reference_attention(archive["query"], archive["key"], archive["value"])
    for value in (*weights.ravel(), *output.ravel()):
        assert f"{value:.4f}" in result.stdout
    assert "float32 · cpu · scale 0.5 = 1/√4" in result.stdout
    assert "\x1b[" not in result.stdout  # not a terminal: no colour codes


def test_precision_and_quiet(samples):
    result = invoke("compute", str(samples / "seed.npz"), "--precision", "2")
    assert "0.42" in result.stdout
    assert "0.4223" not in result.stdout
    result = invoke("compute", str(samples / "seed.npz"), "--quiet")
    assert result.exit_code == 0
    assert result.output == ""


def test_colour_in_a_terminal_and_none_with_no_color(samples):
    forced = {"FORCE_COLOR": "1", "TERM": "xterm-256color"}
    coloured = invoke("compute", str(samples / "seed.npz"), env=forced)
    assert "\x1b[" in coloured.stdout
    for env, args in (({**forced, "NO_COLOR": "1"}, []), (forced, ["--no-color"])):
        plain = invoke("compute", str(samples / "seed.npz"), *args, env=env)
        assert "\x1b[38;" not in plain.stdout
        assert "\x1b[48;" not in plain.stdout


def test_demo_shows_the_tutorial_and_agrees_with_it():
    result = invoke("demo")
    assert result.exit_code == 0, result.output
    assert "def self_attention(query, key, value):" in result.stdout
    assert "max |Δ weights| = 0, max |Δ output| = 0" in result.stdout
    query = np.array([[1.0, 0, 1, 0], [0, 2, 0, 2], [1, 1, 1, 1]])
    value = np.array([[0.0, 1, 0, 1], [1, 0, 1, 0], [0, 0, 1, 1]])
    weights, output = reference_attention(query, query, value)
    for number in (*weights.ravel(), *output.ravel()):
        assert f"{number:.4f}" in result.stdout


# --- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["compute", "a.npy", "b.npy"], ["got 2 paths"]),
        (["compute", "missing.npy"], ["missing.npy", "no such file"]),
        (["compute", "SEED", "--scale", "nan"], ["--scale", "finite"]),
        (["compute", "SEED", "--scale", "0"], ["--scale"]),
        (["compute", "SEED", "--dtype", "float8"], ["--dtype", "float8"]),
        (["compute", "SEED", "--device", "gpu"], ["device 'gpu'"]),
        (["compute", "SEED", "--heads", "0"], ["--heads"]),
        (["compute", "SEED", "--heads", "3"], ["3 heads do not divide the 4 features", "seed.npz:query"]),
        (["compute", "SEED", "--precision", "x"], ["--precision"]),
        (["compute", "SEED", "--bogus"], ["--bogus"]),
        (["compute", "SEED", "-o", "/no/such/folder/r.npz"], ["--output", "does not exist"]),
        (["compute", "SEED", "-o", "r.txt"], ["--output", ".txt"]),
        (["compute", "SEED", "--mask", "SEED"], ["--mask", "seed.npz holds 3 tensors"]),
        (["frobnicate"], ["frobnicate"]),
    ],
)
def test_errors_are_one_line_with_status_2(samples, args, words):
    args = [str(samples / "seed.npz") if a == "SEED" else a for a in args]
    assert_error(invoke(*args), *words)


def test_device_cuda_without_cuda_is_a_clear_error(samples):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert_error(
        invoke("compute", str(samples / "seed.npz"), "--device", "cuda"), "device 'cuda' is not available"
    )


def test_no_path_and_a_terminal_on_stdin_shows_an_example(monkeypatch):
    monkeypatch.setattr("attncli.cli._app.stdin", lambda: None)
    assert_error(invoke("compute"), "no input", "cat qkv.json | attn compute")


def test_stdin_garbage_and_empty(tmp_path):
    assert_error(invoke("compute", input=b""), "<stdin> is empty")
    assert_error(invoke("compute", input=b"\x00\x01garbage"), "<stdin>", "not a tensor file")


def test_nan_in_an_input_is_refused_naming_the_file(tmp_path):
    x = np.ones((3, 4))
    x[1, 2] = np.nan
    np.save(tmp_path / "x.npy", x)
    assert_error(invoke("compute", str(tmp_path / "x.npy")), "x.npy", "1 NaN", "(1, 2)")


def test_traceback_flag_shows_the_exception_and_keeps_the_status(tmp_path):
    """--traceback adds the traceback; the line and the documented status stay (2, not Python's 1)."""
    path = str(tmp_path / "missing.npy")
    result = invoke("compute", path, "--traceback")
    assert result.exit_code == 2, result.output
    stderr = str(result.stderr)
    assert stderr.startswith("Traceback (most recent call last):")
    assert "attncli.errors.InputError" in stderr
    assert stderr.endswith(f"attn: error: {path}: no such file\n")


def test_internal_errors_are_one_line_with_status_70(samples, monkeypatch):
    def broken(*args, **kwargs):
        raise ZeroDivisionError("boom")

    monkeypatch.setattr("attncli.compute.run", broken)
    assert_error(
        invoke("compute", str(samples / "seed.npz")), "internal error", "ZeroDivisionError", status=70
    )


def test_no_command_prints_help_and_version_works():
    result = invoke()
    assert result.exit_code == 0
    assert "compute" in result.stdout
    result = invoke("--version")
    assert result.exit_code == 0
    assert result.stdout.startswith("attncli ")


# --- the real console script -----------------------------------------------------------------


def run_attn(*args: str, **kwargs) -> subprocess.CompletedProcess:
    attn = Path(sys.executable).with_name("attn")
    env = {**os.environ, "COLUMNS": "100"}
    return subprocess.run([str(attn), *args], capture_output=True, text=True, env=env, timeout=120, **kwargs)


@pytest.mark.slow
def test_console_script_and_module_run(samples):
    done = run_attn("compute", str(samples / "seed.npz"), "--format", "json", stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["meta"]["sources"]["query"].endswith("seed.npz:query")
    module = subprocess.run([sys.executable, "-m", "attncli", "--version"], capture_output=True, text=True)
    assert module.returncode == 0
    assert module.stdout.startswith("attncli ")


@pytest.mark.slow
def test_help_and_usage_errors_import_neither_torch_nor_numpy_nor_transformers():
    probe = (
        "import sys\n"
        "from attncli.cli import main\n"
        "sys.argv = ['attn', *sys.argv[1:]]\n"
        "try:\n    main()\n"
        "except SystemExit:\n    pass\n"
        "print('heavy:', sorted(m for m in ('torch', 'numpy', 'transformers') if m in sys.modules))\n"
    )
    lines = [
        ["--help"],
        ["--version"],
        ["compute", "--help"],
        ["compute", "a", "b"],
        ["compute", "--dtype", "x"],
        ["capture", "--help"],
        ["model", "--help"],
        ["capture", "no-such-model", "text", "-o", "run.safetensors"],
        ["model", "no-such-model", "text", "--head", "x"],
    ]

    def run(args: list[str]) -> subprocess.CompletedProcess:
        command = [sys.executable, "-c", probe, *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=60)

    with ThreadPoolExecutor(len(lines)) as pool:  # a fresh interpreter for each, side by side
        for args, done in zip(lines, pool.map(run, lines), strict=True):
            assert "heavy: []" in done.stdout, (args, done.stdout, done.stderr)


def test_command_annotations_are_evaluated_when_defined():
    # Typer reads each command's annotations with typing.get_type_hints, which compiles every one
    # given as a string (`from __future__ import annotations`): a tenth of `attn --help`'s own time.
    from attncli.cli import app

    commands = [info.callback for info in app.registered_commands]
    assert len(commands) >= 8
    for command in commands:
        strings = [name for name, hint in command.__annotations__.items() if isinstance(hint, str)]
        assert not strings, (command.__module__, command.__name__, strings)


@pytest.mark.slow
def test_bad_input_files_are_reported_before_torch_is_imported(tmp_path):
    """A missing, unreadable or malformed input file, or a shape the inputs cannot have, is reported
    at once: torch's import (most of a second) comes only once the inputs are read and checked."""
    (tmp_path / "bad.json").write_text("[[1, 2], [3")
    np.save(tmp_path / "q.npy", np.ones((3, 4), np.float32))
    probe = (
        "import sys\n"
        "from attncli.cli import main\n"
        "sys.argv = ['attn', *sys.argv[1:]]\n"
        "try:\n    main()\n"
        "except SystemExit as done:\n    print('exit', done.code)\n"
        "print('torch:', 'torch' in sys.modules)\n"
    )
    cases = [
        ["compute", "no-such.npy", "no-such.npy", "no-such.npy"],
        ["compute", "bad.json"],
        ["compute", "q.npy", "q.npy", "q.npy", "--labels", "a,b"],
    ]
    for args in cases:
        done = subprocess.run(
            [sys.executable, "-c", probe, *args], capture_output=True, text=True, cwd=tmp_path, timeout=60
        )
        assert "exit 2" in done.stdout, (args, done.stdout, done.stderr)
        assert "torch: False" in done.stdout, (args, done.stdout)
        assert done.stderr.startswith("attn: error: "), (args, done.stderr)


@pytest.mark.slow
def test_closed_stdout_pipe_exits_quietly(tmp_path):
    np.save(tmp_path / "x.npy", RNG.standard_normal((300, 16)))  # about 2 MB of JSON: more than a pipe holds
    attn = Path(sys.executable).with_name("attn")
    args = [str(attn), "compute", str(tmp_path / "x.npy"), "--format", "json"]
    with subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL
    ) as process:
        assert process.stdout is not None
        assert process.stderr is not None
        process.stdout.read(10)
        process.stdout.close()  # the reader goes away, as `| head -c 10` would
        stderr = process.stderr.read().decode()
        status = process.wait(timeout=120)
    assert stderr == ""
    assert status == 0


# --- what is shown: labels, selection, limits, exports ---------------------------------------


def test_labels_from_text_and_file_become_headers(samples, tmp_path):
    result = invoke("compute", str(samples / "seed.npz"), "--labels", "The,cat,sat")
    assert result.exit_code == 0, result.output
    assert ["q\\k", "The", "cat", "sat"] in [line.split() for line in result.stdout.splitlines()]
    (tmp_path / "tokens.txt").write_text("<s>\nthe cat\nsat\n")
    result = invoke("compute", str(samples / "seed.npz"), "--labels-file", str(tmp_path / "tokens.txt"))
    assert result.exit_code == 0, result.output
    assert "the cat" in result.stdout
    assert "<s>" in result.stdout


def test_query_and_key_labels_for_cross_attention(tmp_path, qkv):
    result = invoke(
        "compute",
        str(tmp_path / "qkv.npz"),
        "--batch",
        "0",
        "--query-labels",
        "a b c d e",
        "--key-labels",
        "u,v,w,x,y,z",
    )
    assert result.exit_code == 0, result.output
    assert ["q\\k", *"uvwxyz"] in [line.split() for line in result.stdout.splitlines()]


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--labels", "a b"], ["--labels: 2 labels, but the query has 3 positions"]),
        (["--key-labels", "a b c d"], ["--key-labels: 4 labels, but the key has 3 positions"]),
        (["--labels", "a b c", "--labels-file", "x.txt"], ["--labels or --labels-file"]),
        (["--labels-file", "no-such.txt"], ["--labels-file no-such.txt: no such file"]),
        (["--head", "0"], ["--head 0", "no head axis"]),
        (["--batch", "x"], ["--batch 'x'", "not an index"]),
        (["--view", "pie"], ["--view", "pie"]),
        (["--pool", "median"], ["--pool", "median"]),
        (["--max-rows", "1"], ["--max-rows"]),
        (["--export-svg", "out.png"], ["--export-svg out.png", ".svg"]),
        (["--export-html", "/no/such/dir/x.html"], ["--export-html", "does not exist"]),
    ],
)
def test_display_option_errors(samples, args, words):
    assert_error(invoke("compute", str(samples / "seed.npz"), *args), *words)


@pytest.mark.parametrize("blocks", [[], ["--stream"]])
def test_head_out_of_range_names_the_count_and_writes_nothing(samples, tmp_path, monkeypatch, blocks):
    """Refused before the computation (which may take long): nothing computed, nothing written."""
    import attncli.compute

    def no_work(*args, **kwargs):
        raise AssertionError("computed before --head was checked")

    for name in ("attend", "run", "fused"):
        monkeypatch.setattr(attncli.compute, name, no_work)
    target = tmp_path / "r.npz"
    args = [str(samples / "multihead.safetensors"), "--head", "2,7", "-o", str(target), *blocks]
    result = invoke("compute", *args)
    assert_error(result, "--head 7: out of range, there are 4 heads (0 to 3)")
    assert os.listdir(tmp_path) == []


def test_batch_and_head_choose_the_matrices(samples):
    result = invoke("compute", str(samples / "multihead.safetensors"), "--batch", "1", "--head", "0:4:3")
    assert result.exit_code == 0, result.output
    titles = [
        line.split("  ")[0] for line in result.stdout.splitlines() if line.startswith(("weights[", "output["))
    ]
    assert titles == [
        "weights[1, 0] (batch 1, head 0)",
        "weights[1, 3] (batch 1, head 3)",
        "output[1, 0] (batch 1, head 0)",
        "output[1, 3] (batch 1, head 3)",
    ]


def test_many_matrices_are_capped_with_a_hint(samples):
    result = invoke("compute", str(samples / "multihead.safetensors"), "--heads", "2")  # 16 matrices
    assert result.exit_code == 0, result.output
    assert "more weights matrices not shown" in result.stdout
    assert "--head H" in result.stdout


@pytest.mark.parametrize("kind", ["svg", "html"])
def test_exports_are_standalone_and_hold_what_was_shown(samples, tmp_path, kind):
    target = tmp_path / f"seed.{kind}"
    result = invoke("compute", str(samples / "seed.npz"), f"--export-{kind}", str(target))
    assert result.exit_code == 0, result.output
    picture = target.read_text()
    fetched = [
        address for address in re.findall(r"https?://[^\"' )]+", picture) if "www.w3.org" not in address
    ]
    assert all("textualize.io" in address for address in fetched), fetched  # only Rich's comment, no fetch
    assert "@import" not in picture
    with np.load(samples / "seed.npz") as archive:
        weights, _ = reference_attention(archive["query"], archive["key"], archive["value"])
    for number in weights.ravel():
        assert f"{number:.4f}" in picture
    # an existing picture is kept without --force
    before = target.read_bytes()
    assert_error(invoke("compute", str(samples / "seed.npz"), f"--export-{kind}", str(target)), "--force")
    assert target.read_bytes() == before


def test_export_with_quiet_prints_nothing_but_saves(samples, tmp_path):
    target = tmp_path / "seed.svg"
    result = invoke("compute", str(samples / "seed.npz"), "-q", "--export-svg", str(target))
    assert result.exit_code == 0
    assert result.output == ""
    assert "0.4223" in target.read_text()


def test_heatmap_view_of_a_long_causal_pattern(samples):
    args = [
        "compute",
        str(samples / "pattern.safetensors"),
        "--causal",
        "--view",
        "heatmap",
        "--max-rows",
        "16",
    ]
    for pool in ("max", "mean"):
        result = invoke(*args, "--pool", pool)
        assert result.exit_code == 0, result.output
        assert f"each cell: {pool} of " in result.stdout
        picture = [line for line in result.stdout.splitlines() if re.fullmatch(r" *\d* [ .:=+*#%@·-]+", line)]
        assert len(picture) == 16  # one line per pooled row, no more than asked for
        assert all(len(line) <= 100 for line in result.stdout.splitlines())
        # causal: the first line's pooled row has masked cells to the right, the last line has none
        assert picture[0].rstrip().endswith("·")
        assert not picture[-1].rstrip().endswith("·")


def test_stats_and_top_k_are_shown_printed_as_json_andread_result(tmp_path, samples):
    target = tmp_path / "r.safetensors"
    args = ["compute", str(samples / "multihead.safetensors"), "--mask", str(samples / "padding_mask.npy")]
    payload = json_result(*args[1:], "--causal", "--stats", "--top-k", "3", "-o", str(target))
    weights = np.array(payload["weights"])
    blocked = ~np.load(samples / "padding_mask.npy") | np.triu(np.ones((6, 6), dtype=bool), 1)
    live = np.where(blocked, 0.0, weights)
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -np.where(live > 0, live * np.log(live), 0.0).sum(-1)
    np.testing.assert_allclose(np.array(payload["entropy"]), entropy, atol=1e-5)
    distance = (live * np.abs(np.arange(6)[:, None] - np.arange(6)[None, :])).sum(-1)
    np.testing.assert_allclose(np.array(payload["distance"]), distance, atol=1e-5)
    np.testing.assert_array_equal(np.array(payload["top_k_keys"])[..., 0], weights.argmax(-1))
    assert set(payload["meta"]["stats_means"]) >= {"entropy", "sink", "distance"}
    saved = load_file(str(target))
    np.testing.assert_allclose(saved["entropy"], entropy, atol=1e-5)
    assert saved["top_k_keys"].shape == (2, 4, 6, 3)
    shown = invoke(*args, "--stats", "--top-k", "2", "--batch", "0", "--head", "0")
    assert shown.exit_code == 0, shown.output
    assert "weights[0, 0] (batch 0, head 0): statistics per query row" in shown.stdout
    assert "most attended keys per query row" in shown.stdout


# --- blocked computation (attncli.compute.run) through the command line ---------------------------


def test_stream_gives_the_output_and_statistics_of_the_full_path(samples, tmp_path):
    args = [str(samples / "multihead.safetensors"), "--mask", str(samples / "padding_mask.npy"), "--causal"]
    full = json_result(*args, "--stats", "--top-k", "2")
    weights_file = tmp_path / "w.npy"
    streamed = json_result(*args, "--stats", "--top-k", "2", "--stream", "--weights-to", str(weights_file))
    assert "weights" not in streamed  # never held
    assert streamed["meta"]["weights_saved_to"] == str(weights_file)
    for name in ("output", "entropy", "distance", "sink", "top_k_weights"):
        np.testing.assert_allclose(
            np.array(streamed[name], dtype=float), np.array(full[name], dtype=float), rtol=1e-5, atol=1e-6
        )
    np.testing.assert_array_equal(np.array(streamed["top_k_keys"]), np.array(full["top_k_keys"]))
    np.testing.assert_allclose(np.load(weights_file), np.array(full["weights"]), rtol=1e-5, atol=1e-6)


def test_streamed_output_alone_comes_from_the_fused_kernel(samples, tmp_path):
    """Nothing made of the weights is shown or kept: the output by scaled_dot_product_attention,
    said in the metadata; the same numbers as the full path's."""
    args = [str(samples / "multihead.safetensors"), "--mask", str(samples / "padding_mask.npy"), "--causal"]
    full = json_result(*args)
    streamed = json_result(*args, "--stream")
    assert streamed["meta"]["computed_by"] == "scaled_dot_product_attention"
    np.testing.assert_allclose(np.array(streamed["output"]), np.array(full["output"]), rtol=1e-5, atol=1e-6)
    # Statistics, or -o (which holds the weights), need the weights block by block.
    with_stats = json_result(*args, "--stream", "--stats")
    assert with_stats["meta"]["computed_by"] == "blocks"
    target = tmp_path / "r.safetensors"
    quiet = invoke("compute", *args, "--stream", "-q", "-o", str(target))
    assert quiet.exit_code == 0, quiet.output
    assert read_result(target)[1]["computed_by"] == "blocks"


def test_large_weights_that_nothing_needs_whole_are_computed_in_blocks(samples, monkeypatch, tmp_path):
    monkeypatch.setattr("attncli.compute.plan.STREAM_ABOVE", 4096)
    path = str(samples / "pattern.safetensors")
    heatmap = invoke("compute", path, "--view", "heatmap", "--stats")
    assert heatmap.exit_code == 0, heatmap.output
    assert "the weights were not kept" in heatmap.stdout
    table = invoke("compute", path)
    assert table.exit_code == 0, table.output
    assert "the weights were not kept, the table shows" in table.stdout
    for needs_whole in (["--full"], ["--view", "heatmap", "--format", "json"], ["--check"]):
        result = invoke("compute", path, *needs_whole)
        assert result.exit_code == 0, result.output
        assert "the weights were not kept" not in result.stdout
    # -o .safetensors/.npz takes the weights block by block; JSON text needs them whole.
    for suffix, blocks in ((".safetensors", True), (".npz", True), (".json", False)):
        target = tmp_path / f"r{suffix}"
        result = invoke("compute", path, "-q", "-o", str(target))
        assert result.exit_code == 0, result.output
        meta = read_result(target)[1]
        assert (meta.get("computed_by") == "blocks") is blocks


@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
def test_output_file_of_a_blocked_computation_holds_the_weights(samples, tmp_path, suffix):
    """-o with --stream: weights (written block by block), output and statistics, as the full path's."""
    args = [str(samples / "multihead.safetensors"), "--mask", str(samples / "padding_mask.npy"), "--causal"]
    full_file, streamed_file = tmp_path / f"full{suffix}", tmp_path / f"streamed{suffix}"
    for target, extra in ((full_file, []), (streamed_file, ["--stream", "--memory-limit", "1KiB"])):
        result = invoke("compute", *args, "--stats", "-q", "-o", str(target), *extra)
        assert result.exit_code == 0, result.output
    full = read_result(full_file)[0]
    streamed, streamed_meta = read_result(streamed_file)
    assert set(streamed) == set(full)
    assert streamed_meta["computed_by"] == "blocks"
    assert streamed_meta["block_rows"] < full["weights"].shape[-2]  # more than one block
    for name, array in full.items():
        assert streamed[name].dtype == array.dtype
        np.testing.assert_allclose(streamed[name], array, rtol=1e-5, atol=1e-6, err_msg=name)
    assert sorted(os.listdir(tmp_path)) == sorted([full_file.name, streamed_file.name])


@pytest.mark.parametrize(
    "args",
    [
        ["multihead.safetensors", "--mask", "padding_mask.npy", "--causal", "--stats"],
        ["pattern.safetensors", "--causal", "--precision", "2", "--max-cols", "7", "--max-rows", "9"],
        ["gqa.npz", "--dtype", "float16", "--head", "1:3"],
        ["multihead.safetensors", "--dtype", "bfloat16", "--top-k", "2", "--no-color"],
        ["seed.npz", "--labels", "The cat sat", "--dtype", "float64"],
    ],
)
def test_streamed_table_is_the_full_paths_table(samples, args):
    """Computed in blocks, the table view keeps the cells it shows and its title's figures: the same
    view as from the whole weights, but for the line saying how it was computed."""
    args = [str(samples / arg) if (samples / arg).is_file() else arg for arg in args]
    wide = {"COLUMNS": "160"}  # the line saying how it was computed on one line
    full = invoke("compute", *args, env=wide)
    streamed = invoke("compute", *args, "--stream", "--memory-limit", "20KiB", env=wide)
    assert full.exit_code == streamed.exit_code == 0, (full.output, streamed.output)
    note = "; the weights were not kept, the table shows the rows and columns that fit"
    lines = streamed.stdout.splitlines()
    kept = [line for line in lines if note not in line]
    assert len(kept) == len(lines) - 1
    # Blocks of other sizes round their softmax sums differently: the largest |row sum - 1| may
    # differ by rounding (under 1e-6 in float32), every other figure and cell is the same.
    assert [_rowsum_off(line) for line in kept] == [_rowsum_off(line) for line in full.stdout.splitlines()]
    for line in [*kept, *full.stdout.splitlines()]:
        for spread in re.findall(r"rowsum=1±(\S+)", line):
            assert float(spread) < 1e-6 if "float32" in line or "float64" in line else float(spread) < 1e-2


def _rowsum_off(line: str) -> str:
    return re.sub(r"rowsum=1±\S+", "rowsum=1±…", line)


def test_full_table_of_a_blocked_computation_is_refused(samples):
    result = invoke("compute", str(samples / "seed.npz"), "--stream", "--full")
    assert_error(result, "--full", "--view heatmap")


def test_blocked_computation_refuses_json_output_before_any_work(samples, tmp_path):
    target = tmp_path / "r.json"
    result = invoke("compute", str(samples / "seed.npz"), "--stream", "-o", str(target))
    assert_error(result, f"--output {target}", ".safetensors or .npz")
    assert os.listdir(tmp_path) == []


def test_a_small_memory_limit_streams_and_shows_a_table_or_a_pooled_heatmap(samples):
    args = ["compute", str(samples / "pattern.safetensors"), "--causal", "--memory-limit", "200KiB"]
    table = invoke(*args)
    assert table.exit_code == 0, table.output
    assert "the weights were not kept, the table shows" in table.stdout
    assert "(showing 31 rows × " in table.stdout
    heatmap = invoke(*args, "--view", "heatmap")
    assert heatmap.exit_code == 0, heatmap.output
    assert "the weights were not kept, the heatmap shows" in heatmap.stdout
    assert "each cell: max of " in heatmap.stdout


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--stream", "--check"], ["--check", "does not keep"]),
        (["--memory-limit", "lots"], ["--memory-limit", "not a size"]),
        (["--weights-to", "w.txt"], ["--weights-to w.txt", ".npy"]),
    ],
)
def test_stream_option_errors(samples, args, words):
    assert_error(invoke("compute", str(samples / "seed.npz"), *args), *words)
