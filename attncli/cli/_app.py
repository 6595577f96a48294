"""The `attn` application: the command group, its error handling, and what every command shares.

Only the command line reads argv, writes to the terminal and exits; everything else is in plain
modules. torch and NumPy are imported inside the commands that need them, so `attn --help`,
`attn --version` and usage errors start fast.
"""

from __future__ import annotations

import contextlib
import errno
import inspect
import io
import os
import sys
import traceback
from collections.abc import Iterator, Sequence
from enum import Enum
from typing import TYPE_CHECKING, Annotated, Any, BinaryIO, NoReturn

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

from attncli import __version__
from attncli.errors import AttnError, ExitCode, UsageError, escaped

if TYPE_CHECKING:
    from rich.console import Console
    from typer._click.core import Context, Parameter  # Typer's own Click, which its classes use

    from attncli.io.outputs import Outputs


class AttnGroup(TyperGroup):
    """Maps every failure to one `attn: error: ...` line on stderr and a documented exit status."""

    def get_params(self, ctx: Context) -> list[Parameter]:
        return _plain(super().get_params(ctx))

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
        try:
            argv = _take_input_limit(argv)
        except AttnError as error:
            fail(str(error), error.exit_code)
        _guard_standard_streams()
        from attncli.io.outputs import all_or_nothing

        # Every file the command writes waits, complete, until it has succeeded (attncli.io.outputs).
        with all_or_nothing() as written, _terminating_signals():
            try:
                status = super().main(argv, prog_name or "attn", complete_var, standalone_mode=False, **extra)
                sys.stdout.flush()  # a full disk (/dev/full) shows here, inside the mapping below
                if status in (None, ExitCode.OK, ExitCode.DIFFERENT):  # a result, not a failure
                    written.commit()
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
            except Terminated as signal_:  # SIGTERM, SIGHUP: nothing written stays, as for Ctrl-C
                sys.exit(128 + signal_.number)
            except SystemExit as exit:
                # Rich ends with status 1 when the reader of stdout went away (it points stdout at the
                # null device first); for attn a closed pipe is success, as for `head -1`.
                if exit.code == 1 and _stdout_is_null():
                    _commit(written, show_traceback)
                    sys.exit(ExitCode.OK)
                raise
            except BrokenPipeError:  # a stdout attn did not wrap (see _WholeWrites)
                silence_stdout()
                _commit(written, show_traceback)
                sys.exit(ExitCode.OK)
            except OSError as error:  # writing stdout failed: a full disk, a closed stream
                if show_traceback:
                    traceback.print_exc()
                if error.errno == errno.ENOMEM:  # e.g. mapping torch's libraries under `ulimit -v`
                    fail(f"out of memory: {error.strerror}; {_LESS_MEMORY}", ExitCode.RUNTIME)
                where = error.filename or "stdout"
                silence_stdout()
                fail(f"{where}: cannot be written: {error.strerror or error}", ExitCode.RUNTIME)
            except MemoryError as error:  # NumPy's, Python's or the JSON writer's (torch's below)
                if show_traceback:
                    traceback.print_exc()
                fail(f"out of memory{f': {error}' if str(error) else ''}; {_LESS_MEMORY}", ExitCode.RUNTIME)
            except Exception as error:
                if show_traceback:
                    traceback.print_exc()  # then the one line and the documented status, as without it
                if _is_allocation_failure(error):
                    fail(f"out of memory: {error_line(error)}; {_LESS_MEMORY}", ExitCode.RUNTIME)
                report = "run again with --traceback and report it"
                fail(f"internal error: {type(error).__name__}: {error} ({report})", ExitCode.INTERNAL)
            sys.exit(status if isinstance(status, int) else ExitCode.OK)


class _PlainOption(TyperOption):
    """An option as help shows it: a flag alone (`--causal`, not `--causal <bool>`), a value by
    its metavar (`--scale NUMBER`, `--view table|heatmap|grid`), not a Python type in brackets."""

    def display_type_rich(self, ctx: Context) -> str | None:
        if self.metavar is not None:
            return self.metavar
        if self.is_flag:
            return None
        label = str(self.display_type(ctx)).strip("<>")
        return _METAVARS.get(label, label)


_METAVARS = {"int": "N", "int range": "N", "float": "NUMBER", "float range": "NUMBER", "str": "TEXT"}


class _PlainArgument(TyperArgument):
    """An argument as help shows it: by its metavar alone (`FILE`, `[QUERY KEY VALUE | FILE]`),
    without Typer's `<list[str]>` and `[[...]]...`."""

    def display_type_rich(self, ctx: Context) -> str | None:
        return None

    def get_usage_pieces(self, ctx: Context) -> list[str]:
        name = self.display_name_raw
        return [name if self.required or name.startswith("[") else f"[{name}]"]


def _plain(params: list[Parameter]) -> list[Parameter]:
    """`params` (Typer's, made from the annotations) drawn as above in help and usage lines."""
    for param in params:
        if type(param) is TyperOption:
            param.__class__ = _PlainOption
        elif type(param) is TyperArgument:
            param.__class__ = _PlainArgument
    return params


def reflowed(help_text: str | None) -> str | None:
    """A docstring as help: the lines of each paragraph joined (Rich wraps them to the terminal;
    Typer's rich mode would keep each line break and wrap again, leaving ragged lines), except in
    paragraphs of indented lines, such as examples, which stay as written."""
    if not help_text:
        return help_text
    paragraphs = inspect.cleandoc(help_text).split("\n\n")
    return "\n\n".join(
        paragraph
        if any(line[:1].isspace() for line in paragraph.splitlines())
        else " ".join(line.strip() for line in paragraph.splitlines())
        for paragraph in paragraphs
    )


class AttnCommand(TyperCommand):
    """An attn command: its help reflowed, its parameters as a user types them (_PlainOption)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.help = reflowed(self.help)

    def get_params(self, ctx: Context) -> list[Parameter]:
        return _plain(super().get_params(ctx))


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
    max_input_size: Annotated[
        str | None,
        typer.Option(
            INPUT_LIMIT_OPTION,
            metavar="SIZE",
            help="Read at most SIZE (e.g. 64GiB) from any one input; default 16GiB, or "
            "ATTNCLI_MAX_INPUT_SIZE. Accepted anywhere on the line.",
        ),
    ] = None,
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


class ColorMode(str, Enum):
    """--color: auto colours a terminal (unless NO_COLOR is set; FORCE_COLOR colours a pipe too),
    always colours any output (`attn ... | less -R`), never colours nor styles anything."""

    auto = "auto"
    always = "always"
    never = "never"


def console(color: ColorMode, record: bool = False, silent: bool = False) -> Console:
    """The console a command prints to; `silent`: one that only records, for an export."""
    import io

    from rich.console import Console

    never = color is ColorMode.never
    if silent:  # render only for an export: same width and colours as the terminal would get
        return Console(
            file=io.StringIO(),
            record=record,
            highlight=False,
            no_color=never or None,
            width=max(Console().width, MIN_COLUMNS),
            force_terminal=True,
        )
    forced = {ColorMode.always: True, ColorMode.never: False}.get(color)  # None: Rich's own choice
    shown = Console(
        highlight=False,
        no_color={ColorMode.always: False, ColorMode.never: True}.get(color),
        force_terminal=forced,
        record=record,
    )
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


def note(message: str | None) -> None:
    """A hint about a choice that may be a mistake (the numbers are what was asked); on stderr
    as warnings are, with -q too. None: nothing."""
    if message:
        sys.stderr.write(f"attn: note: {escaped(message)}\n")


def _commit(written: Outputs, show_traceback: bool) -> None:
    try:
        written.commit()
    except AttnError as error:
        if show_traceback:
            traceback.print_exc()
        fail(str(error), error.exit_code)


class Terminated(BaseException):
    """SIGTERM or SIGHUP, raised where the program is, so that everything unwinds as for Ctrl-C:
    no temporary file stays and no output is put in place. Not an Exception, so that no
    `except Exception` on the way takes it for an error."""

    def __init__(self, number: int) -> None:
        super().__init__(number)
        self.number = number


@contextlib.contextmanager
def _terminating_signals() -> Iterator[None]:
    """SIGTERM and SIGHUP raise `Terminated` while the command runs (then the old handlers again)."""
    import signal

    def terminate(number: int, _: object) -> None:
        raise Terminated(number)

    wanted = [getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name)]
    previous = {}
    try:
        for number in wanted:
            previous[number] = signal.signal(number, terminate)
    except ValueError:  # not the main thread: signals are not ours to handle
        pass
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def specs_or_stdin(paths: Sequence[str] | None, no_input: str) -> tuple[list[str], BinaryIO | None]:
    """The paths a command was given, or '-' when it was given none and stdin is a pipe or a file;
    a UsageError saying `no_input` when there is neither. Returns them with stdin."""
    specs = list(paths or [])
    given = stdin()
    if not specs:
        if given is None:
            raise UsageError(no_input)
        specs = ["-"]
    return specs, given


def fail(message: str, status: int) -> NoReturn:
    sys.stderr.write(f"attn: error: {escaped(message)}\n")  # one line, whatever a name holds
    sys.stderr.flush()
    sys.exit(status)


INPUT_LIMIT_OPTION = "--max-input-size"


def _take_input_limit(argv: list[str]) -> list[str]:
    """`--max-input-size SIZE` (or `=SIZE`), anywhere on the line as --traceback is, taken out of
    `argv` into the variable every reader consults (attncli.io.source), after checking SIZE."""
    from attncli.io.source import LIMIT_VARIABLE

    end = argv.index("--") if "--" in argv else len(argv)
    for index, arg in enumerate(argv[:end]):
        if arg == INPUT_LIMIT_OPTION or arg.startswith(INPUT_LIMIT_OPTION + "="):
            given = arg.partition("=")[2] if "=" in arg else None
            if given is None:
                if index + 1 >= end:
                    raise UsageError(f"{INPUT_LIMIT_OPTION} needs a size, e.g. {INPUT_LIMIT_OPTION} 64GiB")
                given = argv[index + 1]
            from attncli.selection import parse_size

            parse_size(given, INPUT_LIMIT_OPTION)
            os.environ[LIMIT_VARIABLE] = given
            rest = argv[index + (1 if "=" in arg else 2) :]
            return argv[:index] + _take_input_limit(rest)
    return argv


_LESS_MEMORY = "use fewer positions, heads or batch entries, a smaller --dtype, or a lower --memory-limit"


def _is_allocation_failure(error: Exception) -> bool:
    """torch's allocators fail with a RuntimeError (CUDA's with its OutOfMemoryError subclass)."""
    text = str(error)
    return isinstance(error, RuntimeError) and (
        type(error).__name__ == "OutOfMemoryError"
        or "can't allocate memory" in text
        or "out of memory" in text.lower()
    )


def error_line(error: BaseException) -> str:
    """The first line of an exception's message (torch's carry C++ frames below it)."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def _guard_standard_streams() -> None:
    """Make stdout report every failed write, and a closed stdout or stderr harmless to the rest.

    Python's text stdout drops what a short write left over (a file grown to `ulimit -f`, where the
    next write would fail with EFBIG): exit 0 with a truncated file. Writes go through `_WholeWrites`
    instead, which writes all or raises. A closed stderr (`2>&-`) swallows messages, keeping the
    status; a closed stdout (`>&-`) fails every write, as a full one does (status 3)."""
    if sys.stderr is None:
        sys.stderr = open(os.devnull, "w")  # noqa: SIM115 (open for the life of the process)
    if sys.stdout is None:
        sys.stdout = _ClosedStdout()
        return
    stream = sys.stdout
    try:
        descriptor = stream.fileno()
    except (OSError, ValueError, AttributeError):  # replaced already (tests, a capturing runner)
        return
    if not isinstance(stream, io.TextIOWrapper) or stream.name != "<stdout>":
        return
    stream.flush()
    sys.stdout = io.TextIOWrapper(
        io.BufferedWriter(_WholeWrites(descriptor)),
        encoding=stream.encoding,
        # What the encoding cannot write is shown escaped, as a lone surrogate from a JSON name
        # ("\ud800"), not a crash; an error line escapes it the same way (see `fail`).
        errors="backslashreplace",
        line_buffering=stream.line_buffering,
        write_through=stream.write_through,
    )


class _WholeWrites(io.RawIOBase):
    """A file descriptor written in full, write after write, until a write fails with OSError.

    When the reader of a pipe goes away (`attn ... | head -1`), what is left to print goes to the
    null device and the command goes on to its end: its files (-o, --export-svg) are still written
    and the status is 0, as for a reader that read everything."""

    def __init__(self, descriptor: int) -> None:
        self.descriptor = descriptor

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self.descriptor

    def isatty(self) -> bool:
        return os.isatty(self.descriptor)

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        try:
            while view:
                view = view[os.write(self.descriptor, view) :]
        except BrokenPipeError:
            silence_stdout()
        return len(data) if isinstance(data, bytes | bytearray) else memoryview(data).nbytes

    def close(self) -> None:  # the descriptor is the process's stdout: leave it open
        super().close()


class _ClosedStdout(io.TextIOBase):
    """What stdout is when attn was started without one: every write fails as a closed file's would,
    of text or (through `buffer`) of bytes."""

    def write(self, text: str) -> int:
        raise OSError(errno.EBADF, "stdout is closed")

    @property
    def buffer(self) -> BinaryIO:
        return _ClosedBytes()  # type: ignore[return-value]


class _ClosedBytes(io.RawIOBase):
    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
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
