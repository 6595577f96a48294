"""The fused kernel of runs in blocks (compute/kernel_numba.py) and the torch path it falls back to,
both held against the float64 reference (tests/reference.py): output, every statistic, the pooled
picture; masks (bool, additive), causal, grouped-query attention, fully masked rows, block sizes.

Kept in one file with one compiled signature: each fresh test process pays Numba's first load once.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import time
from typing import Any

import numpy as np
import pytest
import torch
from reference import reference_attention

from attncli.compute import kernel_numba, prepare, run

pytestmark = pytest.mark.skipif(not kernel_numba.available(), reason=f"no kernel: {kernel_numba.why_not()}")


@pytest.fixture(autouse=True)
def small_problems_take_the_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    """The problems here are small: the kernel takes them even before it has run in the process."""
    monkeypatch.setattr(kernel_numba, "MIN_WEIGHTS_TO_LOAD", 0)


@pytest.fixture(autouse=True)
def two_threads() -> Any:
    """torch on two threads at least, so that the fused kernel's blocks go through its pool of
    threads (a parallel test run gives each worker process one)."""
    before = torch.get_num_threads()
    torch.set_num_threads(max(2, before))
    yield
    torch.set_num_threads(before)


#: float32 against float64: a few units of float32 rounding in sums of up to 100 terms.
OUTPUT = {"rtol": 1e-5, "atol": 2e-6}
STATS = {"rtol": 2e-5, "atol": 2e-6}


def _random(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _case(name: str) -> dict[str, Any]:
    """prepare() arguments (float32): query, key, value as "qkv", and keywords."""
    if name == "plain":
        return {"qkv": (_random(2, 37, 8, seed=1), _random(2, 53, 8, seed=2), _random(2, 53, 5, seed=3))}
    if name == "causal_tall":  # Lq > Lk: the last rows see every key
        return {
            "qkv": (_random(3, 41, 8, seed=4), _random(3, 29, 8, seed=5), _random(3, 29, 4, seed=6)),
            "causal": True,
        }
    if name == "bool_mask_masked_rows":
        mask = torch.rand(2, 30, 45, generator=torch.Generator().manual_seed(7)) < 0.3
        mask[0, 3] = False  # a row with every key masked
        mask[1, :, 0] = False  # key 0 (the sink) masked in a matrix
        return {
            "qkv": (_random(2, 30, 8, seed=8), _random(2, 45, 8, seed=9), _random(2, 45, 4, seed=10)),
            "mask": mask,
        }
    if name == "gqa_causal_float_mask":
        generator = torch.Generator().manual_seed(11)
        mask = torch.where(torch.rand(20, 20, generator=generator) < 0.3, -math.inf, _random(20, 20, seed=12))
        mask[5] = -math.inf  # every key of row 5 masked
        return {
            "qkv": (
                _random(2, 4, 20, 8, seed=13),
                _random(2, 2, 20, 8, seed=14),
                _random(2, 2, 20, 3, seed=15),
            ),
            "causal": True,
            "mask": mask,
        }
    if name == "mask_extra_axes_heads":  # the mask adds a batch axis; --heads splits the features
        mask = torch.rand(3, 1, 1, 26, generator=torch.Generator().manual_seed(16)) < 0.6
        return {
            "qkv": (_random(19, 8, seed=17), _random(26, 8, seed=18), _random(26, 6, seed=19)),
            "mask": mask,
            "heads": 2,
        }
    if name == "wide_causal_mask":  # rows longer than the kernel's pieces; cells of 434 keys; causal, Lq < Lk
        mask = torch.rand(1, 2600, generator=torch.Generator().manual_seed(38)) < 0.9
        return {
            "qkv": (_random(2, 24, 8, seed=39), _random(2, 2600, 8, seed=40), _random(2, 2600, 4, seed=41)),
            "mask": mask,
            "causal": True,
        }
    if name == "wide":
        return {
            "qkv": (_random(2, 20, 16, seed=42), _random(2, 2100, 16, seed=43), _random(2, 2100, 4, seed=44))
        }
    raise AssertionError(name)


CASES = (
    "plain",
    "causal_tall",
    "bool_mask_masked_rows",
    "gqa_causal_float_mask",
    "mask_extra_axes_heads",
    "wide_causal_mask",
    "wide",
)


@pytest.fixture(params=["numba", "torch"])
def kernel(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each test twice: the fused kernel, and the torch path as ATTNCLI_KERNEL=torch forces it."""
    monkeypatch.delitem(kernel_numba._state, "why_not", raising=False)
    if request.param == "torch":
        monkeypatch.setenv(kernel_numba.ENV, "torch")
    else:
        monkeypatch.delenv(kernel_numba.ENV, raising=False)
    yield request.param
    kernel_numba._state.pop("why_not", None)  # found again, without the variable, by the next test


def _open_keys(case: dict[str, Any], weights_shape: tuple[int, ...]) -> np.ndarray:
    """True where a query may see a key, from the case's own mask and causal flag (the reference's rule)."""
    lq, lk = weights_shape[-2:]
    allowed = np.tril(np.ones((lq, lk), bool)) if case.get("causal") else np.ones((lq, lk), bool)
    mask = case.get("mask")
    if mask is not None:
        allowed = allowed & (mask.numpy() if mask.dtype == torch.bool else mask.numpy() != -np.inf)
    return np.broadcast_to(allowed, weights_shape)


def _expected_stats(weights: np.ndarray, open_keys: np.ndarray) -> dict[str, np.ndarray]:
    """Every statistic of float64 weights, written from the definitions (analysis/rows.py's docstrings)."""
    lq, lk = weights.shape[-2:]
    count = open_keys.sum(axis=-1)
    live = count > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -np.where(weights > 0, weights * np.log(np.where(weights > 0, weights, 1.0)), 0.0).sum(-1)
        normalised = np.where(count >= 2, entropy / np.log(count), np.nan)
    ranked = np.where(open_keys, weights, -np.inf)
    distance = (weights * np.abs(np.arange(lq)[:, None] - np.arange(lk))).sum(-1)
    return {
        "entropy": np.where(live, entropy, np.nan),
        "entropy_normalised": normalised,
        "max_weight": np.where(live, ranked.max(-1), np.nan),
        "argmax": np.where(live, ranked.argmax(-1), -1),
        "sink": np.where(open_keys[..., 0], weights[..., 0], np.nan),
        "distance": np.where(live, distance, np.nan),
    }


def _expected_picture(weights: np.ndarray, open_keys: np.ndarray, cell: tuple[int, int]) -> tuple[Any, Any]:
    """Max and mean of each cell's open weights, NaN where none is open."""
    *lead, lq, lk = weights.shape
    rows, cols = math.ceil(lq / cell[0]), math.ceil(lk / cell[1])
    largest, mean = np.full((*lead, rows, cols), np.nan), np.full((*lead, rows, cols), np.nan)
    for matrix in np.ndindex(*lead):
        for r in range(rows):
            for c in range(cols):
                part = (*matrix, slice(r * cell[0], (r + 1) * cell[0]), slice(c * cell[1], (c + 1) * cell[1]))
                values = weights[part][open_keys[part]]
                if values.size:
                    largest[(*matrix, r, c)], mean[(*matrix, r, c)] = values.max(), values.mean()
    return largest, mean


@pytest.mark.parametrize("block_rows", [1, 7, 64])
@pytest.mark.parametrize("name", CASES)
def test_both_paths_agree_with_float64(name: str, block_rows: int, kernel: str) -> None:
    """Output, statistics and picture of a run in blocks within float32 rounding of float64 maths
    that shares no code with attncli, whichever path made the blocks."""
    case = _case(name)
    query, key, value = case["qkv"]
    problem = prepare(query, key, value, **{n: v for n, v in case.items() if n != "qkv"})
    # a heatmap's title: the figures of a table that keeps no cell
    result = run(problem, block_rows=block_rows, stats=True, picture=(4, 6), table=([], []))
    assert result.kernel == kernel
    weights64, output64 = reference_attention(
        query.double().numpy(),
        key.double().numpy(),
        value.double().numpy(),
        scale=problem.scale,
        mask=None
        if "mask" not in case
        else case["mask"].double().numpy()
        if case["mask"].is_floating_point()
        else case["mask"].numpy(),
        causal=case.get("causal", False),
        heads=case.get("heads"),
    )
    np.testing.assert_allclose(result.output.numpy(), output64, **OUTPUT)
    open_keys = _open_keys(case, weights64.shape)
    expected = _expected_stats(weights64, open_keys)
    assert result.stats is not None
    for field, values in expected.items():
        got = getattr(result.stats, field).numpy()
        if field == "argmax":
            np.testing.assert_array_equal(got, values, err_msg=field)
        else:
            np.testing.assert_allclose(got, values, **STATS, err_msg=field)
    assert (result.masked_rows is None) == ("mask" not in case)
    if result.masked_rows is not None:
        np.testing.assert_array_equal(result.masked_rows.numpy(), ~open_keys.any(axis=-1))
    assert result.table is not None
    live = open_keys.any(axis=-1)  # (..., Lq)
    open_weights = np.where(open_keys, weights64, np.inf)
    np.testing.assert_allclose(result.table.maximum, weights64.max(axis=(-2, -1)), **STATS)
    np.testing.assert_allclose(result.table.minimum, open_weights.min(axis=(-2, -1)), rtol=2e-5, atol=1e-30)
    np.testing.assert_array_equal(result.table.live, live.any(axis=-1))
    assert float(result.table.deviation.max()) < 1e-6  # float32 weights' sums (torch), float64 (kernel)
    assert result.table.any_blocked == bool((~open_keys).any())
    largest, mean = _expected_picture(weights64, open_keys, result.picture_blocks)
    np.testing.assert_allclose(result.picture_max, largest, **STATS)
    np.testing.assert_allclose(result.picture_mean, mean, **STATS)


def test_the_kernel_runs_only_what_it_computes(kernel: str) -> None:
    """The fused kernel makes the blocks of runs that keep the output, statistics and picture; top-k,
    the full weights, float64, NaN inputs and a float mask near float32's lowest (score + mask could
    reach -inf without being masked) take the torch path, which gives what they need."""
    query, key, value = (_random(16, 8, seed=seed) for seed in (20, 21, 22))
    problem = prepare(query, key, value)
    assert run(problem, block_rows=5, stats=True).kernel == kernel
    assert run(problem, block_rows=5, picture=(2, 2)).kernel == kernel
    entropy_alone = run(problem, block_rows=5, entropy=True)  # a heatmap's title without --stats
    assert entropy_alone.kernel == kernel
    assert entropy_alone.entropy is not None
    torch.testing.assert_close(entropy_alone.entropy, run(problem, block_rows=5, stats=True).stats.entropy)
    assert run(problem, block_rows=5, table=([1], [2])).kernel == "torch"  # a table's cells
    assert run(problem, block_rows=5, stats=True, top_k=2).kernel == "torch"
    assert run(problem, block_rows=5, stats=True, keep_weights=True).kernel == "torch"
    assert run(problem, stats=True).kernel == "torch"  # a whole run keeps its weights' path
    assert run(prepare(query, key, value, dtype="float64"), block_rows=5, stats=True).kernel == "torch"
    with_nan = query.clone()
    with_nan[3, 2] = math.nan  # the kernel's maxima assume none (the torch path refuses or passes it on)
    assert not kernel_numba.fits(prepare(with_nan, key, value))
    near_lowest = torch.zeros(16, 16)
    near_lowest[0, 0] = -1e38
    assert not kernel_numba.fits(prepare(query, key, value, mask=near_lowest))


def test_a_problem_for_the_numpy_kernel_never_takes_the_fused_kernel(kernel: str) -> None:
    """`kernels.choose` picks the NumPy kernel before `prepare`; such a problem run in blocks that
    only the fused kernel's sinks read keeps the NumPy kernel's blocks (the fused kernel is for the
    torch kernel's long runs), with the same numbers as the torch kernel's run of the same blocks."""
    query, key, value = (_random(16, 8, seed=seed) for seed in (26, 27, 28))
    options: dict[str, Any] = {"block_rows": 5, "stats": True, "picture": (2, 2)}
    small = run(prepare(query.numpy(), key.numpy(), value.numpy(), causal=True, kernel="numpy"), **options)
    assert small.kernel == "numpy"
    assert isinstance(small.output, np.ndarray)
    large = run(prepare(query, key, value, causal=True), **options)
    assert large.kernel == kernel
    np.testing.assert_allclose(small.output, large.output.numpy(), **OUTPUT)
    assert small.stats is not None
    assert large.stats is not None
    np.testing.assert_allclose(small.stats.entropy, large.stats.entropy.numpy(), **STATS)
    assert small.picture_max is not None
    assert large.picture_max is not None
    np.testing.assert_allclose(small.picture_max, large.picture_max, **STATS)


def test_fallback_where_numba_does_not_import(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without Numba (its import raising ImportError) runs take the torch path and say why."""
    monkeypatch.delitem(kernel_numba._state, "why_not", raising=False)
    monkeypatch.delenv(kernel_numba.ENV, raising=False)
    monkeypatch.delitem(sys.modules, "attncli.compute._numba_rows")  # imported again, ...
    monkeypatch.setitem(sys.modules, "numba", None)  # ... where `import numba` raises ImportError
    query, key, value = (_random(12, 8, seed=seed) for seed in (23, 24, 25))
    problem = prepare(query, key, value, causal=True)
    result = run(problem, block_rows=5, stats=True, picture=(3, 3))
    assert result.kernel == "torch"
    assert not kernel_numba.available()
    assert kernel_numba.path_name().startswith("torch (numba did not import")
    monkeypatch.undo()
    kernel_numba._state.pop("why_not", None)
    assert kernel_numba.available()
    again = run(problem, block_rows=5, stats=True, picture=(3, 3))
    assert again.kernel == "numba"
    np.testing.assert_allclose(again.output.numpy(), result.output.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
def test_a_forked_child_runs_the_kernel() -> None:
    """A child forked after a run (multiprocessing's default on Linux) has none of the parent's
    threads: its runs get a pool of their own instead of waiting for the parent's forever."""
    query, key, value = (_random(12, 8, seed=seed) for seed in (26, 27, 28))
    problem = prepare(query, key, value)
    expected = run(problem, block_rows=5, stats=True).output
    pid = os.fork()
    if pid == 0:  # the child: exit status 0 only if its run agrees
        code = 1
        try:
            got = run(problem, block_rows=5, stats=True)
            code = 0 if got.kernel == "numba" and torch.equal(got.output, expected) else 1
        finally:
            os._exit(code)
    deadline = time.monotonic() + 60
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    if done[0] == 0:  # stuck: the child waits for threads it does not have
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        pytest.fail("the forked child's run did not finish in 60 s")
    assert os.waitstatus_to_exitcode(done[1]) == 0


def test_one_thread_runs_the_kernel_inline(monkeypatch: pytest.MonkeyPatch) -> None:
    """With torch on one thread the kernel runs in the calling thread: the same blocks, with the same
    numbers, as the pool's; and a run takes it."""
    query, key, value = (_random(2, 21, 8, seed=seed) for seed in (29, 30, 31))
    problem = prepare(query, key, value, causal=True)
    pooled = list(kernel_numba.fused_blocks(problem, 8, cell_keys=3))
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    inline = list(kernel_numba.fused_blocks(problem, 8, cell_keys=3))
    assert (
        [(b.start, b.stop) for b in inline]
        == [(b.start, b.stop) for b in pooled]
        == [(0, 8), (8, 16), (16, 21)]
    )
    for ours, theirs in zip(inline, pooled, strict=True):
        torch.testing.assert_close(ours.output, theirs.output, rtol=0, atol=0)
        assert ours.summary is not None
        assert theirs.summary is not None
        torch.testing.assert_close(ours.summary.stats.distance, theirs.summary.stats.distance, rtol=0, atol=0)
        torch.testing.assert_close(ours.summary.cell_sums, theirs.summary.cell_sums, rtol=0, atol=0)
    assert run(problem, block_rows=8, stats=True, picture=(3, 3)).kernel == "numba"


def test_fused_blocks_are_as_large_as_the_memory_of_a_torch_block_allows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The kernel holds a block's scores and no weights: the memory a block of the torch path may take
    (BLOCK_OVERHEAD times its scores) holds a fused block for each thread, twice over, up to
    MAX_BLOCK_BYTES a block."""
    from attncli.compute.run import BLOCK_OVERHEAD

    query, key, value = (_random(2, 1000, 8, seed=seed) for seed in (45, 46, 47))
    problem = prepare(query, key, value)  # a row of scores: 2 x 1,000 float32 = 8,000 bytes
    row, allowed = 8000, 10 * BLOCK_OVERHEAD * 8000  # what a torch block of 10 rows may take
    for threads in (1, 2, 3, 8, 64):
        with monkeypatch.context() as patched:
            patched.setattr(torch, "get_num_threads", lambda threads=threads: threads)
            rows = kernel_numba.block_rows_for(problem, 10, BLOCK_OVERHEAD)
        assert rows >= 1
        if rows > 1:  # a block for each thread, its scores and as much again, within that memory
            assert threads * rows * row * 2 <= allowed
        assert threads * (rows + 1) * row * 2 > allowed  # and no smaller than it allows
    assert kernel_numba.block_rows_for(problem, 10**6, BLOCK_OVERHEAD) == 1000  # never more than every row
    with monkeypatch.context() as patched:
        patched.setattr(kernel_numba, "MAX_BLOCK_BYTES", 80_000)
        assert kernel_numba.block_rows_for(problem, 100, BLOCK_OVERHEAD) == 80_000 // row
    result = run(problem, block_rows=10, stats=True)  # the result says the blocks it was made in
    assert (result.kernel, result.block_rows) == (
        "numba",
        kernel_numba.block_rows_for(problem, 10, BLOCK_OVERHEAD),
    )


def test_the_pool_leaves_torch_threads_as_they_were() -> None:
    """Blocks computed side by side run torch on one thread in each pool thread; the caller's thread,
    and threads started after, keep the count they had."""
    import threading

    before = torch.get_num_threads()  # 2 or more: two_threads
    query, key, value = (_random(2, 40, 8, seed=seed) for seed in (32, 33, 34))
    result = run(prepare(query, key, value), block_rows=4, stats=True)
    assert result.kernel == "numba"
    assert torch.get_num_threads() == before
    seen: list[int] = []
    later = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    later.start()
    later.join()
    assert seen == [before]
    pool = kernel_numba._pool(before)
    assert {pool.submit(torch.get_num_threads).result() for _ in range(4 * before)} == {1}


def test_an_abandoned_run_starts_no_more_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """A caller that stops taking blocks (an error in a sink, Ctrl-C) leaves none queued: of 20
    blocks, only those already running when it stopped are computed."""
    import threading

    workers = max(1, torch.get_num_threads())
    query, key, value = (_random(60, 8, seed=seed) for seed in (35, 36, 37))
    computed_rows: list[int] = []
    real = kernel_numba._fused_block

    def counted(*arguments: Any) -> Any:
        computed_rows.append(arguments[3])  # the block's first row
        return real(*arguments)

    monkeypatch.setattr(kernel_numba, "_fused_block", counted)
    blocks = kernel_numba.fused_blocks(prepare(query, key, value), 3)
    first = next(blocks)
    assert (first.start, first.stop) == (0, 3)
    blocks.close()  # as a for loop left by an exception does
    if workers > 1:  # every pool thread free again: the blocks that were running are done
        free = threading.Barrier(workers)
        for done in [kernel_numba._pool(workers).submit(free.wait) for _ in range(workers)]:
            done.result(timeout=30)
    assert 1 <= len(computed_rows) <= workers + 1 < 20


def test_a_small_run_loads_no_numba_but_takes_the_kernel_once_it_is_loaded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Below MIN_WEIGHTS_TO_LOAD weights, loading Numba would cost more than the kernel saves: such a
    run takes the torch path, until the kernel has run in the process (its load paid)."""
    problem = prepare(*(_random(2, 40, 8, seed=seed) for seed in (48, 49, 50)))  # 3,200 weights
    monkeypatch.setattr(kernel_numba, "MIN_WEIGHTS_TO_LOAD", 3201)
    monkeypatch.setitem(kernel_numba._state, "ran", False)
    assert not kernel_numba.fits(problem)
    assert run(problem, block_rows=8, stats=True).kernel == "torch"
    monkeypatch.setattr(kernel_numba, "MIN_WEIGHTS_TO_LOAD", 3200)
    assert run(problem, block_rows=8, stats=True).kernel == "numba"  # large enough: loads and runs it
    monkeypatch.setattr(kernel_numba, "MIN_WEIGHTS_TO_LOAD", 10**9)
    assert run(problem, block_rows=8, stats=True).kernel == "numba"  # loaded: worth it at any size
