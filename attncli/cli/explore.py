"""`attn explore`: walk through attention interactively, from the grid of every head to one weight."""

from __future__ import annotations

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
    or None."""
    if os.environ.get("TERM", "") == "dumb":
        return "TERM is dumb"
    for name, stream in (("stdout", sys.stdout), ("stdin", sys.stdin)):
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

    Arrow keys move, Enter opens a head, + and - zoom, Escape goes back, ? lists every key, q quits.
    Only the rows on screen are computed, a block at a time, so long inputs fit in memory.

    [bold]Examples[/]

      attn explore run.safetensors
      attn explore q.npy k.npy v.npy --causal
      attn explore x.safetensors --heads 8
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
    from attncli import selection
    from attncli.compute import prepare
    from attncli.explore.session import Explorer, axes_of
    from attncli.io import loaders

    layers = selection.parse_layers(layer)
    source = loaders.read_tensors(loaders.split_spec(paths[0])[0]) if len(paths) == 1 else None
    if (
        source is not None
        and loaders.split_spec(paths[0])[1] is None
        and loaders.captured_layers(source.tensors)
    ):
        inputs = loaders.stacked_layer_inputs(source, loaders.chosen_layers(source, layers))
    else:
        if layer is not None:
            raise UsageError("--layer picks layers of a file from 'attn capture'; this input has none")
        inputs = loaders.load_attention_inputs(paths)
    problem = prepare(
        inputs.query,
        inputs.key,
        inputs.value,
        scale=inputs.scale if scale is None else scale,
        mask=loaders.load_mask(mask) if mask else inputs.mask,
        causal=causal,
        heads=heads,
        dtype=dtype.value,
        names=inputs.sources,
    )
    tokens = inputs.tokens
    given = selection.given_labels(labels)
    if given is not None:
        selection.check_label_count(given, problem.weights_shape[-2], "--labels", "query")
        selection.check_label_count(given, problem.weights_shape[-1], "--labels", "key")
        tokens = [given] * max(1, len(inputs.tokens or [given]))
    explorer = Explorer(
        problem,
        axes_of(problem, inputs.layers),
        label=source.label if source is not None else " ".join(paths),
        axis_values={} if inputs.layers is None else {"layer": list(inputs.layers)},
        tokens=tokens,
    )
    from attncli.explore.app import ExploreApp

    ExploreApp(explorer, color_scale=color_scale.value, pool=pool.value).run()
