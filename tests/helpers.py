"""Helpers the test modules share: the checks of an error line, tensor files as bytes, result files."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open


def assert_error(result: Any, *words: str, status: int = 2) -> str:
    """Exactly one `attn: error:` line on stderr holding `words`, the status, no traceback (nor an
    exception other than the exit), nothing on stdout. Returns the line."""
    assert result.exit_code == status, (result.exit_code, result.output)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.stdout == ""
    stderr = str(result.stderr)
    assert stderr.startswith("attn: error: "), stderr
    assert stderr.endswith("\n"), stderr
    assert stderr.count("\n") == 1, stderr
    assert "\r" not in stderr, stderr
    assert "Traceback" not in result.output
    for word in words:
        assert word in stderr, (word, stderr)
    return stderr


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def npz_bytes(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def read_result(path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The arrays and metadata of a result file attn wrote, read by each format's own reader."""
    if path.suffix == ".json":
        payload = json.loads(path.read_text())
        return {k: np.array(v) for k, v in payload.items() if k != "meta"}, payload["meta"]
    if path.suffix == ".npz":
        with np.load(path) as archive:
            arrays = {name: archive[name] for name in archive.files}
        return arrays, json.loads(str(arrays.pop("meta")))
    # Through torch: safetensors' NumPy API has no bfloat16. BF16 widened (exactly) to float32.
    with safe_open(str(path), "pt") as file:
        meta = {key: json.loads(value) for key, value in file.metadata().items()}
        tensors = {name: file.get_tensor(name) for name in file.keys()}  # noqa: SIM118
    widened = {name: t.float() if t.dtype == torch.bfloat16 else t for name, t in tensors.items()}
    return {name: tensor.numpy() for name, tensor in widened.items()}, meta


def safetensors_dtypes(path: Path) -> dict[str, str]:
    """The dtype codes ("BF16", "F32", ...) a .safetensors file's header gives its tensors."""
    with path.open("rb") as file:
        length = int.from_bytes(file.read(8), "little")
        header = json.loads(file.read(length))
    return {name: entry["dtype"] for name, entry in header.items() if name != "__metadata__"}
