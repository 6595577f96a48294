"""Write results to .safetensors, .npz or .json, never leaving a partial or clobbered file.

A result is a few named NumPy arrays (`weights`, `output`) and a metadata mapping, written whole
(`write_result`) or, for a computation in blocks, with the weights written row block by row block
as they are computed (`ResultFile`, `WeightsFile`). Arrays named in `bfloat16` are float32 arrays
holding bfloat16 values (NumPy has no bfloat16): .safetensors stores them as BF16, two bytes each,
as they were computed; .npz and .json, which have no bfloat16, keep them as float32 and say so in
the metadata (`stored_dtype`, beside the `dtype` they were computed in).

Each file is written to a temporary name in the target folder and put in place of the target only
once complete (`_publish`), so an interrupted write leaves the old file as it was (and a reader of
it unharmed).

Within `outputs.all_or_nothing()` (a command of the CLI) the finished files wait beside their
targets and take their places together, or none does (io/outputs.py). Nothing here prints or
exits; problems are `UsageError`s and `OutputError`s naming the path.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import shutil
import zipfile
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from attncli.errors import OutputError, UsageError
from attncli.io.outputs import claim, publish, temporary_beside

OUTPUT_FORMATS = {".safetensors": "safetensors", ".npz": "npz", ".json": "json"}
META_KEY = "meta"
#: The metadata entry of an .npz or .json file that holds bfloat16 results as float32.
STORED_DTYPE_KEY = "stored_dtype"


def check_output_path(
    path: str | os.PathLike[str],
    *,
    force: bool = False,
    option: str = "--output",
    suffixes: Collection[str] = tuple(OUTPUT_FORMATS),
) -> Path:
    """Refuse, before any work is done, an output path that could not or should not be written:
    also one that another output of the command names (through any link), or that is one of its
    inputs (`note_input`)."""
    if not os.fspath(path):
        example = f"result{next(iter(suffixes), '')}"
        raise UsageError(f"{option}: the path is empty; give a file name, e.g. {option} {example}")
    target = Path(path)
    suffix = target.suffix.lower()
    if suffix not in suffixes:
        shown = f"suffix '{suffix}'" if suffix else "no suffix"
        raise UsageError(f"{option} {target}: {shown} is not supported; {option} takes {', '.join(suffixes)}")
    folder = target.parent
    # The file is written as .NAME.XXXXXXXX.partial beside it, then renamed: that name must fit too.
    longest = _name_max(folder) - len(".") - len(".XXXXXXXX.partial")
    if len(os.fsencode(target.name)) > longest:
        raise UsageError(
            f"{option} {target}: the file name is {len(os.fsencode(target.name))} bytes long; "
            f"at most {longest} fit this folder"
        )
    try:
        if not folder.is_dir():
            raise UsageError(f"{option} {target}: the folder {folder} does not exist")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise UsageError(f"{option} {target}: the folder {folder} is not writable")
        if target.is_dir():
            raise UsageError(f"{option} {target}: is a directory")
        if target.exists() and not force:
            raise UsageError(f"{option} {target}: the file exists; add --force to replace it")
        claim(target, option, replace=target.exists())
    except OSError as error:  # a folder name too long, a loop of links, ...
        raise UsageError(f"{option} {target}: cannot be written: {error.strerror or error}") from None
    return target


def _name_max(folder: Path) -> int:
    """The longest file name the folder's file system takes (255 bytes where it cannot be asked)."""
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):
        return 255


def write_result(
    path: str | os.PathLike[str],
    tensors: Mapping[str, np.ndarray],
    metadata: Mapping[str, Any],
    *,
    bfloat16: Collection[str] = (),
) -> None:
    """Write `tensors` and `metadata` to `path` in the format its suffix names, atomically; those of
    `tensors` named in `bfloat16` (float32 arrays of bfloat16 values) as BF16 where the format can."""
    target = Path(path)
    fmt = OUTPUT_FORMATS.get(target.suffix.lower())
    narrowed = _bfloat16_names(tensors, bfloat16)
    if fmt == "safetensors":
        # Little-endian, C order: what the format stores, and (for torch's arrays) no copy at all.
        arrays = {
            name: np.asarray(array, dtype=array.dtype.newbyteorder("<"), order="C")
            for name, array in tensors.items()
        }
        entries = {name: (a.dtype, a.shape) for name, a in arrays.items()}
        header = safetensors_header(entries, metadata, bfloat16=narrowed)

        def write_safetensors(file: BinaryIO) -> None:
            # The arrays' own memory, one after the other: no second copy of a 4 GiB result.
            file.write(header)
            for name, array in arrays.items():
                if name in narrowed:
                    _write_bfloat16(file, array)
                elif array.size:  # an empty array has no bytes (and memoryview refuses to cast it)
                    file.write(array.data.cast("B"))

        _write_atomically(target, write_safetensors, "--output")
    elif fmt == "npz":
        stored = stored_metadata(metadata, narrowed)
        _write_atomically(target, lambda file: _write_npz(file, tensors, stored), "--output")
    elif fmt == "json":
        _write_atomically(
            target, lambda file: write_json(file, tensors, metadata, bfloat16=narrowed), "--output"
        )
    else:
        raise UsageError(f"--output {target}: not a format attncli writes ({', '.join(OUTPUT_FORMATS)})")


def stored_metadata(metadata: Mapping[str, Any], bfloat16: Collection[str]) -> dict[str, Any]:
    """The metadata of a format without bfloat16 (.npz, .json): with `stored_dtype` float32 when
    bfloat16 results are kept as float32 (the dtype they were computed in stays in `dtype`)."""
    return {**metadata, STORED_DTYPE_KEY: "float32"} if bfloat16 else dict(metadata)


def _bfloat16_names(tensors: Mapping[str, np.ndarray], bfloat16: Collection[str]) -> frozenset[str]:
    """The names of `bfloat16` that `tensors` holds, each a float32 array (bfloat16 values widened)."""
    names = frozenset(name for name in bfloat16 if name in tensors)
    for name in names:
        if np.dtype(tensors[name].dtype).newbyteorder("=") != np.float32:
            raise ValueError(f"{name}: bfloat16 values come widened to float32, not {tensors[name].dtype}")
    return names


def bfloat16_bits(values: np.ndarray) -> np.ndarray:
    """float32 values rounded to bfloat16 (to nearest, ties to even, as torch rounds), as the
    little-endian 16-bit patterns safetensors stores. bfloat16 is the top half of a float32, so a
    value that is bfloat16 already (widened) keeps its bits exactly. NaN stays NaN."""
    bits = np.ascontiguousarray(values, dtype="<f4").view("<u4")
    with np.errstate(over="ignore"):
        rounded = (bits + (0x7FFF + ((bits >> 16) & 1))) >> 16  # may wrap for NaN only: set below
    nan = np.isnan(values)
    if nan.any():
        rounded[nan] = (bits[nan] >> 16) | 0x0040  # a quiet NaN of the same sign
    patterns: np.ndarray = rounded.astype("<u2")
    return patterns


_BFLOAT16_PIECE = 1 << 20  # values narrowed at a time: 4 MiB of float32 in, 2 MiB out


def _write_bfloat16(file: BinaryIO, array: np.ndarray) -> None:
    """`array` as BF16 a piece at a time: no whole narrowed copy of the result in memory."""
    flat = array.reshape(-1)
    for start in range(0, flat.size, _BFLOAT16_PIECE):
        file.write(bfloat16_bits(flat[start : start + _BFLOAT16_PIECE]).data.cast("B"))


def write_text(path: str | os.PathLike[str], text: str, *, option: str) -> None:
    """Write `text` (UTF-8) to `path` atomically, as the result files are."""
    _write_atomically(Path(path), lambda file: file.write(text.encode()), option)


def json_text(
    tensors: Mapping[str, np.ndarray], metadata: Mapping[str, Any], *, bfloat16: Collection[str] = ()
) -> str:
    """`{"weights": [...], "output": [...], "meta": {...}}` with each number as its shortest exact
    text; `meta` says `stored_dtype` float32 when `bfloat16` names some of `tensors`."""
    buffer = io.BytesIO()
    write_json(buffer, tensors, metadata, bfloat16=bfloat16)
    return buffer.getvalue().decode()


def write_json(
    file: BinaryIO,
    tensors: Mapping[str, np.ndarray],
    metadata: Mapping[str, Any],
    *,
    bfloat16: Collection[str] = (),
) -> None:
    """`json_text` written to `file` a piece at a time: the text of at most a few MB of numbers is
    ever in memory (the whole text of a 6000-position result is 1.3 GB, which orjson, asked for it
    at once under a memory limit, crashed on)."""
    metadata = stored_metadata(metadata, _bfloat16_names(tensors, bfloat16))
    file.write(b"{")
    for name, array in tensors.items():
        file.write(json.dumps(name).encode() + b": ")
        _write_json_array(file, np.asarray(array))
        file.write(b", ")
    file.write(json.dumps(META_KEY).encode() + b": " + json.dumps(dict(metadata)).encode() + b"}")


#: Arrays of up to this many bytes are turned into text in one piece.
_JSON_PIECE_BYTES = 4 << 20


def _write_json_array(file: BinaryIO, array: np.ndarray) -> None:
    if array.ndim <= 1 or array.nbytes <= _JSON_PIECE_BYTES:
        file.write(_json_array(array).encode())
        return
    file.write(b"[")
    for index, part in enumerate(array):  # the same text as the whole array's, a row at a time
        if index:
            file.write(b",")
        _write_json_array(file, part)
    file.write(b"]")


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
    entries: Mapping[str, tuple[np.dtype[Any], tuple[int, ...]]],
    metadata: Mapping[str, Any],
    *,
    bfloat16: Collection[str] = (),
) -> bytes:
    """The header of a .safetensors file whose data holds, in this order and back to back, arrays of
    these (dtype, shape), those named in `bfloat16` (float32 in memory) as BF16: 8 bytes of
    little-endian length, then JSON padded with spaces to 8 bytes. Metadata values are stored as
    JSON text (safetensors maps strings to strings)."""
    header: dict[str, Any] = {"__metadata__": {key: json.dumps(value) for key, value in metadata.items()}}
    offset = 0
    for name, (dtype, shape) in entries.items():
        try:
            code = "BF16" if name in bfloat16 else SAFETENSORS_DTYPES[np.dtype(dtype).newbyteorder("=")]
        except KeyError:
            raise ValueError(f"{name}: safetensors has no type for {dtype}") from None
        itemsize = 2 if name in bfloat16 else np.dtype(dtype).itemsize
        size = int(np.prod(shape, dtype=np.int64)) * itemsize
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
        descriptor, temporary = temporary_beside(target)
    except OSError as error:
        raise OutputError(f"{option} {target}: could not be written: {error.strerror or error}") from None
    try:
        with os.fdopen(descriptor, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, mode_for_replacing(target))
        publish(temporary, target, option)
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


#: Suffixes `WeightsFile` (--weights-to) takes.
WEIGHTS_FORMATS = (".npy", ".safetensors")
#: Suffixes `ResultFile` (-o of a computation in blocks) takes.
RESULT_FORMATS = (".safetensors", ".npz")
_COPY_BYTES = 16 << 20  # a copy from file to file goes through a buffer of this size


class _WeightsWriter:
    """The full weights, row block by row block, into a temporary file beside the target, after
    `header`; renamed over the target when complete. Each block's rows are written at their place
    in the data (positioned writes, not a memory map, whose dirty pages would count as the
    process's). `bfloat16`: the rows come as float32 arrays of bfloat16 values, written as BF16."""

    def __init__(
        self,
        target: Path,
        shape: tuple[int, ...],
        dtype: np.dtype[Any],
        header: bytes,
        option: str,
        bfloat16: bool = False,
    ) -> None:
        if not target.parent.is_dir():
            raise UsageError(f"{option} {target}: the folder {target.parent} does not exist")
        self.target, self.shape, self.dtype, self.option = target, shape, dtype, option
        self.bfloat16 = bfloat16
        self.itemsize = 2 if bfloat16 else dtype.itemsize
        self.rows, self.keys = shape[-2], shape[-1]
        self.data_start = len(header)
        self.data_bytes = math.prod(shape) * self.itemsize
        self.file: BinaryIO | None = None
        self.published = False
        try:
            descriptor, self.temporary = temporary_beside(target)
        except OSError as error:
            raise self.error(error) from None
        try:
            self.file = os.fdopen(descriptor, "w+b")
            self.file.write(header)
        except BaseException as error:
            self.discard()
            if isinstance(error, OSError):
                raise self.error(error) from None
            raise

    def write_rows(self, start: int, weights: np.ndarray) -> None:
        """Weights (..., n, Lk) of query rows start..start+n, each matrix's rows at their offset."""
        assert self.file is not None
        block = weights.astype(self.dtype, copy=False)
        n = block.shape[-2]
        matrices = block.reshape(-1, n * self.keys)  # one contiguous run of rows per matrix
        itemsize = self.itemsize
        try:
            for index, rows in enumerate(matrices):
                self.file.seek(self.data_start + (index * self.rows + start) * self.keys * itemsize)
                stored = bfloat16_bits(rows) if self.bfloat16 else np.ascontiguousarray(rows)
                self.file.write(stored.data.cast("B"))
        except OSError as error:
            raise self.error(error) from None

    def commit(self) -> None:
        assert self.file is not None
        try:
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
            os.chmod(self.temporary, mode_for_replacing(self.target))
            publish(self.temporary, self.target, self.option)
        except OSError as error:
            self.discard()
            raise self.error(error) from None
        self.published = True

    def discard(self) -> None:
        """Remove the temporary file, unless it is published (staged files are the `Outputs`')."""
        if self.file is not None and not self.file.closed:
            self.file.close()
        if not self.published:
            Path(self.temporary).unlink(missing_ok=True)

    def error(self, error: OSError) -> OutputError:
        return OutputError(f"{self.option} {self.target}: could not be written: {error.strerror or error}")


class WeightsFile(_WeightsWriter):
    """--weights-to: a .npy or .safetensors file of the weights alone, written row block by row
    block (`write_rows`), in place of the target only at `commit`; `discard` leaves nothing.
    `bfloat16`: float32 rows of bfloat16 values, stored as BF16 in .safetensors (.npy has no
    bfloat16: float32 there)."""

    def __init__(
        self,
        target: str | os.PathLike[str],
        shape: tuple[int, ...],
        dtype: np.dtype[Any],
        metadata: Mapping[str, Any],
        *,
        bfloat16: bool = False,
    ) -> None:
        path = Path(target)
        suffix = path.suffix.lower()
        if suffix not in WEIGHTS_FORMATS:
            shown = f"suffix '{suffix}'" if suffix else "no suffix"
            raise UsageError(
                f"weights file {path}: {shown} is not supported; use {', '.join(WEIGHTS_FORMATS)}"
            )
        narrowed = bfloat16 and suffix == ".safetensors"
        header = (
            npy_header_bytes(shape, dtype)
            if suffix == ".npy"
            else safetensors_header(
                {"weights": (dtype, shape)}, metadata, bfloat16=("weights",) if narrowed else ()
            )
        )
        super().__init__(path, shape, dtype, header, option="weights file", bfloat16=narrowed)


class ResultFile:
    """`attn compute -o` for a computation in blocks: the weights go into the file block by block
    as they are computed, the output, statistics and metadata once they are known (`commit`); the
    file replaces the target only when complete, and `discard` leaves nothing behind.

    .safetensors: room is left for the header before the weights, and the header is written last,
    its JSON padded with spaces (as the format allows); should it not fit, the file is written again
    behind a header that does. .npz: the weights go to a temporary .npy file, copied into the
    archive as its member `weights.npy`, the others written as `np.savez` writes them. Memory stays
    that of one block either way. (JSON is not written so: the weights as text would be larger
    still than the 4 bytes a weight takes in these files.)

    `bfloat16`: the weights come as float32 rows of bfloat16 values; .safetensors stores them as
    BF16, .npz as float32 (with `stored_dtype` in its metadata), as `write_result` does.
    """

    def __init__(
        self,
        target: str | os.PathLike[str],
        shape: tuple[int, ...],
        dtype: np.dtype[Any],
        metadata: Mapping[str, Any],
        *,
        bfloat16: bool = False,
    ) -> None:
        """`shape` and `dtype` of the weights; `metadata`: the settings known before the run."""
        self.target = Path(target)
        self.suffix = self.target.suffix.lower()
        if self.suffix not in RESULT_FORMATS:
            raise UsageError(
                f"--output {self.target}: a blocked computation writes the weights block by block to "
                f"{' or '.join(RESULT_FORMATS)}, not as JSON text; use one of those, or drop "
                "--stream/--weights-to, or raise --memory-limit"
            )
        self.entry = (dtype, shape)
        self.bfloat16 = bfloat16
        self.narrowed = ("weights",) if bfloat16 and self.suffix == ".safetensors" else ()
        if self.suffix == ".safetensors":
            guess = len(safetensors_header({"weights": self.entry}, metadata, bfloat16=self.narrowed))
            self.room = 2 * guess + 4096  # header JSON bytes: settings, sources, statistics' names
            self.room += -self.room % 8
            header = bytes(8 + self.room)
        else:
            header = npy_header_bytes(shape, dtype)
        self.weights = _WeightsWriter(
            self.target, shape, dtype, header, option="--output", bfloat16=bool(self.narrowed)
        )

    def __enter__(self) -> ResultFile:
        return self

    def __exit__(self, *_: object) -> None:
        self.discard()  # after commit, nothing is left to remove; before it, nothing is left behind

    def write_rows(self, start: int, weights: np.ndarray) -> None:
        self.weights.write_rows(start, weights)

    def commit(
        self,
        arrays: Mapping[str, np.ndarray],
        metadata: Mapping[str, Any],
        *,
        bfloat16: Collection[str] = (),
    ) -> None:
        """Add `arrays` (all but the weights) and `metadata` to the weights, then replace the target;
        those of `arrays` named in `bfloat16` as `write_result` writes them."""
        if "weights" in arrays:
            raise ValueError("the weights are in the file already")
        try:
            narrowed = _bfloat16_names(arrays, bfloat16)
            if self.suffix == ".safetensors":
                self._commit_safetensors(arrays, metadata, narrowed)
            else:
                stored = stored_metadata(metadata, narrowed | ({"weights"} if self.bfloat16 else set()))
                self._commit_npz(arrays, stored)
        except OSError as error:
            self.discard()
            raise self.weights.error(error) from None
        except BaseException:
            self.discard()
            raise

    def discard(self) -> None:
        self.weights.discard()

    def _commit_safetensors(
        self, arrays: Mapping[str, np.ndarray], metadata: Mapping[str, Any], bfloat16: frozenset[str]
    ) -> None:
        file = self.weights.file
        assert file is not None
        rest = {
            name: np.asarray(array, dtype=array.dtype.newbyteorder("<"), order="C")
            for name, array in arrays.items()
        }
        header = safetensors_header(
            {"weights": self.entry, **{name: (a.dtype, a.shape) for name, a in rest.items()}},
            metadata,
            bfloat16={*self.narrowed, *bfloat16},
        )
        file.seek(self.weights.data_start + self.weights.data_bytes)
        for name, array in rest.items():
            if name in bfloat16:
                _write_bfloat16(file, array)
            elif array.size:
                file.write(array.data.cast("B"))
        text = header[8:]
        if len(text) <= self.room:
            file.seek(0)
            file.write(self.room.to_bytes(8, "little") + text + b" " * (self.room - len(text)))
            self.weights.commit()
            return
        # A header longer than the room left for it: the data again, behind it, in a second file.
        file.flush()
        file.seek(self.weights.data_start)

        def write(out: BinaryIO) -> None:
            out.write(header)
            shutil.copyfileobj(file, out, _COPY_BYTES)

        self._replace_with(write)

    def _commit_npz(self, arrays: Mapping[str, np.ndarray], metadata: Mapping[str, Any]) -> None:
        file = self.weights.file
        assert file is not None
        file.flush()
        members = {**arrays, META_KEY: np.array(json.dumps(dict(metadata)))}

        def write(out: BinaryIO) -> None:
            # Stored, not compressed, as np.savez writes; ZIP64 past 4 GiB.
            with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
                archive.write(self.weights.temporary, "weights.npy")
                for name, array in members.items():
                    with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                        np.lib.format.write_array(member, np.asanyarray(array), allow_pickle=False)

        self._replace_with(write)

    def _replace_with(self, write: Callable[[BinaryIO], object]) -> None:
        """Write a second temporary file beside the target, rename it over the target, and remove
        the first."""
        descriptor, temporary = temporary_beside(self.target)
        try:
            with os.fdopen(descriptor, "wb") as out:
                write(out)
                out.flush()
                os.fsync(out.fileno())
            os.chmod(temporary, mode_for_replacing(self.target))
            publish(temporary, self.target, "--output")
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        self.weights.discard()


def npy_header_bytes(shape: tuple[int, ...], dtype: np.dtype[Any]) -> bytes:
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
    buffer = _Bytes()
    try:
        np.lib.format.write_array_header_1_0(buffer, header)
    except ValueError:  # a header over 64 KiB: never for a shape, but version 2.0 takes it
        buffer = _Bytes()
        np.lib.format.write_array_header_2_0(buffer, header)
    return bytes(buffer.data)


class _Bytes:
    """The one method NumPy's header writers call."""

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, chunk: bytes) -> None:
        self.data += chunk


class TensorStream:
    """A file of named tensors written one tensor at a time (`add`), as each becomes known, with
    the metadata last (`commit`): `attn capture` writes each layer's tensors as soon as the layer
    has run, so that no more than one layer's are ever held in memory. The file replaces the target
    only when complete; `discard` (or leaving the `with` block without `commit`) leaves nothing.

    .safetensors: the tensors follow room left for the header (sized from `expected_metadata` and
    `expected_tensors`), and the header is written into it last, padded with spaces; should it not
    fit, the data is copied once behind a header that does. .npz: each tensor is a member of the
    archive as it comes. .json: each tensor's text as it comes, `"meta"` last. Tensors named
    bfloat16 (float32 arrays of bfloat16 values) are stored as BF16 in .safetensors, as float32
    elsewhere (with `stored_dtype` in the metadata), as `write_result` stores them.
    """

    def __init__(
        self,
        target: str | os.PathLike[str],
        *,
        expected_metadata: Mapping[str, Any] | None = None,
        expected_tensors: int = 0,
        option: str = "--output",
    ) -> None:
        self.target = Path(target)
        self.option = option
        self.format = OUTPUT_FORMATS.get(self.target.suffix.lower())
        if self.format is None:
            raise UsageError(
                f"{option} {self.target}: not a format attncli writes ({', '.join(OUTPUT_FORMATS)})"
            )
        self.entries: dict[str, tuple[np.dtype[Any], tuple[int, ...]]] = {}
        self.bfloat16: set[str] = set()
        self.published = False
        self.archive: zipfile.ZipFile | None = None
        self.room = 0
        try:
            descriptor, self.temporary = temporary_beside(self.target)
        except OSError as error:
            raise self._error(error) from None
        try:
            self.file: BinaryIO = os.fdopen(descriptor, "w+b")
            if self.format == "safetensors":
                known = len(json.dumps(dict(expected_metadata or {})).encode())
                # The metadata is stored as JSON inside JSON: its quotes escaped, so up to twice as long.
                self.room = 2 * known + 256 * expected_tensors + 4096
                self.room += -self.room % 8
                self.file.write(bytes(8 + self.room))
            elif self.format == "npz":
                self.archive = zipfile.ZipFile(self.file, "w", zipfile.ZIP_STORED, allowZip64=True)
            else:
                self.file.write(b"{")
        except BaseException as error:
            self.discard()
            if isinstance(error, OSError):
                raise self._error(error) from None
            raise

    def __enter__(self) -> TensorStream:
        return self

    def __exit__(self, *_: object) -> None:
        self.discard()  # after commit, nothing is left to remove; before it, nothing is left behind

    def add(self, name: str, array: np.ndarray, *, bfloat16: bool = False) -> None:
        """Write `array` as tensor `name` now (`bfloat16`: a float32 array of bfloat16 values)."""
        if name in self.entries:
            raise ValueError(f"{name}: written already")
        if bfloat16 and np.dtype(array.dtype).newbyteorder("=") != np.float32:
            raise ValueError(f"{name}: bfloat16 values come widened to float32, not {array.dtype}")
        stored = np.asarray(array, dtype=array.dtype.newbyteorder("<"), order="C")
        try:
            if self.format == "safetensors":
                if bfloat16:
                    _write_bfloat16(self.file, stored)
                elif stored.size:
                    self.file.write(stored.data.cast("B"))
            elif self.archive is not None:
                with self.archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, stored, allow_pickle=False)
            else:
                self.file.write(json.dumps(name).encode() + b": ")
                _write_json_array(self.file, stored)
                self.file.write(b", ")
        except OSError as error:
            self.discard()
            raise self._error(error) from None
        self.entries[name] = (stored.dtype, tuple(stored.shape))
        if bfloat16:
            self.bfloat16.add(name)

    def commit(self, metadata: Mapping[str, Any]) -> None:
        """Add `metadata`, then put the complete file in place of the target."""
        try:
            if self.format == "safetensors":
                header = safetensors_header(self.entries, metadata, bfloat16=self.bfloat16)
                text = header[8:]
                if len(text) > self.room:  # more than the room left: the data again, behind it
                    self._rewrite_behind(header)
                    return
                self.file.seek(0)
                self.file.write(self.room.to_bytes(8, "little") + text + b" " * (self.room - len(text)))
            elif self.archive is not None:
                stored = stored_metadata(metadata, self.bfloat16)
                with self.archive.open(f"{META_KEY}.npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, np.array(json.dumps(stored)), allow_pickle=False)
                self.archive.close()
            else:
                stored = stored_metadata(metadata, self.bfloat16)
                self.file.write(json.dumps(META_KEY).encode() + b": " + json.dumps(stored).encode() + b"}")
            self._publish(self.file, self.temporary)
        except OSError as error:
            self.discard()
            raise self._error(error) from None
        except BaseException:
            self.discard()
            raise

    def discard(self) -> None:
        """Remove the temporary file, unless it is published (staged files are the `Outputs`')."""
        if self.archive is not None and self.archive.fp is not None:
            with contextlib.suppress(Exception):
                self.archive.close()
        if not self.file.closed:
            self.file.close()
        if not self.published:
            Path(self.temporary).unlink(missing_ok=True)

    def _publish(self, file: BinaryIO, temporary: str) -> None:
        file.flush()
        os.fsync(file.fileno())
        file.close()
        os.chmod(temporary, mode_for_replacing(self.target))
        publish(temporary, self.target, self.option)
        self.published = True

    def _rewrite_behind(self, header: bytes) -> None:
        self.file.flush()
        self.file.seek(8 + self.room)
        descriptor, temporary = temporary_beside(self.target)
        try:
            with os.fdopen(descriptor, "w+b") as out:
                out.write(header)
                shutil.copyfileobj(self.file, out, _COPY_BYTES)
                self._publish(out, temporary)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        self.file.close()  # the first temporary file goes; the second is the one published
        Path(self.temporary).unlink(missing_ok=True)
        self.published = True

    def _error(self, error: OSError) -> OutputError:
        return OutputError(f"{self.option} {self.target}: could not be written: {error.strerror or error}")
