"""CPU buffers for the weights backed by transparent huge pages.

A fresh (n x W) weights buffer of 512 MiB is faulted in 4 KiB at a time: 131,072 page faults, a
large share of an attention's time on a CPU (the benchmark's `api` rows). Torch backs its own large
buffers with huge pages only when THP_MEM_ALLOC_ENABLE is set before it is imported, which the `attn`
command does and a library cannot (its user imported torch first). So the weights buffer is mapped
here and advised MADV_HUGEPAGE (Linux; the kernel's `madvise` mode, the common default, honours it):
2 MiB a fault. Elsewhere, below HUGE_BYTES, or where torch does it itself, an ordinary `torch.empty`.
"""

from __future__ import annotations

import math
import mmap
import os

import torch

#: Buffers from this size up are mapped with huge pages: a few pages' worth, below which faults cost little.
HUGE_BYTES = 8 << 20
_PAGE = 2 << 20
_ADVICE = getattr(mmap, "MADV_HUGEPAGE", None)
_FLAGS = getattr(mmap, "MAP_PRIVATE", 0) | getattr(mmap, "MAP_ANONYMOUS", 0)
#: Torch backs its large buffers with huge pages itself (the `attn` command sets this before it
#: imports torch): its allocator, which reuses what it freed, is then as good.
_TORCH_HUGE = os.environ.get("THP_MEM_ALLOC_ENABLE") == "1"


def empty(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """An uninitialised contiguous tensor of `shape`: on the CPU, from HUGE_BYTES up and where the
    platform has MADV_HUGEPAGE, in its own mapping advised to use huge pages (freed with the tensor:
    the tensor keeps the mapping alive); else `torch.empty`."""
    count = math.prod(shape)
    size = count * torch.empty((), dtype=dtype).element_size()
    if device.type != "cpu" or _ADVICE is None or not _FLAGS or size < HUGE_BYTES or _TORCH_HUGE:
        return torch.empty(shape, dtype=dtype, device=device)
    try:
        mapping = mmap.mmap(-1, -(-size // _PAGE) * _PAGE, flags=_FLAGS)
        mapping.madvise(_ADVICE)
    except (OSError, ValueError):  # no memory to map, or advice refused: torch's own allocator
        return torch.empty(shape, dtype=dtype, device=device)
    return torch.frombuffer(mapping, dtype=dtype, count=count).view(shape)
