"""The `attn` command line: the only module that reads argv, writes to the terminal and exits.

Each command is load -> compute -> write -> render. torch and NumPy are imported inside the
commands that need them, so `attn --help`, `attn --version` and usage errors start fast.
"""

from __future__ import annotations

import math
import os
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass
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


class View(str, Enum):
    table = "table"
    heatmap = "heatmap"


class Pool(str, Enum):
    max = "max"
    mean = "mean"


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
_ATTENTION, _DISPLAY, _SAVE = "Attention", "Display", "Save"
PrecisionOption = Annotated[
    int,
    typer.Option(
        "--precision",
        min=0,
        max=12,
        help="Digits after the decimal point in tables.",
        rich_help_panel=_DISPLAY,
    ),
]
NoColorOption = Annotated[
    bool,
    typer.Option(
        "--no-color",
        help="No colours (also when NO_COLOR is set or output is not a terminal).",
        rich_help_panel=_DISPLAY,
    ),
]


@dataclass(frozen=True)
class Display:
    """The display and export options of a command, as given."""

    output_format: OutputFormat = OutputFormat.table
    quiet: bool = False
    precision: int = 4
    no_color: bool = False
    view: View = View.table
    pool: Pool = Pool.max
    query_labels: list[str] | None = None
    key_labels: list[str] | None = None
    batch: str | None = None
    head: str | None = None
    max_rows: int | None = None
    max_cols: int | None = None
    full: bool = False
    export_svg: str | None = None
    export_html: str | None = None
    force: bool = False


@app.command()
def compute(
    paths: PathsArgument = None,
    scale: Annotated[
        float | None,
        typer.Option(
            callback=_check_scale,
            help="Multiply scores by this. Default: 1/sqrt(key features per head).",
            rich_help_panel=_ATTENTION,
        ),
    ] = None,
    causal: Annotated[
        bool, typer.Option("--causal", help="Query i attends to keys j <= i.", rich_help_panel=_ATTENTION)
    ] = False,
    mask: Annotated[
        str | None,
        typer.Option(
            metavar="PATH",
            help="Boolean (True = may attend) or float (added to scores) tensor; broadcasts to the weights.",
            rich_help_panel=_ATTENTION,
        ),
    ] = None,
    heads: Annotated[
        int | None,
        typer.Option(min=1, help="Split the feature axis into this many heads.", rich_help_panel=_ATTENTION),
    ] = None,
    dtype: Annotated[
        DType,
        typer.Option(help="auto: float64 if an input is float64, else float32.", rich_help_panel=_ATTENTION),
    ] = DType.auto,
    device: Annotated[
        str, typer.Option(help="cpu, cuda, cuda:N or auto.", rich_help_panel=_ATTENTION)
    ] = "cpu",
    view: Annotated[
        View,
        typer.Option(
            help="table: numbers on coloured cells; heatmap: one coloured block per weight.",
            rich_help_panel=_DISPLAY,
        ),
    ] = View.table,
    labels: Annotated[
        str | None,
        typer.Option(
            help="Names of the positions, both axes: 'The cat sat' or 'The,cat,sat'.",
            rich_help_panel=_DISPLAY,
        ),
    ] = None,
    labels_file: Annotated[
        str | None,
        typer.Option(metavar="PATH", help="Names of the positions, one per line.", rich_help_panel=_DISPLAY),
    ] = None,
    query_labels: Annotated[
        str | None, typer.Option(help="Names of the query positions (rows).", rich_help_panel=_DISPLAY)
    ] = None,
    key_labels: Annotated[
        str | None, typer.Option(help="Names of the key positions (columns).", rich_help_panel=_DISPLAY)
    ] = None,
    batch: Annotated[
        str | None,
        typer.Option(metavar="I", help="Batch entries to show: 0, 1,3 or 0:4.", rich_help_panel=_DISPLAY),
    ] = None,
    head: Annotated[
        str | None,
        typer.Option(metavar="H", help="Heads to show: 0, 1,3 or 0:4.", rich_help_panel=_DISPLAY),
    ] = None,
    max_rows: Annotated[
        int | None,
        typer.Option(
            min=3, help="Rows per matrix (default: what fits the terminal).", rich_help_panel=_DISPLAY
        ),
    ] = None,
    max_cols: Annotated[
        int | None,
        typer.Option(min=3, help="Columns per table (default: what fits).", rich_help_panel=_DISPLAY),
    ] = None,
    full: Annotated[
        bool, typer.Option("--full", help="Every row and column, however large.", rich_help_panel=_DISPLAY)
    ] = False,
    pool: Annotated[
        Pool,
        typer.Option(
            help="Heatmaps larger than the terminal: max or mean of each block.", rich_help_panel=_DISPLAY
        ),
    ] = Pool.max,
    precision: PrecisionOption = 4,
    output_format: Annotated[
        OutputFormat,
        typer.Option(
            "--format",
            help="table: what --view shows; json: weights, output, meta.",
            rich_help_panel=_DISPLAY,
        ),
    ] = OutputFormat.table,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Print nothing but errors.", rich_help_panel=_DISPLAY)
    ] = False,
    no_color: NoColorOption = False,
    output: Annotated[
        str | None,
        typer.Option(
            "--output",
            "-o",
            metavar="PATH",
            help="Save weights, output and metadata: .safetensors, .npz or .json.",
            rich_help_panel=_SAVE,
        ),
    ] = None,
    export_svg: Annotated[
        str | None,
        typer.Option(
            metavar="PATH", help="Save what was shown as a standalone SVG picture.", rich_help_panel=_SAVE
        ),
    ] = None,
    export_html: Annotated[
        str | None,
        typer.Option(
            metavar="PATH", help="Save what was shown as a standalone HTML page.", rich_help_panel=_SAVE
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", "-f", help="Replace existing output files.", rich_help_panel=_SAVE)
    ] = False,
) -> None:
    """Compute attention weights and output from query, key and value tensors, show them, save them.

    [bold]Examples[/]

      attn compute q.npy k.npy v.npy
      attn compute qkv.npz --causal --labels "The cat sat on the mat"
      attn compute x.safetensors --heads 8 --causal --view heatmap --head 0:4
      cat qkv.json | attn compute --format json
      attn compute x.safetensors:hidden --heads 8 -o result.safetensors --export-svg weights.svg
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
    from attncli import view as views

    given_labels = [name for name, value in (("--labels", labels), ("--labels-file", labels_file)) if value]
    if len(given_labels) > 1:
        raise UsageError("give --labels or --labels-file, not both")
    both = views.read_labels(labels_file) if labels_file else views.parse_labels(labels) if labels else None
    display = Display(
        output_format=output_format,
        quiet=quiet,
        precision=precision,
        no_color=no_color,
        view=view,
        pool=pool,
        query_labels=views.parse_labels(query_labels) if query_labels is not None else both,
        key_labels=views.parse_labels(key_labels) if key_labels is not None else both,
        batch=batch,
        head=head,
        max_rows=max_rows,
        max_cols=max_cols,
        full=full,
        export_svg=export_svg,
        export_html=export_html,
        force=force,
    )
    for spec, option in ((batch, "--batch"), (head, "--head")):
        if spec is not None:
            views.parse_indices(spec, option)  # a typo is reported before any work
    _check_exports(display)

    from attncli import loaders, writers

    target = writers.check_output_path(output, force=force) if output else None
    from attncli.core import attention, resolve_device

    resolve_device(device)  # a missing device is reported before any file is read
    inputs = loaders.load_attention_inputs(specs, stdin)
    query_positions = inputs.query.shape[-2] if inputs.query.ndim > 1 else 1
    label_option = "--labels-file" if labels_file else "--labels"
    views.check_label_count(
        display.query_labels, query_positions, "--query-labels" if query_labels else label_option, "query"
    )
    views.check_label_count(
        display.key_labels,
        inputs.key.shape[-2] if inputs.key.ndim > 1 else 1,
        "--key-labels" if key_labels else label_option,
        "key",
    )
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
    _finish(result, inputs.sources, mask_label, target, display)


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
    _finish(result, sources, None, None, Display(precision=precision, no_color=no_color), console)


def _check_exports(display: Display) -> None:
    from attncli.writers import check_output_path

    if display.export_svg:
        check_output_path(display.export_svg, force=display.force, option="--export-svg", suffixes=(".svg",))
    if display.export_html:
        check_output_path(
            display.export_html, force=display.force, option="--export-html", suffixes=(".html", ".htm")
        )


def _finish(
    result: AttentionResult,
    sources: dict[str, str],
    mask_label: str | None,
    target: os.PathLike[str] | None,
    display: Display,
    console: Console | None = None,
) -> None:
    """Check the display choices against the result, warn, save, then show and export."""
    from attncli import writers
    from attncli.core import describe, masked_positions, result_arrays
    from attncli.view import parse_indices, resolve_indices

    meta = {**describe(result), "sources": sources, "mask": mask_label, "attncli_version": __version__}
    axes = meta["weights_axes"][:-2]
    leading = tuple(result.weights.shape[:-2])
    chosen: dict[str, list[int] | None] = {"batch": None, "head": None}
    for axis, spec in (("batch", display.batch), ("head", display.head)):
        if spec is None:
            continue
        if axis not in axes:
            shape = tuple(result.weights.shape)
            raise UsageError(f"--{axis} {spec}: the weights {shape} have no {axis} axis")
        size = leading[axes.index(axis)]
        what = "heads" if axis == "head" else "batch entries"
        chosen[axis] = resolve_indices(parse_indices(spec, f"--{axis}"), size, f"--{axis}", what)

    rows = result.fully_masked_rows()
    if rows:
        shown = ", ".join(map(str, rows[:5])) + (", ..." if len(rows) > 5 else "")
        _warn(f"{len(rows)} query row(s) have every key masked; their weights and output are 0: {shown}")
    arrays = result_arrays(result)
    if target is not None:
        writers.write_result(target, arrays, meta)
    as_json = display.output_format is OutputFormat.json
    if as_json and not display.quiet:
        sys.stdout.write(writers.json_text(arrays, meta) + "\n")
        sys.stdout.flush()
    exporting = bool(display.export_svg or display.export_html)
    shown_here = not display.quiet and not as_json
    if not (shown_here or exporting):
        return

    from attncli import render
    from attncli.view import ViewOptions

    console = console or _console(display.no_color, record=exporting, silent=not shown_here)
    terminal_rows = max(10, console.height - 8) if console.is_terminal else 32
    options = ViewOptions(
        view=display.view.value,
        precision=display.precision,
        width=console.width,
        max_rows=display.max_rows or terminal_rows,
        max_cols=display.max_cols,
        full=display.full,
        pool=display.pool.value,
        colour=not display.no_color and (console.color_system is not None or exporting),
        query_labels=display.query_labels,
        key_labels=display.key_labels,
        batch=chosen["batch"],
        head=chosen["head"],
        axes=axes,
    )
    view = render.result_view(arrays["weights"], arrays["output"], meta, options, masked_positions(result))
    console.print(view, crop=not display.full, overflow="ignore" if display.full else None)
    title = _picture_title(sys.argv[1:])
    if display.export_svg:
        writers.write_text(display.export_svg, render.export_svg(console, title), option="--export-svg")
    if display.export_html:
        writers.write_text(display.export_html, render.export_html(console), option="--export-html")


def _picture_title(args: Sequence[str]) -> str:
    """The command line that made a picture, less the options that only saved or silenced it."""
    kept: list[str] = []
    skip_value = False
    for arg in args:
        if skip_value:
            skip_value = False
        elif arg in ("--export-svg", "--export-html"):
            skip_value = True
        elif arg not in ("-q", "--quiet", "-f", "--force") and not arg.startswith(
            ("--export-svg=", "--export-html=")
        ):
            kept.append(arg)
    return shlex.join(["attn", *kept])


def _console(no_color: bool, record: bool = False, silent: bool = False) -> Console:
    import io

    from rich.console import Console

    if silent:  # render only for an export: same width and colours as the terminal would get
        return Console(
            file=io.StringIO(),
            record=record,
            highlight=False,
            no_color=no_color or None,
            width=Console().width,
            force_terminal=True,
        )
    return Console(highlight=False, no_color=True if no_color else None, record=record)


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
