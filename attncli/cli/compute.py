"""`attn compute`: load query, key and value, compute attention, show it, save it."""

from dataclasses import replace
from typing import Annotated

import typer

from attncli.cli import _app
from attncli.cli._app import AttnCommand, ColorMode, app
from attncli.cli._display import (
    ATTENTION,
    DISPLAY,
    SAVE,
    CausalOption,
    CheckOption,
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
    FullOption,
    HeadOption,
    HeadsOption,
    LabelsFileOption,
    MaskOption,
    MaxColsOption,
    MaxRowsOption,
    NoColorOption,
    OutputFormat,
    OutputFormatOption,
    OutputOption,
    PathsArgument,
    Pool,
    PoolOption,
    PrecisionOption,
    QuietOption,
    ScaleOption,
    ShowOption,
    StatsOption,
    TopKOption,
    View,
    ViewOption,
    check_exports,
    check_matrix_choice,
    color_mode,
    compute_and_finish,
    parse_show,
    with_token_labels,
)
from attncli.errors import ExitCode, UsageError


@app.command(cls=AttnCommand)
def compute(
    paths: PathsArgument = None,
    scale: ScaleOption = None,
    causal: CausalOption = False,
    mask: MaskOption = None,
    heads: HeadsOption = None,
    layer: Annotated[
        str | None,
        typer.Option(
            metavar="LAYERS",
            help="Of a file from 'attn capture': layer N (or 1,3, 0:4, all: stacked on a first axis, "
            "'layer'), with the model's mask, scale and tokens (--mask, --scale and --labels replace them).",
            rich_help_panel=ATTENTION,
        ),
    ] = None,
    step: Annotated[
        int | None,
        typer.Option(
            metavar="S",
            min=0,
            help="Of a file from 'attn capture --generate': decoding step S of --layer N (the query row "
            "of the token it read, against the text and the tokens read so far).",
            rich_help_panel=ATTENTION,
        ),
    ] = None,
    dtype: DTypeOption = DType.auto,
    device: DeviceOption = "cpu",
    stats: StatsOption = False,
    top_k: TopKOption = None,
    check: CheckOption = False,
    stream: Annotated[
        bool,
        typer.Option(
            "--stream",
            help="Compute in blocks of query rows and keep only what is shown or saved (automatic when "
            "the weights would exceed --memory-limit).",
            rich_help_panel=ATTENTION,
        ),
    ] = False,
    memory_limit: Annotated[
        str | None,
        typer.Option(
            metavar="SIZE",
            help="Memory the weights may take before computing in blocks, e.g. 2GiB or 500MB "
            "(default: half the memory available now). Weights over 256 MiB that nothing needs whole "
            "(no JSON, --full table or --check) are computed in blocks whatever the limit.",
            rich_help_panel=ATTENTION,
        ),
    ] = None,
    view: ViewOption = View.table,
    labels: Annotated[
        str | None,
        typer.Option(
            help="Names of the positions, both axes: 'The cat sat' or 'The,cat,sat'.",
            rich_help_panel=DISPLAY,
        ),
    ] = None,
    labels_file: LabelsFileOption = None,
    query_labels: Annotated[
        str | None, typer.Option(help="Names of the query positions (rows).", rich_help_panel=DISPLAY)
    ] = None,
    key_labels: Annotated[
        str | None, typer.Option(help="Names of the key positions (columns).", rich_help_panel=DISPLAY)
    ] = None,
    batch: Annotated[
        str | None,
        typer.Option(metavar="I", help="Batch entries to show: 0, 1,3 or 0:4.", rich_help_panel=DISPLAY),
    ] = None,
    head: HeadOption = None,
    max_rows: MaxRowsOption = None,
    max_cols: MaxColsOption = None,
    full: FullOption = False,
    pool: PoolOption = Pool.max,
    color_scale: ColorScaleOption = ColorScale.fixed,
    show: ShowOption = None,
    precision: PrecisionOption = 4,
    output_format: OutputFormatOption = OutputFormat.table,
    quiet: QuietOption = False,
    color: ColorOption = ColorMode.auto,
    no_color: NoColorOption = False,
    output: OutputOption = None,
    weights_to: Annotated[
        str | None,
        typer.Option(
            metavar="PATH",
            help="Write the full weights block by block to .npy or .safetensors (computes in blocks).",
            rich_help_panel=SAVE,
        ),
    ] = None,
    export_svg: ExportSvgOption = None,
    export_html: ExportHtmlOption = None,
    force: ForceOption = False,
) -> None:
    """Compute attention weights and output from query, key and value tensors, show them, save them.

    [bold]Examples[/]

      attn compute q.npy k.npy v.npy
      attn compute qkv.npz --causal --labels "The cat sat on the mat"
      attn compute x.safetensors --heads 8 --causal --view heatmap --head 0:4
      cat qkv.json | attn compute --format json
      attn compute x.safetensors:hidden --heads 8 -o result.safetensors --export-svg weights.svg
      attn compute run.safetensors --layer 3 --head 0:4
    """
    specs, stdin = _app.specs_or_stdin(
        paths,
        "no input: give QUERY KEY VALUE paths or one file, or pipe one in "
        "(e.g. 'attn compute q.npy k.npy v.npy' or 'cat qkv.json | attn compute')",
    )
    if len(specs) not in (1, 3):
        raise UsageError(
            f"got {len(specs)} paths; give one (a file holding query, key and value, or one tensor "
            "for self-attention) or three (QUERY KEY VALUE)"
        )
    if mask is not None and mask.partition(":")[0] == "-" and any(s.partition(":")[0] == "-" for s in specs):
        raise UsageError("stdin ('-') can feed the inputs or --mask, not both")
    from attncli import selection
    from attncli.io.text import read_labels

    given_labels = [name for name, value in (("--labels", labels), ("--labels-file", labels_file)) if value]
    if len(given_labels) > 1:
        raise UsageError("give --labels or --labels-file, not both")
    both = read_labels(labels_file) if labels_file else selection.given_labels(labels)
    display = Display(
        output_format=output_format,
        quiet=quiet,
        precision=precision,
        color=color_mode(color, no_color),
        view=view,
        pool=pool,
        color_scale=color_scale,
        show=parse_show(show),
        query_labels=selection.parse_labels(query_labels) if query_labels is not None else both,
        key_labels=selection.parse_labels(key_labels) if key_labels is not None else both,
        batch=batch,
        head=head,
        max_rows=max_rows,
        max_cols=max_cols,
        full=full,
        export_svg=export_svg,
        export_html=export_html,
        force=force,
        stats=stats or "stats" in (parse_show(show) or ()),
        top_k=top_k,
    )
    for spec, option in ((batch, "--batch"), (head, "--head")):
        if spec is not None:
            selection.parse_indices(spec, option)  # a typo is reported before any work
    check_exports(display)

    from attncli.io import loaders, writers

    target = writers.check_output_path(output, force=force) if output is not None else None
    weights_target = None
    if weights_to is not None:
        weights_target = writers.check_output_path(
            weights_to, force=force, option="--weights-to", suffixes=(".npy", ".safetensors")
        )
    read = [loaders.split_spec(spec)[0] for spec in specs] + [mask or "", labels_file or ""]
    from attncli.io.outputs import note_inputs

    note_inputs([path for path in read if path and path != loaders.STDIN])  # no output may be one
    limit = None if memory_limit is None else _memory_limit(memory_limit)
    if device.strip().lower() != "cpu":  # reported before any file is read; the CPU is always there
        from attncli.compute import resolve_device

        resolve_device(device)
    # torch is imported after the files are read: a missing or malformed file is reported at once
    inputs = loaders.load_attention_inputs(specs, stdin, layer=selection.parse_layers(layer), step=step)
    if inputs.layers is not None:
        display = replace(display, layers=inputs.layers)
    if inputs.real_rows is not None:
        display = replace(display, real_rows=inputs.real_rows)
    if inputs.tokens is not None and not given_labels and query_labels is None and key_labels is None:
        display = with_token_labels(display, inputs.tokens)
        if inputs.query_tokens is not None:  # a decoding step: one query row, the token it read
            display = replace(display, query_labels=inputs.query_tokens[0])
    query_positions = inputs.query.shape[-2] if inputs.query.ndim > 1 else 1
    label_option = "--labels-file" if labels_file else "--labels"
    selection.check_label_count(
        display.query_labels, query_positions, "--query-labels" if query_labels else label_option, "query"
    )
    selection.check_label_count(
        display.key_labels,
        inputs.key.shape[-2] if inputs.key.ndim > 1 else 1,
        "--key-labels" if key_labels else label_option,
        "key",
    )
    mask_tensor = loaders.load_mask(mask, stdin) if mask else inputs.mask
    mask_label = inputs.mask_source if mask is None else ("<stdin>" if mask == "-" else mask)
    names = {**inputs.sources, "mask": mask_label or "mask"}
    from attncli.compute import heads_note, prepare
    from attncli.compute.kernels import choose

    # A capture in half precision is computed in its dtype unless --dtype says otherwise.
    compute_dtype = (
        inputs.dtype if dtype is DType.auto and inputs.dtype in ("bfloat16", "float16") else dtype.value
    )
    kernel = choose(
        inputs.query.shape,
        inputs.key.shape,
        heads=heads,
        dtype=compute_dtype,
        device=device,
        whole=not (stream or weights_target is not None),
        check=check,
    )
    problem = prepare(
        inputs.query,
        inputs.key,
        inputs.value,
        scale=inputs.scale if scale is None else scale,
        mask=mask_tensor,
        causal=causal,
        heads=heads,
        dtype=compute_dtype,
        device=device,
        names=names,
        kernel=kernel,
    )
    check_matrix_choice(display, problem)
    _app.note(heads_note(problem, names["query"]))  # after every refusal: an error stays one line
    shown = not quiet and output_format is OutputFormat.table
    # A table shows a few rows and columns, kept block by block; --full shows every weight.
    full_table = full and view is View.table and (shown or bool(export_svg or export_html))
    # -o writes the weights block by block to .safetensors and .npz; JSON holds them as text.
    text_file = target is not None and target.suffix.lower() not in writers.RESULT_FORMATS
    from attncli.compute import plan as planning

    request = planning.Request(
        memory_limit=limit,
        blocks=stream or weights_target is not None,
        as_text=text_file or output_format is OutputFormat.json,
        check=check,
        full_table=full_table,
        output_only=not (shown or export_svg or export_html)
        and not display.stats
        and not top_k
        and weights_target is None
        and target is None,
        stats=display.stats,
    )
    comparisons = compute_and_finish(
        problem,
        planning.plan(problem, request),
        inputs.sources,
        mask_label,
        target,
        weights_target,
        display,
        check=check,
    )
    if not all(comparison.passed for comparison in comparisons):
        raise typer.Exit(ExitCode.DIFFERENT)


#: The dtypes of a capture (its metadata's `dtype`) that `attn compute --layer` computes in by default.
HALF = ("bfloat16", "float16")


def _memory_limit(text: str) -> int:
    """--memory-limit in bytes: '2GiB', '500MB', '1e9'."""
    from attncli.selection import parse_size

    return parse_size(text, "--memory-limit")
