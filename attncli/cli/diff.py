"""`attn diff`: compare the tensors of two files, like cmp for tensors."""

import math
import sys
from typing import Annotated

import typer

from attncli.cli import _app
from attncli.cli._app import AttnCommand, ColorMode, app
from attncli.cli._app import console as make_console
from attncli.cli._display import ColorOption, NoColorOption, OutputFormat, color_mode
from attncli.errors import ExitCode, UsageError


def _check_tolerance(value: float | None) -> float | None:
    if value is not None and not (math.isfinite(value) and value >= 0):
        raise typer.BadParameter(f"must be a finite number >= 0, not {value}")
    return value


@app.command("diff", cls=AttnCommand)
def diff_command(
    a: Annotated[
        str, typer.Argument(metavar="A", help="A tensor or result file; PATH:NAME picks one, '-' is stdin.")
    ],
    b: Annotated[str, typer.Argument(metavar="B", help="The file to compare A with: the reference.")],
    rtol: Annotated[
        float | None,
        typer.Option(
            callback=_check_tolerance, help="Relative tolerance. Default: the coarsest dtype's (see above)."
        ),
    ] = None,
    atol: Annotated[
        float | None,
        typer.Option(
            callback=_check_tolerance, help="Absolute tolerance. Default: the coarsest dtype's (see above)."
        ),
    ] = None,
    top_k: Annotated[
        int, typer.Option("--top-k", metavar="K", min=1, help="Keys per row compared for weights.")
    ] = 5,
    common: Annotated[
        bool,
        typer.Option(
            "--common",
            help="Compare the tensors both files hold; those in one file only are listed, but do not "
            "make the files different.",
        ),
    ] = False,
    output_format: Annotated[
        OutputFormat, typer.Option("--format", help="table: a row per tensor; json: the same facts as JSON.")
    ] = OutputFormat.table,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Print nothing (but errors): the exit status tells.")
    ] = False,
    color: ColorOption = ColorMode.auto,
    no_color: NoColorOption = False,
) -> None:
    """Compare the tensors of two files, within tolerance, like cmp for tensors.

    Each tensor of A is compared with the one of the same name in B (or the only tensor of each):
    max absolute and relative difference, where the worst element is, and how many are outside
    tolerance. Tensors held by one file only (a result written with --stats, say) are listed, and
    make the files different unless --common is given. Close means |A - B| <= atol + rtol * |B|, or
    equal (NaN in both counts as equal), as torch.testing.assert_close. The default tolerances are
    those of the coarsest dtype involved, stored or computed (the dtype a result's metadata says it
    was computed in: a bfloat16 result stored as float32 in .npz is bfloat16's): bfloat16
    1.6e-2/1e-2, float16 1e-3/1e-3, float32 1.3e-6/1e-5, float64 1e-7/1e-7 (rtol/atol, as
    assert_close and attn compute --check; half precision's atol is its resolution near 1);
    integers exact. A tensor named weights is also compared row by row: KL(A||B) and top-k key
    agreement.

    [bold]Examples[/]

      attn diff result.safetensors expected.safetensors
      attn diff a.npz b.npz --rtol 1e-3 --atol 1e-6
      attn diff run1.safetensors:weights run2.safetensors:weights --top-k 3 --format json
      attn diff -q a.npy b.npy && echo same
      attn diff with-stats.safetensors plain.safetensors --common

    Exit status: 0 equal within tolerance, 1 different (or tensors in one file only, without
    --common), 2 trouble (a file that cannot be read, no tensor name in common, shapes that do
    not match, bad usage).
    """
    from attncli.analysis.diff import compare_files
    from attncli.io.lazy import open_spec
    from attncli.io.loaders import split_spec
    from attncli.present.diff import comparison_json, comparison_view

    if split_spec(a)[0] == split_spec(b)[0] == "-":
        raise UsageError("stdin ('-') can be only one of A and B")
    stdin = _app.stdin()
    files = open_spec(a, stdin), open_spec(b, stdin)
    comparison = compare_files(*files, rtol=rtol, atol=atol, top_k=top_k, common_only=common)
    if quiet:
        pass
    elif output_format is OutputFormat.json:
        sys.stdout.write(comparison_json(comparison) + "\n")
    else:
        make_console(color_mode(color, no_color)).print(comparison_view(comparison))
    if not comparison.close:
        raise typer.Exit(ExitCode.DIFFERENT)
