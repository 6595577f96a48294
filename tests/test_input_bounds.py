"""Reads are bounded, read once and refuse what is not a file or a pipe (attncli.io.source).

Expected values are the arrays written here, read back by NumPy; the limits are set through
ATTNCLI_MAX_INPUT_SIZE, as a user sets them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_error, npy_bytes
from reference import reference_attention
from typer.testing import CliRunner

from attncli.cli import app
from attncli.errors import InputError
from attncli.io import loaders, source

runner = CliRunner()
ZERO = "/dev/zero"
needs_dev_zero = pytest.mark.skipif(not os.path.exists(ZERO), reason="no /dev/zero here")
needs_fifo = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes here")


def invoke(*args: str, input: bytes | None = None, **env: str):
    return runner.invoke(app, list(args), input=input, env={"COLUMNS": "100", **env})


def seed_files(folder: Path) -> list[str]:
    rng = np.random.default_rng(0)
    paths = []
    for role in ("query", "key", "value"):
        path = folder / f"{role}.npy"
        np.save(path, rng.standard_normal((3, 4)).astype(np.float32))
        paths.append(str(path))
    return paths


def test_stdin_beyond_the_limit_is_refused_naming_the_variable():
    line = assert_error(
        invoke("compute", "-", input=b"[" + b"0," * 600_000 + b"0]", ATTNCLI_MAX_INPUT_SIZE="1MB"),
        "<stdin>",
        "more than 976.6 KiB",
        "ATTNCLI_MAX_INPUT_SIZE",
    )
    assert "Traceback" not in line


def test_a_file_read_whole_beyond_the_limit_is_refused_before_reading(tmp_path):
    path = tmp_path / "big.json"
    path.write_text("[" + "0.5," * 400_000 + "0.5]")
    assert_error(invoke("inspect", str(path), ATTNCLI_MAX_INPUT_SIZE="1MiB"), str(path), "over 1 MiB")


def test_a_bad_limit_is_a_usage_error(tmp_path):
    paths = seed_files(tmp_path)
    stdin = Path(paths[2]).read_bytes()
    result = invoke("compute", *paths[:2], "-", input=stdin, ATTNCLI_MAX_INPUT_SIZE="lots")
    assert_error(result, "ATTNCLI_MAX_INPUT_SIZE", "not a size")


def test_inputs_within_the_limit_read_as_before(tmp_path):
    array = np.arange(12, dtype=np.float32).reshape(3, 4)
    parsed = loaders.read_tensors("-", _Stream(npy_bytes(array)))
    np.testing.assert_array_equal(parsed.tensors["tensor"], array)


class _Stream:
    """A stream that hands out at most `step` bytes a read, as a pipe does."""

    def __init__(self, data: bytes, step: int = 1000) -> None:
        self.data, self.step, self.position = data, step, 0

    def read(self, size: int = -1) -> bytes:
        size = self.step if size < 0 else min(size, self.step)
        chunk = self.data[self.position : self.position + size]
        self.position += len(chunk)
        return chunk


@needs_dev_zero
def test_an_endless_stdin_stops_at_the_limit(monkeypatch):
    monkeypatch.setenv("ATTNCLI_MAX_INPUT_SIZE", "4MiB")
    with open(ZERO, "rb") as endless, pytest.raises(InputError, match="more than 4 MiB"):
        loaders.read_tensors("-", endless)


@needs_dev_zero
@pytest.mark.parametrize("name", ["z.npy", "z.json", "z.npz", "z.safetensors"])
def test_a_link_to_a_device_is_refused_before_any_read(tmp_path, name):
    link = tmp_path / name
    link.symlink_to(ZERO)
    assert_error(invoke("compute", str(link)), str(link), "is a character device, not a file or a pipe")
    assert_error(invoke("inspect", str(link)), str(link), "is a character device")


@needs_dev_zero
@pytest.mark.parametrize("option", ["--labels-file"])
def test_option_files_that_are_devices_are_refused(tmp_path, option):
    paths = seed_files(tmp_path)
    assert_error(invoke("compute", *paths, option, ZERO), option, "is a character device")


@needs_fifo
@pytest.mark.parametrize("command", ["compute", "inspect"])
def test_a_named_pipe_is_read_once(tmp_path, command):
    """A FIFO given as a path is opened once (a second open would wait for a writer forever), and
    reads as the same bytes in a regular file do."""
    paths = seed_files(tmp_path)
    fifo = tmp_path / "pipe" / "query.npy"
    fifo.parent.mkdir()
    os.mkfifo(fifo)
    data = Path(paths[0]).read_bytes()

    def feed() -> None:
        with open(fifo, "wb") as writer:
            writer.write(data)

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    rest = paths[1:] if command == "compute" else []
    through_pipe = invoke(command, str(fifo), *rest, "--format", "json")
    writer.join(timeout=10)
    assert not writer.is_alive(), "attn never read the pipe"
    assert through_pipe.exit_code == 0, through_pipe.output
    from_file = invoke(command, paths[0], *rest, "--format", "json")
    assert through_pipe.stdout.replace(str(fifo), paths[0]) == from_file.stdout


@pytest.mark.slow
@needs_dev_zero
def test_attn_on_dev_zero_through_stdin_exits_2_in_bounded_memory():
    """The real console script, its stdin /dev/zero: one line, status 2, within a second or so of work."""
    env = {**os.environ, "ATTNCLI_MAX_INPUT_SIZE": "64MiB"}
    with open(ZERO, "rb") as endless:
        done = subprocess.run(
            [sys.executable, "-m", "attncli", "compute", "-"],
            stdin=endless,
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("attn: error: <stdin>: more than 64 MiB"), done.stderr
    assert done.stderr.count("\n") == 1


@pytest.mark.parametrize(
    ("text", "expected"), [("2GiB", 2 * 1024**3), ("500MB", 500 * 1000**2), ("1e9", 10**9), ("64 kib", 65536)]
)
def test_the_limit_reads_sizes_as_memory_limit_does(monkeypatch, text, expected):
    monkeypatch.setenv("ATTNCLI_MAX_INPUT_SIZE", text)
    assert source.max_input_bytes() == expected


def test_without_the_variable_the_documented_default_holds(monkeypatch):
    monkeypatch.delenv("ATTNCLI_MAX_INPUT_SIZE", raising=False)
    assert source.max_input_bytes() == 16 * 1024**3


@pytest.mark.slow
def test_a_closed_stdout_pipe_is_success_for_every_command(tmp_path):
    """`attn ... | head -1`: the reader is gone before attn writes; every command ends 0, silently."""
    samples = Path(__file__).resolve().parent.parent / "sample_inputs"
    seed = str(samples / "seed.npz")
    lines = [
        ["--help"],
        ["compute", "--help"],
        ["demo"],
        ["inspect", seed],
        ["diff", seed, str(samples / "seed.safetensors")],
        ["compute", seed, "-o", str(tmp_path / "r.safetensors"), "--export-svg", str(tmp_path / "p.svg")],
    ]
    running = []  # all at once: the start-ups side by side
    for args in lines:
        read_end, write_end = os.pipe()
        os.close(read_end)  # every write to stdout now fails: EPIPE
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", "attncli", *args], stdout=write_end, stderr=subprocess.PIPE, text=True
            )
        finally:
            os.close(write_end)
        running.append((process, args))
    for process, args in running:
        _, stderr = process.communicate(timeout=60)
        assert (process.returncode, stderr) == (0, ""), args
    # The files still land: the rest of the output went to the null device, the run went on.
    assert (tmp_path / "r.safetensors").stat().st_size > 0
    assert (tmp_path / "p.svg").read_text().startswith("<svg")


SEED = str(Path(__file__).resolve().parent.parent / "sample_inputs" / "seed.npz")


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["-o", ""], ["--output: the path is empty"]),
        (["--weights-to", ""], ["--weights-to: the path is empty"]),
        (["--export-svg", ""], ["--export-svg: the path is empty"]),
        (["--export-html", ""], ["--export-html: the path is empty"]),
        (["--labels", ""], ["--labels: no labels given"]),
        (["--labels", "   "], ["--labels: no labels given"]),
    ],
)
def test_empty_paths_and_labels_are_refused_not_ignored(args, words):
    assert_error(invoke("compute", SEED, *args), *words)


def test_the_same_file_for_output_and_weights_is_refused(tmp_path):
    target = tmp_path / "x.safetensors"
    result = invoke("compute", SEED, "-o", str(target), "--weights-to", str(target))
    assert_error(result, "--weights-to", "--output writes the same file")
    assert not target.exists()


@pytest.mark.parametrize("columns", ["0", "1", "5"])
def test_a_width_below_the_minimum_draws_at_the_minimum(columns):
    """COLUMNS=0 printed nothing with status 0; every number still shows at the minimum width."""
    result = invoke("compute", SEED, COLUMNS=columns)
    assert result.exit_code == 0, result.output
    wide = invoke("compute", SEED, COLUMNS="40")
    assert result.stdout == wide.stdout
    with np.load(SEED) as seed:
        weights, output = reference_attention(seed["query"], seed["key"], seed["value"])
    for number in (*weights.ravel(), *output.ravel()):  # every weight and output, to 4 digits
        assert f"{number:.4f}" in result.stdout


def _npy_of_shape(shape_text: str) -> bytes:
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': " + shape_text + ", }"
    header += " " * (127 - 10 - len(header)) + "\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode() + bytes(64)


@pytest.mark.parametrize("command", ["inspect", "diff", "compute"])
def test_a_npy_header_with_a_negative_size_is_refused(tmp_path, command):
    """NumPy's header parser takes shape (-1, 4): inspect said 'size -16 B' and diff called two such
    files equal."""
    path = tmp_path / "negative.npy"
    path.write_bytes(_npy_of_shape("(-1, 4)"))
    args = [str(path), str(path)] if command == "diff" else [str(path)]
    line = assert_error(invoke(command, *args), str(path))
    assert "negative" in line


@pytest.mark.parametrize("option", ["-o", "--weights-to", "--export-svg"])
@pytest.mark.parametrize("where", ["name", "folder", "partial"])
def test_output_names_too_long_are_usage_errors(tmp_path, option, where):
    """'File name too long' was an internal error (70); the temporary .NAME.XXXXXXXX.partial must fit too."""
    suffix = {"-o": ".safetensors", "--weights-to": ".npy", "--export-svg": ".svg"}[option]
    limit = os.pathconf(tmp_path, "PC_NAME_MAX")
    if where == "name":
        target = tmp_path / ("a" * (limit + 10) + suffix)
    elif where == "folder":
        target = tmp_path / ("a" * (limit + 10)) / f"x{suffix}"
    else:  # fits alone, but not with the temporary's prefix and suffix
        target = tmp_path / ("b" * (limit - len(suffix) - 5) + suffix)
    assert_error(invoke("compute", SEED, option, str(target)), option)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full here")
def test_stdout_full_or_closed_is_status_3_with_one_line():
    """`> /dev/full` and `>&-` were internal errors (70); `-q` writes nothing and stays 0. The
    mapping is the command group's, for every command: JSON and Rich tables are written by inspect,
    which starts without torch (compute, which imports it, is the -q case)."""
    base = [sys.executable, "-m", "attncli"]
    cases = [
        ([*base, "inspect", SEED, "--format", "json"], "full", 3, "No space left on device"),
        ([*base, "inspect", SEED], "full", 3, "No space left on device"),
        ([*base, "--help"], "full", 3, "No space left on device"),
        ([*base, "inspect", SEED, "--format", "json"], "closed", 3, "stdout is closed"),
        ([*base, "compute", SEED, "-q"], "closed", 0, ""),
    ]
    running = []  # all at once: five interpreter start-ups side by side, not one after another
    for command, stdout, status, words in cases:
        if stdout == "full":
            with open("/dev/full", "w") as full:
                process = subprocess.Popen(command, stdout=full, stderr=subprocess.PIPE, text=True)
        else:
            process = subprocess.Popen(
                command,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
                preexec_fn=lambda: os.close(1),
            )
        running.append((process, command, stdout, status, words))
    for process, command, stdout, status, words in running:
        _, stderr = process.communicate(timeout=60)
        assert process.returncode == status, (command, stdout, stderr)
        if status:
            assert stderr == f"attn: error: stdout: cannot be written: {words}\n", stderr
        else:
            assert stderr == ""


# --- --max-input-size -----------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["before", "after", "equals"])
def test_the_input_limit_is_an_option_anywhere_on_the_line(tmp_path, monkeypatch, where):
    monkeypatch.delenv(source.LIMIT_VARIABLE, raising=False)
    path = tmp_path / "big.json"
    path.write_text("[" + "0.5," * 4000 + "0.5]")  # 16 kB
    option = ["--max-input-size=10KB"] if where == "equals" else ["--max-input-size", "10KB"]
    args = [*option, "inspect", str(path)] if where == "before" else ["inspect", str(path), *option]
    assert_error(invoke(*args), str(path), "over 9.766 KiB")
    monkeypatch.delenv(source.LIMIT_VARIABLE, raising=False)
    roomy = invoke("inspect", str(path), "--max-input-size", "1MB")
    assert roomy.exit_code == 0, roomy.output
    assert "(4001,)" in roomy.stdout


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--max-input-size"], ["--max-input-size needs a size"]),
        (["--max-input-size", "lots"], ["--max-input-size 'lots' is not a size"]),
        (["--max-input-size", "0"], ["--max-input-size '0' must be a positive size"]),
    ],
)
def test_a_bad_input_limit_is_a_usage_error(tmp_path, monkeypatch, args, words):
    monkeypatch.delenv(source.LIMIT_VARIABLE, raising=False)
    assert_error(invoke("inspect", *seed_files(tmp_path)[:1], *args), *words)


# --- .npz archives: what they declare is checked before anything is inflated --------------------------


def _bomb(path: Path, positions: int) -> None:
    """A deflated archive of zeros: a few KiB on disk that declares `positions` x 64 float32."""
    np.savez_compressed(path, query=np.zeros((positions, 64), np.float32))


@pytest.mark.parametrize("where", ["file", "stdin"])
def test_an_npz_bomb_beyond_the_limit_is_refused_before_inflating(tmp_path, monkeypatch, where):
    path = tmp_path / "bomb.npz"
    _bomb(path, 65_536)  # 16 MiB of zeros in about 16 KiB
    assert path.stat().st_size < 100_000
    inflated = []
    original = loaders.read_npz_member

    def spy(*args, **kwargs):
        inflated.append(args[1].name)
        return original(*args, **kwargs)

    monkeypatch.setattr(loaders, "read_npz_member", spy)
    args, data = ([str(path)], None) if where == "file" else (["-"], path.read_bytes())
    label = str(path) if where == "file" else "<stdin>"
    assert_error(
        invoke("compute", *args, input=data, ATTNCLI_MAX_INPUT_SIZE="1MiB"),
        label,
        "unpacks to 16 MiB, over 1 MiB",
        "--max-input-size",
    )
    assert inflated == []


def test_an_npz_bomb_beyond_available_memory_is_status_3(tmp_path, monkeypatch):
    path = tmp_path / "bomb.npz"
    _bomb(path, 65_536)
    monkeypatch.setattr(source, "available_memory", lambda: 4 << 20)
    assert_error(
        invoke("compute", str(path)), str(path), "unpacks to 16 MiB", "4 MiB of memory available", status=3
    )


def test_an_npz_within_the_limit_is_inflated_exactly(tmp_path):
    rng = np.random.default_rng(3)
    arrays = {
        "query": rng.standard_normal((5, 8)).astype(np.float32),
        "key": np.asfortranarray(rng.standard_normal((5, 8))),
        "value": rng.standard_normal((5, 8)).astype(">f4"),
    }
    np.savez_compressed(tmp_path / "x.npz", **arrays)
    read = loaders.read_tensors(str(tmp_path / "x.npz")).tensors
    with np.load(tmp_path / "x.npz") as expected:
        for name in arrays:
            np.testing.assert_array_equal(read[name], expected[name])
            assert read[name].dtype.isnative


@pytest.mark.parametrize("content", [b"x", b"query,key\n1,2\n", b"PK\x03\x04 cut short"])
def test_an_npz_that_is_not_a_zip_archive_says_so(tmp_path, content):
    path = tmp_path / "x.npz"
    path.write_bytes(content)
    for command in ("compute", "inspect"):
        assert_error(invoke(command, str(path)), str(path), "not a valid .npz file")
    if not content.startswith(b"PK"):  # text: said to be text (tests/test_loaders.py has the cases)
        assert_error(invoke("compute", str(path)), "it is text, not a zip archive")


# --- files changed while they are read -----------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".npy", ".safetensors"])
def test_a_file_cut_short_after_its_header_is_an_error_not_a_fault(tmp_path, suffix):
    """Inputs were mapped: a file truncated while attn read it killed it with SIGBUS (status 135)."""
    from safetensors.numpy import save_file

    from attncli.io import lazy

    path = tmp_path / f"x{suffix}"
    array = np.arange(1 << 20, dtype=np.float32)
    np.save(path, array) if suffix == ".npy" else save_file({"query": array}, str(path))
    tensor = next(iter(lazy.open_tensors(str(path)).tensors.values()))
    os.truncate(path, path.stat().st_size // 2)
    with pytest.raises(InputError, match=str(path)):
        sum(block.size for block in tensor.blocks())


def test_a_npy_header_too_large_for_numpy_is_told_so_not_called_an_object_array(tmp_path):
    """A 5 MB .npy header was 'holds Python objects (an object array)': NumPy's refusal of large
    headers speaks of allow_pickle."""
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }" + " " * (5 << 20) + "\n"
    data = b"\x93NUMPY\x02\x00" + len(header).to_bytes(4, "little") + header.encode() + bytes(48)
    path = tmp_path / "x.npy"
    path.write_bytes(data)
    words = ["not a valid .npy file", f"its header is {len(header):,} bytes", "10,000"]
    for command in ("compute", "inspect"):
        line = assert_error(invoke(command, str(path)), str(path), *words)
        assert "Python objects" not in line
    assert_error(invoke("compute", "-", input=data), "<stdin>", *words)
