"""Write results to .safetensors, .npz or .json, never leaving a partial or clobbered file.

A result is a few named NumPy arrays (`weights`, `output`) and a metadata mapping. Each file is
written to a temporary name in the target folder and renamed over the target only once complete,
so an interrupted write leaves the old file as it was (and a memory-mapped reader of it unharmed).
Nothing here prints or exits; problems are `UsageError`s naming the path.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from attncli.errors import OutputError, UsageError

OUTPUT_FORMATS = {".safetensors": "safetensors", ".npz": "npz", ".json": "json"}
META_KEY = "meta"


def check_output_path(
    path: str | os.PathLike[str],
    *,
    force: bool = False,
    option: str = "--output",
    suffixes: Collection[str] = tuple(OUTPUT_FORMATS),
) -> Path:
    """Refuse, before any work is done, an output path that could not or should not be written."""
    target = Path(path)
    suffix = target.suffix.lower()
    if suffix not in suffixes:
        shown = f"suffix '{suffix}'" if suffix else "no suffix"
        raise UsageError(f"{option} {target}: {shown} is not supported; {option} takes {', '.join(suffixes)}")
    folder = target.parent
    if not folder.is_dir():
        raise UsageError(f"{option} {target}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"{option} {target}: the folder {folder} is not writable")
    if target.is_dir():
        raise UsageError(f"{option} {target}: is a directory")
    if target.exists() and not force:
        raise UsageError(f"{option} {target}: the file exists; add --force to replace it")
    return target


def write_result(
    path: str | os.PathLike[str], tensors: Mapping[str, np.ndarray], metadata: Mapping[str, Any]
) -> None:
    """Write `tensors` and `metadata` to `path` in the format its suffix names, atomically."""
    target = Path(path)
    fmt = OUTPUT_FORMATS.get(target.suffix.lower())
    if fmt == "safetensors":
        # Little-endian, C order: what the format stores, and (for torch's arrays) no copy at all.
        arrays = {
            name: np.asarray(array, dtype=array.dtype.newbyteorder("<"), order="C")
            for name, array in tensors.items()
        }
        header = safetensors_header({name: (a.dtype, a.shape) for name, a in arrays.items()}, metadata)

        def write_safetensors(file: BinaryIO) -> None:
            # The arrays' own memory, one after the other: no second copy of a 4 GiB result.
            file.write(header)
            for array in arrays.values():
                if array.size:  # an empty array has no bytes (and memoryview refuses to cast it)
                    file.write(array.data.cast("B"))

        _write_atomically(target, write_safetensors, "--output")
    elif fmt == "npz":
        _write_atomically(target, lambda file: _write_npz(file, tensors, metadata), "--output")
    elif fmt == "json":
        _write_atomically(target, lambda file: file.write(json_text(tensors, metadata).encode()), "--output")
    else:
        raise UsageError(f"--output {target}: not a format attncli writes ({', '.join(OUTPUT_FORMATS)})")


def write_text(path: str | os.PathLike[str], text: str, *, option: str) -> None:
    """Write `text` (UTF-8) to `path` atomically, as the result files are."""
    _write_atomically(Path(path), lambda file: file.write(text.encode()), option)


def json_text(tensors: Mapping[str, np.ndarray], metadata: Mapping[str, Any]) -> str:
    """`{"weights": [...], "output": [...], "meta": {...}}` with each number as its shortest exact text."""
    parts = [f"{json.dumps(name)}: {_json_array(array)}" for name, array in tensors.items()]
    parts.append(f"{json.dumps(META_KEY)}: {json.dumps(dict(metadata))}")
    return "{" + ", ".join(parts) + "}"


def _json_array(array: np.ndarray) -> str:
    import orjson

    if array.dtype.kind != "f" or np.isfinite(array).all():
        # orjson writes each number as the shortest text that reads back as the same value of its
        # dtype (float32 and float16 included), about 20 times faster than NumPy's str().
        text: str = orjson.dumps(np.ascontiguousarray(array), option=orjson.OPT_SERIALIZE_NUMPY).decode()
        return text
    # NaN and infinities (statistics of fully masked rows) have no JSON spelling orjson accepts:
    # write them as Python's json module does, NaN and Infinity, with NumPy's shortest text around.
    texts = np.asarray(array).astype(str)
    if texts.size and array.dtype.kind == "f":
        texts[np.isnan(array)] = "NaN"
        texts[np.isposinf(array)] = "Infinity"
        texts[np.isneginf(array)] = "-Infinity"
    return _nest(texts)


def _nest(texts: np.ndarray) -> str:
    if texts.ndim == 0:
        return str(texts)
    if texts.ndim == 1:
        return "[" + ",".join(texts.tolist()) + "]"
    return "[" + ",".join(_nest(row) for row in texts) + "]"


#: safetensors' names for the NumPy dtypes a result may hold.
SAFETENSORS_DTYPES = {
    np.dtype(np.float64): "F64",
    np.dtype(np.float32): "F32",
    np.dtype(np.float16): "F16",
    np.dtype(np.int64): "I64",
    np.dtype(np.int32): "I32",
    np.dtype(np.int16): "I16",
    np.dtype(np.int8): "I8",
    np.dtype(np.uint64): "U64",
    np.dtype(np.uint32): "U32",
    np.dtype(np.uint16): "U16",
    np.dtype(np.uint8): "U8",
    np.dtype(np.bool_): "BOOL",
}


def safetensors_header(
    entries: Mapping[str, tuple[np.dtype[Any], tuple[int, ...]]], metadata: Mapping[str, Any]
) -> bytes:
    """The header of a .safetensors file whose data holds, in this order and back to back, arrays of
    these (dtype, shape): 8 bytes of little-endian length, then JSON padded with spaces to 8 bytes.
    Metadata values are stored as JSON text (safetensors maps strings to strings)."""
    header: dict[str, Any] = {"__metadata__": {key: json.dumps(value) for key, value in metadata.items()}}
    offset = 0
    for name, (dtype, shape) in entries.items():
        try:
            code = SAFETENSORS_DTYPES[np.dtype(dtype).newbyteorder("=")]
        except KeyError:
            raise ValueError(f"{name}: safetensors has no type for {dtype}") from None
        size = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        header[name] = {"dtype": code, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text


def _write_npz(file: BinaryIO, tensors: Mapping[str, np.ndarray], metadata: Mapping[str, Any]) -> None:
    # The metadata is one JSON string: a unicode array, which loads without pickle.
    arrays: dict[str, Any] = {**tensors, META_KEY: np.array(json.dumps(dict(metadata)))}
    np.savez(file, **arrays)  # into the file itself: no copy of the result in memory


def _write_atomically(target: Path, write: Callable[[BinaryIO], object], option: str) -> None:
    try:
        descriptor, temporary = tempfile.mkstemp(
            dir=target.parent, prefix=f".{target.name}.", suffix=".partial"
        )
    except OSError as error:
        raise OutputError(f"{option} {target}: could not be written: {error.strerror or error}") from None
    try:
        with os.fdopen(descriptor, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, mode_for_replacing(target))
        os.replace(temporary, target)
    except OSError as error:
        Path(temporary).unlink(missing_ok=True)
        raise OutputError(f"{option} {target}: could not be written: {error.strerror or error}") from None
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def mode_for_replacing(target: Path) -> int:
    """Keep the mode of a file being replaced; give a new file the usual 0666 less the umask."""
    try:
        return target.stat().st_mode & 0o777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask
