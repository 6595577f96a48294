"""Correctness of the attention core (attncli.compute).

Expected values come from two independent sources only: the float64 NumPy reference in
tests/reference.py and torch's fused `scaled_dot_product_attention` (SDPA). Shapes, indices and
dtypes that the tests assert are derived from the inputs and the specification, never from attncli.
"""

from __future__ import annotations

import math
import mmap

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference import reference_attention

from attncli.compute import (
    attention,
    check_scale,
    describe,
    resolve_device,
    resolve_dtype,
    result_arrays,
)
from attncli.errors import AttnError, InputError, ShapeError, UsageError

PROPERTY = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
F64 = {"rtol": 1e-10, "atol": 1e-10}
F32 = {"rtol": 1e-5, "atol": 1e-5}


# ---------------------------------------------------------------------------------------------------
# helpers


def _np(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().cpu().double().numpy()


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _expected_masked_rows(ref_weights: np.ndarray) -> list[tuple[int, ...]]:
    """Rows the reference gave no weight at all: those whose every key was masked."""
    return sorted(tuple(int(i) for i in row) for row in np.argwhere(ref_weights.sum(axis=-1) == 0))


def _check_against_reference(result, ref_weights, ref_output, tol) -> None:
    weights, output = _np(result.weights), _np(result.output)
    assert weights.shape == ref_weights.shape
    assert output.shape == ref_output.shape
    assert np.isfinite(weights).all()
    assert np.isfinite(output).all()
    np.testing.assert_allclose(weights, ref_weights, **tol)
    np.testing.assert_allclose(output, ref_output, **tol)


def _check_rows(result, ref_weights, slack: float) -> None:
    """Weights in [0, 1]; rows sum to 1, or to 0 for the fully masked rows (given by the reference)."""
    weights = _np(result.weights)
    assert (weights >= 0).all()
    assert (weights <= 1 + slack).all()
    expected_rows = _expected_masked_rows(ref_weights)
    assert sorted(result.fully_masked_rows()) == expected_rows
    sums = weights.sum(axis=-1)
    expected_sums = np.ones(sums.shape)
    for row in expected_rows:
        expected_sums[row] = 0.0
        assert (weights[row] == 0).all()
    np.testing.assert_allclose(sums, expected_sums, rtol=0, atol=slack)


def _sdpa(q, k, v, **kwargs) -> np.ndarray:
    return _np(torch.nn.functional.scaled_dot_product_attention(q, k, v, **kwargs))


def _t(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array))


# ---------------------------------------------------------------------------------------------------
# hypothesis strategies


@st.composite
def _sub_shape(draw, full: tuple[int, ...]) -> tuple[int, ...]:
    """A shape that broadcasts to `full`: leading axes may be dropped, others set to 1."""
    drop = draw(st.integers(0, len(full)))
    return tuple(draw(st.sampled_from([n, 1])) for n in full[drop:])


@st.composite
def attention_cases(draw) -> dict:
    """Random shapes with broadcasting batch axes, scale, causal and a bool/float mask."""
    n_batch = draw(st.integers(0, 2))
    full = tuple(draw(st.lists(st.integers(1, 3), min_size=n_batch, max_size=n_batch)))
    q_batch = draw(_sub_shape(full))
    kv_batch = draw(_sub_shape(full))
    if len(q_batch) == 2 and len(kv_batch) == 2:
        # 4-D inputs: axis -3 is heads; key/value heads > query heads would be (invalid) GQA.
        q_batch = (q_batch[0], full[1])
    lq, lk = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    d, dv = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    rng = _rng(draw(st.integers(0, 2**32 - 1)))
    query = rng.standard_normal((*q_batch, lq, d))
    key = rng.standard_normal((*kv_batch, lk, d))
    value = rng.standard_normal((*kv_batch, lk, dv))
    # A 1-D vector is one position.
    if not q_batch and lq == 1 and draw(st.booleans()):
        query = query[0]
    if not kv_batch and lk == 1 and draw(st.booleans()):
        key = key[0]
    if not kv_batch and lk == 1 and draw(st.booleans()):
        value = value[0]

    weights_batch = tuple(np.broadcast_shapes(q_batch, kv_batch))
    mask_kind = draw(st.sampled_from([None, "bool", "float"]))
    mask = None
    if mask_kind is not None:
        shape = draw(_sub_shape((*weights_batch, lq, lk)))
        if len(shape) == len(weights_batch) + 2:
            extra = draw(st.lists(st.integers(1, 2), max_size=2))  # more leading axes than the inputs
            shape = (*extra, *shape)
        if mask_kind == "bool":
            mask = np.asarray(rng.random(shape) < draw(st.sampled_from([0.3, 0.7, 0.95])))
        else:
            mask = np.asarray(rng.standard_normal(shape) * 2.0)
            mask[np.asarray(rng.random(shape)) < draw(st.sampled_from([0.0, 0.3, 0.8]))] = -np.inf
    scale = draw(st.one_of(st.none(), st.floats(0.05, 1.5), st.floats(-1.5, -0.05)))
    causal = draw(st.booleans())
    return {"query": query, "key": key, "value": value, "mask": mask, "scale": scale, "causal": causal}


def _ref(case: dict, **override):
    args = case | override
    return reference_attention(
        args["query"],
        args["key"],
        args["value"],
        scale=args.get("scale"),
        mask=args.get("mask"),
        causal=args.get("causal", False),
        heads=args.get("heads"),
    )


# ---------------------------------------------------------------------------------------------------
# 1. properties against the float64 reference


@PROPERTY
@given(attention_cases())
def test_matches_reference_float64(case):
    result = attention(
        case["query"],
        case["key"],
        case["value"],
        scale=case["scale"],
        mask=case["mask"],
        causal=case["causal"],
    )
    ref_weights, ref_output = _ref(case)
    assert result.weights.dtype == torch.float64
    assert result.output.dtype == torch.float64
    _check_against_reference(result, ref_weights, ref_output, F64)
    _check_rows(result, ref_weights, slack=1e-12)
    for row in _expected_masked_rows(ref_weights):
        assert (_np(result.output)[row] == 0).all()
    if case["scale"] is None:
        features = np.atleast_2d(case["key"]).shape[-1]
        assert result.scale == pytest.approx(1 / math.sqrt(features), rel=1e-15)
    else:
        assert result.scale == case["scale"]
    assert result.causal == case["causal"]
    assert dict(result.input_shapes) == {role: tuple(case[role].shape) for role in ("query", "key", "value")}


@PROPERTY
@given(attention_cases())
def test_matches_reference_float32(case):
    f32 = {role: case[role].astype(np.float32) for role in ("query", "key", "value")}
    mask = case["mask"]
    if mask is not None and mask.dtype != bool:
        mask = mask.astype(np.float32)
    case32 = case | f32 | {"mask": mask}
    result = attention(
        f32["query"], f32["key"], f32["value"], scale=case["scale"], mask=mask, causal=case["causal"]
    )
    assert result.weights.dtype == torch.float32
    assert result.output.dtype == torch.float32
    ref_weights, ref_output = _ref(case32)  # the reference of the very float32 numbers
    _check_against_reference(result, ref_weights, ref_output, F32)
    _check_rows(result, ref_weights, slack=1e-5)


@st.composite
def head_cases(draw) -> dict:
    heads = draw(st.integers(1, 4))
    batch = tuple(draw(st.lists(st.integers(1, 2), max_size=1)))
    lq, lk = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    d, dv = heads * draw(st.integers(1, 4)), heads * draw(st.integers(1, 4))
    rng = _rng(draw(st.integers(0, 2**32 - 1)))
    mask = None
    if draw(st.booleans()):
        shape = draw(st.sampled_from([(lq, lk), (heads, 1, lk), (heads, lq, lk), (1, lk)]))
        mask = rng.random(shape) < 0.7
    return {
        "query": rng.standard_normal((*batch, lq, d)),
        "key": rng.standard_normal((*batch, lk, d)),
        "value": rng.standard_normal((*batch, lk, dv)),
        "mask": mask,
        "scale": draw(st.one_of(st.none(), st.floats(0.1, 1.0))),
        "causal": draw(st.booleans()),
        "heads": heads,
    }


@PROPERTY
@given(head_cases())
def test_heads_match_reference(case):
    result = attention(
        case["query"],
        case["key"],
        case["value"],
        scale=case["scale"],
        mask=case["mask"],
        causal=case["causal"],
        heads=case["heads"],
    )
    ref_weights, ref_output = _ref(case)
    lq, d = case["query"].shape[-2:]
    lk, dv = case["value"].shape[-2:]
    assert ref_output.shape[-2:] == (lq, dv)  # heads merged back into the features
    assert ref_weights.shape[-3:] == (case["heads"], lq, lk)
    _check_against_reference(result, ref_weights, ref_output, F64)
    _check_rows(result, ref_weights, slack=1e-12)
    assert result.heads == case["heads"]
    if case["scale"] is None:  # the default scale uses the features of one head
        assert result.scale == pytest.approx(1 / math.sqrt(d // case["heads"]), rel=1e-15)


@st.composite
def gqa_cases(draw) -> dict:
    kv_heads, group = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    batch = draw(st.integers(1, 2))
    lq, lk = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    d, dv = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    rng = _rng(draw(st.integers(0, 2**32 - 1)))
    return {
        "query": rng.standard_normal((batch, kv_heads * group, lq, d)),
        "key": rng.standard_normal((batch, kv_heads, lk, d)),
        "value": rng.standard_normal((batch, kv_heads, lk, dv)),
        "scale": draw(st.one_of(st.none(), st.floats(0.1, 1.0))),
        "causal": draw(st.booleans()),
        "group": group,
    }


@PROPERTY
@given(gqa_cases())
def test_gqa_matches_reference_and_sdpa(case):
    q, k, v = (case[role] for role in ("query", "key", "value"))
    result = attention(q, k, v, scale=case["scale"], causal=case["causal"])
    ref_weights, ref_output = _ref(case)
    _check_against_reference(result, ref_weights, ref_output, F64)
    _check_rows(result, ref_weights, slack=1e-12)
    expected = _sdpa(_t(q), _t(k), _t(v), scale=case["scale"], is_causal=case["causal"], enable_gqa=True)
    np.testing.assert_allclose(_np(result.output), expected, **F64)
    if k.shape[1] > 1:
        assert result.query_heads_per_key_head == case["group"]


# ---------------------------------------------------------------------------------------------------
# 2. against torch's scaled_dot_product_attention (float64)


def _sdpa_inputs(seed: int, lq: int, lk: int, batch=(2, 3)):
    rng = _rng(seed)
    q = torch.from_numpy(rng.standard_normal((*batch, lq, 8)))
    k = torch.from_numpy(rng.standard_normal((*batch, lk, 8)))
    v = torch.from_numpy(rng.standard_normal((*batch, lk, 5)))
    return rng, q, k, v


@pytest.mark.parametrize(("lq", "lk"), [(4, 4), (3, 7), (7, 3), (1, 5), (5, 1)])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("scale", [None, 0.3, -1.2])
def test_sdpa_plain_causal_scale(lq, lk, causal, scale):
    _, q, k, v = _sdpa_inputs(lq * 10 + lk, lq, lk)
    result = attention(q, k, v, causal=causal, scale=scale)
    expected = _sdpa(q, k, v, is_causal=causal, scale=scale)
    np.testing.assert_allclose(_np(result.output), expected, **F64)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("mask_shape", [(6, 9), (3, 1, 9), (2, 3, 6, 9), (1, 9), (9,)])
def test_sdpa_bool_mask(causal, mask_shape):
    rng, q, k, v = _sdpa_inputs(1, 6, 9)
    mask = torch.from_numpy(rng.random(mask_shape) < 0.5)
    mask[..., 0] = True  # key 0 is visible to every row, causal or not: SDPA gives NaN otherwise
    result = attention(q, k, v, mask=mask, causal=causal)
    allowed = torch.ones(6, 9, dtype=torch.bool)
    attn_mask = mask & (allowed.tril() if causal else allowed)  # SDPA wants a mask of 2 axes or more
    np.testing.assert_allclose(_np(result.output), _sdpa(q, k, v, attn_mask=attn_mask), **F64)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("with_inf", [False, True])
def test_sdpa_float_mask(causal, with_inf):
    rng, q, k, v = _sdpa_inputs(2, 5, 7)
    mask = torch.from_numpy(rng.standard_normal((3, 5, 7)) * 3)
    if with_inf:
        mask[torch.from_numpy(rng.random((3, 5, 7)) < 0.5)] = -math.inf
        mask[..., 0] = 0.0
    result = attention(q, k, v, mask=mask, causal=causal, scale=0.7)
    attn_mask = mask
    if causal:
        attn_mask = mask.masked_fill(torch.ones(5, 7, dtype=torch.bool).triu(1), -math.inf)
    expected = _sdpa(q, k, v, attn_mask=attn_mask, scale=0.7)
    np.testing.assert_allclose(_np(result.output), expected, **F64)


@pytest.mark.parametrize(("hq", "hkv"), [(4, 2), (6, 3), (6, 1), (4, 4), (8, 2)])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("use_mask", [False, True])
def test_sdpa_gqa(hq, hkv, causal, use_mask):
    rng = _rng(hq * 100 + hkv)
    q = torch.from_numpy(rng.standard_normal((2, hq, 5, 4)))
    k = torch.from_numpy(rng.standard_normal((2, hkv, 6, 4)))
    v = torch.from_numpy(rng.standard_normal((2, hkv, 6, 3)))
    mask = None
    if use_mask:
        mask = torch.from_numpy(rng.random((hq, 5, 6)) < 0.6)
        mask[..., 0] = True
    result = attention(q, k, v, causal=causal, mask=mask)
    attn_mask = mask
    if causal and mask is not None:
        attn_mask = mask & torch.ones(5, 6, dtype=torch.bool).tril()
    expected = _sdpa(q, k, v, attn_mask=attn_mask, is_causal=causal and mask is None, enable_gqa=True)
    np.testing.assert_allclose(_np(result.output), expected, **F64)
    assert tuple(result.weights.shape) == (2, hq, 5, 6)
    if hkv > 1:
        assert result.query_heads_per_key_head == hq // hkv


# ---------------------------------------------------------------------------------------------------
# 3. heads= against SDPA on tensors split by hand


def _split(x: torch.Tensor, heads: int) -> torch.Tensor:
    return x.reshape(*x.shape[:-1], heads, x.shape[-1] // heads).transpose(-3, -2)


@pytest.mark.parametrize("heads", [1, 2, 3, 6])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("batch", [(), (2,)])
def test_heads_match_sdpa_on_split_tensors(heads, causal, batch):
    rng = _rng(heads)
    q = torch.from_numpy(rng.standard_normal((*batch, 5, 12)))
    k = torch.from_numpy(rng.standard_normal((*batch, 7, 12)))
    v = torch.from_numpy(rng.standard_normal((*batch, 7, 6)))
    result = attention(q, k, v, heads=heads, causal=causal)
    split = _sdpa(_split(q, heads), _split(k, heads), _split(v, heads), is_causal=causal)
    merged = np.moveaxis(split, -3, -2).reshape(*batch, 5, 6)  # (..., H, L, Dv/H) -> (..., L, Dv)
    assert tuple(result.output.shape) == (*batch, 5, 6)
    assert tuple(result.weights.shape) == (*batch, heads, 5, 7)
    np.testing.assert_allclose(_np(result.output), merged, **F64)


def test_heads_with_per_head_mask_matches_sdpa():
    rng = _rng(7)
    q, k, v = (torch.from_numpy(rng.standard_normal((4, 8))) for _ in range(3))
    mask = torch.from_numpy(rng.random((2, 4, 4)) < 0.5)
    mask[..., 0] = True
    result = attention(q, k, v, heads=2, mask=mask)
    split = _sdpa(_split(q, 2), _split(k, 2), _split(v, 2), attn_mask=mask)
    np.testing.assert_allclose(_np(result.output), np.moveaxis(split, -3, -2).reshape(4, 8), **F64)


@pytest.mark.parametrize(
    ("query", "key", "heads", "noted"),
    [
        ((4, 768), (4, 768), None, True),
        ((2, 4, 320), (2, 4, 320), None, True),
        ((768,), (4, 768), None, True),  # a vector is one position
        ((4, 256), (4, 256), None, False),  # 256 and less: one head is plausible
        ((4, 800), (4, 800), None, False),  # not a multiple of 64
        ((4, 768), (4, 768), 12, False),
        ((1, 12, 4, 768), (1, 12, 4, 768), None, False),  # its heads are on axis 1
        ((4, 768), (1, 12, 4, 768), None, False),  # the key's heads axis gives the weights one
        ((1, 2, 4, 64), (1, 2, 4, 64), 4, True),  # heads split again
        ((1, 2, 4, 64), (1, 2, 4, 64), 1, False),  # --heads 1 only adds an axis of one
    ],
)
def test_heads_note_only_where_the_heads_may_be_guessed_wrong(query, key, heads, noted):
    from attncli.compute import heads_note, prepare

    zeros = np.zeros
    problem = prepare(zeros(query, np.float32), zeros(key, np.float32), zeros(key, np.float32), heads=heads)
    note = heads_note(problem, "q.npy")
    assert (note is not None) == noted, note
    if note is not None:
        assert note.startswith(f"q.npy {tuple(query)}"), note
        assert "--heads" in note


# ---------------------------------------------------------------------------------------------------
# 4. dtypes


def _inputs(seed=0, shape_q=(4, 6), shape_k=(5, 6), dv=3, dtype=np.float64):
    rng = _rng(seed)
    return (
        rng.standard_normal(shape_q).astype(dtype),
        rng.standard_normal(shape_k).astype(dtype),
        rng.standard_normal((*shape_k[:-1], dv)).astype(dtype),
    )


@pytest.mark.parametrize(
    ("dtypes", "expected"),
    [
        ((np.float32, np.float32, np.float32), torch.float32),
        ((np.float64, np.float64, np.float64), torch.float64),
        ((np.float32, np.float64, np.float32), torch.float64),
        ((np.float16, np.float16, np.float16), torch.float32),
        ((np.int64, np.int32, np.int16), torch.float32),
        ((np.int64, np.float64, np.int64), torch.float64),
        ((torch.float64, torch.float64, torch.float64), torch.float64),
        ((torch.float32, np.float64, torch.float32), torch.float64),
        ((torch.bfloat16, torch.float16, torch.float32), torch.float32),
        ((torch.int64, torch.int64, torch.int64), torch.float32),
    ],
)
def test_auto_dtype(dtypes, expected):
    rng = _rng(3)
    arrays = [rng.integers(-3, 4, shape) for shape in ((3, 4), (5, 4), (5, 2))]
    inputs = [
        torch.from_numpy(a).to(dt) if isinstance(dt, torch.dtype) else a.astype(dt)
        for a, dt in zip(arrays, dtypes, strict=True)
    ]
    assert resolve_dtype("auto", *inputs) == expected
    assert resolve_dtype(None, *inputs) == expected
    result = attention(*inputs)
    assert result.weights.dtype == expected
    assert result.output.dtype == expected
    ref_weights, ref_output = reference_attention(*arrays)  # the integers are exact in every dtype
    tol = F64 if expected == torch.float64 else F32
    _check_against_reference(result, ref_weights, ref_output, tol)


@pytest.mark.parametrize("spec", ["float32", "float64", "float16", "bfloat16"])
def test_named_dtype(spec):
    q, k, v = _inputs()
    expected = getattr(torch, spec)
    for given_spec in (spec, expected):
        result = attention(q, k, v, dtype=given_spec)
        assert result.weights.dtype == expected
        assert result.output.dtype == expected
        assert resolve_dtype(given_spec, q, k, v) == expected


HALF_TOL = {torch.float16: {"rtol": 0, "atol": 1e-2}, torch.bfloat16: {"rtol": 0, "atol": 3e-2}}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("mask_kind", [None, "bool", "float"])
def test_half_dtypes_close_to_reference(dtype, seed, causal, mask_kind):
    rng = _rng(seed)
    q = rng.standard_normal((2, 6, 8))
    k = rng.standard_normal((2, 7, 8))
    v = rng.standard_normal((2, 7, 4))
    mask = None
    if mask_kind == "bool":
        mask = rng.random((6, 7)) < 0.6
        mask[0] = False  # a fully masked row too
    elif mask_kind == "float":
        mask = rng.standard_normal((2, 6, 7))
    # The reference of the numbers as the half dtype holds them.
    q_h, k_h, v_h = (_np(torch.from_numpy(x).to(dtype)) for x in (q, k, v))
    result = attention(q, k, v, dtype=dtype, mask=mask, causal=causal)
    assert result.weights.dtype == dtype
    assert result.output.dtype == dtype
    ref_weights, ref_output = reference_attention(q_h, k_h, v_h, mask=mask, causal=causal)
    _check_against_reference(result, ref_weights, ref_output, HALF_TOL[dtype])
    assert sorted(result.fully_masked_rows()) == _expected_masked_rows(ref_weights)
    arrays = result_arrays(result)
    assert arrays["weights"].dtype == (np.float16 if dtype == torch.float16 else np.float32)
    np.testing.assert_allclose(arrays["weights"], ref_weights, **HALF_TOL[dtype])
    np.testing.assert_allclose(arrays["output"], ref_output, **HALF_TOL[dtype])


def test_float16_softmax_accumulates_beyond_float16_range():
    """A float mask of -1e5 (below float16's -65504) must shift, not erase, the row's scores."""
    q, k, v = _inputs(seed=5)
    mask = np.zeros((4, 5))
    mask[1] = -1e5  # every key of row 1: softmax is shift-invariant, so row 1 is unchanged
    mask[2, :2] = -7e4  # keys 0 and 1 of row 2 get (almost) no weight
    result = attention(q, k, v, dtype="float16", mask=mask)
    ref_weights, ref_output = reference_attention(q, k, v, mask=mask)
    _check_against_reference(result, ref_weights, ref_output, HALF_TOL[torch.float16])
    assert result.fully_masked_rows() == []


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_whose_scores_overflow_the_dtype_stay_finite(dtype):
    """Scores of 1e8 overflow float16 (max 65504); computed in float32 they do not."""
    rng = _rng(12)
    q, k, v = (
        x.astype(np.float32)
        for x in (
            rng.standard_normal((6, 8)) * 1e4,
            rng.standard_normal((7, 8)) * 1e4,
            rng.standard_normal((7, 4)),
        )
    )
    q_h, k_h, v_h = (_np(torch.from_numpy(x).to(dtype)) for x in (q, k, v))
    result = attention(q, k, v, dtype=dtype)
    ref_weights, ref_output = reference_attention(q_h, k_h, v_h)
    assert torch.isfinite(result.weights).all()
    _check_against_reference(result, ref_weights, ref_output, HALF_TOL[dtype])


def test_integer_inputs_are_promoted():
    rng = _rng(11)
    q, k, v = (rng.integers(-4, 5, shape) for shape in ((2, 3, 4), (2, 5, 4), (2, 5, 3)))
    result = attention(q, k, v, causal=True)
    assert result.weights.dtype == torch.float32
    ref_weights, ref_output = reference_attention(q, k, v, causal=True)
    _check_against_reference(result, ref_weights, ref_output, F32)
    result64 = attention(q, k, v, causal=True, dtype="float64")
    _check_against_reference(result64, ref_weights, ref_output, F64)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_torch_tensor_inputs(dtype):
    q, k, v = _inputs(seed=12, shape_q=(2, 3, 4, 8), shape_k=(2, 3, 6, 8))
    mask = torch.from_numpy(_rng(13).random((4, 6)) < 0.7)
    tq, tk, tv = (torch.from_numpy(x).to(dtype) for x in (q, k, v))
    result = attention(tq, tk, tv, mask=mask, causal=True)
    assert result.weights.dtype == dtype
    ref_weights, ref_output = reference_attention(
        *(_np(t) for t in (tq, tk, tv)), mask=mask.numpy(), causal=True
    )
    _check_against_reference(result, ref_weights, ref_output, F64 if dtype == torch.float64 else F32)
    # Mixed: a torch tensor with NumPy arrays.
    mixed = attention(tq, k.astype(np.float32), v.astype(np.float32), mask=mask.numpy(), causal=True)
    _check_against_reference(
        mixed, ref_weights, ref_output, F32 if dtype == torch.float32 else {"rtol": 1e-6, "atol": 1e-6}
    )


def test_non_contiguous_inputs():
    rng = _rng(14)
    q = rng.standard_normal((6, 4)).T  # Fortran order, (4, 6)
    k = np.asfortranarray(rng.standard_normal((5, 6)))
    v = torch.from_numpy(rng.standard_normal((3, 5))).T  # a transposed tensor view, (5, 3)
    result = attention(q, k, v)
    ref_weights, ref_output = reference_attention(q, k, v.numpy())
    _check_against_reference(result, ref_weights, ref_output, F64)


def test_numpy_view_with_negative_strides():
    q, k, v = _inputs(seed=15)
    reversed_query = q[::-1]  # a valid NumPy array, as np.flip returns
    result = attention(reversed_query, k, v)
    ref_weights, ref_output = reference_attention(reversed_query, k, v)
    _check_against_reference(result, ref_weights, ref_output, F64)


# ---------------------------------------------------------------------------------------------------
# 5. fully masked rows


def test_fully_masked_rows_bool_mask_with_batch():
    q, k, v = _inputs(seed=20, shape_q=(2, 4, 6), shape_k=(2, 5, 6))
    mask = _rng(21).random((2, 4, 5)) < 0.8
    mask[..., 0] = True
    mask[0, 1] = False
    mask[1, 3] = False
    result = attention(q, k, v, mask=mask)
    assert result.fully_masked_rows() == [(0, 1), (1, 3)]
    weights, output = _np(result.weights), _np(result.output)
    for index in [(0, 1), (1, 3)]:
        assert (weights[index] == 0).all()
        assert (output[index] == 0).all()
    assert np.isfinite(weights).all()
    assert np.isfinite(output).all()
    _check_against_reference(result, *reference_attention(q, k, v, mask=mask), F64)


def test_fully_masked_rows_float_mask_of_minus_inf():
    q, k, v = _inputs(seed=22)
    mask = np.zeros((4, 5))
    mask[2] = -np.inf
    mask[0, 1:] = -np.inf  # row 0 keeps key 0
    for dtype in ("float64", "float32", "float16", "bfloat16"):
        result = attention(q, k, v, mask=mask, dtype=dtype)
        assert result.fully_masked_rows() == [(2,)]
        weights, output = _np(result.weights), _np(result.output)
        assert np.isfinite(weights).all()
        assert np.isfinite(output).all()
        assert (weights[2] == 0).all()
        assert (output[2] == 0).all()
        np.testing.assert_allclose(weights[0], [1, 0, 0, 0, 0], rtol=0, atol=0)
        np.testing.assert_allclose(output[0], _np(torch.from_numpy(v[0]).to(result.output.dtype)))


def test_fully_masked_rows_from_mask_and_causal_combined():
    q, k, v = _inputs(seed=23, shape_q=(4, 6), shape_k=(4, 6))
    mask = np.zeros((4, 4), dtype=bool)
    mask[:, 3] = True  # only the last key is allowed; causal hides it from rows 0, 1, 2
    result = attention(q, k, v, mask=mask, causal=True)
    assert result.fully_masked_rows() == [(0,), (1,), (2,)]
    weights, output = _np(result.weights), _np(result.output)
    assert (weights[:3] == 0).all()
    assert (output[:3] == 0).all()
    np.testing.assert_allclose(weights[3], [0, 0, 0, 1], rtol=0, atol=0)
    np.testing.assert_allclose(output[3], v[3], **F64)
    _check_against_reference(result, *reference_attention(q, k, v, mask=mask, causal=True), F64)


def test_fully_masked_rows_with_heads_gqa_and_extra_mask_axes():
    rng = _rng(24)
    q = rng.standard_normal((1, 4, 3, 2))
    k = rng.standard_normal((1, 2, 5, 2))
    v = rng.standard_normal((1, 2, 5, 2))
    mask = np.ones((2, 1, 4, 3, 5), dtype=bool)  # one more leading axis than the inputs
    mask[1, 0, 3, 0] = False
    mask[0, 0, 2, 2] = False
    result = attention(q, k, v, mask=mask)
    assert tuple(result.weights.shape) == (2, 1, 4, 3, 5)
    assert result.fully_masked_rows() == [(0, 0, 2, 2), (1, 0, 3, 0)]
    _check_against_reference(result, *reference_attention(q, k, v, mask=mask), F64)

    x = rng.standard_normal((3, 4))
    head_mask = np.ones((2, 3, 3), dtype=bool)
    head_mask[1, 2] = False
    result = attention(x, x, x, heads=2, mask=head_mask)
    assert result.fully_masked_rows() == [(1, 2)]
    ref_weights, ref_output = reference_attention(x, x, x, heads=2, mask=head_mask)
    _check_against_reference(result, ref_weights, ref_output, F64)
    # Row 2's output: the half of its features from head 1 is zero, the half from head 0 is not.
    assert (_np(result.output)[2, 2:] == 0).all()


def test_no_mask_no_fully_masked_rows():
    q, k, v = _inputs(seed=25, shape_q=(9, 6), shape_k=(2, 6))
    result = attention(q, k, v, causal=True)  # top-left causal: every row sees key 0
    assert result.fully_masked_rows() == []
    _check_rows(result, reference_attention(q, k, v, causal=True)[0], slack=1e-12)


def test_very_negative_finite_mask_is_not_fully_masked():
    q, k, v = _inputs(seed=26)
    mask = np.full((4, 5), -1e30)
    result = attention(q, k, v, mask=mask)
    assert result.fully_masked_rows() == []
    _check_against_reference(result, *reference_attention(q, k, v, mask=mask), F64)


# ---------------------------------------------------------------------------------------------------
# 6. large magnitudes


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("magnitude", [1e4, -1e4])
def test_large_magnitude_inputs_are_stable(dtype, causal, magnitude):
    rng = _rng(30)
    q = (rng.standard_normal((2, 6, 8)) * magnitude).astype(dtype)
    k = (rng.standard_normal((2, 7, 8)) * abs(magnitude)).astype(dtype)
    v = rng.standard_normal((2, 7, 3)).astype(dtype)
    mask = rng.random((6, 7)) < 0.7
    mask[:, 0] = True
    for m in (None, mask):
        result = attention(q, k, v, causal=causal, mask=m)
        ref_weights, ref_output = reference_attention(q, k, v, causal=causal, mask=m)
        _check_against_reference(result, ref_weights, ref_output, F64 if dtype == np.float64 else F32)
        _check_rows(result, ref_weights, slack=1e-5)


def test_large_scale_is_stable():
    q, k, v = _inputs(seed=31)
    result = attention(q, k, v, scale=1e6)
    _check_against_reference(result, *reference_attention(q, k, v, scale=1e6), F64)


# ---------------------------------------------------------------------------------------------------
# 7. errors


NAMES = {"query": "q.npy", "key": "k.npy", "value": "v.npy", "mask": "m.npy"}


def _raises(error_type, words, *args, **kwargs) -> str:
    with pytest.raises(error_type) as info:
        attention(*args, **kwargs)
    message = str(info.value)
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"
    assert isinstance(info.value, AttnError)
    return message


def test_error_key_value_positions_message_from_spec():
    rng = _rng(40)
    q, k, v = rng.standard_normal((3, 8)), rng.standard_normal((5, 8)), rng.standard_normal((4, 8))
    message = _raises(ShapeError, [], q, k, v, names={"key": "k.npy", "value": "v.npy"})
    assert message == "key has 5 positions but value has 4: k.npy (5, 8), v.npy (4, 8)"


def test_error_query_key_features():
    rng = _rng(41)
    q, k, v = rng.standard_normal((3, 8)), rng.standard_normal((5, 6)), rng.standard_normal((5, 4))
    _raises(
        ShapeError,
        ["query", "key", "8", "6", "features", "q.npy (3, 8)", "k.npy (5, 6)"],
        q,
        k,
        v,
        names=NAMES,
    )
    # Without names, the roles name the inputs.
    _raises(ShapeError, ["query (3, 8)", "key (5, 6)"], q, k, v)


def test_error_batch_axes_do_not_broadcast():
    rng = _rng(42)
    q, k, v = rng.standard_normal((2, 3, 8)), rng.standard_normal((3, 5, 8)), rng.standard_normal((3, 5, 4))
    _raises(
        ShapeError,
        ["batch", "broadcast", "q.npy (2, 3, 8)", "k.npy (3, 5, 8)", "v.npy (3, 5, 4)"],
        q,
        k,
        v,
        names=NAMES,
    )


def test_error_heads_do_not_divide_features():
    rng = _rng(43)
    q, k, v = rng.standard_normal((3, 8)), rng.standard_normal((5, 8)), rng.standard_normal((5, 6))
    _raises(ShapeError, ["3 heads", "8 features", "query", "q.npy (3, 8)"], q, k, v, heads=3, names=NAMES)
    _raises(ShapeError, ["4 heads", "6 features", "value", "v.npy (5, 6)"], q, k, v, heads=4, names=NAMES)


@pytest.mark.parametrize(("hq", "hkv"), [(6, 4), (3, 2), (2, 4), (1, 3)])
def test_error_gqa_heads_do_not_divide(hq, hkv):
    rng = _rng(44)
    q = rng.standard_normal((2, hq, 3, 4))
    k, v = rng.standard_normal((2, hkv, 5, 4)), rng.standard_normal((2, hkv, 5, 4))
    _raises(ShapeError, ["heads", str(hq), str(hkv), "q.npy", "k.npy"], q, k, v, names=NAMES)
    with pytest.raises(RuntimeError):  # SDPA refuses these too
        torch.nn.functional.scaled_dot_product_attention(_t(q), _t(k), _t(v), enable_gqa=True)


def test_error_key_value_head_counts_differ():
    rng = _rng(45)
    q = rng.standard_normal((2, 4, 3, 4))
    k, v = rng.standard_normal((2, 2, 5, 4)), rng.standard_normal((2, 4, 5, 4))
    _raises(
        ShapeError,
        ["heads", "key", "value", "k.npy (2, 2, 5, 4)", "v.npy (2, 4, 5, 4)"],
        q,
        k,
        v,
        names=NAMES,
    )


@pytest.mark.parametrize("shape", [(4, 5), (3, 6), (2, 3, 5), (2, 3, 4, 5)])
def test_error_mask_does_not_broadcast(shape):
    rng = _rng(46)
    q, k, v = rng.standard_normal((3, 3, 8)), rng.standard_normal((3, 5, 8)), rng.standard_normal((3, 5, 4))
    mask = np.ones(shape, dtype=bool)
    _raises(ShapeError, ["mask", "broadcast", f"m.npy {shape}"], q, k, v, mask=mask, names=NAMES)
    _raises(ShapeError, ["mask", "broadcast"], q, k, v, mask=mask.astype(np.float32))


def test_error_message_shows_the_shape_of_a_1d_input():
    rng = _rng(47)
    q, k, v = rng.standard_normal(8), rng.standard_normal((5, 6)), rng.standard_normal((5, 4))
    _raises(ShapeError, ["q.npy (8,)", "k.npy (5, 6)"], q, k, v, names=NAMES)


@pytest.mark.parametrize("scale", [math.nan, math.inf, -math.inf, 0.0, -0.0])
def test_error_bad_scale(scale):
    q, k, v = _inputs()
    _raises(UsageError, ["scale"], q, k, v, scale=scale)
    with pytest.raises(ValueError, match="finite"):
        check_scale(scale)


@pytest.mark.parametrize("scale", [0.5, -2.0, 1e-8, 3])
def test_check_scale_accepts_finite_non_zero(scale):
    assert check_scale(scale) == float(scale)
    assert isinstance(check_scale(scale), float)


@pytest.mark.parametrize("dtype", ["float8", "int32", "double", "", torch.int32, torch.complex64])
def test_error_unknown_dtype(dtype):
    q, k, v = _inputs()
    _raises(UsageError, ["dtype", str(dtype)], q, k, v, dtype=dtype)


@pytest.mark.parametrize("device", ["gpu", "mps", "tpu", "cuda:x", ""])
def test_error_unknown_device(device):
    q, k, v = _inputs()
    _raises(UsageError, ["device", f"'{device}'"], q, k, v, device=device)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
@pytest.mark.parametrize("device", ["cuda", "cuda:0", "auto"])
def test_cuda_unavailable(device):
    q, k, v = _inputs()
    if device == "auto":
        assert resolve_device(device) == torch.device("cpu")
        assert attention(q, k, v, device=device).weights.device == torch.device("cpu")
        return
    _raises(UsageError, ["device", f"'{device}'", "not available"], q, k, v, device=device)


def test_resolve_device_cpu():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    expected_auto = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected_auto


@pytest.mark.parametrize("heads", [0, -1, -4])
def test_error_heads_not_positive(heads):
    q, k, v = _inputs()
    _raises(UsageError, ["heads", str(heads)], q, k, v, heads=heads)


def test_error_mask_of_integers():
    q, k, v = _inputs()
    _raises(UsageError, ["mask"], q, k, v, mask=np.ones((4, 5), dtype=np.int64))


# ---------------------------------------------------------------------------------------------------
# describe, result metadata


def test_describe():
    rng = _rng(50)
    q = rng.standard_normal((2, 3, 8)).astype(np.float32)
    k = rng.standard_normal((2, 5, 8)).astype(np.float32)
    v = rng.standard_normal((2, 5, 6)).astype(np.float32)
    mask = np.ones((2, 2, 3, 5), dtype=bool)
    mask[0, 1, 2] = False
    result = attention(q, k, v, heads=2, mask=mask, causal=True)
    ref_weights, ref_output = reference_attention(q, k, v, heads=2, mask=mask, causal=True)
    meta = describe(result)
    assert meta["scale"] == pytest.approx(1 / math.sqrt(4))
    assert meta["causal"] is True
    assert meta["heads"] == 2
    assert meta["dtype"] == "float32"
    assert meta["device"] == "cpu"
    assert meta["input_shapes"] == {"query": [2, 3, 8], "key": [2, 5, 8], "value": [2, 5, 6]}
    assert meta["weights_shape"] == list(ref_weights.shape)
    assert meta["output_shape"] == list(ref_output.shape)
    assert meta["weights_axes"] == ["batch", "head", "query", "key"]
    assert meta["fully_masked_rows"] == len(_expected_masked_rows(ref_weights)) == 1


# ---------------------------------------------------------------------------------------------------
# 8. CUDA


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_cuda_matches_reference_and_sdpa(dtype):
    rng = _rng(60)
    q = rng.standard_normal((2, 4, 6, 8))
    k = rng.standard_normal((2, 2, 7, 8))
    v = rng.standard_normal((2, 2, 7, 4))
    mask = rng.random((6, 7)) < 0.6
    mask[:, 0] = True
    mask_cuda = torch.from_numpy(mask).cuda()
    result = attention(q, k, v, mask=mask_cuda, causal=True, dtype=dtype, device="cuda")
    assert result.weights.device.type == "cuda"
    assert result.output.device.type == "cuda"
    assert result.weights.dtype == dtype
    held = [_np(torch.from_numpy(x).to(dtype)) for x in (q, k, v)]
    ref_weights, ref_output = reference_attention(*held, mask=mask, causal=True)
    tol = {torch.float64: F64, torch.float32: {"rtol": 1e-4, "atol": 1e-4}} | HALF_TOL
    _check_against_reference(result, ref_weights, ref_output, tol[dtype])
    tq, tk, tv = (torch.from_numpy(x).cuda().to(dtype) for x in (q, k, v))
    attn_mask = mask_cuda & torch.ones(6, 7, dtype=torch.bool, device="cuda").tril()
    expected = _sdpa(tq, tk, tv, attn_mask=attn_mask, enable_gqa=True)
    np.testing.assert_allclose(_np(result.output), expected, **tol[dtype])


@pytest.mark.parametrize(
    ("given", "dtype"),
    [
        (np.full((2, 4), 1e39), "float32"),  # float64 numbers beyond float32
        (np.full((2, 4), 100_000, np.int64), "float16"),  # whole numbers beyond float16
        (torch.full((2, 4), 70_000.0), "float16"),  # a float32 tensor narrowed
        (torch.full((2, 4), 1e39, dtype=torch.float64), "float32"),
    ],
    ids=["numpy-float64-to-float32", "numpy-int64-to-float16", "torch-float32-to-float16", "torch-f64-f32"],
)
def test_finite_inputs_that_overflow_the_compute_dtype_are_refused(given, dtype):
    with pytest.raises(InputError, match=f"query has values that overflow {dtype}"):
        attention(given, given, given, dtype=dtype)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
def test_largest_finite_values_of_the_compute_dtype_pass_the_range_check(dtype):
    """No scan is needed when the given dtype is the compute dtype; its largest value must still load."""
    largest = torch.finfo(getattr(torch, dtype)).max
    query = torch.tensor([[largest, 0.0]], dtype=getattr(torch, dtype))
    ones = torch.ones((1, 2), dtype=getattr(torch, dtype))
    result = attention(query, ones, ones, dtype=dtype)
    assert torch.isfinite(result.weights).all()
    assert float(result.weights.sum()) == 1.0  # one key: all the weight


def test_large_weights_buffers_are_huge_page_mappings_that_live_with_their_tensor():
    """From HUGE_BYTES up (on Linux), the weights buffer is a mapping of its own advised to use huge
    pages (a library cannot set THP_MEM_ALLOC_ENABLE for torch): writable, the tensor's shape and
    dtype, alive as long as the tensor is; the attention computed in it equals the float64 reference."""
    import gc
    import mmap

    from attncli.compute import buffers

    small = buffers.empty((4, 4), torch.float32, torch.device("cpu"))
    assert small.shape == (4, 4)
    shape = (2, 1024, 1024)  # 8 MiB of float32
    large = buffers.empty(shape, torch.float32, torch.device("cpu"))
    assert (large.shape, large.dtype, large.is_contiguous()) == (shape, torch.float32, True)
    if hasattr(mmap, "MADV_HUGEPAGE"):
        # a mapping of its own starts on a page (malloc's large chunks start 16 bytes into theirs)
        assert large.untyped_storage().data_ptr() % mmap.PAGESIZE == 0
    large.fill_(0.25)
    gc.collect()
    assert float(large.sum()) == 0.25 * large.numel()
    rng = np.random.default_rng(5)
    q, k, v = (rng.standard_normal((2, 1024, 16)).astype(np.float32) for _ in range(3))
    result = attention(q, k, v, causal=True)
    weights, output = reference_attention(q, k, v, causal=True)
    np.testing.assert_allclose(result.weights.numpy(), weights, atol=1e-6)
    np.testing.assert_allclose(result.output.numpy(), output, atol=1e-5)


@pytest.mark.skipif(not hasattr(mmap, "MADV_HUGEPAGE"), reason="huge-page mappings are Linux's")
def test_a_freed_weights_buffer_is_reused_once_no_tensor_uses_it(monkeypatch):
    """The mapping of a buffer is kept when its last tensor (views and NumPy arrays of it included)
    is gone, and the next buffer that fits reuses it (no fresh pages to zero); one still in use never
    is. Results computed in a reused buffer equal the float64 reference."""
    from attncli.compute import buffers

    monkeypatch.setattr(buffers, "_free", [])
    cpu = torch.device("cpu")
    first = buffers.empty((1024, 4096), torch.float32, cpu)  # 16 MiB
    address = first.data_ptr()
    array = first[3:].numpy()
    del first
    busy = buffers.empty((1024, 4096), torch.float32, cpu)
    assert busy.data_ptr() != address  # the NumPy view still uses the first mapping
    del array
    assert len(buffers._free) == 1
    again = buffers.empty((1000, 4096), torch.float32, cpu)  # fits the kept mapping
    assert again.data_ptr() == address
    assert not buffers._free
    del again, busy
    assert len(buffers._free) == buffers.KEEP  # the most recently freed are kept
    buffers.release()
    assert not buffers._free
    rng = np.random.default_rng(6)
    q, k, v = (rng.standard_normal((2, 1024, 16)) for _ in range(3))
    weights, output = reference_attention(q, k, v)
    addresses = []
    for _ in range(2):  # the second run computes in the first one's mapping
        result = attention(q, k, v)
        np.testing.assert_allclose(result.weights.numpy(), weights, atol=1e-12)
        np.testing.assert_allclose(result.output.numpy(), output, atol=1e-12)
        addresses.append(result.weights.data_ptr())
        del result
    assert addresses[0] == addresses[1]


@pytest.mark.skipif(not hasattr(mmap, "MADV_HUGEPAGE"), reason="huge-page mappings are Linux's")
def test_half_precision_weights_and_calls_of_another_dtype_reuse_kept_buffers(monkeypatch):
    """A float16 call's weights, rounded from its float32 scores, are a kept mapping too: the next
    call reuses both (the scores' and the weights', KEEP of them), fresh pages for neither. A float32
    call after a float64 one of the same shape reuses the latter's mapping, twice its size. Results
    equal the float64 reference within each dtype's tolerance."""
    from attncli.compute import buffers

    monkeypatch.setattr(buffers, "_free", [])
    rng = np.random.default_rng(7)
    q, k, v = (rng.standard_normal((4, 1024, 16)) for _ in range(3))  # float16 weights: 8 MiB
    weights, output = reference_attention(q, k, v)
    addresses = []
    for _ in range(2):
        result = attention(q, k, v, dtype=torch.float16)
        assert result.weights.dtype == torch.float16
        assert result.weights.untyped_storage().data_ptr() % mmap.PAGESIZE == 0  # a mapping of its own
        np.testing.assert_allclose(result.weights.double().numpy(), weights, rtol=1e-3, atol=1e-3)
        np.testing.assert_allclose(result.output.double().numpy(), output, rtol=1e-3, atol=2e-3)
        addresses.append(result.weights.data_ptr())
        del result
        assert len(buffers._free) == 2  # the scores', freed during the call, and the weights'
    assert addresses[0] == addresses[1]
    buffers.release()
    wide = attention(q, k, v, dtype=torch.float64)  # 32 MiB of weights
    address = wide.weights.data_ptr()
    del wide
    narrow = attention(q, k, v, dtype=torch.float32)
    assert narrow.weights.data_ptr() == address  # 16 MiB in the float64 call's mapping
    np.testing.assert_allclose(narrow.weights.numpy(), weights, atol=1e-6)


@pytest.mark.skipif(not hasattr(mmap, "MADV_HUGEPAGE"), reason="huge-page mappings are Linux's")
def test_threads_computing_at_once_never_share_a_weights_buffer():
    """attention() from several threads at once, each result kept while the others run and freed
    after: no two live results share memory, and each equals the float64 reference."""
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(8)
    inputs = [tuple(rng.standard_normal((2, 1024, 8)).astype(np.float32) for _ in range(3)) for _ in range(4)]
    expected = [reference_attention(*qkv)[0] for qkv in inputs]

    def work(index: int) -> list[str]:
        problems = []
        for _ in range(3):
            result = attention(*inputs[index])
            if not np.allclose(result.weights.numpy(), expected[index], atol=1e-6):
                problems.append(f"thread {index}: weights differ from the reference")
            del result
        return problems

    live = [attention(*qkv) for qkv in inputs]  # four buffers in use at once
    addresses = {result.weights.data_ptr() for result in live}
    assert len(addresses) == len(live)
    del live
    with ThreadPoolExecutor(4) as pool:
        assert [problem for found in pool.map(work, range(4)) for problem in found] == []
