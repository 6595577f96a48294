"""The `attn` application: the command group, its error handling, and what every command shares.

Only the command line reads argv, writes to the terminal and exits; everything else is in plain
modules. torch and NumPy are imported inside the commands that need them, so `attn --help`,
`attn --version` and usage errors start fast.
"""

from __future__ import annotations

import errno
import io
import os
import sys
import traceback
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Any, BinaryIO, NoReturn

import typer
from typer.core import TyperGroup

from attncli import __version__
from attncli.errors import AttnError, ExitCode

if TYPE_CHECKING:
    from rich.console import Console


class AttnGroup(TyperGroup):
    """Maps every failure to one `attn: error: ...` line on stderr and a documented exit status."""

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> NoReturn:
        argv = list(sys.argv[1:] if args is None else args)
        options = argv[: argv.index("--")] if "--" in argv else argv
        show_traceback = "--traceback" in options
        if show_traceback:  # accepted anywhere on the line, before or after the command
            argv.remove("--traceback")
        if sys.stdout is None:  # started with stdout closed (`>&-`): writing to it is an error, not a crash
            sys.stdout = _ClosedStdout()
        try:
            status = super().main(argv, prog_name or "attn", complete_var, standalone_mode=False, **extra)
            sys.stdout.flush()  # a full disk (/dev/full) shows here, inside the mapping below
        except AttnError as error:
            if show_traceback:
                traceback.print_exc()  # then the one line and the documented status, as without it
            fail(str(error), error.exit_code)
        except typer.TyperException as error:  # Click's usage errors: bad options, missing values
            if show_traceback:
                traceback.print_exc()  # then the one line and the documented status, as without it
            message = error.format_message().replace("Value error, ", "").rstrip(".")
            context = getattr(error, "ctx", None)
            if context is not None:
                message += f" (see '{context.command_path} --help')"
            fail(message, getattr(error, "exit_code", ExitCode.USAGE))
        except (KeyboardInterrupt, typer.Abort):
            sys.exit(ExitCode.INTERRUPTED)
        except SystemExit as exit:
            # Rich ends with status 1 when the reader of stdout went away (it points stdout at the
            # null device first); for attn a closed pipe is success, as for `head -1`.
            if exit.code == 1 and _stdout_is_null():
                sys.exit(ExitCode.OK)
            raise
        except BrokenPipeError:
            silence_stdout()
            sys.exit(ExitCode.OK)
        except OSError as error:  # writing stdout failed: a full disk, a closed stream
            if show_traceback:
                traceback.print_exc()
            where = error.filename or "stdout"
            silence_stdout()
            fail(f"{where}: cannot be written: {error.strerror or error}", ExitCode.RUNTIME)
        except Exception as error:
            if show_traceback:
                traceback.print_exc()  # then the one line and the documented status, as without it
            fail(
                f"internal error: {type(error).__name__}: {error} (run again with --traceback and report it)",
                ExitCode.INTERNAL,
            )
        sys.exit(status if isinstance(status, int) else ExitCode.OK)


app = typer.Typer(
    cls=AttnGroup,
    name="attn",
    help="See attention weights in the terminal: compute, show and save attention from tensor files.",
    rich_markup_mode="rich",
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"attncli {__version__}")
        raise typer.Exit()


@app.callback(invoke_without_command=True)
def _root(
    context: typer.Context,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
    show_traceback: Annotated[
        bool, typer.Option("--traceback", help="On an error, show the Python traceback (for bug reports).")
    ] = False,
) -> None:
    """attncli: compute attention from query/key/value files and see its weights.

    [bold]Examples[/]

      attn demo
      attn compute q.npy k.npy v.npy
      cat qkv.json | attn compute --format json
      attn compute x.safetensors --heads 8 --causal -o result.safetensors

    Exit status: 0 success, 2 bad usage or input, 3 could not compute or write, 130 interrupted.
    """
    if context.invoked_subcommand is None:
        typer.echo(context.get_help())


#: Narrower terminals (or COLUMNS) get views this wide: a line too long wraps, a view of width 0 is empty.
MIN_COLUMNS = 40


def console(no_color: bool, record: bool = False, silent: bool = False) -> Console:
    import io

    from rich.console import Console

    if silent:  # render only for an export: same width and colours as the terminal would get
        return Console(
            file=io.StringIO(),
            record=record,
            highlight=False,
            no_color=no_color or None,
            width=max(Console().width, MIN_COLUMNS),
            force_terminal=True,
        )
    shown = Console(highlight=False, no_color=True if no_color else None, record=record)
    if shown.width < MIN_COLUMNS:  # COLUMNS=0 or a sliver of a pane: draw at the minimum, not nothing
        shown.width = MIN_COLUMNS
    return shown


def stdin() -> BinaryIO | None:
    """The binary stdin when something is piped in; None for a terminal or no stdin at all."""
    stream = sys.stdin
    if stream is None or stream.closed:
        return None
    try:
        if stream.isatty():
            return None
    except ValueError:
        return None
    buffer = getattr(stream, "buffer", None)
    return buffer if buffer is not None else None


def warn(message: str) -> None:
    sys.stderr.write(f"attn: warning: {message}\n")


def fail(message: str, status: int) -> NoReturn:
    # One line, whatever a file or tensor name holds: control characters are shown escaped.
    shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)
    sys.stderr.write(f"attn: error: {shown}\n")
    sys.stderr.flush()
    sys.exit(status)


class _ClosedStdout(io.TextIOBase):
    """What stdout is when attn was started without one: every write fails as a closed file's would."""

    def write(self, text: str) -> int:
        raise OSError(errno.EBADF, "stdout is closed")


def _stdout_is_null() -> bool:
    try:
        out, null = os.fstat(sys.stdout.fileno()), os.stat(os.devnull)
    except (OSError, ValueError, AttributeError):
        return False
    return (out.st_dev, out.st_ino, out.st_rdev) == (null.st_dev, null.st_ino, null.st_rdev)


def silence_stdout() -> None:
    """After the reader of our stdout went away, send what is left nowhere instead of failing at exit."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def main() -> None:
    """The `attn` console script (importing attncli.cli, this module's package, registered the commands)."""
    # Back PyTorch's large CPU buffers with transparent huge pages (read when torch is imported):
    # a fresh N x N weights buffer is then faulted in 2 MiB at a time, not 4 KiB (tests/bench).
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    _reuse_freed_buffers()
    app()


def _reuse_freed_buffers() -> None:
    """Let glibc's malloc keep freed buffers of up to 32 MiB for the next allocation instead of
    unmapping them: a blocked computation frees and allocates buffers of the same size for every
    block, and faulting each fresh one in costs more than the softmax over it. Peak memory stays
    the same; the process keeps it until exit."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # malloc.h
    mallopt(m_mmap_threshold, 32 << 20)  # glibc's largest allowed value on 64-bit systems
    mallopt(m_trim_threshold, 1 << 30)
