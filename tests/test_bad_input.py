"""Bad input at the command line: the catalogue of refusals, fuzzing, and the bugs fuzzing found.

The rule every bad input follows (`refuse` and `assert_error` check all of it): exit status 2 (3 when
the computation or the write fails), exactly one line on stderr that starts `attn: error: ` and names
the file or option and the problem, no traceback, nothing on stdout, and with `-o OUT`: no OUT created,
an existing OUT byte-for-byte unchanged, and no `.OUT.*.partial` left in its folder.

tests/test_loaders.py covers the same inputs at the library level; here they go through `attn compute`.
Bugs found here (by the catalogue, hypothesis or atheris) keep a regression test named `test_found_*`;
a bug still open would be pinned by an `xfail(strict=True)` test named `test_bug_*` (none now).
"""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import warnings
import zipfile
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from helpers import assert_error, npy_bytes, npz_bytes
from hypothesis import HealthCheck, event, given, reject, settings
from hypothesis import strategies as st
from safetensors.numpy import save, save_file
from typer.testing import CliRunner

from attncli.cli import app
from attncli.errors import AttnError
from attncli.io import loaders

runner = CliRunner()
RNG = np.random.default_rng(11)
PRECIOUS = b"an earlier result that must survive byte for byte"
FUZZ_TARGET = Path(__file__).parent / "fuzz" / "fuzz_loaders.py"


def _load_fuzz_target() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fuzz_loaders", FUZZ_TARGET)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


fuzz = _load_fuzz_target()


# --- helpers ---------------------------------------------------------------------------------


def invoke(*args: str, input: bytes | str | None = None):
    return runner.invoke(app, list(args), input=input, env={"COLUMNS": "100"})


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file in `folder`, hidden ones (the `.OUT.*.partial` temporaries) included."""
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


def refuse(
    tmp_path: Path,
    *args: str,
    words: tuple[str, ...] | list[str] = (),
    input: bytes | str | None = None,
    status: int = 2,
    suffix: str = ".safetensors",
    existing: bool = False,
) -> str:
    """`attn compute ARGS -o OUT` must follow the rule; with `existing`, OUT is there and --force given."""
    folder = Path(tempfile.mkdtemp(prefix="out-", dir=tmp_path))  # one per call: calls do not meet
    target = folder / f"result{suffix}"
    extra = ["-o", str(target)]
    if existing:
        target.write_bytes(PRECIOUS)
        extra.append("--force")
    before = snapshot(folder)
    line = assert_error(invoke("compute", *args, *extra, input=input), *words, status=status)
    assert snapshot(folder) == before  # no OUT, an existing OUT unchanged, no partial file
    return line


def npy(path: Path, array: np.ndarray) -> str:
    np.save(path, array)
    return str(path)


def write(path: Path, data: bytes | str) -> str:
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return str(path)


QUERY = RNG.standard_normal((3, 4)).astype(np.float32)


class _Tripwire:
    """Unpickling this creates a folder: a loader that ever unpickles leaves a trace."""

    def __init__(self, trace: str) -> None:
        self.trace = trace

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.mkdir, (self.trace,)


# --- files -----------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    path = str(tmp_path / "missing.npy")
    refuse(tmp_path, path, words=[path, "no such file"])
    refuse(tmp_path, path, words=[path, "no such file"], existing=True)


def test_missing_file_among_three(tmp_path):
    query = npy(tmp_path / "q.npy", QUERY)
    missing = str(tmp_path / "k.npy")
    refuse(tmp_path, query, missing, query, words=[missing, "no such file"], suffix=".npz")


@pytest.mark.parametrize("name", ["folder.npy", "folder"])
def test_a_directory(tmp_path, name):
    folder = tmp_path / name
    folder.mkdir()
    line = refuse(tmp_path, str(folder), words=[str(folder)])
    assert "directory" in line or "not a tensor format" in line


@pytest.mark.parametrize("suffix", [".npy", ".npz", ".safetensors", ".json"])
def test_empty_file(tmp_path, suffix):
    path = write(tmp_path / f"empty{suffix}", b"")
    refuse(tmp_path, path, words=[path, "empty"], existing=True)


@pytest.mark.parametrize("keep", [5, 20, 100, -1], ids=["magic", "header-length", "header", "data"])
def test_truncated_npy(tmp_path, keep):
    path = write(tmp_path / "cut.npy", npy_bytes(QUERY)[:keep])
    line = refuse(tmp_path, path, words=[path, "not a valid .npy file"], suffix=".json")
    assert "Python objects" not in line


def test_npy_of_objects_is_refused_and_never_unpickled(tmp_path):
    trace = tmp_path / "unpickled"
    path = tmp_path / "objects.npy"
    np.save(path, np.array([_Tripwire(str(trace)), None], dtype=object), allow_pickle=True)
    refuse(tmp_path, str(path), words=[str(path), "Python objects", "never unpickles"])
    refuse(tmp_path, "-", words=["<stdin>", "Python objects"], input=path.read_bytes(), existing=True)
    query = npy(tmp_path / "q.npy", QUERY)
    refuse(tmp_path, query, str(path), query, words=[str(path), "Python objects"])
    assert not trace.exists()


def test_npz_of_objects_is_refused_and_never_unpickled(tmp_path):
    trace = tmp_path / "unpickled"
    path = tmp_path / "objects.npz"
    np.savez(path, query=QUERY, key=np.array([_Tripwire(str(trace))], dtype=object), value=QUERY)
    refuse(tmp_path, str(path), words=[str(path), "Python objects"])
    assert not trace.exists()


@pytest.mark.parametrize(
    ("array", "words"),
    [
        (np.array([["a", "b"], ["c", "d"]]), ["strings"]),
        (np.array([[b"a", b"b"]]), ["byte strings"]),
        (np.ones((2, 2), dtype=complex), ["complex numbers"]),
        (np.zeros(2, dtype=[("a", "<f4"), ("b", "<f4")]), ["structured records"]),
        (np.array(["2024-01-01"], dtype="datetime64[D]"), ["dates"]),
    ],
    ids=["strings", "bytes", "complex", "records", "dates"],
)
def test_npy_of_what_is_not_real_numbers(tmp_path, array, words):
    path = npy(tmp_path / "x.npy", array)
    refuse(tmp_path, path, words=[path, *words, "real numbers"])


@pytest.mark.parametrize("name", ["x.txt", "x.pt", "x", "x.npy.gz"])
def test_unknown_suffix(tmp_path, name):
    path = write(tmp_path / name, npy_bytes(QUERY))
    refuse(
        tmp_path, path, words=[path, "not a tensor format attncli reads", ".npy, .npz, .safetensors, .json"]
    )


TEXT_NOT_WHAT = {".npy": "not NumPy's binary format", ".npz": "not a zip archive", ".safetensors": "8-byte"}


@pytest.mark.parametrize("suffix", sorted(TEXT_NOT_WHAT))
def test_a_text_file_named_as_a_binary_format(tmp_path, suffix):
    """np.load reads bytes that are no .npy or zip as a pickle: a text file is said to be text
    (not an object array, not a huge header length), wherever a tensor file is read."""
    path = write(tmp_path / f"x{suffix}", "query 1 2 3\nkey 4 5 6\n")
    words = [f"{path}: not a valid {suffix} file", "it is text", TEXT_NOT_WHAT[suffix], "'query 1 2 3'"]
    refuse(tmp_path, path, words=words)
    query = npy(tmp_path / "q.npy", QUERY)
    refuse(tmp_path, query, query, path, words=words)
    refuse(tmp_path, query, "--mask", path, words=[f"--mask {path}", *words[1:]], existing=True)
    for command in (["inspect", path], ["diff", path, query]):
        line = assert_error(invoke(*command), *words)
        assert "Python objects" not in line


@pytest.mark.parametrize("suffix", sorted(TEXT_NOT_WHAT))
def test_a_git_lfs_pointer_in_place_of_the_file(tmp_path, suffix):
    pointer = "version https://git-lfs.github.com/spec/v1\noid sha256:" + "0f" * 32 + "\nsize 4096\n"
    path = write(tmp_path / f"weights{suffix}", pointer)
    refuse(tmp_path, path, words=[path, "Git LFS pointer", "git lfs pull"])


def test_npz_without_the_needed_names(tmp_path):
    path = tmp_path / "qk.npz"
    np.savez(path, q=QUERY, k=QUERY)
    refuse(tmp_path, str(path), words=[str(path), "no tensor named value or v", "q, k"])


def test_safetensors_with_a_garbage_header(tmp_path):
    header = b"{this is not json at all}"
    path = write(tmp_path / "x.safetensors", len(header).to_bytes(8, "little") + header)
    refuse(tmp_path, path, words=[path, "not a valid .safetensors file"])
    path = write(tmp_path / "y.safetensors", b"\x05\x00")  # shorter than the length field
    refuse(tmp_path, path, words=[path, "not a valid .safetensors file"])


@pytest.mark.parametrize("claimed", [10**9, 2**62, 2**64 - 1])
def test_safetensors_header_claiming_an_absurd_size_is_refused_quickly(tmp_path, claimed):
    path = write(tmp_path / "huge.safetensors", claimed.to_bytes(8, "little") + b'{"a": {}}')
    start = time.perf_counter()
    refuse(tmp_path, path, words=[path, "not a valid .safetensors file"], existing=True)
    assert time.perf_counter() - start < 2.0


@pytest.mark.parametrize("suffix", [".npz", ".safetensors", ".json"])
def test_several_tensors_and_no_role_names(tmp_path, suffix):
    path = tmp_path / f"ab{suffix}"
    tensors = {"alpha": QUERY, "beta": QUERY}
    if suffix == ".npz":
        np.savez(path, **tensors)
    elif suffix == ".safetensors":
        save_file(tensors, str(path))
    else:
        path.write_text(json.dumps({k: v.tolist() for k, v in tensors.items()}))
    words = ["2 tensors", "alpha", "beta", "none is named query, key or value", f"{path}:NAME"]
    refuse(tmp_path, str(path), words=[str(path), *words])


@pytest.mark.parametrize("suffix", [".npz", ".safetensors", ".json", ".npy"])
def test_path_name_naming_a_missing_tensor(tmp_path, suffix):
    path = tmp_path / f"qkv{suffix}"
    tensors = {"query": QUERY, "key": QUERY, "value": QUERY}
    if suffix == ".npz":
        np.savez(path, **tensors)
    elif suffix == ".safetensors":
        save_file(tensors, str(path))
    elif suffix == ".json":
        path.write_text(json.dumps({k: v.tolist() for k, v in tensors.items()}))
    else:
        np.save(path, QUERY)
    line = refuse(tmp_path, f"{path}:hidden", words=[str(path), "no tensor named 'hidden'"])
    assert ("query" in line) if suffix != ".npy" else ("tensor" in line)
    query = npy(tmp_path / "q.npy", QUERY)
    refuse(tmp_path, query, f"{path}:hidden", query, words=[str(path), "'hidden'"], suffix=".npz")


# --- JSON ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "words"),
    [
        pytest.param("[[1, 2], [3,", ["not valid JSON", "line 1 column"], id="malformed"),
        pytest.param(
            '{"query": [[1]], "key": [[1]],\n "value": [[1]]', ["not valid JSON", "line 2"], id="open-object"
        ),
        pytest.param("[[1, 2], [3]]", ["ragged array"], id="ragged"),
        pytest.param("[[1, [2]]]", ["ragged array"], id="ragged-depth"),
        pytest.param('[[1, "2"]]', ["a string ('2')", "numbers only"], id="string"),
        pytest.param("[[1, true], [0, 1]]", ["mixes true/false with numbers"], id="boolean-and-numbers"),
        pytest.param("[[true, false], [false, true]]", ["query", "booleans"], id="booleans"),
        pytest.param("[[1, null]]", ["holds null"], id="null"),
        pytest.param('[[1, {"a": 1}]]', ["an object"], id="object-inside"),
        pytest.param("null", ["null"], id="top-level-null"),
        pytest.param('"abc"', ["a string"], id="top-level-string"),
        pytest.param("[]", ["axis of length zero", "(0,)"], id="empty-array"),
        pytest.param("[[], []]", ["axis of length zero", "(2, 0)"], id="empty-rows"),
        pytest.param("{}", ["holds no tensors"], id="empty-object"),
        pytest.param("5", ["a single number"], id="scalar"),
        pytest.param("[[123456789012345678901234567890]]", ["too large for 64 bits"], id="huge-integer"),
        pytest.param('{"query": [[1, 2]], "value": [[3, 4]]}', ["no tensor named key or k"], id="no-key"),
        pytest.param('{"query": [[1, 2]], "key": [[3, 4]]}', ["no tensor named value or v"], id="no-value"),
        pytest.param(
            '{"query": "x", "key": [[1]], "value": [[1]]}', ["'query'", "a string"], id="named-string"
        ),
        pytest.param('\ufeff{"a": [1], "b": [2]}', ["2 tensors"], id="bom-and-unnamed"),
    ],
)
def test_json_that_is_no_attention_input(tmp_path, text, words):
    path = write(tmp_path / "x.json", text)
    refuse(tmp_path, path, words=[path, *words])
    if text.lstrip("\ufeff")[:1] not in ("[", "{"):  # stdin is sniffed: JSON starts with '[' or '{'
        words = ["not a tensor file"]
    refuse(tmp_path, "-", words=["<stdin>", *words], input=text.encode(), suffix=".json", existing=True)


def test_json_not_utf8(tmp_path):
    path = write(tmp_path / "x.json", b'[[1, 2]] "\xff\xfe"')
    refuse(tmp_path, path, words=[path, "not UTF-8"])


def test_json_nan_and_infinity_literals(tmp_path):
    path = write(tmp_path / "nan.json", "[[1.0, NaN, 2.0], [Infinity, 3.0, -Infinity]]")
    refuse(tmp_path, path, words=[path, "query", "1 NaN and 2 Inf", "first at index (0, 1)", "finite"])


@pytest.mark.parametrize("where", ["file", "stdin", "object"])
def test_json_100000_levels_deep_is_refused_fast_and_clearly(tmp_path, where):
    text = "[" * 100_000 + "1" + "]" * 100_000
    if where == "object":
        text = '{"query": ' + text + "}"
    path = write(tmp_path / "deep.json", text)
    start = time.perf_counter()
    if where == "stdin":
        refuse(tmp_path, words=["<stdin>", "nested too deeply"], input=text.encode())
    else:
        refuse(tmp_path, path, words=[path, "nested too deeply"])
    assert time.perf_counter() - start < 2.0


def test_json_deeper_than_numpy_allows(tmp_path):
    path = write(tmp_path / "deep.json", "[" * 70 + "1" + "]" * 70)
    refuse(tmp_path, path, words=[path, "70 levels deep", "at most 64 axes"])


# --- values ----------------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["query", "key", "value"])
def test_nan_or_inf_in_any_input_says_how_many_and_where(tmp_path, role):
    paths = {name: npy(tmp_path / f"{name}.npy", QUERY) for name in ("query", "key", "value")}
    bad = QUERY.copy()
    bad[1, 2], bad[2, 0], bad[2, 3] = np.nan, np.inf, -np.inf
    paths[role] = npy(tmp_path / f"bad-{role}.npy", bad)
    words = [f"{paths[role]}: {role}", "1 NaN and 2 Inf", "first at index (1, 2)", "finite"]
    refuse(tmp_path, *paths.values(), words=words, existing=True)


def test_nan_in_a_named_tensor_of_one_file(tmp_path):
    bad = QUERY.copy()
    bad[0, 1] = np.nan
    path = tmp_path / "qkv.safetensors"
    save_file({"query": QUERY, "key": bad, "value": QUERY}, str(path))
    refuse(tmp_path, str(path), words=[f"{path}:key: key", "1 NaN and 0 Inf", "(0, 1)"])


@pytest.mark.parametrize("shape", [(0, 4), (3, 0), (2, 0, 4)])
def test_zero_length_axis(tmp_path, shape):
    path = npy(tmp_path / "x.npy", np.zeros(shape, np.float32))
    text = "(" + ", ".join(map(str, shape)) + ")"
    refuse(tmp_path, path, words=[path, "axis of length zero", text])


def test_zero_length_value_among_three(tmp_path):
    query = npy(tmp_path / "q.npy", QUERY)
    value = npy(tmp_path / "v.npy", np.zeros((3, 0), np.float32))
    refuse(tmp_path, query, query, value, words=[f"{value}: value", "axis of length zero", "(3, 0)"])


# --- shapes ----------------------------------------------------------------------------------


def _shape(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "") + ")"


def _three(tmp_path: Path, shapes: tuple[tuple[int, ...], ...]) -> list[str]:
    return [
        npy(tmp_path / f"{name}.npy", np.ones(shape, np.float32))
        for name, shape in zip(("q", "k", "v"), shapes, strict=True)
    ]


@pytest.mark.parametrize(
    ("shapes", "words"),
    [
        pytest.param(
            ((3, 4), (3, 5), (3, 5)),
            ["query has 4 features but key has 5", "q.npy (3, 4)", "k.npy (3, 5)"],
            id="features",
        ),
        pytest.param(
            ((3, 4), (3, 4), (2, 4)),
            ["key has 3 positions but value has 2", "k.npy (3, 4)", "v.npy (2, 4)"],
            id="positions",
        ),
        pytest.param(
            ((2, 3, 4), (3, 3, 4), (3, 3, 4)),
            ["the batch axes do not broadcast", "q.npy (2, 3, 4)", "k.npy (3, 3, 4)"],
            id="batch",
        ),
        pytest.param(
            ((2, 3, 4), (2, 3, 4), (3, 3, 4)),
            ["the batch axes do not broadcast", "v.npy (3, 3, 4)"],
            id="value-batch",
        ),
        pytest.param(
            ((1, 6, 3, 4), (1, 4, 3, 4), (1, 4, 3, 4)),
            ["query has 6 heads and key/value 4", "multiple", "q.npy (1, 6, 3, 4)"],
            id="gqa",
        ),
        pytest.param(
            ((1, 4, 3, 4), (1, 2, 3, 4), (1, 1, 3, 4)),
            ["key has 2 heads but value has 1", "v.npy (1, 1, 3, 4)"],
            id="kv-heads",
        ),
        pytest.param(((4,), (5,), (5,)), ["query has 4 features but key has 5", "q.npy (4,)"], id="vectors"),
    ],
)
def test_shapes_that_do_not_fit(tmp_path, shapes, words):
    refuse(tmp_path, *_three(tmp_path, shapes), words=words, existing=True)


def test_shapes_that_do_not_fit_in_one_file(tmp_path):
    path = tmp_path / "qkv.npz"
    np.savez(path, query=np.ones((3, 4)), key=np.ones((3, 5)), value=np.ones((3, 5)))
    refuse(tmp_path, str(path), words=["query has 4 features but key has 5", f"{path}:query (3, 4)"])


@pytest.mark.parametrize(
    ("heads", "words"),
    [
        ("3", ["3 heads do not divide the 8 features of query", "x.npy (3, 8)"]),
        ("16", ["16 heads do not divide the 8 features"]),
        ("0", ["--heads"]),
        ("-2", ["--heads"]),
        ("two", ["--heads", "integer"]),
    ],
)
def test_heads_that_do_not_divide_or_are_not_positive(tmp_path, heads, words):
    path = npy(tmp_path / "x.npy", np.ones((3, 8), np.float32))
    refuse(tmp_path, path, "--heads", heads, words=words)


@pytest.mark.parametrize("heads", ["12", "5"])
def test_heads_given_for_an_input_that_has_its_heads(tmp_path, heads):
    """--heads 12 on (batch, heads, L, d): not 'do not divide the 64 features', but that it has heads."""
    path = npy(tmp_path / "x.npy", RNG.standard_normal((1, 12, 4, 64)).astype(np.float32))
    line = refuse(
        tmp_path,
        path,
        "--heads",
        heads,
        words=[f"--heads {heads}", f"{path} (1, 12, 4, 64) already has 12 heads, on axis 1", "merged inputs"],
    )
    assert "do not divide" not in line


@pytest.mark.parametrize(
    ("shape", "option", "words"),
    [
        (
            (12, 4, 64),
            ["--head", "0"],
            ["--head 0", "(12, 4, 4) have no head axis", "batch (12 entries)", "--batch"],
        ),
        (
            (4, 64),
            ["--head", "1"],
            ["--head 1", "(4, 4) have no head axis", "one matrix", "--heads N", "4-D"],
        ),
        ((4, 64), ["--batch", "0"], ["--batch 0", "(4, 4) have no batch axis", "one matrix"]),
        ((4, 64), ["--heads", "8", "--batch", "0"], ["--batch 0", "(8, 4, 4)", "heads (8)", "--head picks"]),
    ],
    ids=["3-D", "2-D", "2-D-batch", "heads-batch"],
)
def test_head_or_batch_for_weights_without_that_axis(tmp_path, shape, option, words):
    path = npy(tmp_path / "x.npy", RNG.standard_normal(shape).astype(np.float32))
    refuse(tmp_path, path, *option, words=words)


def test_heads_that_divide_query_but_not_value(tmp_path):
    query = npy(tmp_path / "q.npy", np.ones((3, 8), np.float32))
    value = npy(tmp_path / "v.npy", np.ones((3, 6), np.float32))
    refuse(
        tmp_path, query, query, value, "--heads", "4", words=["4 heads do not divide the 6 features of value"]
    )


@pytest.mark.parametrize(
    ("shape", "words"),
    [
        ((5, 5), ["m.npy (5, 5)", "weights (2, 3, 3)"]),
        ((2, 3), ["m.npy (2, 3)"]),
        ((4, 1, 3), ["m.npy (4, 1, 3)", "weights (2, 3, 3)"]),
    ],
)
def test_mask_that_does_not_broadcast(tmp_path, shape, words):
    path = npy(tmp_path / "x.npy", np.ones((2, 3, 4), np.float32))
    mask = npy(tmp_path / "m.npy", np.ones(shape, bool))
    refuse(tmp_path, path, "--mask", mask, words=["the mask does not broadcast", *words], existing=True)


@pytest.mark.parametrize(
    ("mask", "words"),
    [
        (np.ones((3, 3), np.int64), ["--mask", "integers"]),
        (np.zeros((0, 3), bool), ["--mask", "empty"]),
        (np.full((3, 3), np.nan), ["--mask", "1", "NaN or +inf"]),
        (np.array([["a"]]), ["--mask", "strings"]),
    ],
    ids=["integers", "empty", "nan", "strings"],
)
def test_masks_that_are_not_masks(tmp_path, mask, words):
    path = npy(tmp_path / "x.npy", np.ones((3, 4), np.float32))
    if mask.dtype.kind == "f":
        mask[0, 1:] = 0.0
        words = ["--mask", f"{mask.size - 2} NaN or +inf", "first at index (0, 0)"]
    mask_path = npy(tmp_path / "m.npy", mask)
    refuse(tmp_path, path, "--mask", mask_path, words=[*words, mask_path])


# --- options ---------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e999", "0", "-0.0", "x"])
def test_scale_that_is_not_a_finite_non_zero_number(tmp_path, value):
    path = npy(tmp_path / "x.npy", QUERY)
    refuse(tmp_path, path, "--scale", value, words=["--scale"], existing=True)


@pytest.mark.parametrize("value", ["float8", "int8", "FLOAT32x", ""])
def test_unknown_dtype(tmp_path, value):
    path = npy(tmp_path / "x.npy", QUERY)
    refuse(tmp_path, path, "--dtype", value, words=["--dtype", f"'{value}'"])


@pytest.mark.parametrize("value", ["tpu", "gpu", "cuda:x", "cuda:-1", ""])
def test_unknown_device(tmp_path, value):
    path = npy(tmp_path / "x.npy", QUERY)
    refuse(tmp_path, path, "--device", value, words=[f"device '{value}'", "cpu, cuda, cuda:N, auto"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("value", ["cuda", "cuda:0", "CUDA:1"])
def test_device_cuda_without_cuda(tmp_path, value):
    path = npy(tmp_path / "x.npy", QUERY)
    refuse(tmp_path, path, "--device", value, words=[f"device '{value}' is not available", "--device cpu"])


@pytest.mark.parametrize("count", [2, 4])
def test_two_or_four_paths(tmp_path, count):
    path = npy(tmp_path / "x.npy", QUERY)
    refuse(tmp_path, *[path] * count, words=[f"got {count} paths", "QUERY KEY VALUE"])


def test_stdin_twice(tmp_path):
    path = npy(tmp_path / "x.npy", QUERY)
    refuse(tmp_path, "-", "-", path, words=["stdin ('-')", "only one"], input=npy_bytes(QUERY))
    refuse(tmp_path, "-", "--mask", "-", words=["stdin ('-')", "--mask", "not both"], input=npy_bytes(QUERY))


def test_output_folder_missing(tmp_path):
    path = npy(tmp_path / "x.npy", QUERY)
    target = tmp_path / "no" / "such" / "r.npz"
    assert_error(invoke("compute", path, "-o", str(target)), "--output", str(target), "does not exist")
    assert not (tmp_path / "no").exists()


@pytest.mark.parametrize("name", ["r.txt", "r.npy", "r", "r.safetensors.bak"])
def test_unsupported_output_suffix(tmp_path, name):
    path = npy(tmp_path / "x.npy", QUERY)
    folder = tmp_path / "out"
    folder.mkdir()
    target = folder / name
    assert_error(invoke("compute", path, "-o", str(target)), "--output", str(target), "is not supported")
    assert snapshot(folder) == {}


@pytest.mark.parametrize("suffix", [".safetensors", ".npz", ".json"])
def test_output_exists_without_force(tmp_path, suffix):
    path = npy(tmp_path / "x.npy", QUERY)
    target = tmp_path / f"r{suffix}"
    target.write_bytes(PRECIOUS)
    assert_error(invoke("compute", path, "-o", str(target)), "--output", str(target), "exists", "--force")
    assert target.read_bytes() == PRECIOUS
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["x.npy", target.name])


def test_output_is_a_directory(tmp_path):
    path = npy(tmp_path / "x.npy", QUERY)
    target = tmp_path / "r.npz"
    target.mkdir()
    assert_error(invoke("compute", path, "-o", str(target), "--force"), "--output", str(target), "directory")
    assert list(target.iterdir()) == []


def test_output_checked_before_the_inputs_are_read(tmp_path):
    """A bad --output is reported even when the inputs are bad too: nothing is read first."""
    target = tmp_path / "r.txt"
    assert_error(invoke("compute", str(tmp_path / "missing.npy"), "-o", str(target)), "--output", "r.txt")


# --- runtime failures: status 3 ----------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".safetensors", ".npz", ".json"])
@pytest.mark.parametrize("existing", [False, True], ids=["new", "existing"])
def test_disk_full_while_writing_is_status_3_and_leaves_no_partial_file(
    tmp_path, monkeypatch, suffix, existing
):
    path = npy(tmp_path / "x.npy", QUERY)

    def full(descriptor: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    words = ["--output", "could not be written", "No space left on device"]
    refuse(tmp_path, path, "-q", words=words, status=3, suffix=suffix, existing=existing)


@pytest.mark.parametrize("kernel", ["torch", "numpy"])
def test_out_of_memory_is_status_3(tmp_path, monkeypatch, kernel):
    """torch's OutOfMemoryError from the torch kernel, NumPy's MemoryError from the NumPy one."""
    path = npy(tmp_path / "x.npy", QUERY)

    def exhausted(*args, **kwargs):
        if kernel == "torch":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 64.00 GiB")
        raise MemoryError("Unable to allocate 64.0 GiB for an array with shape (3, 3)")

    monkeypatch.setattr("attncli.compute.blocks._block", exhausted)
    monkeypatch.setattr("attncli.compute.numpy_kernel.block", exhausted)
    if kernel == "torch":
        monkeypatch.setattr("attncli.compute.kernels.NUMPY_MAX_WEIGHTS", -1)
    refuse(tmp_path, path, words=["out of memory", "weights of shape (3, 3)"], status=3, existing=True)


# --- stdin -----------------------------------------------------------------------------------


@pytest.mark.parametrize("args", [[], ["-"]], ids=["no-path", "dash"])
def test_stdin_empty(tmp_path, args):
    refuse(tmp_path, *args, words=["<stdin> is empty"], input=b"")


@pytest.mark.parametrize(
    "data",
    [b"\x00\x01\x02garbage", b"\xff\xfe\xfd" * 50, b"   \n\t", b"\xef\xbb\xbf", b"hello", bytes(range(256))],
    ids=["nul", "high", "blank", "bom", "text", "all-bytes"],
)
def test_stdin_binary_garbage(tmp_path, data):
    refuse(tmp_path, words=["<stdin>", "not a tensor file"], input=data, existing=True)


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"\x93NUMPY\x01", ["<stdin>", "not a valid .npy file"]),
        (b"PK\x03\x04rest", ["<stdin>", "not a valid .npz file"]),
        ((2).to_bytes(8, "little") + b"{}", ["<stdin>", "holds no tensors"]),
        ((4).to_bytes(8, "little") + b"{xx}", ["<stdin>", "not a valid .safetensors file"]),
        (b"[1, 2", ["<stdin>", "not valid JSON"]),
    ],
    ids=["npy", "npz", "safetensors-empty", "safetensors-bad", "json"],
)
def test_stdin_with_a_format_prefix_and_nothing_valid_after(tmp_path, data, words):
    refuse(tmp_path, words=words, input=data)


@pytest.mark.parametrize(
    ("document", "words"),
    [
        ([[1, 2], [3]], ["<stdin>", "ragged"]),
        ({"query": [[1, 2]], "key": [[1, 2]]}, ["<stdin>", "no tensor named value or v"]),
        (
            {"query": [[1, 2]], "key": [[1, 2, 3]], "value": [[1]]},
            ["query has 2 features but key has 3", "<stdin>:query (1, 2)"],
        ),
        (
            {"q": [[1, 2]], "k": [[1, 2]], "v": [[1], [2]]},
            ["key has 1 positions but value has 2", "<stdin>:v (2, 1)"],
        ),
        ({"a": [[1]], "b": [[2]], "c": [[3]]}, ["<stdin> holds 3 tensors", "<stdin>:NAME"]),
        ({"query": [[[1]]], "meta": 3}, ["<stdin> has no tensor named key or k"]),
        ([[[True]]], ["<stdin>: query holds booleans"]),
        (7, ["<stdin> is not a tensor file", "JSON starting with '[' or '{'"]),
    ],
    ids=["ragged", "no-value", "features", "positions", "unnamed", "meta-number", "booleans", "scalar"],
)
def test_stdin_json_of_the_wrong_shape(tmp_path, document, words):
    refuse(tmp_path, words=words, input=json.dumps(document), suffix=".npz")


def test_stdin_is_a_terminal(tmp_path, monkeypatch):
    monkeypatch.setattr("attncli.cli._app.stdin", lambda: None)
    refuse(tmp_path, words=["no input", "cat qkv.json | attn compute"])
    refuse(tmp_path, "-", words=["'-'", "no stdin"])


# --- Ctrl-C ----------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a child process is POSIX")
def test_ctrl_c_during_a_long_computation_exits_130_quietly(tmp_path):
    # 2 GiB of weights, which -o takes block by block: interrupted while the file is being written.
    source = npy(tmp_path / "x.npy", RNG.standard_normal((8192, 64)).astype(np.float32))
    folder = tmp_path / "out"
    folder.mkdir()
    target = folder / "out.safetensors"
    attn = Path(sys.executable).with_name("attn")
    args = [str(attn), "compute", source, "--heads", "8", "-o", str(target)]
    env = {**os.environ, "COLUMNS": "100"}
    with subprocess.Popen(
        args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    ) as process:
        start = time.monotonic()
        # Computing: 1.5 s in (torch imported, input read), and the partial file begun.
        while process.poll() is None:
            elapsed = time.monotonic() - start
            if elapsed >= 1.5 and (any(folder.iterdir()) or elapsed >= 4.0):
                break
            time.sleep(0.05)
        if process.poll() is not None:
            pytest.skip("the computation ended before it could be interrupted")
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr.decode()
    assert b"Traceback" not in stderr
    assert b"KeyboardInterrupt" not in stderr
    assert stderr == b""
    assert stdout == b""
    assert snapshot(folder) == {}  # neither out.safetensors nor .out.safetensors.*.partial


# --- fuzzing: hypothesis ---------------------------------------------------------------------

FUZZ = settings(
    max_examples=150,
    deadline=2000,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def _valid_files() -> list[bytes]:
    array = RNG.standard_normal((2, 3, 4)).astype(np.float32)
    header = {"query": array, "key": array, "value": array[..., :2].copy()}
    return [
        npy_bytes(array),
        npy_bytes(array.astype(">f8")),
        npz_bytes(**header),
        save(header, metadata={"note": '"x"'}),
        json.dumps({k: v.tolist() for k, v in header.items()}).encode(),
        json.dumps(array.tolist()).encode(),
    ]


VALID_FILES = _valid_files()


@st.composite
def mutated_files(draw) -> bytes:
    """A valid file, now and then cut short, with a few bytes overwritten."""
    data = bytearray(draw(st.sampled_from(VALID_FILES)))
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    for _ in range(draw(st.integers(0, 4))):
        if data:
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data)


@st.composite
def safetensors_like(draw) -> bytes:
    """8 bytes of header length, then a header starting with '{', then data."""
    header = b"{" + draw(st.binary(max_size=80) | st.text(max_size=80).map(str.encode))
    return len(header).to_bytes(8, "little") + header + draw(st.binary(max_size=64))


PREFIXES = [b"\x93NUMPY", b"\x93NUMPY\x01\x00", b"PK\x03\x04", b"PK\x05\x06", b"[", b"{", b"\xef\xbb\xbf["]
random_bytes = st.one_of(
    st.binary(max_size=300),
    st.tuples(st.sampled_from(PREFIXES), st.binary(max_size=300)).map(b"".join),
    safetensors_like(),
    mutated_files(),
    st.binary(max_size=300).map(fuzz.build),  # what the atheris target builds from its input
)

json_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),  # NaN and +-Infinity included: Python's json writes and reads them
    st.text(max_size=6),
)
json_documents = st.recursive(
    json_leaves,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=30,
)


@st.composite
def rectangular_arrays(draw) -> list | float | int:
    """Nested lists of one shape, numbers of every size, now and then a non-number put in."""
    shape = draw(st.lists(st.integers(0, 3), max_size=3))
    number = st.floats(width=draw(st.sampled_from([16, 32, 64]))) | st.integers(-(2**70), 2**70)
    values = draw(st.lists(number, min_size=int(np.prod(shape)), max_size=int(np.prod(shape))))
    if values and draw(st.booleans()):
        values[draw(st.integers(0, len(values) - 1))] = draw(json_leaves)
    array = np.empty(shape, dtype=object)
    for index, value in zip(np.ndindex(*shape), values, strict=True):
        array[index] = value
    return array.tolist()


attention_documents = st.one_of(
    json_documents,
    rectangular_arrays(),
    st.fixed_dictionaries(
        {"query": rectangular_arrays(), "key": rectangular_arrays(), "value": rectangular_arrays()}
    ),
)


def _library(call) -> object | None:
    """The result of `call()`, or None for an AttnError; a known bug rejects the example."""
    try:
        result = call()
    except AttnError as error:
        event(f"refused: {type(error).__name__}")
        message = str(error)
    except Exception as error:
        if fuzz.is_known_bug(error):
            event(f"known bug: {type(error).__name__}")
            reject()
        raise
    else:
        event("accepted")
        return result
    assert message, "an AttnError without a message"
    return None


def _check_read(data: bytes) -> None:
    source = _library(lambda: loaders.read_tensors("-", io.BytesIO(data)))
    if source is not None:
        assert source.tensors
        for tensor in source.tensors.values():
            assert isinstance(tensor, np.ndarray)
            assert tensor.dtype.kind in "biuf", tensor.dtype
    inputs = _library(lambda: loaders.load_attention_inputs(["-"], io.BytesIO(data)))
    if inputs is not None:
        assert source is not None
        for array in (inputs.query, inputs.key, inputs.value):
            assert array.size > 0
            assert array.ndim >= 1
            assert array.dtype.kind in "iuf"
            if array.dtype.kind == "f":
                assert np.isfinite(array).all()


@FUZZ
@given(data=random_bytes)
def test_fuzz_read_tensors_with_random_bytes(data):
    _check_read(data)


@FUZZ
@given(data=random_bytes, suffix=st.sampled_from([None, ".npy", ".npz", ".safetensors", ".json"]))
def test_fuzz_read_tensors_from_files_with_random_bytes(data, suffix):
    """Files have readers of their own (.npy and .safetensors are memory-mapped): the same contract."""
    fmt = loaders.sniff_format(data)
    suffix = suffix or (f".{fmt}" if fmt else ".npy")
    with tempfile.TemporaryDirectory() as folder:
        path = write(Path(folder) / f"x{suffix}", data)
        source = _library(lambda: loaders.read_tensors(path))
        if source is not None:
            for tensor in source.tensors.values():
                assert tensor.dtype.kind in "biuf", tensor.dtype
        _library(lambda: loaders.load_attention_inputs([path]))
        del source  # a memory-mapped array holds the file open


@FUZZ
@given(document=attention_documents)
def test_fuzz_read_tensors_with_random_json(document):
    _check_read(json.dumps(document).encode())


@st.composite
def qkv_shapes(draw) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """Shapes of query, key and value: unrelated ones, or ones that fit, with a batch axis or two off."""
    if draw(st.integers(0, 3)) == 0:
        return tuple(tuple(draw(st.lists(st.integers(0, 4), max_size=4))) for _ in range(3))
    batch = draw(st.lists(st.integers(1, 3), max_size=3))
    lq, lk, d, dv = (draw(st.integers(1, 4)) for _ in range(4))
    if draw(st.booleans()):
        d = draw(st.sampled_from([4, 6, 8]))

    def leading(group: int = 1) -> tuple[int, ...]:
        axes = [draw(st.sampled_from([b, 1])) for b in batch]
        if axes and group > 1:
            axes[-1] *= group  # grouped-query heads on axis -3 (or a batch mismatch)
        return tuple(axes[draw(st.integers(0, len(axes))) :])

    group = draw(st.integers(1, 3))
    return (*leading(group), lq, d), (*leading(), lk, d), (*leading(), lk, dv)


@st.composite
def attention_problems(draw) -> tuple[dict[str, np.ndarray], list[str], np.ndarray | None]:
    shapes = draw(qkv_shapes())
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    dtype = draw(st.sampled_from([np.float32, np.float64, np.float16, np.int32]))
    tensors = {
        role: rng.standard_normal(shape).astype(dtype)
        for role, shape in zip(("query", "key", "value"), shapes, strict=True)
    }
    options: list[str] = []
    heads = draw(st.sampled_from([None, 1, 2, 3, 4]))
    if heads:
        options += ["--heads", str(heads)]
    if draw(st.booleans()):
        options.append("--causal")
    mask = None
    if draw(st.integers(0, 3)) == 0:
        mask_shape = tuple(draw(st.lists(st.integers(1, 4), max_size=3)))
        mask = rng.random(mask_shape) < 0.8
    return tensors, options, mask


@FUZZ
@given(problem=attention_problems())
def test_fuzz_load_attention_inputs_with_random_shapes(problem):
    tensors, _, _ = problem
    inputs = _library(lambda: loaders.load_attention_inputs(["-"], io.BytesIO(npz_bytes(**tensors))))
    if inputs is not None:
        for role in ("query", "key", "value"):
            np.testing.assert_array_equal(getattr(inputs, role), tensors[role])
            assert inputs.sources[role] == f"<stdin>:{role}"


# The command line, stdin in, `-o OUT` and JSON out: a result with finite weights, or the rule.

_INTERNAL = re.compile(r"^attn: error: internal error: (\w+): (.*) \(run again with --traceback")


def _check_cli(result, folder: Path, target: Path) -> dict | None:
    """Either a success (OUT written, finite weights) or an error that follows the rule."""
    event(f"exit status {result.exit_code}")
    if result.exit_code == 0:
        payload = json.loads(result.stdout)
        weights = np.asarray(payload["weights"], dtype=float)
        assert np.isfinite(weights).all(), weights  # test_found_finite_inputs_whose_scores_overflow
        sums = weights.sum(axis=-1)
        assert np.all((np.abs(sums - 1) < 1e-3) | (sums == 0)), sums
        assert sorted(snapshot(folder)) == [target.name]
        for line in result.stderr.splitlines():
            assert line.startswith(("attn: warning: ", "attn: note: ")), result.stderr
        return payload
    internal = _INTERNAL.match(result.stderr)
    if internal and fuzz.is_known_text(*internal.groups()):
        event(f"known bug: {internal.group(1)}")
        reject()
    assert_error(result, status=2)
    assert snapshot(folder) == {}
    return None


def _cli(*args: str, input: bytes | str | None = None) -> None:
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        target = folder / "result.json"
        result = invoke("compute", *args, "--format", "json", "-o", str(target), input=input)
        _check_cli(result, folder, target)


@FUZZ
@given(data=random_bytes)
def test_fuzz_cli_stdin_with_random_bytes(data):
    _cli(input=data)


@FUZZ
@given(document=attention_documents)
def test_fuzz_cli_stdin_with_random_json(document):
    _cli(input=json.dumps(document))


@FUZZ
@given(problem=attention_problems())
def test_fuzz_cli_with_random_shapes_heads_and_masks(problem):
    tensors, options, mask = problem
    positions = [t.shape[-2] if t.ndim > 1 else 1 for t in (tensors["query"], tensors["key"])]
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name) / "out"
        folder.mkdir()
        target = folder / "result.npz"
        if mask is not None:
            options = [*options, "--mask", npy(Path(name) / "mask.npy", mask)]
        args = ["compute", "-", *options, "--format", "json", "-o", str(target)]
        payload = _check_cli(invoke(*args, input=npz_bytes(**tensors)), folder, target)
    if payload is not None:
        assert payload["meta"]["input_shapes"] == {role: list(t.shape) for role, t in tensors.items()}
        assert payload["meta"]["weights_shape"][-2:] == positions
        assert payload["meta"]["output_shape"][-2] == positions[0]


# --- fuzzing: the atheris target -------------------------------------------------------------


def test_fuzz_target_imports_without_atheris_and_passes_its_seeds():
    seeds = list(fuzz.seeds())
    assert {seed[0] % 8 for seed in seeds} == set(range(8))  # every kind of input is seeded
    for seed in seeds:
        fuzz.one_input(seed)


@pytest.mark.slow
def test_fuzz_target_script_without_atheris_skips_cleanly(tmp_path):
    """`python fuzz_loaders.py` says it is skipping when atheris is missing (hidden here by a stub)."""
    (tmp_path / "atheris.py").write_text("raise ImportError('no atheris here')\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, str(FUZZ_TARGET), "-runs=1"], capture_output=True, text=True, env=env, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "atheris is not installed" in done.stderr


# --- found by fuzzing: regressions for the bugs fixed since, strict xfails for those still open --


def _zip(members: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=compression) as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    return buffer.getvalue()


def _npy_with_header(header: str, data: bytes = bytes(48)) -> bytes:
    text = header + " " * (-(10 + len(header) + 1) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text.encode() + data


#: .npy headers numpy's reader fails on with exceptions other than ValueError: tokenize.TokenError
#: (the two open ones), SyntaxError (the two 'descr's) and OverflowError (the axis of 2**64).
ODD_NPY_HEADERS = {
    "open-bracket": "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4, }",
    "open-string": "{'descr': '''<f4', }",
    "descr-comma": "{'descr': ',f4', 'fortran_order': False, 'shape': (3, 4), }",
    "descr-open-bracket": "{'descr': '2f4,(', 'fortran_order': False, 'shape': (3, 4), }",
    "axis-2**64": "{'descr': '<f8', 'fortran_order': False, 'shape': (18446744073709551616, 1), }",
}

ATHERIS_CRASHES = {  # inputs atheris crashed on; the first byte picks what `fuzz.build` makes
    "npy-header-axis-overflow": (
        "BwFxdQAAAABucHn/k05VTVBZAQB2AHsnZGVzY3InOiAnPGY0JywgJ2ZvcnRyYW5fb3JkZXInOiBGYWxzZSwgJ3NoYXBlJzog"
        "KDMsIDQpLCB9ICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgIAoAAAAA"
        "AACAPwAAAEAAAEBAAACAQAAAoEAAAMBAAADgQAAAAEEAABBBAAAgQQAAMEH/Kf+TTlVNUFkBAHYAeydkZXNjcic6ICc8ZjQn"
        "LCAnZm9ydHJhbl9vcmRlcic6IEZhbHNlLCAnc2hhcGUnOiAoMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMz"
        "MzMzMzMsIDQpLCB9ICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgIAoA"
        "AAAAAACAPwAAAEAAAEBAAACAQAAAoEAAAMBAAADgAAAAQEEAABBBAAAgQQAAMEE="
    ),
    "npz-member-not-npy-2": (
        "B///AXF1ZXJ5Lm5wef+TTlVNUFkBAHYAeydkZXNjcic6ICc8ZjQnLCAnZm9ydHJhbl9vcmRlcic6IEZhbHNlLCAnc2hhcGUn"
        "OiAoMywgNCksIH0gICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgCv//"
        "AAAAAIA/AAAAQAAAQEAAAAAAAAAAAAAAgEAAAKBAAADAQAAA4EAAAABBAAAQQQAAIEEAADBB/2v/k05VTVBZAQB2AHsnZGVz"
        "Y3InOiAnPGY0JywgJ2ZvcnRyYW5fb3JkZXInOiBGYWxzZSwgJ3NoYXBlJzogKDMsIDQpLCB9ICAgICAgICDg3wDf39/f2CAg"
        "ICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgIAoAAAAAAACAPwAAAEAAAEBAAACAQAAAoEAAAMBAAADg"
        "QAAAAEEAABBBAAAgQQAANUE="
    ),
    "npz-member-encrypted": (
        "Ai0AAAAAAAAAIQAtbyIm//////////8JABQAcXVlcnkubnB5AQAQALAAAAAAAAAAsAAAAAAAAACTTlVNUFkBAHYAeydkZXNj"
        "cic6ICc8ZjQnLCAnZm9ydHJhbl9vcmRlcic6IEZhbHNlLCAnc2hhcGUnOiAoMywgNCksIH0gICAgICAgICAgICAgICAgICAg"
        "ICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgCgAAAAAAAIA/AAAAQAAAQEAAAIBAAACgQAAAwEAAAOBA"
        "AAAAQQAAEEEAACBBAAAwQVBLAwQtAAAAAAAAACEALW8iJv//////////BwAUAGtleS5ucHkBABAAsAAAAAAAAACwAAAAAAAA"
        "AJNOVU1QWQEAdgB7J2Rlc2NyJzogJzxmNCcsICdmb3J0cmFuX29yZGVyJzogRmFsc2UsICdzaGFwZSc6ICgzLCA0KSwgfSAg"
        "ICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAKAAAAAAAAgD8AAABAAABA"
        "QAAAgEAAAKBAAADAQAAA4EAAAABBAAAQQQAAIEEAADBBUEsDBC0AAAAAAAAAIQAtbyIm//////////8JAOIAdmFsdWUubnB5"
        "AQAQALAAAAAAAAAAsAAAAAAAAACTTlVNUFkBAHYAeydkZXNjcic6ICc8ZjQnLCAnZm9ydHJhbl9vcmRlcic6IEZhbHNlLCAn"
        "c2hhcGUnOiAoMywgNCksIH0gICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAg"
        "ICAgCgAAAAAAAIA/AAAAQAAAQEAAAIBAAACgQAAAwEAAAOBAAAAAQQAAEEEAACBBAAAwQVBLAQItAy0AAAAAAAAAIQAtbyIm"
        "sAAAALAAAAAJAAAAAAAAAAAAAACAAQAAAABxdWVyeS5ucHlQSwECLQMtABEAAAAAAAAALW8iJrAAAACwAAAABwAAAAAAAAAA"
        "AAAAgAHrAAAAa2V5Lm5weVBLAQItAy0AAAAAAAAAIQAtbyImsAAAALAAAAAJAAAAAAAAAAAAAACAAdQBAAB2YWx1ZS5ucHlQ"
        "SwUGAAAAAAMAAwCjAAAAvwIAAAAA"
    ),
    "npz-member-not-npy": (
        "BwFxdWVyeS5ucHn/k05VTVBZAQB2AHsnZGVzY3InOiAnPGY0JywgJ2ZvcnRyYW5fb3JkZXInOiBGYWxzZSwgJ3NoYXBlJzog"
        "KDMsIDQpLCB9ICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgIAoAAAAA"
        "AACAPwAAAEAAAEBAAACAQAAAoEAAAMBAAADgQAAAAEEAABBBAAAgQQAAMEH/a/+TTlVNUFkBAHYAeydkZXNjcic6ICc8ZjQn"
        "LCAnZm9ydHJhbl9vcmRlcic6IEZhbHNlLCAnc2hhcGUnOiAoMywgKTQpLCB9ICAgICAgICAgICAgICAgICAgICAgICAgICAg"
        "ICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgIAoAAAAAAACAPwAAAEAAAEBAAACAQAAAoEAAAMBAAADgQAAAAEEAABBB"
        "AAAgQQAAMEE="
    ),
    "zip-version-21": (
        "Ai0AAAAAAAAAIQAtbyIm//////////8JABQAcXVlcnkubnB5AQAQALAAAAAAAAAAsAAAAAAAAACTTlVNUFkBAHYAeydkZXNj"
        "cic6ICc8ZjQnLCAnZm9ydHJhbl9vcmRlcic6IEZhbHNlLCAnc2hhcGUnOiAoMywgNCksIH0gICAgICAgICAgICAgICAgICAg"
        "ICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgCgAAAAAAAIA/AAAAQAAAQEAAAIBAAACgQAAAwEAAAOBA"
        "AAAAQQAAEEEAACBBAAAwQVBLAwQtAAAAAAAAACEALW8iJv//////////BwAUAGtleS5ucHkBABAAsAAAAAAAAACwAAAAAAAA"
        "AJNOVU1QWQEAdgB7J2Rlc2NyJzogJzxmNCcsICdmb3J0cmFuX29yZGVyJzogRmFsc2UsICdzaGFwZSc6ICgzLCA0KSwgfSAg"
        "ICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAKAAAAAAAAgD8AAABAAABA"
        "QAAAgEAAAKBAAADAQAAA4EAAAABBAAAQQQAAIEEAADBBUEsDBC0AAAAAAAAA////////////////////////////////////"
        "/////////////////////////////////////////////////////////////////////////////yEALW8iJv//////////"
        "CQDiAHZhbHVlLm5weQEAEACwAAAAAAAAALAAAAAAAAAAk05VTVBZAQB2AHsnZGVzY3InOiAnPGY0JywgJ2ZvcnRyYW5fb3Jk"
        "ZXInOiBGYWxzZSwgJ3NoYXBlJzogKDMsIDQpLCB9ICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAg"
        "ICAgICAgICAgICAgICAgIAoAAAAAAACAPwAAAEAAAEBAAACAQAAAoEAAAMBAAADgQAAAAEEAABBBAAAgQQAAMEFQSwECLQPT"
        "////////+yEALW8iJrAAAACwAAAACQAAAAAAAAAAAAAAgAEAAAAAcXVlcnkubnB5UEsBAi0DLQAAAAAAAAAhAC1vIiawAAAA"
        "sAAAAAcAAAAAAAAAAAAAAIAB6wAAAGtleS5ucHlQSwECLQMtAAAAAAAAACEALW8iJrAAAACwAAAACQAAAAAAAAAAAAAAgAHU"
        "AQAAdmFsdWUubnB5UEsFBgAAAAADAAMAowAAAL8CAAAAAA=="
    ),
    "zip-patched-data": (
        "Ai0AAAAAAAAAIQAtbyIm//////////8JABQAcXVlcnkubnB5AQAQALAAAAAAAAAAsAAAAAAAAACTTlVNUFkBAHYAeydkZXNj"
        "cic6ICc8ZjQnLCAnZm9ydHJhbl9vcmRlcic6IEZhbHNlLCAnc2hhcGUnOiAoMywgNCksIH0gICAgICAgICAgICAgICAgICAg"
        "ICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgCgAAAAAAAIA/AAAAQAAAQEAAAIBAAACgQAAAwEAAAOBA"
        "AAAAQQAAEEEAACBBAAAwQVBLAwQtAAAAAAAAACEALW8iJv//////////BwAUAGtleS5ucHkBABAAsAAAAAAAAACwAAAAAAAA"
        "AJNOVU1QWQEAdgB7J2Rlc2NyJzogJzxmNCcsICdmb3J0cmFuX29yZGVyJzogRmFsc2UsICdzaGFwZSc6ICgzLCA0KSwgfSAg"
        "ICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAKAAAAAAAAgD8AAABAAABA"
        "QAAAgEAAAKBAAADAQAAA4EAAAABBAAAQQQAAIEEAADBBUEsDBC0AAAAAAAAAIQAtbyIm//////////8JAOIAdmFsdWUubnB5"
        "AQAQALAAAAAAAAAAsAAAAAAAAACTTlVNUFkBAHYAeydkZXNjcic6ICc8ZjQnLCAnZm9ydHJhbl9vcmRlcic6IEZhbHNlLCAn"
        "c2hhcGUnOiAoMywgNCksIH0gICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAg"
        "ICAgCgAAAAAAAIA/AAAAQAAAQEAAAIBAAACgQAAAwEAAAOBAAAAAQQAAEEEAACBBAAAwQVBLAQItAy0AAAAAAAAAIQAtbyIm"
        "sAAAALAAAAAJAAAAAAAAAAAAAACAAQAAAABxdWVyeS5ucHlQSwECLQMtAPYAAAAAACEALW8iJrAAAACwAAAABwAAAAAAAAAA"
        "AAAAgAHrAAAAa2V5Lm5weVBLAQItAy0AAAAAAAAAIQAtbyImsAAAALAAAAAJAAAAAAAAAAAAAACAAdQBAAB2YWx1ZS5ucHlQ"
        "SwUGAAAAAAMAAwijAAAAvwIAAAAA"
    ),
    "npy-header-syntax-error": (
        "BwFxcHn/k05VTVBZAQB2AHsnZGVzY3InOiAnLGY0JywgJ2ZvcnRyYW5fb3JkZXInOiBGYWxzZSwgJ3NoYXBlJzogKDMsIDQp"
        "LCB9ICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgIAoAAAAAAACAPwAA"
        "AEAAAEBAAACAQAAAoEAAAMBAAADgQAAAAEEAABBBAAAgQQAANUH/a/+TTlVNUFkBAnYAYWxhc2UsICdz"
    ),
}


@pytest.mark.parametrize("name", sorted(ATHERIS_CRASHES))
def test_found_atheris_crash_inputs_are_refused_cleanly(tmp_path, name):
    data = base64.b64decode(ATHERIS_CRASHES[name])
    fuzz.one_input(data)  # the library: tensors or an AttnError
    refuse(tmp_path, words=["<stdin>"], input=fuzz.build(data))


@pytest.mark.parametrize("where", ["file", "stdin"])
def test_found_npz_member_that_is_not_an_array(tmp_path, where):
    data = _zip({"query.npy": npy_bytes(QUERY), "notes.txt": b"hello"})
    path = write(tmp_path / "x.npz", data)
    label = path if where == "file" else "<stdin>"
    refuse(tmp_path, *([path] if where == "file" else []), words=[label, "npz"], input=data)


def _corrupt_deflate() -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, query=np.arange(1000.0))
    data = bytearray(buffer.getvalue())
    start = data.find(b"query.npy") + len("query.npy") + 10
    for index in range(start, start + 40):
        data[index] ^= 0x55
    return bytes(data)


def _unknown_compression() -> bytes:
    data = bytearray(_zip({"query.npy": npy_bytes(QUERY)}, zipfile.ZIP_DEFLATED))
    data[8:10] = (99).to_bytes(2, "little")  # local header: compression method 99 (AES)
    central = data.find(b"PK\x01\x02")
    data[central + 10 : central + 12] = (99).to_bytes(2, "little")
    return bytes(data)


def _future_version() -> bytes:
    data = bytearray(_zip({"query.npy": npy_bytes(QUERY)}))
    central = data.find(b"PK\x01\x02")
    data[central + 6 : central + 8] = (211).to_bytes(2, "little")  # version needed to extract: 21.1
    return bytes(data)


def _patched() -> bytes:
    data = bytearray(_zip({"query.npy": npy_bytes(QUERY)}))
    central = data.find(b"PK\x01\x02")
    data[central + 8] |= 0x20  # general purpose flag bit 5: compressed patched data
    return bytes(data)


def _encrypted() -> bytes:
    data = bytearray(_zip({"query.npy": npy_bytes(QUERY)}))
    data[6] |= 1  # local header: general purpose flag bit 0, encrypted
    central = data.find(b"PK\x01\x02")
    data[central + 8] |= 1
    return bytes(data)


@pytest.mark.parametrize(
    "make",
    [_corrupt_deflate, _unknown_compression, _encrypted, _future_version, _patched],
    ids=["corrupt-deflate", "method-99", "encrypted", "zip-version-21", "patched-data"],
)
def test_found_npz_member_that_cannot_be_read(tmp_path, make):
    """zlib.error, NotImplementedError and RuntimeError from zipfile were internal errors (70)."""
    data = make()
    path = write(tmp_path / "x.npz", data)
    words = ["is encrypted"] if make is _encrypted else ["not a valid .npz file"]
    refuse(tmp_path, path, words=[path, *words])
    refuse(tmp_path, words=["<stdin>", *words], input=data)


def _bad_npy_line(line: str) -> None:
    assert "not a valid" in line or "header" in line, line


@pytest.mark.parametrize("shape", [(10**14,), (2**64, 1)], ids=["728-TiB", "axis-2**64"])
@pytest.mark.parametrize("where", ["npy-file", "npy-stdin", "npz-file", "npz-stdin"])
def test_found_npy_header_claiming_a_huge_shape(tmp_path, where, shape):
    """MemoryError (numpy allocating what the header claims) and OverflowError were exit 70."""
    data = fuzz.npy_header("<f8", shape) + bytes(16)  # petabytes or more claimed, 16 bytes there
    suffix = where.partition("-")[0]
    if suffix == "npz":
        data = _zip({"query.npy": data})
    path = write(tmp_path / f"x.{suffix}", data)
    start = time.perf_counter()
    if where.endswith("file"):
        _bad_npy_line(refuse(tmp_path, path, words=[path]))
    else:
        _bad_npy_line(refuse(tmp_path, words=["<stdin>"], input=data))
    assert time.perf_counter() - start < 2.0


@pytest.mark.parametrize("header", sorted(ODD_NPY_HEADERS))
def test_found_npy_header_that_numpy_cannot_parse(tmp_path, header):
    """tokenize.TokenError, SyntaxError and OverflowError from numpy's header parser were exit 70,
    from stdin, from .npz members and from the memory-mapped .npy reader (loaders._map_npy)."""
    data = _npy_with_header(ODD_NPY_HEADERS[header])
    path = write(tmp_path / "x.npy", data)
    _bad_npy_line(refuse(tmp_path, path, words=[path]))
    _bad_npy_line(refuse(tmp_path, words=["<stdin>"], input=data))
    npz = write(tmp_path / "x.npz", _zip({"query.npy": data}))
    _bad_npy_line(refuse(tmp_path, npz, words=[npz]))
    # inspect and diff read the same header with the same reader (io/formats.py): status 2 too
    for command, args in (("inspect", [path]), ("inspect", [npz]), ("diff", [path, path])):
        _bad_npy_line(assert_error(invoke(command, *args), args[0]))


def test_found_npy_header_naming_a_deprecated_dtype_alias(tmp_path):
    """'|a4' (NumPy's old name for 4-byte strings) made NumPy warn (DeprecationWarning) as it read
    the header: attncli says what the file holds, and nothing else is printed, on every reader."""
    data = fuzz.npy_header("|a4", (2,)) + b"abcdefgh"
    words = ["holds byte strings", "real numbers"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning that escaped would fail the test
        path = write(tmp_path / "x.npy", data)
        refuse(tmp_path, path, words=[path, *words])
        refuse(tmp_path, words=["<stdin>", *words], input=data)
        npz = write(tmp_path / "x.npz", _zip({"query.npy": data}))
        refuse(tmp_path, npz, words=[npz, *words])


@pytest.mark.parametrize("where", ["file", "stdin", "object"])
def test_found_json_integer_with_more_than_4300_digits(tmp_path, where):
    """Python's int() limit made json.loads raise ValueError: exit 70."""
    text = "[[" + "7" * 5000 + "]]"
    if where == "object":
        text = '{"query": ' + text + ', "key": [[1]], "value": [[1]]}'
    path = write(tmp_path / "x.json", text)
    if where == "stdin":
        refuse(tmp_path, words=["<stdin>"], input=text)
    else:
        refuse(tmp_path, path, words=[path])


@pytest.mark.parametrize("where", ["file", "stdin"])
def test_found_safetensors_empty_tensor_with_a_huge_axis(tmp_path, where):
    """Shape [0, 2**63] passes the safetensors checks (no bytes) and numpy's reshape raised: exit 70."""
    header = json.dumps({"query": {"dtype": "F32", "shape": [0, 2**63], "data_offsets": [0, 0]}}).encode()
    data = len(header).to_bytes(8, "little") + header
    path = write(tmp_path / "x.safetensors", data)
    if where == "file":
        refuse(tmp_path, path, words=[path])
    else:
        refuse(tmp_path, words=["<stdin>"], input=data)


@pytest.mark.parametrize(
    ("suffix", "value"),
    [
        (".safetensors", "[" * 100_000),
        (".safetensors", "[" * 3000 + "]" * 3000),
        (".safetensors", "9" * 5000),
        (".npz", "[" * 100_000),
        (".npz", "[" * 3000 + "]" * 3000),
        (".npz", "9" * 5000),
    ],
    ids=["safetensors-open", "safetensors-deep", "safetensors-digits", "npz-open", "npz-deep", "npz-digits"],
)
def test_found_file_metadata_that_breaks_json_parsing(tmp_path, suffix, value):
    """RecursionError and ValueError from json.loads on a file's metadata were exit 70."""
    path = tmp_path / f"qkv{suffix}"
    tensors = {"query": QUERY, "key": QUERY, "value": QUERY}
    if suffix == ".safetensors":
        save_file(tensors, str(path), metadata={"note": value})
    else:
        np.savez(path, **tensors, meta=np.array(value))
    for args, label in (([str(path)], str(path)), ([], "<stdin>")):
        folder = Path(tempfile.mkdtemp(dir=tmp_path))
        result = invoke("compute", *args, "-o", str(folder / "r.npz"), "-q", input=path.read_bytes())
        if result.exit_code == 0:  # metadata is only informational: reading past it is fine too
            assert sorted(snapshot(folder)) == ["r.npz"]
        else:
            assert_error(result, label)
            assert snapshot(folder) == {}


@pytest.mark.parametrize(
    "document",
    [
        {"a\nb": [[1.0]], "c": [[2.0]]},
        {"query\r\nforged: x": "not a tensor"},
        {"q": [[1.0]], "k": [[1.0]], "value\n": [[1.0]]},
        {"\x1b[31mred\x1b[0m": [[1.0]], "b": [[1.0]]},
    ],
    ids=["listed-names", "named-string", "missing-role", "terminal-escape"],
)
def test_found_tensor_names_with_control_characters_stay_on_one_line(tmp_path, document):
    """Names were printed raw: a line break split the error line, an escape reached the terminal."""
    line = refuse(tmp_path, words=["<stdin>"], input=json.dumps(document))
    assert "\x1b" not in line


@pytest.mark.parametrize(
    ("array", "options"),
    [
        (np.full((2, 2), 1e20, np.float32), []),
        (np.full((2, 2), 1e20, np.float32), ["--format", "json"]),
        (np.full((2, 2), 1e200), []),
        (np.full((1, 1), 2**64 - 1, np.uint64), []),
        (np.full((2, 2), 70000, np.float32), ["--dtype", "float16"]),
        (np.ones((2, 2), np.float32), ["--scale", "1e308"]),
    ],
    ids=["float32-1e20", "float32-1e20-json", "float64-1e200", "uint64-max", "float16-70000", "scale-1e308"],
)
def test_found_finite_inputs_whose_scores_overflow(tmp_path, array, options):
    """NaN weights were shown (exit 70 from the renderer, after OUT was written) or printed (exit 0)."""
    path = npy(tmp_path / "x.npy", array)
    folder = tmp_path / "out"
    folder.mkdir()
    target = folder / "r.npz"
    result = invoke("compute", path, *options, "-o", str(target))
    if result.exit_code == 0:  # computed after all: then the weights must be right
        with np.load(target) as saved:
            weights = saved["weights"]
        assert np.isfinite(weights).all(), weights
        np.testing.assert_allclose(weights.sum(axis=-1), 1, atol=1e-3)
        assert "NaN" not in result.stdout
    else:
        line = assert_error(result)
        assert "overflow" in line or "range" in line, line
        assert snapshot(folder) == {}


@pytest.mark.parametrize(
    ("shapes", "mask_shape", "weights"),
    [
        (((1, 4), (3, 4), (3, 4)), (2, 3), "(1, 3)"),  # one query: exit 0 with 2 rows of weights
        (((1, 1), (1, 1), (1, 1)), (2,), "(1, 1)"),  # one key: RuntimeError from matmul, exit 70
        (((2, 1, 4), (2, 3, 4), (2, 3, 4)), (4, 3), "(2, 1, 3)"),
        (((4,), (4,), (4,)), (3, 1), "(1, 1)"),  # vectors: one position each
    ],
    ids=["one-query", "one-key", "batched-one-query", "vectors"],
)
def test_found_mask_stretching_the_query_or_key_axis_is_refused(tmp_path, shapes, mask_shape, weights):
    paths = _three(tmp_path, shapes)
    mask = npy(tmp_path / "m.npy", np.ones(mask_shape, bool))
    words = ["the mask does not broadcast", f"m.npy {_shape(mask_shape)}", f"weights {weights}"]
    refuse(tmp_path, *paths, "--mask", mask, words=words)
