"""Capture masks stored as a description (attncli.io.masks): causal, sliding window, right padding.

The patterns are checked against masks built here element by element from their definition (plain
loops, not the module's vectorised rows), and the captures against the models themselves: the mask
read back from a file is the mask the model passed (the in-memory capture), and it is False exactly
where the model's own attention probabilities (eager, output_attentions) are zero.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers import assert_error
from typer.testing import CliRunner

from attncli.errors import InputError
from attncli.io import masks

runner = CliRunner()


def invoke(*args: str) -> Any:
    return runner.invoke(app, list(args), env={"COLUMNS": "120", "NO_COLOR": "1"})


def looped(kind: str, window: int | None, lengths: list[int], lq: int, lk: int) -> np.ndarray:
    """The pattern from its definition, one element at a time: (batch, 1, Lq, Lk) bool."""
    mask = np.zeros((len(lengths), 1, lq, lk), dtype=bool)
    for b, length in enumerate(lengths):
        for i in range(lq):
            position = i + lk - lq
            for j in range(lk):
                keep = j < length
                if kind == "causal":
                    keep = keep and j <= position and (window is None or position - j < window)
                mask[b, 0, i, j] = keep
    return mask


# --- the patterns, without a model -------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "window", "lengths", "lq", "lk"),
    [
        ("causal", None, [7, 4], 7, 7),
        ("causal", 3, [7, 5, 1], 7, 7),
        ("causal", None, [9], 3, 9),  # queries after a cache: the triangle is offset
        ("padding", None, [6, 2], 6, 6),
        ("padding", None, [5], 5, 5),  # every key open
    ],
)
def test_a_pattern_is_recognised_and_expands_to_itself(kind, window, lengths, lq, lk):
    mask = looped(kind, window, lengths, lq, lk)
    described = masks.describe(mask)
    assert described == {
        "kind": kind,
        "window": window,
        "lengths": lengths,
        "shape": [len(lengths), 1, lq, lk],
    }
    np.testing.assert_array_equal(masks.expand(json.loads(json.dumps(described)), "x"), mask)


def test_what_is_no_pattern_has_no_description():
    causal = looped("causal", None, [6, 4], 6, 6)
    left_padded = causal.copy()
    left_padded[1, 0, :, :2] = False  # keys closed at the start: left padding
    one_hole = causal.copy()
    one_hole[0, 0, 5, 2] = False
    per_head = np.broadcast_to(causal, (2, 4, 6, 6))
    for mask in (
        left_padded,
        one_hole,
        per_head,
        causal.astype(np.float32),
        np.random.default_rng(0).random((1, 1, 5, 5)) > 0.5,
    ):
        assert masks.describe(mask) is None


@pytest.mark.parametrize(
    ("description", "wrong"),
    [
        ([], "not a JSON object"),
        ({"kind": "prefix", "window": None, "lengths": [2], "shape": [1, 1, 2, 2]}, "kind is 'prefix'"),
        ({"kind": "causal", "window": None, "lengths": [2], "shape": [1, 2, 2, 2]}, "shape"),
        ({"kind": "causal", "window": None, "lengths": [3], "shape": [1, 1, 2, 2]}, "lengths"),
        ({"kind": "causal", "window": 0, "lengths": [2], "shape": [1, 1, 2, 2]}, "window 0"),
    ],
)
def test_a_damaged_description_is_an_input_error_naming_the_mask(description, wrong):
    with pytest.raises(InputError, match=wrong) as error:
        masks.expand(description, "run.safetensors:masks.0")
    assert str(error.value).startswith("run.safetensors:masks.0: ")


# --- captures from models ----------------------------------------------------------------------

if importlib.util.find_spec("transformers") is None:
    pytest.skip("needs the models extra: pip install 'attncli[models]'", allow_module_level=True)

from test_capture import TEXTS, WORDS, _save_tokenizer  # noqa: E402
from test_capture_dtype import _model  # noqa: E402

from attncli.cli import app  # noqa: E402
from attncli.io.loaders import layer_inputs, read_tensors  # noqa: E402
from attncli.models import capture  # noqa: E402

FAMILIES = {"llama": "causal", "mistral": "causal", "gpt2": "causal", "bert": "padding"}


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("mask-models")
    return {family: _model(root / family, family, layers=2) for family in FAMILIES}


@pytest.mark.parametrize("family", FAMILIES)
def test_the_stored_description_expands_to_the_models_own_mask(tmp_path, folders, family):
    target = tmp_path / "run.safetensors"
    texts = ["--text", TEXTS[0], "--text", TEXTS[1]]  # two lengths: right padding on the second
    assert invoke("capture", str(folders[family]), *texts, "-o", str(target), "-q").exit_code == 0
    saved = read_tensors(str(target))
    assert not [name for name in saved.tensors if name.startswith("masks.")]  # none stored whole
    described = saved.metadata["masks"]
    own = capture.capture(folders[family], TEXTS, reference=True)
    for index in range(2):
        name = saved.metadata["layers"][str(index)]["mask"]
        assert described[name]["kind"] == FAMILIES[family]
        assert described[name]["lengths"] == own.lengths
        assert described[name]["window"] == (3 if family == "mistral" else None)
        read = layer_inputs(saved, index)
        assert read.mask_source == f"{target}:{name}"
        passed = own.layers[index].mask.numpy()  # what the model handed its attention
        np.testing.assert_array_equal(read.mask, np.broadcast_to(passed, read.mask.shape))
        # The model's own probabilities are zero exactly where the mask closes a key.
        probabilities = own.probabilities[index].numpy()  # (B, H, L, L)
        closed = np.broadcast_to(~read.mask, probabilities.shape)
        open_rows = read.mask.any(axis=-1, keepdims=True)
        assert (probabilities[closed & open_rows] == 0).all()
        assert (probabilities[~closed] > 0).all()


def test_a_long_causal_capture_stores_no_mask(tmp_path):
    import transformers

    folder = tmp_path / "long"
    config = transformers.LlamaConfig(
        vocab_size=len(WORDS), hidden_size=16, intermediate_size=32, num_attention_heads=2,
        num_key_value_heads=1, num_hidden_layers=1, max_position_embeddings=2048, pad_token_id=1,
        bos_token_id=2, eos_token_id=3,
    )  # fmt: skip
    torch.manual_seed(0)
    transformers.LlamaModel(config).save_pretrained(folder)
    _save_tokenizer(folder, "right")
    text = " ".join(["the cat sat on the mat"] * 300)  # 1801 tokens: a whole bool mask is 3.2 MB
    target = tmp_path / "long.safetensors"
    result = invoke("capture", str(folder), text, "-o", str(target), "-q")
    assert result.exit_code == 0, result.output
    saved = read_tensors(str(target))
    positions = len(saved.metadata["tokens"][0])
    assert positions == 1801
    tensor_bytes = sum(saved.tensors[f"layers.0.{role}"].nbytes for role in ("query", "key", "value"))
    assert target.stat().st_size < tensor_bytes + 64 * 1024 < positions * positions
    assert saved.metadata["masks"]["masks.0"] == {
        "kind": "causal", "window": None, "lengths": [positions], "shape": [1, 1, positions, positions]
    }  # fmt: skip


def test_every_reader_gets_the_expanded_mask(tmp_path, folders):
    """compute --layer, heads, rollout and explore read the same mask from the description as from
    the same capture with the mask stored whole (a file as attncli wrote it before)."""
    from safetensors.numpy import load_file, save_file

    from attncli.explore.session import open_explorer

    compact = tmp_path / "compact.safetensors"
    texts = ["--text", TEXTS[0], "--text", TEXTS[1]]
    assert invoke("capture", str(folders["mistral"]), *texts, "-o", str(compact), "-q").exit_code == 0
    saved = read_tensors(str(compact))
    whole = tmp_path / "whole.safetensors"
    metadata = {key: json.dumps(value) for key, value in saved.metadata.items() if key != "masks"}
    tensors = load_file(str(compact))
    for name, description in saved.metadata["masks"].items():
        tensors[name] = looped(
            description["kind"], description["window"], description["lengths"], *description["shape"][2:]
        )
    save_file(tensors, str(whole), metadata=metadata)
    for command in (["compute", "--layer", "1"], ["heads"], ["rollout"]):
        outputs = [
            invoke(command[0], str(path), *command[1:], "--format", "json") for path in (compact, whole)
        ]
        assert all(output.exit_code == 0 for output in outputs), [output.output for output in outputs]
        first, second = (json.loads(output.stdout) for output in outputs)
        first.pop("meta", None), second.pop("meta", None)
        assert first == second, command
    explorers = [open_explorer([str(path)]) for path in (compact, whole)]
    masks_seen = [np.asarray(explorer.problem.mask) for explorer in explorers if explorer.problem is not None]
    assert len(masks_seen) == 2
    np.testing.assert_array_equal(*masks_seen)


def test_a_damaged_description_in_a_file_is_refused_with_its_name(tmp_path, folders):
    from safetensors.numpy import load_file, save_file

    compact = tmp_path / "compact.safetensors"
    assert invoke("capture", str(folders["llama"]), TEXTS[0], "-o", str(compact), "-q").exit_code == 0
    metadata = dict(read_tensors(str(compact)).metadata)
    metadata["masks"] = {"masks.0": {"kind": "spiral"}}
    damaged = tmp_path / "damaged.safetensors"
    save_file(load_file(str(compact)), str(damaged), metadata={k: json.dumps(v) for k, v in metadata.items()})
    assert_error(
        invoke("compute", str(damaged), "--layer", "0"), f"{damaged}:masks.0: the mask's kind is 'spiral'"
    )
