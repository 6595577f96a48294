"""`attn inspect`: what tensor files hold, read header first and data a block at a time."""

import sys
from typing import Annotated

import typer

from attncli.cli import _app
from attncli.cli._app import AttnCommand, ColorMode, app
from attncli.cli._app import console as make_console
from attncli.cli._display import ColorOption, NoColorOption, OutputFormat, color_mode
from attncli.errors import UsageError


@app.command("inspect", cls=AttnCommand)
def inspect_command(
    paths: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="FILE",
            help="Tensor files (.npy, .npz, .safetensors, .json); PATH:NAME picks one tensor; "
            "'-' or no path reads stdin.",
            show_default=False,
        ),
    ] = None,
    output_format: Annotated[
        OutputFormat, typer.Option("--format", help="table: a table per file; json: one JSON document.")
    ] = OutputFormat.table,
    no_stats: Annotated[
        bool,
        typer.Option("--no-stats", help="Only what the headers say: names, shapes, dtypes, sizes, metadata."),
    ] = False,
    color: ColorOption = ColorMode.auto,
    no_color: NoColorOption = False,
) -> None:
    """Show what tensor files hold: names, shapes, dtypes, sizes, statistics, metadata.

    For each tensor: name, shape, dtype, size in bytes, and min, max, mean, std (of the finite
    values) with NaN and Inf counts; for a result file of 'attn compute -o', its metadata too.

    Only headers are read up front; statistics read the data a few MiB at a time, so a file of any
    size takes little memory (JSON and stdin are read whole).

    [bold]Examples[/]

      attn inspect result.safetensors
      attn inspect model.safetensors:weights --format json
      attn inspect big.npy --no-stats
      cat q.npy | attn inspect

    Exit status: 0 success, 2 bad usage or a file that cannot be read.
    """
    specs, stdin = _app.specs_or_stdin(
        paths, "no input: give tensor files, or pipe one in (e.g. 'cat x.npy | attn inspect')"
    )
    from attncli.io.lazy import inspect_spec
    from attncli.io.loaders import split_spec
    from attncli.present.inspect import report_view, reports_json

    if sum(split_spec(spec)[0] == "-" for spec in specs) > 1:
        raise UsageError("stdin ('-') can be given only once")
    if output_format is OutputFormat.json:
        reports = [inspect_spec(spec, stdin, stats=not no_stats) for spec in specs]
        sys.stdout.write(reports_json(reports) + "\n")
        return
    console = make_console(color_mode(color, no_color))
    for spec in specs:  # each file is shown as soon as it is read
        console.print(report_view(inspect_spec(spec, stdin, stats=not no_stats)))
