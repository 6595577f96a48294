"""What a command writes lands whole and together, or not at all (attncli.io.outputs).

The promise of docs/exit-codes.md: a status of 2 or more leaves every output as it was (new files
absent, old ones unchanged), no temporary file stays, whatever ends the run (an error, Ctrl-C,
SIGTERM, SIGHUP), and a file another program creates meanwhile is never clobbered. Expected
contents are the files as they were before the run, or as np.load/safetensors read them back.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_error
from safetensors.numpy import load_file
from typer.testing import CliRunner

from attncli.cli import app
from attncli.io import outputs, writers

runner = CliRunner()
ATTN = (sys.executable, "-m", "attncli")
SEED = str(Path(__file__).resolve().parent.parent / "sample_inputs" / "seed.npz")


def invoke(*args: str):
    return runner.invoke(app, list(args), env={"COLUMNS": "100", "NO_COLOR": "1"})


def failed(result, *words: str, status: int) -> None:
    """The status and one error line holding `words` (the view may have been printed before)."""
    assert result.exit_code == status, result.output
    lines = str(result.stderr).splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("attn: error: "), lines
    assert all(word in lines[0] for word in words), (words, lines)


def leftovers(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.rglob("*.partial"))


def _failing_temporary(monkeypatch, name: str) -> None:
    """The temporary file of the output called `name` cannot be made: ENOSPC, as on a full disk."""
    real = writers.temporary_beside

    def temporary_beside(target):
        if target.name == name:
            raise OSError(28, "No space left on device")
        return real(target)

    monkeypatch.setattr(writers, "temporary_beside", temporary_beside)


@pytest.mark.parametrize("force", [False, True])
def test_a_failed_export_leaves_the_result_file_as_it_was(tmp_path, monkeypatch, force):
    """-o ok.safetensors --export-svg p.svg on a full disk: status 3, and ok.safetensors had been written
    (with --force, an old one replaced)."""
    target = tmp_path / "ok.safetensors"
    if force:
        target.write_bytes(b"the old result")
    _failing_temporary(monkeypatch, "p.svg")
    args = ["compute", SEED, "-o", str(target), "--export-svg", str(tmp_path / "p.svg")]
    failed(invoke(*args, *(["--force"] if force else [])), "--export-svg", "No space left", status=3)
    assert target.read_bytes() == b"the old result" if force else not target.exists()
    assert not (tmp_path / "p.svg").exists()
    assert leftovers(tmp_path) == []


def test_every_output_lands_when_the_command_succeeds(tmp_path):
    paths = {name: tmp_path / name for name in ("r.safetensors", "w.npy", "p.svg", "p.html")}
    result = invoke(
        "compute",
        SEED,
        "-o",
        str(paths["r.safetensors"]),
        "--weights-to",
        str(paths["w.npy"]),
        "--export-svg",
        str(paths["p.svg"]),
        "--export-html",
        str(paths["p.html"]),
        "--stream",
    )
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(np.load(paths["w.npy"]), load_file(paths["r.safetensors"])["weights"])
    assert paths["p.svg"].read_text().startswith("<svg")
    assert "<html" in paths["p.html"].read_text().lower()
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("number", [signal.SIGTERM, signal.SIGHUP])
@pytest.mark.parametrize("stream", [False, True])
def test_a_terminating_signal_while_writing_leaves_nothing(tmp_path, monkeypatch, number, stream):
    """SIGTERM or SIGHUP during -o left .out.safetensors.*.partial (up to 518 MB) behind."""
    target = tmp_path / "out.npz"
    owner = writers._WeightsWriter if stream else writers
    name = "write_rows" if stream else "_write_npz"
    real = getattr(owner, name)

    def signalled(*args, **kwargs):  # the temporary file exists by now
        assert leftovers(tmp_path), "the signal is meant to come while a temporary file exists"
        os.kill(os.getpid(), number)
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, signalled)
    result = invoke("compute", SEED, "-o", str(target), *(["--stream"] if stream else []))
    assert result.exit_code == 128 + number, result.output
    assert not target.exists()
    assert leftovers(tmp_path) == []
    assert signal.getsignal(number) is signal.SIG_DFL  # the command's handlers are gone after it


def test_a_file_created_meanwhile_is_not_clobbered(tmp_path, monkeypatch):
    target = tmp_path / "r.safetensors"
    real = writers.safetensors_header

    def someone_else_writes(*args, **kwargs):
        target.write_bytes(b"another program's file")
        return real(*args, **kwargs)

    monkeypatch.setattr(writers, "safetensors_header", someone_else_writes)
    result = invoke("compute", SEED, "-o", str(target), "--export-svg", str(tmp_path / "p.svg"))
    failed(result, str(target), "created by another program while attn ran", status=3)
    assert target.read_bytes() == b"another program's file"
    assert not (tmp_path / "p.svg").exists()
    assert leftovers(tmp_path) == []


def test_an_output_that_is_an_input_is_refused_even_through_a_link(tmp_path):
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    source = tmp_path / "qkv.safetensors"
    save_file(
        {name: rng.standard_normal((3, 4)).astype(np.float32) for name in ("query", "key", "value")}, source
    )
    before = source.read_bytes()
    (tmp_path / "link.safetensors").symlink_to(source)
    for output in (source, tmp_path / "link.safetensors"):
        for option in ("-o", "--weights-to"):
            result = invoke("compute", str(source), option, str(output), "--force")
            assert_error(result, str(output), f"is the input {source}")
    assert source.read_bytes() == before


def test_two_options_naming_one_file_through_a_link_are_refused(tmp_path):
    (tmp_path / "alias.html").symlink_to(tmp_path / "p.svg")
    result = invoke(
        "compute",
        SEED,
        "--export-svg",
        str(tmp_path / "p.svg"),
        "--export-html",
        str(tmp_path / "alias.html"),
    )
    assert_error(result, "--export-html", "--export-svg writes the same file")


def test_outside_a_command_files_are_written_at_once(tmp_path):
    """The library (attncli.io.writers without the CLI) writes each file when asked, as before."""
    writers.write_text(tmp_path / "a.svg", "<svg/>", option="--export-svg")
    assert (tmp_path / "a.svg").read_text() == "<svg/>"
    with outputs.all_or_nothing() as written:
        writers.write_text(tmp_path / "b.svg", "<svg/>", option="--export-svg")
        assert not (tmp_path / "b.svg").exists()
        written.commit()
    assert (tmp_path / "b.svg").read_text() == "<svg/>"
    with outputs.all_or_nothing():
        writers.write_text(tmp_path / "c.svg", "<svg/>", option="--export-svg")
    assert not (tmp_path / "c.svg").exists()  # never committed: removed
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("suffix", [".svg", ".safetensors"])
def test_a_signal_the_moment_a_temporary_file_is_made_leaves_nothing(tmp_path, monkeypatch, suffix):
    """A signal raised between the making of a temporary file and its writer knowing its name (the
    race a SIGTERM from outside once hit in CI): the name was noted first, so nothing stays."""
    import os

    real_open = os.open

    def open_then_interrupted(path, flags, mode=0o777):
        os.close(real_open(path, flags, mode))
        raise KeyboardInterrupt

    def write() -> None:
        if suffix == ".svg":
            writers.write_text(tmp_path / "p.svg", "<svg/>", option="--export-svg")
        else:
            writers.WeightsFile(tmp_path / "w.safetensors", (4, 4), np.dtype(np.float32), {})

    monkeypatch.setattr(os, "open", open_then_interrupted)
    with pytest.raises(KeyboardInterrupt), outputs.all_or_nothing():
        write()
    monkeypatch.undo()
    assert leftovers(tmp_path) == []
    assert list(tmp_path.iterdir()) == []


def test_a_signal_while_outputs_take_their_places_waits_until_all_have(tmp_path, monkeypatch):
    """SIGTERM between two outputs taking their places: both land (the command had succeeded), and the
    signal then reaches the command's handler; never one file placed and the other lost."""

    class StoppedError(Exception):
        pass

    def stop(number, frame):
        raise StoppedError

    real_place = outputs._place

    def place_then_signalled(*args):
        real_place(*args)
        signal.raise_signal(signal.SIGTERM)

    (tmp_path / "old.svg").write_text("old")
    previous = signal.signal(signal.SIGTERM, stop)
    try:
        with outputs.all_or_nothing() as written:
            writers.check_output_path(tmp_path / "new.svg", option="--export-svg", suffixes=(".svg",))
            writers.check_output_path(
                tmp_path / "old.svg", option="--export-html", suffixes=(".svg",), force=True
            )
            writers.write_text(tmp_path / "new.svg", "<svg/>", option="--export-svg")
            writers.write_text(tmp_path / "old.svg", "<svg2/>", option="--export-html")
            monkeypatch.setattr(outputs, "_place", place_then_signalled)
            with pytest.raises(StoppedError):
                written.commit()
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert (tmp_path / "new.svg").read_text() == "<svg/>"
    assert (tmp_path / "old.svg").read_text() == "<svg2/>"
    assert leftovers(tmp_path) == []


@pytest.mark.slow
def test_sigterm_from_outside_ends_143_and_leaves_nothing(tmp_path):
    """A real SIGTERM to a real process in the middle of a long run in blocks."""
    rng = np.random.default_rng(1)
    np.save(tmp_path / "x.npy", rng.standard_normal((2, 4096, 64)).astype(np.float32))
    target = tmp_path / "out.safetensors"
    process = subprocess.Popen(
        [*ATTN, "compute", str(tmp_path / "x.npy"), "-o", str(target), "--stream", "-q"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    started = time.monotonic()
    while not leftovers(tmp_path) and process.poll() is None and time.monotonic() - started < 60:
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    if process.returncode == 0:
        pytest.skip("the run ended before the signal came")
    assert process.returncode == 128 + signal.SIGTERM, stderr
    assert not target.exists()
    assert leftovers(tmp_path) == []


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="address-space limits as Linux has them")
def test_json_output_under_an_address_space_limit_is_written_whole(tmp_path):
    """Under `ulimit -v 1100000` orjson crashed (139) writing the JSON of 6000 positions and left a
    .partial. Now JSON of 600 positions is written whole and right under that limit (that the text
    is made a piece at a time is test_writers' test_json_is_written_a_piece_at_a_time_...; the run
    of 6000 positions takes 400 MB, too long for the suite), and weights that do not fit the address
    space left are refused before computing (test_the_address_space_left_bounds_the_memory_available)."""
    import json
    import resource

    from reference import reference_attention

    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (1_100_000 * 1024, resource.RLIM_INFINITY))

    x = np.random.default_rng(3).standard_normal((600, 16)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    target = tmp_path / "r.json"
    done = subprocess.run(
        [*ATTN, "compute", str(tmp_path / "x.npy"), "-o", str(target), "-q"],
        stderr=subprocess.PIPE,
        text=True,
        timeout=120,
        preexec_fn=limited,
    )
    assert (done.returncode, done.stderr) == (0, "")
    assert leftovers(tmp_path) == []
    weights, _ = reference_attention(x, x, x)
    document = json.loads(target.read_text())
    np.testing.assert_allclose(np.array(document["weights"]), weights, rtol=1e-5, atol=1e-7)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="address-space limits as Linux has them")
def test_the_address_space_left_bounds_the_memory_available():
    """MemAvailable alone ignored `ulimit -v`: plans and size checks counted on memory the process
    could not map. The limit is set just above what this process maps, and put back at once."""
    import resource

    from attncli.io import source

    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/statm") as statm:
        mapped = int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    room = 64 << 20
    resource.setrlimit(resource.RLIMIT_AS, (mapped + room, hard))
    try:
        available = source.available_memory()
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    assert 0 < available <= room
    assert source.available_memory() > room  # the limit gone, MemAvailable again
