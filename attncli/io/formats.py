"""The headers of the tensor formats attncli reads, each read and checked by one function.

`npy_header` (.npy files and .npz members), `npz_members` and `safetensors_header` are used by both
readers: the loaders (which read tensors whole) and `inspect`/`diff`'s headers-first reader
(io/lazy.py). `read_into` is how both fill an array from a file. Every problem is an `InputError`
naming the file.
"""

from __future__ import annotations

import json
import math
import re
import warnings
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from tokenize import TokenError
from typing import IO, Any

import numpy as np

from attncli.errors import InputError

NPY_MAGIC = b"\x93NUMPY"
MAX_SAFETENSORS_HEADER = 100_000_000  # the safetensors library refuses larger headers
DTYPE_KIND_WORDS = {
    "c": "complex numbers",
    "U": "strings",
    "S": "byte strings",
    "O": "Python objects",
    "V": "structured records",
    "M": "dates",
    "m": "time spans",
}


def error_reason(error: BaseException) -> str:
    text = str(error).strip().rstrip(".")
    return text[:200] if text else type(error).__name__


def header_reason(error: BaseException) -> str:
    """NumPy's reason for refusing a .npy header, in a line: its refusal of a huge header speaks of
    allow_pickle, which has nothing to do with it here."""
    text = str(error)
    found = re.search(r"Header info length \((\d+)\) is large", text)
    if found:
        size = int(found.group(1))
        return f"its header is {size:,} bytes, more than the {_MAX_NPY_HEADER:,} NumPy reads safely"
    return error_reason(error)


_MAX_NPY_HEADER = 10_000  # numpy.lib.format's default max_header_size


#: How much of a file's start is read to tell text from a binary tensor file.
SNIFF_BYTES = 512
_LFS_POINTER = "version https://git-lfs.github.com/spec/"
_EXCERPT = 40  # characters of a text file's first line that a message quotes


def text_start(head: bytes) -> str | None:
    """The first bytes of a file, decoded, when they are text (UTF-8 without NUL or other control
    characters but whitespace, and not only whitespace); None for the bytes of a binary file."""
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as error:
        if error.start < len(head) - 3 or error.reason != "unexpected end of data":
            return None
        text = head[: error.start].decode("utf-8")  # a character cut at the end of `head`
    text = text.removeprefix("\ufeff")
    if not text.strip() or not all(c.isprintable() or c in "\t\n\r\f\v" for c in text):
        return None
    return text


def text_reason(head: bytes, instead: str) -> str | None:
    """Why a file whose first bytes are `head` is not the binary file it was named as, when it is
    text (a Git LFS pointer, JSON, anything else), saying it is not `instead` (e.g. 'a zip
    archive'); None when it is not text."""
    text = text_start(head)
    if text is None:
        return None
    if text.startswith(_LFS_POINTER):
        return (
            "it is a Git LFS pointer, a text file standing in for the real one: "
            "fetch that with 'git lfs pull'"
        )
    line = next(line.strip() for line in text.splitlines() if line.strip())
    shown = line if len(line) <= _EXCERPT else line[:_EXCERPT] + "..."
    if line[0] in "[{":
        hint = "a JSON tensor file is named .json"
        return f"it is text, JSON perhaps, not {instead}: it starts '{shown}'; {hint}"
    return f"it is text, not {instead}: it starts '{shown}'"


def wrong_start(head: bytes, label: str, suffix: str, instead: str, reason: str) -> InputError:
    """The error for a file of `suffix` that does not start as that format does: `reason`, or what
    the file is when it is text."""
    return InputError(f"{label}: not a valid {suffix} file ({text_reason(head, instead) or reason})")


NPY_INSTEAD = "NumPy's binary format"
NPY_NO_MAGIC = "it does not start with the NumPy header"


def npy_header(file: IO[bytes], label: str, suffix: str) -> tuple[tuple[int, ...], bool, np.dtype[Any], int]:
    """(shape, fortran_order, dtype, data offset) from the .npy header at the file's position."""
    try:
        start = file.tell()
        version = np.lib.format.read_magic(file)
        # A header may name a dtype by a deprecated alias ('a' for bytes): NumPy warns as it parses
        # it, and the dtype is refused (or taken) below, in attncli's own words.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            if version == (1, 0):
                shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(file)
            else:  # 2.0 and 3.0 differ only in how the (ASCII, for real numbers) header is encoded
                shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(file)
        sizes = tuple(int(n) for n in shape)
        end = file.tell()
    # untrusted bytes: NumPy's header parser (a Python literal parser) fails in many ways
    except (ValueError, OSError, EOFError, SyntaxError, TokenError, OverflowError, MemoryError) as error:
        raise InputError(f"{label}: not a valid {suffix} file ({header_reason(error)})") from None
    if any(n < 0 for n in sizes):  # NumPy's parser takes (-1, 4); no array has that shape
        raise InputError(
            f"{label}: not a valid {suffix} file (its header gives shape {sizes}, with a negative size)"
        )
    return sizes, bool(fortran_order), dtype, end - start


def read_into(file: IO[bytes], array: np.ndarray, label: str) -> np.ndarray:
    """Fill a fresh C- or F-contiguous `array` with the bytes at the file's position, a MiB at a
    time (Ctrl-C stops it between reads); an InputError when the file ends first (it was cut short,
    or shrank while it was read). Reading, not mapping, so a file truncated meanwhile is an error
    message, not a SIGBUS."""
    view = array.reshape(-1, order="A").view(np.uint8).data
    position = 0
    while position < len(view):
        count = file.readinto(view[position : position + _CHUNK])  # type: ignore[attr-defined]
        if not count:
            raise InputError(
                f"{label}: the file ends {len(view) - position} bytes before the data its header describes"
            )
        position += count
    return array


_CHUNK = 1 << 20


@dataclass(frozen=True)
class NpzMember:
    """One array of an .npz archive, as its zip entry and its .npy header describe it."""

    name: str  # without .npy
    info: zipfile.ZipInfo
    shape: tuple[int, ...]
    fortran_order: bool
    dtype: np.dtype[Any]
    offset: int  # of the data within the unpacked member

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


#: What reading an archive can raise for bytes that are not a valid one.
ZIP_ERRORS = (
    zipfile.BadZipFile,
    zlib.error,
    OSError,
    EOFError,
    ValueError,
    KeyError,
    NotImplementedError,
    RuntimeError,
)


def open_npz(file: IO[bytes], label: str) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(file)
    except zipfile.BadZipFile:
        file.seek(0)  # NumPy's np.load would take such bytes for a pickle; say what they are
        head = file.read(SNIFF_BYTES)
        raise wrong_start(head, label, ".npz", "a zip archive", "it is not a zip archive") from None
    except ZIP_ERRORS as error:
        raise InputError(f"{label}: not a valid .npz file ({error_reason(error)})") from None


def npz_members(archive: zipfile.ZipFile, label: str) -> list[NpzMember]:
    """The archive's arrays, each checked from its zip entry and .npy header, nothing inflated past
    the header: a member whose header describes more data than its entry's declared size is refused
    here, and zipfile never inflates a member past its declared size, so the sum of `nbytes` bounds
    what reading them all can unpack."""
    members = []
    try:
        for info in archive.infolist():
            name = info.filename.removesuffix(".npy")
            where = f"{label}:{name}"
            if info.flag_bits & 0x1:
                raise InputError(f"{where}: the .npz member is encrypted; attncli reads unencrypted archives")
            with archive.open(info) as member:
                if member.read(len(NPY_MAGIC)) != NPY_MAGIC:
                    raise InputError(f"{where}: not a .npy array inside the .npz archive")
                member.seek(0)
                shape, fortran_order, dtype, offset = npy_header(member, where, ".npz member")
            entry = NpzMember(name, info, shape, fortran_order, dtype, offset)
            if offset + entry.nbytes > info.file_size:
                raise InputError(
                    f"{where}: its header describes {dtype.name} of shape {shape}, {entry.nbytes} bytes "
                    f"of data, but the member holds only {info.file_size - offset} bytes after it"
                )
            members.append(entry)
    except ZIP_ERRORS as error:
        raise InputError(f"{label}: not a valid .npz file ({error_reason(error)})") from None
    return members


def read_npz_member(archive: zipfile.ZipFile, member: NpzMember, label: str) -> np.ndarray:
    """The member's array, inflated straight into its own buffer (no copy of the bytes on the way)."""
    where = f"{label}:{member.name}"
    if member.fortran_order and len(member.shape) > 1:
        array = np.empty(member.shape, member.dtype, order="F")
    else:
        array = np.empty(member.shape, member.dtype)
    try:
        with archive.open(member.info) as stream:
            stream.seek(member.offset)
            read_into(stream, array, where)
    except ZIP_ERRORS as error:
        raise InputError(f"{label}: not a valid .npz file ({error_reason(error)})") from None
    return array


def check_real_dtype(dtype: np.dtype[Any], label: str, suffix: str) -> None:
    if dtype.kind == "O":
        raise InputError(
            f"{label}: holds Python objects (an object array); attncli never unpickles files, "
            "save numeric arrays instead"
        )
    if dtype.kind not in "biuf":
        words = DTYPE_KIND_WORDS.get(dtype.kind, str(dtype))
        raise InputError(f"{label}: holds {words} ({dtype}); tensors must hold real numbers")


SAFETENSORS_INSTEAD = "the 8-byte header length a .safetensors file starts with"


def safetensors_header(
    read: Callable[[int, int], bytes], size: int, label: str
) -> tuple[dict[str, Any], dict[str, Any], int]:
    """(tensor entries, raw __metadata__, where the data starts) of a .safetensors file of `size`
    bytes, `read(offset, length)` giving its bytes; checked as strictly as the safetensors library."""

    def invalid(reason: str) -> InputError:
        return InputError(f"{label}: not a valid .safetensors file ({reason})")

    def invalid_start(reason: str) -> InputError:  # a text file: say so, not what its bytes would mean
        head = read(0, min(size, SNIFF_BYTES))
        return wrong_start(head, label, ".safetensors", SAFETENSORS_INSTEAD, reason)

    if size < 8:
        raise invalid_start(f"only {size} bytes; it starts with an 8-byte header length")
    header_size = int.from_bytes(read(0, 8), "little")
    if header_size > MAX_SAFETENSORS_HEADER:
        raise invalid_start(
            f"its header length, {header_size} bytes, is over the {MAX_SAFETENSORS_HEADER} allowed"
        )
    data_start = 8 + header_size
    if data_start > size:
        raise invalid_start(
            f"its header length is {header_size} bytes, but the file holds only {size - 8} after it"
        )
    raw = read(8, header_size)
    if not raw.startswith(b"{"):
        raise invalid_start("its header is not a JSON object")
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise invalid(f"its header is not valid JSON: {error_reason(error)}") from None
    if not isinstance(header, dict):
        raise invalid("its header is not a JSON object")
    raw_metadata = header.pop("__metadata__", None) or {}
    if not isinstance(raw_metadata, dict) or not all(isinstance(v, str) for v in raw_metadata.values()):
        raise invalid("its __metadata__ must map names to strings")
    return header, raw_metadata, data_start


def safetensors_entry(
    name: str, info: Any, invalid: Callable[[str], InputError]
) -> tuple[str, tuple[int, ...], int, int]:
    """(dtype, shape, begin, end) of one header entry, each checked for its type."""
    if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= info.keys():
        raise invalid(f"tensor '{name}' needs an object with dtype, shape and data_offsets")
    dtype_name, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]

    def is_count(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= 0

    if not isinstance(dtype_name, str):
        raise invalid(f"tensor '{name}' has dtype {json.dumps(dtype_name)}, not a name like F32")
    if not isinstance(shape, list) or not all(is_count(n) for n in shape):
        raise invalid(f"tensor '{name}' has shape {json.dumps(shape)}, not a list of sizes")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(is_count(n) for n in offsets):
        raise invalid(f"tensor '{name}' has data_offsets {json.dumps(offsets)}, not [begin, end]")
    begin, end = offsets
    if end < begin:
        raise invalid(f"tensor '{name}' has data_offsets [{begin}, {end}], which end before they begin")
    return dtype_name, tuple(shape), begin, end


def check_spans(
    spans: list[tuple[int, int, str]], data_size: int, invalid: Callable[[str], InputError]
) -> None:
    """The tensors' bytes must tile the data exactly: no overlap, no gap, nothing after (as safetensors)."""
    position, previous = 0, None
    for begin, end, name in spans:
        if begin < position:
            raise invalid(f"the data of tensors '{previous}' and '{name}' overlap")
        if begin > position:
            raise invalid(f"{begin - position} bytes before tensor '{name}' belong to no tensor")
        position, previous = end, name
    if position != data_size:
        raise invalid(f"the last {data_size - position} bytes of the file belong to no tensor")
