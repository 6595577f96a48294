"""An atheris (libFuzzer) target: arbitrary bytes at attncli's loaders, as `attn compute` reads stdin.

The first byte of each input picks what the rest becomes: raw bytes, or bytes behind the prefix of one
format `sniff_format` recognises (.npy, .npz, .safetensors, JSON), or a well-formed container (a .npy
header, a zip archive) around fuzzed contents, so that every parser is reached. Every input must give
tensors or an `attncli.errors.AttnError`, read from stdin and, for .npy, .npz and .safetensors (which
have readers of their own for files), from a file; any other exception is a crash. JSON also goes to
`json_numbers.parse` (the reader of large JSON arrays) at any size: whatever it accepts must be what
json.loads and np.array make of it.

    .venv/bin/python tests/fuzz/fuzz_loaders.py -max_total_time=180 build/fuzz-corpus

Without atheris installed the script says so and exits 0, and the module still imports: the tests run
`one_input` on `seeds()` (tests/test_bad_input.py).
"""

from __future__ import annotations

import atexit
import contextlib
import io
import json
import os
import shutil
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Iterator

atheris = None
if __name__ == "__main__":  # imported by the tests, it needs no atheris and instruments nothing
    with contextlib.suppress(ImportError):
        import atheris

if atheris is not None:
    with atheris.instrument_imports(include=["attncli", "zipfile", "numpy.lib"]):
        from attncli.errors import AttnError
        from attncli.io import json_numbers, loaders
else:
    from attncli.errors import AttnError
    from attncli.io import json_numbers, loaders

#: Crashes still open, each pinned by a strict xfail test in tests/test_bad_input.py: (exception type
#: name, text in its message). With ATTN_FUZZ_SKIP_KNOWN=1 the target lets them pass, to look for
#: others; add an entry for a crash that is reported but not yet fixed, delete it once it is. Found
#: here and fixed since (test_found_* in tests/test_bad_input.py): AttributeError, zlib.error,
#: NotImplementedError and RuntimeError from .npz members; MemoryError, OverflowError, TokenError and
#: SyntaxError from .npy headers; ValueError from a safetensors shape [0, 2**63].
KNOWN_BUGS: tuple[tuple[str, str], ...] = ()

_DESCRS = (
    "<f8",
    "<f4",
    "<f2",
    ">f8",
    "<i8",
    "|u1",
    "|b1",
    "<c16",
    "|O",
    "<U3",
    "|V8",
    "<M8[s]",
    "[('a', '<f4')]",
)
_COMPRESSIONS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA)
_CHOICES = 8


def is_known_text(name: str, text: str) -> bool:
    """Whether an exception of type `name` with message `text` is one of KNOWN_BUGS."""
    return any(name == known and fragment in text for known, fragment in KNOWN_BUGS)


def is_known_bug(error: BaseException) -> bool:
    return is_known_text(type(error).__name__, str(error))


def npy_header(descr: str, shape: tuple[int, ...], fortran: bool = False) -> bytes:
    """A version 1.0 .npy header; `descr` is written as given (a dtype string or a list's repr)."""
    shown = repr(descr) if not descr.startswith("[") else descr
    dims = ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "")
    text = f"{{'descr': {shown}, 'fortran_order': {fortran}, 'shape': ({dims}), }}"
    text += " " * (-(10 + len(text) + 1) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text.encode("latin-1")


def safetensors_bytes(header: bytes, body: bytes = b"") -> bytes:
    return len(header).to_bytes(8, "little") + header + body


def build(data: bytes) -> bytes:
    """The stdin bytes for one fuzzer input (see the module docstring)."""
    if not data:
        return b""
    choice, body = data[0] % _CHOICES, data[1:]
    if choice == 0:
        return body
    if choice == 1:
        return b"\x93NUMPY" + body
    if choice == 2:
        return b"PK\x03\x04" + body
    if choice == 3:  # 8-byte length, then a header that starts with '{', then the data
        split = body[0] if body else 0
        return safetensors_bytes(b"{" + body[1 : 1 + split], body[1 + split :])
    if choice == 4:
        return b"[" + body
    if choice == 5:
        return b"{" + body
    if choice == 6:  # a well-formed .npy header with fuzzed dtype, shape and data
        if len(body) < 2:
            return npy_header("<f8", (0,))
        descr = _DESCRS[body[0] % len(_DESCRS)]
        rank = body[1] % 4
        dims = body[2 : 2 + 2 * rank]
        shape = tuple(
            int.from_bytes(dims[i : i + 2], "little") ** (1 + (body[1] >> 6)) for i in range(0, len(dims), 2)
        )
        return npy_header(descr, shape, fortran=bool(body[1] & 0x20)) + body[2 + 2 * rank :]
    # choice 7: a real zip archive of fuzzed members (names, contents, compression)
    buffer = io.BytesIO()
    warnings.filterwarnings("ignore", "Duplicate name", UserWarning)
    compression = _COMPRESSIONS[body[0] % len(_COMPRESSIONS)] if body else zipfile.ZIP_STORED
    pieces = body[1:].split(b"\xff")
    with zipfile.ZipFile(buffer, "w", compression=compression) as archive:
        for name, content in zip(pieces[::2], pieces[1::2], strict=False):  # an odd one out is dropped
            member = name.decode("latin-1").replace("\x00", "")[:40] or "x"  # zipfile cuts at NUL
            if not member.endswith(".npy") and name[:1] < b"\x80":
                member += ".npy"
            archive.writestr(member, content)
    return buffer.getvalue()


_FOLDER: list[str] = []  # a temporary folder for the file readers, made on first use


def _as_file(payload: bytes, suffix: str) -> str:
    if not _FOLDER:
        _FOLDER.append(tempfile.mkdtemp(prefix="attn-fuzz-"))
        atexit.register(shutil.rmtree, _FOLDER[0], True)
    path = os.path.join(_FOLDER[0], "input" + suffix)
    with open(path + ".new", "wb") as file:
        file.write(payload)
    os.replace(path + ".new", path)  # a new file: a mapping of the last one is never truncated under it
    return path


def _check(read: Callable[[], loaders.TensorFile], load: Callable[[], object]) -> None:
    try:
        source = read()
        load()
        for tensor in source.tensors.values():
            assert tensor.dtype.kind in "biuf", tensor.dtype
            assert tensor.dtype.isnative, tensor.dtype
    except AttnError:
        pass
    except Exception as error:
        if os.environ.get("ATTN_FUZZ_SKIP_KNOWN") == "1" and is_known_bug(error):
            return
        raise


def one_input(data: bytes) -> None:
    """Feed one input to the loaders as stdin, and as a file where the format has a file reader of
    its own (.npy, .npz, .safetensors); JSON to json_numbers as well. Raise what is not an AttnError."""
    payload = build(data)
    _check(
        lambda: loaders.read_tensors("-", io.BytesIO(payload)),
        lambda: loaders.load_attention_inputs(["-"], io.BytesIO(payload)),
    )
    fmt = loaders.sniff_format(payload)
    if fmt in ("npy", "npz", "safetensors"):
        path = _as_file(payload, "." + fmt)
        _check(lambda: loaders.read_tensors(path), lambda: loaders.load_attention_inputs([path]))
    if fmt == "json":
        _check_json_numbers(payload)


def _check_json_numbers(payload: bytes) -> None:
    """json_numbers accepts only what json.loads reads, as the same arrays (dtype and shape too)."""
    import numpy as np

    previous, json_numbers.MIN_BYTES = json_numbers.MIN_BYTES, 0
    try:
        parsed = json_numbers.parse(payload)
    finally:
        json_numbers.MIN_BYTES = previous
    if parsed is None:
        return
    document = json.loads(payload)  # raises (a crash) if json_numbers accepted what JSON refuses
    arrays = {"tensor": parsed} if isinstance(parsed, np.ndarray) else parsed[0]
    expected = {"tensor": document} if isinstance(parsed, np.ndarray) else document
    for name, array in arrays.items():
        reference = np.array(expected[name])
        assert (array.dtype, array.shape) == (reference.dtype, reference.shape), (array, reference)
        assert np.array_equal(array, reference), (array, reference)


def seeds() -> Iterator[bytes]:
    """One valid and a few broken inputs for each choice, as `build` reads them."""
    import numpy as np

    array = np.arange(12, dtype=np.float32).reshape(3, 4)
    npy = io.BytesIO()
    np.save(npy, array)
    npz = io.BytesIO()
    np.savez(npz, query=array, key=array, value=array)
    header = json.dumps({"x": {"dtype": "F32", "shape": [3, 4], "data_offsets": [0, 48]}}).encode()
    yield bytes([0]) + npy.getvalue()
    yield bytes([0]) + npz.getvalue()
    yield bytes([0]) + safetensors_bytes(header, array.tobytes())
    yield bytes([0]) + b'{"query": [[1, 2]], "key": [[3, 4]], "value": [[5]]}'
    yield bytes([1]) + npy.getvalue()[6:]
    yield bytes([1]) + npy.getvalue()[6:40]
    yield bytes([2]) + npz.getvalue()[4:]
    yield bytes([3, len(header) - 1]) + header[1:] + array.tobytes()
    yield bytes([3, 5]) + b'"a": 1}'
    yield bytes([4]) + b"[1, 2], [3, 4]]"
    yield bytes([4]) + b"1, 2, NaN]"
    yield bytes([4]) + b"[1.5, -2e3], [0, 4]]"
    yield bytes([5]) + b'"q": [[1.5]], "k": [[2]], "v": [[true]]}'
    yield bytes([6, 0, 2, 3, 0, 4, 0]) + array.astype("<f8").tobytes()
    yield bytes([6, 9, 1, 2, 0]) + b"ab" * 6
    yield bytes([7, 1]) + b"query.npy\xff" + npy.getvalue() + b"\xffk\xff" + npy.getvalue()


def main() -> None:
    from fuzzing import fuzz_main  # beside this script, which is run from its folder

    fuzz_main("fuzz_loaders", atheris, seeds, one_input)


if __name__ == "__main__":
    main()
