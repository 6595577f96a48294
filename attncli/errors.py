"""The errors attncli reports to its users, each with the exit status it ends the program with."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Exit statuses of the `attn` program (docs/exit-codes.md lists them for users)."""

    OK = 0
    #: Reserved for comparisons (`diff`, `--check`): the inputs differ beyond tolerance.
    DIFFERENT = 1
    #: Bad usage or bad input: an option, a path, a file's contents, a shape.
    USAGE = 2
    #: The computation could not run: out of memory, a device failure.
    RUNTIME = 3
    #: A bug in attncli: please report it with the output of `--traceback`.
    INTERNAL = 70
    #: Interrupted by Ctrl-C.
    INTERRUPTED = 130


class AttnError(Exception):
    """An error with a message meant for the user; the CLI prints it as `attn: error: <message>`."""

    exit_code: ExitCode = ExitCode.USAGE


class UsageError(AttnError):
    """The command line itself is wrong: paths, options, their combinations."""


class InputError(AttnError):
    """A file or stdin could not be read as tensors, or holds values attncli refuses."""


class ShapeError(AttnError):
    """Tensors whose shapes do not fit together."""


class ComputeError(AttnError):
    """The computation failed for a reason outside the inputs (memory, device)."""

    exit_code = ExitCode.RUNTIME


class OutputError(AttnError):
    """A result could not be written (disk full, permissions changed while computing)."""

    exit_code = ExitCode.RUNTIME


def escaped(text: str) -> str:
    """`text` with what a terminal would not show as one character escaped, as Python writes it:
    a newline in a tensor name as `\\n`, a lone surrogate from JSON as `\\ud800`, so that a table
    keeps its rows and columns and an error stays one line."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
