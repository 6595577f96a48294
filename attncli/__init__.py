"""attncli: see attention weights in the terminal.

The library API needs no CLI: `attention(query, key, value, ...)` returns an `AttentionResult` with
`.weights` and `.output` (its `repr` a few lines, `rich.print(result)` and a notebook the CLI's
view), `show(x, ...)` prints that view of a result, weights or query/key/value, and
`load_tensor(path)` reads one tensor, and `capture(model, tokenizer, texts)` records what a loaded
Transformers model's attention used, layer by layer. All are imported on first use, so that
`import attncli` (and `attn --help`) stays fast. See docs/python.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from attncli.compute import AttentionResult, attention
    from attncli.display import show
    from attncli.io.loaders import load_tensor
    from attncli.models.capture import capture_model as capture

__all__ = ["AttentionResult", "__version__", "attention", "capture", "load_tensor", "show"]

_LAZY = {
    "attention": "attncli.compute",
    "AttentionResult": "attncli.compute",
    "load_tensor": "attncli.io.loaders",
    "show": "attncli.display",
    "capture": ("attncli.models.capture", "capture_model"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        where = _LAZY[name]
        module, attribute = where if isinstance(where, tuple) else (where, name)
        return getattr(importlib.import_module(module), attribute)
    raise AttributeError(f"module 'attncli' has no attribute {name!r}")
