from __future__ import annotations

import functools
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer.testing

try:
    import fcntl
except ImportError:  # not POSIX: slow tests are not kept apart there
    fcntl = None

sys.path.insert(0, str(Path(__file__).parent))  # tests/reference.py, importable as `reference`

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "sample_inputs"

# typer's CliRunner builds the Click command from the app on every invoke, which takes longer than
# most of the tests' commands: build attn's once per test process, as `attn` does once per run.
if hasattr(typer.testing, "_get_command"):
    typer.testing._get_command = functools.cache(typer.testing._get_command)

# --- parallel runs (pytest-xdist) ---------------------------------------------------------------
# A run of folders (`pytest`, `make test`, `pytest tests`) runs in a process per CPU, up to 4, each
# test file in one of them (--dist loadfile: a module's fixtures are made once, its tests run in
# order). Named files or tests, --pdb and -s run in this one process, as do -n 0 and -p no:xdist;
# -n and --dist choose otherwise. Tests marked slow (subprocesses that measure memory or time, a
# signal, large inputs) run one at a time even then: see _one_slow_test_at_a_time.
# (xdist_group marks would not do: --dist loadgroup ignores them with pytest 9.2, pytest-xdist#1386.)

MAX_WORKERS = 4  # each worker collects the suite again, and none can split the largest file


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


# Each worker gets its share of the CPUs for torch's and NumPy's threads (and the commands that the
# tests start), rather than all workers a thread per CPU each; OMP_NUM_THREADS set beforehand stays.
if "PYTEST_XDIST_WORKER_COUNT" in os.environ and "OMP_NUM_THREADS" not in os.environ:
    os.environ["OMP_NUM_THREADS"] = str(max(1, _cpus() // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))


@pytest.hookimpl(tryfirst=True)  # before xdist's, which reads these options
def pytest_cmdline_main(config: pytest.Config) -> None:
    if not config.pluginmanager.hasplugin("xdist") or hasattr(config, "workerinput"):
        return
    option = config.option
    folders = all(Path(config.invocation_params.dir, arg).is_dir() for arg in config.args)
    interactive = option.usepdb or option.capture == "no"
    if option.numprocesses is None and folders and not interactive and not option.collectonly:
        option.numprocesses = min(_cpus(), MAX_WORKERS) if _cpus() > 1 else 0
    if option.numprocesses and option.dist == "no" and not option.distload:
        option.dist = "loadfile"


# xdist hands out files largest first by their number of tests, so a file of one long test comes last
# and runs alone while the other workers have finished: these start first instead. The memory test
# of `attn capture` is one test of 9-11 s (16 under load), which came last and ended the run 5-8 s
# after the other worker.
LONG_FILES_FIRST = ("test_capture_memory.py",)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    if config.option.dist != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class LongFilesFirst(LoadFileScheduling):
        def _assign_work_unit(self, node: Any) -> None:
            for name in reversed(LONG_FILES_FIRST):
                for scope in [scope for scope in self.workqueue if Path(scope).name == name]:
                    self.workqueue.move_to_end(scope, last=False)
            super()._assign_work_unit(node)

    return LongFilesFirst(config, log)


@pytest.fixture(autouse=True)
def _one_slow_test_at_a_time(request: pytest.FixtureRequest) -> Iterator[None]:
    """Under xdist, a slow test holds a lock that the other workers' slow tests wait for."""
    slow = request.node.get_closest_marker("slow") is not None
    if not slow or "PYTEST_XDIST_WORKER" not in os.environ or fcntl is None:
        yield
        return
    # Each worker's base temporary folder is a subfolder of the run's.
    root = request.getfixturevalue("tmp_path_factory").getbasetemp().parent
    with (root / "slow-tests.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        yield


@pytest.fixture(autouse=True)
def _no_input_limit_left_behind() -> Iterator[None]:
    """`--max-input-size` sets ATTNCLI_MAX_INPUT_SIZE for the rest of its process, as it should for
    one run of `attn`; in-process runs (CliRunner) must not hand it to the next test."""
    before = os.environ.get("ATTNCLI_MAX_INPUT_SIZE")
    yield
    if before is None:
        os.environ.pop("ATTNCLI_MAX_INPUT_SIZE", None)
    else:
        os.environ["ATTNCLI_MAX_INPUT_SIZE"] = before


@pytest.fixture
def samples() -> Path:
    return SAMPLES
