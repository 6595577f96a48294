"""`attn heads`: what every head does, one score per head, for a capture's layers or any input;
`attn rollout`: how attention flows from the input tokens through every layer of a capture."""

import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated

import typer

from attncli.cli import _app
from attncli.cli._app import AttnCommand, ColorMode, app
from attncli.cli._display import (
    ATTENTION,
    CausalOption,
    ColorOption,
    ColorScale,
    ColorScaleOption,
    DeviceOption,
    Display,
    DType,
    DTypeOption,
    ExportHtmlOption,
    ExportSvgOption,
    ForceOption,
    HeadsOption,
    MaskOption,
    NoColorOption,
    OutputFormat,
    OutputOption,
    PathsArgument,
    PrecisionOption,
    ScaleOption,
    View,
    ViewOption,
    check_exports,
    color_mode,
    export_view,
    screen_for,
)
from attncli.errors import UsageError

if TYPE_CHECKING:
    import numpy as np

    from attncli.compute import Prepared
    from attncli.io.loaders import TensorFile


@app.command("heads", cls=AttnCommand)
def heads_command(
    paths: PathsArgument = None,
    layer: Annotated[
        str | None,
        typer.Option(
            metavar="LAYERS",
            help="Of a file from 'attn capture': the layers to score, as N, 1,3, 0:4 or all (default).",
            rich_help_panel=ATTENTION,
        ),
    ] = None,
    batch: Annotated[
        int | None,
        typer.Option(
            min=0, metavar="N", help="Of a capture: score text N alone (default: the mean over the texts)."
        ),
    ] = None,
    score: Annotated[
        str | None,
        typer.Option(
            metavar="NAMES",
            help="The scores to show, e.g. previous,induction (default: every one that applies): "
            "entropy, sink, distance, self, previous, duplicate, induction.",
        ),
    ] = None,
    top: Annotated[int, typer.Option(min=0, metavar="N", help="Heads listed under each table.")] = 3,
    scale: ScaleOption = None,
    causal: CausalOption = False,
    mask: MaskOption = None,
    heads: HeadsOption = None,
    labels: Annotated[
        str | None,
        typer.Option(
            metavar="TOKENS",
            help="The token of each position, comma-separated (a capture carries its own): the "
            "duplicate and induction scores need them.",
        ),
    ] = None,
    dtype: DTypeOption = DType.auto,
    device: DeviceOption = "cpu",
    output_format: Annotated[
        OutputFormat,
        typer.Option("--format", help='table, or json: {"layers", "heads", "scores": {NAME: [[...]]}}.'),
    ] = OutputFormat.table,
    precision: PrecisionOption = 2,
    color: ColorOption = ColorMode.auto,
    no_color: NoColorOption = False,
    export_svg: ExportSvgOption = None,
    export_html: ExportHtmlOption = None,
    force: ForceOption = False,
) -> None:
    """Score every head: a table of layers x heads (batch x heads for inputs that are not captures).

    For each query row i, aligned with key a(i) = i + Lk - Lq: entropy (nats), sink (weight on key
    0), distance (mean |j - a(i)|), self (weight on a(i)), previous (on a(i) - 1), duplicate (on
    earlier keys of the same token) and induction (on keys that follow an earlier copy of the
    token). A head's score is the mean over its query rows that are real tokens (not padding) and
    not fully masked. Each layer is computed once.
    """
    from attncli import selection
    from attncli.analysis.heads import SCORE_NAMES
    from attncli.compute import heads_note, prepare, resolve_device
    from attncli.compute.heads import score_capture, score_matrices
    from attncli.io import loaders
    from attncli.present.heads import heads_json, heads_view

    display = Display(
        output_format=output_format,
        color=color_mode(color, no_color),
        export_svg=export_svg,
        export_html=export_html,
        force=force,
    )
    check_exports(display)
    specs, stdin = _app.specs_or_stdin(
        paths, "no input: give a file from 'attn capture', or QUERY KEY VALUE, or pipe one in"
    )
    wanted = None
    if score is not None:
        wanted = [name.strip() for name in score.split(",") if name.strip()]
        unknown = [name for name in wanted if name not in SCORE_NAMES]
        if unknown or not wanted:
            raise UsageError(f"--score {score}: not a score; choose from {', '.join(SCORE_NAMES)}")
    resolve_device(device)
    given = selection.given_labels(labels)
    tokens: list[list[str]] | None = None if given is None else [given]
    source = loaders.read_tensors(loaders.split_spec(specs[0])[0], stdin) if len(specs) == 1 else None
    if source is not None and loaders.captured_layers(source.tensors):
        numbers = loaders.chosen_layers(source, selection.parse_layers(layer))
        override = None if mask is None else loaders.load_mask(mask, stdin)
        layers, captured_tokens = _capture_problems(
            source, numbers, scale=scale, mask=override, causal=causal, dtype=dtype.value, device=device
        )
        tokens = tokens or captured_tokens
        texts = _texts(layers, batch)
        lengths = source.metadata.get("lengths")
        well_formed = isinstance(lengths, list) and all(isinstance(n, int) for n in lengths)
        result = score_capture(layers, tokens, lengths if well_formed else None, batch)
        title = f"head scores of {source.label}: {len(layers)} layers x {result.heads} heads"
        title += (
            f", text {batch}" if batch is not None else (f", mean over {texts} texts" if texts > 1 else "")
        )
    else:
        if layer is not None:
            raise UsageError("--layer picks layers of a file from 'attn capture'; this input has none")
        if batch is not None:
            raise UsageError("--batch picks a text of a capture; other inputs show every batch entry")
        inputs = loaders.load_attention_inputs(specs, stdin)
        problem = prepare(
            inputs.query,
            inputs.key,
            inputs.value,
            scale=inputs.scale if scale is None else scale,
            mask=loaders.load_mask(mask, stdin) if mask else inputs.mask,
            causal=causal,
            heads=heads,
            dtype=dtype.value,
            device=device,
            names=inputs.sources,
        )
        if tokens is not None:
            selection.check_label_count(tokens[0], problem.weights_shape[-2], "--labels", "query")
        _app.note(heads_note(problem, inputs.sources["query"]))
        result = score_matrices(problem, tokens or inputs.tokens)
        title = f"head scores: {len(result.rows)} batch entries x {result.heads} heads"
    scores = {name: result.scores[name] for name in wanted or result.scores if name in result.scores}
    missing = [name for name in wanted or () if name not in scores]
    if missing:
        raise UsageError(f"--score {','.join(missing)}: needs tokens; give --labels")
    if output_format is OutputFormat.json:
        meta = {"batch": result.batch, "notes": result.notes}
        sys.stdout.write(
            json.dumps(heads_json(result.row_axis, result.rows, result.heads, scores, meta)) + "\n"
        )
        return
    screen = screen_for(display)
    assert screen is not None, "a table is shown"
    view = heads_view(
        result.row_axis,
        result.rows,
        scores,
        title=title,
        notes=result.notes,
        top=top,
        precision=precision,
        colour=screen.colour,
        width=screen.console.width,
    )
    screen.console.print(view)
    export_view(screen, display)


@app.command("rollout", cls=AttnCommand)
def rollout_command(
    path: Annotated[str, typer.Argument(metavar="FILE", help="A file from 'attn capture' ('-': stdin).")],
    batch: Annotated[int, typer.Option(min=0, metavar="N", help="The text whose rollout to show.")] = 0,
    layer: Annotated[
        str | None,
        typer.Option(metavar="LAYERS", help="The layers to roll out, in order: N, 0:4 or all (default)."),
    ] = None,
    view: ViewOption = View.table,
    output_format: Annotated[
        OutputFormat, typer.Option("--format", help='table: what --view shows; json: {"rollout", "meta"}.')
    ] = OutputFormat.table,
    output: OutputOption = None,
    force: ForceOption = False,
    precision: PrecisionOption = 4,
    color: ColorOption = ColorMode.auto,
    no_color: NoColorOption = False,
    color_scale: ColorScaleOption = ColorScale.fixed,
    export_svg: ExportSvgOption = None,
    export_html: ExportHtmlOption = None,
    device: DeviceOption = "cpu",
) -> None:
    """Attention rollout across layers (Abnar & Zuidema 2020) of one text of a capture.

    Per layer, the mean over heads of the weights plus the identity, halved, rows renormalised; the
    product from the first layer to the last (R = A_L ... A_2 A_1), over the text's real tokens
    (no padding). Row i says how much each input token flows into position i at the last layer;
    each row sums to 1.
    """
    from attncli import selection
    from attncli.compute import resolve_device
    from attncli.compute.heads import capture_rollout
    from attncli.io import loaders, writers
    from attncli.present.heads import rollout_view
    from attncli.present.options import ViewOptions

    if view is View.grid:
        raise UsageError("--view grid: a rollout is one matrix; choose table or heatmap")
    display = Display(
        output_format=output_format,
        color=color_mode(color, no_color),
        view=view,
        precision=precision,
        export_svg=export_svg,
        export_html=export_html,
        force=force,
    )
    check_exports(display)
    target = writers.check_output_path(output, force=force) if output is not None else None
    resolve_device(device)
    source = loaders.read_tensors(path, _app.stdin() if path == "-" else None)
    if not loaders.captured_layers(source.tensors):
        raise UsageError(f"{source.label} holds no captured layers; rollout needs a file from 'attn capture'")
    chosen = loaders.chosen_layers(source, selection.parse_layers(layer))
    layers, _ = _capture_problems(source, chosen, device=device)
    texts = _texts(layers, batch)
    shape = layers[0][1].weights_shape
    lengths = source.metadata.get("lengths")
    length = lengths[batch] if isinstance(lengths, list) and len(lengths) == texts else None
    length = length if isinstance(length, int) and 0 < length <= shape[-1] else None
    matrix = capture_rollout(layers, batch, length)
    tokens = source.metadata.get("tokens")
    labels = None
    if isinstance(tokens, list) and len(tokens) == texts and isinstance(tokens[batch], list):
        labels = [str(token) for token in tokens[batch][: matrix.shape[0]]]
    meta = {
        "method": "attention rollout (Abnar & Zuidema 2020): mean over heads, + identity, halved, "
        "rows renormalised, layers multiplied first to last",
        "source": source.label,
        "layers": list(chosen),
        "batch": batch,
        "tokens": labels,
    }
    if target is not None:
        writers.write_result(target, {"rollout": matrix}, meta)
    if output_format is OutputFormat.json:
        sys.stdout.write(writers.json_text({"rollout": matrix}, meta) + "\n")
        return
    screen = screen_for(display)
    assert screen is not None, "a view is shown"
    options = ViewOptions(
        view=view.value,
        precision=precision,
        width=screen.console.width,
        max_rows=screen.lines,
        colour=screen.colour,
        color_scale=color_scale.value,
    )
    span = f"layers {chosen[0]} to {chosen[-1]}" if len(chosen) > 1 else f"layer {chosen[0]}"
    title = f"rollout of {source.label}, text {batch}, {span}  {matrix.shape[0]}×{matrix.shape[1]}"
    screen.console.print(rollout_view(matrix, title=title, options=options, labels=labels))
    export_view(screen, display)


def _capture_problems(
    source: "TensorFile",
    numbers: Sequence[int],
    *,
    scale: float | None = None,
    mask: "np.ndarray | None" = None,
    causal: bool = False,
    dtype: str = "auto",
    device: str = "cpu",
) -> "tuple[list[tuple[int, Prepared]], list[list[str]] | None]":
    """Each chosen layer of a capture as a problem to compute, with the layer's own scale and mask
    unless `scale` or `mask` replace them; and the capture's tokens."""
    from attncli.compute import prepare
    from attncli.io import loaders

    layers = []
    tokens = None
    for number in numbers:
        inputs = loaders.layer_inputs(source, number)
        tokens = tokens or inputs.tokens
        problem = prepare(
            inputs.query,
            inputs.key,
            inputs.value,
            scale=inputs.scale if scale is None else scale,
            mask=inputs.mask if mask is None else mask,
            causal=causal,
            dtype=dtype,
            device=device,
            names=inputs.sources,
        )
        layers.append((number, problem))
    return layers, tokens


def _texts(layers: "Sequence[tuple[int, Prepared]]", batch: int | None) -> int:
    """How many texts the capture holds (its batch), with --batch checked against it."""
    shape = layers[0][1].weights_shape
    texts = shape[0] if len(shape) == 4 else 1
    if batch is not None and batch >= texts:
        raise UsageError(f"--batch {batch}: out of range, there are {texts} texts (0 to {texts - 1})")
    return texts
