"""Where input bytes come from, read once and within a bound: regular files, pipes and stdin.

Every reader of attncli takes its bytes through here, so one limit holds for all of them: at most
`max_input_bytes()` bytes are read into memory from one source (stdin, a pipe, a tensor file, the
members of an .npz archive, a file of labels or texts), in chunks, so that Ctrl-C stops a read at
once. Files that are neither regular files nor pipes (/dev/zero, a terminal, a socket) are refused
before anything is read, and a pipe given as a path is read exactly once (a second open would wait
for a writer forever).
"""

from __future__ import annotations

import io
import os
import stat
from typing import BinaryIO

from attncli.errors import ComputeError, InputError, UsageError

#: What one source may bring into memory unless ATTNCLI_MAX_INPUT_SIZE says otherwise.
DEFAULT_MAX_INPUT_BYTES = 16 << 30
LIMIT_VARIABLE = "ATTNCLI_MAX_INPUT_SIZE"
_CHUNK = 1 << 20
#: Regular files up to this size are read in one call (a second or less: Ctrl-C waits that long).
_WHOLE_READ = 1 << 30
_KINDS = {
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
}


def max_input_bytes() -> int:
    """The bound on the bytes read from one source: ATTNCLI_MAX_INPUT_SIZE ('2GiB', '500MB', '1e9')."""
    from attncli.selection import parse_size

    text = os.environ.get(LIMIT_VARIABLE)
    return DEFAULT_MAX_INPUT_BYTES if not text else parse_size(text, LIMIT_VARIABLE)


def file_kind(path: str, label: str | None = None) -> str:
    """'file' or 'pipe' for what attncli reads by path; an InputError naming anything else.

    `os.stat` follows symbolic links, so a link named z.npy to /dev/zero is told what it points to.
    OSErrors (no such file, a directory, no permission) are left to the caller's own words.
    """
    mode = os.stat(path).st_mode
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISFIFO(mode):
        return "pipe"
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(21, "Is a directory", path)
    kind = _KINDS.get(stat.S_IFMT(mode), "not a regular file")
    raise InputError(
        f"{label or path}: is {kind}, not a file or a pipe; attncli reads regular files, pipes and '-'"
    )


def available_memory() -> int:
    """The bytes attncli may still allocate: MemAvailable from /proc/meminfo (4 GiB where it cannot
    be read), less where an address-space limit (`ulimit -v`) leaves less room than that."""
    available = 4 << 30
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        pass
    return min(available, _address_space_left())


def _address_space_left() -> int:
    try:
        import resource

        limit = resource.getrlimit(resource.RLIMIT_AS)[0]
        if limit == resource.RLIM_INFINITY:
            return 1 << 62
        with open("/proc/self/statm") as statm:
            used = int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (ImportError, OSError, ValueError, IndexError):
        return 1 << 62
    return max(limit - used, 0)


def check_in_memory(nbytes: int, label: str, *, unpacked: bool = False) -> None:
    """Refuse, before a byte of it is read, data larger than the input limit (an InputError) or than
    the memory available (a ComputeError: status 3, as a failed allocation). `unpacked`: the bytes
    an .npz archive declares its members inflate to, which a few MB of zip can make gigabytes."""
    verb = "unpacks to " if unpacked else ""
    limit = max_input_bytes()
    if nbytes > limit:
        raise InputError(f"{label}: {verb}{_size(nbytes)}, over {_the_limit(limit)}")
    available = available_memory()
    if nbytes > available:
        raise ComputeError(
            f"{label}: {verb}{_size(nbytes)}, more than the {_size(available)} of memory available"
        )


def read_bounded(stream: BinaryIO, label: str, limit: int | None = None) -> bytes:
    """Every byte of `stream`, at most `limit` (default `max_input_bytes()`) of them."""
    limit = max_input_bytes() if limit is None else limit
    buffer = io.BytesIO()
    total = 0
    while True:
        chunk = stream.read(min(_CHUNK, limit + 1 - total))
        if not chunk:
            return buffer.getvalue()
        total += len(chunk)
        if total > limit:
            raise InputError(f"{label}: more than {_the_limit(limit)}")
        buffer.write(chunk)


def read_path(path: str, label: str | None = None) -> bytes:
    """The bytes of a regular file or a pipe, read once and within the bound (OSErrors propagate)."""
    label = label or path
    kind = file_kind(path, label)
    limit = max_input_bytes()
    with open(path, "rb") as file:
        if kind == "file":
            size = os.fstat(file.fileno()).st_size
            check_in_memory(size, label)
            if size <= _WHOLE_READ:  # one read, one buffer: no chunks to join (a copy of it all)
                data = file.read(size + 1)
                if len(data) <= size:
                    return data
                file.seek(0)  # it grew meanwhile: read it again, in chunks, within the bound
        return read_bounded(file, label, limit)


def stdin_bytes(stdin: BinaryIO | None, label: str) -> bytes:
    if stdin is None:
        raise UsageError("'-' means stdin, but there is no stdin to read")
    return read_bounded(stdin, label)


def _the_limit(limit: int) -> str:
    """'LIMIT, the most ...; how to read more', the end of every message about the limit."""
    return (
        f"{_size(limit)}, the most attncli reads from one input; give --max-input-size "
        f"(or set {LIMIT_VARIABLE}), e.g. --max-input-size 64GiB, to read more"
    )


def _size(nbytes: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if nbytes >= size:
            return f"{nbytes / size:.4g} {unit}"
    return f"{nbytes} bytes"
