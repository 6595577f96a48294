"""`attn inspect` and attncli.io.lazy: every format, statistics, metadata, lazy reading, errors.

Expected statistics come from NumPy on the arrays written here, never from attncli.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_error, npz_bytes
from safetensors.numpy import save as safetensors_bytes
from safetensors.numpy import save_file
from test_loaders import BAD_FILES
from typer.testing import CliRunner

from attncli.cli import app
from attncli.io import lazy

runner = CliRunner()
RNG = np.random.default_rng(11)


def invoke(*args: str, input: bytes | None = None):
    return runner.invoke(app, list(args), input=input, env={"COLUMNS": "120"})


def inspect_json(*args: str, input: bytes | None = None) -> list[dict]:
    result = invoke("inspect", *args, "--format", "json", input=input)
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    return json.loads(result.stdout)["files"]


def assert_stats(entry: dict, array: np.ndarray) -> None:
    """The statistics attn reports agree with NumPy's on the finite values."""
    assert entry["shape"] == list(array.shape)
    assert entry["bytes"] == array.nbytes
    values = np.asarray(array)
    if values.dtype.kind == "f":
        assert entry["nan"] == int(np.isnan(values).sum())
        assert entry["inf"] == int(np.isinf(values).sum())
        values = values[np.isfinite(values)]
    else:
        assert entry["nan"] == entry["inf"] == 0
    assert entry["min"] == values.min().item()
    assert entry["max"] == values.max().item()
    widened = values.astype(np.float64)
    assert entry["mean"] == pytest.approx(widened.mean(), rel=1e-12, abs=1e-12)
    assert entry["std"] == pytest.approx(widened.std(), rel=1e-12, abs=1e-12)


def with_nonfinite(shape: tuple[int, ...], dtype: str = "float32") -> np.ndarray:
    array = RNG.standard_normal(shape).astype(dtype)
    flat = array.reshape(-1)
    flat[[1, 5]] = np.nan
    flat[7] = np.inf
    flat[9] = -np.inf
    return array


TENSORS = {
    "query": with_nonfinite((2, 3, 4)),
    "counts": RNG.integers(-50, 50, size=(5, 6)).astype(np.int64),
    "scores": RNG.standard_normal((7,)).astype(np.float64),
}


def json_bytes(tensors: dict[str, np.ndarray]) -> bytes:
    # Python's json writes NaN and Infinity, which the loaders read back.
    return json.dumps({name: array.tolist() for name, array in tensors.items()}).encode()


def bfloat16_safetensors(name: str, values: np.ndarray) -> tuple[bytes, np.ndarray]:
    """A .safetensors file of one BF16 tensor, and the float32 values it holds (bits written by hand)."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    stored = (bits >> 16).astype("<u2")
    exact = (bits & 0xFFFF0000).view(np.float32)
    return safetensors_file({name: ("BF16", values.shape, stored.tobytes())}), exact


def safetensors_file(entries: dict, *, metadata: dict | None = None, extra: bytes = b"") -> bytes:
    """Hand-made .safetensors bytes: {name: (dtype, shape, data)}, data laid out in order."""
    header: dict = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for name, (dtype, shape, data) in entries.items():
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    text = json.dumps(header).encode()
    return len(text).to_bytes(8, "little") + text + b"".join(d for _, _, d in entries.values()) + extra


# --- every format ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["npz", "safetensors", "json"])
@pytest.mark.parametrize("via", ["file", "stdin"])
def test_statistics_of_every_tensor_match_numpy(tmp_path: Path, fmt: str, via: str) -> None:
    data = {
        "npz": npz_bytes(**TENSORS),
        "safetensors": safetensors_bytes(TENSORS),
        "json": json_bytes(TENSORS),
    }[fmt]
    path = tmp_path / f"x.{fmt}"
    path.write_bytes(data)
    (report,) = inspect_json(str(path)) if via == "file" else inspect_json(input=data)
    assert report["format"] == fmt
    assert report["bytes"] == len(data)
    assert report["path"] == (str(path) if via == "file" else "<stdin>")
    by_name = {entry["name"]: entry for entry in report["tensors"]}
    assert set(by_name) == set(TENSORS)
    for name, array in TENSORS.items():
        expected = array if fmt != "json" else np.array(array.tolist())  # JSON integers and floats
        assert by_name[name]["dtype"] == expected.dtype.name
        assert_stats(by_name[name], expected)


@pytest.mark.parametrize("via", ["file", "dash", "stdin"])
def test_npy_file_and_stdin(tmp_path: Path, via: str) -> None:
    array = with_nonfinite((3, 4, 5), "float16")
    path = tmp_path / "x.npy"
    np.save(path, array)
    args = {"file": [str(path)], "dash": ["-"], "stdin": []}[via]
    (report,) = inspect_json(*args, input=path.read_bytes())
    (entry,) = report["tensors"]
    assert (entry["name"], entry["dtype"], report["format"]) == ("tensor", "float16", "npy")
    assert_stats(entry, array)


def test_bfloat16_is_shown_as_bfloat16_with_exact_statistics(tmp_path: Path) -> None:
    data, exact = bfloat16_safetensors("hidden", with_nonfinite((4, 33)))
    path = tmp_path / "bf16.safetensors"
    path.write_bytes(data)
    for report in (inspect_json(str(path))[0], inspect_json(input=data)[0]):
        (entry,) = report["tensors"]
        assert entry["dtype"] == "bfloat16"
        assert entry["bytes"] == exact.size * 2
        assert entry["min"] == float(exact[np.isfinite(exact)].min())
        assert_stats({**entry, "bytes": exact.nbytes}, exact)


def test_statistics_over_many_blocks_layouts_and_byte_orders(tmp_path: Path) -> None:
    """More values than three blocks, column-major and big-endian files, and npz members streamed."""
    big = RNG.standard_normal((3 * lazy.BLOCK_ELEMENTS // 1000 + 7, 1000)).astype(np.float32) * 5 + 2
    fortran = np.asfortranarray(RNG.standard_normal((700, 900)))
    swapped = RNG.standard_normal(1500).astype(">f4")
    np.save(tmp_path / "big.npy", big)
    np.save(tmp_path / "fortran.npy", fortran)
    np.save(tmp_path / "swapped.npy", swapped)
    np.savez_compressed(tmp_path / "packed.npz", big=big, fortran=fortran)
    save_file({"big": big}, str(tmp_path / "big.safetensors"))
    names = ["big.npy", "fortran.npy", "swapped.npy", "packed.npz", "big.safetensors"]
    reports = inspect_json(*(str(tmp_path / name) for name in names))
    expected = [[big], [fortran], [swapped], [big, fortran], [big]]
    for report, arrays in zip(reports, expected, strict=True):
        for entry, array in zip(report["tensors"], arrays, strict=True):
            assert_stats(entry, array)
    # C-order blocks of a column-major file are its values in C order, as NumPy reads them.
    (tensor,) = lazy.open_tensors(str(tmp_path / "fortran.npy")).tensors.values()
    np.testing.assert_array_equal(np.concatenate(list(tensor.blocks(4099))), fortran.reshape(-1))
    member = lazy.open_tensors(str(tmp_path / "packed.npz")).tensors["fortran"]
    np.testing.assert_array_equal(np.concatenate(list(member.blocks(4099))), fortran.reshape(-1))


def test_integers_booleans_and_empty_tensors(tmp_path: Path) -> None:
    huge = np.array([2**63 - 1, -(2**63), 5], dtype=np.int64)
    flags = np.array([[True, False, True]])
    empty = np.zeros((0, 4), dtype=np.float32)
    np.savez(tmp_path / "odd.npz", huge=huge, flags=flags, empty=empty)
    (report,) = inspect_json(str(tmp_path / "odd.npz"))
    by_name = {entry["name"]: entry for entry in report["tensors"]}
    assert (by_name["huge"]["min"], by_name["huge"]["max"]) == (-(2**63), 2**63 - 1)  # exact
    assert (by_name["flags"]["min"], by_name["flags"]["max"], by_name["flags"]["dtype"]) == (
        False,
        True,
        "bool",
    )
    assert by_name["flags"]["mean"] == pytest.approx(2 / 3)
    empty_entry = by_name["empty"]
    assert [empty_entry[k] for k in ("min", "max", "mean", "std", "nan", "inf")] == [None] * 4 + [0, 0]


def test_table_shows_every_fact_and_names_as_text(tmp_path: Path) -> None:
    path = tmp_path / "x.npz"
    np.savez(path, **{"[red]odd": np.array([1.5, np.nan, 2.5]), "plain": np.arange(3, dtype=np.int16)})
    result = invoke("inspect", str(path), "--no-color")
    assert result.exit_code == 0, result.output
    for word in (str(path), "npz", "tensor", "shape", "dtype", "size", "min", "max", "mean", "std", "NaN"):
        assert word in result.stdout
    assert "[red]odd" in result.stdout  # not taken for markup
    assert "float64" in result.stdout
    assert "int16" in result.stdout
    assert "24 B" in result.stdout
    assert "6 B" in result.stdout


def test_path_name_picks_one_tensor(tmp_path: Path) -> None:
    path = tmp_path / "x.safetensors"
    save_file(TENSORS, str(path))
    (report,) = inspect_json(f"{path}:counts")
    assert [entry["name"] for entry in report["tensors"]] == ["counts"]
    assert_error(invoke("inspect", f"{path}:nope"), str(path), "no tensor named 'nope'", "counts")


def test_no_stats_reads_headers_only(tmp_path: Path) -> None:
    path = tmp_path / "x.npz"
    np.savez(path, **TENSORS)
    (report,) = inspect_json(str(path), "--no-stats")
    for entry in report["tensors"]:
        assert set(entry) == {"name", "shape", "dtype", "bytes"}
    result = invoke("inspect", str(path), "--no-stats")
    assert result.exit_code == 0
    assert "query" in result.stdout
    assert "mean" not in result.stdout


# --- result files -------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["safetensors", "npz", "json"])
def test_result_file_metadata_is_shown(tmp_path: Path, samples: Path, suffix: str) -> None:
    target = tmp_path / f"r.{suffix}"
    made = invoke("compute", str(samples / "seed.npz"), "-q", "--causal", "-o", str(target))
    assert made.exit_code == 0, made.output
    (report,) = inspect_json(str(target))
    assert {entry["name"] for entry in report["tensors"]} == {"weights", "output"}
    meta = report["metadata"]
    assert meta["causal"] is True
    assert meta["scale"] == 0.5
    assert meta["weights_axes"] == ["query", "key"]
    assert meta["sources"]["query"].endswith("seed.npz:query")
    weights = {entry["name"]: entry for entry in report["tensors"]}["weights"]
    assert weights["shape"] == [3, 3]
    assert weights["min"] == 0.0
    assert weights["max"] == 1.0
    table = invoke("inspect", str(target), "--no-color").stdout
    assert "metadata" in table
    pairs = [line.split(None, 1) for line in table.split("metadata", 1)[1].splitlines()]
    lines = {pair[0]: pair[1].strip() for pair in pairs if len(pair) == 2}
    assert lines["causal"] == "true"
    assert lines["weights_axes"] == '["query", "key"]'
    assert lines["dtype"] == "float32"  # a string, shown without its JSON quotes


# --- lazy reading -------------------------------------------------------------------------------------


def test_safetensors_claiming_data_beyond_the_file_is_refused(tmp_path: Path) -> None:
    header = json.dumps({"big": {"dtype": "F32", "shape": [1000, 1000], "data_offsets": [0, 4_000_000]}})
    data = len(header).to_bytes(8, "little") + header.encode() + b"\x00" * 64
    path = tmp_path / "short.safetensors"
    path.write_bytes(data)
    assert_error(invoke("inspect", str(path), "--no-stats"), str(path), "'big'", "4000000", "only 64 bytes")
    assert_error(invoke("inspect", "-", input=data), "<stdin>", "'big'", "only 64 bytes")


def test_npy_claiming_data_beyond_the_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "short.npy"
    with open(path, "wb") as file:
        np.lib.format.write_array_header_1_0(
            file, {"descr": "<f8", "fortran_order": False, "shape": (10, 10)}
        )
        file.write(b"\x00" * 80)
    assert_error(invoke("inspect", str(path), "--no-stats"), str(path), "800 bytes", "only 80 bytes")


_F32 = np.arange(6, dtype=np.float32).tobytes()
BAD_SAFETENSORS = [
    pytest.param(
        {"a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 20]}},
        _F32,
        ["'a'", "needs 24 bytes"],
        id="size",
    ),
    pytest.param(
        {
            "a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 12]},
            "b": {"dtype": "F32", "shape": [3], "data_offsets": [8, 20]},
        },
        _F32[:20],
        ["'a'", "'b'", "overlap"],
        id="overlap",
    ),
    pytest.param(
        {"a": {"dtype": "F32", "shape": [3], "data_offsets": [4, 16]}},
        _F32[:16],
        ["4 bytes before"],
        id="gap",
    ),
    pytest.param(
        {"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 12]}}, _F32, ["last 12 bytes"], id="trailing"
    ),
    pytest.param(
        {"a": {"dtype": "F32", "shape": [-3], "data_offsets": [0, 12]}}, _F32[:12], ["shape"], id="negative"
    ),
    pytest.param(
        {"a": {"dtype": "F32", "shape": [3], "data_offsets": [12, 0]}},
        _F32[:12],
        ["data_offsets"],
        id="backwards",
    ),
    pytest.param({"a": [1, 2]}, b"", ["'a'", "dtype, shape and data_offsets"], id="not-an-object"),
    pytest.param(
        {"a": {"dtype": "C64", "shape": [1], "data_offsets": [0, 8]}},
        _F32[:8],
        ["C64", "not supported"],
        id="dtype",
    ),
    pytest.param({"__metadata__": {"a": 1}}, b"", ["__metadata__"], id="metadata-not-strings"),
    pytest.param({}, b"", ["holds no tensors"], id="no-tensors"),
]


@pytest.mark.parametrize(("header", "data", "words"), BAD_SAFETENSORS)
def test_safetensors_headers_are_checked_as_strictly_as_the_loaders(
    tmp_path: Path, header: dict, data: bytes, words: list[str]
) -> None:
    text = json.dumps(header).encode()
    path = tmp_path / "bad.safetensors"
    path.write_bytes(len(text).to_bytes(8, "little") + text + data)
    assert_error(invoke("inspect", str(path), "--no-stats"), str(path), *words)
    from attncli.errors import InputError
    from attncli.io.loaders import read_tensors

    with pytest.raises(InputError):  # the loaders refuse it too
        read_tensors(str(path))


@pytest.mark.parametrize(("name", "data", "words"), BAD_FILES)
def test_the_loaders_catalogue_of_bad_files_is_refused_too(
    tmp_path: Path, name: str, data: bytes, words: list[str]
) -> None:
    path = tmp_path / name
    path.write_bytes(data)
    assert_error(invoke("inspect", str(path)), str(path), *words)


@pytest.mark.slow
def test_header_of_a_200_mb_file_is_read_without_its_data(tmp_path: Path) -> None:
    """A sparse 200 MB .npy: --no-stats is instant and takes no memory; statistics take one block's."""
    script = r"""
import resource, sys, time
import numpy as np
from typer.testing import CliRunner
from attncli.cli import app
path, count = sys.argv[1], 50_000_000
with open(path, "wb") as file:
    np.lib.format.write_array_header_1_0(file, {"descr": "<f4", "fortran_order": False, "shape": (count,)})
    file.truncate(file.tell() + 4 * count)  # sparse: nothing written
runner = CliRunner()
runner.invoke(app, ["inspect", "--no-stats", path])  # warm up imports
peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
before, start = peak(), time.perf_counter()
header = runner.invoke(app, ["inspect", "--no-stats", "--format", "json", path])
seconds, header_growth = time.perf_counter() - start, peak() - before
stats = runner.invoke(app, ["inspect", "--format", "json", path])
print(header.exit_code, seconds, header_growth, stats.exit_code, peak() - before)
print(stats.stdout)
"""
    path = tmp_path / "big.npy"
    done = subprocess.run(
        [sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    first, *rest = done.stdout.splitlines()
    header_status, seconds, header_growth, stats_status, stats_growth = (float(x) for x in first.split())
    assert header_status == stats_status == 0
    assert seconds < 1.0
    assert header_growth < 50  # MB
    assert stats_growth < 100  # MB, for 200 MB of data read
    (entry,) = json.loads("\n".join(rest))["files"][0]["tensors"]
    assert entry["shape"] == [50_000_000]
    assert entry["max"] == 0.0
    assert entry["std"] == 0.0


# --- usage errors ------------------------------------------------------------------------------------


def test_stdin_twice_and_empty_stdin(tmp_path: Path) -> None:
    assert_error(invoke("inspect", "-", "-", input=b"[1]"), "stdin", "once")
    assert_error(invoke("inspect", input=b""), "<stdin>", "empty")


def test_unreadable_paths(tmp_path: Path) -> None:
    assert_error(invoke("inspect", str(tmp_path / "missing.npy")), "missing.npy", "no such file")
    folder = tmp_path / "folder.npz"
    folder.mkdir()
    assert_error(invoke("inspect", str(folder)), str(folder), "directory")
    objects = tmp_path / "objects.npy"
    np.save(objects, np.array([1, None], dtype=object), allow_pickle=True)
    assert_error(invoke("inspect", str(objects)), str(objects), "Python objects")


def test_std_of_values_near_the_largest_float64_is_finite(tmp_path: Path) -> None:
    """Deviations of values near 1.8e308 overflow float64: std was NaN. The reference scales the
    values by an exact power of two first, as np.std of x / 2**1000 times 2**1000."""
    from attncli.io import lazy

    rng = np.random.default_rng(5)
    values = np.concatenate([[1.7e308, -1.7e308], rng.uniform(-1, 1, size=3 * lazy.BLOCK_ELEMENTS) * 1e308])
    np.save(tmp_path / "huge.npy", values)
    stats = lazy.tensor_stats(lazy.open_tensors(str(tmp_path / "huge.npy")).tensors["tensor"])
    scaled = values / 2.0**1000
    assert stats.mean == pytest.approx(scaled.mean() * 2.0**1000, rel=1e-9)
    assert stats.std == pytest.approx(scaled.std() * 2.0**1000, rel=1e-12)
    assert (stats.min, stats.max) == (-1.7e308, 1.7e308)
