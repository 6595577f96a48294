"""Where input bytes come from, read once and within a bound: regular files, pipes and stdin.

Every reader of attncli takes its bytes through here, so one limit holds for all of them: at most
`max_input_bytes()` bytes are read into memory from one source (stdin, a pipe, a JSON or .npz file,
a file of labels or texts), in chunks, so that Ctrl-C stops a read at once. Files that are neither
regular files nor pipes (/dev/zero, a terminal, a socket) are refused before anything is read, and
a pipe given as a path is read exactly once (a second open would wait for a writer forever).
"""

from __future__ import annotations

import io
import os
import stat
from typing import BinaryIO

from attncli.errors import InputError, UsageError

#: What one source may bring into memory unless ATTNCLI_MAX_INPUT_SIZE says otherwise.
DEFAULT_MAX_INPUT_BYTES = 16 << 30
LIMIT_VARIABLE = "ATTNCLI_MAX_INPUT_SIZE"
_CHUNK = 1 << 20
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
            raise InputError(
                f"{label}: more than {_size(limit)}, the most attncli reads from one input; "
                f"set {LIMIT_VARIABLE} (e.g. {LIMIT_VARIABLE}=64GiB) to read more"
            )
        buffer.write(chunk)


def read_path(path: str, label: str | None = None) -> bytes:
    """The bytes of a regular file or a pipe, read once and within the bound (OSErrors propagate)."""
    label = label or path
    kind = file_kind(path, label)
    limit = max_input_bytes()
    with open(path, "rb") as file:
        if kind == "file":
            size = os.fstat(file.fileno()).st_size
            if size > limit:
                raise InputError(
                    f"{label}: {_size(size)}, over {_size(limit)}, the most attncli reads from one "
                    f"input; set {LIMIT_VARIABLE} (e.g. {LIMIT_VARIABLE}=64GiB) to read more"
                )
        return read_bounded(file, label, limit)


def stdin_bytes(stdin: BinaryIO | None, label: str) -> bytes:
    if stdin is None:
        raise UsageError("'-' means stdin, but there is no stdin to read")
    return read_bounded(stdin, label)


def _size(nbytes: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if nbytes >= size:
            return f"{nbytes / size:.4g} {unit}"
    return f"{nbytes} bytes"
