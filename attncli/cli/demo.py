"""`attn demo`: the textbook example attncli grew from, and attncli agreeing with it."""

from attncli.cli._app import AttnCommand, ColorMode, app
from attncli.cli._app import console as make_console
from attncli.cli._display import (
    ColorOption,
    Display,
    NoColorOption,
    PrecisionOption,
    attend_for_view,
    color_mode,
    finish,
)


@app.command(cls=AttnCommand)
def demo(
    precision: PrecisionOption = 4, color: ColorOption = ColorMode.auto, no_color: NoColorOption = False
) -> None:
    """Show the textbook self_attention, run it on its 3-position sample, and attncli's result beside it."""
    from rich.syntax import Syntax

    from attncli import demo as seed
    from attncli.compute import prepare
    from attncli.compute.kernels import choose
    from attncli.compute.result import as_array

    console = make_console(color_mode(color, no_color))
    query, key, value = seed.sample_arrays()
    kernel = choose(query.shape, key.shape)
    console.print(
        "[bold]The tutorial's self-attention[/] (the function attncli grew from), "
        "on batch 1, 3 positions, 4 features:"
    )
    for source in (seed.tutorial_source(), seed.sample_source()):
        console.print(Syntax(source, "python", theme="ansi_dark", background_color="default", word_wrap=True))
    if kernel == "numpy":  # the tutorial's steps in NumPy: no torch to import for 3 x 3 numbers
        tutorial_output, tutorial_weights = seed.tutorial_in_numpy(query, key, value)
        compared = "the tutorial's steps (run in NumPy)"
    else:
        tutorial = seed.run_tutorial(*seed.sample_tensors())
        tutorial_output, tutorial_weights = (as_array(x) for x in tutorial)
        compared = "the tutorial"
    display = Display(precision=precision, color=color_mode(color, no_color))
    result = attend_for_view(prepare(query, key, value, kernel=kernel), display)
    assert result.weights is not None
    weights_gap = float(abs(as_array(result.weights) - tutorial_weights).max())
    output_gap = float(abs(as_array(result.output) - tutorial_output).max())
    console.print(
        f"attncli agrees with {compared}: max |Δ weights| = {weights_gap:.3g}, "
        f"max |Δ output| = {output_gap:.3g}\n",
        markup=False,
        highlight=False,
    )
    sources = {"query": "sample", "key": "sample", "value": "sample"}
    finish(result, sources, None, None, display, console)
