"""Read tensors from .npy, .npz, .safetensors and JSON files, or from stdin, as NumPy arrays.

Nothing here imports torch, prints or exits: every problem is an `InputError` (or `UsageError`)
whose message names the file. Nothing read is ever executed: `.npy`/`.npz` are read with
`allow_pickle=False`, and JSON becomes numbers or an error.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import numpy as np

from attncli.errors import InputError, ShapeError, UsageError
from attncli.io import masks
from attncli.io.formats import (
    DTYPE_KIND_WORDS,
    NPY_INSTEAD,
    NPY_MAGIC,
    NPY_NO_MAGIC,
    SAFETENSORS_INSTEAD,
    SNIFF_BYTES,
    check_real_dtype,
    check_spans,
    error_reason,
    header_reason,
    npy_header,
    npz_members,
    open_npz,
    read_into,
    read_npz_member,
    safetensors_entry,
    safetensors_header,
    wrong_start,
)
from attncli.io.source import check_in_memory, file_kind, read_path, stdin_bytes

STDIN = "-"
STDIN_LABEL = "<stdin>"
FORMAT_BY_SUFFIX = {
    ".npy": "npy",
    ".npz": "npz",
    ".safetensors": "safetensors",
    ".json": "json",
}
#: The names a multi-tensor file may give each role, in order of preference.
ROLE_NAMES: dict[str, tuple[str, ...]] = {
    "query": ("query", "q"),
    "key": ("key", "k"),
    "value": ("value", "v"),
}
#: How `attn capture` names the tensors of layer N: layers.N.query, .key, .value, .mask.
_LAYER_TENSOR = re.compile(r"layers\.(\d+)\.(query|key|value|mask)")
_LONG_INTEGER = re.compile(r"(?<![.\deE+-])-?\d{19,}")
T = TypeVar("T")
_MAX_AXES = 64  # NumPy's limit on the number of dimensions
#: The key a result file keeps its metadata under (JSON object key; an .npz array of one string).
META_KEY = "meta"

# safetensors dtype -> NumPy dtype; BF16 has no NumPy dtype and is widened to float32 exactly.
SAFETENSORS_DTYPES = {
    "F64": "<f8",
    "F32": "<f4",
    "F16": "<f2",
    "I64": "<i8",
    "I32": "<i4",
    "I16": "<i2",
    "I8": "i1",
    "U64": "<u8",
    "U32": "<u4",
    "U16": "<u2",
    "U8": "u1",
    "BOOL": "?",
}


@dataclass(frozen=True)
class TensorFile:
    """The tensors read from one path (or stdin)."""

    label: str  # how messages name the source: the path, or "<stdin>"
    tensors: dict[str, np.ndarray]
    named: bool  # False for a format that holds one unnamed tensor (.npy, a JSON array)
    metadata: dict[str, Any] = field(default_factory=dict)  # a result file's "meta", decoded


@dataclass(frozen=True)
class AttentionInputs:
    """Query, key and value as read for `attn compute`, with a label for each saying where it came from."""

    query: np.ndarray
    key: np.ndarray
    value: np.ndarray
    sources: dict[str, str]  # role -> label, e.g. {"query": "qkv.npz:query", ...}
    # A layer of an `attn capture` file brings what the model used with it: its mask (bool,
    # True = may attend), its scale, and the tokens of each batch entry (labels).
    mask: np.ndarray | None = None
    mask_source: str | None = None
    scale: float | None = None
    tokens: list[list[str]] | None = None
    #: Layers stacked on a first axis (`stacked_layer_inputs`): the layer each index is; else None.
    layers: list[int] | None = None
    #: Of a capture: bool, broadcasting to the weights less their key axis, True for the query rows
    #: of real tokens, False for padding (from its `lengths`); None when every row is a token's.
    real_rows: np.ndarray | None = None
    #: Of a capture: the dtype the model computed in (its metadata's `dtype`), None when not said.
    dtype: str | None = None
    #: Of a decoding step: the query's own labels (the token read), `tokens` naming the keys.
    query_tokens: list[list[str]] | None = None


def split_spec(spec: str) -> tuple[str, str | None]:
    """`PATH:NAME` -> (PATH, NAME); a path that exists as given, or has no such suffix, -> (path, None)."""
    if spec == STDIN or os.path.exists(spec):
        return spec, None
    path, sep, name = spec.rpartition(":")
    if not (sep and path and name):
        return spec, None
    if path == STDIN or os.path.isfile(path) or ("/" not in name and "\\" not in name):
        return path, name  # a NAME may hold '/' (np.savez keeps 'a/b/query') when PATH is a file
    return spec, None


def sniff_format(data: bytes) -> str | None:
    """Guess the format of bytes without a file name (stdin): None when it is none of ours."""
    if data.startswith(b"\x93NUMPY"):
        return "npy"
    if data.startswith(b"PK\x03\x04") or data.startswith(b"PK\x05\x06"):
        return "npz"
    if len(data) > 8 and data[8:9] == b"{":
        header_size = int.from_bytes(data[:8], "little")
        if 8 + header_size <= len(data):
            return "safetensors"
    if data.removeprefix(b"\xef\xbb\xbf").lstrip()[:1] in (b"{", b"["):
        return "json"
    return None


def read_tensors(path: str, stdin: BinaryIO | None = None) -> TensorFile:
    """Read every tensor in the file at `path` (`-`: the bytes of `stdin`)."""
    if path == STDIN:
        data = stdin_bytes(stdin, STDIN_LABEL)
        if not data:
            raise InputError(
                f"{STDIN_LABEL} is empty: pipe in a .npy, .npz, .safetensors or JSON tensor file"
            )
        fmt = sniff_format(data)
        if fmt is None:
            raise InputError(
                f"{STDIN_LABEL} is not a tensor file: expected .npy, .npz or .safetensors bytes, "
                "or JSON starting with '[' or '{'"
            )
        return _PARSERS[fmt](data, STDIN_LABEL)
    fmt = format_of(path)
    try:
        pipe = file_kind(path) == "pipe"
    except OSError as error:
        raise file_error(path, error) from None
    if not pipe:  # a pipe cannot seek, and is read once, whole
        try:
            if fmt == "npz":
                return _read_npz_file(path)
            direct = _FILE_READERS[fmt](path) if fmt in _FILE_READERS else None
        except OSError as error:
            raise file_error(path, error) from None
        if direct is not None:
            return direct
    return _PARSERS[fmt](_read_file(path), path)


def parse_tensors(data: bytes, label: str, fmt: str) -> TensorFile:
    """The tensors of bytes already read (a pipe, stdin) in format `fmt` ('npy', 'npz', ...)."""
    if not data:
        raise InputError(f"{label}: the file is empty")
    return _PARSERS[fmt](data, label)


def load_tensor(spec: str, stdin: BinaryIO | None = None) -> np.ndarray:
    """Load one tensor: `PATH`, `PATH:NAME` or `-` (stdin). A file of several tensors needs the NAME."""
    path, name = split_spec(spec)
    return pick_tensor(read_tensors(path, stdin), name)


def pick_tensor(source: TensorFile, name: str | None) -> np.ndarray:
    """The tensor called `name` in `source`, or its only tensor when `name` is None."""
    return pick_named(source.tensors, source.label, name)


def pick_named(tensors: Mapping[str, T], label: str, name: str | None) -> T:
    """`tensors[name]`, or the only one when `name` is None; an InputError naming the file otherwise."""
    if name is not None:
        if name not in tensors:
            raise InputError(f"{label} has no tensor named '{name}'; it holds {tensor_names(tensors)}")
        return tensors[name]
    if len(tensors) == 1:
        return next(iter(tensors.values()))
    raise InputError(
        f"{label} holds {len(tensors)} tensors ({tensor_names(tensors)}); pick one with {label}:NAME"
    )


def load_attention_inputs(
    specs: Sequence[str],
    stdin: BinaryIO | None = None,
    layer: int | Sequence[int | slice] | str | None = None,
    step: int | None = None,
) -> AttentionInputs:
    """Resolve the paths of `attn compute` into query, key and value.

    Three specs are query, key and value. One spec is either a file that names its tensors
    query/key/value (or q/k/v), or a single tensor used as query, key and value (self-attention).
    With `layer`, one spec is a file of `attn capture` and that layer is used (see `layer_inputs`);
    several layers (a list, or "all") are stacked on a new first axis (see `stacked_layer_inputs`).
    With `step` too, that decoding step of `attn capture --generate` (see `step_inputs`).
    """
    if step is not None and not isinstance(layer, int):
        raise UsageError("--step S shows one decoding step of one layer: give --layer N too")
    if len(specs) not in (1, 3):
        raise UsageError(f"expected 1 or 3 paths, got {len(specs)}")
    if sum(split_spec(spec)[0] == STDIN for spec in specs) > 1:
        raise UsageError("stdin ('-') can be given as only one of the paths")
    if layer is not None:
        path, name = split_spec(specs[0])
        if len(specs) != 1 or name is not None:
            raise UsageError("--layer picks a layer of one file from 'attn capture'; give that file alone")
        source = read_tensors(path, stdin)
        if isinstance(layer, int) and step is not None:
            return step_inputs(source, layer, step)
        if isinstance(layer, int):
            return layer_inputs(source, layer)
        return stacked_layer_inputs(source, chosen_layers(source, layer))
    if len(specs) == 3:
        tensors, sources = {}, {}
        for role, spec in zip(ROLE_NAMES, specs, strict=True):
            tensors[role] = load_tensor(spec, stdin)
            sources[role] = STDIN_LABEL if spec == STDIN else spec
    else:
        path, name = split_spec(specs[0])
        source = read_tensors(path, stdin)
        tensors, sources = _roles_from_one_file(source, name)
    for role, array in tensors.items():
        check_numeric_input(array, sources[role], role)
    return AttentionInputs(tensors["query"], tensors["key"], tensors["value"], sources)


def captured_layers(tensors: Mapping[str, Any]) -> list[int]:
    """The layers of an `attn capture` file (tensors named layers.N.query ...), in order."""
    found = (_LAYER_TENSOR.fullmatch(name) for name in tensors)
    return sorted({int(match.group(1)) for match in found if match})


def chosen_layers(source: TensorFile, choice: int | str | Sequence[int | slice] | None) -> list[int]:
    """The layer numbers of an `attn capture` file that a --layer choice names (as
    `selection.parse_layers` gives it): None or "all", every captured layer; else the numbers the
    items name, slices cut at the last layer (`layer_inputs` refuses one the file lacks)."""
    present = captured_layers(source.tensors)
    if choice is None or isinstance(choice, str):
        return present
    from attncli.selection import resolve_indices

    items = [choice] if isinstance(choice, int) else choice
    return resolve_indices(items, max(present, default=-1) + 1, "--layer", "layers")


def stacked_layer_inputs(source: TensorFile, layers: Sequence[int]) -> AttentionInputs:
    """Layers `layers` of an `attn capture` file, each as `layer_inputs` gives it, stacked on a new
    first axis (layer, ...): query, key, value and mask. Their shapes and scales must agree (a
    model's layers do); `layers` records which layer each index of the axis is."""
    if not layers:
        raise InputError(f"{source.label} holds no captured layers (tensors named layers.N.query ...)")
    parts = [layer_inputs(source, layer) for layer in layers]
    first = parts[0]
    for layer, part in zip(layers[1:], parts[1:], strict=True):
        for role in ("query", "key", "value"):
            this, that = getattr(part, role), getattr(first, role)
            if this.shape != that.shape:
                raise ShapeError(
                    f"{source.label}: layer {layer}'s {role} has shape {this.shape} but layer "
                    f"{layers[0]}'s {that.shape}; show these layers one at a time (--layer N)"
                )
        if part.scale != first.scale:
            raise InputError(
                f"{source.label}: layer {layer} scales its scores by {part.scale} but layer "
                f"{layers[0]} by {first.scale}; show these layers one at a time (--layer N)"
            )
        if (part.mask is None) != (first.mask is None):
            raise InputError(
                f"{source.label}: layer {layer} has a mask but layer {layers[0]} has none, or the "
                "reverse; show these layers one at a time (--layer N)"
            )
    masks = [part.mask for part in parts]
    mask = None
    if first.mask is not None:
        shape = np.broadcast_shapes(*(m.shape for m in masks if m is not None))
        mask = np.stack([np.broadcast_to(m, shape) for m in masks if m is not None])
    consecutive = list(layers) == list(range(layers[0], layers[0] + len(layers)))
    span = (
        f"layers.{layers[0]}-{layers[-1]}"
        if consecutive and len(layers) > 1
        else f"layers.{','.join(map(str, layers))}"
    )
    return AttentionInputs(
        np.stack([part.query for part in parts]),
        np.stack([part.key for part in parts]),
        np.stack([part.value for part in parts]),
        {role: f"{source.label}:{span}.{role}" for role in ROLE_NAMES},
        mask=mask,
        mask_source=None if mask is None else f"{source.label}:{span}.mask",
        scale=first.scale,
        tokens=first.tokens,
        layers=list(layers),
        real_rows=None if first.real_rows is None else first.real_rows[None],
        dtype=first.dtype,
    )


def layer_inputs(source: TensorFile, layer: int) -> AttentionInputs:
    """Layer `layer` of an `attn capture` file: its query, key, value and mask, and from the file's
    metadata its scale and tokens (left out, not refused, when another tool wrote them oddly)."""
    present = captured_layers(source.tensors)
    if not present:
        raise InputError(
            f"{source.label} holds no captured layers (tensors named layers.N.query, .key, .value "
            "from 'attn capture'); drop --layer"
        )
    if layer not in present:
        raise InputError(f"{source.label} has no layer {layer}; it holds layers {_numbers(present)}")
    names = {role: f"layers.{layer}.{role}" for role in (*ROLE_NAMES, "mask")}
    for role in ROLE_NAMES:
        if names[role] not in source.tensors:
            raise InputError(
                f"{source.label} has no tensor named {names[role]} (layer {layer} is incomplete)"
            )
    tensors = {role: source.tensors[names[role]] for role in ROLE_NAMES}
    sources = {role: f"{source.label}:{names[role]}" for role in ROLE_NAMES}
    for role, array in tensors.items():
        check_numeric_input(array, sources[role], role)
    every_layer = source.metadata.get("layers")
    settings = every_layer.get(str(layer)) if isinstance(every_layer, dict) else None
    # Captures store each distinct mask once (masks.K, named in the layer's metadata); older ones
    # hold layers.N.mask.
    shared = settings.get("mask") if isinstance(settings, dict) else None
    if names["mask"] not in source.tensors and isinstance(shared, str) and shared in source.tensors:
        names["mask"] = shared
    mask = source.tensors.get(names["mask"])
    mask_source = None if mask is None else f"{source.label}:{names['mask']}"
    # Causal, sliding-window and right-padding masks are stored as a description (io/masks.py).
    described = source.metadata.get("masks")
    if mask is None and isinstance(shared, str) and isinstance(described, dict) and shared in described:
        mask_source = f"{source.label}:{shared}"
        mask = masks.expand(described[shared], mask_source)
    if mask is not None and mask.dtype.kind not in "bf":
        raise InputError(f"{mask_source}: the mask holds {mask.dtype}; use booleans or floats")
    scaling = settings.get("scaling") if isinstance(settings, dict) else None
    scale = float(scaling) if isinstance(scaling, int | float) and not isinstance(scaling, bool) else None
    tokens = source.metadata.get("tokens")
    positions = tensors["query"].shape[-2] if tensors["query"].ndim > 1 else 1
    well_formed = (
        isinstance(tokens, list)
        and all(isinstance(row, list) and len(row) == positions for row in tokens)
        and all(isinstance(token, str) for row in tokens for token in row)
    )
    lengths = source.metadata.get("lengths")
    captured_dtype = source.metadata.get("dtype")
    real_rows = None
    query = tensors["query"]
    if (
        query.ndim == 4
        and isinstance(lengths, list)
        and len(lengths) == query.shape[0]
        and all(type(n) is int and 0 <= n <= positions for n in lengths)
        and any(n < positions for n in lengths)
    ):
        real_rows = np.arange(positions)[None, None, :] < np.asarray(lengths)[:, None, None]  # (B, 1, L)
    return AttentionInputs(
        tensors["query"],
        tensors["key"],
        tensors["value"],
        sources,
        mask=mask,
        mask_source=mask_source,
        scale=scale,
        tokens=tokens if well_formed and tokens else None,
        real_rows=real_rows,
        dtype=captured_dtype if isinstance(captured_dtype, str) else None,
    )


def step_inputs(source: TensorFile, layer: int, step: int) -> AttentionInputs:
    """Decoding step `step` of layer `layer` of an `attn capture --generate` file: the query row of
    the token the step read, against the keys and values of the text and the tokens read up to it,
    with the step's mask row and the layer's scale; tokens label the keys, the read token the query."""
    steps = source.metadata.get("steps")
    if not isinstance(steps, dict) or not isinstance(steps.get("count"), int):
        raise InputError(f"{source.label} holds no decoding steps; capture with --generate N")
    count, prompt = steps["count"], steps.get("prompt_length")
    names = {role: f"steps.layers.{layer}.{role}" for role in ROLE_NAMES}
    if names["query"] not in source.tensors:
        present = sorted(
            int(n.split(".")[2]) for n in source.tensors if re.fullmatch(r"steps\.layers\.\d+\.query", n)
        )
        raise InputError(
            f"{source.label} has no decoding steps of layer {layer}; it holds layers {_numbers(present)}"
        )
    if not 0 <= step < count or not isinstance(prompt, int):
        raise InputError(f"--step {step}: out of range, {source.label} holds steps 0 to {count - 1}")
    text = {role: source.tensors.get(f"layers.{layer}.{role}") for role in ("key", "value")}
    if text["key"] is None or text["value"] is None:
        raise InputError(f"{source.label} has no layers.{layer}.key and .value, the text's keys of its steps")
    seen = prompt + step + 1  # the text's keys and those of the tokens read up to this step
    query = source.tensors[names["query"]][..., step : step + 1, :]  # (1, H, steps, d) -> (1, H, 1, d)
    # (1, Hkv, text, d) and (1, Hkv, steps, d) -> (1, Hkv, seen, d)
    key = np.concatenate([text["key"], source.tensors[names["key"]][..., : step + 1, :]], axis=-2)
    value = np.concatenate([text["value"], source.tensors[names["value"]][..., : step + 1, :]], axis=-2)
    mask = source.tensors.get(f"steps.masks.{layer}")
    mask = None if mask is None else mask[..., step : step + 1, :seen]  # (1, 1, 1, seen)
    settings = steps.get("layers", {}).get(str(layer)) if isinstance(steps.get("layers"), dict) else None
    scaling = settings.get("scaling") if isinstance(settings, dict) else None
    tokens, read = source.metadata.get("tokens"), steps.get("tokens")
    labels = None
    if isinstance(tokens, list) and len(tokens) == 1 and isinstance(read, list) and len(read) == count:
        labels = [[*map(str, tokens[0][:prompt]), *map(str, read[: step + 1])]]
    label = f"{source.label}:steps.layers.{layer}"
    return AttentionInputs(
        query,
        key,
        value,
        {role: f"{label}.{role}[step {step}]" for role in ROLE_NAMES},
        mask=mask,
        mask_source=None if mask is None else f"{source.label}:steps.masks.{layer}[step {step}]",
        scale=float(scaling) if isinstance(scaling, int | float) and not isinstance(scaling, bool) else None,
        tokens=labels,
        query_tokens=None if labels is None else [[labels[0][-1]]],
        dtype=source.metadata.get("dtype") if isinstance(source.metadata.get("dtype"), str) else None,
    )


def _numbers(values: Sequence[int]) -> str:
    return ", ".join(map(str, values[:16])) + (f", ... ({len(values) - 16} more)" if len(values) > 16 else "")


def load_mask(spec: str, stdin: BinaryIO | None = None) -> np.ndarray:
    """Load an attention mask: booleans (True = may attend) or floats added to the scores."""
    try:
        mask = load_tensor(spec, stdin)
    except InputError as error:
        raise InputError(f"--mask {error}") from None
    label = f"--mask {STDIN_LABEL if spec == STDIN else spec}"
    if mask.dtype.kind in "iu":
        raise InputError(
            f"{label}: the mask holds integers, which could mean 'allowed' or 'added to the scores'; "
            "use booleans (true = may attend) or floats (0 and -inf, added to the scores)"
        )
    if mask.dtype.kind not in "bf":
        raise InputError(f"{label}: the mask holds {mask.dtype}; use booleans or floats")
    if mask.size == 0:
        raise InputError(f"{label}: the mask is empty (shape {tuple(mask.shape)})")
    if mask.dtype.kind == "f":
        bad = np.isnan(mask) | np.isposinf(mask)
        if bad.any():
            raise InputError(
                f"{label}: the mask holds {int(bad.sum())} NaN or +inf values, the first at index "
                f"{_first_index(bad)}; use 0 for keys that may be attended and -inf (or a large "
                "negative number) for keys that may not"
            )
    return mask


def check_numeric_input(array: np.ndarray, label: str, role: str) -> None:
    """Refuse what attention cannot use: non-numbers, scalars, empty axes, NaN and Inf."""
    where = f"{label}: {role}"
    if array.dtype.kind == "b":
        raise InputError(f"{where} holds booleans; query, key and value must be numbers")
    if array.dtype.kind not in "iuf":
        raise InputError(f"{where} holds {array.dtype}; query, key and value must be real numbers")
    if array.ndim == 0:
        raise InputError(
            f"{where} is a single number; it needs at least one axis of features "
            "(a 1-D vector is one position)"
        )
    if array.size == 0:
        raise InputError(f"{where} has an axis of length zero (shape {tuple(array.shape)})")
    if array.dtype.kind == "f":
        nonfinite = ~np.isfinite(array)
        if nonfinite.any():
            nan_count = int(np.isnan(array).sum())
            inf_count = int(nonfinite.sum()) - nan_count
            raise InputError(
                f"{where} holds {nan_count} NaN and {inf_count} Inf values, the first at index "
                f"{_first_index(nonfinite)}; attention needs finite inputs"
            )


# --- reading files ---------------------------------------------------------------------------


def format_of(path: str) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in FORMAT_BY_SUFFIX:
        if not os.path.exists(path):
            raise InputError(f"{path}: no such file")
        known = ", ".join(FORMAT_BY_SUFFIX)
        shown = f"suffix '{suffix}'" if suffix else "no suffix"
        raise InputError(f"{path}: {shown} is not a tensor format attncli reads ({known})")
    return FORMAT_BY_SUFFIX[suffix]


def file_error(path: str, error: OSError) -> InputError:
    """What an OSError from opening or reading a tensor file means, in the loaders' words."""
    if isinstance(error, FileNotFoundError):
        return InputError(f"{path}: no such file")
    if isinstance(error, IsADirectoryError):
        return InputError(f"{path}: is a directory, not a tensor file")
    return InputError(f"{path}: cannot be read: {error.strerror or error}")


def _read_file(path: str) -> bytes:
    try:
        data = read_path(path)
    except OSError as error:
        raise file_error(path, error) from None
    if not data:
        raise InputError(f"{path}: the file is empty")
    return data


def _read_npy_file(path: str) -> TensorFile | None:
    """A .npy file read straight into its array after `formats.npy_header` has read its header.

    None when it is not a plain numeric .npy (empty arrays, odd files): the caller then reads it
    whole with np.load, which also gives the precise error message for a bad file.
    """
    with open(path, "rb") as file:
        if file.read(len(NPY_MAGIC)) != NPY_MAGIC:
            return None
        file.seek(0)
        shape, fortran_order, dtype, offset = npy_header(file, path, ".npy")
        size = os.fstat(file.fileno()).st_size
        if dtype.kind not in "biuf" or not all(shape):
            return None
        nbytes = math.prod(shape) * dtype.itemsize
        if offset + nbytes > size:
            return None
        check_in_memory(nbytes, path)
        array = np.empty(shape, dtype, order="F" if fortran_order else "C")
        read_into(file, array, path)
    return TensorFile(path, {"tensor": _checked_dtype(array, path)}, named=False)


def _read_safetensors_file(path: str) -> TensorFile | None:
    """A .safetensors file's tensors, each read straight into its array, after
    `formats.safetensors_header` has checked its header (as strictly as the safetensors library).

    None when that is not possible (empty tensors, a bad file): the caller then reads the file
    whole with the safetensors library, which also gives the precise error message.
    """
    with open(path, "rb") as file:
        size = os.fstat(file.fileno()).st_size

        def read(offset: int, length: int) -> bytes:
            file.seek(offset)
            return file.read(length)

        def invalid(reason: str) -> InputError:
            return InputError(reason)

        try:
            header, raw_metadata, data_start = safetensors_header(read, size, path)
            entries = []
            for name, info in header.items():
                dtype, shape, begin, end = safetensors_entry(name, info, invalid)
                if (dtype != "BF16" and dtype not in SAFETENSORS_DTYPES) or begin == end:
                    return None  # unsupported dtypes and empty tensors: read whole, for the message
                storage = np.dtype("<u2" if dtype == "BF16" else SAFETENSORS_DTYPES[dtype])
                if end - begin != math.prod(shape) * storage.itemsize:
                    return None
                entries.append((begin, end, name, shape, storage, dtype == "BF16"))
            check_spans([entry[:3] for entry in sorted(entries)], size - data_start, invalid)
        except InputError:
            return None
        if not entries:
            return None
        check_in_memory(size - data_start, path)
        tensors: dict[str, np.ndarray] = {}
        for begin, _, name, shape, storage, bfloat16 in sorted(entries):
            file.seek(data_start + begin)
            array = read_into(file, np.empty(shape, storage), path)
            tensors[name] = _widened(array) if bfloat16 else _checked_dtype(array, f"{path}:{name}")
    metadata = {str(k): decoded_metadata_value(str(v)) for k, v in raw_metadata.items()}
    return TensorFile(path, {name: tensors[name] for name in header}, named=True, metadata=metadata)


def _widened(bfloat16_bits: np.ndarray) -> np.ndarray:
    """bfloat16 is the top half of a float32: widening it is exact."""
    return (bfloat16_bits.astype("<u4") << 16).view("<f4")


def _read_npz_file(path: str) -> TensorFile:
    with open(path, "rb") as file:
        if os.fstat(file.fileno()).st_size == 0:
            raise InputError(f"{path}: the file is empty")
        return _npz_tensors(file, path)


def _parse_npy(data: bytes, label: str) -> TensorFile:
    if not data.startswith(b"\x93NUMPY"):
        # np.load would take other bytes for a pickle and blame allow_pickle; say what they are not.
        raise wrong_start(data[:SNIFF_BYTES], label, ".npy", NPY_INSTEAD, NPY_NO_MAGIC)
    try:
        # A header's shape whose product overflows warns, and so does a dtype named by a deprecated
        # alias ('a' for bytes): each is refused below in attncli's words.
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            array = np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as error:  # untrusted bytes: np.load can fail in many ways, each means "bad file"
        raise _numpy_error(error, label, ".npy") from None
    if not isinstance(array, np.ndarray):
        raise InputError(f"{label}: not a .npy file")
    return TensorFile(label, {"tensor": _checked_dtype(array, label)}, named=False)


def _numpy_error(error: BaseException, label: str, suffix: str) -> InputError:
    """What np.load's failure means: an object array it would have had to unpickle, or a bad file."""
    if isinstance(error, MemoryError | OverflowError):
        return InputError(f"{label}: its header claims a shape too large for memory or for the file")
    if isinstance(error, ValueError) and "max_header_size" in str(error):
        return InputError(f"{label}: not a valid {suffix} file ({header_reason(error)})")
    if isinstance(error, ValueError) and "allow_pickle" in str(error):
        return InputError(
            f"{label}: holds Python objects (an object array); attncli never unpickles files, "
            "save numeric arrays instead"
        )
    return InputError(f"{label}: not a valid {suffix} file ({error_reason(error)})")


def _parse_npz(data: bytes, label: str) -> TensorFile:
    return _npz_tensors(io.BytesIO(data), label)


def _npz_tensors(file: BinaryIO, label: str) -> TensorFile:
    """Every array of an archive, after every member's declared size has been checked against the
    input limit and the memory available: a few MB of zip can declare, and inflate to, gigabytes."""
    tensors: dict[str, np.ndarray] = {}
    metadata: dict[str, Any] = {}
    with open_npz(file, label) as archive:
        members = npz_members(archive, label)
        check_in_memory(sum(member.nbytes for member in members), label, unpacked=True)
        for member in members:
            where = f"{label}:{member.name}"
            if member.name == META_KEY and member.dtype.kind == "U" and member.shape == ():
                metadata = metadata_from_json(str(read_npz_member(archive, member, label)[()]), label)
                continue
            check_real_dtype(member.dtype, where if member.dtype.kind != "O" else label, ".npz")
            tensors[member.name] = _checked_dtype(read_npz_member(archive, member, label), where)
    if not tensors:
        raise InputError(f"{label}: the archive holds no tensors")
    return TensorFile(label, tensors, named=True, metadata=metadata)


def _parse_safetensors(data: bytes, label: str) -> TensorFile:
    import safetensors  # the Rust reader validates the header, offsets and sizes

    try:
        entries = safetensors.deserialize(data)  # type: ignore[no-untyped-call]
    except Exception as error:  # SafetensorError has no public import path
        message = str(error).removeprefix("Error while deserializing: ")
        raise wrong_start(data[:SNIFF_BYTES], label, ".safetensors", SAFETENSORS_INSTEAD, message) from None
    tensors = {name: _safetensors_array(info, f"{label}:{name}") for name, info in entries}
    if not tensors:
        raise InputError(f"{label}: the file holds no tensors")
    header_size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + header_size])
    metadata = {str(k): decoded_metadata_value(str(v)) for k, v in (header.get("__metadata__") or {}).items()}
    return TensorFile(label, tensors, named=True, metadata=metadata)


def _safetensors_array(info: Mapping[str, Any], label: str) -> np.ndarray:
    dtype, shape, buffer = info["dtype"], tuple(info["shape"]), info["data"]
    if dtype != "BF16" and dtype not in SAFETENSORS_DTYPES:
        raise InputError(f"{label}: dtype {dtype} is not supported (use F64, F32, F16, BF16 or integers)")
    try:
        if dtype == "BF16":
            return _widened(np.frombuffer(buffer, dtype="<u2")).reshape(shape)
        return np.frombuffer(buffer, dtype=SAFETENSORS_DTYPES[dtype]).reshape(shape)
    except (ValueError, OverflowError, MemoryError):
        raise InputError(
            f"{label}: shape {list(shape)} does not fit its {len(buffer)} bytes of data"
        ) from None


def _parse_json(data: bytes, label: str) -> TensorFile:
    fast = _parse_numeric_json(data, label)
    if fast is not None:
        return fast
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InputError(f"{label}: not UTF-8 text, so not JSON") from None
    try:
        document = _decode_json(text)
    except json.JSONDecodeError as error:
        raise InputError(
            f"{label}: not valid JSON ({error.msg} at line {error.lineno} column {error.colno})"
        ) from None
    except RecursionError:
        raise InputError(f"{label}: JSON nested too deeply to be a tensor") from None
    except ValueError as error:  # e.g. an integer of more digits than Python converts
        raise InputError(f"{label}: not valid JSON ({error_reason(error)})") from None
    may_hold_booleans = b"true" in data or b"false" in data
    if isinstance(document, dict):
        tensors: dict[str, np.ndarray] = {}
        metadata: dict[str, Any] = {}
        for name, value in document.items():
            if name == META_KEY and isinstance(value, dict):
                metadata = value
                continue
            tensors[name] = _json_array(value, f"{label}: '{name}'", may_hold_booleans)
        if not tensors:
            raise InputError(f"{label}: the JSON object holds no tensors")
        return TensorFile(label, tensors, named=True, metadata=metadata)
    return TensorFile(label, {"tensor": _json_array(document, label, may_hold_booleans)}, named=False)


def _parse_numeric_json(data: bytes, label: str) -> TensorFile | None:
    """A large document of numeric arrays read by `json_numbers` in a fraction of the general
    path's memory; None for anything else, which the general path reads and words the errors of."""
    from attncli.io import json_numbers

    parsed = json_numbers.parse(data)
    if parsed is None:
        return None
    if isinstance(parsed, np.ndarray):
        return TensorFile(label, {"tensor": parsed}, named=False)
    tensors, others = parsed
    metadata = others.pop(META_KEY, None)
    if others or (metadata is not None and not isinstance(metadata, dict)) or not tensors:
        return None  # a value that is no tensor: the general path says which
    return TensorFile(label, tensors, named=True, metadata=metadata or {})


def _decode_json(text: str) -> Any:
    """orjson when it can (about 6 times faster); Python's json for what orjson refuses: NaN and
    Infinity literals (a float mask's -Infinity), and the exact message of a malformed document.
    Integers of 19 digits or more go to Python's json too, which keeps them exact (orjson would
    round them to floats) so that one too large for 64 bits is reported, not silently rounded."""
    import orjson

    if _LONG_INTEGER.search(text):
        return json.loads(text)
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)


def _json_array(value: Any, where: str, may_hold_booleans: bool) -> np.ndarray:
    if isinstance(value, str | dict) or value is None:
        kind = "a string" if isinstance(value, str) else "an object" if isinstance(value, dict) else "null"
        raise InputError(f"{where} is {kind}, not an array of numbers")
    try:
        array = np.array(value)
    except (ValueError, TypeError) as error:
        depth = _depth(value)
        if depth > _MAX_AXES:
            raise InputError(
                f"{where} is nested {depth} levels deep; a tensor has at most {_MAX_AXES} axes"
            ) from None
        if "inhomogeneous" in str(error) or "sequence" in str(error):
            raise InputError(
                f"{where} is a ragged array: rows at the same depth have different lengths"
            ) from None
        raise InputError(f"{where} is not an array of numbers ({error_reason(error)})") from None
    except RecursionError:
        raise InputError(f"{where} is nested too deeply to be a tensor") from None
    if array.dtype.kind in "OUS":
        raise InputError(f"{where} holds {_odd_element(value)}; tensors hold numbers only")
    if array.dtype.kind in "iuf" and may_hold_booleans and _holds_boolean(value):
        raise InputError(f"{where} mixes true/false with numbers; tensors hold numbers only")
    return array


def _depth(value: Any) -> int:
    """How deep the first elements of a nested list go."""
    depth = 0
    while isinstance(value, list):
        depth += 1
        value = value[0] if value else None
    return depth


def _holds_boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return True
    return isinstance(value, list) and any(_holds_boolean(item) for item in value)


def _odd_element(value: Any) -> str:
    """Describe the first element of a nested list that is not a number."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(reversed(item))
        elif item is None:
            return "null"
        elif isinstance(item, str):
            return f"a string ({item[:20]!r})"
        elif isinstance(item, dict):
            return "an object"
        elif isinstance(item, int) and not isinstance(item, bool) and abs(item) >= 2**63:
            return f"an integer too large for 64 bits ({item})"
    return "values that are not numbers"


def _checked_dtype(array: np.ndarray, label: str) -> np.ndarray:
    kind = array.dtype.kind
    if kind not in "biuf":
        words = DTYPE_KIND_WORDS.get(kind, str(array.dtype))
        raise InputError(f"{label}: holds {words} ({array.dtype}); tensors must hold real numbers")
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    return array


def metadata_from_json(text: str, label: str) -> dict[str, Any]:
    try:
        decoded = json.loads(text)
    except (ValueError, RecursionError):
        raise InputError(f"{label}: its '{META_KEY}' entry is not JSON") from None
    if not isinstance(decoded, dict):
        raise InputError(f"{label}: its '{META_KEY}' entry is not a JSON object")
    return decoded


def decoded_metadata_value(text: str) -> Any:
    """A safetensors metadata value: JSON as attncli writes it, or the plain string another tool wrote."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return text


def _roles_from_one_file(
    source: TensorFile, name: str | None
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Query, key and value from one file: by their names, or one tensor used for all three."""
    if name is not None or len(source.tensors) == 1:
        tensor = pick_tensor(source, name)
        label = source.label if name is None else f"{source.label}:{name}"
        return dict.fromkeys(ROLE_NAMES, tensor), dict.fromkeys(ROLE_NAMES, label)
    found = {
        role: next((n for n in names if n in source.tensors), None) for role, names in ROLE_NAMES.items()
    }
    missing = [role for role, n in found.items() if n is None]
    layers = captured_layers(source.tensors)
    if len(missing) == 3 and layers:
        raise InputError(
            f"{source.label} holds layers {_numbers(layers)} from 'attn capture'; pick one with --layer N"
        )
    if len(missing) == 3:
        raise InputError(
            f"{source.label} holds {len(source.tensors)} tensors ({tensor_names(source.tensors)}) and none "
            "is named "
            "query, key or value (or q, k, v); rename them, or pick one for self-attention with "
            f"{source.label}:NAME"
        )
    if missing:
        raise InputError(
            f"{source.label} has no tensor named {' or '.join(ROLE_NAMES[missing[0]])} "
            f"(it holds {tensor_names(source.tensors)})"
        )
    tensors = {role: source.tensors[n] for role, n in found.items() if n is not None}
    sources = {role: f"{source.label}:{n}" for role, n in found.items()}
    return tensors, sources


def tensor_names(tensors: Mapping[str, Any]) -> str:
    """The first names of a file's tensors, for messages."""
    names = list(tensors)
    return ", ".join(names[:8]) + (f", ... ({len(names) - 8} more)" if len(names) > 8 else "")


def _first_index(flags: np.ndarray) -> tuple[int, ...]:
    return tuple(int(i) for i in np.unravel_index(int(np.argmax(flags)), flags.shape))


_FILE_READERS = {"npy": _read_npy_file, "safetensors": _read_safetensors_file}
_PARSERS = {
    "npy": _parse_npy,
    "npz": _parse_npz,
    "safetensors": _parse_safetensors,
    "json": _parse_json,
}

__all__ = [
    "AttentionInputs",
    "TensorFile",
    "captured_layers",
    "check_numeric_input",
    "layer_inputs",
    "load_attention_inputs",
    "load_mask",
    "load_tensor",
    "pick_tensor",
    "read_tensors",
    "sniff_format",
    "split_spec",
    "step_inputs",
]
