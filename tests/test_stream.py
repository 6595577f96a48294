"""Runs in blocks of query rows (attncli.compute.run) against the run of one block (`attend`).

Every block runs the same maths on a slice of the query rows,
so it reproduces bit for bit what `attend` gives on those rows alone: the output, masked rows,
weights written to a file, statistics, top-k and pooled maxima are compared for exact equality
with that. Against `attend` on all rows at once the scores can differ by a rounding step, because
BLAS picks its matrix-product kernel (and so the order it sums the features in) by the number of
rows: there the output and weights are compared within a tolerance, and exactly when one block
holds every row. The pooled means, summed in another order, get a tolerance of 1e-6.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers import read_result, safetensors_dtypes

from attncli.analysis import rows as analysis
from attncli.compute import (
    BLOCK_OVERHEAD,
    MAX_BLOCK_BYTES,
    AttentionResult,
    attend,
    choose_block_rows,
    describe,
    full_weights_bytes,
    fused,
    masked_positions,
    prepare,
    result_arrays,
    run,
)
from attncli.compute.run import open_result_file
from attncli.errors import InputError, UsageError

EXACT: dict[str, Any] = {"rtol": 0, "atol": 0, "equal_nan": True}


def _random(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _bool_mask(*shape: int, seed: int, open_share: float = 0.6) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(*shape, generator=generator) < open_share


def _float_mask(*shape: int, seed: int) -> torch.Tensor:
    mask = _random(*shape, seed=seed).float()
    return mask.masked_fill(_bool_mask(*shape, seed=seed + 1, open_share=0.7).logical_not(), -math.inf)


def _case(name: str) -> dict[str, Any]:
    """prepare() arguments: (query, key, value) and keywords, covering what attend supports."""
    if name == "plain":
        return {"qkv": (_random(5, 4, seed=1), _random(9, 4, seed=2), _random(9, 3, seed=3))}
    if name == "batch_bool_mask_float64":
        # query and key batch axes broadcast; rows with every key masked
        mask = _bool_mask(2, 3, 6, 7, seed=4, open_share=0.35)
        mask[0, 1, 2] = False
        return {
            "qkv": (_random(2, 1, 6, 4, seed=5), _random(3, 7, 4, seed=6), _random(7, 5, seed=7)),
            "mask": mask,
            "dtype": "float64",
        }
    if name == "causal_tall_float_mask":
        # Lq > Lk, a float mask on keys only, with -inf entries
        return {
            "qkv": (_random(9, 4, seed=8), _random(5, 4, seed=9), _random(5, 2, seed=10)),
            "mask": _float_mask(5, seed=11),
            "causal": True,
        }
    if name == "causal_wide_heads_bfloat16":
        return {
            "qkv": (_random(2, 5, 8, seed=12), _random(2, 11, 8, seed=13), _random(2, 11, 6, seed=14)),
            "mask": _bool_mask(1, 1, 5, 11, seed=15),
            "causal": True,
            "heads": 2,
            "dtype": "bfloat16",
        }
    if name == "gqa_causal_mask":
        return {
            "qkv": (_random(2, 4, 6, 4, seed=16), _random(2, 2, 8, 4, seed=17), _random(2, 2, 8, 3, seed=18)),
            "mask": _bool_mask(6, 8, seed=19),
            "causal": True,
        }
    if name == "mask_extra_axes_float16":
        # the mask adds a batch axis the inputs lack; value has its own batch axis
        return {
            "qkv": (_random(6, 4, seed=20), _random(6, 4, seed=21), _random(3, 6, 2, seed=22)),
            "mask": _bool_mask(3, 6, 6, seed=23, open_share=0.5),
            "dtype": "float16",
        }
    raise AssertionError(name)


CASES = (
    "plain",
    "batch_bool_mask_float64",
    "causal_tall_float_mask",
    "causal_wide_heads_bfloat16",
    "gqa_causal_mask",
    "mask_extra_axes_float16",
)


def _problem(name: str) -> Any:
    case = _case(name)
    query, key, value = case.pop("qkv")
    return prepare(query, key, value, **case)


def _expected_picture(
    weights: np.ndarray, blocked: np.ndarray | None, cell: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Max and mean of each cell of each matrix over its open weights, NaN where none is open."""
    *lead, lq, lk = weights.shape
    open_keys = np.ones(weights.shape, bool) if blocked is None else ~np.broadcast_to(blocked, weights.shape)
    rows, cols = math.ceil(lq / cell[0]), math.ceil(lk / cell[1])
    largest = np.full((*lead, rows, cols), np.nan)
    mean = np.full((*lead, rows, cols), np.nan)
    for matrix in np.ndindex(*lead):
        for r in range(rows):
            for c in range(cols):
                part = (*matrix, slice(r * cell[0], (r + 1) * cell[0]), slice(c * cell[1], (c + 1) * cell[1]))
                values = weights[part].astype(np.float64)[open_keys[part]]
                if values.size:
                    largest[(*matrix, r, c)] = values.max()
                    mean[(*matrix, r, c)] = values.mean()
    return largest, mean


def _attend_by_blocks(name: str, block_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights and output of `attend` run on each block of query rows as a problem of its own, the
    causal triangle given as part of the mask and the keys no row of the block sees left out: the
    numbers the blocked path must reproduce."""
    case = _case(name)
    query, key, value = case.pop("qkv")
    mask, causal = case.pop("mask", None), case.pop("causal", False)
    lq, lk = prepare(query, key, value, mask=mask, causal=causal, **case).weights_shape[-2:]
    weights, outputs = [], []
    for start in range(0, lq, block_rows):
        stop = min(start + block_rows, lq)
        rows_mask = mask
        if mask is not None and mask.ndim >= 2 and mask.shape[-2] > 1:
            rows_mask = mask[..., start:stop, :]
        if causal:
            above = torch.ones(stop - start, lk, dtype=torch.bool).triu_(start + 1)
            if rows_mask is None:
                rows_mask = ~above
            elif rows_mask.dtype == torch.bool:
                rows_mask = rows_mask & ~above
            else:
                rows_mask = torch.where(above, -math.inf, rows_mask)
        # Causal rows up to stop - 1 see no key past it: the blocked path leaves those keys out of the
        # products (zero weights), so the reference does too, as a problem of its own.
        seen = min(stop, lk) if causal else lk
        block_key, block_value = key[..., :seen, :], value[..., :seen, :]
        if rows_mask is not None and rows_mask.shape[-1] > 1:
            rows_mask = rows_mask[..., :seen]
        part = attend(prepare(query[..., start:stop, :], block_key, block_value, mask=rows_mask, **case))
        weights.append(torch.nn.functional.pad(part.weights, (0, lk - seen)))
        outputs.append(part.output)
    return torch.cat(weights, dim=-2), torch.cat(outputs, dim=-2)


#: How far the blocked path may be from `attend` on the whole: scores of n rows come from a matrix
#: product with n rows, and BLAS picks its kernel (and so the order it sums features) by size.
CLOSE = {
    torch.float64: {"rtol": 1e-12, "atol": 1e-12},
    torch.float32: {"rtol": 1e-5, "atol": 1e-6},
    torch.float16: {"rtol": 2e-3, "atol": 1e-3},  # one float16 step after rounding
    torch.bfloat16: {"rtol": 1.6e-2, "atol": 1e-2},  # one bfloat16 step after rounding
}


@pytest.mark.parametrize("block_rows", [1, 3, 7, None])
@pytest.mark.parametrize("name", CASES)
def test_stream_equals_attend(name: str, block_rows: int | None, tmp_path: Path) -> None:
    problem = _problem(name)
    whole = attend(problem)
    lq = whole.weights.shape[-2]
    rows = lq if block_rows is None else block_rows
    expected_weights, expected_output = _attend_by_blocks(name, rows)
    npy, safetensors = tmp_path / "w.npy", tmp_path / "w.safetensors"
    picture = (3, 4)
    seen: list[tuple[int, int]] = []
    result = run(
        problem,
        block_rows=rows,
        stats=True,
        top_k=3,
        picture=picture,
        weights_to=npy,
        progress=lambda done, total: seen.append((done, total)),
    )
    again = run(problem, block_rows=rows, weights_to=safetensors)

    # Bit for bit what attend gives on the same rows; within a rounding step of attend on all rows,
    # and bit for bit that too when one block holds every row (the same matrix products).
    assert result.output.dtype == whole.output.dtype
    assert torch.equal(result.output, expected_output)
    assert torch.equal(again.output, expected_output)
    torch.testing.assert_close(result.output, whole.output, **CLOSE[whole.output.dtype])
    if rows >= lq:
        assert torch.equal(expected_weights, whole.weights)
        assert torch.equal(result.output, whole.output)
    if whole.masked_rows is None:
        assert result.masked_rows is None
    else:
        assert result.masked_rows is not None
        assert torch.equal(result.masked_rows, whole.masked_rows)
    assert result.fully_masked_rows() == whole.fully_masked_rows()

    weights = expected_weights.float() if expected_weights.dtype == torch.bfloat16 else expected_weights
    weights_array = weights.numpy()
    np.testing.assert_array_equal(np.load(npy), weights_array, strict=True)  # .npy: bfloat16 as float32
    saved, _ = read_result(safetensors)
    np.testing.assert_array_equal(saved["weights"], weights_array, strict=True)
    # .safetensors: in the dtype computed in (bfloat16 too, which NumPy lacks).
    stored = {torch.bfloat16: "BF16", torch.float16: "F16", torch.float32: "F32", torch.float64: "F64"}
    assert safetensors_dtypes(safetensors) == {"weights": stored[expected_weights.dtype]}
    np.testing.assert_allclose(np.load(npy), result_arrays(whole)["weights"], **CLOSE[whole.weights.dtype])
    assert sorted(os.listdir(tmp_path)) == ["w.npy", "w.safetensors"]  # no temporary files left

    blocked = masked_positions(whole)
    expected_stats = analysis.row_stats(expected_weights, blocked)
    assert result.stats is not None
    # The values picked from the weights, bit for bit; the sums (entropy from the scores, distance in
    # parts outside each block's own band of keys) within a rounding step of the whole-matrix ones.
    for field in ("max_weight", "argmax", "sink"):
        torch.testing.assert_close(getattr(result.stats, field), getattr(expected_stats, field), **EXACT)
    summed = CLOSE[torch.float64 if whole.weights.dtype == torch.float64 else torch.float32]
    for field in ("entropy", "entropy_normalised", "distance"):
        torch.testing.assert_close(
            getattr(result.stats, field), getattr(expected_stats, field), **summed, equal_nan=True
        )
    expected_values, expected_keys = analysis.top_k(expected_weights, 3, blocked)
    assert result.top_k is not None
    torch.testing.assert_close(result.top_k[0], expected_values, **EXACT)
    assert torch.equal(result.top_k[1], expected_keys)
    assert again.stats is None
    assert again.top_k is None
    assert again.picture_max is None

    *_, lk = whole.weights.shape
    cell = (math.ceil(lq / picture[0]), math.ceil(lk / picture[1]))
    assert result.picture_blocks == cell
    largest, mean = _expected_picture(weights_array, blocked, cell)
    assert result.picture_max is not None
    assert result.picture_mean is not None
    assert result.picture_max.dtype == result.picture_mean.dtype == np.float32
    np.testing.assert_array_equal(result.picture_max, largest.astype(np.float32))
    np.testing.assert_allclose(result.picture_mean, mean, rtol=1e-6, atol=1e-7)

    totals = {total for _, total in seen}
    done = [count for count, _ in seen]
    assert totals == {lq}
    assert done == sorted(set(done))
    assert done[-1] == lq
    assert len(done) == math.ceil(lq / rows)


@pytest.mark.parametrize("block_rows", [1, 4, 100])
@pytest.mark.parametrize("name", CASES)
def test_fused_output_equals_attend(name: str, block_rows: int) -> None:
    """The output alone, by scaled_dot_product_attention: attend's within rounding, fully masked
    rows 0 (not NaN), the same masked rows, and no weights, statistics or picture."""
    problem = _problem(name)
    whole = attend(problem)
    seen: list[tuple[int, int]] = []
    result = fused(problem, block_rows=block_rows, progress=lambda done, total: seen.append((done, total)))
    assert result.method == "scaled_dot_product_attention"
    assert result.output.dtype == whole.output.dtype
    assert result.output.shape == whole.output.shape
    torch.testing.assert_close(result.output, whole.output, **CLOSE[whole.output.dtype])
    if whole.masked_rows is None:
        assert result.masked_rows is None
    else:
        assert result.masked_rows is not None
        assert torch.equal(result.masked_rows, whole.masked_rows)
        assert whole.masked_rows.any() or name != "batch_bool_mask_float64"  # the case has some
    assert result.fully_masked_rows() == whole.fully_masked_rows()
    assert result.stats is None
    assert result.top_k is None
    assert result.picture_max is None
    lq = whole.weights.shape[-2]
    assert seen[-1] == (lq, lq)
    assert describe(result) == describe(whole)


def test_fused_output_without_rows_or_keys_falls_back() -> None:
    problem = prepare(torch.zeros(0, 4), torch.zeros(3, 4), torch.zeros(3, 2))
    result = fused(problem, block_rows=2)
    assert result.method == "blocks"
    assert result.output.shape == (0, 2)


def test_describe_matches_core() -> None:
    problem = _problem("gqa_causal_mask")
    streamed = describe(run(problem, block_rows=4))
    assert streamed == describe(attend(problem))


def test_row_stats_row_offset() -> None:
    """Statistics of a block of rows, told where the block starts, are those rows of the whole."""
    weights = torch.softmax(_random(2, 9, 7, seed=30), dim=-1)
    blocked = torch.ones(9, 7, dtype=torch.bool).triu_(1)
    whole = analysis.row_stats(weights, blocked)
    part = analysis.row_stats(weights[:, 4:8], blocked[4:8], row_offset=4)
    for field in ("entropy", "entropy_normalised", "max_weight", "argmax", "sink"):
        torch.testing.assert_close(getattr(part, field), getattr(whole, field)[:, 4:8], **EXACT)
    # The distance is summed in parts around each block's own rows: the same within rounding.
    torch.testing.assert_close(part.distance, whole.distance[:, 4:8], **CLOSE[torch.float64])
    unshifted = analysis.row_stats(weights[:, 4:8], blocked[4:8])
    assert not torch.equal(unshifted.distance, whole.distance[:, 4:8])  # the offset matters


@pytest.mark.parametrize("suffix", [".npy", ".safetensors"])
def test_interrupted_write_leaves_no_file(suffix: str, tmp_path: Path) -> None:
    problem = _problem("plain")
    target = tmp_path / f"weights{suffix}"

    def stop(done: int, total: int) -> None:
        if done >= 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(problem, block_rows=2, weights_to=target, progress=stop)
    assert os.listdir(tmp_path) == []


def test_replacing_a_file_is_atomic(tmp_path: Path) -> None:
    target = tmp_path / "weights.npy"
    np.save(target, np.arange(3))
    problem = _problem("plain")
    with pytest.raises(RuntimeError):
        run(problem, block_rows=1, weights_to=target, progress=_raise_runtime_error)
    np.testing.assert_array_equal(np.load(target), np.arange(3))  # the old file, untouched
    run(problem, block_rows=5, weights_to=target)  # one block: attend's products exactly
    np.testing.assert_array_equal(np.load(target), result_arrays(attend(problem))["weights"])


def _output_array(result: AttentionResult) -> np.ndarray:
    output = result.output
    return (output.float() if output.dtype == torch.bfloat16 else output).numpy()


@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
@pytest.mark.parametrize("name", ["batch_bool_mask_float64", "causal_wide_heads_bfloat16", "gqa_causal_mask"])
def test_result_file_holds_the_blocks_weights_and_what_is_added(
    name: str, suffix: str, tmp_path: Path
) -> None:
    """-o of a blocked computation: the weights as the blocks computed them, the output and
    statistics as given to commit, the metadata; nothing else left in the folder."""
    problem = _problem(name)
    expected_weights, _ = _attend_by_blocks(name, 2)
    target = tmp_path / f"result{suffix}"
    bfloat16 = expected_weights.dtype == torch.bfloat16
    with open_result_file(target, problem) as file:
        result = run(problem, block_rows=2, stats=True, result_file=file)
        arrays = {"output": _output_array(result), **analysis.stats_arrays(result.stats)}
        metadata = {**describe(result), "sources": {"query": "q.npy"}}
        file.commit(arrays, metadata, bfloat16=("output",) if bfloat16 else ())
    assert os.listdir(tmp_path) == [target.name]
    saved, saved_metadata = read_result(target)
    assert set(saved) == {"weights", *arrays}
    expected = expected_weights.float() if bfloat16 else expected_weights
    np.testing.assert_array_equal(saved["weights"], expected.numpy())
    for array_name, array in arrays.items():
        np.testing.assert_array_equal(saved[array_name], array)
        assert saved[array_name].dtype == array.dtype
    if suffix == ".safetensors":  # the weights and output of a bfloat16 run stored as bfloat16
        dtypes = safetensors_dtypes(target)
        narrowed = {name for name, code in dtypes.items() if code == "BF16"}
        assert narrowed == ({"weights", "output"} if bfloat16 else set())
        assert saved_metadata == json.loads(json.dumps(metadata))
    else:  # .npz has no bfloat16: float32, and the metadata says so
        stored = {"stored_dtype": "float32"} if bfloat16 else {}
        assert saved_metadata == json.loads(json.dumps({**metadata, **stored}))


def test_result_file_header_longer_than_its_room_is_written_again(tmp_path: Path) -> None:
    problem = _problem("plain")
    target = tmp_path / "result.safetensors"
    long_text = "x" * 100_000  # far past the room left for the header
    with open_result_file(target, problem) as file:
        result = run(problem, block_rows=2, result_file=file)
        file.commit({"output": result.output.numpy()}, {"note": long_text})
    assert os.listdir(tmp_path) == [target.name]
    saved, metadata = read_result(target)
    assert metadata == {"note": long_text}
    np.testing.assert_array_equal(saved["weights"], _attend_by_blocks("plain", 2)[0].numpy())
    np.testing.assert_array_equal(saved["output"], result.output.numpy())


@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
def test_result_file_interrupted_or_refused_leaves_the_old_file(suffix: str, tmp_path: Path) -> None:
    problem = _problem("plain")
    target = tmp_path / f"result{suffix}"
    target.write_bytes(b"old")

    def stop(done: int, total: int) -> None:
        if done >= 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt), open_result_file(target, problem) as file:
        run(problem, block_rows=2, result_file=file, progress=stop)
    with open_result_file(target, problem) as file:
        run(problem, block_rows=2, result_file=file)
        with pytest.raises(ValueError, match="already"):
            file.commit({"weights": np.zeros(1)}, {})
    assert os.listdir(tmp_path) == [target.name]
    assert target.read_bytes() == b"old"
    with pytest.raises(UsageError, match=r"\.safetensors or \.npz"):
        open_result_file(tmp_path / "result.json", problem)


@pytest.mark.parametrize("name", CASES)
def test_kept_table_holds_the_cells_and_figures_of_the_whole_weights(name: str) -> None:
    """What a table view shows, kept block by block, against the same taken from attend's weights."""
    problem = _problem(name)
    whole = attend(problem)
    weights = result_arrays(whole)["weights"].astype(np.float64)
    *lead, lq, lk = weights.shape
    rows, cols = sorted({0, lq // 2, lq - 1}), sorted({0, 1, lk - 1})
    result = run(problem, block_rows=2, table=(rows, cols))
    table = result.table
    assert table is not None
    expected_weights, _ = _attend_by_blocks(name, 2)
    expected = expected_weights.float() if expected_weights.dtype == torch.bfloat16 else expected_weights
    np.testing.assert_array_equal(table.cells, expected.numpy()[..., rows, :][..., cols])
    np.testing.assert_array_equal(table.row_max, expected.numpy()[..., rows, :].max(axis=-1))
    blocked = masked_positions(whole)
    shut = np.zeros(weights.shape, dtype=bool) if blocked is None else np.broadcast_to(blocked, weights.shape)
    assert table.any_blocked is bool(shut.any())
    if table.blocked is None:
        assert not shut.any()
    else:
        np.testing.assert_array_equal(table.blocked, shut[..., rows, :][..., cols])
    live_rows = ~shut.all(axis=-1)  # (..., Lq)
    tolerance = CLOSE[whole.weights.dtype]
    np.testing.assert_allclose(
        table.maximum, np.where(shut, -np.inf, weights).max(axis=(-2, -1)), **tolerance
    )
    np.testing.assert_allclose(table.minimum, np.where(shut, np.inf, weights).min(axis=(-2, -1)), **tolerance)
    deviation = np.where(live_rows, np.abs(weights.sum(axis=-1) - 1), 0).max(axis=-1)
    np.testing.assert_allclose(table.deviation, deviation, rtol=0, atol=tolerance["atol"] * lk)
    np.testing.assert_array_equal(table.live, live_rows.any(axis=-1))
    assert table.cells.shape == (*lead, len(rows), len(cols))


def test_kept_table_refuses_rows_outside_the_weights() -> None:
    with pytest.raises(ValueError, match="must lie"):
        run(_problem("plain"), block_rows=2, table=([0, 5], [0]))


def _raise_runtime_error(done: int, total: int) -> None:
    raise RuntimeError("stop")


def test_bad_arguments(tmp_path: Path) -> None:
    problem = _problem("plain")
    with pytest.raises(ValueError, match="block_rows"):
        run(problem, block_rows=0)
    with pytest.raises(ValueError, match="top_k"):
        run(problem, block_rows=1, top_k=0)
    with pytest.raises(ValueError, match="picture"):
        run(problem, block_rows=1, picture=(0, 3))
    with pytest.raises(UsageError, match=r"suffix '\.npz'"):
        run(problem, block_rows=1, weights_to=tmp_path / "w.npz")
    with pytest.raises(UsageError, match="does not exist"):
        run(problem, block_rows=1, weights_to=tmp_path / "missing" / "w.npy")


def test_block_sizing() -> None:
    problem = prepare(torch.zeros(2, 3, 1000, 8), torch.zeros(2, 3, 500, 8), torch.zeros(2, 3, 500, 8))
    row_bytes = 2 * 3 * 500 * 4
    assert full_weights_bytes(problem) == 2 * 3 * 1000 * 500 * 4
    assert choose_block_rows(problem, 10 * BLOCK_OVERHEAD * row_bytes) == 10  # the rest: temporaries
    assert choose_block_rows(problem, 1) == 1  # at least one row
    assert choose_block_rows(problem, 1 << 40) == 1000  # at most Lq
    wide = prepare(torch.zeros(100_000, 8), torch.zeros(100_000, 8), torch.zeros(100_000, 8))
    assert choose_block_rows(wide, 1 << 40) == MAX_BLOCK_BYTES // (100_000 * 4)
    half = prepare(torch.zeros(10, 8), torch.zeros(20, 8), torch.zeros(20, 8), dtype="bfloat16")
    assert full_weights_bytes(half) == 10 * 20 * (4 + 2)  # float32 scores and the bfloat16 copy


def test_empty_query() -> None:
    one_row = prepare(torch.zeros(1, 4), torch.zeros(3, 4), torch.zeros(3, 2))
    problem = dataclasses.replace(one_row, query=one_row.query[:0], weights_shape=(0, 3))
    seen: list[tuple[int, int]] = []
    result = run(problem, block_rows=4, stats=True, top_k=2, picture=(2, 2), progress=_append(seen))
    assert result.output.shape == (0, 2)
    assert seen == [(0, 0)]
    assert result.picture_max is not None
    assert result.picture_max.shape == (0, 2)


def _append(seen: list[tuple[int, int]]) -> Any:
    return lambda done, total: seen.append((done, total))


_MEMORY_SCRIPT = textwrap.dedent(
    """
    import json, resource, sys
    import torch
    from attncli.compute import prepare
    from attncli.compute import choose_block_rows, full_weights_bytes, run

    n, d = 8192, 64
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(n, d, generator=g) for _ in range(3))
    problem = prepare(q, k, v)
    warm = prepare(q[:64], k[:64], v[:64])
    run(warm, block_rows=16, stats=True, picture=(40, 80))  # load the kernels first
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    block_rows = choose_block_rows(problem, 64 << 20)
    result = run(problem, block_rows=block_rows, stats=True, picture=(40, 80))
    growth = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024
    reference = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    error = (result.output - reference).abs().max().item()
    print(json.dumps({"growth": growth, "error": error, "full": full_weights_bytes(problem)}))
    """
)


# Not marked slow: its figure is its own subprocess's peak resident size (ru_maxrss), which tests
# running beside it do not change, so it need not hold up the other slow tests (as the capture memory test).
def test_memory_stays_bounded() -> None:
    """8192 positions: a full weights tensor is 256 MiB; the blocked path grows far less."""
    import json

    completed = subprocess.run(
        [sys.executable, "-c", _MEMORY_SCRIPT], capture_output=True, text=True, timeout=120, check=True
    )
    measured = json.loads(completed.stdout.strip().splitlines()[-1])
    assert measured["full"] == 256 << 20
    assert measured["growth"] < 160 << 20, measured
    assert measured["error"] < 1e-5, measured


def test_overflowing_scores_are_refused() -> None:
    """As attend does: finite inputs whose scores overflow float32 are an InputError, not NaN weights."""
    big = torch.full((4, 2), 3e19)
    problem = prepare(big, big, torch.zeros(4, 2))
    if not getattr(problem, "may_overflow", False):
        pytest.skip("this core has no overflow check")
    with pytest.raises(InputError, match="overflow"):
        attend(problem)
    with pytest.raises(InputError, match="overflow"):
        run(problem, block_rows=2)


def test_result_is_frozen() -> None:
    result = run(_problem("plain"), block_rows=2)
    assert isinstance(result, AttentionResult)
    with pytest.raises(AttributeError):
        result.scale = 2.0  # type: ignore[misc]


@pytest.mark.parametrize("name", CASES)
def test_one_block_of_every_row_is_the_whole_run_bit_for_bit(name: str, tmp_path: Path) -> None:
    """`attend` is the run of one block: the same run with the weights sent to a file instead of
    kept gives every tensor, the statistics' entropy included, bit for bit."""
    problem = _problem(name)
    whole = attend(problem, stats=True, top_k=3)
    lq = problem.weights_shape[-2]
    target = tmp_path / "w.npy"
    blocked = run(problem, block_rows=max(lq, 1), stats=True, top_k=3, weights_to=target)
    assert whole.weights is not None
    assert blocked.weights is None
    np.testing.assert_array_equal(np.load(target), result_arrays(whole)["weights"], strict=True)
    assert torch.equal(blocked.output, whole.output)
    assert whole.stats is not None
    assert blocked.stats is not None
    for field in ("entropy", "entropy_normalised", "max_weight", "argmax", "sink", "distance"):
        torch.testing.assert_close(getattr(blocked.stats, field), getattr(whole.stats, field), **EXACT)
    assert whole.top_k is not None
    assert blocked.top_k is not None
    torch.testing.assert_close(blocked.top_k[0], whole.top_k[0], **EXACT)
    assert torch.equal(blocked.top_k[1], whole.top_k[1])


#: How far a run in blocks of any size may be from the float64 computation: the rounding of the
#: products and softmax in the compute dtype, then of the result dtype.
FROM_FLOAT64 = {
    torch.float64: {"rtol": 1e-12, "atol": 1e-12},
    torch.float32: {"rtol": 1e-5, "atol": 2e-6},
    torch.float16: {"rtol": 2e-3, "atol": 1e-3},
    torch.bfloat16: {"rtol": 1.6e-2, "atol": 1e-2},
}


@pytest.mark.parametrize("block_rows", [1, 7, 64])
@pytest.mark.parametrize("name", CASES)
def test_any_block_size_agrees_with_float64_and_the_whole_run(name: str, block_rows: int) -> None:
    """Blocks of 1, 7 and 64 rows: the weights and output within FROM_FLOAT64 of a float64
    computation that shares no code with attncli (tests/reference.py), and the statistics within
    CLOSE of the whole run's (one matrix product per block: BLAS picks its kernel by rows)."""
    from reference import reference_attention

    case = _case(name)
    query, key, value = case["qkv"]
    problem = _problem(name)
    whole = attend(problem, stats=True)
    result = run(problem, block_rows=block_rows, stats=True, keep_weights=True)
    mask = case.get("mask")
    weights64, output64 = reference_attention(
        query.double().numpy(),
        key.double().numpy(),
        value.double().numpy(),
        scale=problem.scale,
        mask=None if mask is None else mask.double().numpy() if mask.is_floating_point() else mask.numpy(),
        causal=case.get("causal", False),
        heads=case.get("heads"),
    )
    assert result.weights is not None
    bound = FROM_FLOAT64[problem.query.dtype]
    np.testing.assert_allclose(result_arrays(result)["weights"], weights64, **bound)
    np.testing.assert_allclose(result_arrays(result)["output"], output64, **bound)
    assert whole.stats is not None
    assert result.stats is not None
    summed = CLOSE[torch.float64 if problem.query.dtype == torch.float64 else torch.float32]
    for field in ("entropy", "entropy_normalised", "max_weight", "sink", "distance"):
        torch.testing.assert_close(
            getattr(result.stats, field), getattr(whole.stats, field), **summed, equal_nan=True
        )
