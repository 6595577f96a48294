"""`attn demo`: the textbook example attncli grew from, and attncli agreeing with it."""

from __future__ import annotations

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

    console = make_console(color_mode(color, no_color))
    query, key, value = seed.sample_tensors()
    console.print(
        "[bold]The tutorial's self-attention[/] (the function attncli grew from), "
        "on batch 1, 3 positions, 4 features:"
    )
    for source in (seed.tutorial_source(), seed.sample_source()):
        console.print(Syntax(source, "python", theme="ansi_dark", background_color="default", word_wrap=True))
    tutorial_output, tutorial_weights = seed.self_attention(query, key, value)  # type: ignore[no-untyped-call]
    display = Display(precision=precision, color=color_mode(color, no_color))
    result = attend_for_view(prepare(query, key, value), display)
    assert result.weights is not None
    weights_gap = (result.weights - tutorial_weights).abs().max().item()
    output_gap = (result.output - tutorial_output).abs().max().item()
    console.print(
        f"attncli agrees with the tutorial: max |Δ weights| = {weights_gap:.3g}, "
        f"max |Δ output| = {output_gap:.3g}\n",
        markup=False,
        highlight=False,
    )
    sources = {"query": "sample", "key": "sample", "value": "sample"}
    finish(result, sources, None, None, display, console)
