"""Large JSON arrays read by attncli.io.json_numbers: the same arrays as the general path, or none.

The reference is Python's json module and np.array of what it parsed, the general path's meaning
of a document; json_numbers must give exactly those arrays (values, dtype, shape) or decline
(None), never accept a document json.loads refuses. Its size threshold is set to 0 here, so that
small documents take it too.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from attncli.cli import app
from attncli.io import json_numbers, loaders

VALID = [
    "[1,2,3]",
    "[[1,2],[3,4]]",
    "[[1.5, 2e3],\n [ 3 , -4 ]]",
    "[1e05]",
    "[[[1],[2]],[[3],[4]]]",
    "[0,-0]",
    "[ [ 1 ], [ 2 ] ]",
    "[0.1e-05, 1E+2]",
    "[-0.0, 0.5e-3, 10, 100]",
    "[1,2,3.0]",
    "[[1,2],[3,4.5]]",
    "[[[1,2],[3,4]],[[5,6],[7,8]]]",
    "[[1,2],\n[3,4]\n]",
    "[[1,2] , [3,4]]",
    "[[1,2],[3,4e0]]",
    "[123456789012345678, -123456789012345678]",  # 18 digits: int64, as for the general path
    "[[-999999999999999999, 1], [2, 999999999999999999]]",
    "[" * 64 + "1, 2" + "]" * 64,  # as many axes as NumPy takes
    "[" * 63 + "[1], [2]" + "]" * 63,
]
#: Valid JSON that json_numbers leaves to the general path (which keeps or refuses it as it does).
DECLINED = [
    "[]",
    "[ ]",
    "[[],[]]",
    "[1e400]",
    "[99999999999999999999]",
    "[1.0, 99999999999999999999]",
    "[18446744073709551615]",
    "[9223372036854775807]",  # 19 digits: the general path's exact integers
    "[[1, true]]",
    "[[1, null]]",
    "[NaN]",
    '[["a"]]',
    "[[1,2],[3,true]]",
    "[[true,1],[2,3]]",
    "[[1,2],[false,4],[5,6]]",
    "[[1,2],[NaN,4]]",
    "[[1.5,2],[3,-Infinity]]",
    '[[1,2],["3",4]]',
    '[[[1,2]],[[3,"]"]]]',
    "[" * 65 + "1" + "]" * 65,  # more axes than NumPy's 64
]
INVALID = [
    "[[1,2],[3]]",
    "[[1,2],[3,4,5],[6]]",
    "[1,,2]",
    "[1 2]",
    "[[1,2],3,[4,5]]",
    "[.5]",
    "[1.]",
    "[01]",
    "[-01]",
    "[+1]",
    "[[[1],[2]][[3],[4]]]",
    "[[1],[]]",
    "[[1,2],,[3,4]]",
    "[,[1],[2]]",
    "[[1],[2],]",
    "[1,2]x",
    "[1,2]]",
    "[[1,2]",
    "[[1,2] [3,4]]",
    "[[1,2],[3,4]],",
    "[-]",
    "[1e]",
    "[1-2]",
    "[1,]",
    "[1e+]",
    "[1e5e5]",
    "[1.2.3]",
    "[e5]",
    "[[[1,2],[3,4]],,[[5,6],[7,8]]]",
    "[[[1,2],[3,4]] [[5,6],[7,8]]]",
    "[[[1,2],[3,4]],[[5,6]],[[7,8]]]",
    "[[[1,2],[3,4]],[[5,6],[7,8]],]",
    "[1,[2,3]]",
    "[[2,3],1]",
    "[[2,3] 1]",
    "[[[1,2]],3]",
    "[-,[[1,2]]]",
    '{"a": [1] "b": [2]}',
    # \x0b and \x0c are whitespace to Python's str.strip and regular expressions, not to JSON
    "\x0b[1,2]",
    "[1,2]\x0c",
    "[[1,2],\x0b[3,4]]",
    "[[1,2]\x0c,[3,4]]",
    "[[[1,2]],\x0b[[3,4]]]",
    '{\x0b"a": [1]}',
    '{"a"\x0c: [1]}',
    '{"a":\x0b[1]}',
    '{"a": [1]\x0b}',
    '{"a": [1],\x0b"b": [2]}',
    '{"a": [1], "m":\x0c{"x": 1}}',
    '{"a": [1],}',
    '{"a": [1], "b": [[1,2],[3]]}',
]

#: Piece sizes (bytes of text): one row a piece, a few rows, and the module's own.
PIECES = [1, 12, None]


@pytest.fixture(autouse=True)
def _every_size(monkeypatch):
    monkeypatch.setattr(json_numbers, "MIN_BYTES", 0)


def _reference(text: str) -> np.ndarray | dict[str, np.ndarray]:
    document = json.loads(text)
    if isinstance(document, dict):
        return {name: np.array(value) for name, value in document.items()}
    return np.array(document)


@pytest.mark.parametrize("chunk", PIECES)
@pytest.mark.parametrize("text", VALID)
def test_valid_arrays_read_exactly_as_the_general_path(text, chunk, monkeypatch):
    if chunk is not None:
        monkeypatch.setattr(json_numbers, "_CHUNK_BYTES", chunk)
    got = json_numbers.parse(text.encode())
    expected = _reference(text)
    assert isinstance(got, np.ndarray)
    assert (got.dtype, got.shape) == (expected.dtype, expected.shape)
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("chunk", PIECES)
@pytest.mark.parametrize("text", DECLINED)
def test_what_it_cannot_prove_it_leaves_to_the_general_path(text, chunk, monkeypatch):
    if chunk is not None:
        monkeypatch.setattr(json_numbers, "_CHUNK_BYTES", chunk)
    json.loads(text)  # valid JSON
    assert json_numbers.parse(text.encode()) is None


#: Malformed between two rows: each one also at a boundary between pieces when pieces are small.
INVALID_BETWEEN_ROWS = [
    "[[1,2],,[3,4]]",
    "[[1,2][3,4]]",
    "[[1,2] [3,4]]",
    "[[1,2],5,[3,4]]",
    "[[1,2],5 [3,4]]",
    "[[1,2] 5,[3,4]]",
    "[[1,2],-,[3,4]]",
    "[[1,2]],[[3,4]]",
    "[[1,2],[[3,4]]",
    "[[[1,2]],,[[3,4]]]",
    "[[[1,2]][[3,4]]]",
    "[[[1,2]],[3,4]]]",
    "[[[1,2]] , ,[[3,4]]]",
    "[[[1,2]],],[[3,4]]]",
    "[[[1,2]],[,[3,4]]]",
    "[[[1,2]],1,[[3,4]]]",
    "[[[1,2],[3,4]],[[5,6]],[[7,8]]]",
    "[[[1,2],[3,4]],[[5,6],,[7,8]]]",
    "[[[1,2],[3,4]] ,[[5,6][7,8]]]",
    "[[[[1]],[[2]]],,[[[3]],[[4]]]]",
    "[[[[1]],[[2]]],[[[3]][[4]]]]",
    "[[1,[2,3]],[4,[5,6]]]",
    "[[[1,2]],[3,[4,5]]]",
    "[[[1,2],3],[[4,5],6]]",
    "[[[1,2]],[[3,4]],5]",
    "[[[1,2]] 5,[[3,4]]]",
]


@pytest.mark.parametrize("chunk", PIECES)
@pytest.mark.parametrize("text", INVALID + INVALID_BETWEEN_ROWS)
def test_malformed_or_ragged_text_is_never_accepted(text, chunk, monkeypatch):
    if chunk is not None:
        monkeypatch.setattr(json_numbers, "_CHUNK_BYTES", chunk)
    try:
        _reference(text)
    except ValueError:  # json.JSONDecodeError, or np.array of ragged lists
        pass
    else:
        pytest.fail(f"{text!r} is valid for the reference")
    assert json_numbers.parse(text.encode()) is None


@pytest.mark.parametrize("before", ["", " ", "\n\t \r\n", "\ufeff", "\ufeff\n "])
@pytest.mark.parametrize("after", ["", "\n", " \r\n\t  "])
@pytest.mark.parametrize("document", ["[[1.5, 2], [3, 4]]", '{"q": [[1, 2]], "k": [3]}'])
def test_whitespace_and_a_byte_order_mark_around_the_document(before, after, document):
    data = (before + document + after).encode()
    got = json_numbers.parse(data)
    expected = _reference(data.decode("utf-8-sig"))  # as the general path decodes it
    if isinstance(expected, dict):
        assert isinstance(got, tuple)
        assert list(got[0]) == list(expected)
        for name, array in expected.items():
            assert got[0][name].dtype == array.dtype
            np.testing.assert_array_equal(got[0][name], array)
    else:
        assert isinstance(got, np.ndarray)
        assert got.dtype == expected.dtype
        np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("data", [b"", b" \n", b"\xef\xbb\xbf", b"\xef\xbb\xbf \r\n"])
def test_nothing_but_whitespace_is_left_to_the_general_path(data):
    assert json_numbers.parse(data) is None


def test_an_object_of_arrays_and_metadata():
    text = '{"query": [[1.5, 2]], "meta": {"note": "][ \\" {"}, "key": [[3, 4]], "query": [[5, 6]]}'
    tensors, others = json_numbers.parse(text.encode())
    expected = json.loads(text)
    assert list(tensors) == ["key", "query"]  # a repeated name: the last one, as json.loads
    for name, array in tensors.items():
        np.testing.assert_array_equal(array, np.array(expected[name]))
    assert others == {"meta": expected["meta"]}


def test_random_floats_round_trip_bit_for_bit():
    rng = np.random.default_rng(7)
    values = np.concatenate([rng.standard_normal(5000), rng.standard_normal(5000) * 1e-6, [5e-324, 1.7e308]])
    array = values.reshape(2, 5001)
    text = json.dumps(array.tolist())
    got = json_numbers.parse(text.encode())
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, array)  # Python's repr round-trips; so must the parse


def test_rows_split_into_many_pieces_give_the_same_array(monkeypatch):
    monkeypatch.setattr(json_numbers, "_CHUNK_BYTES", 64)
    array = np.arange(2 * 3 * 50 * 7).reshape(2, 3, 50, 7) / 8
    np.testing.assert_array_equal(json_numbers.parse(json.dumps(array.tolist()).encode()), array)


#: Shapes whose pieces are runs of rows, of lists of rows, or of lists of those, by piece size.
SHAPES = [(5,), (1, 7), (7, 3), (2, 3, 4), (3, 1, 2, 5), (2, 2, 2, 2, 3), (1, 1, 1, 4), (4, 1, 1, 2)]
#: json.dumps's spacing, none, and one number or bracket a line.
LAYOUTS = [{}, {"separators": (",", ":")}, {"indent": 1}, {"indent": "\t", "separators": (" ,", " : ")}]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("chunk", [1, 10, 40, 100, 1000, None])
@pytest.mark.parametrize("layout", range(len(LAYOUTS)))
@pytest.mark.parametrize("floats", [False, True])
def test_pieces_at_every_depth_give_the_general_paths_array(shape, chunk, layout, floats, monkeypatch):
    if chunk is not None:
        monkeypatch.setattr(json_numbers, "_CHUNK_BYTES", chunk)
    array = np.arange(-30, math.prod(shape) - 30).reshape(shape)
    text = json.dumps((array / 4 if floats else array).tolist(), **LAYOUTS[layout])
    got = json_numbers.parse(text.encode())
    expected = _reference(text)
    assert isinstance(got, np.ndarray)
    assert (got.dtype, got.shape) == (expected.dtype, expected.shape)
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("shape", [(600, 3), (30, 20, 3), (2, 3, 100, 3), (1, 600, 1, 3)])
@pytest.mark.parametrize("chunk", [100, 1000, 5000])
def test_each_piece_holds_about_a_pieces_worth_of_text(shape, chunk, monkeypatch):
    """The memory bound: orjson builds the Python objects of one piece at a time, and a piece is
    about _CHUNK_BYTES of text (its rows here are 13 bytes), while all of them parse the whole."""
    import orjson

    monkeypatch.setattr(json_numbers, "_CHUNK_BYTES", chunk)
    pieces: list[int] = []
    loads = orjson.loads

    def counted(text):
        pieces.append(len(text))
        return loads(text)

    monkeypatch.setattr(orjson, "loads", counted)
    array = np.arange(math.prod(shape)).reshape(shape) % 10
    text = json.dumps(array.tolist())
    np.testing.assert_array_equal(json_numbers.parse(text.encode()), array)
    assert max(pieces) <= chunk + 16
    assert sum(pieces) >= len(text) * 0.9
    assert len(pieces) <= 2 * len(text) / chunk + 2


@pytest.mark.parametrize("chunk", [1, 20, None])
@pytest.mark.parametrize("where", [0, 5, 11])
@pytest.mark.parametrize("number", ["12345678901234567890", "-9223372036854775809", "18446744073709551616"])
def test_a_long_integer_among_floats_is_left_to_the_general_path(chunk, where, number, monkeypatch):
    if chunk is not None:
        monkeypatch.setattr(json_numbers, "_CHUNK_BYTES", chunk)
    for values in ([repr(value / 8) for value in range(12)], [str(value) for value in range(12)]):
        values[where] = number
        pairs = zip(values[::2], values[1::2], strict=True)
        text = "[" + ", ".join(f"[{a}, {b}]" for a, b in pairs) + "]"
        json.loads(text)  # valid JSON
        assert json_numbers.parse(text.encode()) is None


@pytest.mark.parametrize("chunk", [1, 20, None])
@pytest.mark.parametrize(
    "number", ["1234567890123456789012.5", "-12345678901234567890e-3", "98765432109876543210E2"]
)
def test_a_float_of_many_digits_among_integers_reads_as_the_general_path(chunk, number, monkeypatch):
    """19 digits or more before a fraction or an exponent make a float, whichever numbers share its
    piece, for json.loads and orjson alike."""
    if chunk is not None:
        monkeypatch.setattr(json_numbers, "_CHUNK_BYTES", chunk)
    text = f"[[1, 2], [{number}, 3], [4, 5.5]]"
    got = json_numbers.parse(text.encode())
    expected = _reference(text)
    assert isinstance(got, np.ndarray)
    assert (got.dtype, got.shape) == (expected.dtype, expected.shape)
    np.testing.assert_array_equal(got, expected)


def test_the_cli_reads_a_large_json_file_as_the_same_tensors_as_npy(tmp_path, monkeypatch):
    monkeypatch.undo()  # the real threshold: a file over it
    rng = np.random.default_rng(2)
    tensors = {
        name: rng.standard_normal((2, 256, 64)).astype(np.float32) for name in ("query", "key", "value")
    }
    path = tmp_path / "qkv.json"
    path.write_text(json.dumps({name: array.tolist() for name, array in tensors.items()}))
    assert path.stat().st_size > json_numbers.MIN_BYTES
    read = loaders.read_tensors(str(path))
    for name, array in tensors.items():
        np.testing.assert_array_equal(read.tensors[name], array.astype(np.float64))
    result = CliRunner().invoke(app, ["compute", str(path), "-q", "-o", str(tmp_path / "r.npz")])
    assert result.exit_code == 0, result.output


def test_errors_for_large_malformed_json_are_the_general_paths(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text("[" + ",".join(["[1.5, 2.5]"] * 200_000) + ",[1]]")
    assert path.stat().st_size > json_numbers.MIN_BYTES
    result = CliRunner().invoke(app, ["inspect", str(path)])
    assert result.exit_code == 2
    assert "ragged" in result.stderr


_TOKENS = [
    "[",
    "]",
    ",",
    " ",
    "\n",
    "0",
    "1",
    "7",
    "-",
    "+",
    ".",
    "e",
    "E",
    "5",
    "00",
    "[1,2]",
    "[[1.5],[2]]",
    "],[",
    "]],[[",
    "], [",
]


@settings(max_examples=600, deadline=None)
@given(st.lists(st.sampled_from(_TOKENS), min_size=1, max_size=40).map("".join), st.sampled_from(PIECES))
def test_fuzzed_text_is_read_as_json_reads_it_or_declined(text, chunk):
    """Texts from JSON's number and array alphabet, read in pieces of every size: whatever
    json_numbers accepts, json.loads and np.array read as the same array."""
    with pytest.MonkeyPatch.context() as patch:  # hypothesis runs examples without new fixtures
        if chunk is not None:
            patch.setattr(json_numbers, "_CHUNK_BYTES", chunk)
        got = json_numbers.parse(text.encode())
    if got is None:
        return
    expected = _reference(text)  # raises if json_numbers accepted what JSON refuses
    assert isinstance(got, np.ndarray)
    assert (got.dtype, got.shape) == (expected.dtype, expected.shape)
    np.testing.assert_array_equal(got, expected)
