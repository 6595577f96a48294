"""What commands share about showing a result: the display options, and finishing a result
(checks, warnings, saving, rendering, exporting)."""

from __future__ import annotations

import math
import os
import shlex
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Annotated, Any

import typer

from attncli import __version__
from attncli.cli._app import ColorMode, warn
from attncli.cli._app import console as make_console
from attncli.errors import UsageError

if TYPE_CHECKING:
    import numpy as np
    from rich.console import Console

    from attncli.analysis.rows import RowStats
    from attncli.compute import AttentionResult, Prepared
    from attncli.compute.check import ReferenceCheck
    from attncli.compute.plan import Plan
    from attncli.io.writers import ResultFile
    from attncli.present.options import ViewOptions


class OutputFormat(str, Enum):
    table = "table"
    json = "json"


class View(str, Enum):
    table = "table"
    heatmap = "heatmap"
    grid = "grid"


class Pool(str, Enum):
    max = "max"
    mean = "mean"


class ColorScale(str, Enum):
    fixed = "fixed"
    max = "max"
    row = "row"
    log = "log"


ATTENTION, ANALYSIS, DISPLAY, SAVE = "Attention", "Analysis", "Display", "Save"


# --- the options of the commands that compute attention (compute, heads, rollout, model) ----------


class DType(str, Enum):
    auto = "auto"
    float32 = "float32"
    float64 = "float64"
    float16 = "float16"
    bfloat16 = "bfloat16"


def check_scale(value: float | None) -> float | None:
    if value is not None and (not math.isfinite(value) or value == 0):
        raise typer.BadParameter(f"must be a finite, non-zero number, not {value}")
    return value


PathsArgument = Annotated[
    list[str] | None,
    typer.Argument(
        metavar="[QUERY KEY VALUE | FILE]",  # usage: attn compute [OPTIONS] [QUERY KEY VALUE | FILE]
        help="Three tensor files, or one holding query/key/value (or one tensor for self-attention). "
        "PATH:NAME picks a tensor from a file; '-' or no path reads stdin.",
        show_default=False,
    ),
]


ScaleOption = Annotated[
    float | None,
    typer.Option(
        callback=check_scale,
        help="Multiply scores by this. Default: 1/sqrt(key features per head).",
        rich_help_panel=ATTENTION,
    ),
]
CausalOption = Annotated[
    bool, typer.Option("--causal", help="Query i attends to keys j <= i.", rich_help_panel=ATTENTION)
]
MaskOption = Annotated[
    str | None,
    typer.Option(
        metavar="PATH",
        help="Boolean (True = may attend) or float (added to scores) tensor; broadcasts to the weights.",
        rich_help_panel=ATTENTION,
    ),
]
HeadsOption = Annotated[
    int | None,
    typer.Option(min=1, help="Split the feature axis into this many heads.", rich_help_panel=ATTENTION),
]
DTypeOption = Annotated[
    DType, typer.Option(help="auto: float64 if an input is float64, else float32.", rich_help_panel=ATTENTION)
]
DeviceOption = Annotated[str, typer.Option(help="cpu, cuda, cuda:N or auto.", rich_help_panel=ATTENTION)]
OutputOption = Annotated[
    str | None,
    typer.Option(
        "--output",
        "-o",
        metavar="PATH",
        help="Save the results and their metadata: .safetensors, .npz or .json.",
        rich_help_panel=SAVE,
    ),
]
PrecisionOption = Annotated[
    int,
    typer.Option(
        "--precision",
        min=0,
        max=12,
        help="Digits after the decimal point in tables.",
        rich_help_panel=DISPLAY,
    ),
]
ColorOption = Annotated[
    ColorMode,
    typer.Option(
        "--color",
        metavar="WHEN",
        help="auto: colours on a terminal, unless NO_COLOR is set (FORCE_COLOR: on a pipe too); "
        "always: also through pipes and into files (attn ... | less -R); never: plain text.",
        rich_help_panel=DISPLAY,
    ),
]
NoColorOption = Annotated[bool, typer.Option("--no-color", help="The same as --color never.", hidden=True)]


def color_mode(color: ColorMode, no_color: bool) -> ColorMode:
    """--color, or never with --no-color (the older spelling)."""
    return ColorMode.never if no_color else color


# Options that `attn compute` and `attn model` share, defined once.
StatsOption = Annotated[
    bool,
    typer.Option(
        "--stats",
        help="Per query: entropy, largest weight and its key, weight on key 0 (sink), mean distance.",
        rich_help_panel=ANALYSIS,
    ),
]

TopKOption = Annotated[
    int | None,
    typer.Option(min=1, metavar="K", help="Per query, its K most attended keys.", rich_help_panel=ANALYSIS),
]

CheckOption = Annotated[
    bool,
    typer.Option(
        "--check",
        help="Also compute with scaled_dot_product_attention and in float64; exit 1 if they disagree.",
        rich_help_panel=ANALYSIS,
    ),
]

ViewOption = Annotated[
    View,
    typer.Option(
        help="table: numbers on coloured cells; heatmap: one coloured block per weight; grid: every "
        "matrix as a small heatmap, side by side (with --layer all: every layer and head).",
        rich_help_panel=DISPLAY,
    ),
]

LabelsFileOption = Annotated[
    str | None,
    typer.Option(metavar="PATH", help="Names of the positions, one per line.", rich_help_panel=DISPLAY),
]

HeadOption = Annotated[
    str | None,
    typer.Option(metavar="H", help="Heads to show: 0, 1,3 or 0:4.", rich_help_panel=DISPLAY),
]

MaxRowsOption = Annotated[
    int | None,
    typer.Option(min=3, help="Rows per matrix (default: what fits the terminal).", rich_help_panel=DISPLAY),
]

MaxColsOption = Annotated[
    int | None,
    typer.Option(
        min=3,
        help="Columns per table (default: what fits; more make the table wider than the terminal, "
        "for less -S).",
        rich_help_panel=DISPLAY,
    ),
]

FullOption = Annotated[
    bool, typer.Option("--full", help="Every row and column, however large.", rich_help_panel=DISPLAY)
]

PoolOption = Annotated[
    Pool,
    typer.Option(
        help="Heatmaps larger than the terminal: max or mean of each block.", rich_help_panel=DISPLAY
    ),
]

ColorScaleOption = Annotated[
    ColorScale,
    typer.Option(
        "--color-scale",
        help="How weights map to colours: fixed (0 to 1, the same colour is the same weight "
        "everywhere), max (0 to each matrix's largest), row (each row to its largest), log (log10, "
        "1e-4 to 1).",
        rich_help_panel=DISPLAY,
    ),
]

OutputFormatOption = Annotated[
    OutputFormat,
    typer.Option(
        "--format",
        help="table: what --view shows; json: weights, output, meta.",
        rich_help_panel=DISPLAY,
    ),
]

QuietOption = Annotated[
    bool,
    typer.Option(
        "--quiet",
        "-q",
        help="Print no results (errors, warnings and notes still go to stderr).",
        rich_help_panel=DISPLAY,
    ),
]

ExportSvgOption = Annotated[
    str | None,
    typer.Option(
        metavar="PATH", help="Save what was shown as a standalone SVG picture.", rich_help_panel=SAVE
    ),
]

ExportHtmlOption = Annotated[
    str | None,
    typer.Option(metavar="PATH", help="Save what was shown as a standalone HTML page.", rich_help_panel=SAVE),
]

ForceOption = Annotated[
    bool, typer.Option("--force", "-f", help="Replace existing output files.", rich_help_panel=SAVE)
]


@dataclass(frozen=True)
class Display:
    """The display and export options of a command, as given."""

    output_format: OutputFormat = OutputFormat.table
    quiet: bool = False
    precision: int = 4
    color: ColorMode = ColorMode.auto
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
    stats: bool = False
    top_k: int | None = None
    layers: list[int] | None = None  # layers of a capture stacked on the first axis (--layer 1,3)
    color_scale: ColorScale = ColorScale.fixed
    #: --show: the sections to show; None: the view's own (table: weights and output; heatmap and
    #: grid: the weights; each with the statistics when --stats computed them)
    show: tuple[str, ...] | None = None
    #: Of a capture: bool, broadcasting to the weights less their key axis, False for padding rows,
    #: which the means leave out (`loaders.AttentionInputs.real_rows`)
    real_rows: np.ndarray | None = None

    @property
    def no_color(self) -> bool:
        return self.color is ColorMode.never


def shown_sections(display: Display) -> tuple[str, ...]:
    """What the view shows: --show, or the view's own sections (see Display.show)."""
    if display.show is not None:
        return display.show
    own = ("weights", "output") if display.view is View.table else ("weights",)
    return (*own, "stats")


def parse_show(text: str | None) -> tuple[str, ...] | None:
    """--show weights,output,stats (any of them, in any order)."""
    if text is None:
        return None
    from attncli.present.options import SECTIONS

    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in SECTIONS]
    if unknown or not names:
        raise UsageError(f"--show {text}: choose from {', '.join(SECTIONS)} (e.g. --show weights,stats)")
    return names


ShowOption = Annotated[
    str | None,
    typer.Option(
        metavar="SECTIONS",
        help="What to show: weights, output, stats, comma-separated (stats computes them as --stats "
        "does). Default: weights and output for the table view, the weights for heatmap and grid.",
        rich_help_panel=DISPLAY,
    ),
]


def with_token_labels(display: Display, tokens: Sequence[Sequence[str]]) -> Display:
    """`display` with its positions named by a capture's tokens: those of the batch entry --batch
    shows, or of every entry when they are all the same. Shown entries whose tokens differ keep
    their position numbers, with a warning (one set of labels names both axes of every matrix)."""
    from dataclasses import replace

    from attncli.selection import parse_indices, resolve_indices

    entries = list(range(len(tokens)))
    if display.batch is not None:
        entries = resolve_indices(
            parse_indices(display.batch, "--batch"), len(tokens), "--batch", "batch entries"
        )
    shown = {tuple(tokens[i]) for i in entries}
    if len(shown) != 1:
        warn(
            "the texts have different tokens, so positions are numbered; "
            "pick one with --batch I to see its tokens"
        )
        return display
    labels = list(next(iter(shown)))
    return replace(display, query_labels=labels, key_labels=labels)


def check_exports(display: Display) -> None:
    from attncli.io.writers import check_output_path

    if display.export_svg is not None:
        check_output_path(display.export_svg, force=display.force, option="--export-svg", suffixes=(".svg",))
    if display.export_html is not None:
        check_output_path(
            display.export_html, force=display.force, option="--export-html", suffixes=(".html", ".htm")
        )


def compute_and_finish(
    problem: Prepared,
    plan: Plan,
    sources: dict[str, str],
    mask_label: str | None,
    target: os.PathLike[str] | None,
    weights_target: os.PathLike[str] | None,
    display: Display,
    *,
    check: bool = False,
) -> list[ReferenceCheck]:
    """Run `problem` as planned, keeping what is shown or saved, then `finish`. A run in blocks keeps
    the output, the statistics and top-k, a pooled picture or a table's cells per matrix, and the
    weights only into -o (.safetensors, .npz) and --weights-to, block by block. Returns the
    comparisons of --check."""
    from attncli.compute import fused, run

    if plan.method == "whole":
        result = attend_for_view(problem, display)
        comparisons = checked(problem, result, display) if check else []
        finish(result, sources, mask_label, target, display, comparisons=comparisons)
        return comparisons

    from attncli.compute.run import open_result_file

    picture, table = _kept_views(problem, display)
    assert plan.block_rows is not None
    lq = problem.weights_shape[-2]
    # -o holds the weights too: block by block, the rest once computed
    result_file = None if target is None else open_result_file(target, problem)
    with result_file or nullcontext(), _progress(lq, enabled=not display.quiet) as advance:
        if plan.method == "fused":
            result = fused(problem, block_rows=plan.block_rows, progress=advance)
        else:
            result = run(
                problem,
                block_rows=plan.block_rows,
                stats=display.stats,
                entropy=table is not None,  # a title gives the mean entropy
                top_k=display.top_k,
                picture=picture,
                table=table,
                weights_to=weights_target,
                result_file=result_file,
                progress=advance,
            )
        finish(
            result,
            sources,
            mask_label,
            target,
            display,
            result_file=result_file,
            extra_meta={"weights_saved_to": weights_target and str(weights_target)},
        )
    return []


def _kept_views(
    problem: Prepared, display: Display
) -> tuple[tuple[int, int] | None, tuple[list[int], list[int]] | None]:
    """`present.tables.kept_views` for this terminal, whole run or blocks; (None, None) when
    nothing is shown."""
    screen = screen_for(display)
    if screen is None:
        return None, None
    from attncli.present.tables import kept_views

    layout = _view_options(display, screen, display.view.value, {"batch": None, "head": None}, ())
    lq, lk = problem.weights_shape[-2:]
    return kept_views((lq, lk), layout)


def attend_for_view(problem: Prepared, display: Display) -> AttentionResult:
    """The whole run of `problem`, its weights kept, with what the view and -o take of them."""
    from attncli.compute import run

    picture, table = _kept_views(problem, display)
    return run(
        problem,
        keep_weights=True,
        stats=display.stats,
        entropy=table is not None,  # a title gives the mean entropy
        top_k=display.top_k,
        picture=picture,
        table=table,
    )


def finish(
    result: AttentionResult,
    sources: dict[str, str],
    mask_label: str | None,
    target: os.PathLike[str] | None,
    display: Display,
    console: Console | None = None,
    comparisons: Sequence[ReferenceCheck] = (),
    extra_meta: Mapping[str, Any] | None = None,
    result_file: ResultFile | None = None,
) -> None:
    """Check the display choices against the result, warn, save (into `result_file`, which holds the
    weights already, when the run wrote them there block by block), then show and export."""
    import numpy as np

    from attncli.compute import bfloat16_arrays, describe, result_arrays
    from attncli.compute.result import as_array

    meta = {**describe(result), "sources": sources, "mask": mask_label, "attncli_version": __version__}
    if result.weights is None:  # computed in blocks: say how
        meta |= {"computed_by": result.method, "block_rows": result.block_rows}
    meta |= extra_meta or {}
    if display.layers is not None:  # the first leading axis is the capture's layers
        meta["weights_axes"] = ["layer", *meta["weights_axes"][1:]]
        meta["layers"] = display.layers
    if comparisons:
        meta["check"] = [comparison.as_dict() for comparison in comparisons]
    axes = meta["weights_axes"][:-2]
    chosen = _chosen_matrices(display, axes, tuple(result.weights_shape))
    _warn_masked_rows(result.fully_masked_rows())
    arrays = result_arrays(result)
    arrays |= _analysis_arrays(result.stats if display.stats else None, result.top_k, meta, display.real_rows)
    bfloat16 = bfloat16_arrays(result)  # stored as bfloat16 again where the format has it
    if result_file is not None:
        result_file.commit(arrays, meta, bfloat16=bfloat16)  # before printing, as _save_and_print does
        target = None
    _save_and_print(arrays, meta, target, display, bfloat16)
    screen = screen_for(display, console)
    if screen is None:
        return

    from attncli.present import tables

    assert result.table is not None, "the run keeps what the view shows: attend_for_view, _kept_views"
    options = _view_options(display, screen, display.view.value, chosen, axes)
    pictures = result.picture_max if display.pool is Pool.max else result.picture_mean
    row_entropy = result.entropy if result.stats is None else result.stats.entropy
    entropy = None if row_entropy is None else as_array(row_entropy).astype(np.float64)
    if entropy is not None and display.real_rows is not None:  # titles' means leave padding out
        entropy = np.where(np.broadcast_to(display.real_rows, entropy.shape), entropy, np.nan)
    view = tables.result_view(
        arrays["output"],
        meta,
        options,
        result.table,
        entropy,
        analysis=arrays,
        pictures=pictures,
        picture_blocks=result.picture_blocks,
        counted_rows=display.real_rows,
    )
    wide = display.full or bool(display.max_cols)  # tables as wide as asked, not cut at the width
    screen.console.print(view, crop=not wide, overflow="ignore" if wide else None)
    if comparisons:
        screen.console.print(tables.check_table(comparisons))
    export_view(screen, display)


@dataclass(frozen=True)
class Screen:
    """Where a view is rendered: the terminal, or a silent recording for --export-svg/--export-html."""

    console: Console
    colour: bool  # colours can be relied on (heatmaps use characters otherwise)
    lines: int  # rows of a table, lines of a heatmap


def screen_for(display: Display, console: Console | None = None) -> Screen | None:
    """The console to render to; None when nothing is shown or exported (-q, --format json)."""
    exporting = bool(display.export_svg or display.export_html)
    shown_here = not display.quiet and display.output_format is OutputFormat.table
    if not (shown_here or exporting):
        return None
    console = console or make_console(display.color, record=exporting, silent=not shown_here)
    colour = not display.no_color and (console.color_system is not None or exporting)
    lines = display.max_rows or (max(10, console.height - 8) if console.is_terminal else 32)
    return Screen(console, colour, lines)


def _view_options(
    display: Display, screen: Screen, view: str, chosen: dict[str, list[int] | None], axes: Sequence[str]
) -> ViewOptions:
    from attncli.present.options import ViewOptions

    return ViewOptions(
        view=view,
        precision=display.precision,
        width=screen.console.width,
        max_rows=screen.lines,
        max_cols=display.max_cols,
        full=display.full,
        pool=display.pool.value,
        color_scale=display.color_scale.value,
        sections=shown_sections(display),
        colour=screen.colour,
        query_labels=display.query_labels,
        key_labels=display.key_labels,
        batch=chosen["batch"],
        head=chosen["head"],
        axes=axes,
        axis_values={} if display.layers is None else {"layer": display.layers},
    )


def _save_and_print(
    arrays: dict[str, np.ndarray],
    meta: dict[str, Any],
    target: os.PathLike[str] | None,
    display: Display,
    bfloat16: Sequence[str] = (),
) -> None:
    """-o first, so that a closed pipe or Ctrl-C while printing cannot lose the file; then --format json."""
    from attncli.io import writers

    if target is not None:
        writers.write_result(target, arrays, meta, bfloat16=bfloat16)
    if display.output_format is OutputFormat.json and not display.quiet:
        sys.stdout.flush()
        # A piece at a time, never the whole text.
        writers.write_json(sys.stdout.buffer, arrays, meta, bfloat16=bfloat16)
        sys.stdout.buffer.write(b"\n")
        sys.stdout.buffer.flush()


def export_view(screen: Screen, display: Display) -> None:
    """--export-svg and --export-html: what the console recorded."""
    from attncli.io import writers
    from attncli.present.export import export_html, export_svg

    title = picture_title(sys.argv[1:])
    if display.export_svg:
        writers.write_text(display.export_svg, export_svg(screen.console, title), option="--export-svg")
    if display.export_html:
        writers.write_text(display.export_html, export_html(screen.console), option="--export-html")


def _warn_masked_rows(rows: Sequence[tuple[int, ...]]) -> None:
    if rows:
        shown = ", ".join(map(str, rows[:5])) + (", ..." if len(rows) > 5 else "")
        warn(f"{len(rows)} query row(s) have every key masked; their weights and output are 0: {shown}")


def checked(problem: Prepared, result: AttentionResult, display: Display) -> list[ReferenceCheck]:
    """--check: `result` against the fused kernel and the float64 maths, with a progress bar."""
    from attncli.compute.check import check

    lq = problem.weights_shape[-2]
    with _progress(lq, enabled=not display.quiet, what="checking query rows") as advance:
        return check(problem, result, progress=advance)


@contextmanager
def _progress(total: int, *, enabled: bool, what: str = "query rows") -> Iterator[Callable[[int, int], None]]:
    """A progress bar on stderr of `what` is done, shown only when stderr is a terminal and the work
    has taken a second."""
    import time

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    stderr = Console(stderr=True)
    started = time.monotonic()
    bar: Progress | None = None
    task = None

    def advance(done: int, _total: int) -> None:
        nonlocal bar, task
        if bar is None and enabled and stderr.is_terminal and time.monotonic() - started > 1.0:
            bar = Progress(
                TextColumn(what),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]} rows/s"),
                TimeRemainingColumn(),
                console=stderr,
                transient=True,
            )
            bar.start()
            task = bar.add_task("attention", total=total, rate="")
        if bar is not None and task is not None:
            rate = done / max(time.monotonic() - started, 1e-9)
            bar.update(task, completed=done, rate=f"{rate:,.0f}")

    try:
        yield advance
    finally:
        if bar is not None:
            bar.stop()


def check_matrix_choice(display: Display, problem: Prepared) -> None:
    """--batch and --head against the weights' axes before the computation, which may be long."""
    axes = problem.describe()["weights_axes"][:-2]
    _chosen_matrices(display, axes, tuple(problem.weights_shape))


def _chosen_matrices(
    display: Display, axes: Sequence[str], weights_shape: tuple[int, ...]
) -> dict[str, list[int] | None]:
    """--batch and --head checked against the weights' leading axes (before anything is written)."""
    from attncli.selection import no_axis_message, parse_indices, resolve_indices

    chosen: dict[str, list[int] | None] = {"batch": None, "head": None}
    for axis, spec in (("batch", display.batch), ("head", display.head)):
        if spec is None:
            continue
        if axis not in axes:
            raise UsageError(no_axis_message(axis, spec, weights_shape, axes))
        size = weights_shape[list(axes).index(axis)]
        what = "heads" if axis == "head" else "batch entries"
        chosen[axis] = resolve_indices(parse_indices(spec, f"--{axis}"), size, f"--{axis}", what)
    return chosen


def _analysis_arrays(
    stats: RowStats | None,
    top: tuple[Any, Any] | None,  # tensors or NumPy arrays, as the kernel gave them
    meta: dict[str, Any],
    counted: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """The --stats and --top-k tensors, to save and show beside the weights; their means (over
    the `counted` rows: a capture's padding left out) go in meta."""
    import numpy as np

    from attncli.analysis.rows import matrix_means, stats_arrays
    from attncli.compute.result import as_array

    arrays: dict[str, np.ndarray] = {}
    if stats is not None:
        arrays |= stats_arrays(stats)
        meta["stats_means"] = {
            name: as_array(mean).astype(np.float64).tolist()
            for name, mean in matrix_means(stats, counted).items()
        }
    if top is not None:
        arrays["top_k_weights"] = as_array(top[0]).astype(np.float32)
        arrays["top_k_keys"] = as_array(top[1])
    return arrays


def picture_title(args: Sequence[str]) -> str:
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
