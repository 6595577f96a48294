"""The files one command writes: all of them, or none.

Every writer of attncli (io/writers.py) writes a file to a temporary name beside its target and
hands it to `publish` once complete. Outside `all_or_nothing()` it is renamed over the target at
once; inside (the CLI runs each command so) it waits, complete, until the command has succeeded,
and then all of them take their places (`Outputs.commit`); on an error, Ctrl-C or a terminating
signal none does, and the temporary files are removed. A target that did not exist when
`writers.check_output_path` saw it is never replaced: one that another program made meanwhile is
an error, left as it is. An output that another output, or one of the inputs, also names (through
any link) is refused before any work is done.

No NumPy here: the CLI imports this module for every command, `--help` included.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from attncli.errors import OutputError, UsageError


@dataclass
class Outputs:
    """The files of one command: each waits, complete, beside its target until `commit`."""

    staged: list[tuple[str, Path, str]] = field(default_factory=list)  # (temporary, target, option)
    pending: set[str] = field(default_factory=set)  # temporary files being written, named before made
    replaceable: set[str] = field(default_factory=set)  # real paths --force may replace
    claimed: dict[str, str] = field(default_factory=dict)  # real path -> the option that names it
    inputs: dict[tuple[int, int], str] = field(default_factory=dict)  # (device, inode) -> input
    existing: dict[tuple[int, int], tuple[str, Path]] = field(default_factory=dict)  # -> (option, target)

    def commit(self) -> None:
        """Every staged file into its place: first those that create a file (the ones that can fail,
        should another program have made the target meanwhile), then those that replace one. Ctrl-C,
        SIGTERM and SIGHUP wait until every file is in place (or none is): a signal in between would
        leave some placed and the replaced ones lost."""
        staged = sorted(self.staged, key=lambda entry: os.path.realpath(entry[1]) in self.replaceable)
        done: list[Path] = []
        with _signals_held():
            try:
                for temporary, target, option in staged:
                    _place(temporary, target, option, os.path.realpath(target) in self.replaceable)
                    done.append(target)
            except BaseException:
                for target in done:  # created by this command a moment ago: nobody else's file
                    if os.path.realpath(target) not in self.replaceable:
                        target.unlink(missing_ok=True)
                self.discard()
                raise
            self.staged.clear()

    def discard(self) -> None:
        for temporary in [*self.pending, *(entry[0] for entry in self.staged)]:
            Path(temporary).unlink(missing_ok=True)
        self.pending.clear()
        self.staged.clear()


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Ctrl-C, SIGTERM and SIGHUP that come during the block are noted and raised again after it.
    Python runs signal handlers in the main thread alone (and a thread's signal mask would not do:
    the kernel hands a signal to any thread not masking it, torch's among them), so this holds them
    there and leaves other threads' blocks as they are."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    numbers = [getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)]
    came: list[int] = []
    previous = {}
    for number in numbers:
        if signal.getsignal(number) is not None:  # None: a handler not set from Python, not ours to swap
            previous[number] = signal.signal(number, lambda number, _: came.append(number))
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        for number in dict.fromkeys(came):
            signal.raise_signal(number)  # now, to the handler the command had


_outputs: contextvars.ContextVar[Outputs | None] = contextvars.ContextVar("attncli_outputs", default=None)


@contextlib.contextmanager
def all_or_nothing() -> Iterator[Outputs]:
    """Hold back every file written inside the block; the caller commits them (`Outputs.commit`)
    once it knows the command succeeded. Whatever is not committed is removed when the block ends,
    also on an exception or a signal turned into one."""
    outputs = Outputs()
    token = _outputs.set(outputs)
    try:
        yield outputs
    finally:
        _outputs.reset(token)
        outputs.discard()


def note_inputs(paths: Collection[str]) -> None:
    """The files the command reads: an output that is one of them (through any link) is refused,
    whether `check_output_path` saw it before or after."""
    outputs = _outputs.get()
    if outputs is None:
        return
    for path in paths:
        key = _file_key(path)
        if key is None:
            continue
        if key in outputs.existing:
            option, target = outputs.existing[key]
            raise UsageError(f"{option} {target}: is the input {path}; write the result to another file")
        outputs.inputs[key] = path


def _file_key(path: str | os.PathLike[str]) -> tuple[int, int] | None:
    try:
        info = os.stat(path)
    except (OSError, ValueError):
        return None
    return (info.st_dev, info.st_ino) if os.path.isfile(path) else None


def claim(target: Path, option: str, *, replace: bool) -> None:
    """`target` is written by `option` (`replace`: it exists, and --force allows replacing it)."""
    outputs = _outputs.get()
    if outputs is None:
        return
    real = os.path.realpath(target)
    other = outputs.claimed.get(real)
    if other is not None:
        raise UsageError(f"{option} {target}: {other} writes the same file; give each output its own path")
    key = _file_key(target) if replace else None
    if key is not None:
        if key in outputs.inputs:
            raise UsageError(
                f"{option} {target}: is the input {outputs.inputs[key]}; write the result to another file"
            )
        outputs.existing[key] = (option, target)
        outputs.replaceable.add(real)
    outputs.claimed[real] = option


#: The characters of a temporary file's random part (tempfile.mkstemp's).
_NAME_CHARACTERS = "abcdefghijklmnopqrstuvwxyz0123456789_"


def temporary_beside(target: Path) -> tuple[int, str]:
    """A new empty file `.NAME.XXXXXXXX.partial` beside `target`, open for reading and writing
    (mode 0600): its descriptor and path. Within `all_or_nothing` its name is noted before the file
    is made, so that a signal raised at any moment, even before the caller holds the name, leaves
    nothing behind; an error before it is published is the caller's to clean up, as ever."""
    outputs = _outputs.get()
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        # os.urandom, not the secrets module, whose import (hmac, hashlib) costs `attn --help` 5 ms
        suffix = "".join(_NAME_CHARACTERS[byte % len(_NAME_CHARACTERS)] for byte in os.urandom(8))
        path = os.path.join(target.parent, f".{target.name}.{suffix}.partial")
        if outputs is not None:
            outputs.pending.add(path)
        try:
            return os.open(path, flags, 0o600), path
        except FileExistsError:  # another's file of that name: not ours to remove
            if outputs is not None:
                outputs.pending.discard(path)
        # Any other exception, a signal's included, keeps the name noted: the file may exist.
    raise FileExistsError(17, f"no free temporary name beside {target}")


def publish(temporary: str, target: Path, option: str) -> None:
    """The complete file `temporary` in place of `target`: at once, or, within `all_or_nothing`,
    when its outputs are committed (until then it stays where it is)."""
    outputs = _outputs.get()
    if outputs is None:
        os.replace(temporary, target)
    else:
        outputs.staged.append((temporary, target, option))
        outputs.pending.discard(temporary)


def _place(temporary: str, target: Path, option: str, replace: bool) -> None:
    """Rename `temporary` over `target` where it may be replaced; otherwise link it there, which
    fails rather than clobber a file another program made meanwhile."""
    try:
        if replace:
            os.replace(temporary, target)
            return
        made_meanwhile = OutputError(
            f"{option} {target}: the file was created by another program while attn ran; it is "
            "left as it is (add --force to replace it)"
        )
        try:
            os.link(temporary, target)
        except FileExistsError:
            raise made_meanwhile from None
        except OSError:  # a file system without hard links: a rename, after a last look
            if target.exists():
                raise made_meanwhile from None
            os.replace(temporary, target)
            return
        os.unlink(temporary)
    except OSError as error:
        raise OutputError(f"{option} {target}: could not be written: {error.strerror or error}") from None
