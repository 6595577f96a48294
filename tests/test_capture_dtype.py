"""`attn capture` and `attn model` beyond float32 on the CPU: --dtype, --device, --device-map, each
layer written as it runs, masks stored once, and the status line on stderr.

Four architectures built here from a config, with random weights large enough (initializer_range
0.2) for scores of up to ~10 in size, so that attention is peaked rather than even: Llama
(grouped-query attention, rotary), Mistral (a sliding window of 3), GPT-2 and BERT. The model's own
probabilities (eager attention, output_attentions) in each dtype are the reference.
"""

from __future__ import annotations

import importlib.util
import json
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers import assert_error
from typer.testing import CliRunner

if importlib.util.find_spec("transformers") is None:
    pytest.skip("needs the models extra: pip install 'attncli[models]'", allow_module_level=True)

from test_capture import TEXTS, WORDS, _save_tokenizer

from attncli.cli import app
from attncli.cli import capture as capture_cli
from attncli.compute import attention
from attncli.models import capture

runner = CliRunner()
FAMILIES = ("llama", "mistral", "gpt2", "bert")


def invoke(*args: str) -> Any:
    return runner.invoke(app, list(args), env={"COLUMNS": "120", "NO_COLOR": "1"})


def _model(folder: Path, family: str, layers: int = 3) -> Path:
    """A random-weight model of `family` saved with its tokenizer (right padding)."""
    import transformers

    common = {
        "vocab_size": len(WORDS),
        "pad_token_id": 1,
        "bos_token_id": 2,
        "eos_token_id": 3,
        "initializer_range": 0.2,
    }
    shape = {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_attention_heads": 4,
        "num_hidden_layers": layers,
        "max_position_embeddings": 64,
        **common,
    }
    torch.manual_seed(0)
    if family == "llama":
        model: Any = transformers.LlamaModel(transformers.LlamaConfig(**shape, num_key_value_heads=2))
    elif family == "mistral":
        config = transformers.MistralConfig(**shape, num_key_value_heads=2, sliding_window=3)
        model = transformers.MistralModel(config)
    elif family == "qwen2":  # a window on the first layer only: two distinct masks
        config = transformers.Qwen2Config(
            **shape, num_key_value_heads=2, use_sliding_window=True, sliding_window=3, max_window_layers=1
        )
        model = transformers.Qwen2Model(config)
    elif family == "llama-lm":  # with its language-model head, to decode
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**shape, num_key_value_heads=2))
    elif family == "mistral-lm":
        config = transformers.MistralConfig(**shape, num_key_value_heads=2, sliding_window=3)
        model = transformers.MistralForCausalLM(config)
    elif family == "gpt2":
        config = transformers.GPT2Config(n_embd=64, n_layer=layers, n_head=4, n_positions=64, **common)
        model = transformers.GPT2Model(config)
    else:
        model = transformers.BertModel(transformers.BertConfig(**shape))
    model.save_pretrained(folder)
    _save_tokenizer(folder, "right")
    return folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("dtype-models")
    families = (*FAMILIES, "qwen2", "llama-lm", "mistral-lm")
    return {family: _model(root / family, family) for family in families}


# --- half precision: attncli agrees with the model in its own dtype ----------------------------


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("family", FAMILIES)
def test_half_precision_captures_agree_with_the_models_own_probabilities(folders, family, dtype):
    run = capture.capture(folders[family], TEXTS, reference=True, dtype=dtype)
    assert run.dtype == dtype
    assert sorted(run.layers) == [0, 1, 2]
    worst, largest_score = 0.0, 0.0
    for index, layer in run.layers.items():
        assert layer.query.dtype == layer.key.dtype == layer.value.dtype == getattr(torch, dtype)
        result = attention(
            layer.query, layer.key, layer.value, mask=layer.mask, scale=layer.scaling, dtype=dtype
        )
        own = run.probabilities[index]
        assert result.weights.shape == own.shape
        worst = max(worst, capture.max_abs_difference(result.weights, own, result.masked_rows))
        repeat = layer.query.shape[1] // layer.key.shape[1]
        keys = layer.key.double().repeat_interleave(repeat, 1)  # (B, Hkv, L, d) -> (B, H, L, d)
        scores = layer.query.double() @ keys.transpose(-1, -2) * layer.scaling  # (B, H, L, L)
        largest_score = max(largest_score, float(scores.abs().max()))
    assert largest_score > 4, "weights too small for a telling comparison"
    assert worst <= capture.TOLERANCES[dtype], (family, dtype, worst)
    print(f"{family} {dtype}: max abs diff {worst:.3g}, largest |score| {largest_score:.3g}")


@pytest.mark.parametrize(("family", "dtype"), [(f, "float32") for f in FAMILIES] + [("llama", "bfloat16")])
def test_the_agreement_pass_compares_layer_by_layer_what_output_attentions_returns(folders, family, dtype):
    """`agree=True` (attn model) keeps no probabilities, only each chosen layer's largest difference;
    it is the difference from the probabilities output_attentions returns (the eager pass of
    `reference=True`), computed here in float64 over the rows that have an open key."""
    run = capture.capture(folders[family], TEXTS, [0, 2], agree=True, dtype=dtype)
    assert run.probabilities == {}
    assert sorted(run.differences) == [0, 2]
    reference = capture.capture(folders[family], TEXTS, [0, 2], reference=True, dtype=dtype)
    for index, layer in reference.layers.items():
        result = attention(
            layer.query, layer.key, layer.value, mask=layer.mask, scale=layer.scaling, dtype=dtype
        )
        weights = torch.as_tensor(result.weights).double().numpy()  # (B, H, L, L)
        own = reference.probabilities[index].double().numpy()
        rows = np.broadcast_to(layer.mask.numpy(), weights.shape).any(axis=-1)  # (B, H, L): an open key
        expected = float(np.abs(weights - own).max(axis=-1)[rows].max())
        assert run.differences[index] == pytest.approx(expected, rel=1e-6, abs=1e-12), (family, index)
        assert run.differences[index] <= capture.TOLERANCES[dtype]


def test_attn_model_computes_in_the_models_dtype_and_judges_by_its_tolerance(folders):
    result = invoke("model", str(folders["gpt2"]), *TEXTS[:1], "--dtype", "bfloat16", "--format", "json")
    assert result.exit_code == 0, result.output
    meta = json.loads(result.stdout)["meta"]
    assert meta["dtype"] == "bfloat16"
    assert meta["model_dtype"] == "bfloat16"
    assert meta["agreement"]["tolerance"] == capture.TOLERANCES["bfloat16"]
    assert meta["agreement"]["passed"] is True
    assert result.stderr == ""  # no status line when stderr is not a terminal


def _safetensors_dtypes(path: Path) -> dict[str, str]:
    with path.open("rb") as file:
        (length,) = struct.unpack("<Q", file.read(8))
        header = json.loads(file.read(length))
    return {name: entry["dtype"] for name, entry in header.items() if name != "__metadata__"}


def test_the_file_records_the_dtype_and_compute_layer_computes_in_it(tmp_path, folders):
    target = tmp_path / "run.safetensors"
    result = invoke("capture", str(folders["llama"]), *TEXTS[:1], "--dtype", "bfloat16", "-o", str(target))
    assert result.exit_code == 0, result.output
    assert "(llama, bfloat16 on cpu)" in result.stdout
    stored = _safetensors_dtypes(target)
    assert {stored[f"layers.1.{role}"] for role in ("query", "key", "value")} == {"BF16"}
    assert "masks.0" not in stored  # causal: described in the metadata, not stored as bools
    shown = json.loads(invoke("compute", str(target), "--layer", "1", "--format", "json").stdout)
    assert shown["meta"]["dtype"] == "bfloat16"
    wide = invoke("compute", str(target), "--layer", "1", "--dtype", "float32", "--format", "json")
    assert json.loads(wide.stdout)["meta"]["dtype"] == "float32"
    # The model's own probabilities in bfloat16, against what compute --layer shows from the file.
    own = capture.capture(folders["llama"], TEXTS[:1], [1], reference=True, dtype="bfloat16").probabilities[1]
    np.testing.assert_allclose(np.array(shown["weights"]), own.numpy(), atol=capture.TOLERANCES["bfloat16"])

    half = tmp_path / "run.npz"
    result = invoke("capture", str(folders["bert"]), *TEXTS[:1], "--dtype", "float16", "-o", str(half), "-q")
    assert result.exit_code == 0, result.output
    with np.load(half) as archive:
        assert archive["layers.0.query"].dtype == np.float16
        assert json.loads(str(archive["meta"]))["dtype"] == "float16"
    shown = json.loads(invoke("compute", str(half), "--layer", "0", "--format", "json").stdout)
    assert shown["meta"]["dtype"] == "float16"


def test_device_and_dtype_are_checked_before_the_model_is_loaded(tmp_path, folders):
    out = str(tmp_path / "run.safetensors")
    folder = str(folders["llama"])
    assert_error(invoke("capture", folder, "x", "-o", out, "--dtype", "float64"), "--dtype float64")
    assert_error(invoke("capture", folder, "x", "-o", out, "--device", "gpu"), "--device gpu")
    assert_error(invoke("model", folder, "x", "--device-map", "{]"), "--device-map {]: not JSON")
    assert_error(invoke("model", folder, "x", "--device-map", '["cpu"]'), "object of module name to device")
    assert_error(invoke("model", folder, "x", "--device-map", str(tmp_path / "none.json")), "--device-map")
    if not torch.cuda.is_available():
        assert_error(invoke("capture", folder, "x", "-o", out, "--device", "cuda"), "'cuda' is not available")
    assert not Path(out).exists()


# --- device maps (Transformers and Accelerate place the layers) ------------------------------


def test_a_device_map_with_disk_offload_captures_what_the_plain_capture_does(tmp_path, folders, monkeypatch):
    pytest.importorskip("accelerate")
    folder = folders["llama"]
    plain = capture.capture(folder, TEXTS)
    where: dict[str, set[str]] = {}
    forward = capture._forward

    def noting_placement(model, *args, **kwargs):
        for name in ("layers.0", "layers.1"):
            where[name] = {p.device.type for p in model.get_submodule(name).parameters()}
        return forward(model, *args, **kwargs)

    monkeypatch.setattr(capture, "_forward", noting_placement)
    placement = {
        "embed_tokens": "cpu",
        "rotary_emb": "cpu",
        "layers.0": "cpu",
        "layers.1": "disk",
        "layers.2": "disk",
        "norm": "cpu",
    }
    mapped = tmp_path / "mapped.safetensors"
    result = invoke(
        "capture",
        str(folder),
        *(option for text in TEXTS for option in ("--text", text)),
        "--device-map",
        json.dumps(placement),
        "--offload-folder",
        str(tmp_path / "offload"),
        "-o",
        str(mapped),
    )
    assert result.exit_code == 0, result.output
    # Layer 1's weights are not in memory between passes (Accelerate loads them for its forward).
    assert where == {"layers.0": {"cpu"}, "layers.1": {"meta"}}
    from attncli.io.loaders import layer_inputs
    from attncli.io.loaders import read_tensors as load_file

    saved = load_file(str(mapped))
    assert saved.metadata["device_map"] == placement
    for index, layer in plain.layers.items():
        for role in ("query", "key", "value"):
            assert np.array_equal(saved.tensors[f"layers.{index}.{role}"], getattr(layer, role).numpy())
        assert np.array_equal(layer_inputs(saved, index).mask, layer.mask.numpy())


def test_a_device_map_without_accelerate_says_how_to_get_it(tmp_path, folders, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "accelerate" else real(name, *a)
    )
    out = tmp_path / "run.safetensors"
    assert_error(
        invoke("capture", str(folders["llama"]), "the cat", "--device-map", "auto", "-o", str(out)),
        "--device-map needs the accelerate package: pip install 'attncli[models]'",
    )
    assert not out.exists()


# --- each layer to the file as it runs; masks once ---------------------------------------------


class _Events:
    """A progress and a sink that note, in order, each layer run and each tensor received."""

    def __init__(self) -> None:
        self.events: list[str] = []

    def stage(self, text: str) -> None:
        self.events.append(f"stage {text.split()[0]}")

    def layer(self, done: int, total: int | None) -> None:
        self.events.append(f"ran {done}/{total}")

    def add(self, name: str, array: np.ndarray, *, bfloat16: bool = False) -> None:
        self.events.append(f"add {name}")


def test_each_chosen_layer_goes_to_the_sink_as_soon_as_it_has_run(folders):
    events = _Events()
    run = capture.capture(
        folders["llama"], TEXTS, [0, 2], sink=lambda settings: events, progress=events, reference=True
    )
    assert run.layers == {}  # nothing kept in memory: the tensors went to the sink
    assert sorted(run.summaries) == [0, 2]
    assert sorted(run.probabilities) == [0, 2]
    recording = events.events[
        events.events.index("stage capturing") + 1 : events.events.index("stage agreement")
    ]
    assert recording == [  # the causal and padding mask is described in the metadata, not added
        "add layers.0.query",
        "add layers.0.key",
        "add layers.0.value",
        "ran 1/3",
        "ran 2/3",  # layer 1 was not chosen: nothing copied
        "add layers.2.query",
        "add layers.2.key",
        "add layers.2.value",
        "ran 3/3",
    ]


def test_layers_that_share_a_mask_store_it_once_and_each_layer_reads_its_own(tmp_path, folders):
    folder = folders["qwen2"]
    reference = capture.capture(folder, TEXTS, reference=True)
    target = tmp_path / "run.safetensors"
    assert (
        invoke("capture", str(folder), *TEXTS[:1], "--text", TEXTS[1], "-o", str(target), "-q").exit_code == 0
    )
    from attncli.io.loaders import read_tensors as load_file

    saved = load_file(str(target))
    names = {index: entry["mask"] for index, entry in saved.metadata["layers"].items()}
    # Qwen2 windows the layers from max_window_layers on: full attention first, then the window.
    assert names == {"0": "masks.0", "1": "masks.1", "2": "masks.1"}
    # Both are patterns (a causal triangle, a causal window of 3; right padding): stored as descriptions.
    assert not [name for name in saved.tensors if name.startswith("masks.")]
    described = saved.metadata["masks"]
    assert sorted(described) == ["masks.0", "masks.1"]
    assert [described[name]["window"] for name in ("masks.0", "masks.1")] == [None, 3]
    for index in range(3):
        shown = invoke("compute", str(target), "--layer", str(index), "--format", "json")
        assert shown.exit_code == 0, shown.output
        assert json.loads(shown.stdout)["meta"]["mask"].endswith(names[str(index)])
        own = reference.probabilities[index].numpy()
        real = ~np.isnan(own).any(axis=-1) & (own.sum(axis=-1) > 0)
        np.testing.assert_allclose(np.array(json.loads(shown.stdout)["weights"])[real], own[real], atol=1e-5)


def test_an_error_during_the_pass_leaves_no_file(tmp_path, folders, monkeypatch):
    real = capture._Recorder.record

    def failing(self, *args, **kwargs):
        if self.calls == 2:
            raise capture.InputError("layer 2 of this model uses softcap, which attncli does not compute")
        real(self, *args, **kwargs)

    monkeypatch.setattr(capture._Recorder, "record", failing)
    target = tmp_path / "run.safetensors"
    assert_error(invoke("capture", str(folders["llama"]), "the cat", "-o", str(target)), "softcap")
    assert list(tmp_path.iterdir()) == []  # neither the file nor its .partial


# --- decoding steps (--generate) ---------------------------------------------------------------


@pytest.mark.parametrize("family", ["llama-lm", "mistral-lm"])
def test_generate_steps_agree_with_the_models_own_attention_while_generating(tmp_path, folders, family):
    """Each step of `attn capture --generate 4`, shown by `attn compute --layer L --step S`, against
    the probabilities `generate(..., output_attentions=True)` returns for that step (eager)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from attncli.io.loaders import read_tensors, step_inputs

    folder, text, steps = folders[family], "the cat sat on the mat", 4
    target = tmp_path / "run.safetensors"
    result = invoke("capture", str(folder), text, "--generate", str(steps), "-o", str(target))
    assert result.exit_code == 0, result.output
    model = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    encoded = tokenizer([text], return_tensors="pt")
    generated = model.generate(
        **encoded,
        max_new_tokens=steps + 1,  # the last token chosen is read by no step
        do_sample=False,
        output_attentions=True,
        return_dict_in_generate=True,
        pad_token_id=1,
    )
    prompt = encoded["input_ids"].shape[-1]
    read = tokenizer.convert_ids_to_tokens(generated.sequences[0, prompt : prompt + steps])
    source = read_tensors(str(target))
    assert source.metadata["steps"]["tokens"] == read
    worst = 0.0
    for step in range(steps):
        for layer in range(3):
            # (1, H, 1, keys): every key so far, or under a sliding window the cached last 3
            own = generated.attentions[step + 1][layer]
            inputs = step_inputs(source, layer, step)
            weights = attention(
                inputs.query, inputs.key, inputs.value, mask=inputs.mask, scale=inputs.scale
            ).weights  # (1, H, 1, prompt + step + 1)
            assert weights.shape[-1] == prompt + step + 1
            cached = own.shape[-1]
            assert not weights[..., :-cached].any()  # keys out of the cache have no weight
            worst = max(worst, float((weights[..., -cached:] - own).abs().max()))
    assert worst <= capture.TOLERANCE, worst
    if family == "mistral-lm":  # the window of 3 keys, in the cache too
        assert int(inputs.mask.sum()) == 3
        assert generated.attentions[-1][0].shape[-1] == 3
    shown = invoke("compute", str(target), "--layer", "1", "--step", "2", "--format", "json")
    assert shown.exit_code == 0, shown.output
    payload = json.loads(shown.stdout)
    own = generated.attentions[3][1].numpy()
    np.testing.assert_allclose(np.array(payload["weights"])[..., -own.shape[-1] :], own, atol=1e-5)
    table = invoke("compute", str(target), "--layer", "1", "--step", "2", "--head", "0").stdout
    assert "1×" in table  # one query row: the token step 2 read, labelled so
    assert read[2] in table.split("q\\k")[1]


def test_generate_refuses_what_it_cannot_decode(tmp_path, folders):
    out = str(tmp_path / "run.safetensors")
    assert_error(
        invoke(
            "capture", str(folders["llama-lm"]), "--text", "a", "--text", "b", "--generate", "2", "-o", out
        ),
        "--generate decodes one text",
    )
    assert_error(
        invoke("capture", str(folders["bert"]), "the cat", "--generate", "2", "-o", out), "--generate"
    )
    plain = tmp_path / "plain.safetensors"
    assert invoke("capture", str(folders["llama-lm"]), "the cat", "-o", str(plain), "-q").exit_code == 0
    assert_error(invoke("compute", str(plain), "--layer", "0", "--step", "0"), "holds no decoding steps")
    assert not Path(out).exists()


# --- the status line ------------------------------------------------------------------------------


def test_the_status_line_names_each_stage_with_its_time_on_a_terminal_only(tmp_path, folders, monkeypatch):
    target = tmp_path / "run.safetensors"
    args = ["capture", str(folders["llama"]), "the cat", "-o", str(target), "-f"]
    assert invoke(*args).stderr == ""  # not a terminal
    monkeypatch.setattr(capture_cli, "_stderr_is_terminal", lambda: True)
    assert invoke(*args, "-q").stderr == ""
    lines = [
        line for line in invoke(*args).stderr.splitlines() if line
    ]  # Rich ends a non-terminal with one blank
    stages = [line.split(" ", 2)[1] for line in lines]
    assert stages == ["loading", "tokenising", "capturing", "writing"], lines
    assert all(line.startswith("✓ ") and line.endswith(" s") for line in lines), lines
    model = [
        line
        for line in invoke("model", str(folders["llama"]), "the cat", "--format", "json").stderr.splitlines()
        if line
    ]
    assert [line.split(" ", 2)[1] for line in model] == ["loading", "tokenising", "capturing", "agreement"]


def test_the_status_line_shows_the_layers_as_they_run():
    shown: list[str] = []
    status = capture_cli.StatusLine(enabled=True)
    status.enabled = True

    class Recording:
        def update(self, task: Any, description: str) -> None:
            shown.append(description)

    status.progress, status.task, status.text = Recording(), 0, "capturing every layer"  # type: ignore[assignment]
    status.layer(2, 32)
    status.layer(3, None)
    assert shown == [
        "capturing every layer: attention layer 2/32",
        "capturing every layer: attention layer 3",
    ]


# --- CUDA (where a GPU is lent) -------------------------------------------------------------------


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")
@pytest.mark.parametrize("dtype", ["bfloat16", "auto"])
def test_cuda_capture_agrees_with_the_models_own_probabilities(tmp_path, folders, dtype):
    run = capture.capture(folders["llama"], TEXTS, reference=True, device="cuda", dtype=dtype)
    assert run.device.startswith("cuda")
    assert run.dtype == ("bfloat16" if dtype == "bfloat16" else "float32")  # auto: the checkpoint's own
    for index, layer in run.layers.items():
        assert layer.query.device.type == "cpu"  # moved off the GPU as the layer finished
        result = attention(
            layer.query,
            layer.key,
            layer.value,
            mask=layer.mask,
            scale=layer.scaling,
            dtype=run.dtype,
            device="cuda",
        )
        difference = capture.max_abs_difference(
            result.weights.cpu(), run.probabilities[index], result.masked_rows
        )
        assert difference <= capture.TOLERANCES[run.dtype], (index, difference)
    target = tmp_path / "run.safetensors"
    result = invoke(
        "model",
        str(folders["llama"]),
        "the cat",
        "--device",
        "cuda",
        "--dtype",
        "bfloat16",
        "-o",
        str(target),
    )
    assert result.exit_code == 0, result.output
    assert "agrees with the model's attention probabilities" in result.stdout
