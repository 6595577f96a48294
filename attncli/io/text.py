"""Lines of text read for options: `--labels-file` (a token per line), `--texts-file` (a text per line).

NumPy-free, so that a bad option is reported before any heavy import.
"""

from __future__ import annotations

from attncli.errors import InputError, UsageError
from attncli.io.source import read_path


def read_labels(path: str) -> list[str]:
    """One label per line (a token may contain spaces); a final newline adds no label."""
    return _read_lines(path, "--labels-file", "is a directory")


def read_texts(path: str) -> list[str]:
    """One text per line of a UTF-8 file; blank lines are skipped."""
    texts = [
        line
        for line in _read_lines(path, "--texts-file", "is a directory, not a file of texts")
        if line.strip()
    ]
    if not texts:
        raise InputError(f"--texts-file {path}: holds no text (one text per line)")
    return texts


def _read_lines(path: str, option: str, directory: str) -> list[str]:
    try:
        text = read_path(path, f"{option} {path}").decode("utf-8")
    except FileNotFoundError:
        raise UsageError(f"{option} {path}: no such file") from None
    except IsADirectoryError:
        raise UsageError(f"{option} {path}: {directory}") from None
    except UnicodeDecodeError:
        raise UsageError(f"{option} {path}: not UTF-8 text") from None
    except OSError as error:
        raise UsageError(f"{option} {path}: cannot be read: {error.strerror or error}") from None
    return text.splitlines()
