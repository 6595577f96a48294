"""Large JSON arrays of numbers parsed by NumPy, in about twice their text's size.

A JSON parser builds a Python float (24 bytes) and a list slot (8 bytes) for each number before
NumPy sees it: a 500 MB JSON file of tensors took 8 GB. `parse` reads a document of that shape, a
nested array of numbers or an object of them (plus small values such as "meta"), into arrays a few
hundred KB of text at a time: its brackets give the shape, and orjson parses pieces of whole lists.
Memory is the text, the arrays, and one piece's Python objects.

It accepts only what it can prove is valid JSON of the same meaning, and gives the same arrays as
the general path (`np.array` of the parsed lists: int64 when no number has a fraction or exponent,
float64 otherwise). Anything else (booleans, NaN, strings, ragged or malformed text, integers too
long for 64 bits) makes it return None, and the caller's general parser reads the document and
words the error.
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np

#: Below this size the general parser is as good, and its memory does not matter.
MIN_BYTES = 1 << 20
#: Bytes that a numeric array's text may hold.
_ALLOWED = b"0123456789+-.eE[], \t\n\r"
_WHITESPACE = b" \t\n\r"
#: Between two innermost rows: their ']', the closing and opening of the lists around, one comma.
_BETWEEN_ROWS = re.compile(rb"\][ \t\n\r\]]*,[ \t\n\r\[]*\[")
#: Rows of about this much text are parsed at a time, so that orjson's Python objects for them
#: (about 1.4 times the text) and NumPy's reading of those stay in a core's cache: on a 49 MB file,
#: pieces of 32 KB to 512 KB took 0.7 times as long as pieces of 4 MB, and 1 MB 0.8 times.
_CHUNK_BYTES = 256 << 10
_MAX_AXES = 64
#: An integer of 19 digits or more: the general path keeps those exact and refuses one past 64
#: bits, where orjson would round it to a float (or give uint64). Among integers alone, a run of 19
#: digits says as much (`_long_digit_run`). A float's 19 digits before its '.' or exponent are
#: no integer (both paths read the same float), so that whether a piece is declined does not depend
#: on which other numbers share it.
_LONG_INTEGER = re.compile(rb"(?<![.0-9eE+-])-?[0-9]{19,}(?![.0-9eE])")


def parse(data: bytes) -> tuple[dict[str, np.ndarray], dict[str, Any]] | np.ndarray | None:
    """An array (a top-level JSON array), or (arrays, other values) of a top-level object; None
    when the general parser must read `data`."""
    if len(data) < MIN_BYTES:
        return None
    # Positions in `data`, never a copy of it: stripping or slicing 500 MB costs as much again.
    start = 3 if data.startswith(b"\xef\xbb\xbf") else 0
    end = len(data)
    while start < end and data[start] in _WHITESPACE:  # none, or a newline or so: a few steps
        start += 1
    while end > start and data[end - 1] in _WHITESPACE:
        end -= 1
    if start >= end:
        return None
    if data[start : start + 1] == b"[":
        return numeric_array(data, start, end)
    if data[start : start + 1] == b"{" and data[end - 1 : end] == b"}":
        return _object(data, start, end)
    return None


def numeric_array(text: bytes, start: int, end: int) -> np.ndarray | None:
    """The nested array of numbers that `text[start:end]` (from its '[' to its ']') holds, or None.

    The brackets alone give the shape of the lists of lists; orjson then parses the text a few
    hundred KB at a time, each piece a run of whole lists that are items of one list, as it stands
    in the text (its own brackets checked strictly by orjson), and each piece's array checked by its
    shape. The text between two pieces is checked to be exactly '],[' but for brackets and
    whitespace.
    """
    import orjson

    structure = _structure(text, start, end)
    if structure is None:
        return None
    sizes, starts, ends = structure
    head, tail = text[start : starts[0]], text[ends[-1] + 1 : end]
    if head.translate(None, b"[" + _WHITESPACE) or tail.translate(None, b"]" + _WHITESPACE):
        return None  # a comma or a number outside the rows
    integers = all(text.find(mark, start, end) < 0 for mark in (b".", b"e", b"E"))
    dtype = np.int64 if integers else np.float64
    # A piece is a run of items of one list (never crossing into the next list, whose brackets
    # would not balance), each item `item_rows` rows: the largest items that a piece of about
    # _CHUNK_BYTES of text holds. `lists` counts the whole array as one item of a list of one.
    rows_per_chunk = max(1, int(starts.size * _CHUNK_BYTES // (end - start)))
    lists = (1, *sizes)
    level = len(sizes)  # the items of lists[level] are rows
    item_rows = 1
    # A piece's array has len(lists) - level + 1 axes, which NumPy allows up to 64.
    while level > 0 and item_rows * lists[level] <= rows_per_chunk and len(lists) - level < _MAX_AXES - 1:
        item_rows *= lists[level]
        level -= 1
    # The text from a piece's first row to its last lacks its first item's opening brackets and its
    # last item's closing ones (the gaps between pieces), plus one pair around the run.
    depth = len(lists) - level
    opening, closing = b"[" * depth, b"]" * depth
    list_rows = item_rows * lists[level]
    piece_rows = item_rows * max(1, rows_per_chunk // item_rows)  # past a list's end: to its end
    output: np.ndarray | None = None
    for list_start in range(0, starts.size, list_rows):
        for first in range(list_start, list_start + list_rows, piece_rows):
            last = min(first + piece_rows, list_start + list_rows) - 1
            if first and not _BETWEEN_ROWS.fullmatch(text, ends[first - 1], starts[first] + 1):
                return None  # not one comma between two lists, brackets and whitespace apart
            # The piece's text with its brackets, made in one copy (slicing, then adding the
            # brackets, made three). Its bytes, those between two pieces and those outside them are
            # all checked: each piece's while it is in the cache, not in a pass of their own.
            piece = b"".join((opening, memoryview(text)[starts[first] : ends[last] + 1], closing))
            if piece.translate(None, _ALLOWED):
                return None  # letters (true, NaN, strings) or other characters: not ours
            if integers and _long_digit_run(piece):
                return None
            try:
                # Numbers alone (the bytes were checked above, and no integer is too long for
                # int64): NumPy converts them straight to the dtype, without first looking for the
                # type that holds them all, as np.array of mixed ints and floats would give.
                rows = np.array(orjson.loads(piece), dtype=dtype)
            except (orjson.JSONDecodeError, ValueError):
                return None  # malformed, or ragged rows
            # A number without '.' may be an integer past 64 bits, which orjson rounds to a float:
            # the general path keeps it exact and refuses it. JSON floats of Python and NumPy all
            # hold a '.' (NumPy counts them several times faster than bytes.count); JavaScript
            # writes 1.0 as 1, and then a run of 19 digits is looked for before the slow pattern.
            if (
                not integers
                and np.count_nonzero(np.frombuffer(piece, np.uint8) == ord(".")) != rows.size
                and _long_digit_run(piece)
                and _LONG_INTEGER.search(piece)
            ):
                return None
            items = (last - first + 1) // item_rows
            if rows.shape[:-1] != (items, *lists[level + 1 :]):
                return None  # not the brackets' shape
            if output is None:
                output = np.empty((starts.size, rows.shape[-1]), dtype)
            if rows.shape[-1] != output.shape[1] or rows.shape[-1] == 0:
                return None
            output[first : last + 1] = rows.reshape(-1, rows.shape[-1])
    assert output is not None
    return output.reshape(*sizes, output.shape[1])


def _structure(text: bytes, start: int, end: int) -> tuple[tuple[int, ...], np.ndarray, np.ndarray] | None:
    """The sizes of `text[start:end]`'s lists of lists (all axes but the last), from its brackets
    alone, and where in `text` each innermost list (a row) has its '[' and its ']'; None when the
    brackets are not those of a regular array."""
    marks = np.frombuffer(text, dtype=np.uint8, count=end - start, offset=start)
    # One pass finds every bracket: the skeleton of brackets and the rows' places both come of it.
    # It goes a piece's length at a time, so that its masks stay in the cache (twice as fast).
    found = []
    for block in range(0, marks.size, _CHUNK_BYTES):
        part = marks[block : block + _CHUNK_BYTES]
        bracket = part == ord("[")
        bracket |= part == ord("]")
        found.append(np.flatnonzero(bracket) + block)
    where = np.concatenate(found)
    brackets = marks[where]
    opening = brackets == ord("[")
    depth = np.cumsum(np.where(opening, 1, -1).astype(np.int8), dtype=np.int16)
    if depth.min() < 0 or depth[-1] != 0:
        return None  # unbalanced; the skeleton's comparison below decides the rest
    axes = int(depth.max())
    if axes > _MAX_AXES:
        return None
    lists = np.bincount(depth[opening], minlength=axes + 1)[1:]  # lists at each depth
    sizes = tuple(int(lists[k + 1] // lists[k]) for k in range(axes - 1))
    if brackets.tobytes() != _skeleton(sizes):
        return None
    # In a regular array the rows are the '[' that a ']' follows among the brackets.
    rows = np.flatnonzero(opening[:-1] & ~opening[1:])
    return sizes, where[rows] + start, where[rows + 1] + start


def _long_digit_run(piece: bytes) -> bool:
    """Whether `piece` (a bracket at each end) holds 19 digits in a row. NumPy finds where the
    bytes that are no digit are, ten times as fast as a regular expression's search for the run."""
    digit = np.frombuffer(piece, dtype=np.uint8) - ord("0") < 10  # below '0' wraps round to >= 208
    others = np.flatnonzero(~digit)
    return bool(np.diff(others).max() > 19)  # 19 digits between two others: 20 places apart


def _skeleton(sizes: tuple[int, ...]) -> bytes:
    """The brackets of a regular array whose lists of lists have `sizes`: (2,) -> b'[[][]]'."""
    inner = b"[]"
    for size in reversed(sizes):
        inner = b"[" + inner * size + b"]"
    return inner


# JSON's whitespace is these four: a regular expression's \s also takes \x0b and \x0c.
_KEY = re.compile(rb'[ \t\n\r]*("(?:[^"\\]|\\.)*")[ \t\n\r]*:[ \t\n\r]*', re.DOTALL)
_GAP = re.compile(rb"[ \t\n\r]*(,|\})")
_SCALAR = re.compile(rb'"(?:[^"\\]|\\.)*"|[^,}]*', re.DOTALL)  # a string, or a value up to , or }
_STRUCTURE = re.compile(rb'[\[\]{}"\\]')  # what bracket matching inside an object looks at


def _object(text: bytes, start: int, end: int) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
    """{"name": array, ...}: each array by `numeric_array`, anything else by Python's json."""
    arrays: dict[str, np.ndarray] = {}
    others: dict[str, Any] = {}
    position = start + 1
    while True:
        key = _KEY.match(text, position)
        if key is None:
            return None
        try:
            name = json.loads(key.group(1))
        except ValueError:
            return None
        value_start = key.end()
        if text[value_start : value_start + 1] == b"[":
            value_end = _array_end(text, value_start, end)
        else:
            value_end = _value_end(text, value_start, end)
        if value_end is None:
            return None
        arrays.pop(name, None)
        others.pop(name, None)  # a repeated name: the last one counts, as for json.loads
        if text[value_start : value_start + 1] == b"[":
            array = numeric_array(text, value_start, value_end)
            if array is None:
                return None
            arrays[name] = array
        else:
            try:
                others[name] = json.loads(text[value_start:value_end])
            except (ValueError, RecursionError):
                return None
        gap = _GAP.match(text, value_end)
        if gap is None:
            return None
        if gap.group(1) == b"}":
            return (arrays, others) if gap.end() == end else None
        position = gap.end()


def _array_end(text: bytes, start: int, end: int) -> int | None:
    """Just past the ']' that ends the array of numbers at `start`: the last ']' before the next
    '"' (the next name: an array of numbers holds no string), found by bytes.find at C speed. An
    array that is not one of numbers gives a span that `numeric_array` refuses."""
    quote = text.find(b'"', start, end)
    closing = text.rfind(b"]", start, end if quote < 0 else quote)
    return None if closing < 0 else closing + 1


def _value_end(text: bytes, start: int, end: int) -> int | None:
    """Where the JSON value at `start` ends: its matching brace for an object (strings taken into
    account), the next ',' or '}' otherwise."""
    opener = text[start : start + 1]
    if opener not in (b"[", b"{"):
        match = _SCALAR.match(text, start)
        return None if match is None else match.end()
    depth = 0
    inside_string = False
    escaped_at = -1
    for mark in _STRUCTURE.finditer(text, start, end):
        where = mark.start()
        if where == escaped_at:
            continue
        char = mark.group()
        if inside_string:
            if char == b"\\":
                escaped_at = where + 1
            elif char == b'"':
                inside_string = False
            continue
        if char == b'"':
            inside_string = True
        elif char in (b"[", b"{"):
            depth += 1
        else:
            depth -= 1
            if depth == 0:
                return where + 1
    return None
