"""The few array operations that the prepare -> blocks -> sinks -> result flow needs, for both kernels.

A run holds NumPy arrays (the NumPy kernel, for small CPU inputs: no torch import) or torch tensors
(the torch kernel); the code of the flow is written once, with the operations here where NumPy and
torch spell them differently. Each looks at the array it is given and imports torch only for a
tensor, so a NumPy run never loads it. The torch branches are the calls the flow made before,
unchanged (the torch path keeps its speed). No I/O, no printing.
"""

from __future__ import annotations

import sys
from typing import Any, TypeAlias

import numpy as np

#: An array of either kernel: `numpy.ndarray` or `torch.Tensor`. `Any`, since mypy cannot follow a
#: method call that both have under the same name; the functions below are where they differ.
Array: TypeAlias = Any


def is_numpy(x: object) -> bool:
    """Whether `x` is a NumPy array (the NumPy kernel's), not a torch tensor."""
    return isinstance(x, np.ndarray | np.generic)


def is_tensor(x: object) -> bool:
    """Whether `x` is a torch tensor, without importing torch when it is not loaded (then it is not one)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def dtype_name(dtype: Any) -> str:
    """'float32', 'bfloat16', 'bool', ... of a NumPy or torch dtype."""
    return str(np.dtype(dtype) if isinstance(dtype, type) else dtype).removeprefix("torch.")


def is_bool(x: Array) -> bool:
    return dtype_name(x.dtype) == "bool"


def is_float64(x: Array) -> bool:
    return dtype_name(x.dtype) == "float64"


def compute_float(x: Array) -> Any:
    """The dtype statistics are computed in for `x`: float64 for float64, else float32 (NumPy or torch)."""
    if is_numpy(x):
        return np.dtype(np.float64 if x.dtype == np.float64 else np.float32)
    import torch

    return torch.float64 if x.dtype == torch.float64 else torch.float32


def astype(x: Array, dtype: Any) -> Array:
    """`x` in `dtype` (of its own library); `x` itself when it is in it already."""
    if is_numpy(x):
        return x if x.dtype == dtype else x.astype(dtype)
    return x.to(dtype)


def full(like: Array, shape: tuple[int, ...], fill: float | bool, dtype: Any = None) -> Array:
    """A new array of `like`'s library (and device), `shape`, filled with `fill`, in `dtype`
    (default: `like`'s)."""
    if is_numpy(like):
        return np.full(shape, fill, dtype=like.dtype if dtype is None else dtype)
    import torch

    return torch.full(shape, fill, dtype=like.dtype if dtype is None else dtype, device=like.device)


def empty(like: Array, shape: tuple[int, ...]) -> Array:
    """A new, uninitialised array of `like`'s library, device and dtype."""
    return np.empty(shape, dtype=like.dtype) if is_numpy(like) else like.new_empty(shape)


def int64(like: Array) -> Any:
    if is_numpy(like):
        return np.dtype(np.int64)
    import torch

    return torch.int64


def bool_dtype(like: Array) -> Any:
    if is_numpy(like):
        return np.dtype(np.bool_)
    import torch

    return torch.bool


def arange(like: Array, start: int, stop: int | None = None) -> Array:
    """int64 [start, stop) (or [0, start)) in `like`'s library, on its device."""
    if stop is None:
        start, stop = 0, start
    if is_numpy(like):
        return np.arange(start, stop, dtype=np.int64)
    import torch

    return torch.arange(start, stop, device=like.device)


def where(condition: Array, x: Array, y: Array | float) -> Array:
    """`x` where `condition`, else `y` (a scalar or an array)."""
    if is_numpy(x):
        return np.where(condition, x, y)
    return x.where(condition, y)


def masked_fill(x: Array, mask: Array, value: float) -> Array:
    """A copy of `x` holding `value` where `mask` is True (broadcast)."""
    if is_numpy(x):
        return np.where(mask, np.asarray(value, dtype=x.dtype), x)
    return x.masked_fill(mask, value)


def log(x: Array) -> Array:
    """The natural logarithm: -inf at 0 and NaN below it, silently (as torch's)."""
    if is_numpy(x):
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.log(x)
    import torch

    return torch.log(x)


def amax(x: Array, axis: int | tuple[int, ...], keepdims: bool = False) -> Array:
    if is_numpy(x):
        return np.amax(x, axis=axis, keepdims=keepdims)
    return x.amax(dim=axis, keepdim=keepdims)


def amin(x: Array, axis: int | tuple[int, ...], keepdims: bool = False) -> Array:
    if is_numpy(x):
        return np.amin(x, axis=axis, keepdims=keepdims)
    return x.amin(dim=axis, keepdim=keepdims)


def total(x: Array, axis: int | tuple[int, ...], keepdims: bool = False, dtype: Any = None) -> Array:
    """The sum along `axis`, accumulated in `dtype` (default: `x`'s own)."""
    if is_numpy(x):
        return np.sum(x, axis=axis, keepdims=keepdims, dtype=dtype)
    return x.sum(dim=axis, keepdim=keepdims, dtype=dtype)


def any_of(x: Array, axis: int) -> Array:
    return np.any(x, axis=axis) if is_numpy(x) else x.any(dim=axis)


def max_and_argmax(x: Array) -> tuple[Array, Array]:
    """The largest value of each row of (n, Lk) and its first key (NaN counting as largest)."""
    if is_numpy(x):
        keys = np.argmax(x, axis=-1)
        return np.take_along_axis(x, keys[:, None], axis=-1)[:, 0], keys
    found = x.max(dim=-1)
    return found.values, found.indices


def pad_last(x: Array, width: int, value: float | bool = 0) -> Array:
    """`x` with its last axis padded to `width` with `value`."""
    extra = width - x.shape[-1]
    if is_numpy(x):
        return np.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, extra)], constant_values=value)
    import torch

    return torch.nn.functional.pad(x, (0, extra), value=value)


def concat(parts: list[Array], axis: int) -> Array:
    if is_numpy(parts[0]):
        return np.concatenate(parts, axis=axis)
    import torch

    return torch.cat(parts, dim=axis)


def expand(x: Array, shape: tuple[int, ...]) -> Array:
    """A read-only view of `x` broadcast to `shape`."""
    return np.broadcast_to(x, shape) if is_numpy(x) else x.expand(shape)


def nonzero(x: Array) -> list[tuple[int, ...]]:
    """The indices where bool `x` is True, in order, as tuples of ints."""
    found = np.argwhere(x) if is_numpy(x) else x.nonzero()
    return [tuple(int(i) for i in index) for index in found.tolist()]


def to_numpy(x: Array) -> np.ndarray:
    """`x` as a NumPy array on the CPU (itself when it is one); bfloat16, which NumPy lacks, widened
    exactly to float32."""
    if is_numpy(x):
        return np.asarray(x)
    x = x.detach().cpu()
    import torch

    array: np.ndarray = (x.float() if x.dtype == torch.bfloat16 else x).numpy()
    return array


def float_info_max(dtype: Any) -> float:
    """The largest finite number of a NumPy or torch float dtype."""
    if dtype_name(dtype) in ("float16", "float32", "float64"):
        return float(np.finfo(dtype_name(dtype)).max)
    import torch

    return float(torch.finfo(dtype).max)


def itemsize(dtype: Any) -> int:
    """Bytes per element of a NumPy or torch dtype."""
    name = dtype_name(dtype)
    return 2 if name == "bfloat16" else np.dtype(name).itemsize


def dtype_of(like: Array, name: str) -> Any:
    """The dtype called `name` ('float32', 'bool', ...) in `like`'s library."""
    if is_numpy(like):
        return np.dtype(name)
    import torch

    return getattr(torch, name)


def index(like: Array, values: list[int]) -> Array:
    """An int64 index of `values` in `like`'s library, on its device."""
    if is_numpy(like):
        return np.array(values, dtype=np.int64)
    import torch

    return torch.tensor(values, dtype=torch.int64, device=like.device)


def take(x: Array, indices: Array, axis: int) -> Array:
    """The entries `indices` of `x` along `axis` (a copy)."""
    return np.take(x, indices, axis=axis) if is_numpy(x) else x.index_select(axis, indices)


def put(target: Array, axis: int, indices: Array, values: Array) -> None:
    """target[..., indices, ...] = values along `axis` (counted from the end), in place."""
    if is_numpy(target):
        place: list[Any] = [slice(None)] * target.ndim
        place[axis] = indices
        target[tuple(place)] = values
    else:
        target.index_copy_(axis, indices, values)


def maximum(x: Array, y: Array) -> Array:
    if is_numpy(x):
        return np.maximum(x, y)
    import torch

    return torch.maximum(x, y)


def minimum(x: Array, y: Array) -> Array:
    if is_numpy(x):
        return np.minimum(x, y)
    import torch

    return torch.minimum(x, y)
