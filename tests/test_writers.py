"""Tests for attncli.io.writers: results written and read back exactly, output paths checked before any
work, and atomic replacement that never leaves a clobbered target or a temporary file behind.

Expected values come from NumPy, safetensors and the json module, never from attncli's own output.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import read_result, safetensors_dtypes
from safetensors import safe_open
from safetensors.numpy import load_file

from attncli.errors import OutputError, UsageError
from attncli.io import writers
from attncli.io.loaders import read_tensors
from attncli.io.writers import check_output_path, json_text, write_result

FORMATS = [".safetensors", ".npz", ".json"]
META = {
    "scale": 0.5,
    "causal": False,
    "heads": None,
    "dtype": "float32",
    "input_shapes": {"query": [2, 3, 4], "key": [2, 5, 4]},
    "weights_axes": ["query", "key"],
    "sources": {"query": "<stdin>:query", "key": "k.npy", "value": "v.npy"},
    "fully_masked_rows": 0,
    "attncli_version": "0.1.0",
}


def random_finite(dtype: type, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Values from every binade of `dtype` (random bit patterns, finite only), plus zeros and extremes."""
    info = np.finfo(dtype)
    uint = {np.float32: np.uint32, np.float64: np.uint64}[dtype]
    rng = np.random.default_rng(seed)
    bits = rng.integers(0, np.iinfo(uint).max, size=int(np.prod(shape)), dtype=uint, endpoint=True)
    values = bits.view(dtype).copy()
    values[~np.isfinite(values)] = 1.0
    values[:6] = [0.0, -0.0, info.max, -info.max, info.smallest_subnormal, info.tiny]
    return values.reshape(shape)


def result_tensors(dtype: type) -> dict[str, np.ndarray]:
    weights = np.random.default_rng(1).random((2, 3, 5)).astype(dtype)
    weights /= weights.sum(-1, keepdims=True)
    return {"weights": weights, "output": random_finite(dtype, (2, 3, 64), seed=2)}


def same_bits(actual: np.ndarray, expected: np.ndarray) -> None:
    assert actual.dtype == expected.dtype
    assert actual.shape == expected.shape
    uint = f"u{expected.dtype.itemsize}"
    np.testing.assert_array_equal(actual.view(uint), expected.view(uint))


def folder_snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def partial_files(folder: Path, name: str) -> list[str]:
    return sorted(p.name for p in folder.glob(f".{name}.*.partial"))


@pytest.fixture
def umask() -> Iterator[int]:
    """Run with the umask 0o027 (a new file gets 0o640), restoring the previous one afterwards."""
    previous = os.umask(0o027)
    try:
        yield 0o027
    finally:
        os.umask(previous)


# --- write, then read back --------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("suffix", FORMATS)
def test_write_then_read_back_with_the_loader(tmp_path: Path, suffix: str, dtype: type) -> None:
    tensors = result_tensors(dtype)
    path = tmp_path / f"result{suffix}"
    write_result(path, tensors, META)
    source = read_tensors(str(path))
    assert sorted(source.tensors) == ["output", "weights"]
    for name, expected in tensors.items():
        actual = source.tensors[name]
        if suffix == ".json":  # JSON numbers read as float64; the shortest text casts back exactly
            assert actual.dtype == np.float64
            actual = actual.astype(dtype)
        same_bits(actual, expected)
    assert source.metadata == META
    assert sorted(os.listdir(tmp_path)) == [path.name]  # no temporary file left behind


def test_safetensors_is_standard_and_metadata_values_are_json_strings(tmp_path: Path) -> None:
    tensors = result_tensors(np.float32)
    path = tmp_path / "r.safetensors"
    write_result(path, tensors, META)
    loaded = load_file(str(path))
    for name, expected in tensors.items():
        same_bits(loaded[name], expected)
    with safe_open(str(path), framework="numpy") as file:
        raw = file.metadata()
    assert set(raw) == set(META)
    assert all(isinstance(value, str) for value in raw.values())
    assert {key: json.loads(value) for key, value in raw.items()} == META


def test_safetensors_of_every_dtype_and_layout_read_back_with_safetensors(tmp_path: Path) -> None:
    """Written from the arrays' own memory: each dtype a result may hold, empty and scalar arrays, a
    transposed (non-contiguous) array and a big-endian one, read back bit for bit by safetensors."""
    rng = np.random.default_rng(5)
    tensors = {
        "float64": rng.standard_normal((3, 2)),
        "float16": rng.standard_normal((5,)).astype(np.float16),
        "int64": rng.integers(-9, 9, size=(2, 2, 2)),
        "bool": rng.random((4, 3)) < 0.5,
        "uint8": rng.integers(0, 255, size=(7,)).astype(np.uint8),
        "empty": np.zeros((0, 4), np.float32),
        "scalar": np.array(2.5, np.float32),
        "transposed": rng.standard_normal((3, 4)).astype(np.float32).T,
        "big_endian": rng.standard_normal((2, 3)).astype(">f4"),
    }
    path = tmp_path / "r.safetensors"
    write_result(path, tensors, META)
    loaded = load_file(str(path))
    assert set(loaded) == set(tensors)
    for name, expected in tensors.items():
        assert loaded[name].dtype == expected.dtype.newbyteorder("="), name
        assert loaded[name].shape == expected.shape, name
        np.testing.assert_array_equal(loaded[name], expected, strict=False, err_msg=name)
    with safe_open(str(path), framework="numpy") as file:
        assert {key: json.loads(value) for key, value in file.metadata().items()} == META


def test_writing_a_large_result_makes_no_copy_of_it(tmp_path: Path) -> None:
    """NumPy reports its buffers to tracemalloc: writing 64 MiB allocates a small part of that
    (.npz: NumPy copies an array into a zip member 16 MiB at a time)."""
    import tracemalloc

    tensors = {"weights": np.ones((4096, 4096), np.float32), "output": np.ones((4096, 8), np.float32)}
    for suffix, allowed in ((".safetensors", 1 << 20), (".npz", 20 << 20)):
        tracemalloc.start()
        try:
            write_result(tmp_path / f"r{suffix}", tensors, META)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < allowed, (suffix, peak)


def test_npz_is_standard_and_meta_is_one_json_string(tmp_path: Path) -> None:
    tensors = result_tensors(np.float64)
    path = tmp_path / "r.npz"
    write_result(path, tensors, META)
    with np.load(path, allow_pickle=False) as archive:  # no pickles needed to read it
        assert sorted(archive.files) == ["meta", "output", "weights"]
        for name, expected in tensors.items():
            same_bits(archive[name], expected)
        meta = archive["meta"]
        assert meta.dtype.kind == "U"
        assert meta.ndim == 0
        assert json.loads(str(meta)) == META


def test_json_file_is_plain_json(tmp_path: Path) -> None:
    tensors = result_tensors(np.float32)
    path = tmp_path / "r.json"
    write_result(path, tensors, META)
    document = json.loads(path.read_text())
    assert list(document) == ["weights", "output", "meta"]
    assert document["meta"] == META
    for name, expected in tensors.items():
        same_bits(np.array(document[name], dtype=np.float64).astype(np.float32), expected)


def test_json_round_trip_keeps_integers_and_non_finite_values(tmp_path: Path) -> None:
    special = np.array([[np.nan, np.inf, -np.inf, 1.5]], dtype=np.float32)
    counts = np.array([[0, -3, 2**40]], dtype=np.int64)
    path = tmp_path / "r.json"
    write_result(path, {"weights": special, "output": counts}, {})
    source = read_tensors(str(path))
    np.testing.assert_array_equal(source.tensors["weights"].astype(np.float32), special)  # NaN == NaN here
    same_bits(source.tensors["output"], counts)
    assert source.metadata == {}


def test_write_result_refuses_an_unknown_suffix(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="--output") as caught:
        write_result(tmp_path / "r.csv", result_tensors(np.float32), META)
    assert "r.csv" in str(caught.value)
    assert list(tmp_path.iterdir()) == []


# --- json_text ------------------------------------------------------------------------------------------


def test_json_text_is_valid_json_with_weights_output_meta() -> None:
    tensors = result_tensors(np.float64)
    document = json.loads(json_text(tensors, META))
    assert list(document) == ["weights", "output", "meta"]
    assert document["meta"] == META
    for name, expected in tensors.items():
        same_bits(np.array(document[name], dtype=np.float64), expected)


def test_json_text_numbers_are_short_and_exact_for_float32() -> None:
    values = random_finite(np.float32, (4000,), seed=3)
    values[6:9] = [0.1, 1 / 3, 3.4e38]
    document = json.loads(json_text({"output": values}, {}), parse_float=str, parse_int=str)
    texts = document["output"]
    assert len(texts) == values.size
    for text, value in zip(texts, values.tolist(), strict=True):
        assert np.float32(float(text)) == np.float32(value) or (value == 0 and float(text) == 0)
        mantissa = re.sub(r"[eE].*$", "", text).replace("-", "").replace(".", "").strip("0")
        assert len(mantissa) <= 9, text  # 9 significant digits always suffice for a float32
    assert texts[6:9] == ["0.1", "0.33333334", "3.4e+38"]
    signs = np.signbit(np.array([float(t) for t in texts[:2]]))
    assert signs.tolist() == [False, True]  # 0.0 and -0.0 keep their signs


def test_json_text_writes_nan_and_infinity_as_json_module_reads_them() -> None:
    values = np.array([np.nan, np.inf, -np.inf, 0.25], dtype=np.float64)
    parsed = json.loads(json_text({"weights": values}, {"note": "x"}))
    np.testing.assert_array_equal(np.array(parsed["weights"]), values)
    assert parsed["meta"] == {"note": "x"}


# --- check_output_path -------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [*FORMATS, ".JSON"])
def test_check_output_path_accepts_a_new_file(tmp_path: Path, suffix: str) -> None:
    target = tmp_path / f"new{suffix}"
    assert check_output_path(str(target)) == target
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("result.txt", ["suffix '.txt'", ".safetensors", ".npz", ".json"]),
        ("result.npy", ["suffix '.npy'"]),
        ("result", ["no suffix"]),
        ("missing/result.json", ["folder", "does not exist"]),
    ],
)
def test_check_output_path_refuses(tmp_path: Path, name: str, words: list[str]) -> None:
    before = folder_snapshot(tmp_path)
    target = tmp_path / name
    with pytest.raises(UsageError) as caught:
        check_output_path(target)
    message = str(caught.value)
    assert message.startswith(f"--output {target}")
    for word in words:
        assert word in message
    assert folder_snapshot(tmp_path) == before
    assert not (tmp_path / "missing").exists()


def test_check_output_path_refuses_an_existing_file_without_force(tmp_path: Path) -> None:
    target = tmp_path / "result.npz"
    target.write_bytes(b"old contents")
    with pytest.raises(UsageError) as caught:
        check_output_path(target)
    assert str(caught.value).startswith(f"--output {target}")
    assert "exists" in str(caught.value)
    assert "--force" in str(caught.value)
    assert check_output_path(target, force=True) == target
    assert target.read_bytes() == b"old contents"  # checking never writes


@pytest.mark.parametrize("force", [False, True])
def test_check_output_path_refuses_a_directory(tmp_path: Path, force: bool) -> None:
    target = tmp_path / "result.json"
    target.mkdir()
    (target / "inside").write_bytes(b"keep")
    with pytest.raises(UsageError) as caught:
        check_output_path(target, force=force)
    assert str(caught.value).startswith(f"--output {target}")
    assert "directory" in str(caught.value)
    assert (target / "inside").read_bytes() == b"keep"


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into any folder")
def test_check_output_path_refuses_a_read_only_folder(tmp_path: Path) -> None:
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(UsageError, match="not writable"):
            check_output_path(folder / "r.json")
    finally:
        folder.chmod(0o700)


# --- atomic replacement -----------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", FORMATS)
def test_existing_target_is_replaced_on_success(tmp_path: Path, suffix: str) -> None:
    target = tmp_path / f"r{suffix}"
    target.write_bytes(b"old contents")
    tensors = result_tensors(np.float32)
    write_result(target, tensors, META)
    assert target.read_bytes() != b"old contents"
    same_bits(read_tensors(str(target)).tensors["weights"].astype(np.float32), tensors["weights"])
    assert sorted(os.listdir(tmp_path)) == [target.name]


def _fail_midway(error: BaseException):  # type: ignore[no-untyped-def]
    """A format writer that writes part of a file, then fails with `error`."""

    def write_half(file, *args, **kwargs):  # type: ignore[no-untyped-def]
        file.write(b"\x00partial result bytes")
        file.flush()
        raise error

    return write_half


FAILURES = [
    pytest.param(RuntimeError("boom"), RuntimeError, id="exception"),
    pytest.param(KeyboardInterrupt(), KeyboardInterrupt, id="keyboard-interrupt"),
    pytest.param(OSError(28, "No space left on device"), OutputError, id="disk-full"),
]


@pytest.mark.parametrize(("error", "raised"), FAILURES)
@pytest.mark.parametrize("suffix", FORMATS)
def test_a_failed_write_leaves_the_old_file_unchanged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, suffix: str, error: BaseException, raised: type
) -> None:
    target = tmp_path / f"r{suffix}"
    old = os.urandom(256)
    target.write_bytes(old)
    target.chmod(0o640)
    before = folder_snapshot(tmp_path)
    if suffix == ".npz":
        monkeypatch.setattr(writers, "_write_npz", _fail_midway(error))
    else:
        # The bytes are made first and written whole: fail in the middle of writing them to the file.
        seen: list[int] = []

        def failing_fsync(descriptor: int) -> None:
            seen.append(os.fstat(descriptor).st_size)
            raise error

        monkeypatch.setattr(writers.os, "fsync", failing_fsync)
    with pytest.raises(raised) as caught:
        write_result(target, result_tensors(np.float32), META)
    if raised is OutputError:
        assert str(caught.value).startswith(f"--output {target}")
        assert "No space left on device" in str(caught.value)
    if suffix != ".npz":
        assert len(seen) == 1
        assert seen[0] > 0  # the temporary file had been written when the failure came
    assert folder_snapshot(tmp_path) == before
    assert target.read_bytes() == old
    assert target.stat().st_mode & 0o777 == 0o640
    assert partial_files(tmp_path, target.name) == []


@pytest.mark.parametrize(("error", "raised"), FAILURES)
def test_a_failed_rename_leaves_the_old_file_unchanged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: BaseException, raised: type
) -> None:
    target = tmp_path / "r.safetensors"
    old = b"the previous result"
    target.write_bytes(old)
    renamed: list[str] = []

    def failing_replace(source: str, destination: object) -> None:
        renamed.append(os.path.basename(source))
        assert Path(source).stat().st_size > 0  # complete, and about to be renamed
        raise error

    monkeypatch.setattr(writers.os, "replace", failing_replace)
    with pytest.raises(raised):
        write_result(target, result_tensors(np.float32), META)
    assert len(renamed) == 1
    assert re.fullmatch(rf"\.{re.escape(target.name)}\..+\.partial", renamed[0])
    assert target.read_bytes() == old
    assert sorted(os.listdir(tmp_path)) == [target.name]


@pytest.mark.parametrize("suffix", [".json", ".safetensors"])
def test_a_failure_before_writing_creates_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, suffix: str
) -> None:
    def refuse(*args: object, **kwargs: object) -> str:
        raise ValueError("cannot serialise")

    monkeypatch.setattr(writers, "_json_array" if suffix == ".json" else "safetensors_header", refuse)
    with pytest.raises(ValueError, match="cannot serialise"):
        write_result(tmp_path / f"r{suffix}", result_tensors(np.float32), META)
    assert list(tmp_path.iterdir()) == []


def test_a_temporary_file_that_cannot_be_made_is_an_output_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_temporary(target: Path) -> tuple[int, str]:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(writers, "temporary_beside", no_temporary)
    target = tmp_path / "r.npz"
    with pytest.raises(OutputError) as caught:
        write_result(target, result_tensors(np.float32), META)
    assert str(caught.value).startswith(f"--output {target}")
    assert "Permission denied" in str(caught.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("suffix", FORMATS)
def test_a_new_file_gets_0666_less_the_umask(tmp_path: Path, umask: int, suffix: str) -> None:
    target = tmp_path / f"r{suffix}"
    write_result(target, result_tensors(np.float32), META)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask
    assert os.umask(umask) == umask  # the writer put the umask back as it was


@pytest.mark.parametrize("mode", [0o600, 0o644, 0o604])
def test_an_overwritten_file_keeps_its_mode(tmp_path: Path, umask: int, mode: int) -> None:
    target = tmp_path / "r.npz"
    target.write_bytes(b"old")
    target.chmod(mode)
    write_result(target, result_tensors(np.float32), META)
    assert target.stat().st_mode & 0o777 == mode
    assert target.read_bytes() != b"old"


def test_json_text_writes_booleans_as_json_booleans():
    document = json.loads(json_text({"allowed": np.array([[True, False], [False, True]])}, {}))
    assert document["allowed"] == [[True, False], [False, True]]


def test_json_is_written_a_piece_at_a_time_with_the_whole_texts_bytes(monkeypatch) -> None:
    """No piece of text is made for more than _JSON_PIECE_BYTES of numbers, and the pieces make
    the text np.array reads back as the arrays, NaN and infinities included."""
    import io

    monkeypatch.setattr(writers, "_JSON_PIECE_BYTES", 4096)
    pieces: list[int] = []
    real = writers._json_array

    def measured(array: np.ndarray) -> str:
        pieces.append(array.nbytes)
        return real(array)

    monkeypatch.setattr(writers, "_json_array", measured)
    rng = np.random.default_rng(4)
    tensors = {
        "weights": rng.random((2, 3, 64, 64)).astype(np.float32),
        "stats": np.array([[np.nan, np.inf]] * 3),
    }
    buffer = io.BytesIO()
    writers.write_json(buffer, tensors, {"note": "x"})
    assert max(pieces) <= 4096
    document = json.loads(buffer.getvalue())
    np.testing.assert_array_equal(np.array(document["weights"], dtype=np.float32), tensors["weights"])
    np.testing.assert_array_equal(np.array(document["stats"]), tensors["stats"])
    assert document["meta"] == {"note": "x"}


# --- bfloat16 ---------------------------------------------------------------------------------------------

BF16_META = {**META, "dtype": "bfloat16"}


def bfloat16_values(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """float32 values that are bfloat16 (as a bfloat16 computation's results come, widened), by torch."""
    values = torch.from_numpy(np.random.default_rng(seed).standard_normal(shape).astype(np.float32))
    return values.to(torch.bfloat16).float().numpy()


def bfloat16_result() -> dict[str, np.ndarray]:
    return {
        "weights": bfloat16_values((2, 3, 5), seed=1),
        "output": bfloat16_values((2, 3, 4), seed=2),
        "entropy": np.random.default_rng(3).random((2, 3)).astype(np.float32),  # float32 of its own
        "argmax": np.arange(6).reshape(2, 3),
    }


def test_bfloat16_bits_round_as_torch_does() -> None:
    """Every sort of float32: bfloat16 already (kept exactly), ties (to even), values rounding up to
    the next binade or to infinity, subnormals, signed zeros, infinities; NaN stays NaN."""
    rng = np.random.default_rng(8)
    bits = rng.integers(0, 2**32, size=20_000, dtype=np.uint64).astype(np.uint32)
    ties = (rng.integers(0, 2**16, size=2000, dtype=np.uint32) << 16) | 0x8000
    edges = np.array(
        [0, 0x80000000, 0x7F800000, 0xFF800000, 0x7F7FFFFF, 0xFF7FFFFF, 0x3F80FFFF, 0x00000001,
         0x007FFFFF, 0x7FC00000, 0xFFFFFFFF, 0x7F800001, 0x3F818000, 0x3F828000],
        dtype=np.uint32,
    )  # fmt: skip
    values = np.concatenate([bits, ties, edges]).view(np.float32)
    expected = torch.from_numpy(values.copy()).to(torch.bfloat16).view(torch.int16).numpy().view("<u2")
    actual = writers.bfloat16_bits(values)
    assert actual.dtype == np.dtype("<u2")
    nan = np.isnan(values)
    np.testing.assert_array_equal(actual[~nan], expected[~nan])
    widened = (actual.astype(np.uint32) << 16).view(np.float32)
    assert np.isnan(widened[nan]).all()
    assert (np.signbit(widened[nan]) == np.signbit(values[nan])).all()


@pytest.mark.parametrize("suffix", FORMATS)
def test_bfloat16_results_are_stored_as_bfloat16_where_the_format_has_it(tmp_path: Path, suffix: str) -> None:
    """.safetensors: BF16 in its header, the same values read back through safetensors' torch API;
    .npz and .json: float32 (JSON numbers: float64 of the same values) and `stored_dtype` float32 in
    the metadata, whose `dtype` stays bfloat16. Tensors not named stay as they were."""
    tensors = bfloat16_result()
    path = tmp_path / f"r{suffix}"
    write_result(path, tensors, BF16_META, bfloat16=("weights", "output", "not_there"))
    if suffix == ".safetensors":
        header_dtypes = safetensors_dtypes(path)
        assert header_dtypes == {"weights": "BF16", "output": "BF16", "entropy": "F32", "argmax": "I64"}
        with safe_open(str(path), framework="pt") as file:
            for name in ("weights", "output"):
                stored = file.get_tensor(name)
                assert stored.dtype == torch.bfloat16
                assert torch.equal(stored, torch.from_numpy(tensors[name]).to(torch.bfloat16))
            assert {key: json.loads(value) for key, value in file.metadata().items()} == BF16_META
        # Two bytes a value: the data of both is half the float32's.
        data = (
            sum(a.nbytes for a in tensors.values())
            - (tensors["weights"].nbytes + tensors["output"].nbytes) // 2
        )
        assert path.stat().st_size - 8 - int.from_bytes(path.read_bytes()[:8], "little") == data
    else:
        arrays, meta = read_result(path)
        assert meta == {**BF16_META, "stored_dtype": "float32"}
        if suffix == ".npz":
            assert {name: str(a.dtype) for name, a in arrays.items()} == {
                "weights": "float32", "output": "float32", "entropy": "float32", "argmax": "int64"
            }  # fmt: skip
        for name, expected in tensors.items():
            np.testing.assert_array_equal(arrays[name].astype(expected.dtype), expected)
    # attncli reads each back as float32 of the same values.
    source = read_tensors(str(path))
    for name, expected in tensors.items():
        np.testing.assert_array_equal(source.tensors[name].astype(expected.dtype), expected, strict=True)


def test_without_bfloat16_names_nothing_changes(tmp_path: Path) -> None:
    tensors = bfloat16_result()
    for suffix in FORMATS:
        write_result(tmp_path / f"r{suffix}", tensors, META)
        assert "stored_dtype" not in read_result(tmp_path / f"r{suffix}")[1]
    assert set(safetensors_dtypes(tmp_path / "r.safetensors").values()) == {"F32", "I64"}


def test_json_to_stdout_says_what_it_stored() -> None:
    tensors = bfloat16_result()
    document = json.loads(json_text(tensors, BF16_META, bfloat16=("weights",)))
    assert document["meta"] == {**BF16_META, "stored_dtype": "float32"}
    np.testing.assert_array_equal(np.array(document["weights"], np.float32), tensors["weights"])


def test_bfloat16_names_must_be_float32_arrays(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="weights"):
        write_result(tmp_path / "r.safetensors", {"weights": np.zeros(3)}, {}, bfloat16=("weights",))
    assert list(tmp_path.iterdir()) == []


def test_bfloat16_is_narrowed_a_piece_at_a_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The narrowed copy is of one piece at a time, never of the whole result."""
    import tracemalloc

    monkeypatch.setattr(writers, "_BFLOAT16_PIECE", 1 << 16)
    weights = np.ones((2048, 2048), np.float32)  # 16 MiB
    tracemalloc.start()
    try:
        write_result(tmp_path / "r.safetensors", {"weights": weights}, {}, bfloat16=("weights",))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 << 20, peak
    with safe_open(str(tmp_path / "r.safetensors"), framework="pt") as file:
        assert torch.equal(file.get_tensor("weights"), torch.ones((2048, 2048), dtype=torch.bfloat16))


# --- TensorStream: tensors written one at a time (attn capture's layers) ----------------------


@pytest.mark.parametrize("suffix", [".safetensors", ".npz", ".json"])
@pytest.mark.parametrize("room", ["enough", "too little"])
def test_a_tensor_stream_reads_back_as_written_whole(tmp_path: Path, suffix: str, room: str) -> None:
    """Each tensor written as it comes, the metadata last, equals write_result's file: also when the
    metadata outgrows the room left for a .safetensors header (the data is then copied behind it)."""
    rng = np.random.default_rng(0)
    tensors = {
        "layers.0.query": rng.standard_normal((2, 4, 5, 8)).astype(np.float32),
        "layers.0.key": rng.standard_normal((2, 2, 5, 8)).astype(np.float16),
        "layers.0.value": torch.randn(2, 2, 5, 8).to(torch.bfloat16).float().numpy(),  # bfloat16 values
        "masks.0": rng.random((2, 1, 5, 5)) < 0.5,
        "empty": np.zeros((0, 3), dtype=np.float32),
    }
    metadata = {"texts": ["the cat sat"] * (1 if room == "enough" else 2000), "dtype": "bfloat16"}
    target = tmp_path / f"stream{suffix}"
    with writers.TensorStream(
        target, expected_metadata={"texts": ["the cat sat"]}, expected_tensors=5
    ) as stream:
        for name, array in tensors.items():
            stream.add(name, array, bfloat16=name == "layers.0.value")
            assert not target.exists()  # in place only when complete
        stream.commit(metadata)
    assert sorted(path.name for path in tmp_path.iterdir()) == [target.name]  # no temporary file left
    whole = tmp_path / f"whole{suffix}"
    write_result(whole, tensors, metadata, bfloat16=["layers.0.value"])
    streamed, written = read_tensors(str(target)), read_tensors(str(whole))
    assert streamed.metadata == written.metadata
    assert streamed.metadata["texts"] == metadata["texts"]
    for name, array in tensors.items():
        assert np.array_equal(streamed.tensors[name], written.tensors[name]), name
        if array.size or suffix != ".json":  # JSON's [] has no shape
            assert np.array_equal(streamed.tensors[name].astype(array.dtype), array), name
    if suffix == ".safetensors":
        assert target.read_bytes() == whole.read_bytes() or room == "enough"  # same bytes when rewritten
        assert safetensors_dtypes(target)["layers.0.value"] == "BF16"


def test_a_tensor_stream_left_without_commit_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "run.safetensors"

    def failing_pass() -> None:
        with writers.TensorStream(target) as stream:
            stream.add("layers.0.query", np.ones((2, 3), dtype=np.float32))
            raise RuntimeError("the model's forward pass failed")

    def writing_twice() -> None:
        with writers.TensorStream(target) as stream:
            stream.add("a", np.ones(2, dtype=np.float32))
            stream.add("a", np.ones(2, dtype=np.float32))

    with pytest.raises(RuntimeError):
        failing_pass()
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="written already"):
        writing_twice()
    assert list(tmp_path.iterdir()) == []
