"""`attn capture`: run a local Transformers model over texts and save what its attention used."""

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, Any

import typer

from attncli.cli._app import AttnCommand, app
from attncli.errors import UsageError

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

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


CaptureDeviceOption = Annotated[
    str,
    typer.Option(
        "--device", metavar="DEVICE", help="Where the model runs: cpu, cuda, cuda:N or auto (a GPU if any)."
    ),
]
CaptureDTypeOption = Annotated[
    str,
    typer.Option(
        "--dtype",
        metavar="DTYPE",
        help="What the model computes in, and the capture holds: auto (the checkpoint's own on a GPU, "
        "float32 on the CPU), float32, bfloat16, float16.",
    ),
]
DeviceMapOption = Annotated[
    str | None,
    typer.Option(
        "--device-map",
        metavar="MAP",
        help="Leave the placement of the layers to Transformers and Accelerate: auto, balanced, "
        "sequential, or a JSON object (or a .json file) of module name to device (0, cpu, disk).",
        show_default=False,
    ),
]
OffloadFolderOption = Annotated[
    str | None,
    typer.Option(
        metavar="PATH", help="Where --device-map puts the layers it sends to 'disk'.", show_default=False
    ),
]


def check_model_options(device: str, dtype: str, device_map: str | None) -> Any:
    """--device, --dtype and --device-map checked before the model is loaded; the map parsed."""
    from attncli.models.capture import DTYPES

    if dtype not in DTYPES:
        raise UsageError(f"--dtype {dtype}: not one of {', '.join(DTYPES)}")
    text = device.strip().lower()
    if text not in ("cpu", "auto", "cuda") and not (text.startswith("cuda:") and text[5:].isdigit()):
        raise UsageError(f"--device {device}: not one of cpu, cuda, cuda:N, auto")
    if device_map is None:
        return None
    if device_map in ("auto", "balanced", "balanced_low_0", "sequential"):
        return device_map
    import json
    from pathlib import Path

    given = device_map
    if not device_map.lstrip().startswith(("{", "[")):
        path = Path(device_map)
        if not path.is_file():
            raise UsageError(
                f"--device-map {device_map}: not auto, balanced, sequential, a JSON object or a .json file"
            )
        try:
            given = path.read_text()
        except (OSError, UnicodeDecodeError) as error:
            raise UsageError(f"--device-map {device_map}: cannot be read: {error}") from None
    try:
        mapping = json.loads(given)
    except json.JSONDecodeError as error:
        raise UsageError(f"--device-map {device_map}: not JSON: {error}") from None
    if not isinstance(mapping, dict) or not all(
        isinstance(value, int | str) and not isinstance(value, bool) for value in mapping.values()
    ):
        raise UsageError(
            f"--device-map {device_map}: give an object of module name to device, "
            'e.g. {"embeddings": 0, "layers.0": 0, "layers.1": "cpu", "norm": "disk"}'
        )
    return mapping


class StatusLine:
    """What a capture is doing, on stderr while it runs: a spinner line for the stage under way
    (with its time so far, and the layers run), then a line with the time each stage took. Only on
    a terminal, and not with -q; it starts before transformers and torch are imported (seconds)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and _stderr_is_terminal()
        self.progress: Progress | None = None
        self.task: TaskID | None = None
        self.text = ""
        self.started = time.monotonic()

    def start(self, text: str) -> None:
        if not self.enabled:
            return
        from rich.console import Console
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=Console(stderr=True, highlight=False),
            transient=True,
        )
        self.progress.start()
        self.task = self.progress.add_task(text)
        self.text, self.started = text, time.monotonic()

    def stage(self, text: str) -> None:
        """A new stage (the same text again continues the one under way)."""
        if not self.enabled or text == self.text:
            return
        if self.progress is None:
            self.start(text)
            return
        self._done()
        assert self.task is not None
        self.progress.reset(self.task, description=text)
        self.text, self.started = text, time.monotonic()

    def layer(self, done: int, total: int | None) -> None:
        if self.progress is None or self.task is None:
            return
        of = f"/{total}" if total else ""
        self.progress.update(self.task, description=f"{self.text}: attention layer {done}{of}")

    def stop(self, finished: bool) -> None:
        if self.progress is None:
            return
        if finished:
            self._done()
        self.progress.stop()
        self.progress = None

    def _done(self) -> None:
        assert self.progress is not None
        seconds = time.monotonic() - self.started
        self.progress.console.print(f"[green]✓[/] {self.text} [dim]{seconds:.1f} s[/]", markup=True)


def _stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


@contextmanager
def status_line(enabled: bool, first: str) -> Iterator[StatusLine]:
    """A `StatusLine` showing `first` at once; its last stage is marked done when the block ends
    without an error (and left unmarked, for the error line to follow, when it does not)."""
    line = StatusLine(enabled)
    line.start(first)
    finished = False
    try:
        yield line
        finished = True
    finally:
        line.stop(finished)


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
    device: CaptureDeviceOption = "cpu",
    dtype: CaptureDTypeOption = "auto",
    device_map: DeviceMapOption = None,
    offload_folder: OffloadFolderOption = None,
    generate: Annotated[
        int,
        typer.Option(
            metavar="N",
            min=0,
            help="Then N greedy decoding steps (one text, a decoder): each step's query row against the "
            "cache is saved too; show one with attn compute FILE --layer L --step S.",
        ),
    ] = 0,
) -> None:
    """Run a local Transformers model once over texts and save, per layer, what its attention used.

    For each chosen layer: query, key and value per head as the model's attention receives them
    (after rotary embeddings; key/value before grouped-query heads are repeated), and the mask it
    applied (causal and padding) as booleans, True = may attend, stored once for the layers that
    share it. The metadata holds the model, the texts, their tokens, each layer's scale and head
    counts, and the dtype and device the model ran in. Each layer's tensors go to the file as soon
    as the layer has run: memory holds the model and one layer's tensors, not every layer's.

    Needs the models extra: pip install 'attncli\\[models]'. The model is read from MODEL_DIR only,
    never downloaded; any architecture that supports Transformers' attn_implementation works.

    [bold]Examples[/]

      attn capture ./all-MiniLM-L6-v2 "The cat sat on the mat." -o run.safetensors
      attn capture ./tiny-llama --text "Hello there" --text "Hi" --layers 0,3 -o run.safetensors
      attn capture ./llama-7b --texts-file long.txt --device cuda --dtype bfloat16 -o run.safetensors
      attn capture ./llama-70b "Hello" --device-map auto -o run.safetensors
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

    mapping = check_model_options(device, dtype, device_map)
    folder = capture.model_folder(model_dir)  # before NumPy, torch and transformers are imported
    with status_line(not quiet, f"loading {folder}") as status:
        from attncli.io import writers

        target = writers.check_output_path(output, force=force)
        capture.require_transformers("attn capture")
        streams: list[writers.TensorStream] = []

        def open_file(settings: capture.Capture) -> writers.TensorStream:
            """The output, opened once the tokens are known: each layer's tensors go into it as it runs."""
            expected = 4 * max(settings.num_layers, 1)  # query, key, value and at most one mask a layer
            streams.append(
                writers.TensorStream(target, expected_metadata=settings.metadata(), expected_tensors=expected)
            )
            return streams[-1]

        try:
            captured = capture.capture(
                model_dir,
                texts,
                chosen,
                device=device,
                dtype=dtype,
                device_map=mapping,
                offload_folder=offload_folder,
                sink=open_file,
                progress=status,
                generate=generate,
            )
            status.stage(f"writing {target}")
            streams[0].commit(captured.metadata())
        finally:
            for stream in streams:
                stream.discard()  # nothing left behind on an error; after commit, nothing to do
    if quiet:
        return
    number, first = next(iter(captured.summaries.items()))
    shapes = " · ".join(
        f"{role} {getattr(first, f'{role}_shape')}" for role in ("query", "key", "value", "mask")
    )
    numbers = ", ".join(map(str, captured.summaries))
    masks = len({summary.mask_name for summary in captured.summaries.values()})
    lines = [
        f"captured layer{'s' if len(captured.summaries) > 1 else ''} {numbers} of {captured.num_layers} "
        f"from {model_dir} ({captured.model_type}, {captured.dtype} on {captured.device}), "
        f"{len(texts)} text{'s' if len(texts) > 1 else ''}:",
        f"  {shapes} · scale {first.scaling:.6g} · {masks} distinct mask{'s' if masks > 1 else ''}",
        *(
            f"  tokens {i}: {' '.join(tokens[:n])}"
            for i, (tokens, n) in enumerate(zip(captured.tokens, captured.lengths, strict=True))
        ),
        *(
            [f"  decoded {len(captured.steps.tokens)} steps, reading: {' '.join(captured.steps.tokens)}"]
            if captured.steps is not None
            else []
        ),
        f"saved {target}; show a layer with: attn compute {target} --layer {number}"
        + (" (a decoding step: --step 0)" if captured.steps is not None else ""),
    ]
    typer.echo("\n".join(lines))
