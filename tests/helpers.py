"""Helpers the test modules share: the checks of an error line, tensor files as bytes."""

from __future__ import annotations

import io
from typing import Any

import numpy as np


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
