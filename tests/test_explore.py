"""`attn explore`: the figures of a cell and the pooled windows against the float64 reference, the
app driven headless by Textual's pilot, and the command's refusals."""

from __future__ import annotations

import asyncio
import io
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_error
from reference import reference_attention
from typer.testing import CliRunner

from attncli.cli import app
from attncli.compute import prepare
from attncli.errors import UsageError
from attncli.explore.session import Explorer, axes_of

RNG = np.random.default_rng(19)
runner = CliRunner()


def _explorer(
    positions: int = 12,
    heads: int = 2,
    *,
    keys: int | None = None,
    kv_heads: int | None = None,
    causal: bool = False,
    mask: np.ndarray | None = None,
    tokens: list[list[str]] | None = None,
) -> tuple[Explorer, tuple[np.ndarray, ...]]:
    """An explorer of random float64 inputs (batch 2), and those inputs."""
    keys = keys or positions
    query = RNG.standard_normal((2, heads, positions, 8))
    key = RNG.standard_normal((2, kv_heads or heads, keys, 8))
    value = RNG.standard_normal((2, kv_heads or heads, keys, 4))
    problem = prepare(query, key, value, mask=mask, causal=causal)
    explorer = Explorer(problem, axes_of(problem, None), label="test", tokens=tokens)
    return explorer, (query, key, value)


def _reference(inputs: tuple[np.ndarray, ...], *, causal=False, mask=None) -> np.ndarray:
    query, key, value = inputs
    if key.shape[1] != query.shape[1]:  # grouped-query: query head h reads key head h // group
        group = query.shape[1] // key.shape[1]
        key, value = np.repeat(key, group, axis=1), np.repeat(value, group, axis=1)
    weights, _ = reference_attention(query, key, value, causal=causal, mask=mask)
    return weights


def _reference_scores(inputs, index, query_row, mask=None) -> np.ndarray:
    query, key, _ = inputs
    group = query.shape[1] // key.shape[1]
    b, h = index
    scores = key[b, h // group] @ query[b, h, query_row] / math.sqrt(query.shape[-1])
    if mask is not None and mask.dtype != bool:
        scores = (
            scores + np.broadcast_to(mask, (*query.shape[:2], query.shape[2], key.shape[2]))[b, h, query_row]
        )
    return scores


CASES = {
    "plain": {},
    "causal": {"causal": True},
    "padding and causal": {
        "causal": True,
        "mask": np.arange(12)[None, None, None, :] < np.array([12, 9])[:, None, None, None],
    },
    "additive mask": {"mask": RNG.standard_normal((12, 12))},
    "grouped query": {"kv_heads": 1, "heads": 4},
}


@pytest.mark.parametrize("case", CASES)
def test_cell_figures_are_the_float64_reference(case):
    """Weight, score, rank, entropy, sink, distance and top keys of cells all over the matrix, each
    from the reference's weights of the whole matrix (not from the app's own rows)."""
    options = dict(CASES[case])
    heads = options.pop("heads", 2)
    explorer, inputs = _explorer(heads=heads, **options)
    weights = _reference(inputs, causal=options.get("causal", False), mask=options.get("mask"))
    blocked = np.zeros(weights.shape, dtype=bool)
    if options.get("causal"):
        blocked |= np.triu(np.ones((12, 12), dtype=bool), 1)
    if options.get("mask") is not None and options["mask"].dtype == bool:
        blocked |= ~np.broadcast_to(options["mask"], weights.shape)
    for index, (row, key) in [
        ((0, 0), (0, 0)),
        ((1, heads - 1), (11, 3)),
        ((1, 0), (7, 7)),
        ((0, 1), (4, 10)),
    ]:
        figures = explorer.cell(index, row, key, top=3)
        w = weights[(*index, row)]
        shut = blocked[(*index, row)]
        assert figures.weight == pytest.approx(w[key], abs=1e-12)
        assert figures.masked == shut[key]
        if shut[key]:
            assert figures.score is None
            assert figures.rank is None
        else:
            score = _reference_scores(inputs, index, row, options.get("mask"))[key]
            assert figures.score == pytest.approx(score, abs=1e-9)
            assert figures.rank == 1 + int((w[~shut] > w[key]).sum())
        open_w = w[~shut]
        entropy = -(open_w[open_w > 0] * np.log(open_w[open_w > 0])).sum()
        assert figures.entropy == pytest.approx(entropy, abs=1e-9)
        assert figures.sink == (
            pytest.approx(w[0], abs=1e-12) if not shut[0] else pytest.approx(math.nan, nan_ok=True)
        )
        distance = (w * np.abs(row - np.arange(12))).sum()
        assert figures.distance == pytest.approx(distance, abs=1e-9)
        order = sorted(np.flatnonzero(~shut), key=lambda j: (-w[j], j))[:3]
        assert [k for k, _, _ in figures.top] == order
        assert [v for _, v, _ in figures.top] == pytest.approx(w[order], abs=1e-12)


def _pooled(weights, blocked, blocks, how):
    """The reference's pooling of `weights` (R*br, C*bc, ragged at the ends) into cells, masked
    weights left out, NaN where a cell has none."""
    rows, cols = weights.shape
    br, bc = blocks
    out = np.full((math.ceil(rows / br), math.ceil(cols / bc)), np.nan)
    for r in range(out.shape[0]):
        for c in range(out.shape[1]):
            cell = weights[r * br : (r + 1) * br, c * bc : (c + 1) * bc]
            shut = blocked[r * br : (r + 1) * br, c * bc : (c + 1) * bc]
            if (~shut).any():
                out[r, c] = cell[~shut].max() if how == "max" else cell[~shut].mean()
    return out


@pytest.mark.parametrize(
    ("causal", "origin", "span"),
    [
        (False, (6, 9), (20, 27)),
        (True, (6, 9), (20, 27)),
        (True, (0, 8), (12, 20)),  # rows 0-7 see none of the window's keys, rows 8-11 a few
    ],
)
@pytest.mark.parametrize("padded", [False, True], ids=["no mask", "padding mask"])
def test_window_pools_only_the_visible_rows_and_keys(causal, origin, span, padded):
    # batch entry 1 padded to 31 keys: its keys 31.. masked in every row
    mask = np.arange(40)[None, None, None, :] < np.array([40, 31])[:, None, None, None] if padded else None
    explorer, inputs = _explorer(positions=40, causal=causal, mask=mask)
    weights = _reference(inputs, causal=causal, mask=mask)[1, 0]
    blocked = np.triu(np.ones((40, 40), dtype=bool), 1) if causal else np.zeros((40, 40), dtype=bool)
    if padded:
        blocked |= np.arange(40)[None, :] >= 31
    blocks = (4, 3)
    window = explorer.window((1, 0), origin, span, blocks)
    assert window.blocks == blocks
    assert window.origin == origin
    assert window.span == span
    visible = np.s_[origin[0] : origin[0] + span[0], origin[1] : origin[1] + span[1]]
    for how, got in (("max", window.picture_max), ("mean", window.picture_mean)):
        expected = _pooled(weights[visible], blocked[visible], blocks, how)
        np.testing.assert_allclose(got, expected, atol=1e-6, equal_nan=True)
    # shown plainly (m): every weight of a cell counts, the masked ones as the reference's 0
    nothing_masked = np.zeros(blocked.shape, dtype=bool)[visible]
    expected_all = _pooled(weights[visible], nothing_masked, blocks, "mean")
    np.testing.assert_allclose(window.picture_all_mean, expected_all, atol=1e-6)


@pytest.mark.parametrize("kept", [True, False], ids=["head kept", "rows computed"])
def test_window_of_a_long_input_is_computed_in_blocks_of_rows(monkeypatch, kept):
    """More rows than one block holds: the same picture as the reference, block after block, whether
    the head's weights are kept whole (up to HEAD_BYTES) or each window's rows are computed."""
    import attncli.explore.session as session

    monkeypatch.setattr(session, "_rows_per_block", lambda problem, keys: 7)
    if not kept:
        monkeypatch.setattr(session, "HEAD_BYTES", 30 * 30 * 8 - 1)
    explorer, inputs = _explorer(positions=30, causal=True)
    weights = _reference(inputs, causal=True)[0, 1]
    blocked = np.triu(np.ones((30, 30), dtype=bool), 1)
    for origin, span, blocks in [
        ((0, 0), (30, 30), (2, 2)),
        ((6, 4), (14, 18), (2, 3)),
        ((10, 12), (8, 8), (1, 1)),
    ]:
        window = explorer.window((0, 1), origin, span, blocks)
        visible = np.s_[origin[0] : origin[0] + span[0], origin[1] : origin[1] + span[1]]
        for how, got in (("max", window.picture_max), ("mean", window.picture_mean)):
            expected = _pooled(weights[visible], blocked[visible], blocks, how)
            np.testing.assert_allclose(got, expected, atol=1e-6, equal_nan=True)
    assert explorer.kept_heads() == ([(0, 1)] if kept else [])


def test_windows_of_a_kept_head_compute_no_rows_again(monkeypatch):
    """Zooming and panning over one head pool its kept weights: its rows are computed once. Two
    heads are kept (the one shown and the one computed ahead): going back to the first computes
    nothing, a third replaces the one used least lately."""
    import attncli.explore.session as session

    computed: list[tuple[int, ...]] = []
    matrix_problem, rows_problem = Explorer.matrix_problem, Explorer.rows_problem

    def counted_matrix(self, index, **options):
        computed.append(index)
        return matrix_problem(self, index, **options)

    def counted_rows(self, index, start, stop, *, trim=False):
        computed.append(index)
        return rows_problem(self, index, start, stop, trim=trim)

    monkeypatch.setattr(session.Explorer, "matrix_problem", counted_matrix)
    monkeypatch.setattr(session.Explorer, "rows_problem", counted_rows)
    explorer, inputs = _explorer(positions=40, causal=True)
    for origin, span, blocks in [
        ((0, 0), (40, 40), (4, 4)),
        ((8, 8), (20, 20), (2, 2)),
        ((10, 9), (10, 10), (1, 1)),
    ]:
        explorer.window((1, 1), origin, span, blocks)
    assert computed == [(1, 1)]  # the matrix computed for the first window only
    window = explorer.window((0, 1), (8, 8), (20, 20), (2, 2))
    assert computed == [(1, 1), (0, 1)]
    weights = _reference(inputs, causal=True)[0, 1]
    blocked = np.triu(np.ones((40, 40), dtype=bool), 1)
    expected = _pooled(weights[8:28, 8:28], blocked[8:28, 8:28], (2, 2), "max")
    np.testing.assert_allclose(window.picture_max, expected, atol=1e-6, equal_nan=True)
    explorer.window((1, 1), (0, 0), (40, 40), (4, 4))  # kept: nothing computed
    assert computed == [(1, 1), (0, 1)]
    assert explorer.kept_heads() == [(0, 1), (1, 1)]
    explorer.window((0, 0), (0, 0), (40, 40), (4, 4))  # a third: (0, 1), used least lately, goes
    assert computed == [(1, 1), (0, 1), (0, 0)]
    assert explorer.kept_heads() == [(1, 1), (0, 0)]
    window = explorer.window((0, 1), (8, 8), (20, 20), (2, 2))  # computed again
    assert computed == [(1, 1), (0, 1), (0, 0), (0, 1)]
    np.testing.assert_allclose(window.picture_max, expected, atol=1e-6, equal_nan=True)


def test_a_result_files_weights_are_explored_as_saved(tmp_path):
    """`attn compute -o` keeps the weights: the explorer reads them (with the causal flag of the
    metadata) and gives the same figures as the reference, with no score (the file has none)."""
    from attncli.explore.session import open_explorer

    query, key, value = (RNG.standard_normal((2, 10, 8)) for _ in range(3))
    np.savez(tmp_path / "qkv.npz", query=query, key=key, value=value)
    result = runner.invoke(
        app, ["compute", str(tmp_path / "qkv.npz"), "--causal", "-q", "-o", str(tmp_path / "r.safetensors")]
    )
    assert result.exit_code == 0, result.output
    explorer = open_explorer([str(tmp_path / "r.safetensors")])
    assert explorer.problem is None
    assert explorer.axes == ("batch",)
    weights = _reference((query, key, value), causal=True)
    shut = np.triu(np.ones((10, 10), dtype=bool), 1)
    for row, col in [(0, 0), (6, 2), (6, 8), (9, 9)]:
        figures = explorer.cell((1,), row, col, top=3)
        w = weights[1, row]
        assert figures.weight == pytest.approx(w[col], abs=1e-12)
        assert figures.masked == shut[row, col]
        assert figures.score is None
        if not shut[row, col]:
            assert figures.rank == 1 + int((w[~shut[row]] > w[col]).sum())
        open_w = w[~shut[row]]
        assert figures.entropy == pytest.approx(-(open_w * np.log(open_w)).sum(), abs=1e-9)
        assert [k for k, _, _ in figures.top] == sorted(np.flatnonzero(~shut[row]), key=lambda j: (-w[j], j))[
            :3
        ]
    window = explorer.window((1,), (2, 3), (6, 6), (2, 2))
    visible = np.s_[2:8, 3:9]
    expected = _pooled(weights[1][visible], shut[visible], (2, 2), "max")
    np.testing.assert_allclose(window.picture_max, expected, atol=1e-12, equal_nan=True)
    grid = explorer.grid()
    np.testing.assert_allclose(
        grid.picture_max[1], _pooled(weights[1], shut, (1, 1), "max"), atol=1e-6, equal_nan=True
    )
    with pytest.raises(UsageError, match="--causal"):
        open_explorer([str(tmp_path / "r.safetensors")], causal=True)


# --- the app, driven by Textual's pilot ---------------------------------------------------------------


def _capture_file(path: Path, layers=3, heads=4, positions=6, rng=RNG) -> dict[str, np.ndarray]:
    """A file laid out as `attn capture` writes one: one text, its tokens, float32 layers."""
    from safetensors.numpy import save_file

    tensors = {}
    for layer in range(layers):
        for role in ("query", "key", "value"):
            tensors[f"layers.{layer}.{role}"] = rng.standard_normal((1, heads, positions, 8)).astype(
                np.float32
            )
        tensors[f"layers.{layer}.mask"] = np.ones((1, 1, positions, positions), dtype=bool)
    tokens = [["[CLS]", "the", "cat", "sat", ".", "[SEP]"][:positions]]
    meta = {
        "tokens": tokens,
        "lengths": [positions],
        "num_layers": layers,
        "layers": {str(layer): {"scaling": 0.35} for layer in range(layers)},
    }
    save_file(tensors, str(path), metadata={key: json.dumps(value) for key, value in meta.items()})
    return tensors


def _capture_explorer(path: Path) -> Explorer:
    from attncli.explore.session import open_explorer

    return open_explorer([str(path)])


@pytest.fixture
def _quick_idle_checks(monkeypatch):
    """`pilot.pause()` waits until the process is idle: a sleep of Textual's SLEEP_GRANULARITY
    (20 ms) at a time, until one used under SLEEP_IDLE (1/20 of it) of CPU time. The same test in
    5 ms steps: each pause about 10 ms instead of 40-50 (these tests pause about 100 times, 5 s of
    the file's 14 s on an idle worker)."""
    import textual._wait

    monkeypatch.setattr(textual._wait, "SLEEP_GRANULARITY", 0.005)
    monkeypatch.setattr(textual._wait, "SLEEP_IDLE", 0.005 / 20)


async def _settle(app, pilot) -> None:
    """Wait until the screen has answered the keys pressed: their computations (threads) and redraws."""
    await pilot.pause()
    await app.workers.wait_for_complete()
    await pilot.pause()


async def _open_head(app, pilot):
    """Enter from the grid: the head screen of the selected head, drawn."""
    from attncli.explore.app import HeadScreen

    await pilot.press("enter")
    await _settle(app, pilot)
    head = app.screen
    assert isinstance(head, HeadScreen)
    return head


def _text(widget) -> str:
    """What a Static shows, as plain text."""
    from rich.console import Console

    console = Console(width=200, record=True, file=open("/dev/null", "w"), color_system=None)  # noqa: SIM115
    console.print(widget.content)
    return console.export_text()


@pytest.mark.usefixtures("_quick_idle_checks")
def test_the_pilot_walks_from_the_grid_to_one_weight_and_back(tmp_path, monkeypatch):
    from attncli.explore.app import ExploreApp, GridScreen, HeadScreen, HelpScreen

    tensors = _capture_file(tmp_path / "run.safetensors")
    explorer = _capture_explorer(tmp_path / "run.safetensors")
    monkeypatch.chdir(tmp_path)

    async def walk() -> None:
        app = ExploreApp(explorer)
        async with app.run_test(size=(160, 50)) as pilot:
            await _settle(app, pilot)
            assert isinstance(app.screen, GridScreen)
            assert "L0" in _text(app.screen.query_one("#grid"))
            assert "L2" in _text(app.screen.query_one("#grid"))
            await pilot.press("right", "down", "enter")  # head 1 of layer 1
            await _settle(app, pilot)
            head = app.screen
            assert isinstance(head, HeadScreen)
            assert head.index == (1, 0, 1)
            await pilot.press("down", "down", "right", "right", "right")
            await _settle(app, pilot)
            assert head.cursor == (2, 3)
            panel = _text(head.query_one("#panel"))
            q, k, v, mask = (tensors[f"layers.1.{role}"] for role in ("query", "key", "value", "mask"))
            weights, _ = reference_attention(q, k, v, mask=mask, scale=0.35)
            row = weights[0, 1, 2]
            assert "2 'cat'" in panel
            assert "3 'sat'" in panel
            assert f"{row[3]:.4f}" in panel
            entropy = -(row * np.log(row)).sum()
            assert f"{entropy:.4f} nats" in panel
            assert f"{1 + int((row > row[3]).sum())} of 6" in panel
            await pilot.press("l")  # the next layer, same head and cursor
            await _settle(app, pilot)
            assert head.index == (2, 0, 1)
            assert head.cursor == (2, 3)
            await pilot.press("h", "h", "H")
            await _settle(app, pilot)
            assert head.index == (2, 0, 2)
            await pilot.press("s")
            assert app.color_scale == "max"
            await pilot.press("p")
            assert app.pool == "mean"
            await pilot.press("t")
            await _settle(app, pilot)
            assert head.table
            assert "rows 0–5" in _text(head.query_one("#map"))
            await pilot.press("t", "question_mark")
            await _settle(app, pilot)
            assert isinstance(app.screen, HelpScreen)
            await pilot.press("escape", "e")
            await _settle(app, pilot)
            assert app.exported == [Path("attn-explore-1.svg")]
            assert (tmp_path / "attn-explore-1.svg").read_text().startswith("<svg")
            await pilot.press("escape")
            await _settle(app, pilot)
            assert isinstance(app.screen, GridScreen)
            assert app.screen.selected == explorer.matrices(0).index((2, 0, 2))
            await pilot.press("q")
        assert app.return_code == 0

    asyncio.run(walk())


def _screen_text(app) -> str:
    """The whole screen as plain text, as Textual composes it for a screenshot (`export_screenshot`)."""
    from rich.console import Console

    width, height = app.size
    console = Console(width=width, height=height, file=io.StringIO(), record=True, color_system=None)
    console.print(app.screen._compositor.render_update(full=True))
    return "\n".join(line.rstrip() for line in console.export_text().splitlines()) + "\n"


@pytest.mark.usefixtures("_quick_idle_checks")
@pytest.mark.parametrize("size", [(160, 50), (80, 24)])
def test_the_grid_and_head_screens_match_golden(tmp_path, size):
    """Snapshots of the screens as text (pytest-textual-snapshot needs a pytest older than this
    project's: its syrupy 4.8 requires pytest < 9), at both sizes: the grid, then one head."""
    from test_render import check_golden

    from attncli.explore.app import ExploreApp

    _capture_file(tmp_path / "run.safetensors", rng=np.random.default_rng(0))
    explorer = _capture_explorer(tmp_path / "run.safetensors")
    explorer.label = "run.safetensors"  # not the temporary folder's name

    async def screens() -> list[str]:
        app = ExploreApp(explorer)
        shots = []
        async with app.run_test(size=size) as pilot:
            await _settle(app, pilot)
            await pilot.press("down")
            await _settle(app, pilot)
            shots.append(_screen_text(app))
            await pilot.press("enter", "down", "right", "right")
            await _settle(app, pilot)
            shots.append(_screen_text(app))
        return shots

    grid, head = asyncio.run(screens())
    check_golden(f"explore_grid_{size[0]}.txt", grid)
    check_golden(f"explore_head_{size[0]}.txt", head)


def _record_windows(monkeypatch) -> list[tuple]:
    """Every window the explorer computes from now on, (index, origin, span, blocks), in order."""
    computed: list[tuple] = []
    window = Explorer.window

    def recorded(self, index, origin, span, blocks, stopped=None):
        computed.append((index, origin, span, blocks))
        return window(self, index, origin, span, blocks, stopped)

    monkeypatch.setattr(Explorer, "window", recorded)
    return computed


@pytest.mark.usefixtures("_quick_idle_checks")
def test_the_next_head_is_computed_ahead_and_h_draws_it_at_once(monkeypatch):
    """Once a head is drawn, the window that `h` will ask for (the next head's, same place and zoom)
    is computed in a thread of its own: `h` then computes no window of its own, and draws the same
    screen as an app that computes nothing ahead. The last head's next is the first."""
    from attncli.explore.app import ExploreApp

    explorer, inputs = _explorer(positions=40, heads=3, causal=True)
    weights = _reference(inputs, causal=True)
    blocked = np.triu(np.ones((40, 40), dtype=bool), 1)
    computed = _record_windows(monkeypatch)

    async def walk(look_ahead: bool) -> tuple[list[str], list[list[tuple]]]:
        app = ExploreApp(explorer, look_ahead=look_ahead)
        screens, windows = [], []
        async with app.run_test(size=(120, 40)) as pilot:
            await _settle(app, pilot)
            head = await _open_head(app, pilot)  # head (0, 0)
            for _ in range(3):  # (0, 1), (0, 2), then (0, 0) again
                windows.append(computed[:])
                computed.clear()
                await pilot.press("h")
                await _settle(app, pilot)
                screens.append(_screen_text(app))
            assert head.index == (0, 0)
            if look_ahead:
                for key, window in app.windows.items():  # the windows computed ahead among them
                    (batch, h), origin, span, blocks = key
                    visible = np.s_[origin[0] : origin[0] + span[0], origin[1] : origin[1] + span[1]]
                    expected = _pooled(weights[batch, h][visible], blocked[visible], blocks, "max")
                    np.testing.assert_allclose(window.picture_max, expected, atol=1e-6, equal_nan=True)
        return screens, windows

    ahead_screens, ahead = asyncio.run(walk(True))
    plain_screens, plain = asyncio.run(walk(False))
    assert ahead_screens == plain_screens
    for screen, head in zip(ahead_screens, (1, 2, 0), strict=True):
        assert f"batch 0, head {head}  (+/- zoom" in screen
    # Before each h: the shown head's window, and the next one's, computed ahead (the first head's
    # from the grid's enter); with nothing computed ahead, each h computes its head's window itself.
    rest = plain[0][0][1:]  # (origin, span, blocks): the whole matrix, the same for every head
    # The third h goes back to (0, 0), whose window and its next one's are kept: nothing computed.
    assert [[index for index, *_ in keys] for keys in ahead] == [[(0, 0), (0, 1)], [(0, 2)], []]
    assert all(tuple(key[1:]) == rest for keys in ahead for key in keys)
    assert [[index for index, *_ in keys] for keys in plain] == [[(0, 0)], [(0, 1)], [(0, 2)]]


@pytest.mark.usefixtures("_quick_idle_checks")
@pytest.mark.parametrize("key", ["plus", "h"])
def test_a_key_while_the_next_head_is_computed_ahead(monkeypatch, key):
    """A key pressed while the next head's window is being computed ahead. A zoom (another window):
    that computation stops between its blocks, the zoomed window is drawn, and the next head's is
    computed ahead at the new zoom. `h` (that very window): it is not computed a second time; the
    screen waits for it and draws it once done."""
    import threading
    import time

    from attncli.explore.app import ExploreApp
    from attncli.explore.session import StoppedError

    explorer, _ = _explorer(positions=300, heads=2)  # too many to draw one weight a cell: + zooms
    stops: list[tuple] = []
    computed: list[tuple] = []
    release = threading.Event()
    window = Explorer.window

    held_stopped: list = []  # the held window's stopped()
    stopped_first: list[bool] = []  # for each window after it: had the held one been told to stop?

    def held(self, index, origin, span, blocks, stopped=None):
        computed.append((index, origin, span, blocks))
        if held_stopped:
            stopped_first.append(held_stopped[0]())
        if index == (0, 1) and len(computed) == 2:  # the first window computed ahead: held
            held_stopped.append(stopped)
            deadline = time.monotonic() + 10
            while not stopped() and not release.is_set():
                assert time.monotonic() < deadline, "the window computed ahead was neither stopped nor let go"
                time.sleep(0.002)
            if stopped():
                stops.append((index, origin, span, blocks))
                raise StoppedError
        return window(self, index, origin, span, blocks, stopped)

    monkeypatch.setattr(Explorer, "window", held)

    async def walk() -> None:
        app = ExploreApp(explorer)
        async with app.run_test(size=(120, 40)) as pilot:
            await _settle(app, pilot)
            await pilot.press("enter")
            head = app.screen
            for _ in range(500):  # the head's window drawn, the next one's being computed ahead
                await pilot.pause()
                if head._window_key is not None and head._ahead is not None:
                    break
            shown, ahead = head._window_key, head._ahead
            assert ahead is not None
            assert ahead[0] == (0, 1)
            assert ahead[1:] == shown[1:]
            await pilot.press(key)
            if key == "plus":
                await _settle(app, pilot)
                assert stops == [ahead]
                assert stopped_first == [True, True]  # before the zoomed window was computed
                assert head._window_key[0] == (0, 0)
                assert head._window_key != shown  # zoomed in
                assert ahead not in app.windows
                assert ((0, 1), *head._window_key[1:]) in app.windows  # ahead again, at this zoom
                return
            await pilot.pause()
            assert "computing rows" in _text(head.query_one("#map"))  # waiting for the window ahead
            release.set()
            await _settle(app, pilot)
            assert stops == []
            assert head._window_key == ahead
            # computed once; (0, 0), next again (two heads), is kept at this zoom: nothing ahead
            assert [index for index, *_ in computed] == [(0, 0), (0, 1)]
            assert "batch 0, head 1  (+/- zoom" in _screen_text(app)

    asyncio.run(walk())


@pytest.mark.usefixtures("_quick_idle_checks")
def test_the_pilot_clicks_a_cell_and_switches_the_batch_entry():
    from attncli.explore.app import ExploreApp, GridScreen
    from attncli.present.explore import gutter_width, magnified_cell, magnified_lines

    tokens = [list("abcdefghijkl"), list("mnopqrstuvwx")]
    explorer, _ = _explorer(positions=12, tokens=tokens)

    async def walk() -> None:
        app = ExploreApp(explorer)
        async with app.run_test(size=(160, 50)) as pilot:
            await _settle(app, pilot)
            await pilot.press("b", "right")  # batch entry 1, its head 1
            await _settle(app, pilot)
            grid = app.screen
            assert isinstance(grid, GridScreen)
            assert grid.matrices()[grid.selected] == (1, 1)
            head = await _open_head(app, pilot)
            assert head.index == (1, 1)
            width, height = head.area()
            cell = magnified_cell(width, height, (12, 12), tokens[1])
            assert cell > 0  # 12 x 12 is drawn large: one row a line, `cell` columns a key
            gutter = gutter_width((12, 12), tokens[1])
            lines = magnified_lines(height, (12, 12), cell)  # lines a row
            await pilot.click("#map", offset=(gutter + 4 * cell + 1, 2 + 7 * lines))  # title, ruler above
            await _settle(app, pilot)
            assert head.cursor == (7, 4)
            assert "7 't'" in _text(head.query_one("#panel"))  # the token of batch entry 1
            await pilot.press("escape", "b")  # back to batch entry 0
            await _settle(app, pilot)
            assert app.batch == 0
            assert app.screen.matrices()[0] == (0, 0)

    asyncio.run(walk())


@pytest.mark.usefixtures("_quick_idle_checks")
def test_the_pilot_zooms_a_long_head_down_to_one_weight_per_cell():
    from attncli.explore.app import ExploreApp

    explorer, inputs = _explorer(positions=300, heads=1, causal=True)
    weights = _reference(inputs, causal=True)[0, 0]

    async def zoom() -> None:
        app = ExploreApp(explorer)
        async with app.run_test(size=(120, 40)) as pilot:
            head = await _open_head(app, pilot)
            fit = head.blocks
            assert fit is not None
            assert fit[0] > 1
            for _ in range(8):
                await pilot.press("plus")
            await _settle(app, pilot)
            assert head.blocks == (1, 1)
            await pilot.press("down", "right", "right")
            await _settle(app, pilot)
            assert head.cursor == (1, 2)
            window = head._window
            assert window is not None
            assert window.blocks == (1, 1)
            rows, cols = window.span
            expected = weights[
                window.origin[0] : window.origin[0] + rows, window.origin[1] : window.origin[1] + cols
            ]
            shut = np.triu(np.ones((300, 300), dtype=bool), 1)[
                window.origin[0] : window.origin[0] + rows, window.origin[1] : window.origin[1] + cols
            ]
            np.testing.assert_allclose(window.picture_max, np.where(shut, np.nan, expected), atol=1e-6)
            await pilot.press("minus")
            await _settle(app, pilot)
            assert head.blocks == (2, 2)
            kept = app.windows[head._window_key]
            await pilot.press("plus", "minus")  # back to a window the app keeps: no computation
            await pilot.pause()
            assert head._window is kept
            await pilot.press("q")

    asyncio.run(zoom())


@pytest.mark.usefixtures("_quick_idle_checks")
def test_the_last_picture_stays_while_a_zoomed_window_is_computed():
    """`+` answers at once: the head's last picture stays drawn and the title line says which rows
    are coming; the new picture replaces it when its thread is done."""
    import threading

    from attncli.explore.app import ExploreApp

    explorer, _ = _explorer(positions=300, heads=1, causal=True)
    computed = explorer.window
    release = threading.Event()

    def held_back(*args, **options):
        release.wait(timeout=30)
        return computed(*args, **options)

    async def zoom() -> None:
        app = ExploreApp(explorer)
        async with app.run_test(size=(120, 40)) as pilot:
            head = await _open_head(app, pilot)
            fit = head.blocks
            drawn = head.query_one("#map").content
            explorer.window = held_back  # the next window waits for `release`
            await pilot.press("plus")
            await pilot.pause()
            assert "computing rows" in _text(head.query_one("#title"))
            assert head.query_one("#map").content is drawn
            release.set()
            await _settle(app, pilot)
            assert "computing" not in _text(head.query_one("#title"))
            assert head.query_one("#map").content is not drawn
            assert head._window is not None
            assert head._window.blocks != fit
            await pilot.press("q")

    asyncio.run(zoom())


def _segments(widget) -> list:
    """What a Static shows, as Rich's segments in true colour (their styles kept)."""
    from rich.console import Console

    console = Console(width=200, file=io.StringIO(), color_system="truecolor")
    return list(console.render(widget.content))


@pytest.mark.usefixtures("_quick_idle_checks")
def test_the_pilot_shows_masked_weights_as_masked_or_plainly():
    """`m` on a causal head: the heatmap's masked cells grey (the heatmaps' masked colour) and the
    table's masked weights `·`, or, switched, every weight drawn as a weight (masked ones as the
    reference's 0). The table's cursor cell is in reverse video, holding the reference's weight."""
    from attncli.explore.app import ExploreApp
    from attncli.present.heatmap import MASKED_RGB
    from attncli.present.style import MASKED

    explorer, inputs = _explorer(positions=40, heads=1, causal=True)
    weights = _reference(inputs, causal=True)[0, 0]
    grey = "#{:02x}{:02x}{:02x}".format(*MASKED_RGB)

    def greys(widget) -> int:
        return sum(
            1
            for segment in _segments(widget)
            if segment.style is not None
            and any(
                c is not None and c.triplet is not None and c.triplet.hex == grey
                for c in (segment.style.color, segment.style.bgcolor)
            )
        )

    def cursor_cells(widget) -> list[str]:
        return [
            segment.text.strip()
            for segment in _segments(widget)
            if segment.style is not None and segment.style.reverse and segment.text.strip()
        ]

    async def walk() -> None:
        app = ExploreApp(explorer)
        async with app.run_test(size=(160, 50)) as pilot:
            head = await _open_head(app, pilot)
            assert "m mask" in _screen_text(app)
            assert greys(head.query_one("#map")) > 0  # the triangle past the diagonal
            await pilot.press("m")
            await _settle(app, pilot)
            assert not app.show_masked
            assert greys(head.query_one("#map")) == 0
            assert "masked weights shown as 0" in _text(head.query_one("#map"))
            await pilot.press(*["down"] * 5, "right", "right", "t")
            await _settle(app, pilot)
            assert head.cursor == (5, 2)
            table = _text(head.query_one("#map"))
            assert MASKED not in table
            assert cursor_cells(head.query_one("#map")) == [f"{weights[5, 2]:.4f}"]
            await pilot.press(*["right"] * 4)  # key 6: masked for query 5
            await _settle(app, pilot)
            assert cursor_cells(head.query_one("#map")) == [f"{0.0:.4f}"]
            await pilot.press("m")
            await _settle(app, pilot)
            assert app.show_masked
            assert MASKED in _text(head.query_one("#map"))
            assert cursor_cells(head.query_one("#map")) == [MASKED]
            await pilot.press("left")  # key 5: open, on the diagonal
            await _settle(app, pilot)
            assert cursor_cells(head.query_one("#map")) == [f"{weights[5, 5]:.4f}"]
            await pilot.press("q")

    asyncio.run(walk())


@pytest.mark.usefixtures("_quick_idle_checks")
def test_the_mask_switch_is_hidden_where_nothing_is_masked():
    from attncli.explore.app import ExploreApp, HeadScreen

    explorer, _ = _explorer(positions=12, heads=1)

    async def walk() -> None:
        app = ExploreApp(explorer)
        async with app.run_test(size=(160, 50)) as pilot:
            await pilot.press("enter")
            await _settle(app, pilot)
            assert isinstance(app.screen, HeadScreen)
            assert "m mask" not in _screen_text(app)
            await pilot.press("m")
            await _settle(app, pilot)
            assert app.show_masked
            await pilot.press("q")

    asyncio.run(walk())


# --- the command -------------------------------------------------------------------------------------


def test_outside_a_terminal_it_refuses_and_points_to_compute(tmp_path):
    _capture_file(tmp_path / "run.safetensors")
    result = runner.invoke(app, ["explore", str(tmp_path / "run.safetensors")])
    assert_error(result, "terminal", "attn compute")
    result = runner.invoke(app, ["explore", str(tmp_path / "run.safetensors")], env={"TERM": "dumb"})
    assert_error(result, "TERM is dumb", "attn compute")


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["missing.npy"], ["missing.npy"]),
        (["bad.json"], ["bad.json"]),
        (["-"], ["stdin"]),
        (["q.npy", "k.npy"], ["2 paths"]),
        (["run.safetensors", "--layer", "9"], ["--layer"]),
        (["q.npy", "--layer", "1"], ["--layer"]),
    ],
)
def test_bad_input_is_one_line_before_the_interface_starts(tmp_path, monkeypatch, args, words):
    import attncli.cli.explore as command

    monkeypatch.setattr(command, "terminal_problem", lambda: None)  # as in a terminal
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.json").write_text("[[1, 2], [3")
    np.save(tmp_path / "q.npy", np.ones((3, 4), np.float32))
    np.save(tmp_path / "k.npy", np.ones((3, 4), np.float32))
    _capture_file(tmp_path / "run.safetensors")
    assert_error(runner.invoke(app, ["explore", *args]), *words)


@pytest.mark.slow
def test_help_and_other_commands_import_no_textual():
    probe = (
        "import sys\n"
        "from attncli.cli import main\n"
        "sys.argv = ['attn', *sys.argv[1:]]\n"
        "try:\n    main()\n"
        "except SystemExit:\n    pass\n"
        "print('textual:', 'textual' in sys.modules)\n"
    )
    for args in (["--help"], ["explore", "--help"], ["compute", "--help"]):
        done = subprocess.run(
            [sys.executable, "-c", probe, *args], capture_output=True, text=True, timeout=60
        )
        assert "textual: False" in done.stdout, (args, done.stdout, done.stderr)
