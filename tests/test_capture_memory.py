"""The peak memory of `attn capture`: the model's own forward pass plus at most 1.5 layers' tensors.

In a subprocess (its peak resident memory is its own, reset before each step through Linux's
clear_refs): a random-weight Llama of 8 layers whose query, key and value over a 1000-token text
take together over 4 times the model's size. First the model's own forward pass (eager
attention) over the text sets the baseline peak; then the capture,
each layer written to the file as it runs, may add at most 1.5 layers' query, key, value and mask;
last, as a control that the measurement can see the difference, a capture that keeps every layer
in memory breaks that bound. (Eager attention's own (heads, positions, positions) scores are the
larger part of the forward pass's peak, and they come and go a layer at a time.)

`attn model`'s agreement pass (`agree=True`) compares each layer's probabilities as it runs: it
adds at most 3 layers' (heads, positions, positions) probabilities to the forward pass; its
control, the eager pass with output_attentions (`reference=True`), keeps all 8 layers' and adds
over 6.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

if importlib.util.find_spec("transformers") is None:
    pytest.skip("needs the models extra: pip install 'attncli[models]'", allow_module_level=True)

SCRIPT = r"""
import json, sys
from pathlib import Path

import torch

torch.set_num_threads(1)  # one thread: no worker's scratch memory comes and goes with the load
sys.path.insert(0, sys.argv[2])
from test_capture import WORDS, _save_tokenizer

import transformers
from attncli.io.writers import TensorStream
from attncli.models import capture

folder, target = Path(sys.argv[1]) / "model", Path(sys.argv[1]) / "run.safetensors"
config = transformers.LlamaConfig(
    hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=4,
    num_hidden_layers=8, vocab_size=len(WORDS), max_position_embeddings=4096,
    pad_token_id=1, bos_token_id=2, eos_token_id=3,
)
torch.manual_seed(0)
transformers.LlamaModel(config).save_pretrained(folder)
_save_tokenizer(folder, "right")
del config


def reset_peak() -> None:
    # Linux: "5" resets the peak resident size (VmHWM) to the current one, so that each step's peak
    # is its own, not that of building and saving the model (or of anything else before it).
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")


def peak() -> int:
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024  # kB


text = " ".join(["the cat sat on the mat"] * 167)
with capture._quiet():
    tokenizer, model, placed = capture._load(folder)
    encoded = capture._encode(tokenizer, [text], model.config, folder)
    model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    model.set_attn_implementation("eager")
    reset_peak()
    with torch.no_grad():
        model(**encoded)  # the model's own forward pass: the baseline
    model.set_attn_implementation(capture.IMPLEMENTATION)
    before = peak()
    reset_peak()
    with TensorStream(target, expected_metadata={}, expected_tensors=64) as stream:
        run = capture._capture_encoded(
            model, tokenizer, encoded, [text], None, str(folder), placed=placed, sink=lambda _: stream
        )
        stream.commit(run.metadata())
    streamed = peak()
    # attn model's agreement pass, compared layer by layer (the capture pass again first, streamed)
    reset_peak()
    with TensorStream(target, expected_metadata={}, expected_tensors=64) as stream:
        agreed = capture._capture_encoded(
            model, tokenizer, encoded, [text], None, str(folder), placed=placed, sink=lambda _: stream,
            agree=True,
        )
    agreement = peak()
    # its control: the eager pass with output_attentions, which keeps every layer's probabilities
    reset_peak()
    with TensorStream(target, expected_metadata={}, expected_tensors=64) as stream:
        capture._capture_encoded(
            model, tokenizer, encoded, [text], None, str(folder), placed=placed, sink=lambda _: stream,
            reference=True,
        )
    every_probability = peak()
    reset_peak()
    kept = capture._capture_encoded(model, tokenizer, encoded, [text], None, str(folder), placed=placed)
    in_memory = peak()
summary = next(iter(run.summaries.values()))
sizes = [summary.query_shape, summary.key_shape, summary.value_shape]
qkv_bytes = sum(4 * torch.Size(shape).numel() for shape in sizes)  # float32
layer_bytes = qkv_bytes + torch.Size(summary.mask_shape).numel()  # and its bool mask
print(json.dumps({
    "model_bytes": model_bytes, "layer_bytes": layer_bytes, "qkv_bytes": qkv_bytes,
    "layers": len(run.summaries), "tokens": len(run.tokens[0]), "forward_peak": before,
    "streamed_peak": streamed, "in_memory_peak": in_memory, "kept_layers": len(kept.layers),
    "file_bytes": target.stat().st_size, "agreement_peak": agreement,
    "output_attentions_peak": every_probability, "compared_layers": len(agreed.differences),
    "probabilities_bytes": 4 * summary.query_shape[1] * summary.query_shape[2] ** 2,
}))
"""


# Not marked slow: its figures are its own subprocess's peak resident memory, which tests running
# beside it do not change, so it need not wait for the other slow tests (8-10 s of the suite).
@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's /proc/self/clear_refs")
def test_a_capture_adds_at_most_one_and_a_half_layers_to_the_forward_pass(tmp_path):
    tests = Path(__file__).parent
    # Every buffer over 64 KiB its own mapping, unmapped when freed: the resident peak is then the
    # peak of live memory (glibc's default thresholds move, and keep freed buffers at random).
    steady = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path), str(tests)],
        env={**os.environ, **steady},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    numbers = json.loads(done.stdout.strip().splitlines()[-1])
    layer, layers = numbers["layer_bytes"], numbers["layers"]
    assert layers == 8
    assert numbers["tokens"] > 1000
    assert numbers["qkv_bytes"] * layers > 4 * numbers["model_bytes"]  # over 4 times the model
    assert numbers["file_bytes"] > layers * numbers["qkv_bytes"]  # every layer went to the file
    added = numbers["streamed_peak"] - numbers["forward_peak"]
    assert added <= 1.5 * layer, numbers
    # The control: keeping every layer in memory breaks the same bound, in the same measurement.
    assert numbers["in_memory_peak"] - numbers["forward_peak"] > 1.5 * layer, numbers
    # attn model's agreement pass: one layer's probabilities compared at a time (attncli's weights
    # and scores beside the model's: measured 2.3 of them), against output_attentions, which keeps
    # all 8 layers' (measured 8.2).
    probabilities = numbers["probabilities_bytes"]
    assert numbers["compared_layers"] == layers
    agreement = numbers["agreement_peak"] - numbers["forward_peak"]
    assert agreement <= 3 * probabilities + 1.5 * layer, numbers
    assert numbers["output_attentions_peak"] - numbers["forward_peak"] > 6 * probabilities, numbers
    print({**numbers, "added_by_capture": added})
