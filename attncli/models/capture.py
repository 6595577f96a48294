"""Query, key and value from a Hugging Face Transformers model, exactly as its attention uses them.

Transformers lets a model call a registered attention function (`AttentionInterface`) instead of
its own. `capture` registers one that records what every attention layer passes it (query, key
and value per head, after rotary embeddings, before grouped-query heads are repeated; the mask;
the scaling) and then runs the model's own eager attention function, so the forward pass is
that of `attn_implementation="eager"`, bit for bit. Any architecture that supports
`attn_implementation` works this way, with no code per model.

The model's additive float mask (0 = may attend, the dtype's minimum = may not) is saved as a
boolean keep-mask (True = may attend), the convention of `attn compute --mask`. Texts are padded on
the right: a real token's positions, rotary angles and causal window are then what they would be
unpadded, and no query row of a causal model is left with every key masked.

Nothing here prints or exits; every problem is an `attncli.errors` error naming the folder or the
option. transformers (the `models` extra) is imported inside the functions that need it, and it
never goes to the network: the folder is read with `local_files_only=True`, the hub offline.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib.util
import itertools
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from attncli import __version__
from attncli.errors import AttnError, ComputeError, InputError, UsageError

if TYPE_CHECKING:
    import numpy as np
    import torch

#: The name the recording attention function is registered under, for the mask and the attention.
IMPLEMENTATION = "attncli_capture"
#: How far attncli's weights may be from the model's own probabilities (float32) and still agree.
TOLERANCE = 1e-5
#: The same per captured dtype. In half precision the model rounds its scores to the dtype before
#: the softmax and its probabilities after it; attncli rounds only its weights. A weight then
#: differs by about p * |score| * u (u: the unit roundoff, 2^-8 bfloat16, 2^-11 float16) plus u:
#: these are 8 u, which random-weight models with scores of up to ~50 in size stay within
#: (measured: 0.031 and 0.0037 at |score| 64, 0.0039 and 0.0007 at |score| 10; tests/test_capture_dtype.py).
TOLERANCES = {"float32": TOLERANCE, "float16": 2.0**-8, "bfloat16": 2.0**-5}
#: What `--dtype` takes for a capture; auto: the checkpoint's own dtype on a GPU, float32 on the CPU.
DTYPES = ("auto", "float32", "bfloat16", "float16")
#: Where the model's own probabilities come from: its eager attention function (what
#: attn_implementation="eager" runs), as `output_attentions` returns them or, in `attn model`'s
#: agreement pass, as each layer runs.
REFERENCE = "eager attention"
#: Keyword arguments of an attention call that change its maths in a way attncli does not compute.
_UNSUPPORTED = ("softcap", "s_aux", "sinks", "position_bias")
_FILES = "config.json, weights, tokenizer"
#: Configs of more layers are counted from models of 1 and 2 layers (the deepest real ones have ~126).
_COUNTED_LAYERS = 128
#: How many times the bytes of its weight files a model may take in float32: 8 for 4-bit weights.
_WEIGHT_SLACK = 8
#: The config.json numbers that make a model large.
_SIZE_NAMES = ("num_hidden_layers", "hidden_size", "intermediate_size", "vocab_size")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack", ".gguf")

_recorder: contextvars.ContextVar[_Recorder | None] = contextvars.ContextVar("attncli_capture", default=None)
_comparer: contextvars.ContextVar[_Comparer | None] = contextvars.ContextVar("attncli_compare", default=None)


class Progress(Protocol):
    """Where a capture says how far it has got (the CLI's status line on stderr); nothing prints here."""

    def stage(self, text: str) -> None:
        """A stage of the work begins (`text`: what it does); the one before it has ended."""

    def layer(self, done: int, total: int | None) -> None:
        """`done` attention layers of `total` (None: not known) have run in the current pass."""


class TensorSink(Protocol):
    """Where each captured tensor goes as soon as its layer has run (`io.writers.TensorStream`)."""

    def add(self, name: str, array: np.ndarray, *, bfloat16: bool = False) -> None:
        """Keep `array` as tensor `name` (`bfloat16`: a float32 array of bfloat16 values)."""


@dataclass(frozen=True)
class LayerCapture:
    """What one attention layer used, for a batch of texts."""

    query: torch.Tensor  # (batch, query heads, positions, head size), after rotary embeddings
    key: torch.Tensor  # (batch, key/value heads, positions, head size), before GQA repeats it
    value: torch.Tensor  # (batch, key/value heads, positions, value head size)
    mask: torch.Tensor  # (batch, 1 or heads, positions, positions): bool, True = may attend
    scaling: float
    #: The tensor the mask is stored as (`masks.K`): layers that used the same mask share one.
    mask_name: str = "masks.0"

    def summary(self) -> LayerSummary:
        return LayerSummary(
            scaling=self.scaling,
            query_shape=tuple(self.query.shape),
            key_shape=tuple(self.key.shape),
            value_shape=tuple(self.value.shape),
            mask_shape=tuple(self.mask.shape),
            mask_name=self.mask_name,
        )

    def attention(self, **options: Any) -> Any:
        """This layer's attention as attncli computes it (`attncli.attention` with the layer's
        mask and scale; `options` as it takes them): an `AttentionResult` for `attncli.show`."""
        from attncli.compute import attention

        return attention(self.query, self.key, self.value, mask=self.mask, scale=self.scaling, **options)


@dataclass(frozen=True)
class LayerSummary:
    """What a capture file says of one layer: its scale, the shapes of its tensors, its mask's name."""

    scaling: float
    query_shape: tuple[int, ...]  # (batch, query heads, positions, head size)
    key_shape: tuple[int, ...]  # (batch, key/value heads, positions, head size)
    value_shape: tuple[int, ...]
    mask_shape: tuple[int, ...]
    mask_name: str


@dataclass(frozen=True)
class Steps:
    """Greedy decoding after the text: step S reads the token step S-1 chose (step 0: the one the
    text's last position chose), so its query row attends to the text and tokens 0..S. Per chosen
    layer, every step's query row and the cache's keys and values after the last step; row S of
    the mask opens the keys that step's attention opened."""

    tokens: list[str]  # the token each step read
    #: query (1, H, steps, d); key/value (1, Hkv, steps, d) of the tokens read, after the text's
    #: (the layer's own key/value); mask (1, 1, steps, text + steps) over the text and the steps
    layers: dict[int, LayerCapture]
    prompt_length: int  # the text's tokens: step S sees keys 0 .. prompt_length + S

    def arrays(self) -> dict[str, tuple[np.ndarray, bool]]:
        """`steps.layers.{i}.query/key/value` and `steps.masks.{i}`, each with whether it is bfloat16."""
        arrays: dict[str, tuple[np.ndarray, bool]] = {}
        for index, layer in self.layers.items():
            for role in ("query", "key", "value"):
                arrays[f"steps.layers.{index}.{role}"] = _numpy(getattr(layer, role))
            arrays[f"steps.masks.{index}"] = _numpy(layer.mask)
        return arrays

    def metadata(self) -> dict[str, Any]:
        return {
            "count": len(self.tokens),
            "tokens": self.tokens,
            "prompt_length": self.prompt_length,
            "layers": {str(i): {"scaling": layer.scaling} for i, layer in self.layers.items()},
        }


@dataclass(frozen=True)
class Capture:
    """A forward pass of a model over some texts: per layer what its attention used, and the tokens."""

    model: str  # the folder, as given
    model_type: str
    texts: list[str]
    tokens: list[list[str]]  # per text, padded to the longest
    lengths: list[int]  # per text, its tokens before padding
    num_layers: int
    #: The tensors of each chosen layer, kept in memory (empty when they went to a `TensorSink`).
    layers: dict[int, LayerCapture]
    #: The model's own attention probabilities per layer (eager attention, output_attentions),
    #: (batch, heads, positions, positions); only when asked for with `reference=True`.
    probabilities: dict[int, torch.Tensor] = field(default_factory=dict)
    #: With `agree=True`: per chosen layer, the largest |attncli's weight - the model's own
    #: probability| (`max_abs_difference`), compared as each layer ran; no probabilities are kept.
    differences: dict[int, float] = field(default_factory=dict)
    #: Each chosen layer's scale, shapes and mask name, whether its tensors are kept or written.
    summaries: dict[int, LayerSummary] = field(default_factory=dict)
    dtype: str = "float32"  # what the model computed in, and the tensors are stored in
    device: str = "cpu"  # where the model ran (its first layer's device under a device map)
    device_map: Any = None  # the --device-map given (placement left to Transformers and Accelerate)
    #: With `generate`: the decoding steps' attention per chosen layer, and the tokens they read.
    steps: Steps | None = None
    #: The masks stored as a description (`attncli.io.masks`: causal, window, padding), by name.
    mask_descriptions: dict[str, dict[str, Any]] = field(default_factory=dict)

    def arrays(self) -> dict[str, np.ndarray]:
        """`layers.{i}.query`, `.key`, `.value` for each captured layer (float16 as float16, float32
        and bfloat16 as float32) and each distinct mask once, `masks.{k}` (bool, or float for a bias),
        unless it is described in the metadata instead (`mask_descriptions`)."""
        arrays: dict[str, np.ndarray] = {}
        for index, layer in self.layers.items():
            for role in ("query", "key", "value"):
                arrays[f"layers.{index}.{role}"] = _numpy(getattr(layer, role))[0]
            if layer.mask_name not in arrays and layer.mask_name not in self.mask_descriptions:
                arrays[layer.mask_name] = _numpy(layer.mask)[0]
        return arrays

    def bfloat16_names(self) -> list[str]:
        """The arrays of `arrays` that hold bfloat16 values widened to float32 (for the writers)."""
        if self.dtype != "bfloat16":
            return []
        return [f"layers.{i}.{role}" for i in self.layers for role in ("query", "key", "value")]

    def metadata(self) -> dict[str, Any]:
        """What a capture file says about itself (each value JSON in a .safetensors header)."""
        steps = {} if self.steps is None else {"steps": self.steps.metadata()}
        return {
            **steps,
            "model": self.model,
            "model_type": self.model_type,
            "texts": self.texts,
            "tokens": self.tokens,
            "lengths": self.lengths,
            "num_layers": self.num_layers,
            "layers": {
                str(index): {
                    "scaling": summary.scaling,
                    "query_heads": int(summary.query_shape[1]),
                    "key_value_heads": int(summary.key_shape[1]),
                    "head_size": int(summary.query_shape[-1]),
                    "mask": summary.mask_name,
                }
                for index, summary in self.summaries.items()
            },
            "mask": "bool, True = may attend (the model's additive mask, blocked where it adds its minimum); "
            "each layer's is the tensor its 'mask' names, stored once for the layers that share it, "
            "or described under 'masks' when it is a causal, sliding-window or right-padding pattern",
            **({"masks": self.mask_descriptions} if self.mask_descriptions else {}),
            "padding": "right",
            "dtype": self.dtype,
            "device": self.device,
            **({"device_map": self.device_map} if self.device_map is not None else {}),
            "attncli_version": __version__,
        }


def _numpy(tensor: torch.Tensor) -> tuple[np.ndarray, bool]:
    """`tensor` on the CPU as NumPy, and whether it is bfloat16 (NumPy has none: widened to float32)."""
    import torch

    tensor = tensor.detach().to("cpu").contiguous()
    if tensor.dtype == torch.bfloat16:
        return tensor.to(torch.float32).numpy(), True
    return tensor.numpy(), False


class _Recorder:
    """What the registered attention function does with each call during the recording pass: the
    chosen layers' query, key, value and mask to the CPU, and into the sink at once (or kept);
    the others never leave their device. Layers are numbered in the order their attention runs."""

    def __init__(
        self,
        chosen: set[int] | None,
        total: int | None,
        sink: TensorSink | None,
        progress: Progress | None,
    ) -> None:
        self.chosen, self.total, self.sink, self.progress = chosen, total, sink, progress
        self.calls = 0
        self.kept: dict[int, LayerCapture] = {}
        self.summaries: dict[int, LayerSummary] = {}
        #: (the model's mask as passed, or a key for none; its name; the keep-mask) per distinct mask
        self.masks: list[tuple[Any, str, torch.Tensor]] = []
        #: the masks stored as a description (`attncli.io.masks`), by name
        self.descriptions: dict[str, dict[str, Any]] = {}

    def record(
        self,
        module: Any,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        kwargs: Mapping[str, Any],
        eager: bool,
    ) -> None:
        index = self.calls
        self.calls += 1
        layer_idx = getattr(module, "layer_idx", None)
        for name in _UNSUPPORTED:
            if kwargs.get(name) is not None:
                where = f"layer {layer_idx}" if isinstance(layer_idx, int) else "an attention layer"
                raise InputError(
                    f"{where} of this model uses {name}, which attncli does not compute: "
                    "its weights would not be the model's"
                )
        if self.chosen is None or index in self.chosen:
            scaling = kwargs.get("scaling")
            causal = _is_causal(module, query, attention_mask, kwargs, eager)
            mask, mask_name, new = self._mask(attention_mask, query, key, causal)
            if new:
                from attncli.io.masks import describe  # NumPy only once a model runs

                described = describe(_numpy(mask)[0])
                if described is not None:
                    self.descriptions[mask_name] = described
            layer = LayerCapture(
                query=query.detach().to("cpu"),
                key=key.detach().to("cpu"),
                value=value.detach().to("cpu"),
                mask=mask,
                scaling=float(query.shape[-1] ** -0.5 if scaling is None else scaling),
                mask_name=mask_name,
            )
            self.summaries[index] = layer.summary()
            if self.sink is None:
                self.kept[index] = layer
            else:
                if new and mask_name not in self.descriptions:
                    self.sink.add(mask_name, _numpy(mask)[0])
                for role in ("query", "key", "value"):
                    array, bfloat16 = _numpy(getattr(layer, role))
                    self.sink.add(f"layers.{index}.{role}", array, bfloat16=bfloat16)
        if self.progress is not None:
            self.progress.layer(self.calls, self.total)

    def _mask(
        self, attention_mask: torch.Tensor | None, query: torch.Tensor, key: torch.Tensor, causal: bool
    ) -> tuple[torch.Tensor, str, bool]:
        """The keep-mask of this call, its name, and whether it is new: a mask the model passed
        before (the same tensor: Transformers builds one per kind of layer) is not stored again."""
        shape = (query.shape[0], query.shape[2], key.shape[-2])
        same: Any = attention_mask if attention_mask is not None else ("none", causal, shape)
        for seen, name, mask in self.masks:
            matches = (seen is same) if attention_mask is not None else (seen == same)
            if matches and tuple(mask.shape[-2:]) == shape[1:]:
                return mask, name, False
        mask = _keep_mask(attention_mask, query, key, causal).to("cpu")
        name = f"masks.{len(self.masks)}"
        self.masks.append((same, name, mask))
        return mask, name, True


def require_transformers(command: str = "attn capture") -> None:
    """A UsageError saying how to install the `models` extra when transformers is missing.

    Sets HF_HUB_OFFLINE and TRANSFORMERS_OFFLINE first (the hub reads them when first imported):
    attncli never goes to the network, whatever else the process does with transformers.
    """
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    try:
        import transformers  # noqa: F401
    except ImportError:
        raise UsageError(f"{command} needs the models extra: pip install 'attncli[models]'") from None


def capture(
    model_dir: str | os.PathLike[str],
    texts: Sequence[str],
    layers: Sequence[int | slice] | None = None,
    *,
    reference: bool = False,
    agree: bool = False,
    option: str = "--layers",
    device: str = "cpu",
    dtype: str = "auto",
    device_map: Any = None,
    offload_folder: str | os.PathLike[str] | None = None,
    sink: Callable[[Capture], TensorSink] | None = None,
    progress: Progress | None = None,
    generate: int = 0,
) -> Capture:
    """Run the model in `model_dir` once over `texts` (padded into one batch) and record its attention.

    `layers` picks layers as `attncli.selection.parse_indices` gives them (None: every layer); `option`
    is how messages name that choice. With `reference`, the model runs a second time with eager
    attention and `output_attentions`, and its own probabilities are kept for comparison. With
    `agree` instead, the second pass compares each chosen layer's probabilities with attncli's
    weights as that layer runs and keeps only the largest difference (`Capture.differences`), so
    that its memory is one layer's, not every layer's.

    `device` (cpu, cuda, cuda:N, auto) and `dtype` (see DTYPES) are where and in what the model
    runs; `device_map` ("auto", "balanced", "sequential" or a mapping of module names to devices,
    "disk" included, with `offload_folder`) hands placement to Transformers and Accelerate instead.
    `sink`, given the capture's tokens and settings (layers not yet run), returns where each chosen
    layer's tensors go as soon as the layer has run; the capture then keeps none of them in memory.
    `generate`: after the text, that many greedy decoding steps, each reading the token the step
    before chose, with its query row against the cache recorded too (`Capture.steps`).
    """
    folder = model_folder(model_dir)
    if not texts:
        raise UsageError("no text: give one as an argument, with --text, or with --texts-file")
    if generate < 0:
        raise UsageError(f"--generate {generate}: give a number of steps, 0 or more")
    if generate and len(texts) > 1:
        raise UsageError("--generate decodes one text: give one (padding would sit between text and steps)")
    if dtype not in DTYPES:
        raise UsageError(f"--dtype {dtype}: not one of {', '.join(DTYPES)}")
    if progress is not None:
        progress.stage(f"loading {folder}")
    require_transformers()
    with _quiet():
        tokenizer, model, placed = _load(
            folder, device, dtype, device_map, offload_folder, decoder=generate > 0
        )
        if progress is not None:
            progress.stage(f"tokenising {len(texts)} text{'s' if len(texts) > 1 else ''}")
        encoded = _encode(tokenizer, texts, model.config, folder)
        encoded = {name: value.to(_input_device(model)) for name, value in encoded.items()}
        return _capture_encoded(
            model,
            tokenizer,
            encoded,
            list(texts),
            layers,
            str(folder),
            reference=reference,
            agree=agree,
            option=option,
            placed=placed,
            sink=sink,
            progress=progress,
            generate=generate,
        )


def capture_model(
    model: Any,
    tokenizer_or_inputs: Any,
    texts: str | Sequence[str] | None = None,
    *,
    layers: Sequence[int | slice] | None = None,
    reference: bool = False,
) -> Capture:
    """`capture` for a Transformers model already loaded (`AutoModel.from_pretrained(...)`; the
    inputs go to the device of its weights): with its tokenizer and `texts` (a string or several,
    padded on the right), or with inputs already encoded (a mapping holding `input_ids`, maybe
    `attention_mask`; tokens are then named by their ids). The model's attention implementation
    is switched to the recording one for the pass and put back after. Each layer's
    query/key/value/mask go to `attention`: `capture.layers[i].attention()`.
    """
    require_transformers("attncli.capture")
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    label = f"{type(model).__name__}"
    if not hasattr(model, "set_attn_implementation") or not hasattr(model, "config"):
        raise UsageError(f"capture: {label} is not a Transformers model (it has no set_attn_implementation)")
    AttentionMaskInterface.register(IMPLEMENTATION, eager_mask)
    AttentionInterface.register(IMPLEMENTATION, _record_and_attend)
    tokenizer = None
    if isinstance(tokenizer_or_inputs, Mapping) or hasattr(tokenizer_or_inputs, "keys"):
        if texts is not None:
            raise UsageError("capture: give texts with a tokenizer, not with inputs already encoded")
        encoded = dict(tokenizer_or_inputs)
        if "input_ids" not in encoded:
            raise UsageError("capture: the inputs hold no input_ids")
        names = [str(n) for n in range(int(encoded["input_ids"].shape[0]))]
    else:
        tokenizer = tokenizer_or_inputs
        chosen = [texts] if isinstance(texts, str) else list(texts or ())
        if not chosen:
            raise UsageError("capture: no text to run the model over")
        side, pad = tokenizer.padding_side, tokenizer.pad_token
        try:
            encoded = _encode(tokenizer, chosen, model.config, label)
        finally:  # the caller's tokenizer as it was (_encode pads on the right, maybe with a pad token)
            tokenizer.padding_side, tokenizer.pad_token = side, pad
        names = chosen
    if next(iter(model.parameters()), None) is not None:  # the inputs go where the model's weights are
        where = _input_device(model)
        encoded = {
            name: value.to(where) if hasattr(value, "to") else value for name, value in encoded.items()
        }
    before = getattr(model.config, "_attn_implementation", None)
    model.set_attn_implementation(IMPLEMENTATION)
    try:
        return _capture_encoded(model, tokenizer, encoded, names, layers, label, reference=reference)
    finally:
        model.set_attn_implementation(before or "eager")


@dataclass(frozen=True)
class _Placement:
    dtype: str
    device: str
    device_map: Any = None


def _capture_encoded(
    model: Any,
    tokenizer: Any,
    encoded: Any,
    texts: list[str],
    layers: Sequence[int | slice] | None,
    label: str,
    *,
    reference: bool = False,
    agree: bool = False,
    option: str = "layers",
    placed: _Placement | None = None,
    sink: Callable[[Capture], TensorSink] | None = None,
    progress: Progress | None = None,
    generate: int = 0,
) -> Capture:
    """The recording pass (and with `reference` the model's own probabilities, with `agree` their
    largest difference from attncli's weights per layer) over `encoded`, then `generate` greedy
    decoding steps."""
    import torch

    if placed is None:
        first = next(iter(model.parameters()), None)
        placed = _Placement(
            dtype=str(first.dtype).removeprefix("torch.") if first is not None else "float32",
            device=str(first.device) if first is not None else "cpu",
        )
    count = getattr(model.config, "num_hidden_layers", None)
    chosen = _chosen_layers(layers, count, option) if isinstance(count, int) else None
    ids = encoded["input_ids"]
    if tokenizer is not None:
        tokens = [[str(t) for t in tokenizer.convert_ids_to_tokens(row.tolist())] for row in ids]
    else:
        tokens = [[str(t) for t in row.tolist()] for row in ids]
    mask = encoded.get("attention_mask") if hasattr(encoded, "get") else None
    lengths = (
        [int(n) for n in mask.sum(-1).tolist()]
        if mask is not None
        else [int(ids.shape[-1])] * int(ids.shape[0])
    )
    settings = Capture(
        model=label,
        model_type=str(getattr(model.config, "model_type", "")),
        texts=texts,
        tokens=tokens,
        lengths=lengths,
        num_layers=count if isinstance(count, int) else 0,
        layers={},
        dtype=placed.dtype,
        device=placed.device,
        device_map=placed.device_map,
    )
    # Without a layer count the choice is made after the pass: every layer is kept until then.
    stream = sink(settings) if sink is not None and chosen is not None else None
    recorder = _Recorder(None if chosen is None else set(chosen), count, stream, progress)
    if progress is not None:
        progress.stage(f"capturing {_layers_text(layers, chosen)} of {label}")
    token = _recorder.set(recorder)
    try:
        outputs = _forward(model, encoded, label, **(_decoding_options(model) if generate else {}))
    finally:
        _recorder.reset(token)
    if not recorder.calls:
        raise InputError(
            f"{label}: the model ({type(model).__name__}) never called a registered attention function; "
            "attncli captures from models that support attn_implementation"
        )
    count = recorder.calls if count is None else count
    chosen = _chosen_layers(layers, count, option) if chosen is None else chosen
    missing = sorted(set(chosen) - set(recorder.summaries))
    if missing:
        raise InputError(f"{label}: the model ran no attention for layer {missing[0]}")
    calls = recorder.calls
    kept = {index: recorder.kept[index] for index in sorted(recorder.kept) if index in chosen}
    summaries = {index: recorder.summaries[index] for index in sorted(recorder.summaries) if index in chosen}
    descriptions = {
        name: recorder.descriptions[name]
        for name in sorted({summary.mask_name for summary in summaries.values()})
        if name in recorder.descriptions
    }
    del recorder  # the model's masks it refers to go with it
    steps = None
    if generate:
        if progress is not None:
            progress.stage(f"decoding {generate} step{'s' if generate > 1 else ''}")
        steps = _decode(model, tokenizer, encoded, outputs, generate, chosen, label)
        if stream is not None:
            for name, (array, bfloat16) in steps.arrays().items():
                stream.add(name, array, bfloat16=bfloat16)
    del outputs
    probabilities = {}
    differences = {}
    if agree and not reference:
        if progress is not None:
            progress.stage("agreement pass (eager attention, layer by layer)")
        comparer = _Comparer(set(summaries), placed.dtype)
        comparing = _comparer.set(comparer)
        try:
            _forward(model, encoded, label)
        finally:
            _comparer.reset(comparing)
        missing = sorted(set(summaries) - set(comparer.differences))
        if comparer.calls != calls or missing:
            raise InputError(
                f"{label}: the agreement pass ran {comparer.calls} attention layers for {calls}; "
                "cannot compare with its own probabilities"
            )
        differences = dict(sorted(comparer.differences.items()))
    if reference:
        if progress is not None:
            progress.stage("agreement pass (eager attention, output_attentions)")
        model.set_attn_implementation("eager")
        try:
            outputs = _forward(model, encoded, label, output_attentions=True)
        finally:
            model.set_attn_implementation(IMPLEMENTATION)
        attentions = getattr(outputs, "attentions", None) or ()
        if len(attentions) != calls:
            raise InputError(
                f"{label}: the model returned {len(attentions)} attention maps for {calls} "
                "attention layers; cannot compare with its own probabilities"
            )
        probabilities = {
            index: weights.detach().to("cpu", torch.float32)
            for index, weights in enumerate(attentions)
            if index in summaries
        }
    captured = replace(
        settings,
        num_layers=count,
        layers=kept,
        summaries=summaries,
        probabilities=dict(sorted(probabilities.items())),
        steps=steps,
        mask_descriptions=descriptions,
        differences=differences,
    )
    if sink is not None and stream is None:  # the choice was made after the pass: written now
        late = sink(captured)
        for name, array in captured.arrays().items():
            late.add(name, array, bfloat16=name in captured.bfloat16_names())
        for name, (array, bfloat16) in (steps.arrays() if steps is not None else {}).items():
            late.add(name, array, bfloat16=bfloat16)
        captured = replace(captured, layers={})
    return captured


def _decode(
    model: Any, tokenizer: Any, encoded: Any, outputs: Any, count: int, chosen: Sequence[int], label: str
) -> Steps:
    """`count` greedy steps after the recording pass (`outputs`: its logits and cache), each
    recorded: the query row of the token it reads, its mask row; the keys and values of the last."""
    import torch

    logits = getattr(outputs, "logits", None)
    cache = getattr(outputs, "past_key_values", None)
    if logits is None or cache is None:
        raise InputError(f"{label}: --generate needs a model that predicts tokens and keeps a cache")
    ids = encoded["input_ids"]
    attention_mask = encoded.get("attention_mask")
    attention_mask = torch.ones_like(ids) if attention_mask is None else attention_mask
    prompt = int(ids.shape[-1])
    #: per chosen layer and step: the query row, the key and value of the token read, the mask row
    rows: dict[int, list[tuple[torch.Tensor, ...]]] = {index: [] for index in chosen}
    read: list[int] = []
    next_id = logits[:, -1].argmax(-1, keepdim=True)  # (1, vocab) -> (1, 1)
    for number in range(count):
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(1, 1)], dim=-1)  # (1, L + s + 1)
        recorder = _Recorder(set(chosen), None, None, None)
        token = _recorder.set(recorder)
        try:
            step = _forward(
                model,
                {"input_ids": next_id, "attention_mask": attention_mask},
                label,
                past_key_values=cache,
                **_decoding_options(model),
            )
        finally:
            _recorder.reset(token)
        seen = prompt + number + 1
        for index in chosen:
            layer = recorder.kept[index]
            # The cache's keys are the last ones of the sequence (all of them, or a sliding
            # window's), the token read last; the mask's first columns are theirs.
            cached = layer.key.shape[-2]
            row = torch.full(
                (*layer.mask.shape[:2], 1, prompt + count), _closed(layer.mask), dtype=layer.mask.dtype
            )
            row[..., seen - cached : seen] = layer.mask[..., :1, :cached]  # (1, 1, 1, L + steps)
            rows[index].append((layer.query, layer.key[..., -1:, :], layer.value[..., -1:, :], row))
        read.append(int(next_id[0, 0]))
        cache = step.past_key_values
        next_id = step.logits[:, -1].argmax(-1, keepdim=True)
    layers = {}
    for index in chosen:
        query, key, value, mask = (torch.cat(parts, dim=2) for parts in zip(*rows[index], strict=True))
        layers[index] = LayerCapture(
            query=query,  # (1, H, steps, d)
            key=key,  # (1, Hkv, steps, d): the keys of the tokens read; the text's are layers.N.key
            value=value,
            mask=mask,  # (1, 1, steps, L + steps)
            scaling=recorder.kept[index].scaling,
            mask_name=f"steps.masks.{index}",
        )
    names = tokenizer.convert_ids_to_tokens(read) if tokenizer is not None else read
    return Steps(tokens=[str(name) for name in names], layers=layers, prompt_length=prompt)


def _decoding_options(model: Any) -> dict[str, Any]:
    """Keep the cache; and the logits of the last position alone where the model allows it (all of
    them, over a long text and a large vocabulary, would take more memory than the model)."""
    import inspect

    options: dict[str, Any] = {"use_cache": True}
    if "logits_to_keep" in inspect.signature(model.forward).parameters:
        options["logits_to_keep"] = 1
    return options


def _closed(mask: torch.Tensor) -> bool | float:
    """What a keep-mask holds where a key is closed: False, or -inf in a float mask."""
    import torch

    return False if mask.dtype == torch.bool else -math.inf


def _layers_text(layers: Sequence[int | slice] | None, chosen: Sequence[int] | None) -> str:
    """The layers a pass records, for the status line: 'every layer', 'layer 3', 'layers 0, 2'."""
    if layers is None or chosen is None:
        return "every layer" if layers is None else "the chosen layers"
    if len(chosen) == 1:
        return f"layer {chosen[0]}"
    if len(chosen) <= 4:
        return f"layers {', '.join(map(str, chosen))}"
    return f"{len(chosen)} layers"


def max_abs_difference(
    weights: torch.Tensor, probabilities: torch.Tensor, masked_rows: torch.Tensor | None = None
) -> float:
    """The largest |attncli's weight - the model's probability|, leaving out the query rows whose
    every key is masked (attncli gives them zero weights; a model spreads them evenly)."""
    import torch

    # attncli's weights and masked rows may come from its NumPy kernel (small inputs on the CPU)
    weights = torch.as_tensor(weights).to(probabilities.device)
    if weights.numel() == 0:
        return 0.0
    broadcast: Callable[..., torch.Size] = torch.broadcast_shapes  # untyped in torch's stubs
    shape = broadcast(weights.shape, probabilities.shape)
    weights, probabilities = weights.expand(shape), probabilities.expand(shape)  # views, no copies
    blocked = None
    if masked_rows is not None:
        blocked = torch.as_tensor(masked_rows).to(weights.device).expand(shape[:-1])
    # One (Lq, Lk) matrix at a time in float64: the agreement pass then holds one more matrix, not
    # three float64 copies of a layer's (B, H, Lq, Lk).
    largest = 0.0
    for index in itertools.product(*(range(n) for n in shape[:-2])):
        difference = (weights[index].to(torch.float64) - probabilities[index].to(torch.float64)).abs()
        if blocked is not None:
            difference = difference.masked_fill(blocked[index].unsqueeze(-1), 0.0)  # (Lq, Lk)
        largest = max(largest, float(difference.max()))
    return largest


def agreement(
    weights: torch.Tensor,
    probabilities: torch.Tensor,
    masked_rows: torch.Tensor | None = None,
    dtype: str = "float32",
) -> dict[str, Any]:
    """`attn model`'s verdict: whether attncli's weights are the model's own probabilities, within
    the tolerance of the `dtype` the model ran in (TOLERANCES), as JSON-able values (the largest
    difference, the tolerance, the reference, the dtype)."""
    return verdict(max_abs_difference(weights, probabilities, masked_rows), dtype)


def verdict(difference: float, dtype: str = "float32") -> dict[str, Any]:
    """`agreement` from the largest difference already measured (`Capture.differences`)."""
    tolerance = TOLERANCES.get(dtype, TOLERANCE)
    return {
        "max_abs_diff": difference,
        "tolerance": tolerance,
        "passed": difference <= tolerance,
        "reference": REFERENCE,
        "dtype": dtype,
    }


# --- loading and running the model -------------------------------------------------------------


def model_folder(model_dir: str | os.PathLike[str]) -> Path:
    """`model_dir` as a Path, or a UsageError when it is not a folder with a config.json."""
    folder = Path(model_dir)
    if not folder.exists():
        raise UsageError(f"{folder}: no such folder; give the folder of a Hugging Face model")
    if not folder.is_dir():
        raise UsageError(f"{folder}: not a folder; give the folder of a Hugging Face model ({_FILES})")
    if not (folder / "config.json").is_file():
        raise UsageError(f"{folder}: no config.json; give the folder of a Hugging Face model ({_FILES})")
    return folder


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Without transformers' progress bars, load reports and warnings on our stderr."""
    import logging as std_logging
    import warnings

    from transformers.utils import logging

    verbosity = logging.get_verbosity()
    progress = logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    # Accelerate's notes (layers offloaded under --device-map) go to Python's logging, not transformers'.
    accelerate_logger = std_logging.getLogger("accelerate")
    accelerate_level = accelerate_logger.level
    accelerate_logger.setLevel(std_logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.set_verbosity(verbosity)
        accelerate_logger.setLevel(accelerate_level)
        if progress:
            logging.enable_progress_bar()


def _load(
    folder: Path,
    device: str = "cpu",
    dtype: str = "auto",
    device_map: Any = None,
    offload_folder: str | os.PathLike[str] | None = None,
    decoder: bool = False,
) -> tuple[Any, Any, _Placement]:
    import torch
    from transformers import AttentionInterface, AutoModel, AutoModelForCausalLM, AutoTokenizer
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    from attncli.compute import resolve_device

    # The mask as eager attention gets it: always materialised (never skipped for is_causal), additive.
    AttentionMaskInterface.register(IMPLEMENTATION, eager_mask)
    AttentionInterface.register(IMPLEMENTATION, _record_and_attend)
    if device_map is None:
        where = resolve_device(device)
    else:  # Accelerate places the layers; a GPU, if any, sets the dtype as --device would
        if importlib.util.find_spec("accelerate") is None:
            raise UsageError("--device-map needs the accelerate package: pip install 'attncli[models]'")
        where = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except Exception as error:  # transformers raises many types for a folder it cannot use
        raise InputError(f"{folder}: its tokenizer cannot be loaded: {_reason(error)}") from None
    _check_vocabulary_files(tokenizer, folder)
    config = _load_config(folder)
    chosen = _model_dtype(dtype, config, where)
    _check_size(config, folder, chosen, where if device_map is None else None)
    placement: dict[str, Any] = {}
    if device_map is not None:
        placement = {"device_map": device_map}
        if offload_folder is not None:
            placement["offload_folder"] = str(offload_folder)
    # To decode, the model with its language-model head (the same attention layers).
    model_class = AutoModelForCausalLM if decoder else AutoModel
    try:
        model, info = model_class.from_pretrained(
            folder,
            config=config,
            local_files_only=True,
            attn_implementation=IMPLEMENTATION,
            dtype=chosen,
            output_loading_info=True,
            **placement,
        )
    except AttnError:
        raise
    except Exception as error:
        if _is_out_of_memory(error):
            raise ComputeError(
                f"{folder}: out of memory loading the model on {where}: {_reason(error)}"
            ) from None
        raise InputError(f"{folder}: the model cannot be loaded: {_reason(error)}") from None
    missing = sorted(info.get("missing_keys") or ())
    if missing and decoder:
        raise InputError(
            f"{folder}: --generate needs a model with its language-model head, and the weights lack "
            f"{len(missing)} tensor(s) of it ({', '.join(missing[:3])})"
        )
    if missing:
        raise InputError(
            f"{folder}: the weights lack {len(missing)} tensor(s) the model needs "
            f"({', '.join(missing[:3])}); its attention would come from random weights"
        )
    if device_map is None and where.type != "cpu":
        try:
            model.to(where)
        except Exception as error:
            if _is_out_of_memory(error):
                raise ComputeError(
                    f"{folder}: the model does not fit on {where} in {_dtype_name(chosen)}: "
                    f"{_reason(error)}; try --dtype bfloat16 or --device-map auto"
                ) from None
            raise
    model.eval()
    shown_map = device_map if device_map is None or isinstance(device_map, str) else dict(device_map)
    return tokenizer, model, _Placement(_dtype_name(chosen), str(_input_device(model)), shown_map)


def _model_dtype(dtype: str, config: Any, device: torch.device) -> torch.dtype:
    """--dtype as a torch dtype; auto: the checkpoint's own (config.json's dtype) on a GPU, float32
    on the CPU (half-precision matrix products there are slow, and a capture is read in float32)."""
    import torch

    if dtype != "auto":
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    if device.type == "cpu":
        return torch.float32
    own = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(own, str):
        own = getattr(torch, own, None)
    return own if own in (torch.float32, torch.bfloat16, torch.float16) else torch.float32


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _input_device(model: Any) -> torch.device:
    """Where the inputs go: the device of the input embeddings (under a device map, the first
    layers'), else of the first parameter."""
    import torch

    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    weight = getattr(embeddings, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.device.type != "meta":
        return weight.device
    first = next(iter(model.parameters()), None)
    return first.device if first is not None and first.device.type != "meta" else torch.device("cpu")


def _is_out_of_memory(error: BaseException) -> bool:
    return type(error).__name__ == "OutOfMemoryError" or "out of memory" in str(error).lower()


def _check_vocabulary_files(tokenizer: Any, folder: Path) -> None:
    """Refuse a tokenizer built from none of the folder's vocabulary files.

    Without them (vocab.txt, tokenizer.json, ...) transformers still builds the tokenizer class that
    config.json's model_type names, from its default special tokens alone: all-MiniLM-L6-v2's
    BertTokenizer then holds 5 tokens, and every word of every text becomes [UNK]. Its vocabulary
    files are those its class names, where transformers found each, and tokenizer.json, which
    transformers reads for every class (a GPT2Tokenizer builds from a lone tokenizer.json).
    """
    expected = {"tokenizer_file": "tokenizer.json", **tokenizer.vocab_files_names}
    given = (tokenizer.init_kwargs.get(key) for key in expected)  # where transformers found each, if anywhere
    candidates = [*expected.values(), *(name for name in given if isinstance(name, str))]
    if not any((folder / name).is_file() for name in candidates):
        raise InputError(
            f"{folder}: its tokenizer cannot be loaded: none of its vocabulary files "
            f"({', '.join(sorted(set(expected.values())))}) is in the folder; without them "
            f"{type(tokenizer).__name__} knows only {len(tokenizer)} tokens, its special ones"
        )


def _load_config(folder: Path) -> Any:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(folder, local_files_only=True)
    except Exception as error:
        raise InputError(f"{folder}: the model cannot be loaded: {_reason(error)}") from None


def _check_size(config: Any, folder: Path, dtype: Any = None, device: Any = None) -> None:
    """Refuse, before a byte of it is allocated, a model that its weight files cannot fill or that
    does not fit in memory: a config.json asking for 100000 layers would otherwise be built for
    minutes, gigabytes at a time, only to be refused for the weights it lacks. `dtype`: what the
    model is loaded in; `device`: where (None: placed by a device map, which may offload)."""
    import torch

    from attncli.io.source import available_memory

    for name in _SIZE_NAMES:
        value = getattr(config, name, None)
        if type(value) is int and not 0 < value < 1 << 40:
            raise InputError(f"{folder}: config.json gives {name} {_number_text(value)}, which no model has")
    needed = _float32_bytes(config, folder)
    files = [path for path in folder.iterdir() if path.suffix in _WEIGHT_SUFFIXES and path.is_file()]
    stored = sum(path.stat().st_size for path in files)
    if files and needed > _WEIGHT_SLACK * stored:
        raise InputError(
            f"{folder}: config.json describes a model of {_size_text(needed)} in float32 "
            f"({_describe_size(config)}), more than {_WEIGHT_SLACK} times its weight files "
            f"({_size_text(stored)}); the folder is inconsistent: check config.json"
        )
    dtype = torch.float32 if dtype is None else dtype
    needed = needed * dtype.itemsize // 4
    if device is None:
        return
    if device.type == "cuda":
        available, _ = torch.cuda.mem_get_info(device)
        hint = "; try --dtype bfloat16 or --device-map auto"
    else:
        available, hint = available_memory(), ""
    if needed > available:
        raise ComputeError(
            f"{folder}: the model needs {_size_text(needed)} of memory in {_dtype_name(dtype)} "
            f"({_describe_size(config)}); {_size_text(available)} is available on {device}{hint}"
        )


def _float32_bytes(config: Any, folder: Path) -> int:
    """The bytes of the model's parameters and buffers in float32, counted on a model built on the
    meta device (nothing allocated). A config of more than _COUNTED_LAYERS layers is counted from
    models of 1 and 2 layers instead: even on the meta device each layer takes about a millisecond."""
    layers = getattr(config, "num_hidden_layers", None)
    if type(layers) is not int or layers <= _COUNTED_LAYERS:
        return _meta_bytes(config, folder)
    one, two = (_meta_bytes(_with_layers(config, count), folder) for count in (1, 2))
    return one + (two - one) * (layers - 1)


def _with_layers(config: Any, count: int) -> Any:
    import copy

    shallow = copy.deepcopy(config)
    shallow.num_hidden_layers = count
    if isinstance(getattr(shallow, "layer_types", None), list):  # one entry per layer, checked by some
        shallow.layer_types = shallow.layer_types[:count]
    return shallow


def _meta_bytes(config: Any, folder: Path) -> int:
    import itertools

    import torch
    from transformers import AutoModel

    try:
        with torch.device("meta"):
            model = AutoModel.from_config(config, dtype=torch.float32, attn_implementation="eager")
    except Exception as error:
        raise InputError(f"{folder}: the model cannot be loaded: {_reason(error)}") from None
    tensors = itertools.chain(model.parameters(), model.buffers())
    return sum(tensor.numel() * tensor.element_size() for tensor in tensors)


def _size_text(nbytes: int) -> str:
    """`attncli.selection.size_text`, and a power of ten past a pebibyte: a fuzzed config.json can
    describe more bytes than a float holds, or than Python turns into digits."""
    from attncli.selection import size_text

    if nbytes < 1 << 50:
        return size_text(nbytes)
    return f"about 10^{math.floor(math.log10(nbytes))} bytes"


def _describe_size(config: Any) -> str:
    """The config.json numbers that make a model large, as `name value` pairs."""
    names = ("num_hidden_layers", "hidden_size", "intermediate_size", "vocab_size")
    return ", ".join(
        f"{name} {_number_text(getattr(config, name))}" for name in names if hasattr(config, name)
    )


def _number_text(value: Any) -> str:
    """An int of more than 15 digits as its power of ten (Python refuses to write ints of more than
    4300 digits), anything else as Python writes it."""
    if type(value) is not int or abs(value) < 10**15:
        return str(value)
    return f"about {'-' if value < 0 else ''}10^{math.floor(math.log10(abs(value)))}"


def _chosen_layers(layers: Sequence[int | slice] | None, count: int, option: str) -> list[int]:
    from attncli.selection import resolve_indices

    if layers is None:
        return list(range(count))
    return resolve_indices(layers, count, option, "layers")


def _encode(tokenizer: Any, texts: Sequence[str], config: Any, folder: Path | str) -> Any:
    tokenizer.padding_side = "right"
    if len(texts) > 1 and tokenizer.pad_token is None:
        # Decoder tokenizers often have no padding token; any token will do under a key mask.
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        if tokenizer.pad_token is None:
            raise InputError(f"{folder}: the tokenizer has no padding token to batch several texts with")
    try:
        encoded = tokenizer(list(texts), return_tensors="pt", padding=True)
    except Exception as error:
        raise InputError(f"{folder}: the tokenizer failed: {_reason(error)}") from None
    longest = int(encoded["input_ids"].shape[-1])
    limit = getattr(config, "max_position_embeddings", None)
    if isinstance(limit, int) and longest > limit:
        raise InputError(f"{folder}: a text has {longest} tokens; the model takes at most {limit}")
    return encoded


def _forward(model: Any, encoded: Any, folder: Path | str, **options: Any) -> Any:
    import torch

    try:
        with torch.no_grad():
            return model(**encoded, **options)
    except AttnError:
        raise
    except Exception as error:
        raise InputError(f"{folder}: the model's forward pass failed: {_reason(error)}") from None


def _record_and_attend(
    module: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs: Any,
) -> tuple[torch.Tensor, Any]:
    """The registered attention function: record the arguments, then attend as eager attention does."""
    attend, eager = _eager_function(module)
    recorder = _recorder.get()
    if recorder is not None:
        recorder.record(module, query, key, value, attention_mask, kwargs, eager)
    result: tuple[torch.Tensor, Any] = attend(module, query, key, value, attention_mask, **kwargs)
    comparer = _comparer.get()
    if comparer is not None:
        comparer.compare(module, query, key, value, attention_mask, kwargs, eager, result[1])
        return result[0], None  # the probabilities go no further than the comparison
    return result


class _Comparer:
    """The agreement pass's attention calls: each chosen layer's probabilities, as the model's own
    eager attention function returned them, against attncli's weights over the same query, key,
    value and mask, reduced to the largest difference at once (the layer's tensors then go)."""

    def __init__(self, chosen: set[int], dtype: str) -> None:
        self.chosen, self.dtype = chosen, dtype
        self.calls = 0
        self.differences: dict[int, float] = {}

    def compare(
        self,
        module: Any,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        kwargs: Mapping[str, Any],
        eager: bool,
        probabilities: torch.Tensor | None,
    ) -> None:
        index = self.calls
        self.calls += 1
        if index not in self.chosen:
            return
        if probabilities is None:
            raise InputError(
                f"layer {index}: the model's attention returned no probabilities to compare with "
                "(it has no eager attention function)"
            )
        from attncli.compute import attention

        causal = _is_causal(module, query, attention_mask, kwargs, eager)
        scaling = kwargs.get("scaling")
        result = attention(
            query.detach(),
            key.detach(),
            value.detach(),
            mask=_keep_mask(attention_mask, query, key, causal),
            scale=float(query.shape[-1] ** -0.5 if scaling is None else scaling),
            dtype=self.dtype,  # as `attn model` computes: in the model's own dtype
            device=query.device,
        )
        assert result.weights is not None
        self.differences[index] = max_abs_difference(result.weights, probabilities, result.masked_rows)


def _is_causal(
    module: Any,
    query: torch.Tensor,
    attention_mask: torch.Tensor | None,
    kwargs: Mapping[str, Any],
    eager: bool,
) -> bool:
    """Whether a call with no mask is causal: eager attention applies only the mask; sdpa without
    a mask is causal when the module says so."""
    is_causal = kwargs.get("is_causal")
    is_causal = getattr(module, "is_causal", True) if is_causal is None else is_causal
    return not eager and bool(is_causal) and attention_mask is None and query.shape[2] > 1


def _eager_function(module: Any) -> tuple[Any, bool]:
    """The model's own eager attention function (what attn_implementation="eager" runs), found beside
    its attention class as Transformers' models define it, and True; `sdpa` and False where there is
    none.

    Running it keeps the forward pass bit for bit that of eager attention, so that the model's own
    probabilities from a second, eager pass come from the very tensors captured: under sdpa the
    activations differ in their last bits, and the difference grows layer by layer (1.5e-5 by the
    fifth layer of all-MiniLM-L6-v2).
    """
    import sys

    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    defining = sys.modules.get(type(module).__module__)
    eager = getattr(defining, "eager_attention_forward", None)
    return (eager, True) if callable(eager) else (ALL_ATTENTION_FUNCTIONS["sdpa"], False)


def _keep_mask(
    mask: torch.Tensor | None, query: torch.Tensor, key: torch.Tensor, causal: bool
) -> torch.Tensor:
    """The mask an attention call used, as bool (True = may attend), (batch, 1 or heads, Lq, Lk).

    A float mask that adds anything but 0 and blocking (a learned bias) is kept as floats, with
    -inf where it blocks, so that attncli adds exactly what the model added.
    """
    import torch

    batch, _, lq, _ = query.shape
    lk = key.shape[-2]
    if mask is None:
        keep = torch.ones(lq, lk, dtype=torch.bool, device=query.device)
        if causal:
            keep = keep.tril()
        return keep.expand(batch, 1, lq, lk).contiguous()
    mask = mask.detach()[..., :lk]  # (batch or 1, heads or 1, Lq, Lk)
    if mask.dtype != torch.bool:
        blocked = mask <= torch.finfo(mask.dtype).min / 2 if mask.dtype.is_floating_point else mask < 0
        if not bool(((mask == 0) | blocked).all()):
            return (
                mask.to(torch.float32).masked_fill(blocked, -math.inf).expand(batch, -1, -1, -1).contiguous()
            )
        mask = ~blocked
    return mask.expand(batch, -1, -1, -1).contiguous()


def _reason(error: BaseException) -> str:
    text = " ".join(str(error).split())
    text = text[:240] + ("…" if len(text) > 240 else "")
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


__all__ = [
    "DTYPES",
    "REFERENCE",
    "TOLERANCE",
    "TOLERANCES",
    "Capture",
    "LayerCapture",
    "LayerSummary",
    "Progress",
    "Steps",
    "TensorSink",
    "agreement",
    "capture",
    "max_abs_difference",
    "model_folder",
    "require_transformers",
]
