"""Head scores (attncli.analysis.heads, attncli.compute.heads) against float64 loops written from
their definitions (analysis/heads.py's docstring, issue 15), on weights from tests/reference.py:
random inputs with padding, masks and causal alignment, blocks of any size, and heads built to
have one pattern."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from reference import reference_attention

from attncli.analysis import heads as analysis
from attncli.compute import prepare
from attncli.compute.heads import score_problem

RNG = np.random.default_rng(11)


def reference_rows(
    weights: np.ndarray, blocked: np.ndarray, tokens: np.ndarray | None
) -> dict[str, np.ndarray]:
    """Per row figures of weights (B, H, Lq, Lk) by explicit loops: NaN where undefined."""
    b_count, h_count, lq, lk = weights.shape
    names = ["entropy", "sink", "distance", "self", "previous"] + (
        ["duplicate", "induction"] if tokens is not None else []
    )
    rows = {name: np.full((b_count, h_count, lq), np.nan) for name in names}
    for b in range(b_count):
        for h in range(h_count):
            for i in range(lq):
                w = weights[b, h, i]
                open_keys = ~blocked[b, h, i]
                if not open_keys.any():
                    continue
                a = i + lk - lq
                rows["entropy"][b, h, i] = -sum(x * math.log(x) for x in w[open_keys] if x > 0)
                if open_keys[0]:
                    rows["sink"][b, h, i] = w[0]
                rows["distance"][b, h, i] = sum(w[j] * abs(j - a) for j in range(lk) if open_keys[j])
                if 0 <= a < lk:
                    rows["self"][b, h, i] = w[a]
                if 1 <= a <= lk:
                    rows["previous"][b, h, i] = w[a - 1]
                if tokens is None:
                    continue
                same = [j for j in range(lk) if j < a and open_keys[j] and tokens[b, j] == tokens[b, i]]
                if same:
                    rows["duplicate"][b, h, i] = sum(w[j] for j in same)
                after = [
                    j for j in range(1, lk) if j <= a and open_keys[j] and tokens[b, j - 1] == tokens[b, i]
                ]
                if after:
                    rows["induction"][b, h, i] = sum(w[j] for j in after)
    return rows


def reference_means(rows: dict[str, np.ndarray], counted: np.ndarray) -> dict[str, np.ndarray]:
    means = {}
    for name, values in rows.items():
        out = np.full(values.shape[:-1], np.nan)
        for index in np.ndindex(*values.shape[:-1]):
            picked = [v for v, c in zip(values[index], counted[index], strict=True) if c and np.isfinite(v)]
            if picked:
                out[index] = sum(picked) / len(picked)
        means[name] = out
    return means


def _case(lengths: list[int], positions: int, heads: int = 3, causal: bool = False):
    """Random q/k/v (B, H, L, 8) whose texts have `lengths` real tokens (keys after them masked),
    and tokens drawn from a vocabulary of 4 (so that duplicates and inductions occur)."""
    batch = len(lengths)
    q, k, v = (RNG.standard_normal((batch, heads, positions, 8)) for _ in range(3))
    real = np.arange(positions)[None, :] < np.asarray(lengths)[:, None]  # (B, L)
    mask = np.broadcast_to(real[:, None, None, :], (batch, 1, positions, positions)).copy()
    tokens = RNG.integers(0, 4, size=(batch, positions))
    weights, _ = reference_attention(q, k, v, mask=mask, causal=causal)
    blocked = ~np.broadcast_to(mask, weights.shape)
    if causal:
        blocked = blocked | ~np.tril(np.ones((positions, positions), bool))
    counted = np.broadcast_to(real[:, None, :], weights.shape[:-1])
    counted = counted & ~blocked.all(axis=-1)
    return q, k, v, mask, tokens, weights, blocked, counted, real


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("block_rows", [None, 1, 3])
def test_every_score_equals_the_float64_loops(causal, block_rows, monkeypatch):
    q, k, v, mask, tokens, weights, blocked, counted, real = _case([7, 4], 7, causal=causal)
    expected = reference_means(reference_rows(weights, blocked, tokens), counted)
    problem = prepare(q, k, v, mask=mask, causal=causal, dtype="float64")
    if block_rows is not None:  # the same scores whatever the blocks
        import attncli.compute.heads as module

        real_run = module.run
        monkeypatch.setattr(module, "run", lambda *a, **kw: real_run(*a, block_rows=block_rows, **kw))
    got = score_problem(problem, [[str(t) for t in row] for row in tokens], real[:, None, :])
    assert set(got) == set(expected)
    for name in expected:
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-9, atol=1e-12, err_msg=name)


def test_queries_fewer_than_keys_are_aligned_with_the_last_keys():
    """a(i) = i + Lk - Lq: with 2 queries over 5 keys, query 0 is aligned with key 3."""
    weights = torch.tensor(RNG.dirichlet(np.ones(5), size=(1, 1, 2)))  # (1, 1, 2, 5)
    rows = analysis.pattern_rows(weights, None, row_offset=0, queries=2)
    np.testing.assert_allclose(rows["self"][0, 0], weights[0, 0, [0, 1], [3, 4]])
    np.testing.assert_allclose(rows["previous"][0, 0], weights[0, 0, [0, 1], [2, 3]])
    rows = analysis.pattern_rows(weights[..., :1, :], None, row_offset=0, queries=6)  # a(0) = -1
    assert torch.isnan(rows["self"]).all()
    assert torch.isnan(rows["previous"]).all()


def test_a_previous_token_head_scores_one_on_previous():
    positions = 6
    weights = np.zeros((1, 1, positions, positions))
    weights[0, 0, 0, 0] = 1.0
    for i in range(1, positions):
        weights[0, 0, i, i - 1] = 1.0
    rows = analysis.pattern_rows(torch.tensor(weights), None, row_offset=0, queries=positions)
    means = analysis.head_means({name: t.numpy() for name, t in rows.items()})
    assert means["previous"][0, 0] == 1.0
    assert means["self"][0, 0] == pytest.approx(1 / positions)


def test_an_induction_head_scores_one_on_induction():
    """Tokens A B C A B C: from the second A on, each query attends to the key after its earlier copy."""
    ids = torch.tensor([[0, 1, 2, 0, 1, 2]])
    weights = np.zeros((1, 1, 6, 6))
    for i in range(6):
        weights[0, 0, i, i - 2 if i >= 3 else i] = 1.0  # query 3 (A) -> key 1 (B, after the first A)
    rows = analysis.pattern_rows(
        torch.tensor(weights), None, row_offset=0, queries=6, query_ids=ids, key_ids=ids
    )
    assert torch.isnan(rows["induction"][0, 0, :3]).all()  # no earlier copy yet
    np.testing.assert_array_equal(rows["induction"][0, 0, 3:], [1.0, 1.0, 1.0])
    np.testing.assert_array_equal(rows["duplicate"][0, 0, 3:], [0.0, 0.0, 0.0])


def test_head_means_skip_rows_not_counted_and_undefined():
    rows = {"x": np.array([[1.0, np.nan, 3.0, 10.0]])}
    counted = np.array([[True, True, True, False]])
    assert analysis.head_means(rows, counted)["x"][0] == 2.0
    assert math.isnan(analysis.head_means({"x": np.array([[np.nan]])})["x"][0])


def test_rollout_is_the_product_of_the_mixed_layers_and_rows_sum_to_one():
    layers = [RNG.dirichlet(np.ones(5), size=(4, 5)) for _ in range(3)]  # (heads, L, L) each

    def mixed(w):
        a = 0.5 * (w.mean(axis=0) + np.eye(5))
        return a / a.sum(axis=1, keepdims=True)

    expected = mixed(layers[2]) @ mixed(layers[1]) @ mixed(layers[0])
    got = analysis.rollout(layers)
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, rtol=1e-12)


# --- attn heads ----------------------------------------------------------------------------------------


def _capture_file(path, lengths=(6, 4), heads=3, positions=6, layers=(0, 1)):
    """A file laid out as `attn capture` writes one: padded texts, their tokens and lengths."""
    import json

    from safetensors.numpy import save_file

    tensors, texts = {}, len(lengths)
    real = np.arange(positions)[None, :] < np.asarray(lengths)[:, None]
    mask = np.broadcast_to(real[:, None, None, :], (texts, 1, positions, positions)).copy()
    vocabulary = ["a", "b", "c"]
    tokens = [
        [vocabulary[RNG.integers(0, 3)] if i < n else "[PAD]" for i in range(positions)] for n in lengths
    ]
    for layer in layers:
        for role in ("query", "key", "value"):
            tensors[f"layers.{layer}.{role}"] = RNG.standard_normal((texts, heads, positions, 8)).astype(
                np.float32
            )
        tensors[f"layers.{layer}.mask"] = mask
    meta = {
        "tokens": tokens,
        "lengths": list(lengths),
        "num_layers": len(layers),
        "layers": {str(layer): {"scaling": 0.35} for layer in layers},
    }
    save_file(tensors, str(path), metadata={key: json.dumps(value) for key, value in meta.items()})
    return tensors, tokens, real


def _expected_capture_scores(tensors, tokens, real, layers, batch=None):
    ids = analysis.token_ids(tokens)
    expected = {}
    for layer in layers:
        q, k, v, mask = (tensors[f"layers.{layer}.{role}"] for role in ("query", "key", "value", "mask"))
        weights, _ = reference_attention(q, k, v, mask=mask, scale=0.35)
        blocked = ~np.broadcast_to(mask, weights.shape)
        counted = np.broadcast_to(real[:, None, :], weights.shape[:-1]) & ~blocked.all(axis=-1)
        means = reference_means(reference_rows(weights, blocked, ids), counted)  # (B, H) each
        for name, values in means.items():
            if batch is not None:
                per_head = values[batch]
            else:  # the mean over the texts where the head has the figure
                per_head = np.array(
                    [
                        np.mean([x for x in column if np.isfinite(x)])
                        if np.isfinite(column).any()
                        else np.nan
                        for column in values.T
                    ]
                )
            expected.setdefault(name, []).append(per_head)
    return {name: np.array(rows) for name, rows in expected.items()}


@pytest.mark.parametrize("batch", [None, 1])
def test_attn_heads_on_a_capture_equals_the_float64_loops(tmp_path, batch):
    import json

    from typer.testing import CliRunner

    from attncli.cli import app

    path = tmp_path / "capture.safetensors"
    tensors, tokens, real = _capture_file(path)
    args = ["heads", str(path), "--format", "json", *(["--batch", str(batch)] if batch is not None else [])]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["layers"] == [0, 1]
    assert document["heads"] == [0, 1, 2]
    expected = _expected_capture_scores(tensors, tokens, real, (0, 1), batch)
    assert set(document["scores"]) == set(expected)
    for name, values in expected.items():
        got = np.array([[np.nan if x is None else x for x in row] for row in document["scores"][name]])
        np.testing.assert_allclose(got, values, rtol=2e-5, atol=1e-6, err_msg=name)


def test_padding_rows_do_not_count():
    """With text 1 of length 4 padded to 6, its [PAD] rows (which attend to the real keys, so have
    finite figures) would shift every mean; they are left out."""
    q, k, v, mask, _tokens, weights, blocked, counted, real = _case([6, 4], 6)
    problem = prepare(q, k, v, mask=mask, dtype="float64")
    with_padding = score_problem(problem, None)
    without = score_problem(problem, None, real[:, None, :])
    assert not np.allclose(with_padding["distance"][1], without["distance"][1])
    expected = reference_means(reference_rows(weights, blocked, None), counted)
    np.testing.assert_allclose(without["distance"], expected["distance"], rtol=1e-9)


def test_attn_heads_errors_name_the_option(tmp_path):
    from helpers import assert_error
    from typer.testing import CliRunner

    from attncli.cli import app

    path = tmp_path / "capture.safetensors"
    _capture_file(path)
    runner = CliRunner()
    assert_error(
        runner.invoke(app, ["heads", str(path), "--score", "previous,bogus"]), "--score", "not a score"
    )
    assert_error(runner.invoke(app, ["heads", str(path), "--layer", "5"]), "--layer 5: out of range")
    assert_error(
        runner.invoke(app, ["heads", str(path), "--batch", "2"]), "--batch 2: out of range, there are 2 texts"
    )
    seed = str(tmp_path / "x.npy")
    np.save(seed, RNG.standard_normal((2, 5, 8)))
    assert_error(runner.invoke(app, ["heads", seed, "--layer", "0"]), "--layer picks layers")
    assert_error(runner.invoke(app, ["heads", seed, "--score", "induction"]), "needs tokens; give --labels")


# --- attn compute --layer with several layers ----------------------------------------------------------


@pytest.mark.parametrize("choice", ["1,2", "all", "1:3"])
def test_several_layers_are_stacked_on_a_layer_axis_and_each_equals_the_reference(tmp_path, choice):
    import json

    from typer.testing import CliRunner

    from attncli.cli import app

    path = tmp_path / "capture.safetensors"
    tensors, _, _ = _capture_file(path, layers=(0, 1, 2))
    result = CliRunner().invoke(app, ["compute", str(path), "--layer", choice, "--format", "json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    layers = {"1,2": [1, 2], "all": [0, 1, 2], "1:3": [1, 2]}[choice]
    assert document["meta"]["layers"] == layers
    assert document["meta"]["weights_axes"] == ["layer", "batch", "head", "query", "key"]
    weights = np.array(document["weights"])
    assert weights.shape[0] == len(layers)
    for index, layer in enumerate(layers):
        q, k, v, mask = (tensors[f"layers.{layer}.{role}"] for role in ("query", "key", "value", "mask"))
        expected, _ = reference_attention(q, k, v, mask=mask, scale=0.35)
        np.testing.assert_allclose(weights[index], expected, rtol=1e-5, atol=1e-6)


def test_stacked_layers_are_titled_with_their_layer_numbers(tmp_path):
    from typer.testing import CliRunner

    from attncli.cli import app

    path = tmp_path / "capture.safetensors"
    _capture_file(path, layers=(0, 1, 2))
    result = CliRunner().invoke(
        app, ["compute", str(path), "--layer", "2,0", "--batch", "0", "--head", "1"], env={"COLUMNS": "100"}
    )
    assert result.exit_code == 0, result.output
    assert "(layer 0, batch 0, head 1)" in result.stdout
    assert "(layer 2, batch 0, head 1)" in result.stdout


def test_layers_that_cannot_be_stacked_are_refused_with_the_way_out(tmp_path):
    from helpers import assert_error
    from safetensors.numpy import save_file
    from typer.testing import CliRunner

    from attncli.cli import app

    path = tmp_path / "capture.safetensors"
    tensors, _, _ = _capture_file(path, layers=(0, 1))
    tensors["layers.1.query"] = tensors["layers.1.query"][..., :4, :]
    tensors["layers.1.mask"] = tensors["layers.1.mask"][..., :4, :]
    save_file(tensors, str(tmp_path / "odd.safetensors"))
    runner = CliRunner()
    assert_error(
        runner.invoke(app, ["compute", str(tmp_path / "odd.safetensors"), "--layer", "all"]),
        "layer 1's query has shape",
        "--layer N",
    )
    assert_error(runner.invoke(app, ["compute", str(path), "--layer", "0,5"]), "--layer 5: out of range")


# --- attn rollout ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch", [0, 1])
def test_attn_rollout_equals_the_product_of_mixed_layers_over_real_tokens(tmp_path, batch):
    import json

    from typer.testing import CliRunner

    from attncli.cli import app

    path = tmp_path / "capture.safetensors"
    tensors, tokens, _ = _capture_file(path, lengths=(6, 4), layers=(0, 1, 2))
    result = CliRunner().invoke(app, ["rollout", str(path), "--batch", str(batch), "--format", "json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    length = (6, 4)[batch]
    expected = np.eye(length)
    for layer in (0, 1, 2):  # written from the definition, layer by layer, first to last
        q, k, v, mask = (tensors[f"layers.{layer}.{role}"] for role in ("query", "key", "value", "mask"))
        weights, _ = reference_attention(q, k, v, mask=mask, scale=0.35)
        mean = weights[batch, :, :length, :length].mean(axis=0)
        mixed = (mean + np.eye(length)) / 2
        mixed = mixed / mixed.sum(axis=1, keepdims=True)
        expected = mixed @ expected
    got = np.array(document["rollout"])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, rtol=1e-6)
    assert document["meta"]["tokens"] == tokens[batch][:length]
    assert document["meta"]["layers"] == [0, 1, 2]


def test_attn_rollout_writes_its_file_and_refuses_what_it_cannot_roll_out(tmp_path):
    from helpers import assert_error
    from safetensors.numpy import load_file, save_file
    from typer.testing import CliRunner

    from attncli.cli import app

    path = tmp_path / "capture.safetensors"
    tensors, _, _ = _capture_file(path, layers=(0, 1))
    runner = CliRunner()
    out = tmp_path / "r.safetensors"
    result = runner.invoke(app, ["rollout", str(path), "-o", str(out), "--layer", "1"])
    assert result.exit_code == 0, result.output
    assert load_file(out)["rollout"].shape == (6, 6)
    tensors["layers.0.query"] = tensors["layers.0.query"][..., :4, :]
    tensors["layers.0.mask"] = tensors["layers.0.mask"][..., :4, :]
    save_file(tensors, str(tmp_path / "cross.safetensors"))
    assert_error(
        runner.invoke(app, ["rollout", str(tmp_path / "cross.safetensors")]),
        "layer 0 has 4 queries and 6 keys",
    )
    np.save(tmp_path / "x.npy", np.ones((3, 4)))
    assert_error(runner.invoke(app, ["rollout", str(tmp_path / "x.npy")]), "holds no captured layers")
    assert_error(runner.invoke(app, ["rollout", str(path), "--batch", "5"]), "--batch 5: out of range")
    assert_error(runner.invoke(app, ["rollout", str(path), "--view", "grid"]), "a rollout is one matrix")


def test_heads_and_rollout_export_what_they_show_on_the_colour_scale_asked(tmp_path):
    """--export-svg/--export-html as in compute (refused before work when the file exists), and
    --color-scale on the rollout, said in its legend."""
    from helpers import assert_error
    from typer.testing import CliRunner

    from attncli.cli import app

    path = tmp_path / "capture.safetensors"
    _capture_file(path, layers=(0, 1))
    runner = CliRunner()
    env = {"COLUMNS": "100", "NO_COLOR": "1"}
    svg, html = tmp_path / "heads.svg", tmp_path / "rollout.html"
    heads = runner.invoke(app, ["heads", str(path), "--export-svg", str(svg)], env=env)
    assert heads.exit_code == 0, heads.output
    assert svg.read_text().startswith("<svg")
    assert "induction" in svg.read_text()
    rollout = runner.invoke(
        app,
        ["rollout", str(path), "--view", "heatmap", "--color-scale", "log", "--export-html", str(html)],
        env=env,
    )
    assert rollout.exit_code == 0, rollout.output
    assert "log10 of the weight" in rollout.stdout
    assert "rollout of" in html.read_text()
    assert_error(runner.invoke(app, ["heads", str(path), "--export-svg", str(svg)]), "--export-svg")
    table = runner.invoke(app, ["rollout", str(path), "--color-scale", "row"], env=env)
    assert "each row to its largest weight" in table.stdout


def test_the_grid_of_every_layer_and_head_is_the_same_whole_or_in_blocks(tmp_path):
    """--view grid --layer all: one thumbnail per layer and head, from the pictures the run pooled,
    so a run in blocks (--stream) draws the same grid; --export-svg saves it."""
    from typer.testing import CliRunner

    from attncli.cli import app

    path = tmp_path / "capture.safetensors"
    _capture_file(path, layers=(0, 1, 2))
    runner = CliRunner()
    base = ["compute", str(path), "--layer", "all", "--batch", "1", "--view", "grid"]
    env = {"COLUMNS": "100", "NO_COLOR": "1"}
    whole = runner.invoke(app, base, env=env)
    streamed = runner.invoke(app, [*base, "--stream"], env=env)
    assert whole.exit_code == 0, whole.output
    assert streamed.exit_code == 0, streamed.output
    grid = whole.stdout[whole.stdout.index("batch 1") :]
    assert grid == streamed.stdout[streamed.stdout.index("batch 1") :]
    for layer in (0, 1, 2):
        assert f"L{layer} h0" in grid
    assert grid.count(" h2 ") == 3  # three heads per layer
    svg = tmp_path / "grid.svg"
    exported = runner.invoke(app, [*base, "-q", "--export-svg", str(svg)], env=env)
    assert exported.exit_code == 0, exported.output
    assert svg.read_text().startswith("<svg")


def test_the_means_of_a_capture_leave_its_padding_rows_out(tmp_path):
    """With two texts and --batch 1, the [PAD] rows pushed the mean distance of MiniLM to 3.47:
    the means of --stats (and the titles' mean entropy) are over the real tokens' rows."""
    import json

    from typer.testing import CliRunner

    from attncli.cli import app

    path = tmp_path / "capture.safetensors"
    tensors, _tokens, real = _capture_file(path, lengths=(6, 4), layers=(0,))
    result = CliRunner().invoke(app, ["compute", str(path), "--layer", "0", "--stats", "--format", "json"])
    assert result.exit_code == 0, result.output
    means = json.loads(result.stdout)["meta"]["stats_means"]
    q, k, v, mask = (tensors[f"layers.0.{role}"] for role in ("query", "key", "value", "mask"))
    weights, _ = reference_attention(q, k, v, mask=mask, scale=0.35)
    blocked = ~np.broadcast_to(mask, weights.shape)
    counted = np.broadcast_to(real[:, None, :], weights.shape[:-1])
    expected = reference_means(reference_rows(weights, blocked, None), counted)
    for name in ("entropy", "sink", "distance"):
        np.testing.assert_allclose(np.array(means[name]), expected[name], rtol=1e-5, err_msg=name)
    with_padding = reference_means(reference_rows(weights, blocked, None), np.ones_like(counted))
    assert not np.allclose(with_padding["distance"][1], expected["distance"][1])  # the padding mattered


def test_the_statistics_table_dims_padding_rows_and_means_the_tokens(tmp_path):
    from typer.testing import CliRunner

    from attncli.cli import app

    path = tmp_path / "capture.safetensors"
    tensors, _, real = _capture_file(path, lengths=(6, 4), layers=(0,))
    args = ["compute", str(path), "--layer", "0", "--batch", "1", "--head", "0", "--show", "stats"]
    result = CliRunner().invoke(app, [*args, "--precision", "4"], env={"COLUMNS": "120", "NO_COLOR": "1"})
    assert result.exit_code == 0, result.output
    mean_line = next(line for line in result.stdout.splitlines() if line.strip().startswith("mean of tokens"))
    q, k, v, mask = (tensors[f"layers.0.{role}"] for role in ("query", "key", "value", "mask"))
    weights, _ = reference_attention(q, k, v, mask=mask, scale=0.35)
    blocked = ~np.broadcast_to(mask, weights.shape)
    counted = np.broadcast_to(real[:, None, :], weights.shape[:-1])
    distance = reference_means(reference_rows(weights, blocked, None), counted)["distance"][1, 0]
    assert mean_line.split()[-1] == f"{distance:.4f}"


def test_layer_choices_name_layer_numbers_in_every_command(tmp_path):
    """A capture may hold some layers only: --layer 2 is layer 2 in compute, heads and rollout
    alike (heads took it as the second captured layer, and refused it as out of range)."""
    import json

    from typer.testing import CliRunner

    from attncli.cli import app

    path = tmp_path / "capture.safetensors"
    _capture_file(path, layers=(0, 2))
    runner = CliRunner()
    heads = runner.invoke(app, ["heads", str(path), "--layer", "2", "--format", "json"])
    assert heads.exit_code == 0, heads.output
    assert json.loads(heads.stdout)["layers"] == [2]
    rollout = runner.invoke(app, ["rollout", str(path), "--layer", "2", "--format", "json"])
    assert rollout.exit_code == 0, rollout.output
    assert json.loads(rollout.stdout)["meta"]["layers"] == [2]
    missing = runner.invoke(app, ["heads", str(path), "--layer", "1"])
    assert missing.exit_code == 2
    assert "has no layer 1" in missing.stderr


def test_views_dim_or_leave_out_the_padding_rows_of_a_capture(tmp_path):
    """The rows of [PAD] queries: dim and uncoloured in the weight and output tables, not drawn in
    the heatmap and grid once they alone are left; each view's legend says so."""
    import re

    from typer.testing import CliRunner

    from attncli.cli import app

    path = tmp_path / "capture.safetensors"
    _capture_file(path, lengths=(6, 4), layers=(0,))
    runner = CliRunner()
    base = ["compute", str(path), "--layer", "0", "--batch", "1", "--head", "0"]
    coloured = runner.invoke(app, base, env={"COLUMNS": "120", "FORCE_COLOR": "1", "NO_COLOR": ""})
    assert coloured.exit_code == 0, coloured.output
    escape = re.compile(r"\x1b\[[0-9;]*m")
    rows = [
        line
        for line in coloured.stdout.splitlines()
        if re.match(r"\s*(\[PAD\]|[abc]) ", escape.sub("", line))
    ]
    padding = [line for line in rows if escape.sub("", line).lstrip().startswith("[PAD]")]
    tokens = [line for line in rows if line not in padding]
    assert len(padding) == 4  # two rows of each: weights, then output
    assert len(tokens) == 8
    colour = re.compile(r"\x1b\[[0-9;]*(3[0-9]|4[0-9]|38;|48;)[0-9;]*m")
    assert all(colour.search(line) for line in tokens)
    assert not any(colour.search(line) for line in padding)
    assert all("\x1b[2m" in line for line in padding)
    plain = runner.invoke(app, base, env={"COLUMNS": "120", "NO_COLOR": "1"})
    words = " ".join(plain.stdout.split())  # legends may wrap
    assert "[PAD] rows: padding tokens, left out of the statistics" in words.split("output[")[0]
    assert "*: row maximum" in words.split("output[")[0]  # no colour, no bold: a mark
    assert "dim rows: padding tokens" in " ".join(coloured.stdout.split()).split("output[")[-1]

    heatmap = runner.invoke(app, [*base, "--view", "heatmap"], env={"COLUMNS": "120", "NO_COLOR": "1"})
    assert heatmap.exit_code == 0, heatmap.output
    drawn = [line for line in heatmap.stdout.splitlines() if re.match(r"^\s*[abc] \d ", line)]
    assert [line.split()[1] for line in drawn] == ["0", "1", "2", "3"]
    assert "rows 4–5: padding, not drawn" in heatmap.stdout
    assert "[PAD] 4" not in heatmap.stdout

    grid = runner.invoke(app, [*base[:-2], "--view", "grid"], env={"COLUMNS": "120", "NO_COLOR": "1"})
    assert grid.exit_code == 0, grid.output
    thumbnails = grid.stdout[grid.stdout.index("h0 ") : grid.stdout.index("' '=0")].splitlines()[1:]
    assert len(thumbnails) == 4  # one line per query row without colour: the 4 real tokens
    assert "rows of padding tokens not drawn" in " ".join(grid.stdout.split())
