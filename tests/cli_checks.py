"""What every command-line test checks of an error: shared by the test modules."""

from __future__ import annotations

from typing import Any


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
