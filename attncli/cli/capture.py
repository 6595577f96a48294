"""`attn capture`: run a local Transformers model over texts and save what its attention used."""

from __future__ import annotations

from typing import Annotated

import typer

from attncli.cli._app import AttnCommand, app
from attncli.errors import UsageError

ModelDirArgument = Annotated[
    str,
    typer.Argument(
        metavar="MODEL_DIR",
        help="A Hugging Face model folder (config.json, weights, tokenizer), read locally, never downloaded.",
        show_default=False,
    ),
]
TextArgument = Annotated[
    str | None,
    typer.Argument(metavar="TEXT", help="The text to run the model on.", show_default=False),
]
MoreTextsOption = Annotated[
    list[str] | None,
    typer.Option(
        "--text",
        metavar="TEXT",
        help="Another text (repeat for a batch: texts are padded, and the padding is masked).",
        show_default=False,
    ),
]
TextsFileOption = Annotated[
    str | None,
    typer.Option(metavar="PATH", help="Texts, one per line (blank lines skipped).", show_default=False),
]


def gather_texts(text: str | None, more_texts: list[str] | None, texts_file: str | None) -> list[str]:
    """TEXT, then each --text, then the lines of --texts-file: one batch, in that order."""
    texts = ([text] if text is not None else []) + list(more_texts or [])
    if texts_file is not None:
        from attncli.io.text import read_texts

        texts += read_texts(texts_file)
    if not texts:
        raise UsageError(
            "no text: give one after MODEL_DIR, with --text (repeatable) or with --texts-file "
            "(e.g. attn capture MODEL_DIR 'The cat sat on the mat' -o run.safetensors)"
        )
    return texts


@app.command("capture", cls=AttnCommand)
def capture_command(
    model_dir: ModelDirArgument,
    text: TextArgument = None,
    more_texts: MoreTextsOption = None,
    texts_file: TextsFileOption = None,
    layers: Annotated[
        str | None,
        typer.Option(metavar="L", help="Layers to record: 0, 0,3,5 or 0:4 (default: every layer)."),
    ] = None,
    output: Annotated[
        str | None,
        typer.Option(
            "--output", "-o", metavar="PATH", help="Where to save them: .safetensors, .npz or .json."
        ),
    ] = None,
    force: Annotated[bool, typer.Option("--force", "-f", help="Replace an existing output file.")] = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Print no results (errors and warnings still go to stderr).")
    ] = False,
) -> None:
    """Run a local Transformers model once over texts and save, per layer, what its attention used.

    For each chosen layer: query, key and value per head as the model's attention receives them
    (after rotary embeddings; key/value before grouped-query heads are repeated), and the mask it
    applied (causal and padding) as booleans, True = may attend. The metadata holds the model, the
    texts, their tokens, and each layer's scale and head counts. Weights are computed in float32.

    Needs the models extra: pip install 'attncli\\[models]'. The model is read from MODEL_DIR only,
    never downloaded; any architecture that supports Transformers' attn_implementation works.

    [bold]Examples[/]

      attn capture ./all-MiniLM-L6-v2 "The cat sat on the mat." -o run.safetensors
      attn capture ./tiny-llama --text "Hello there" --text "Hi" --layers 0,3 -o run.safetensors
      attn compute run.safetensors --layer 3 --head 0:4 --view heatmap

    Exit status: 0 success, 2 bad usage, a folder or model that cannot be used, 3 could not write.
    """
    from attncli import selection

    if output is None:
        raise UsageError(
            f"give -o PATH to save the capture (e.g. attn capture {model_dir} TEXT -o run.safetensors)"
        )
    texts = gather_texts(text, more_texts, texts_file)
    chosen = selection.parse_indices(layers, "--layers") if layers is not None else None
    from attncli.models import capture

    capture.model_folder(model_dir)  # before NumPy, torch and transformers are imported
    from attncli.io import writers

    target = writers.check_output_path(output, force=force)
    capture.require_transformers("attn capture")
    captured = capture.capture(model_dir, texts, chosen)
    writers.write_result(target, captured.arrays(), captured.metadata())
    if quiet:
        return
    first = next(iter(captured.layers.values()))
    shapes = " · ".join(f"{role} {tuple(getattr(first, role).shape)}" for role in ("query", "key", "value"))
    numbers = ", ".join(map(str, captured.layers))
    lines = [
        f"captured layer{'s' if len(captured.layers) > 1 else ''} {numbers} of {captured.num_layers} from "
        f"{model_dir} ({captured.model_type}), {len(texts)} text{'s' if len(texts) > 1 else ''}:",
        f"  {shapes} · mask {tuple(first.mask.shape)} · scale {first.scaling:.6g}",
        *(
            f"  tokens {i}: {' '.join(tokens[:n])}"
            for i, (tokens, n) in enumerate(zip(captured.tokens, captured.lengths, strict=True))
        ),
        f"saved {target}; show a layer with: attn compute {target} --layer {next(iter(captured.layers))}",
    ]
    typer.echo("\n".join(lines))
