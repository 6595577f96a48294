"""Look inside tensor files without loading them: headers first, data a block at a time.

`open_tensors` reads only what a file says about its tensors (names, shapes, dtypes, where the bytes
are); each `LazyTensor` then yields its values in blocks of a few MiB. A .npy file's header is read
by `formats.npy_header` and its data a block at a time; a .safetensors header is parsed and checked
(as strictly as the safetensors library does) and its data read a block at a time too; an .npz
member is streamed out of the archive. So a header costs a few
KiB however large the file, and statistics of a multi-GiB file take memory for one block.
JSON and stdin cannot be read in pieces: they are read whole.

Nothing here prints, exits or imports torch; every problem is an `InputError` naming the file.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import numpy as np

from attncli.errors import InputError
from attncli.io.formats import (
    NPY_INSTEAD,
    NPY_MAGIC,
    NPY_NO_MAGIC,
    SNIFF_BYTES,
    ZIP_ERRORS,
    NpzMember,
    check_real_dtype,
    check_spans,
    error_reason,
    npy_header,
    npz_members,
    open_npz,
    read_into,
    read_npz_member,
    safetensors_entry,
    safetensors_header,
    wrong_start,
)
from attncli.io.loaders import (
    META_KEY,
    SAFETENSORS_DTYPES,
    STDIN,
    STDIN_LABEL,
    TensorFile,
    decoded_metadata_value,
    file_error,
    format_of,
    metadata_from_json,
    parse_tensors,
    pick_named,
    read_tensors,
    sniff_format,
    split_spec,
)
from attncli.io.source import check_in_memory, file_kind, read_path, stdin_bytes

#: Values per block: 4 MiB once widened to float64, whatever the file's size.
BLOCK_ELEMENTS = 1 << 19

BlockReader = Callable[[int], Iterator[np.ndarray]]


@dataclass(frozen=True)
class LazyTensor:
    """One tensor of a file, described by its header; its values are read only by `blocks`."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # as stored: "float32", "bfloat16", "int64", "bool", ...
    nbytes: int  # bytes of data in the file
    read_blocks: BlockReader = field(repr=False, compare=False)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    def blocks(self, elements: int = BLOCK_ELEMENTS) -> Iterator[np.ndarray]:
        """The values in C order, `elements` at a time (the last block shorter), as fresh 1-D native
        arrays, each its own memory. BF16 comes widened (exactly) to float32."""
        return self.read_blocks(max(1, elements))


@dataclass(frozen=True)
class LazyFile:
    """The tensors of one path (or stdin), as their headers describe them."""

    label: str  # the path, or "<stdin>"
    format: str  # npy, npz, safetensors or json
    nbytes: int  # size of the file
    tensors: dict[str, LazyTensor]
    named: bool  # False for a format that holds one unnamed tensor (.npy, a JSON array)
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Stats:
    """Statistics of a tensor's finite values (min/max exact, in its dtype); NaN and Inf counted apart."""

    min: float | int | None  # None: no finite value
    max: float | int | None
    mean: float | None
    std: float | None  # population standard deviation (ddof=0), like np.std
    nan: int
    inf: int


@dataclass(frozen=True)
class TensorReport:
    name: str
    shape: tuple[int, ...]
    dtype: str
    nbytes: int
    stats: Stats | None  # None with --no-stats


@dataclass(frozen=True)
class FileReport:
    label: str
    format: str
    nbytes: int
    tensors: list[TensorReport]
    metadata: dict[str, Any]


# --- opening files -----------------------------------------------------------------------------------


def open_spec(spec: str, stdin: BinaryIO | None = None) -> LazyFile:
    """`PATH`, `PATH:NAME` or `-`: the file's tensors, or only the one NAME picks."""
    path, name = split_spec(spec)
    source = open_tensors(path, stdin)
    if name is None:
        return source
    return LazyFile(
        source.label, source.format, source.nbytes, {name: pick(source, name)}, True, source.metadata
    )


def open_tensors(path: str, stdin: BinaryIO | None = None) -> LazyFile:
    """Read the header(s) of the file at `path` (`-`: all of `stdin`); no tensor data is read."""
    if path == STDIN:
        return _open_stdin(stdin)
    fmt = format_of(path)
    size = _checked_size(path)
    if size < 0:  # a pipe: read once, whole
        return _open_bytes(_read_pipe(path), path, fmt)
    if fmt == "npy":
        return _open_npy(path, size)
    if fmt == "safetensors":
        return _open_safetensors(_Source(path, path=path, size=size))
    if fmt == "npz":
        return _open_npz(_Source(path, path=path, size=size))
    return _from_tensor_file(read_tensors(path), "json", size)


def pick(source: LazyFile, name: str | None) -> LazyTensor:
    """The tensor called `name`, or the only tensor when `name` is None (messages as the loaders')."""
    return pick_named(source.tensors, source.label, name)


def inspect_spec(spec: str, stdin: BinaryIO | None = None, *, stats: bool = True) -> FileReport:
    """What `attn inspect` shows of one `PATH`, `PATH:NAME` or `-`."""
    source = open_spec(spec, stdin)
    tensors = [
        TensorReport(t.name, t.shape, t.dtype, t.nbytes, tensor_stats(t) if stats else None)
        for t in source.tensors.values()
    ]
    return FileReport(source.label, source.format, source.nbytes, tensors, source.metadata)


# --- statistics --------------------------------------------------------------------------------------


def tensor_stats(tensor: LazyTensor) -> Stats:
    """Min, max, mean and std of the finite values, and NaN/Inf counts, one block at a time.

    Means and variances of blocks are merged with Chan's formula in float64, so the result matches
    np.mean/np.std of the whole array to rounding, in memory for one block. They are kept in units
    of a power of two near the largest magnitude seen (an exact scaling), so that values near
    float64's largest (1.8e308), whose deviations and squares overflow, still give a finite std
    (np.std gives inf or NaN there).
    """
    low: Any = None
    high: Any = None
    count, mean, squares, unit = 0, 0.0, 0.0, 1.0
    nan = inf = 0
    for block in tensor.blocks():
        values = block.view(np.uint8) if block.dtype.kind == "b" else block
        if values.dtype.kind == "f":
            finite = np.isfinite(values)
            block_nan = int(np.count_nonzero(np.isnan(values)))
            nan += block_nan
            inf += values.size - int(np.count_nonzero(finite)) - block_nan
            if not finite.all():
                values = values[finite]
        if values.size == 0:
            continue
        block_low, block_high = values.min().item(), values.max().item()
        low = block_low if low is None else min(low, block_low)
        high = block_high if high is None else max(high, block_high)
        widened = values.astype(np.float64)
        block_unit = _unit(max(abs(float(block_low)), abs(float(block_high))))
        if block_unit > unit:  # the running figures into the larger unit (exact: powers of two)
            mean, squares = mean * (unit / block_unit), squares * (unit / block_unit) ** 2
            unit = block_unit
        scaled = widened / unit
        block_mean = float(scaled.mean())
        block_squares = float(np.square(scaled - block_mean).sum())
        total = count + scaled.size
        delta = block_mean - mean
        mean += delta * scaled.size / total
        squares += block_squares + delta * delta * count * scaled.size / total
        count = total
    if count == 0:
        return Stats(None, None, None, None, nan, inf)
    if tensor.dtype == "bool":
        low, high = bool(low), bool(high)
    return Stats(low, high, mean * unit, math.sqrt(squares / count) * unit, nan, inf)


def _unit(magnitude: float) -> float:
    """A power of two at most `magnitude` and more than half of it (2^1023 being the largest there is);
    1 for magnitudes up to 2, so that small values stay as they are."""
    return 1.0 if magnitude <= 2.0 else math.ldexp(1.0, math.frexp(magnitude)[1] - 1)


# --- where bytes come from -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Source:
    """The bytes of a file: on disk (read in windows) or already in memory (stdin)."""

    label: str
    path: str | None = None
    data: bytes | None = None
    size: int = 0

    def read(self, offset: int, length: int) -> bytes:
        if self.data is not None:
            return self.data[offset : offset + length]
        assert self.path is not None
        with open(self.path, "rb") as file:
            file.seek(offset)
            return file.read(length)

    def values(self, offset: int, dtype: np.dtype[Any], count: int) -> np.ndarray:
        """`count` values of `dtype` at byte `offset`: read, not mapped, so a file cut short
        meanwhile is an InputError, not a SIGBUS. From memory, a view valid until the next call."""
        if self.data is not None:
            return np.frombuffer(self.data, dtype=dtype, count=count, offset=offset)
        assert self.path is not None
        with open(self.path, "rb") as file:
            file.seek(offset)
            return read_into(file, np.empty(count, dtype), self.label)

    def open(self) -> BinaryIO:
        if self.data is not None:
            return io.BytesIO(self.data)
        assert self.path is not None
        return open(self.path, "rb")


def _checked_size(path: str) -> int:
    """The size of a readable, non-empty file, -1 for a pipe (not opened: it is read once, later);
    the loaders' messages otherwise."""
    try:
        if file_kind(path) == "pipe":
            return -1
        with open(path, "rb") as file:
            size = os.fstat(file.fileno()).st_size
            file.read(1)
    except OSError as error:
        raise file_error(path, error) from None
    if size == 0:
        raise InputError(f"{path}: the file is empty")
    return size


def _open_stdin(stdin: BinaryIO | None) -> LazyFile:
    data = stdin_bytes(stdin, STDIN_LABEL)
    fmt = sniff_format(data) if data else None
    if fmt in ("safetensors", "npz"):
        return _open_bytes(data, STDIN_LABEL, fmt)
    # Empty or unknown bytes, .npy and JSON: the loaders read them whole and word the errors.
    parsed = read_tensors(STDIN, io.BytesIO(data))
    return _from_tensor_file(parsed, fmt or "json", len(data))


def _read_pipe(path: str) -> bytes:
    try:
        return read_path(path)
    except OSError as error:
        raise file_error(path, error) from None


def _open_bytes(data: bytes, label: str, fmt: str) -> LazyFile:
    """The tensors of bytes read whole (stdin, a pipe), labelled `label`."""
    if fmt == "safetensors" and data:
        return _open_safetensors(_Source(label, data=data, size=len(data)))
    if fmt == "npz" and data:
        return _open_npz(_Source(label, data=data, size=len(data)))
    return _from_tensor_file(parse_tensors(data, label, fmt), fmt, len(data))


def _from_tensor_file(parsed: TensorFile, fmt: str, size: int) -> LazyFile:
    tensors = {
        name: LazyTensor(name, tuple(array.shape), array.dtype.name, array.nbytes, _array_blocks(array))
        for name, array in parsed.tensors.items()
    }
    return LazyFile(parsed.label, fmt, size, tensors, parsed.named, dict(parsed.metadata))


# --- .npy ------------------------------------------------------------------------------------------------


def _open_npy(path: str, size: int) -> LazyFile:
    with open(path, "rb") as file:
        head = file.read(SNIFF_BYTES)
        if not head.startswith(NPY_MAGIC):
            raise wrong_start(head, path, ".npy", NPY_INSTEAD, NPY_NO_MAGIC)
        file.seek(0)
        shape, fortran_order, dtype, offset = npy_header(file, path, ".npy")
    check_real_dtype(dtype, path, ".npy")
    nbytes = math.prod(shape) * dtype.itemsize
    if offset + nbytes > size:
        raise InputError(
            f"{path}: not a valid .npy file (its header describes {dtype.name} of shape {shape}, "
            f"{nbytes} bytes of data, but the file holds only {size - offset} bytes after the header)"
        )
    if fortran_order and len(shape) > 1:
        # Stored column-major: C-order blocks need the whole array, read with its strides.
        def read(elements: int) -> Iterator[np.ndarray]:
            check_in_memory(nbytes, path)
            with open(path, "rb") as file:
                file.seek(offset)
                whole = read_into(file, np.empty(shape, dtype, order="F"), path)
            yield from _array_blocks(whole)(elements)

        reader: BlockReader = read
    else:
        reader = _raw_blocks(_Source(path, path=path, size=size), offset, dtype, math.prod(shape))
    tensor = LazyTensor("tensor", shape, dtype.name, nbytes, reader)
    return LazyFile(path, "npy", size, {"tensor": tensor}, named=False)


# --- .safetensors ------------------------------------------------------------------------------------


def _open_safetensors(source: _Source) -> LazyFile:
    label = source.label
    header, raw_metadata, data_start = safetensors_header(source.read, source.size, label)

    def invalid(reason: str) -> InputError:
        return InputError(f"{label}: not a valid .safetensors file ({reason})")

    data_size = source.size - data_start
    spans: list[tuple[int, int, str]] = []
    tensors: dict[str, LazyTensor] = {}
    for name, info in header.items():
        dtype_name, shape, begin, end = safetensors_entry(name, info, invalid)
        if dtype_name != "BF16" and dtype_name not in SAFETENSORS_DTYPES:
            raise InputError(
                f"{label}:{name}: dtype {dtype_name} is not supported (use F64, F32, F16, BF16 or integers)"
            )
        storage = np.dtype("<u2" if dtype_name == "BF16" else SAFETENSORS_DTYPES[dtype_name])
        nbytes = math.prod(shape) * storage.itemsize
        if end - begin != nbytes:
            raise invalid(
                f"tensor '{name}' of dtype {dtype_name} and shape {list(shape)} needs {nbytes} bytes, "
                f"but its data_offsets [{begin}, {end}] span {end - begin}"
            )
        if end > data_size:
            raise invalid(
                f"tensor '{name}' claims bytes {begin} to {end} of the data, but the file holds only "
                f"{data_size} bytes of data after its header"
            )
        spans.append((begin, end, name))
        shown = "bfloat16" if dtype_name == "BF16" else storage.name
        reader = _raw_blocks(source, data_start + begin, storage, math.prod(shape), dtype_name == "BF16")
        tensors[name] = LazyTensor(name, shape, shown, nbytes, reader)
    check_spans(sorted(spans), data_size, invalid)
    if not tensors:
        raise InputError(f"{label}: the file holds no tensors")
    ordered = {name: tensors[name] for _, _, name in sorted(spans)}  # in the order of their data
    metadata = {str(key): decoded_metadata_value(value) for key, value in raw_metadata.items()}
    return LazyFile(label, "safetensors", source.size, ordered, named=True, metadata=metadata)


def _raw_blocks(
    source: _Source, offset: int, storage: np.dtype[Any], count: int, bfloat16: bool = False
) -> BlockReader:
    """Blocks of `count` contiguous values at byte `offset`, each read through its own window."""

    def read(elements: int) -> Iterator[np.ndarray]:
        for start in range(0, count, elements):
            length = min(elements, count - start)
            try:
                window = source.values(offset + start * storage.itemsize, storage, length)
                block = _fresh(window, bfloat16)
            except (OSError, ValueError) as error:  # the file shrank or vanished since its header was read
                raise InputError(f"{source.label}: cannot be read: {error_reason(error)}") from None
            yield block

    return read


# --- .npz ------------------------------------------------------------------------------------------------


def _open_npz(source: _Source) -> LazyFile:
    label = source.label
    tensors: dict[str, LazyTensor] = {}
    metadata: dict[str, Any] = {}
    with source.open() as stream, open_npz(stream, label) as archive:
        for member in npz_members(archive, label):
            if member.name == META_KEY and member.dtype.kind == "U" and member.shape == ():
                check_in_memory(member.nbytes, f"{label}:{member.name}", unpacked=True)
                metadata = metadata_from_json(str(read_npz_member(archive, member, label)[()]), label)
                continue
            where = f"{label}:{member.name}"
            check_real_dtype(member.dtype, where if member.dtype.kind != "O" else label, ".npz")
            reader = _member_blocks(source, member)
            tensors[member.name] = LazyTensor(
                member.name, member.shape, member.dtype.name, member.nbytes, reader
            )
    if not tensors:
        raise InputError(f"{label}: the archive holds no tensors")
    return LazyFile(label, "npz", source.size, tensors, named=True, metadata=metadata)


def _member_blocks(source: _Source, member: NpzMember) -> BlockReader:
    """Stream one archive member: C-order data in blocks; column-major data whole (NumPy needs it all)."""
    count = math.prod(member.shape)
    where = f"{source.label}:{member.name}"

    def read(elements: int) -> Iterator[np.ndarray]:
        with source.open() as stream, open_npz(stream, source.label) as archive:
            if member.fortran_order and len(member.shape) > 1:
                check_in_memory(member.nbytes, where, unpacked=True)
                yield from _array_blocks(read_npz_member(archive, member, source.label))(elements)
                return
            try:
                with archive.open(member.info) as data:
                    data.seek(member.offset)
                    for start in range(0, count, elements):
                        block = np.empty(min(elements, count - start), member.dtype)
                        yield _fresh(read_into(data, block, where), False)
            except ZIP_ERRORS as error:
                raise InputError(f"{source.label}: not a valid .npz file ({error_reason(error)})") from None

    return read


# --- blocks of arrays ------------------------------------------------------------------------------------


def _array_blocks(array: np.ndarray) -> BlockReader:
    """Blocks of an array in memory, with any strides, in C order."""

    def read(elements: int) -> Iterator[np.ndarray]:
        for start in range(0, array.size, elements):
            yield _fresh(_flat_slice(array, start, min(start + elements, array.size)), False)

    return read


def _flat_slice(array: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Elements start..stop of `array` in C order, touching only about that many (any strides)."""
    if array.flags.c_contiguous or array.ndim <= 1:
        return array.reshape(-1)[start:stop]
    row = math.prod(array.shape[1:])  # elements per index of the first axis
    first, last = start // row, -(-stop // row)
    if row <= stop - start:  # short rows: copy the few whole rows that hold the range
        return np.ravel(array[first:last])[start - first * row : stop - first * row]
    pieces = [  # long rows: the range lies within one or two of them
        _flat_slice(array[i], max(start - i * row, 0), min(stop - i * row, row)) for i in range(first, last)
    ]
    return np.concatenate(pieces)


def _fresh(values: np.ndarray, bfloat16: bool) -> np.ndarray:
    """A native-endian copy (no block shares memory with the next); BF16 bits widened exactly to float32."""
    if bfloat16:
        # bfloat16 is the top half of a float32.
        return (values.astype(np.uint32) << 16).view(np.float32)
    return np.array(values, dtype=values.dtype.newbyteorder("="))


__all__ = [
    "BLOCK_ELEMENTS",
    "FileReport",
    "LazyFile",
    "LazyTensor",
    "Stats",
    "TensorReport",
    "inspect_spec",
    "open_spec",
    "open_tensors",
    "pick",
    "tensor_stats",
]
