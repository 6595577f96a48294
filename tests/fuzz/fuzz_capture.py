"""An atheris (libFuzzer) target: model folders broken in fuzzed ways, at `attn capture`'s loader.

The base is a tiny random-weight Llama saved with save_pretrained (2 layers, a word-level tokenizer),
made once per process. The first byte of each input picks what is broken: a value of config.json
replaced by one from a palette of hostile values (negative, zero, huge, of the wrong type), config.json
or tokenizer.json replaced by the input's bytes, the weights cut short, or one file removed. Every input
must give a `Capture` or an `attncli.errors.AttnError` (one line for the user); any other exception,
or a run of minutes, is a bug.

    .venv/bin/python tests/fuzz/fuzz_capture.py -max_total_time=300 -timeout=60 build/fuzz-capture

Without atheris the module still imports; tests/test_capture.py runs `one_input` on `seeds()`.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

atheris = None
if __name__ == "__main__":  # imported by the tests, it needs no atheris and instruments nothing
    with contextlib.suppress(ImportError):
        import atheris

if atheris is not None:
    with atheris.instrument_imports(include=["attncli"]):
        from attncli.errors import AttnError
        from attncli.models import capture
else:
    from attncli.errors import AttnError
    from attncli.models import capture

WORDS = ["<unk>", "<pad>", "<s>", "</s>", "the", "cat", "sat"]
TEXTS = ["the cat sat", "cat"]
#: What a fuzzed config.json value becomes.
PALETTE: tuple[object, ...] = (
    -1,
    0,
    1,
    3,
    2**31,
    2**63,
    10**30,
    1e308,
    float("nan"),
    0.5,
    "x",
    None,
    True,
    [],
    {},
    [1, 2],
    "llama",
    "bert",
)
_CHOICES = 5
_BASE: list[Path] = []  # the tiny model's folder, made on first use


def base_folder() -> Path:
    if _BASE:
        return _BASE[0]
    import torch
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers

    folder = Path(tempfile.mkdtemp(prefix="attn-fuzz-model-"))
    atexit.register(shutil.rmtree, folder, True)
    config = transformers.LlamaConfig(
        hidden_size=16,
        intermediate_size=32,
        num_attention_heads=2,
        num_key_value_heads=1,
        num_hidden_layers=2,
        vocab_size=len(WORDS),
        max_position_embeddings=16,
        pad_token_id=1,
    )
    torch.manual_seed(0)
    transformers.LlamaModel(config).save_pretrained(folder)
    words = Tokenizer(models.WordLevel({word: i for i, word in enumerate(WORDS)}, unk_token="<unk>"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    transformers.PreTrainedTokenizerFast(
        tokenizer_object=words, unk_token="<unk>", pad_token="<pad>"
    ).save_pretrained(folder)
    _BASE.append(folder)
    return folder


def build(data: bytes, folder: Path) -> None:
    """Break the copy of the base model in `folder` as `data` says (see the module docstring)."""
    base = base_folder()
    for path in base.iterdir():
        shutil.copyfile(path, folder / path.name)
    if not data:
        return
    choice, body = data[0] % _CHOICES, data[1:]
    if choice == 0:  # one value of config.json, or a new key, becomes a hostile value
        config = json.loads((folder / "config.json").read_text())
        keys = sorted(config)
        key = keys[body[0] % len(keys)] if body else "num_hidden_layers"
        config[key] = PALETTE[body[1] % len(PALETTE)] if len(body) > 1 else -1
        (folder / "config.json").write_text(json.dumps(config))
    elif choice == 1:
        (folder / "config.json").write_bytes(body)
    elif choice == 2:
        (folder / "tokenizer.json").write_bytes(body)
    elif choice == 3:  # the weights cut short
        weights = folder / "model.safetensors"
        size = weights.stat().st_size
        cut = int.from_bytes(body[:4].ljust(4, b"\0"), "little") % max(size, 1)
        os.truncate(weights, cut)
    else:  # one file gone
        names = sorted(path.name for path in folder.iterdir())
        (folder / names[(body[0] if body else 0) % len(names)]).unlink()


def one_input(data: bytes) -> None:
    """Capture from a folder broken as `data` says: a Capture or an AttnError, nothing else."""
    with tempfile.TemporaryDirectory(prefix="attn-fuzz-case-") as case:
        folder = Path(case)
        build(data, folder)
        try:
            result = capture.capture(folder, TEXTS)
        except AttnError as error:
            message = str(error)
        else:
            assert result.layers, "a capture records at least one layer"
            return
    assert "\n" not in message, message  # one line for the user


def seeds() -> Iterator[bytes]:
    """The base model as it is, and one input for each way of breaking it."""
    keys = sorted(json.loads((base_folder() / "config.json").read_text()))
    yield b""
    for key, value in (("num_hidden_layers", 2**31), ("hidden_size", 0), ("num_attention_heads", "x")):
        yield bytes([0, keys.index(key), PALETTE.index(value)])
    yield bytes([1]) + b'{"model_type": "llama", "hidden_size": -16}'
    yield bytes([2]) + b'{"version": "1.0", "model": {"type": "WordLevel"'
    yield bytes([3]) + (1000).to_bytes(4, "little")
    yield bytes([4, 0])


def main() -> None:
    from fuzzing import fuzz_main  # beside this script, which is run from its folder

    fuzz_main("fuzz_capture", atheris, seeds, one_input)


if __name__ == "__main__":
    main()
