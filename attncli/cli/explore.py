"""`attn explore`: walk through attention interactively, from the grid of every head to one weight."""

import os
import sys
from typing import Annotated

import typer

from attncli.cli._app import AttnCommand, app
from attncli.cli._display import (
    ATTENTION,
    DISPLAY,
    CausalOption,
    ColorScale,
    ColorScaleOption,
    DType,
    DTypeOption,
    HeadsOption,
    MaskOption,
    PathsArgument,
    Pool,
    PoolOption,
    ScaleOption,
)
from attncli.errors import UsageError

NOT_A_TERMINAL = (
    "explore draws in a terminal, and {}: use 'attn compute' (e.g. --view grid or --view heatmap)"
)


def terminal_problem() -> str | None:
    """Why there is no terminal to draw in (stdout a pipe or file, stdin not a terminal, TERM=dumb),
    or None. stderr is asked too: Textual draws there (so that stdout may be piped elsewhere)."""
    if os.environ.get("TERM", "") == "dumb":
        return "TERM is dumb"
    for name, stream in (("stdout", sys.stdout), ("stdin", sys.stdin), ("stderr", sys.stderr)):
        try:
            if stream is None or not stream.isatty():
                return f"{name} is not one"
        except ValueError:  # closed
            return f"{name} is closed"
    return None


@app.command(cls=AttnCommand)
def explore(
    paths: PathsArgument = None,
    layer: Annotated[
        str | None,
        typer.Option(
            metavar="LAYERS",
            help="Of a file from 'attn capture': the layers to explore, N, 1,3, 0:4 or all (default).",
            rich_help_panel=ATTENTION,
        ),
    ] = None,
    scale: ScaleOption = None,
    causal: CausalOption = False,
    mask: MaskOption = None,
    heads: HeadsOption = None,
    dtype: DTypeOption = DType.auto,
    labels: Annotated[
        str | None,
        typer.Option(
            metavar="TOKENS",
            help="Names of the positions, comma-separated (a capture carries its own tokens).",
            rich_help_panel=DISPLAY,
        ),
    ] = None,
    pool: PoolOption = Pool.max,
    color_scale: ColorScaleOption = ColorScale.fixed,
) -> None:
    """Explore attention in the terminal: the grid of every head, then one head's heatmap with a
    cursor on one weight (its query and key tokens, score, rank, and its row's statistics).

    Also a result file of 'attn compute -o', whose weights are shown as saved. Arrow keys move,
    Enter opens a head, + and - zoom, Escape goes back, ? lists every key, q quits.
    Only the rows on screen are computed, a block at a time, so long inputs fit in memory.

    [bold]Examples[/]

      attn explore run.safetensors
      attn explore q.npy k.npy v.npy --causal
      attn explore x.safetensors --heads 8
      attn explore result.safetensors
    """
    if not paths:
        raise UsageError(
            "no input: give a file from 'attn capture', or QUERY KEY VALUE (explore reads no stdin)"
        )
    if any(path.partition(":")[0] == "-" for path in [*paths, mask or ""]):
        raise UsageError("explore reads files, not stdin ('-'): the terminal is its input")
    if len(paths) not in (1, 3):
        raise UsageError(
            f"got {len(paths)} paths; give one (a capture, or a file holding query, key and value) or three"
        )
    problem_text = terminal_problem()
    if problem_text is not None:
        raise UsageError(NOT_A_TERMINAL.format(problem_text))
    from attncli.explore.session import open_explorer

    explorer = open_explorer(
        paths,
        layer=layer,
        scale=scale,
        causal=causal,
        mask=mask,
        heads=heads,
        dtype=dtype.value,
        labels=labels,
    )
    from attncli.explore.app import ExploreApp

    ExploreApp(explorer, color_scale=color_scale.value, pool=pool.value).run()
