"""The `attn` command line: the only module that reads argv, writes to the terminal and exits.

Each command is load -> compute -> write -> render. torch and NumPy are imported inside the
commands that need them, so `attn --help`, `attn --version` and usage errors start fast.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Sequence
from enum import Enum
from typing import TYPE_CHECKING, Annotated, Any, BinaryIO, NoReturn

import typer
from typer.core import TyperGroup

from attncli import __version__
from attncli.errors import AttnError, ExitCode, UsageError

if TYPE_CHECKING:
    from rich.console import Console

    from attncli.core import AttentionResult


class DType(str, Enum):
    auto = "auto"
    float32 = "float32"
    float64 = "float64"
    float16 = "float16"
    bfloat16 = "bfloat16"


class OutputFormat(str, Enum):
    table = "table"
    json = "json"


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
        try:
            status = super().main(argv, prog_name or "attn", complete_var, standalone_mode=False, **extra)
        except AttnError as error:
            if show_traceback:
                raise
            _fail(str(error), error.exit_code)
        except typer.TyperException as error:  # Click's usage errors: bad options, missing values
            if show_traceback:
                raise
            message = error.format_message().replace("Value error, ", "").rstrip(".")
            context = getattr(error, "ctx", None)
            if context is not None:
                message += f" (see '{context.command_path} --help')"
            _fail(message, getattr(error, "exit_code", ExitCode.USAGE))
        except (KeyboardInterrupt, typer.Abort):
            sys.exit(ExitCode.INTERRUPTED)
        except BrokenPipeError:
            _silence_stdout()
            sys.exit(ExitCode.OK)
        except Exception as error:
            if show_traceback:
                raise
            _fail(
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


def _check_scale(value: float | None) -> float | None:
    if value is not None and (not math.isfinite(value) or value == 0):
        raise typer.BadParameter(f"must be a finite, non-zero number, not {value}")
    return value


PathsArgument = Annotated[
    list[str] | None,
    typer.Argument(
        metavar="[QUERY KEY VALUE | FILE]",
        help="Three tensor files, or one holding query/key/value (or one tensor for self-attention). "
        "PATH:NAME picks a tensor from a file; '-' or no path reads stdin.",
        show_default=False,
    ),
]
PrecisionOption = Annotated[
    int, typer.Option("--precision", min=0, max=12, help="Digits after the decimal point in tables.")
]
NoColorOption = Annotated[
    bool,
    typer.Option("--no-color", help="No colours (also when NO_COLOR is set or output is not a terminal)."),
]


@app.command()
def compute(
    paths: PathsArgument = None,
    scale: Annotated[
        float | None,
        typer.Option(
            callback=_check_scale, help="Multiply scores by this. Default: 1/sqrt(key features per head)."
        ),
    ] = None,
    causal: Annotated[bool, typer.Option("--causal", help="Query i attends to keys j <= i.")] = False,
    mask: Annotated[
        str | None,
        typer.Option(
            metavar="PATH",
            help="Boolean (True = may attend) or float (added to scores) tensor; broadcasts to the weights.",
        ),
    ] = None,
    heads: Annotated[
        int | None, typer.Option(min=1, help="Split the feature axis into this many heads.")
    ] = None,
    dtype: Annotated[
        DType, typer.Option(help="auto: float64 if an input is float64, else float32.")
    ] = DType.auto,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:N or auto.")] = "cpu",
    precision: PrecisionOption = 4,
    output_format: Annotated[
        OutputFormat, typer.Option("--format", help="table: coloured tables; json: weights, output, meta.")
    ] = OutputFormat.table,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing but errors.")] = False,
    output: Annotated[
        str | None,
        typer.Option(
            "--output",
            "-o",
            metavar="PATH",
            help="Save weights, output and metadata: .safetensors, .npz or .json.",
        ),
    ] = None,
    force: Annotated[bool, typer.Option("--force", "-f", help="Replace an existing --output file.")] = False,
    no_color: NoColorOption = False,
) -> None:
    """Compute attention weights and output from query, key and value tensors, show them, save them.

    [bold]Examples[/]

      attn compute q.npy k.npy v.npy
      attn compute qkv.npz --causal --precision 3
      cat qkv.json | attn compute --format json
      attn compute x.safetensors:hidden --heads 8 --causal -o result.safetensors
    """
    specs = list(paths or [])
    stdin = _stdin()
    if not specs:
        if stdin is None:
            raise UsageError(
                "no input: give QUERY KEY VALUE paths or one file, or pipe one in "
                "(e.g. 'attn compute q.npy k.npy v.npy' or 'cat qkv.json | attn compute')"
            )
        specs = ["-"]
    if len(specs) not in (1, 3):
        raise UsageError(
            f"got {len(specs)} paths; give one (a file holding query, key and value, or one tensor "
            "for self-attention) or three (QUERY KEY VALUE)"
        )
    if mask is not None and mask.partition(":")[0] == "-" and any(s.partition(":")[0] == "-" for s in specs):
        raise UsageError("stdin ('-') can feed the inputs or --mask, not both")

    from attncli import loaders, writers

    target = writers.check_output_path(output, force=force) if output else None
    from attncli.core import attention, resolve_device

    resolve_device(device)  # a missing device is reported before any file is read
    inputs = loaders.load_attention_inputs(specs, stdin)
    mask_tensor = loaders.load_mask(mask, stdin) if mask else None
    mask_label = None if mask is None else ("<stdin>" if mask == "-" else mask)
    names = {**inputs.sources, "mask": mask_label or "mask"}
    result = attention(
        inputs.query,
        inputs.key,
        inputs.value,
        scale=scale,
        mask=mask_tensor,
        causal=causal,
        heads=heads,
        dtype=dtype.value,
        device=device,
        names=names,
    )
    _finish(result, inputs.sources, mask_label, target, output_format, quiet, precision, no_color)


@app.command()
def demo(precision: PrecisionOption = 4, no_color: NoColorOption = False) -> None:
    """Show the textbook self_attention, run it on its 3-position sample, and attncli's result beside it."""
    from rich.syntax import Syntax

    from attncli import demo as seed
    from attncli.core import attention

    console = _console(no_color)
    query, key, value = seed.sample_tensors()
    console.print(
        "[bold]The tutorial's self-attention[/] (the function attncli grew from), "
        "on batch 1, 3 positions, 4 features:"
    )
    for source in (seed.tutorial_source(), seed.sample_source()):
        console.print(Syntax(source, "python", theme="ansi_dark", background_color="default", word_wrap=True))
    tutorial_output, tutorial_weights = seed.self_attention(query, key, value)  # type: ignore[no-untyped-call]
    result = attention(query, key, value)
    weights_gap = (result.weights - tutorial_weights).abs().max().item()
    output_gap = (result.output - tutorial_output).abs().max().item()
    console.print(
        f"attncli agrees with the tutorial: max |Δ weights| = {weights_gap:.3g}, "
        f"max |Δ output| = {output_gap:.3g}\n",
        markup=False,
        highlight=False,
    )
    sources = {"query": "sample", "key": "sample", "value": "sample"}
    _finish(result, sources, None, None, OutputFormat.table, False, precision, no_color, console)


def _finish(
    result: AttentionResult,
    sources: dict[str, str],
    mask_label: str | None,
    target: os.PathLike[str] | None,
    output_format: OutputFormat,
    quiet: bool,
    precision: int,
    no_color: bool,
    console: Console | None = None,
) -> None:
    """Warn, save, then show a computed result."""
    from attncli import writers
    from attncli.core import describe, result_arrays

    rows = result.fully_masked_rows()
    if rows:
        shown = ", ".join(map(str, rows[:5])) + (", ..." if len(rows) > 5 else "")
        _warn(f"{len(rows)} query row(s) have every key masked; their weights and output are 0: {shown}")
    arrays = result_arrays(result)
    meta = {**describe(result), "sources": sources, "mask": mask_label, "attncli_version": __version__}
    if target is not None:
        writers.write_result(target, arrays, meta)
    if quiet:
        return
    if output_format is OutputFormat.json:
        sys.stdout.write(writers.json_text(arrays, meta) + "\n")
        sys.stdout.flush()
        return
    from attncli.render import result_view

    console = console or _console(no_color)
    console.print(
        result_view(arrays["weights"], arrays["output"], meta, precision=precision, width=console.width)
    )


def _console(no_color: bool) -> Console:
    from rich.console import Console

    return Console(highlight=False, no_color=True if no_color else None)


def _stdin() -> BinaryIO | None:
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


def _warn(message: str) -> None:
    sys.stderr.write(f"attn: warning: {message}\n")


def _fail(message: str, status: int) -> NoReturn:
    sys.stderr.write(f"attn: error: {message}\n")
    sys.stderr.flush()
    sys.exit(status)


def _silence_stdout() -> None:
    """After the reader of our stdout went away, send what is left nowhere instead of failing at exit."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def main() -> None:
    """The `attn` console script."""
    app()


if __name__ == "__main__":
    main()
