"""Statistics of attention weights (attncli.analysis).

Expected values come from float64 NumPy computations in this file, one query row at a time, over
weights from the NumPy reference in tests/reference.py; which keys are masked is built here from
the mask and the causal triangle. Nothing expected is taken from attncli.analysis.rows itself.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference import reference_attention

from attncli.analysis import rows as analysis
from attncli.analysis.rows import (
    STAT_NAMES,
    RowStats,
    amax_non_negative,
    matrix_means,
    row_stats,
    stats_arrays,
    top_k,
)
from attncli.compute import attention, blocked_keys, masked_positions, prepare
from attncli.compute.blocks import blocks

PROPERTY = settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
FLOAT_STATS = ("entropy", "entropy_normalised", "max_weight", "sink", "distance")
DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
F64 = {"rtol": 1e-12, "atol": 1e-12}
F32 = {"rtol": 1e-5, "atol": 1e-5}  # float32 sums over at most a few hundred exact weights


def _np(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().cpu().double().numpy()


def _tol(dtype: torch.dtype) -> dict[str, float]:
    return F64 if dtype == torch.float64 else F32


# ---------------------------------------------------------------------------------------------------
# the expected values: NumPy, float64, one row at a time


def _expected_stats(
    weights: np.ndarray, blocked: np.ndarray | None, row_offset: int = 0
) -> dict[str, np.ndarray]:
    """Each statistic by its definition, over the open (unmasked) keys of each row; row i of each
    matrix is query position i + row_offset."""
    weights = np.asarray(weights, dtype=np.float64)
    closed = (
        np.zeros(weights.shape, dtype=bool) if blocked is None else np.broadcast_to(blocked, weights.shape)
    )
    expected = {name: np.full(weights.shape[:-1], np.nan) for name in FLOAT_STATS}
    expected["argmax"] = np.full(weights.shape[:-1], -1, dtype=np.int64)
    for row in np.ndindex(weights.shape[:-1]):
        query = row[-1] + row_offset
        keys = np.flatnonzero(~closed[row])
        if keys.size == 0:
            continue
        p = weights[row][keys]
        positive = p[p > 0]
        entropy = -np.sum(positive * np.log(positive))
        expected["entropy"][row] = entropy
        if keys.size >= 2:
            expected["entropy_normalised"][row] = entropy / np.log(keys.size)
        expected["max_weight"][row] = p.max()
        expected["argmax"][row] = keys[np.argmax(p)]  # NumPy's argmax: the first maximum
        if keys[0] == 0:
            expected["sink"][row] = weights[row][0]
        expected["distance"][row] = np.sum(p * np.abs(query - keys))
    return expected


def _expected_top_k(weights: np.ndarray, blocked: np.ndarray | None, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Open keys by weight, largest first; a stable argsort keeps the lower key first on ties."""
    weights = np.asarray(weights, dtype=np.float64)
    closed = (
        np.zeros(weights.shape, dtype=bool) if blocked is None else np.broadcast_to(blocked, weights.shape)
    )
    kept = min(k, weights.shape[-1])
    values = np.full((*weights.shape[:-1], kept), np.nan)
    indices = np.full((*weights.shape[:-1], kept), -1, dtype=np.int64)
    for row in np.ndindex(weights.shape[:-1]):
        keys = np.flatnonzero(~closed[row])
        order = keys[np.argsort(-weights[row][keys], kind="stable")][:kept]
        values[row][: order.size] = weights[row][order]
        indices[row][: order.size] = order
    return values, indices


def _nanmean(values: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "Mean of empty slice": NaN is what we expect
        return np.nanmean(values, axis=-1)


def _check_stats(stats: RowStats, expected: dict[str, np.ndarray], dtype: torch.dtype) -> None:
    compute_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    for name in FLOAT_STATS:
        got = getattr(stats, name)
        assert got.dtype == compute_dtype, name
        assert tuple(got.shape) == expected[name].shape, name
        got_np = _np(got)
        np.testing.assert_array_equal(np.isnan(got_np), np.isnan(expected[name]), err_msg=f"NaN in {name}")
        np.testing.assert_allclose(got_np, expected[name], **_tol(dtype), err_msg=name)
    assert stats.argmax.dtype == torch.int64
    np.testing.assert_array_equal(stats.argmax.cpu().numpy(), expected["argmax"])


def _check_top_k(
    got: tuple[torch.Tensor, torch.Tensor], expected: tuple[np.ndarray, np.ndarray], dtype
) -> None:
    values, indices = got
    assert values.dtype == dtype
    assert indices.dtype == torch.int64
    assert tuple(values.shape) == tuple(indices.shape) == expected[0].shape
    np.testing.assert_array_equal(indices.cpu().numpy(), expected[1])
    np.testing.assert_array_equal(np.isnan(_np(values)), expected[1] == -1)
    np.testing.assert_array_equal(_np(values), expected[0])  # the weights themselves: exact


# ---------------------------------------------------------------------------------------------------
# random cases


@st.composite
def _sub_shape(draw, full: tuple[int, ...]) -> tuple[int, ...]:
    """A shape that broadcasts to `full`: leading axes may be dropped, others set to 1."""
    drop = draw(st.integers(0, len(full)))
    return tuple(draw(st.sampled_from([n, 1])) for n in full[drop:])


@st.composite
def weight_cases(draw) -> dict:
    """Weights (float64 NumPy) and where keys are masked (bool, True = masked, broadcastable).

    Weights are the reference's softmax, or small integers normalised per row, which makes ties.
    Masks cover some or all keys of a row, key 0 of some rows, or whole rows.
    """
    n_batch = draw(st.integers(0, 2))
    batch = tuple(draw(st.lists(st.integers(1, 3), min_size=n_batch, max_size=n_batch)))
    lq, lk = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    causal = draw(st.booleans())
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))

    allowed = np.ones((lq, lk), dtype=bool)  # True = may attend, as attention's bool masks
    if causal:
        allowed = np.tril(allowed)
    mask = None
    mask_kind = draw(st.sampled_from([None, "rows", "keys"]))
    if mask_kind == "rows":
        mask = rng.random((*draw(_sub_shape(batch)), lq, lk)) < draw(st.sampled_from([0.3, 0.7, 0.95]))
        if draw(st.booleans()):
            mask[..., rng.integers(lq), :] = False  # a row with every key masked
        if draw(st.booleans()):
            mask[..., rng.integers(lq), 0] = False  # a row that cannot see key 0
    elif mask_kind == "keys":  # key padding: one row of the mask for every query
        mask = rng.random(draw(_sub_shape((*batch, 1, lk)))) < 0.6
    if mask is not None:
        allowed = allowed & mask
    blocked = ~allowed

    if draw(st.booleans()):
        scale = draw(st.sampled_from([0.3, 1.0, 4.0]))  # flat to sharp
        query = rng.standard_normal((*batch, lq, 4)) * scale
        key = rng.standard_normal((*batch, lk, 4))
        value = rng.standard_normal((*batch, lk, 2))
        weights, _ = reference_attention(query, key, value, mask=mask, causal=causal)
    else:
        weights = rng.integers(1, 4, size=np.broadcast_shapes((*batch, lq, lk), blocked.shape)).astype(float)
        weights[np.broadcast_to(blocked, weights.shape)] = 0.0
        totals = weights.sum(axis=-1, keepdims=True)
        weights = np.divide(weights, totals, out=np.zeros_like(weights), where=totals > 0)
    return {"weights": weights, "blocked": blocked, "masked": mask is not None or causal}


@PROPERTY
@given(case=weight_cases(), dtype=st.sampled_from(DTYPES), as_tensor=st.booleans())
def test_row_stats_and_means_match_numpy(case, dtype, as_tensor):
    weights = torch.from_numpy(case["weights"]).to(dtype)
    held = _np(weights)  # the weights as the dtype holds them: what the statistics are of
    blocked = case["blocked"] if case["masked"] else None
    given_blocked = torch.from_numpy(blocked) if as_tensor and blocked is not None else blocked

    stats = row_stats(weights, given_blocked)
    expected = _expected_stats(held, blocked)
    _check_stats(stats, expected, dtype)
    # A fully masked row is NaN (argmax -1) in every statistic.
    dead = ~np.any(~np.broadcast_to(blocked, held.shape), axis=-1) if blocked is not None else None
    if dead is not None:
        for name in FLOAT_STATS:
            assert np.isnan(_np(getattr(stats, name))[dead]).all()
        assert (stats.argmax.numpy()[dead] == -1).all()

    means = matrix_means(stats)
    assert list(means) == ["entropy", "entropy_normalised", "max_weight", "sink", "distance"]
    for name, mean in means.items():
        expected_mean = _nanmean(expected[name])
        assert tuple(mean.shape) == held.shape[:-2]
        np.testing.assert_array_equal(np.isnan(_np(mean)), np.isnan(expected_mean), err_msg=name)
        np.testing.assert_allclose(_np(mean), expected_mean, **_tol(dtype), err_msg=name)


@PROPERTY
@given(case=weight_cases(), dtype=st.sampled_from(DTYPES))
def test_weights_already_zero_where_blocked_skip_the_masking(case, dtype):
    """Weights from a softmax are 0 at every masked key: told so, row_stats gives the same numbers."""
    weights_np = case["weights"]
    blocked = case["blocked"] if case["masked"] else None
    if blocked is not None:
        weights_np = np.where(np.broadcast_to(blocked, weights_np.shape), 0.0, weights_np)
    weights = torch.from_numpy(weights_np).to(dtype)
    stats = row_stats(weights, blocked, zero_where_blocked=True)
    _check_stats(stats, _expected_stats(_np(weights), blocked), dtype)


def test_a_mask_broadcast_along_the_keys_counts_every_key():
    """blocked (Lq, 1) stretched over the keys: a row is all open or all masked."""
    rng = np.random.default_rng(13)
    weights_np, _ = reference_attention(*(rng.standard_normal((2, 6, 4)) for _ in range(3)))
    rows = np.array([False, True, False, False, True, False])
    for blocked in (np.broadcast_to(rows[:, None], (6, 6)), torch.from_numpy(rows[:, None]).expand(6, 6)):
        held = np.where(np.broadcast_to(np.asarray(blocked), weights_np.shape), 0.0, weights_np)
        for zero in (False, True):
            stats = row_stats(torch.from_numpy(held), blocked, zero_where_blocked=zero)
            _check_stats(stats, _expected_stats(held, np.asarray(blocked)), torch.float64)


@PROPERTY
@given(case=weight_cases(), dtype=st.sampled_from(DTYPES), k=st.integers(1, 12))
def test_top_k_matches_numpy_argsort(case, dtype, k):
    weights = torch.from_numpy(case["weights"]).to(dtype)
    held = _np(weights)
    blocked = case["blocked"] if case["masked"] else None
    got = top_k(weights, k, blocked)
    _check_top_k(got, _expected_top_k(held, blocked, k), dtype)
    assert got[0].shape[-1] == min(k, held.shape[-1])  # k past the number of keys is cut to it


# ---------------------------------------------------------------------------------------------------
# ties, chosen by hand


def test_ties_go_to_the_lower_key():
    weights = torch.tensor(
        [
            [0.25, 0.25, 0.25, 0.25],
            [0.1, 0.4, 0.1, 0.4],
            [0.4, 0.1, 0.4, 0.1],  # key 0 masked below: the tie at 0.4 goes to key 2
            [0.0, 0.5, 0.0, 0.5],
        ]
    )
    blocked = np.zeros((4, 4), dtype=bool)
    blocked[2, 0] = True
    stats = row_stats(weights, blocked)
    assert stats.argmax.tolist() == [0, 1, 2, 1]
    values, indices = top_k(weights, 3, blocked)
    assert indices.tolist() == [[0, 1, 2], [1, 3, 0], [2, 1, 3], [1, 3, 0]]
    expected_values = [[0.25] * 3, [0.4, 0.4, 0.1], [0.4, 0.1, 0.1], [0.5, 0.5, 0.0]]
    np.testing.assert_allclose(values.numpy(), expected_values, rtol=1e-7)
    _check_stats(stats, _expected_stats(weights.double().numpy(), blocked), torch.float32)
    _check_top_k((values, indices), _expected_top_k(weights.double().numpy(), blocked, 3), torch.float32)


def test_ties_in_long_rows():
    # Long rows of few distinct values: an unstable sort would scramble the keys of equal weight.
    rng = np.random.default_rng(3)
    weights_np = rng.integers(1, 4, size=(3, 2100)).astype(np.float64)
    weights_np /= weights_np.sum(axis=-1, keepdims=True)
    blocked = rng.random((3, 2100)) < 0.3
    weights = torch.from_numpy(weights_np)
    _check_top_k(top_k(weights, 1500, blocked), _expected_top_k(weights_np, blocked, 1500), torch.float64)
    _check_stats(row_stats(weights, blocked), _expected_stats(weights_np, blocked), torch.float64)


@pytest.mark.parametrize("k", [1, 3, 7, 40])
@pytest.mark.parametrize("distinct", [2, 5, 1000])
def test_top_k_of_long_rows_keeps_ties_in_key_order(k, distinct):
    """Rows long enough that the keys are not all sorted (k-th value by topk, then ties): few
    distinct values (ties everywhere), rows with fewer open keys than k, a row with none."""
    rng = np.random.default_rng(k * 1000 + distinct)
    weights_np = rng.integers(1, distinct + 1, size=(2, 5, 700)).astype(np.float64)
    weights_np /= weights_np.sum(axis=-1, keepdims=True)
    blocked = rng.random((2, 5, 700)) < 0.3
    blocked[0, 1] = True  # every key masked
    blocked[0, 2, 3:] = True  # three open keys
    blocked[1, 0, :-2] = True  # two open keys, at the end
    weights_np[blocked] = 0.0
    for dtype in (torch.float64, torch.float32):
        weights = torch.from_numpy(weights_np).to(dtype)
        expected = _expected_top_k(_np(weights), blocked, k)
        _check_top_k(top_k(weights, k, blocked), expected, dtype)
        unmasked = _expected_top_k(_np(weights), None, k)
        _check_top_k(top_k(weights, k), unmasked, dtype)


@PROPERTY
@given(
    lq=st.integers(1, 5),
    lk=st.integers(200, 700),
    heads=st.integers(1, 3),
    row_offset=st.sampled_from([0, 3, 150, 900]),
    elements=st.sampled_from([1, 700, 2000, 1 << 22]),
    masked=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_long_rows_match_numpy(lq, lk, heads, row_offset, elements, masked, seed):
    """Rows long enough for the chunked search of the largest weight (ties across and at the ends of
    chunks, a ragged last chunk) and for the distance summed in parts around each block's queries,
    with blocks of one row, of rows across matrices and of everything."""
    rng = np.random.default_rng(seed)
    weights_np = rng.integers(1, 6, size=(heads, lq, lk)).astype(np.float64)  # few values: many ties
    weights_np[..., rng.integers(lk)] = 9.0  # one largest in the middle, and maybe one in the tail
    weights_np[..., lk - 1] = rng.choice([1.0, 9.0])
    blocked = rng.random((lq, lk)) < 0.3 if masked else None
    if blocked is not None:
        blocked[0] = True  # a row with no open key
        weights_np[..., blocked] = rng.choice([0.0, 20.0])  # masked weights: 0, or larger than any open
    totals = weights_np.sum(axis=-1, keepdims=True)
    weights_np = np.divide(weights_np, totals, out=np.zeros_like(weights_np), where=totals > 0)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(analysis, "_BLOCK_ELEMENTS", elements)
        stats = row_stats(torch.from_numpy(weights_np), blocked, row_offset=row_offset)
    _check_stats(stats, _expected_stats(weights_np, blocked, row_offset), torch.float64)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case", ["plain", "causal", "mask", "causal+mask"])
def test_entropy_from_shifted_scores_matches_numpy(dtype, case):
    """With the scores that gave the weights, the entropy comes from them, not from log(weights)."""
    rng = np.random.default_rng(12)
    query, key, value = (
        torch.from_numpy(rng.standard_normal((2, 6, 300, 8)) * 3).to(dtype) for _ in range(3)
    )
    causal = "causal" in case
    mask = None
    if "mask" in case:
        mask = torch.from_numpy(rng.random((2, 1, 300, 300)) < 0.7)
        mask[0, 0, 5] = False  # a row with every key masked
    problem = prepare(query, key, value, scale=0.35, mask=mask, causal=causal, dtype=dtype)
    (block,) = blocks(problem, 300, keep_scores=True)  # one block of every row
    weights, scores = block.weights, block.scores
    assert scores is not None
    blocked = blocked_keys(mask, causal, 300, 300, device=torch.device("cpu"))
    blocked_np = None if blocked is None else blocked.numpy()
    stats = row_stats(weights, blocked, shifted_scores=scores)
    _check_stats(stats, _expected_stats(_np(weights), blocked_np), dtype)
    plain = row_stats(weights, blocked)
    torch.testing.assert_close(stats.entropy, plain.entropy, **_tol(dtype), equal_nan=True)
    with pytest.raises(ValueError, match="shifted_scores"):
        row_stats(weights, blocked, shifted_scores=scores[..., 1:])
    # The product made in the scores' own memory: the same statistics, the scores used up.
    products = weights * scores
    in_place = row_stats(weights, blocked, shifted_scores=scores, overwrite_scores=True)
    for name in ("entropy", "entropy_normalised", "max_weight", "argmax", "sink", "distance"):
        torch.testing.assert_close(getattr(in_place, name), getattr(stats, name), equal_nan=True)
    assert torch.equal(scores, products)


def test_a_masked_key_is_never_the_argmax():
    # Open weights all 0 (underflowed, say): the largest is 0, at the first open key, not at masked key 0.
    weights = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    blocked = torch.tensor([[True, False, False], [True, True, False]])
    for zero in (False, True):  # the weights are 0 at the masked keys: both ways must agree
        stats = row_stats(weights, blocked, zero_where_blocked=zero)
        assert stats.argmax.tolist() == [1, 2]
        assert stats.max_weight.tolist() == [0.0, 1.0]
    assert top_k(weights, 3, blocked)[1].tolist() == [[1, 2, -1], [2, -1, -1]]


def test_ties_made_by_rounding_to_half_precision():
    # Distinct in float64, equal once rounded to bfloat16 (8 bits of mantissa).
    weights = torch.tensor([[0.3000, 0.3001, 0.2999, 0.1000]], dtype=torch.float64).to(torch.bfloat16)
    held = _np(weights)
    assert held[0, 0] == held[0, 1] == held[0, 2]
    assert row_stats(weights).argmax.tolist() == [0]
    assert top_k(weights, 4)[1].tolist() == [[0, 1, 2, 3]]


# ---------------------------------------------------------------------------------------------------
# with attncli.compute


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_on_causal_attention_sink_is_key_0_and_distance_looks_back(dtype):
    rng = np.random.default_rng(7)
    query = rng.standard_normal((2, 3, 6, 4))
    key = rng.standard_normal((2, 3, 8, 4))
    value = rng.standard_normal((2, 3, 8, 5))
    result = attention(query, key, value, causal=True, dtype=dtype)
    stats = row_stats(result.weights, masked_positions(result))
    ref, _ = reference_attention(query, key, value, causal=True)
    tol = F64 if dtype == "float64" else F32

    # Top-left causal: every query sees key 0, so the sink is that weight itself.
    assert torch.equal(stats.sink, result.weights[..., 0].to(stats.sink.dtype))
    np.testing.assert_allclose(_np(stats.sink), ref[..., 0], **tol)
    # Query i sees keys j <= i only: distance = sum_j w_ij (i - j).
    looks_back = np.tril(np.subtract.outer(np.arange(6), np.arange(8)))  # (Lq, Lk): i - j, 0 above
    np.testing.assert_allclose(_np(stats.distance), (ref * looks_back).sum(axis=-1), **tol)
    # Query 0 sees key 0 alone: all its weight, nothing to normalise, no distance.
    np.testing.assert_allclose(_np(stats.max_weight[..., 0]), 1.0, **tol)
    assert (stats.argmax[..., 0] == 0).all()
    np.testing.assert_allclose(_np(stats.entropy[..., 0]), 0.0, atol=1e-6)
    assert not np.signbit(_np(stats.entropy)).any()  # +0, never -0, for a row with one key
    np.testing.assert_allclose(_np(stats.distance[..., 0]), 0.0, atol=1e-6)
    assert np.isnan(_np(stats.entropy_normalised[..., 0])).all()
    # Query i has i + 1 open keys.
    open_keys = np.arange(1, 7)
    normalised = -(ref * np.log(np.where(ref > 0, ref, 1))).sum(axis=-1) / np.log(np.maximum(open_keys, 2))
    np.testing.assert_allclose(_np(stats.entropy_normalised[..., 1:]), normalised[..., 1:], **tol)


def test_on_causal_attention_with_a_mask():
    rng = np.random.default_rng(8)
    query, key, value = (rng.standard_normal((5, 3)) for _ in range(3))
    mask = np.ones((5, 5), dtype=bool)
    mask[2, 0] = False  # query 2 cannot see key 0: no sink
    mask[4, :] = False  # query 4 sees nothing
    result = attention(query, key, value, mask=mask, causal=True, dtype="float64")
    blocked = masked_positions(result)
    stats = row_stats(result.weights, blocked)
    ref, _ = reference_attention(query, key, value, mask=mask, causal=True)
    expected = _expected_stats(ref, ~(np.tril(np.ones((5, 5), dtype=bool)) & mask))
    _check_stats(stats, expected, torch.float64)
    assert np.isnan(_np(stats.sink)).tolist() == [False, False, True, False, True]
    assert stats.argmax[4].item() == -1
    # Query 1 has two open keys; query 2 has keys 1 and 2.
    assert not np.isnan(_np(stats.entropy_normalised[1:4])).any()
    np.testing.assert_allclose(_np(stats.distance[2]), ref[2, 1] * 1, **F64)
    values, indices = top_k(result.weights, 5, blocked)
    assert indices[2].tolist()[2:] == [-1, -1, -1]
    assert indices[4].tolist() == [-1] * 5
    assert np.isnan(_np(values[4])).all()


# ---------------------------------------------------------------------------------------------------
# dtypes, blocks, layouts, copies


@pytest.mark.parametrize("dtype", DTYPES)
def test_dtypes_of_the_results(dtype):
    rng = np.random.default_rng(9)
    weights_np, _ = reference_attention(*(rng.standard_normal((2, 4, 3)) for _ in range(3)), causal=True)
    weights = torch.from_numpy(weights_np).to(dtype)
    stats = row_stats(weights, np.triu(np.ones((4, 4), dtype=bool), 1))
    wide = torch.float64 if dtype == torch.float64 else torch.float32
    assert {getattr(stats, name).dtype for name in FLOAT_STATS} == {wide}
    assert {mean.dtype for mean in matrix_means(stats).values()} == {wide}
    values, indices = top_k(weights, 2)
    assert values.dtype == dtype
    assert indices.dtype == torch.int64
    _check_stats(stats, _expected_stats(_np(weights), np.triu(np.ones((4, 4), dtype=bool), 1)), dtype)


def test_blocks_of_a_few_rows_give_the_same_numbers(monkeypatch):
    rng = np.random.default_rng(10)
    weights_np, _ = reference_attention(
        rng.standard_normal((2, 3, 7, 4)),
        rng.standard_normal((2, 3, 6, 4)),
        rng.standard_normal((2, 3, 6, 1)),
    )
    blocked = rng.random((2, 1, 7, 6)) < 0.4  # broadcast over heads
    blocked[1, 0, 3] = True
    weights = torch.from_numpy(weights_np)
    expected = _expected_stats(weights_np, blocked)
    expected_top = _expected_top_k(weights_np, blocked, 4)
    for elements in (1, 6, 13, 100):  # one row, one row, two rows, rows across matrices
        monkeypatch.setattr(analysis, "_BLOCK_ELEMENTS", elements)
        _check_stats(row_stats(weights, blocked), expected, torch.float64)
        _check_top_k(top_k(weights, 4, blocked), expected_top, torch.float64)


def test_non_contiguous_weights_and_broadcast_or_reversed_numpy_masks():
    rng = np.random.default_rng(11)
    weights_np, _ = reference_attention(*(rng.standard_normal((3, 2, 5, 4)) for _ in range(3)))
    weights = torch.from_numpy(weights_np).transpose(0, 1)  # (2, 3, 5, 5), not contiguous
    assert not weights.is_contiguous()
    held = weights_np.transpose(1, 0, 2, 3)
    key_padding = np.array([False, False, True, False, True])
    masks = {
        "broadcast view": np.broadcast_to(key_padding, (2, 3, 5, 5)),  # read-only, strides 0
        "reversed": np.ascontiguousarray(np.tile(key_padding[::-1], (5, 1)))[:, ::-1],  # negative stride
    }
    for blocked in masks.values():
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no "non-writable NumPy array" warning from torch
            stats = row_stats(weights, blocked)
            got_top = top_k(weights, 4, blocked)
        _check_stats(stats, _expected_stats(held, blocked), torch.float64)
        _check_top_k(got_top, _expected_top_k(held, blocked, 4), torch.float64)
        # Three open keys (0, 1, 3), though the weights on the masked ones are not 0: no fourth.
        assert np.isnan(_np(got_top[0][..., 3])).all()
        assert (got_top[1][..., 3] == -1).all()
        assert (got_top[1][..., :3].sort(dim=-1).values == torch.tensor([0, 1, 3])).all()


def test_no_rows_or_no_keys():
    stats = row_stats(torch.zeros(2, 0, 4))
    assert all(tuple(getattr(stats, name).shape) == (2, 0) for name in STAT_NAMES)
    no_keys = row_stats(torch.zeros(2, 3, 0))
    assert np.isnan(_np(no_keys.entropy)).all()
    assert no_keys.argmax.tolist() == [[-1] * 3] * 2
    values, indices = top_k(torch.zeros(3, 0), 2)
    assert tuple(values.shape) == tuple(indices.shape) == (3, 0)


def test_matrix_means_by_hand():
    weights = torch.tensor([[[1.0, 0.0], [0.5, 0.5]], [[0.3, 0.7], [0.9, 0.1]]], dtype=torch.float64)
    blocked = np.array([[[False, True], [False, False]], [[True, True], [True, True]]])
    means = matrix_means(row_stats(weights, blocked))
    # Matrix 0: row 0 has one key (entropy 0, normalised NaN); row 1 is uniform over two.
    assert means["entropy"].tolist()[0] == pytest.approx(math.log(2) / 2)
    assert means["entropy_normalised"].tolist()[0] == pytest.approx(1.0)
    assert means["max_weight"].tolist()[0] == pytest.approx(0.75)
    assert means["sink"].tolist()[0] == pytest.approx(0.75)
    assert means["distance"].tolist()[0] == pytest.approx(0.25)  # row 1: 0.5 * |1 - 0|
    # Matrix 1: every key masked: NaN, not an error.
    assert all(math.isnan(mean.tolist()[1]) for mean in means.values())


def test_stats_arrays_are_numpy_copies():
    weights = torch.tensor([[0.2, 0.8], [0.6, 0.4]])
    stats = row_stats(weights, np.array([[False, True], [False, False]]))
    arrays = stats_arrays(stats)
    assert tuple(arrays) == STAT_NAMES
    assert all(isinstance(array, np.ndarray) for array in arrays.values())
    assert arrays["argmax"].dtype == np.int64
    assert arrays["entropy"].dtype == np.float32
    assert arrays["argmax"].tolist() == [0, 0]
    np.testing.assert_allclose(arrays["distance"], [0.0, 0.6], rtol=1e-6)
    arrays["entropy"][:] = 7.0
    assert (stats.entropy != 7.0).all()


def test_bad_arguments():
    weights = torch.full((2, 3), 1 / 3)
    for k in (0, -2):
        with pytest.raises(ValueError, match=f"^k must be at least 1, not {k}$"):
            top_k(weights, k)
    with pytest.raises(TypeError, match="boolean"):
        row_stats(weights, np.zeros((2, 3), dtype=np.int64))
    with pytest.raises(TypeError, match="boolean"):
        top_k(weights, 1, torch.zeros(3))
    with pytest.raises(ValueError, match=r"does not broadcast.*\(2, 3\)"):
        row_stats(weights, np.zeros((3, 3), dtype=bool))
    with pytest.raises(ValueError, match="query and key axes"):
        row_stats(torch.ones(3))
    with pytest.raises(TypeError, match="floating point"):
        row_stats(torch.ones(2, 3, dtype=torch.int64))


# ---------------------------------------------------------------------------------------------------
# CUDA


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_matches_numpy_without_host_syncs(dtype):
    rng = np.random.default_rng(12)
    mask = rng.random((6, 7)) < 0.6
    mask[2] = False
    mask[3, 0] = False
    weights_np, _ = reference_attention(
        rng.standard_normal((2, 3, 6, 4)),
        rng.standard_normal((2, 3, 7, 4)),
        rng.standard_normal((2, 3, 7, 2)),
        mask=mask,
        causal=True,
    )
    blocked = ~(np.tril(np.ones((6, 7), dtype=bool)) & mask)
    weights = torch.from_numpy(weights_np).to(dtype).cuda()
    held = _np(weights)
    blocked_cuda = torch.from_numpy(blocked).cuda()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any wait on the GPU from here raises
    try:
        stats = row_stats(weights, blocked_cuda)
        means = matrix_means(stats)
        got_top = top_k(weights, 4, blocked_cuda)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert {getattr(stats, name).device.type for name in STAT_NAMES} == {"cuda"}
    assert {mean.device.type for mean in means.values()} == {"cuda"}
    assert got_top[0].device.type == got_top[1].device.type == "cuda"
    expected = _expected_stats(held, blocked)
    _check_stats(stats, expected, dtype)
    _check_top_k(got_top, _expected_top_k(held, blocked, 4), dtype)
    _check_stats(row_stats(weights, blocked), expected, dtype)  # a NumPy mask goes to the GPU
    assert stats_arrays(stats)["argmax"].tolist() == expected["argmax"].tolist()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_amax_of_non_negative_values_on_their_bits_is_amax(dtype):
    """Zeros, the smallest subnormal, ordinary values, the largest finite, inf and NaN."""
    info = torch.finfo(dtype)
    special = torch.tensor([0.0, info.tiny / 4, info.tiny, 0.5, 1.0, info.max], dtype=dtype)
    rng = torch.Generator().manual_seed(5)
    values = torch.rand(6, 7, 300, generator=rng).to(dtype)
    values[0, 0, :6] = special
    values[1, 2] = 0.0  # a row of zeros
    values[2, 3, 17] = math.inf
    values[3, 4, 99] = math.nan  # NaN counts as the largest, as amax has it
    for dim in (-1, (-2, -1), 0):
        expected = values.amax(dim=dim)
        got = amax_non_negative(values, dim=dim)
        assert got.dtype == dtype
        torch.testing.assert_close(got, expected, rtol=0, atol=0, equal_nan=True)
    strided = values[..., ::3].unfold(-1, 7, 7)  # a view with other strides
    torch.testing.assert_close(
        amax_non_negative(strided, dim=-1), strided.amax(dim=-1), rtol=0, atol=0, equal_nan=True
    )
    assert amax_non_negative(values[:, :, :0], dim=0).shape == (7, 0)


def test_non_negative_weights_give_the_same_statistics():
    rng = np.random.default_rng(8)
    weights = torch.softmax(torch.from_numpy(rng.standard_normal((3, 40, 900)) * 4), dim=-1).float()
    weights[0, 5] = 0.0
    weights[1, :, 300:310] = weights[1, :, 200:210]  # ties between chunks
    plain, fast = row_stats(weights), row_stats(weights, non_negative=True)
    for name in ("max_weight", "argmax", "sink", "distance"):
        torch.testing.assert_close(getattr(fast, name), getattr(plain, name), rtol=0, atol=0, equal_nan=True)
    # the entropy's logarithm is vectorised for non-negative weights (xlogy's is not): rounding apart
    for name in ("entropy", "entropy_normalised"):
        torch.testing.assert_close(
            getattr(fast, name), getattr(plain, name), rtol=1e-6, atol=1e-6, equal_nan=True
        )


@pytest.mark.parametrize("causal", [False, True])
def test_row_entropy_alone_is_row_stats_entropy_and_the_float64_reference(causal):
    """The title's entropy (row_entropy) is row_stats' own for a softmax's weights (non_negative, as
    --stats computes them), bit for bit, and -sum w log w in float64."""
    rng = np.random.default_rng(11)
    scores = rng.standard_normal((2, 3, 9, 9))
    blocked = np.triu(np.ones((9, 9), dtype=bool), 1) if causal else None
    if causal:
        scores = np.where(blocked, -np.inf, scores)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    tensor = torch.from_numpy(weights.astype(np.float32))
    shut = None if blocked is None else torch.from_numpy(blocked)
    alone = analysis.row_entropy(tensor, shut)
    stats = analysis.row_stats(tensor, shut, non_negative=True)
    torch.testing.assert_close(alone, stats.entropy, rtol=0, atol=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        expected = -np.where(weights > 0, weights * np.log(weights), 0.0).sum(-1)
    np.testing.assert_allclose(alone.double().numpy(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "device",
    [
        "cpu",
        pytest.param(
            "cuda",
            marks=[
                pytest.mark.cuda,
                pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"),
            ],
        ),
    ],
)
def test_blocked_run_keeps_what_the_views_show_on_each_device(device):
    """A run in blocks of 5 rows (causal, a mask with a fully masked row, grouped heads) keeping the
    output, statistics, top-k and a pooled picture: every figure against NumPy's float64 weights and
    definitions, on the CPU and, where there is one, on a GPU, where the tensors stay until the end."""
    from attncli.compute import run

    rng = np.random.default_rng(23)
    q = rng.standard_normal((2, 4, 17, 8))
    k = rng.standard_normal((2, 2, 17, 8))
    v = rng.standard_normal((2, 2, 17, 3))
    mask = rng.random((17, 17)) < 0.7
    mask[:, 0] = True
    mask[6] = False  # a query that sees no key
    weights_np, output_np = reference_attention(
        q, np.repeat(k, 2, axis=1), np.repeat(v, 2, axis=1), mask=mask, causal=True
    )
    problem = prepare(q, k, v, mask=mask, causal=True, dtype=torch.float64, device=device)
    result = run(problem, block_rows=5, stats=True, top_k=3, picture=(4, 5))
    assert result.output.device.type == device
    assert result.stats is not None
    assert result.top_k is not None
    np.testing.assert_allclose(_np(result.output), output_np, rtol=1e-10, atol=1e-12)
    blocked = ~(np.tril(np.ones((17, 17), dtype=bool)) & mask)
    _check_stats(result.stats, _expected_stats(weights_np, blocked), torch.float64)
    values, keys = result.top_k
    expected_values, expected_keys = _expected_top_k(weights_np, blocked, 3)
    np.testing.assert_array_equal(keys.cpu().numpy(), expected_keys)
    np.testing.assert_allclose(_np(values), expected_values, rtol=1e-10, atol=1e-12)  # NaN where -1
    # the picture: max and mean over open weights of blocks of ceil(17/4) = 5 rows x ceil(17/5) = 4 keys
    largest, mean = np.full((2, 4, 4, 5), np.nan), np.full((2, 4, 4, 5), np.nan)
    for r in range(4):
        for c in range(5):
            cell = np.s_[..., r * 5 : r * 5 + 5, c * 4 : c * 4 + 4]
            open_weights = np.where(blocked[cell[1:]], np.nan, weights_np[cell])
            if not np.isnan(open_weights).all():
                largest[..., r, c] = np.nanmax(open_weights, axis=(-2, -1))
                mean[..., r, c] = np.nanmean(open_weights, axis=(-2, -1))
    np.testing.assert_allclose(result.picture_max, largest, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(result.picture_mean, mean, rtol=1e-6, atol=1e-7)
