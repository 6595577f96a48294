"""What the atheris targets of this folder share: seeding an empty corpus, then fuzzing."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any


def fuzz_main(
    name: str, atheris: Any, seeds: Callable[[], Iterable[bytes]], one_input: Callable[[bytes], None]
) -> None:
    """Run `one_input` under atheris with sys.argv's options; an empty corpus folder is filled with
    `seeds()` first. Without atheris, say so and exit 0 (the tests run the seeds instead)."""
    if atheris is None:
        print(f"{name}: atheris is not installed; skipping (pip install atheris)", file=sys.stderr)
        sys.exit(0)
    corpus = [arg for arg in sys.argv[1:] if not arg.startswith("-")]
    if corpus and os.path.isdir(corpus[0]) and not os.listdir(corpus[0]):
        for index, seed in enumerate(seeds()):
            Path(corpus[0], f"seed-{index:02d}").write_bytes(seed)
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
