"""`attn model`: capture a layer of a local Transformers model and show it as `attn compute` would,
with a line saying whether attncli's weights agree with the model's own probabilities."""

from dataclasses import replace
from typing import Annotated, Any

import typer

from attncli.cli._app import AttnCommand, ColorMode, app
from attncli.cli._display import (
    DISPLAY,
    CheckOption,
    ColorOption,
    ColorScale,
    ColorScaleOption,
    Display,
    ExportHtmlOption,
    ExportSvgOption,
    ForceOption,
    FullOption,
    HeadOption,
    LabelsFileOption,
    MaxColsOption,
    MaxRowsOption,
    NoColorOption,
    OutputFormat,
    OutputFormatOption,
    OutputOption,
    Pool,
    PoolOption,
    PrecisionOption,
    QuietOption,
    ShowOption,
    StatsOption,
    TopKOption,
    View,
    ViewOption,
    attend_for_view,
    check_exports,
    checked,
    color_mode,
    finish,
    parse_show,
    with_token_labels,
)
from attncli.cli.capture import (
    CaptureDeviceOption,
    CaptureDTypeOption,
    DeviceMapOption,
    ModelDirArgument,
    MoreTextsOption,
    OffloadFolderOption,
    TextArgument,
    TextsFileOption,
    check_model_options,
    gather_texts,
    status_line,
)
from attncli.errors import ExitCode, UsageError


@app.command("model", cls=AttnCommand)
def model_command(
    model_dir: ModelDirArgument,
    text: TextArgument = None,
    more_texts: MoreTextsOption = None,
    texts_file: TextsFileOption = None,
    layer: Annotated[
        str,
        typer.Option(
            metavar="LAYERS",
            help="The layer to show (0 is the first); 1,3, 0:4 or all stack several on a first axis.",
        ),
    ] = "0",
    stats: StatsOption = False,
    top_k: TopKOption = None,
    check: CheckOption = False,
    view: ViewOption = View.table,
    labels: Annotated[
        str | None,
        typer.Option(
            help="Names of the positions instead of the tokens: 'The cat sat' or 'The,cat,sat'.",
            rich_help_panel=DISPLAY,
        ),
    ] = None,
    labels_file: LabelsFileOption = None,
    batch: Annotated[
        str | None,
        typer.Option(metavar="I", help="Texts to show: 0, 1,3 or 0:4.", rich_help_panel=DISPLAY),
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
    export_svg: ExportSvgOption = None,
    export_html: ExportHtmlOption = None,
    force: ForceOption = False,
    device: CaptureDeviceOption = "cpu",
    dtype: CaptureDTypeOption = "auto",
    device_map: DeviceMapOption = None,
    offload_folder: OffloadFolderOption = None,
) -> None:
    """Run a local Transformers model over texts and show one layer's attention, labelled with the tokens.

    The same as 'attn capture' then 'attn compute --layer N', without the file in between. The
    header says whether attncli's weights agree with the model's own attention probabilities (the
    model run again with eager attention and output_attentions): exit status 1 when the largest
    difference is above 1e-5 (float32; 0.0039 in float16, 0.031 in bfloat16, where the model
    rounds its scores before the softmax). attncli computes in the dtype the model ran in.

    Needs the models extra: pip install 'attncli\\[models]'.

    [bold]Examples[/]

      attn model ./all-MiniLM-L6-v2 "The cat sat on the mat." --layer 3 --head 0:4
      attn model ./tiny-llama "Hello there" --layer 1 --view heatmap --stats
      attn model ./all-MiniLM-L6-v2 --text "A cat." --text "Two dogs." --batch 1 --head 3

    Exit status: 0 success, 1 attncli disagrees with the model, 2 bad usage or a folder or model
    that cannot be used, 3 could not compute or write.
    """
    from attncli import selection
    from attncli.io.text import read_labels
    from attncli.models import capture

    texts = gather_texts(text, more_texts, texts_file)
    if labels and labels_file:
        raise UsageError("give --labels or --labels-file, not both")
    given = read_labels(labels_file) if labels_file else selection.given_labels(labels)
    display = Display(
        output_format=output_format,
        quiet=quiet,
        precision=precision,
        color=color_mode(color, no_color),
        view=view,
        pool=pool,
        color_scale=color_scale,
        show=parse_show(show),
        query_labels=given,
        key_labels=given,
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
            selection.parse_indices(spec, option)  # a typo is reported before the model is loaded
    mapping = check_model_options(device, dtype, device_map)
    folder = capture.model_folder(model_dir)  # before NumPy, torch and transformers are imported
    items = None if layer.strip() == "all" else selection.parse_indices(layer, "--layer")
    with status_line(not quiet, f"loading {folder}") as status:
        from attncli.io import loaders, writers

        check_exports(display)
        target = writers.check_output_path(output, force=force) if output is not None else None
        capture.require_transformers("attn model")
        captured = capture.capture(
            model_dir,
            texts,
            items,
            agree=True,  # compared layer by layer in the second pass: only the figures are kept
            option="--layer",
            device=device,
            dtype=dtype,
            device_map=mapping,
            offload_folder=offload_folder,
            progress=status,
        )
    source = loaders.TensorFile(model_dir, captured.arrays(), named=True, metadata=captured.metadata())
    layers = sorted(captured.layers)
    one = items is not None and len(items) == 1 and isinstance(items[0], int)
    inputs = loaders.layer_inputs(source, layers[0]) if one else loaders.stacked_layer_inputs(source, layers)
    if inputs.layers is not None:
        display = replace(display, layers=inputs.layers)
    if inputs.real_rows is not None:
        display = replace(display, real_rows=inputs.real_rows)
    if inputs.tokens is not None and given is None:
        display = with_token_labels(display, inputs.tokens)
    selection.check_label_count(
        display.query_labels, inputs.query.shape[-2], "--labels-file" if labels_file else "--labels", "query"
    )

    from attncli.compute import prepare

    names = {**inputs.sources, "mask": inputs.mask_source or "mask"}
    problem = prepare(
        inputs.query,
        inputs.key,
        inputs.value,
        scale=inputs.scale,
        mask=inputs.mask,
        names=names,
        dtype=captured.dtype,  # the model's own: its probabilities are rounded to it
    )
    result = attend_for_view(problem, display)
    assert result.weights is not None
    # one verdict for every layer shown: the largest of their differences from the model's own
    # probabilities, measured as each layer ran in the agreement pass
    agreement = capture.verdict(max(captured.differences[number] for number in layers), captured.dtype)
    comparisons = checked(problem, result, display) if check else []
    extra: dict[str, Any] = {"model": model_dir, "texts": captured.texts, "tokens": captured.tokens}
    extra |= {"model_dtype": captured.dtype, "model_device": captured.device}
    extra |= {"layer": layers[0]} if one else {"layers": layers}
    finish(
        result,
        inputs.sources,
        inputs.mask_source,
        target,
        display,
        comparisons=comparisons,
        extra_meta=extra | {"agreement": agreement},
    )
    if not agreement["passed"] or not all(comparison.passed for comparison in comparisons):
        raise typer.Exit(ExitCode.DIFFERENT)
