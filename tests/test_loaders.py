"""Tests for attncli.io.loaders: every format by suffix and from stdin, query/key/value resolution, masks,
and the catalogue of inputs that must be refused with a message naming the file.

Expected values come from NumPy, safetensors, torch or the JSON text written here, never from attncli.
"""

from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save as safetensors_bytes
from safetensors.numpy import save_file

from attncli.errors import InputError, UsageError
from attncli.io import loaders
from attncli.io.loaders import (
    check_numeric_input,
    load_attention_inputs,
    load_mask,
    load_tensor,
    read_tensors,
    sniff_format,
    split_spec,
)

RNG = np.random.default_rng(20240601)
QUERY = RNG.standard_normal((2, 3, 4)).astype(np.float32)
KEY = RNG.standard_normal((2, 5, 4)).astype(np.float32)
VALUE = RNG.standard_normal((2, 5, 6)).astype(np.float32)


# --- helpers ------------------------------------------------------------------------------------------


def stdin_of(data: bytes) -> io.BytesIO:
    return io.BytesIO(data)


def npy_bytes(array: np.ndarray, *, allow_pickle: bool = False) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=allow_pickle)
    return buffer.getvalue()


def npz_bytes(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def json_bytes(document: object, *, indent: int | None = None) -> bytes:
    return json.dumps(document, indent=indent).encode()


def write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


def error_of(kind: type[Exception], call, *args, **kwargs) -> str:  # type: ignore[no-untyped-def]
    """The message of the `kind` error that `call(*args, **kwargs)` raises."""
    with pytest.raises(kind) as caught:
        call(*args, **kwargs)
    assert type(caught.value) is kind, f"expected exactly {kind.__name__}, got {type(caught.value)}"
    return str(caught.value)


def assert_words(message: str, *words: str) -> None:
    for word in words:
        assert word in message, f"{word!r} not in message {message!r}"


def assert_same(actual: np.ndarray, expected: np.ndarray) -> None:
    """Same dtype, shape and values (bit for bit; NaNs equal)."""
    expected = np.asarray(expected)
    assert actual.dtype == expected.dtype
    assert actual.shape == expected.shape
    np.testing.assert_array_equal(actual, expected, strict=True)


# --- split_spec and sniff_format ------------------------------------------------------------------------


def test_split_spec_separates_a_name_only_where_the_path_does_not_exist(tmp_path: Path) -> None:
    assert split_spec("-") == ("-", None)
    assert split_spec("-:query") == ("-", "query")
    assert split_spec("qkv.npz:query") == ("qkv.npz", "query")
    assert split_spec("missing.npy") == ("missing.npy", None)
    odd = tmp_path / "odd:name.npy"  # exists as given, so its colon is part of the name
    odd.write_bytes(npy_bytes(QUERY))
    assert split_spec(str(odd)) == (str(odd), None)
    assert split_spec("dir:sub/file.npy") == ("dir:sub/file.npy", None)  # a NAME never holds a slash


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        pytest.param(npy_bytes(QUERY), "npy", id="npy-magic"),
        pytest.param(npz_bytes(query=QUERY), "npz", id="npz-zip"),
        pytest.param(npz_bytes(), "npz", id="empty-zip"),
        pytest.param(safetensors_bytes({"query": QUERY}), "safetensors", id="safetensors-header"),
        pytest.param(b"[[1, 2]]", "json", id="json-array"),
        pytest.param(b'{"query": [1]}', "json", id="json-object"),
        pytest.param(b" \n\t\r\n  [1]", "json", id="json-leading-whitespace"),
        pytest.param(b"", None, id="empty"),
        pytest.param(b"hello world", None, id="text"),
        pytest.param(b"\x00\x01\x02\x03garbage\xff\xfe", None, id="binary-garbage"),
        pytest.param((2**62).to_bytes(8, "little") + b'{"a": 1}', None, id="safetensors-absurd-size"),
    ],
)
def test_sniff_format(data: bytes, expected: str | None) -> None:
    assert sniff_format(data) == expected


# --- round trips: files by suffix ------------------------------------------------------------------------

NUMERIC_ARRAYS = {
    "float16": RNG.standard_normal((3, 4)).astype(np.float16),
    "float32": QUERY,
    "float64": RNG.standard_normal((2, 2, 3)),
    "int8": np.array([[-128, 0, 127]], dtype=np.int8),
    "int16": np.array([-(2**15), 2**15 - 1], dtype=np.int16),
    "int32": np.arange(-6, 6, dtype=np.int32).reshape(3, 4),
    "int64": np.array([[-(2**63), 2**63 - 1]], dtype=np.int64),
    "uint8": np.arange(0, 256, 17, dtype=np.uint8),
    "bool": np.array([[True, False], [False, True]]),
}


@pytest.mark.parametrize("dtype", list(NUMERIC_ARRAYS))
def test_npy_round_trip(tmp_path: Path, dtype: str) -> None:
    array = NUMERIC_ARRAYS[dtype]
    path = tmp_path / "x.npy"
    np.save(path, array)
    source = read_tensors(str(path))
    assert source.label == str(path)
    assert source.named is False
    assert list(source.tensors) == ["tensor"]
    assert_same(source.tensors["tensor"], array)
    assert_same(load_tensor(str(path)), array)


def test_npy_big_endian_and_fortran_order_read_as_the_same_values(tmp_path: Path) -> None:
    big = QUERY.astype(">f4")
    fortran = np.asfortranarray(VALUE)
    np.save(tmp_path / "big.npy", big)
    np.save(tmp_path / "fortran.npy", fortran)
    loaded_big = load_tensor(str(tmp_path / "big.npy"))
    assert loaded_big.dtype.isnative
    assert_same(loaded_big, QUERY)
    assert_same(load_tensor(str(tmp_path / "fortran.npy")), VALUE)


def test_suffix_is_case_insensitive(tmp_path: Path) -> None:
    path = tmp_path / "UPPER.NPY"
    np.save(tmp_path / "tmp.npy", KEY)
    (tmp_path / "tmp.npy").rename(path)
    assert_same(load_tensor(str(path)), KEY)


def test_npz_round_trip_keeps_names_and_dtypes(tmp_path: Path) -> None:
    path = tmp_path / "all.npz"
    np.savez(path, **NUMERIC_ARRAYS)
    source = read_tensors(str(path))
    assert source.named is True
    assert source.metadata == {}
    assert sorted(source.tensors) == sorted(NUMERIC_ARRAYS)
    for name, array in NUMERIC_ARRAYS.items():
        assert_same(source.tensors[name], array)
        assert_same(load_tensor(f"{path}:{name}"), array)


def test_npz_meta_string_becomes_metadata(tmp_path: Path) -> None:
    path = tmp_path / "result.npz"
    meta = {"scale": 0.5, "dtype": "float32", "sources": {"query": "q.npy"}}
    np.savez(path, weights=QUERY, meta=np.array(json.dumps(meta)))
    source = read_tensors(str(path))
    assert list(source.tensors) == ["weights"]
    assert source.metadata == meta


@pytest.mark.parametrize("dtype", list(NUMERIC_ARRAYS))
def test_safetensors_round_trip(tmp_path: Path, dtype: str) -> None:
    array = NUMERIC_ARRAYS[dtype]
    path = tmp_path / "x.safetensors"
    save_file({"query": array, "other": QUERY}, str(path), metadata={"origin": "test", "n": '"3"'})
    source = read_tensors(str(path))
    assert source.named is True
    assert sorted(source.tensors) == ["other", "query"]
    assert_same(source.tensors["query"], array)
    assert_same(source.tensors["other"], QUERY)
    # Values are decoded as JSON (as attncli writes them); a plain string another tool wrote stays as is.
    assert source.metadata == {"origin": "test", "n": "3"}


def test_safetensors_bfloat16_is_widened_exactly_to_float32(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file as torch_save_file

    # Every bfloat16 bit pattern: finite values, subnormals, signed zeros, infinities and NaNs.
    patterns = np.arange(2**16, dtype=np.uint16)
    tensor = torch.from_numpy(patterns.view(np.int16)).view(torch.bfloat16).reshape(256, 256)
    path = tmp_path / "bf16.safetensors"
    torch_save_file({"query": tensor}, str(path))
    loaded = load_tensor(str(path))
    assert loaded.dtype == np.float32
    assert loaded.shape == (256, 256)
    expected = tensor.to(torch.float32).numpy()
    finite = np.isfinite(expected)
    np.testing.assert_array_equal(loaded.view(np.uint32)[finite], expected.view(np.uint32)[finite])
    np.testing.assert_array_equal(np.isnan(loaded), np.isnan(expected))
    np.testing.assert_array_equal(np.isposinf(loaded), np.isposinf(expected))
    np.testing.assert_array_equal(np.isneginf(loaded), np.isneginf(expected))
    # bfloat16 is the top half of a float32: the widened bits are the pattern shifted left by 16.
    np.testing.assert_array_equal(loaded.view(np.uint32).ravel(), patterns.astype(np.uint32) << np.uint32(16))


def test_json_nested_array_round_trip(tmp_path: Path) -> None:
    document = [[[1.5, -2.0, 3.25e-3], [0.0, -0.0, 1e300]], [[7.0, 8.0, 9.0], [1e-300, 2.0, 3.0]]]
    path = write(tmp_path / "x.json", json_bytes(document))
    source = read_tensors(path)
    assert source.named is False
    assert_same(source.tensors["tensor"], np.array(document, dtype=np.float64))
    integers = write(tmp_path / "ints.json", b"[[1, 2, 3], [-4, 5, 6]]")
    assert_same(load_tensor(integers), np.array([[1, 2, 3], [-4, 5, 6]], dtype=np.int64))


def test_json_float32_values_round_trip_when_cast_back(tmp_path: Path) -> None:
    path = write(tmp_path / "x.json", json_bytes(QUERY.tolist()))
    assert_same(load_tensor(path).astype(np.float32), QUERY)


def test_json_object_round_trip_with_meta(tmp_path: Path) -> None:
    document = {
        "query": QUERY.tolist(),
        "key": KEY.tolist(),
        "value": VALUE.tolist(),
        "meta": {"note": "hello", "scale": 0.25, "heads": None, "shape": [1, 2]},
    }
    path = write(tmp_path / "qkv.json", json_bytes(document, indent=2))
    source = read_tensors(path)
    assert source.named is True
    assert list(source.tensors) == ["query", "key", "value"]
    assert_same(source.tensors["query"].astype(np.float32), QUERY)
    assert_same(source.tensors["key"].astype(np.float32), KEY)
    assert_same(source.tensors["value"].astype(np.float32), VALUE)
    assert source.metadata == document["meta"]


def test_json_with_utf8_bom_file_is_read(tmp_path: Path) -> None:
    path = write(tmp_path / "bom.json", "\ufeff[1.5, 2.5]".encode())
    assert_same(load_tensor(path), np.array([1.5, 2.5]))


def test_json_booleans_alone_are_a_boolean_tensor(tmp_path: Path) -> None:
    path = write(tmp_path / "mask.json", b"[[true, false], [false, true]]")
    assert_same(load_tensor(path), np.array([[True, False], [False, True]]))


# --- round trips: stdin by content ----------------------------------------------------------------------

STDIN_CASES = {
    "npy": (npy_bytes(QUERY), {"tensor": QUERY}, False),
    "npz": (npz_bytes(query=QUERY, key=KEY), {"query": QUERY, "key": KEY}, True),
    "safetensors": (
        safetensors_bytes({"query": QUERY, "value": VALUE}),
        {"query": QUERY, "value": VALUE},
        True,
    ),
    "json-array": (
        b"\n\t  " + json_bytes([[1.5, 2.0], [3.0, 4.0]]),
        {"tensor": [[1.5, 2.0], [3.0, 4.0]]},
        False,
    ),
    "json-object": (b"   \r\n" + json_bytes({"q": [1, 2], "k": [3, 4]}), {"q": [1, 2], "k": [3, 4]}, True),
}


@pytest.mark.parametrize("case", list(STDIN_CASES))
def test_stdin_is_read_by_content(case: str) -> None:
    data, expected, named = STDIN_CASES[case]
    source = read_tensors("-", stdin_of(data))
    assert source.label == "<stdin>"
    assert source.named is named
    assert sorted(source.tensors) == sorted(expected)
    for name, array in expected.items():
        assert_same(source.tensors[name], np.asarray(array))


def test_stdin_name_picks_one_tensor() -> None:
    data = npz_bytes(query=QUERY, key=KEY)
    assert_same(load_tensor("-:key", stdin_of(data)), KEY)
    message = error_of(InputError, load_tensor, "-:nope", stdin_of(data))
    assert_words(message, "<stdin>", "'nope'", "query", "key")


def test_stdin_without_a_stream_is_a_usage_error() -> None:
    assert_words(error_of(UsageError, read_tensors, "-", None), "stdin")


def test_stdin_is_empty() -> None:
    assert_words(error_of(InputError, read_tensors, "-", stdin_of(b"")), "<stdin>", "empty")


@pytest.mark.parametrize(
    "data",
    [b"\x00\x01\x02\x03\x04\x05\x06\x07\x08garbage\xff", b"hello, not a tensor", b"5", b'"text"'],
    ids=["binary", "text", "json-scalar", "json-string"],
)
def test_stdin_garbage_is_refused(data: bytes) -> None:
    assert_words(error_of(InputError, read_tensors, "-", stdin_of(data)), "<stdin>", "not a tensor file")


def test_stdin_json_with_utf8_bom_is_read() -> None:
    source = read_tensors("-", stdin_of("\ufeff[1.5, 2.5]".encode()))
    assert_same(source.tensors["tensor"], np.array([1.5, 2.5]))


# --- load_attention_inputs ----------------------------------------------------------------------------


def test_single_tensor_file_is_self_attention(tmp_path: Path) -> None:
    path = tmp_path / "x.npy"
    np.save(path, QUERY)
    inputs = load_attention_inputs([str(path)])
    for array in (inputs.query, inputs.key, inputs.value):
        assert_same(array, QUERY)
    assert inputs.sources == {"query": str(path), "key": str(path), "value": str(path)}


def test_single_tensor_on_stdin_is_self_attention() -> None:
    inputs = load_attention_inputs(["-"], stdin_of(b"[[1, 2], [3, 4]]"))
    for array in (inputs.query, inputs.key, inputs.value):
        assert_same(array, np.array([[1, 2], [3, 4]]))
    assert inputs.sources == dict.fromkeys(("query", "key", "value"), "<stdin>")


@pytest.mark.parametrize("names", [("query", "key", "value"), ("q", "k", "v")])
def test_multi_tensor_file_gives_roles_by_name(tmp_path: Path, names: tuple[str, str, str]) -> None:
    path = tmp_path / "qkv.npz"
    np.savez(path, **dict(zip(names, (QUERY, KEY, VALUE), strict=True)), extra=VALUE[:1])
    inputs = load_attention_inputs([str(path)])
    assert_same(inputs.query, QUERY)
    assert_same(inputs.key, KEY)
    assert_same(inputs.value, VALUE)
    assert inputs.sources == {
        role: f"{path}:{name}" for role, name in zip(("query", "key", "value"), names, strict=True)
    }


def test_full_role_names_are_preferred_to_single_letters(tmp_path: Path) -> None:
    path = tmp_path / "both.safetensors"
    save_file({"q": VALUE, "query": QUERY, "key": KEY, "k": VALUE, "value": VALUE}, str(path))
    inputs = load_attention_inputs([str(path)])
    assert_same(inputs.query, QUERY)
    assert_same(inputs.key, KEY)
    assert inputs.sources["query"] == f"{path}:query"
    assert inputs.sources["key"] == f"{path}:key"


def test_path_name_picks_one_tensor_for_self_attention(tmp_path: Path) -> None:
    path = tmp_path / "qkv.npz"
    np.savez(path, query=QUERY, key=KEY, value=VALUE)
    inputs = load_attention_inputs([f"{path}:key"])
    for array in (inputs.query, inputs.key, inputs.value):
        assert_same(array, KEY)
    assert inputs.sources == dict.fromkeys(("query", "key", "value"), f"{path}:key")


def test_stdin_file_with_names_has_stdin_labels() -> None:
    data = safetensors_bytes({"query": QUERY, "key": KEY, "value": VALUE})
    inputs = load_attention_inputs(["-"], stdin_of(data))
    assert_same(inputs.key, KEY)
    assert inputs.sources == {"query": "<stdin>:query", "key": "<stdin>:key", "value": "<stdin>:value"}


def test_three_specs_are_query_key_value(tmp_path: Path) -> None:
    np.save(tmp_path / "q.npy", QUERY)
    save_file({"k": KEY}, str(tmp_path / "k.safetensors"))
    specs = [str(tmp_path / "q.npy"), str(tmp_path / "k.safetensors"), "-"]
    inputs = load_attention_inputs(specs, stdin_of(json_bytes(VALUE.tolist())))
    assert_same(inputs.query, QUERY)
    assert_same(inputs.key, KEY)
    assert_same(inputs.value.astype(np.float32), VALUE)
    assert inputs.sources == {"query": specs[0], "key": specs[1], "value": "<stdin>"}


def test_three_specs_with_names_from_one_file(tmp_path: Path) -> None:
    path = tmp_path / "qkv.npz"
    np.savez(path, a=QUERY, b=KEY, c=VALUE)
    specs = [f"{path}:a", f"{path}:b", f"{path}:c"]
    inputs = load_attention_inputs(specs)
    assert_same(inputs.query, QUERY)
    assert_same(inputs.key, KEY)
    assert_same(inputs.value, VALUE)
    assert inputs.sources == dict(zip(("query", "key", "value"), specs, strict=True))


@pytest.mark.parametrize("count", [0, 2, 4])
def test_wrong_number_of_specs_is_a_usage_error(tmp_path: Path, count: int) -> None:
    path = tmp_path / "x.npy"
    np.save(path, QUERY)
    message = error_of(UsageError, load_attention_inputs, [str(path)] * count)
    assert_words(message, f"got {count}", "1 or 3")


def test_stdin_twice_is_a_usage_error(tmp_path: Path) -> None:
    np.save(tmp_path / "v.npy", VALUE)
    stdin = stdin_of(npy_bytes(QUERY))
    message = error_of(UsageError, load_attention_inputs, ["-", "-", str(tmp_path / "v.npy")], stdin)
    assert_words(message, "stdin", "only one")
    assert stdin.tell() == 0  # refused before reading anything
    assert_words(error_of(UsageError, load_attention_inputs, ["-", "-"], stdin), "got 2")


def test_stdin_with_names_twice_is_a_usage_error() -> None:
    data = npz_bytes(q=QUERY, k=KEY, v=VALUE)
    message = error_of(UsageError, load_attention_inputs, ["-:q", "-:k", "-:v"], stdin_of(data))
    assert_words(message, "stdin")


# --- the sample files --------------------------------------------------------------------------------


def test_every_sample_file_loads(samples: Path) -> None:
    files = sorted(p for p in samples.iterdir() if p.suffix in loaders.FORMAT_BY_SUFFIX)
    assert {p.name for p in files} >= {
        "seed.json",
        "seed.npz",
        "seed.safetensors",
        "seed_query.npy",
        "seed_key.npy",
        "seed_value.npy",
        "multihead.safetensors",
        "padding_mask.npy",
        "gqa.npz",
    }
    for path in files:
        source = read_tensors(str(path))
        assert source.tensors
        assert all(array.size > 0 for array in source.tensors.values())


def test_seed_files_all_give_the_same_arrays(samples: Path) -> None:
    raw = json.loads((samples / "seed.json").read_text())
    expected = {role: np.array(raw[role], dtype=np.float32) for role in ("query", "key", "value")}
    assert_same(expected["query"], expected["key"])  # the tutorial's example: query = key
    by_file = [
        load_attention_inputs([str(samples / "seed.npz")]),
        load_attention_inputs([str(samples / "seed.safetensors")]),
        load_attention_inputs([str(samples / f"seed_{role}.npy") for role in ("query", "key", "value")]),
    ]
    for inputs in by_file:
        assert_same(inputs.query, expected["query"])
        assert_same(inputs.key, expected["key"])
        assert_same(inputs.value, expected["value"])
    from_json = load_attention_inputs([str(samples / "seed.json")])
    for role in ("query", "key", "value"):
        assert_same(getattr(from_json, role).astype(np.float32), expected[role])
    assert from_json.sources["value"] == f"{samples / 'seed.json'}:value"


def test_generated_samples_hold_what_make_samples_describes(samples: Path) -> None:
    rng = np.random.default_rng(0)  # make_samples.py draws multihead, then gqa, from this generator
    multihead = load_attention_inputs([str(samples / "multihead.safetensors")])
    for role in ("query", "key", "value"):
        assert_same(getattr(multihead, role), rng.standard_normal((2, 4, 6, 8)).astype(np.float32))
    gqa = load_attention_inputs([str(samples / "gqa.npz")])
    assert_same(gqa.query, rng.standard_normal((1, 8, 5, 16)).astype(np.float32))
    assert_same(gqa.key, rng.standard_normal((1, 2, 5, 16)).astype(np.float32))
    assert_same(gqa.value, rng.standard_normal((1, 2, 5, 16)).astype(np.float32))
    expected_mask = np.ones((2, 1, 1, 6), dtype=bool)
    expected_mask[1, ..., 4:] = False
    assert_same(load_mask(str(samples / "padding_mask.npy")), expected_mask)


# --- the error catalogue: files that cannot be read ----------------------------------------------------

_NPY = npy_bytes(np.arange(100, dtype=np.float64).reshape(10, 10))
_SAFETENSORS = safetensors_bytes({"query": QUERY})

BAD_FILES = [
    pytest.param("empty.npy", b"", ["the file is empty"], id="empty-npy"),
    pytest.param("empty.json", b"", ["the file is empty"], id="empty-json"),
    pytest.param("cut.npy", _NPY[:40], ["not a valid .npy file"], id="npy-truncated-in-header"),
    pytest.param("cut.npy", _NPY[:-3], ["not a valid .npy file"], id="npy-truncated-in-data"),
    pytest.param("strings.npy", npy_bytes(np.array(["a", "bc"])), ["strings", "real numbers"], id="npy-str"),
    pytest.param("bytes.npy", npy_bytes(np.array([b"a"])), ["byte strings"], id="npy-bytes"),
    pytest.param("complex.npy", npy_bytes(np.array([1 + 2j])), ["complex numbers"], id="npy-complex"),
    pytest.param(
        "records.npy",
        npy_bytes(np.zeros(2, dtype=[("a", "f4"), ("b", "i4")])),
        ["structured records"],
        id="npy-structured",
    ),
    pytest.param("dates.npy", npy_bytes(np.array(["2024-01-01"], dtype="M8[D]")), ["dates"], id="npy-dates"),
    pytest.param("data.txt", b"[1, 2]", ["suffix '.txt'", "not a tensor format", ".npy"], id="suffix-txt"),
    pytest.param("data", b"[1, 2]", ["no suffix", "not a tensor format"], id="no-suffix"),
    pytest.param("strings.npz", npz_bytes(query=np.array(["x"])), [":query", "strings"], id="npz-str"),
    pytest.param("bad.npz", b"PK\x03\x04" + b"\x00" * 40, ["not a valid .npz file"], id="npz-garbage"),
    pytest.param("none.npz", npz_bytes(), ["holds no tensors"], id="npz-empty-archive"),
    pytest.param(
        "garbage.safetensors",
        (24).to_bytes(8, "little") + b'{"query": not json at all',
        ["not a valid .safetensors file"],
        id="safetensors-garbage-header",
    ),
    pytest.param(
        "cut.safetensors", _SAFETENSORS[:-5], ["not a valid .safetensors file"], id="safetensors-truncated"
    ),
    pytest.param("nul.safetensors", b"\x00" * 7, ["not a valid .safetensors file"], id="safetensors-tiny"),
    pytest.param("notjson.json", b"[1, 2", ["not valid JSON", "line 1"], id="json-malformed"),
    pytest.param("binary.json", _NPY, ["not UTF-8"], id="json-binary"),
    pytest.param("ragged.json", b"[[1, 2], [3]]", ["ragged"], id="json-ragged"),
    pytest.param("strings.json", b'[[1, "two"]]', ["a string", "'two'", "numbers only"], id="json-strings"),
    pytest.param("mixed.json", b"[[1.5, true], [2, 3]]", ["true/false", "numbers"], id="json-bool-mixed"),
    pytest.param("nulls.json", b"[[1, null]]", ["null", "numbers only"], id="json-null-inside"),
    pytest.param("null.json", b"null", ["null"], id="json-null"),
    pytest.param("text.json", b'"abc"', ["a string"], id="json-string"),
    pytest.param(
        "bigint.json", b"[1, 100000000000000000000000]", ["too large for 64 bits"], id="json-bigint"
    ),
    pytest.param("empty-object.json", b"{}", ["holds no tensors"], id="json-empty-object"),
    pytest.param("named-string.json", b'{"query": "abc"}', ["'query'", "a string"], id="json-named-string"),
    pytest.param(
        "named-object.json", b'{"query": {"a": 1}}', ["'query'", "an object"], id="json-named-object"
    ),
]


@pytest.mark.parametrize(("name", "data", "words"), BAD_FILES)
def test_unreadable_files_are_refused_with_the_path(
    tmp_path: Path, name: str, data: bytes, words: list[str]
) -> None:
    path = write(tmp_path / name, data)
    message = error_of(InputError, read_tensors, path)
    assert_words(message, path, *words)


def test_missing_file(tmp_path: Path) -> None:
    for name in ("missing.npy", "missing.json", "missing"):
        path = str(tmp_path / name)
        assert_words(error_of(InputError, read_tensors, path), path, "no such file")


def test_a_directory_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "folder.npy"
    folder.mkdir()
    assert_words(error_of(InputError, read_tensors, str(folder)), str(folder), "directory")
    plain = tmp_path / "plain"
    plain.mkdir()
    assert_words(error_of(InputError, load_attention_inputs, [str(plain)]), str(plain), "not a tensor format")


class _Tripwire:
    """Unpickling this creates a folder: a loader that ever unpickles leaves a trace."""

    def __init__(self, trace: str) -> None:
        self.trace = trace

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.mkdir, (self.trace,)


def test_npy_of_objects_is_refused_and_never_unpickled(tmp_path: Path) -> None:
    trace = tmp_path / "unpickled"
    objects = np.array([_Tripwire(str(trace)), None], dtype=object)
    path = tmp_path / "objects.npy"
    np.save(path, objects, allow_pickle=True)
    message = error_of(InputError, read_tensors, str(path))
    assert_words(message, str(path), "Python objects", "never unpickles")
    stdin_message = error_of(InputError, read_tensors, "-", stdin_of(path.read_bytes()))
    assert_words(stdin_message, "<stdin>", "Python objects")
    assert not trace.exists()


def test_npz_of_objects_is_refused_and_never_unpickled(tmp_path: Path) -> None:
    trace = tmp_path / "unpickled"
    path = tmp_path / "objects.npz"
    np.savez(path, query=QUERY, key=np.array([_Tripwire(str(trace))], dtype=object))
    assert_words(error_of(InputError, read_tensors, str(path)), str(path), "Python objects")
    assert not trace.exists()


@pytest.mark.parametrize("data", [b"this is plain text", _NPY[:5]], ids=["text", "truncated-in-magic"])
def test_npy_that_is_not_numpy_data_is_called_invalid(tmp_path: Path, data: bytes) -> None:
    path = write(tmp_path / "x.npy", data)
    message = error_of(InputError, read_tensors, path)
    assert_words(message, path, "not a valid .npy file")
    assert "Python objects" not in message


_LFS = b"version https://git-lfs.github.com/spec/v1\noid sha256:" + b"ab" * 32 + b"\nsize 123456\n"
TEXT_FILES = {
    "plain": (b"1.0 2.0 3.0\n4.0 5.0 6.0\n", ["it is text", "it starts '1.0 2.0 3.0'"]),
    "lfs": (_LFS, ["it is a Git LFS pointer", "git lfs pull"]),
    "json": (b'\n  {"query": [[1, 2]]}\n', ["it is text, JSON perhaps", "'{\"query\": [[1, 2]]}'", ".json"]),
    "long": (b"x" * 300, ["it starts '" + "x" * 40 + "...'"]),
    "utf8-bom": ("\ufeffqueries, été\n".encode(), ["it is text", "it starts 'queries, été'"]),
}
NOT_WHAT = {".npy": "not NumPy's binary format", ".npz": "not a zip archive", ".safetensors": "8-byte header"}


@pytest.mark.parametrize("kind", sorted(TEXT_FILES))
@pytest.mark.parametrize("suffix", sorted(NOT_WHAT))
@pytest.mark.parametrize("how", ["file", "bytes", "lazy"])
def test_a_text_file_named_as_a_binary_format_says_it_is_text(
    tmp_path: Path, suffix: str, kind: str, how: str
) -> None:
    """np.load takes bytes that are no .npy or zip for a pickle; a text file (a Git LFS pointer,
    JSON, numbers written by np.savetxt) is said to be text, not an object array or a header length."""
    from attncli.io import lazy

    data, words = TEXT_FILES[kind]
    path = write(tmp_path / f"x{suffix}", data)
    if how == "file":
        message = error_of(InputError, read_tensors, path)
    elif how == "bytes":  # a pipe, or a file the direct reader leaves to the format's library
        message = error_of(InputError, loaders.parse_tensors, data, path, suffix[1:])
    else:  # inspect and diff
        message = error_of(InputError, lazy.open_tensors, path)
    assert_words(message, f"{path}: not a valid {suffix} file (", *words)
    if kind != "lfs":
        assert_words(message, NOT_WHAT[suffix])
    for misleading in ("Python objects", "pickle", "header length,", "header too large"):
        assert misleading not in message, message
    assert "\n" not in message


@pytest.mark.parametrize(
    "data",
    [
        npy_bytes(QUERY)[:60],
        _SAFETENSORS[:60],
        npz_bytes(query=QUERY)[:60],
        b"\x00" * 7,
        b"abc\x00def",
        b"abc\x1b[31m",
        b" \n\t\n",
        b"\xff\xfe t e x t",
    ],
    ids=["npy", "safetensors", "npz", "nul", "inner-nul", "escape", "blank", "utf16"],
)
def test_binary_or_blank_bytes_are_not_taken_for_text(data: bytes) -> None:
    from attncli.io.formats import text_reason, text_start

    assert text_start(data) is None
    assert text_reason(data, "a zip archive") is None


def test_text_cut_inside_a_character_is_still_text() -> None:
    from attncli.io.formats import text_start

    head = "café café".encode()[:10]  # the second 'é' cut after its first byte
    assert text_start(head) == "café caf"
    assert text_start(head[:9] + b"\xc3 more") is None  # a broken character inside is not text


def test_suffix_decides_the_format_of_a_file(tmp_path: Path) -> None:
    path = write(tmp_path / "really-npy.json", npy_bytes(QUERY))
    assert_words(error_of(InputError, read_tensors, path), path, "JSON")


def test_safetensors_header_claiming_an_absurd_size_fails_fast(tmp_path: Path) -> None:
    for claimed in (2**62, 2**64 - 1, 10**9):
        path = write(tmp_path / "huge.safetensors", claimed.to_bytes(8, "little") + b'{"a": {}}')
        start = time.perf_counter()
        message = error_of(InputError, read_tensors, path)
        assert time.perf_counter() - start < 1.0
        assert_words(message, path, "not a valid .safetensors file")
    start = time.perf_counter()
    data = (2**62).to_bytes(8, "little") + b'{"a": {}}'
    assert_words(error_of(InputError, read_tensors, "-", stdin_of(data)), "<stdin>")
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize("where", ["file", "stdin", "object"])
def test_json_nested_100000_deep_fails_quickly(tmp_path: Path, where: str) -> None:
    depth = 100_000
    text = "[" * depth + "1" + "]" * depth
    if where == "object":
        text = '{"query": ' + text + "}"
    start = time.perf_counter()
    if where == "stdin":
        message = error_of(InputError, read_tensors, "-", stdin_of(text.encode()))
        label = "<stdin>"
    else:
        label = write(tmp_path / "deep.json", text.encode())
        message = error_of(InputError, read_tensors, label)
    assert time.perf_counter() - start < 2.0
    assert_words(message, label, "nested too deeply")


def test_json_deeper_than_numpy_allows_is_not_called_ragged(tmp_path: Path) -> None:
    depth = 100
    path = write(tmp_path / "deep.json", ("[" * depth + "1" + "]" * depth).encode())
    message = error_of(InputError, read_tensors, path)
    assert_words(message, path)
    assert "ragged" not in message


# --- the error catalogue: files that read, but cannot be query/key/value -----------------------------------


def test_several_tensors_without_role_names(tmp_path: Path) -> None:
    path = tmp_path / "ab.npz"
    np.savez(path, alpha=QUERY, beta=KEY)
    message = error_of(InputError, load_attention_inputs, [str(path)])
    assert_words(message, str(path), "2 tensors", "alpha", "beta", "query, key or value", f"{path}:NAME")
    message = error_of(InputError, load_tensor, str(path))
    assert_words(message, str(path), "2 tensors", "alpha, beta", f"{path}:NAME")


def test_npz_with_only_query_and_key(tmp_path: Path) -> None:
    path = tmp_path / "qk.npz"
    np.savez(path, q=QUERY, k=KEY)
    message = error_of(InputError, load_attention_inputs, [str(path)])
    assert_words(message, str(path), "no tensor named value or v", "q, k")


def test_json_object_missing_key(tmp_path: Path) -> None:
    path = write(tmp_path / "qv.json", json_bytes({"query": [[1, 2]], "value": [[3, 4]]}))
    assert_words(error_of(InputError, load_attention_inputs, [path]), path, "no tensor named key or k")


def test_json_object_missing_value(tmp_path: Path) -> None:
    path = write(tmp_path / "qk.json", json_bytes({"query": [[1, 2]], "key": [[3, 4]]}))
    assert_words(error_of(InputError, load_attention_inputs, [path]), path, "no tensor named value or v")


def test_path_name_naming_a_missing_tensor(tmp_path: Path) -> None:
    path = tmp_path / "qkv.safetensors"
    save_file({"query": QUERY, "key": KEY, "value": VALUE}, str(path))
    for call in (load_tensor, lambda spec: load_attention_inputs([spec])):
        message = error_of(InputError, call, f"{path}:hidden")
        assert_words(message, str(path), "no tensor named 'hidden'", "query", "key", "value")
    npy = tmp_path / "one.npy"
    np.save(npy, QUERY)
    assert_words(error_of(InputError, load_tensor, f"{npy}:query"), str(npy), "'query'")


def test_json_nan_and_infinity_are_loaded_then_refused(tmp_path: Path) -> None:
    text = b"[[1.0, 2.0, 3.0], [4.0, NaN, Infinity], [-Infinity, NaN, 5.0]]"
    path = write(tmp_path / "nan.json", text)
    expected = np.array([[1, 2, 3], [4, np.nan, np.inf], [-np.inf, np.nan, 5]])
    assert_same(load_tensor(path), expected)  # reading alone keeps them
    nans, infs = int(np.isnan(expected).sum()), int(np.isinf(expected).sum())
    first = tuple(int(i) for i in np.argwhere(~np.isfinite(expected))[0])
    message = error_of(InputError, load_attention_inputs, [path])
    assert_words(message, path, "query", f"{nans} NaN", f"{infs} Inf", f"first at index {first}", "finite")


def test_nan_in_one_of_three_names_its_file_and_role(tmp_path: Path) -> None:
    key = KEY.copy()
    key[1, 2, 3] = np.nan
    for name, array in (("q", QUERY), ("k", key), ("v", VALUE)):
        np.save(tmp_path / f"{name}.npy", array)
    specs = [str(tmp_path / f"{name}.npy") for name in ("q", "k", "v")]
    message = error_of(InputError, load_attention_inputs, specs)
    assert_words(message, f"{specs[1]}: key", "1 NaN and 0 Inf", "(1, 2, 3)")


@pytest.mark.parametrize(
    ("text", "words"),
    [
        pytest.param(b"[]", ["axis of length zero", "(0,)"], id="empty-array"),
        pytest.param(b"[[], []]", ["axis of length zero", "(2, 0)"], id="empty-rows"),
        pytest.param(b"5", ["a single number"], id="scalar"),
        pytest.param(b"[[true, false]]", ["booleans"], id="booleans"),
    ],
)
def test_json_that_reads_but_is_no_query(tmp_path: Path, text: bytes, words: list[str]) -> None:
    path = write(tmp_path / "x.json", text)
    load_tensor(path)  # it is a tensor file...
    message = error_of(InputError, load_attention_inputs, [path])  # ...but not a query
    assert_words(message, path, "query", *words)


def test_boolean_query_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "mask.npy"
    np.save(path, np.ones((3, 4), dtype=bool))
    assert_words(error_of(InputError, load_attention_inputs, [str(path)]), str(path), "booleans", "numbers")


def test_zero_length_axis_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "empty.npy"
    np.save(path, np.zeros((3, 0), dtype=np.float32))
    message = error_of(InputError, load_attention_inputs, [str(path)])
    assert_words(message, str(path), "axis of length zero", "(3, 0)")


def test_check_numeric_input_accepts_finite_numbers() -> None:
    for array in (QUERY, np.arange(6).reshape(2, 3), np.array([1], dtype=np.uint8), np.float16([0.5, -2])):
        check_numeric_input(array, "x.npy", "query")  # no error


@pytest.mark.parametrize(
    ("array", "words"),
    [
        pytest.param(np.array([True]), ["booleans"], id="bool"),
        pytest.param(np.array([1 + 1j]), ["complex128", "real numbers"], id="complex"),
        pytest.param(np.float32(1.0).reshape(()), ["single number"], id="scalar"),
        pytest.param(np.zeros((0, 4)), ["length zero", "(0, 4)"], id="empty"),
        pytest.param(np.float16([1, np.inf]), ["0 NaN and 1 Inf", "index (1,)"], id="inf-float16"),
    ],
)
def test_check_numeric_input_refuses(array: np.ndarray, words: list[str]) -> None:
    message = error_of(InputError, check_numeric_input, array, "in.npy", "value")
    assert_words(message, "in.npy: value", *words)


# --- load_mask ---------------------------------------------------------------------------------------


def test_boolean_mask_is_accepted(tmp_path: Path) -> None:
    mask = np.array([[True, False, True], [False, True, True]])
    np.save(tmp_path / "m.npy", mask)
    assert_same(load_mask(str(tmp_path / "m.npy")), mask)
    assert_same(load_mask("-", stdin_of(b"[[true, false, true], [false, true, true]]")), mask)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_float_mask_with_minus_infinity_is_accepted(tmp_path: Path, dtype: type) -> None:
    mask = np.array([[0.0, -np.inf, -1e4], [-np.inf, 0.0, 0.5]], dtype=dtype)
    save_file({"mask": mask}, str(tmp_path / "m.safetensors"))
    assert_same(load_mask(str(tmp_path / "m.safetensors")), mask)


def test_json_float_mask_with_minus_infinity_is_accepted() -> None:
    mask = load_mask("-", stdin_of(b"[[0, -Infinity], [0.0, 0]]"))
    assert_same(mask, np.array([[0.0, -np.inf], [0.0, 0.0]]))


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_float_mask_with_nan_or_plus_infinity_is_refused(tmp_path: Path, bad: float) -> None:
    mask = np.zeros((2, 3), dtype=np.float32)
    mask[1, 2] = bad
    mask[0, 0] = -np.inf  # allowed, and not counted
    path = tmp_path / "m.npy"
    np.save(path, mask)
    message = error_of(InputError, load_mask, str(path))
    assert_words(message, str(path), "1 NaN or +inf", "index (1, 2)", "-inf")


@pytest.mark.parametrize("dtype", [np.int64, np.int8, np.uint8])
def test_integer_mask_is_refused_with_an_explanation(tmp_path: Path, dtype: type) -> None:
    path = tmp_path / "m.npy"
    np.save(path, np.array([[1, 0], [0, 1]], dtype=dtype))
    message = error_of(InputError, load_mask, str(path))
    assert_words(message, str(path), "integers", "booleans", "floats", "-inf")


def test_json_integer_mask_on_stdin_is_refused() -> None:
    message = error_of(InputError, load_mask, "-", stdin_of(b"[[1, 0], [0, 1]]"))
    assert_words(message, "<stdin>", "integers", "booleans", "floats")


def test_empty_mask_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.npy"
    np.save(path, np.zeros((2, 0), dtype=bool))
    assert_words(error_of(InputError, load_mask, str(path)), str(path), "empty", "(2, 0)")


def test_mask_by_name_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "masks.npz"
    keep = np.array([[True, False]])
    np.savez(path, keep=keep, other=np.zeros((1, 2), dtype=np.float32))
    assert_same(load_mask(f"{path}:keep"), keep)
    assert_words(error_of(InputError, load_mask, str(path)), str(path), "2 tensors")


def test_mask_errors_say_they_are_about_the_mask(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.npy")
    assert_words(error_of(InputError, load_mask, missing), "--mask", missing, "no such file")
    path = tmp_path / "m.npy"
    np.save(path, np.array([1, 0]))
    assert_words(error_of(InputError, load_mask, str(path)), f"--mask {path}", "integers")


def test_npy_and_safetensors_files_are_read_not_mapped(tmp_path: Path) -> None:
    """Inputs are read into their own arrays, which torch then shares (no second copy); a file cut
    short or rewritten after loading changes nothing loaded (a mapping would SIGBUS or change)."""
    import torch
    from safetensors.numpy import save_file

    array = np.arange(24, dtype=np.float32).reshape(4, 6)
    np.save(tmp_path / "x.npy", array)
    save_file({"query": array, "key": array * 2}, str(tmp_path / "x.safetensors"))
    for path, name in ((tmp_path / "x.npy", "tensor"), (tmp_path / "x.safetensors", "key")):
        loaded = read_tensors(str(path)).tensors[name]
        assert not isinstance(loaded, np.memmap)
        assert torch.from_numpy(loaded).data_ptr() == loaded.ctypes.data
        path.write_bytes(b"")  # truncated after loading
        np.testing.assert_array_equal(loaded, array if name == "tensor" else array * 2)


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux's /proc/self/maps")
def test_many_tensors_in_one_file_take_no_mapping_each(tmp_path: Path) -> None:
    """100,003 tensors were 100,003 mappings, past Linux's 65,530 a process may hold: the load failed."""
    from safetensors.numpy import save_file

    tensors = {f"t{i}": np.full((1,), i, dtype=np.float32) for i in range(1000)}
    save_file(tensors, str(tmp_path / "many.safetensors"))
    before = len(Path("/proc/self/maps").read_text().splitlines())
    loaded = read_tensors(str(tmp_path / "many.safetensors")).tensors
    assert len(Path("/proc/self/maps").read_text().splitlines()) < before + 100
    assert [float(loaded[name][0]) for name in tensors] == list(range(1000))


# --- layers of an `attn capture` file -----------------------------------------------------------------


def _capture_file(tmp_path: Path, metadata: dict | None = None, **extra: np.ndarray) -> str:
    """A file laid out as `attn capture` writes one: layers 0 and 2, metadata as JSON text."""
    tensors = {}
    for layer in (0, 2):
        tensors |= {
            f"layers.{layer}.query": QUERY[:, None] + layer,  # (batch, heads, positions, features)
            f"layers.{layer}.key": KEY[:, None],
            f"layers.{layer}.value": VALUE[:, None],
            f"layers.{layer}.mask": np.ones((2, 1, 3, 5), dtype=bool),
        }
    metadata = {"layers": {"2": {"scaling": 0.125}}, "tokens": [list("abc"), list("xyz")]} | (metadata or {})
    path = tmp_path / "run.safetensors"
    save_file(tensors | extra, str(path), metadata={k: json.dumps(v) for k, v in metadata.items()})
    return str(path)


def test_a_layer_brings_its_mask_scale_and_tokens(tmp_path: Path) -> None:
    path = _capture_file(tmp_path)
    inputs = load_attention_inputs([path], layer=2)
    np.testing.assert_array_equal(inputs.query, QUERY[:, None] + 2)
    np.testing.assert_array_equal(inputs.value, VALUE[:, None])
    assert inputs.mask is not None
    assert inputs.mask.dtype == np.bool_
    assert inputs.mask_source == f"{path}:layers.2.mask"
    assert inputs.sources["key"] == f"{path}:layers.2.key"
    assert inputs.scale == 0.125
    assert inputs.tokens == [list("abc"), list("xyz")]
    assert loaders.captured_layers(read_tensors(path).tensors) == [0, 2]


def test_a_layer_without_metadata_has_no_scale_and_no_tokens(tmp_path: Path) -> None:
    # Another tool's file: a scale that is not a number and tokens that do not fit are left out.
    path = _capture_file(tmp_path, {"layers": {"0": {"scaling": "big"}}, "tokens": [["a", "b"], ["c"]]})
    inputs = load_attention_inputs([path], layer=0)
    assert inputs.scale is None
    assert inputs.tokens is None


def test_layer_errors_name_the_file_and_the_layers_it_holds(tmp_path: Path) -> None:
    path = _capture_file(tmp_path)
    assert_words(error_of(InputError, load_attention_inputs, [path]), path, "holds layers 0, 2", "--layer N")
    assert_words(error_of(InputError, load_attention_inputs, [path], layer=1), "has no layer 1", "0, 2")
    assert_words(error_of(UsageError, load_attention_inputs, [path, path, path], layer=0), "--layer")
    assert_words(error_of(UsageError, load_attention_inputs, [f"{path}:layers.0.key"], layer=0), "--layer")
    plain = tmp_path / "qkv.npz"
    np.savez(plain, query=QUERY, key=KEY, value=VALUE)
    assert_words(error_of(InputError, load_attention_inputs, [str(plain)], layer=0), "no captured layers")
    odd = _capture_file(tmp_path, **{"layers.0.mask": np.ones((2, 1, 3, 5), dtype=np.int8)})
    assert_words(error_of(InputError, load_attention_inputs, [odd], layer=0), "layers.0.mask", "int8")


@pytest.mark.parametrize("order", ["C", "F"])
def test_npy_files_are_read_after_the_shared_header_reader(tmp_path, order):
    """Read straight into an array of the stored order, with the values np.load gives."""
    array = np.asarray(np.arange(24, dtype=np.float32).reshape(2, 3, 4), order=order)
    np.save(tmp_path / "x.npy", array)
    read = loaders.read_tensors(str(tmp_path / "x.npy")).tensors["tensor"]
    assert not isinstance(read, np.memmap)
    assert read.flags.f_contiguous if order == "F" else read.flags.c_contiguous
    np.testing.assert_array_equal(read, np.load(tmp_path / "x.npy"))


def test_safetensors_files_are_read_after_the_shared_header_reader(tmp_path):
    from safetensors.numpy import load_file, save_file

    tensors = {"query": np.ones((2, 3), np.float32), "key": np.arange(6, dtype=np.float64).reshape(3, 2)}
    save_file(tensors, tmp_path / "x.safetensors", metadata={"note": "kept"})
    read = loaders.read_tensors(str(tmp_path / "x.safetensors"))
    assert not any(isinstance(array, np.memmap) for array in read.tensors.values())
    for name, array in load_file(tmp_path / "x.safetensors").items():
        np.testing.assert_array_equal(read.tensors[name], array)
    assert read.metadata == {"note": "kept"}


def test_a_name_with_slashes_picks_the_member_of_an_existing_archive(tmp_path: Path) -> None:
    """np.savez keeps the key 'a/b/query' as member a/b/query.npy; `nested.npz:a/b/query` was read
    as a path and refused as 'no such file'."""
    array = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.savez(tmp_path / "nested.npz", **{"a/b/query": array, "other": array * 2})
    spec = f"{tmp_path / 'nested.npz'}:a/b/query"
    assert split_spec(spec) == (str(tmp_path / "nested.npz"), "a/b/query")
    np.testing.assert_array_equal(load_tensor(spec), array)
    missing = f"{tmp_path / 'none.npz'}:a/b/query"  # no such archive: the spec stays one path
    assert split_spec(missing) == (missing, None)
