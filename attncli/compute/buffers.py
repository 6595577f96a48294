"""CPU buffers for the weights backed by transparent huge pages, kept for the next call once freed.

A fresh (n x W) weights buffer of 512 MiB is faulted in 4 KiB at a time: 131,072 page faults, a
large share of an attention's time on a CPU (the benchmark's `api` rows). Torch backs its own large
buffers with huge pages only when THP_MEM_ALLOC_ENABLE is set before it is imported, which the `attn`
command does and a library cannot (its user imported torch first). So the weights buffer is mapped
here and advised MADV_HUGEPAGE (Linux; the kernel's `madvise` mode, the common default, honours it):
2 MiB a fault. Elsewhere, or below HUGE_BYTES, an ordinary `torch.empty`. Also where torch backs
its buffers with huge pages itself (the `attn` command): its allocator gives a buffer this large
back to the system when freed, and the next call faults in fresh pages again.

Even in huge pages, the kernel zeroes every fresh page: a third of a 512 MiB float64 call. So the
mapping of a buffer whose last tensor is gone is kept (the most recent KEEP of them, as torch's CUDA
allocator keeps freed blocks), and the next buffer that fits in it reuses its pages; `release()`
gives the kept mappings back to the system. A kept mapping is advised MADV_FREE (Linux), so that the
kernel takes its pages back under memory pressure instead of counting them as in use.
"""

from __future__ import annotations

import contextlib
import math
import mmap
import threading
import weakref

import numpy as np
import torch

#: Buffers from this size up are mapped with huge pages: a few pages' worth, below which faults cost little.
HUGE_BYTES = 8 << 20
#: How many freed mappings are kept for reuse (the most recently freed): two, the buffers of one
#: half-precision call (its float32 scores, freed during the call, and its rounded weights), which
#: took 1.4-1.9 times a float32 call with one kept, its weights' pages fresh each time, and 1.1-1.25
#: with both (4 x 16 x 1,024 positions, 2 cores).
KEEP = 2
_PAGE = 2 << 20
_ADVICE = getattr(mmap, "MADV_HUGEPAGE", None)
_FLAGS = getattr(mmap, "MAP_PRIVATE", 0) | getattr(mmap, "MAP_ANONYMOUS", 0)
_LAZY_FREE = getattr(mmap, "MADV_FREE", None)
#: Mappings no tensor uses any more, the most recently freed last. Given back without a lock (a finalizer
#: may run in any thread, also one that holds the lock: the garbage collector can start anywhere), by
#: appending and trimming, each atomic under the GIL; taken under the lock, so that two threads never
#: take the same one.
_free: list[mmap.mmap] = []
_lock = threading.Lock()


def empty(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """An uninitialised contiguous tensor of `shape`: on the CPU, from HUGE_BYTES up and where the
    platform has MADV_HUGEPAGE, in a mapping advised to use huge pages (a kept one it fits in, or a
    new one), which goes back to the kept ones when the last tensor on it is gone; else `torch.empty`."""
    count = math.prod(shape)
    size = count * torch.empty((), dtype=dtype).element_size()
    if device.type != "cpu" or _ADVICE is None or not _FLAGS or size < HUGE_BYTES:
        return torch.empty(shape, dtype=dtype, device=device)
    length = -(-size // _PAGE) * _PAGE
    mapping = _kept(length)
    if mapping is None:
        try:
            mapping = mmap.mmap(-1, length, flags=_FLAGS)
            mapping.madvise(_ADVICE)
        except (OSError, ValueError):  # no memory to map, or advice refused: torch's own allocator
            return torch.empty(shape, dtype=dtype, device=device)
    # Torch holds the object it reads a buffer from for as long as any tensor uses the memory: a
    # NumPy view of the mapping, whose end says the mapping is free (the view keeps it mapped).
    holder = np.frombuffer(mapping, dtype=np.uint8, count=size)
    weakref.finalize(holder, _freed, mapping).atexit = False
    return torch.frombuffer(holder, dtype=dtype, count=count).view(shape)


def release() -> None:
    """Unmap the kept mappings (each goes once nothing refers to it any more)."""
    _free.clear()


def _kept(length: int) -> mmap.mmap | None:
    """The smallest kept mapping of `length` bytes or more, but at most twice as many, taken out: a
    float32 call in a float64 one's buffer of the same shape, but not a small result holding on to a
    much larger mapping for as long as it is kept."""
    with _lock:
        fitting = [m for m in list(_free) if length <= len(m) <= 2 * length]
        if not fitting:
            return None
        mapping = min(fitting, key=len)
        try:
            _free.remove(mapping)
        except ValueError:  # trimmed by a buffer freed meanwhile: map a new one
            return None
        return mapping


def _freed(mapping: mmap.mmap) -> None:
    # Called as the holder goes. A mapping trimmed here is unmapped once the holder is gone too. A kept
    # one is advised MADV_FREE: its pages stay for the next call, but the kernel may take them back
    # under memory pressure (a buffer's contents are never read before they are written).
    if _LAZY_FREE is not None:
        with contextlib.suppress(OSError, ValueError):
            mapping.madvise(_LAZY_FREE)
    _free.append(mapping)
    del _free[:-KEEP]
