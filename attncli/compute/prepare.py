"""A problem, prepared: query, key, value and mask checked, converted and laid out for the maths.

Shapes, heads, grouped-query attention, masks, scale, dtype and device are settled here, once, before
anything is computed; every way of computing (`attncli.compute.run`) starts from a `Prepared`, whose
arrays say which kernel computes it: torch tensors (the torch kernel) or NumPy arrays (the NumPy
kernel, for small CPU inputs: `kernel="numpy"`, chosen by `attncli.compute.kernels.choose`), the
checks and layout the same for both. torch is imported only for the torch kernel. No I/O, no printing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from attncli import arrays
from attncli.arrays import Array
from attncli.errors import InputError, ShapeError, UsageError

if TYPE_CHECKING:
    import torch

#: The dtypes a computation may run in, by name; `DTYPES` maps them to torch's (imported on first use).
DTYPE_NAMES = ("float32", "float64", "float16", "bfloat16")
HALF_NAMES = ("float16", "bfloat16")  # computed in float32, rounded at the end
#: Who computes a prepared problem: torch (any device and dtype) or NumPy (the CPU, float32 and float64).
KERNELS = ("torch", "numpy")
_ROLES = ("query", "key", "value")

TensorLike = Any  # torch.Tensor | np.ndarray, named without importing torch


def _torch_dtypes() -> dict[str, torch.dtype]:
    import torch

    return {name: getattr(torch, name) for name in DTYPE_NAMES}


def __getattr__(name: str) -> Any:
    # DTYPES and HALF_DTYPES hold torch's dtypes: made on first use, so that the NumPy kernel never
    # imports torch.
    if name == "DTYPES":
        return _torch_dtypes()
    if name == "HALF_DTYPES":
        dtypes = _torch_dtypes()
        return tuple(dtypes[half] for half in HALF_NAMES)
    raise AttributeError(f"module 'attncli.compute.prepare' has no attribute {name!r}")


def check_scale(scale: float) -> float:
    """`scale` as a float, or ValueError when it is not a finite, non-zero number."""
    value = float(scale)
    if not math.isfinite(value) or value == 0.0:
        raise ValueError(f"must be a finite, non-zero number, not {scale}")
    return value


def resolve_device(spec: str | torch.device) -> torch.device:
    """`cpu`, `cuda`, `cuda:N` or `auto` (CUDA when there is one) -> a device that exists here."""
    import torch

    if isinstance(spec, torch.device):
        spec = str(spec)
    text = spec.strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text == "cuda" or text.startswith("cuda:"):
        index_text = text.partition(":")[2]
        if index_text and not index_text.isdigit():
            raise UsageError(f"device '{spec}' is not one of cpu, cuda, cuda:N, auto")
        if not torch.cuda.is_available():
            why = "this PyTorch build has no CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise UsageError(f"device '{spec}' is not available: {why}; use --device cpu")
        count = torch.cuda.device_count()
        if index_text and int(index_text) >= count:
            raise UsageError(f"device '{spec}' does not exist: this machine has {count} CUDA device(s)")
        return torch.device(text)
    raise UsageError(f"device '{spec}' is not one of cpu, cuda, cuda:N, auto")


def resolve_dtype(spec: str | torch.dtype | None, *inputs: TensorLike) -> torch.dtype:
    """`auto` keeps float64 when an input is float64, else float32; otherwise the named dtype."""
    return _torch_dtypes()[dtype_name(spec, *inputs)]


def dtype_name(spec: str | torch.dtype | None, *inputs: TensorLike) -> str:
    """`resolve_dtype`'s answer by name ('float32', ...), without importing torch for a name."""
    if spec is not None and not isinstance(spec, str):
        import torch

        if isinstance(spec, torch.dtype):
            name = arrays.dtype_name(spec)
            if name not in DTYPE_NAMES:
                raise UsageError(f"dtype {spec} is not one of {', '.join(DTYPE_NAMES)}")
            return name
    if spec is None or spec == "auto":
        wide = any(arrays.dtype_name(x.dtype) == "float64" for x in inputs)
        return "float64" if wide else "float32"
    if spec not in DTYPE_NAMES:
        raise UsageError(f"dtype '{spec}' is not one of auto, {', '.join(DTYPE_NAMES)}")
    return str(spec)


@dataclass(frozen=True)
class Prepared:
    """Inputs checked and laid out for the maths: heads split, on the device, in the compute dtype."""

    query: Array  # (..., Lq, D), with a heads axis before Lq when there are heads
    key: Array  # (..., Lk, D)
    value: Array  # (..., Lk, Dv)
    scale: float
    mask: Array | None
    causal: bool
    heads: int | None  # the feature axis was split into this many heads
    group: int  # query heads per key/value head
    weights_shape: tuple[int, ...]
    input_shapes: Mapping[str, tuple[int, ...]]
    may_overflow: bool = False  # the inputs are large enough that a score might overflow its dtype

    @property
    def kernel(self) -> str:
        """Who computes this problem: "numpy" for NumPy arrays, else "torch"."""
        return "numpy" if arrays.is_numpy(self.query) else "torch"

    def merge_heads(self, output: Array) -> Array:
        """Undo the --heads split on an output: (..., H, Lq, Dv/H) -> (..., Lq, H, Dv/H) -> (..., Lq, Dv)."""
        if self.heads is None:
            return output
        if arrays.is_numpy(output):
            moved = output.swapaxes(-3, -2)  # (..., Lq, H, Dv/H)
            return moved.reshape(*moved.shape[:-2], -1)
        return output.transpose(-3, -2).flatten(-2)

    def split_heads(self, output: Array) -> Array:
        """The inverse of `merge_heads`: (..., Lq, Dv) -> (..., H, Lq, Dv/H)."""
        if self.heads is None:
            return output
        return output.reshape(*output.shape[:-1], self.heads, -1).swapaxes(-3, -2)

    def compute_inputs(self) -> tuple[Array, Array, Array]:
        """Query, key and value in the dtype the arithmetic runs in: float32 for half-precision
        inputs (fused kernels accumulate in float32 too, a float16 q @ k^T overflows long before
        float32 does, and CPUs without half-precision instructions multiply float32 faster), else
        their own. Results are rounded back to the inputs' dtype."""
        if arrays.dtype_name(self.query.dtype) in HALF_NAMES:
            return self.query.float(), self.key.float(), self.value.float()
        return self.query, self.key, self.value

    def describe(self) -> dict[str, Any]:
        """`settings` of this computation, known before it runs (its weights' axes among them)."""
        return settings(
            self.scale,
            self.causal,
            self.heads,
            self.group,
            self.query.dtype,
            self.query.device,
            self.input_shapes,
            self.weights_shape,
        )


#: The most axes an input may have: NumPy broadcasts shapes of up to 32 (torch takes 64, .npy 64).
MAX_AXES = 32


def prepare(
    query: TensorLike,
    key: TensorLike,
    value: TensorLike,
    *,
    scale: float | None = None,
    mask: TensorLike | None = None,
    causal: bool = False,
    heads: int | None = None,
    dtype: str | torch.dtype | None = "auto",
    device: str | torch.device = "cpu",
    names: Mapping[str, str] | None = None,
    kernel: str = "torch",
) -> Prepared:
    """Check, convert and lay out the inputs of `attention` (same arguments); raise on any mismatch.
    `kernel` "numpy" keeps NumPy arrays (float32 or float64, the CPU; torch is not imported)."""
    label = {role: role for role in (*_ROLES, "mask")} | dict(names or {})
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {', '.join(KERNELS)}, not {kernel!r}")
    target_name = dtype_name(dtype, query, key, value)
    q: Array
    k: Array
    v: Array
    mask_tensor: Array | None = None
    if kernel == "numpy":
        if target_name in HALF_NAMES or str(device).strip().lower() != "cpu":
            raise ValueError(
                f"the NumPy kernel computes float32 and float64 on the CPU, not {target_name} on {device}"
            )
        target_dtype: Any = np.dtype(target_name)
        q, k, v = (
            _as_array(x, target_dtype, role) for x, role in zip((query, key, value), _ROLES, strict=True)
        )
        target_device: Any = "cpu"
    else:
        target_device = resolve_device(device)
        target_dtype = resolve_dtype(target_name)
        q, k, v = (
            _as_tensor(x, target_dtype, target_device, role)
            for x, role in zip((query, key, value), _ROLES, strict=True)
        )
    for given, converted, role in zip((query, key, value), (q, k, v), _ROLES, strict=True):
        if converted.ndim > MAX_AXES:
            raise ShapeError(
                f"{label[role]}: {role} has {converted.ndim} axes; attncli takes at most {MAX_AXES} "
                "(batch axes, then heads, positions and features)"
            )
        _check_range(given, converted, role, label[role])
    input_shapes = {role: tuple(t.shape) for role, t in zip(_ROLES, (q, k, v), strict=True)}
    # Messages show each input as it was given: "k.npy (5, 8)".
    shown = {role: f"{label[role]} {_shape_text(input_shapes[role])}" for role in _ROLES}
    q, k, v = (t[None] if t.ndim == 1 else t for t in (q, k, v))  # a vector is one position: (D,) -> (1, D)
    _check_pair(q, k, "query", "key", -1, "features", shown)
    _check_pair(k, v, "key", "value", -2, "positions", shown)

    if heads is not None:
        q, k, v = (_split_heads(t, heads, role, shown) for t, role in zip((q, k, v), _ROLES, strict=True))
    group = _query_heads_per_key_head(q, k, v, shown)
    _check_batch_axes(q, k, v, group, shown)
    # The weights take the batch axes of query and key only; value's broadcast in the last product.
    cut = -3 if group > 1 else -2
    batch_shape = broadcast_shapes(q.shape[:cut], k.shape[:cut])
    heads_axis = (q.shape[-3],) if group > 1 else ()
    weights_shape = (*batch_shape, *heads_axis, q.shape[-2], k.shape[-2])
    if len(weights_shape) > MAX_AXES:  # --heads adds one
        raise ShapeError(
            f"the weights would have {len(weights_shape)} axes: {shown['query']} split into {heads} "
            f"heads; attncli takes at most {MAX_AXES}"
        )

    # Scores are float32 for half-precision inputs (see compute_inputs), else the inputs' dtype.
    score_dtype = resolve_dtype("float32") if target_name in HALF_NAMES else target_dtype
    if mask is not None:
        if kernel == "numpy":
            mask_tensor = _as_numpy_mask(mask, np.dtype(target_name), label["mask"])
        else:
            mask_tensor = _as_mask(mask, target_device, score_dtype, label["mask"])
        broadcast = _broadcast_or_none(weights_shape, tuple(mask_tensor.shape))
        # The mask may add batch axes, never stretch the (query, key) axes it applies to.
        if broadcast is None or broadcast[-2:] != weights_shape[-2:]:
            raise ShapeError(
                f"the mask does not broadcast to the weights' shape: {label['mask']} "
                f"{_shape_text(tuple(mask_tensor.shape))}, weights {_shape_text(weights_shape)}"
            )
        weights_shape = broadcast

    if scale is None:
        scale = 1.0 / math.sqrt(k.shape[-1])
    else:
        try:
            scale = check_scale(scale)
        except ValueError as error:
            raise UsageError(f"scale {error}") from None
    # |q . k| * scale <= |q| |k| |scale|: when even that bound fits the scores' dtype, no score can
    # overflow and the N x N check is skipped.
    bound = 0.0
    if math.prod(q.shape) and math.prod(k.shape):
        # Norms accumulated in the scores' dtype, without a wider copy of query and key: one that
        # overflows gives an infinite bound, and the scores are then checked instead.
        if kernel == "numpy":
            with np.errstate(over="ignore"):
                q_norm = np.sqrt(np.einsum("...d,...d->...", q, q).max())
                k_norm = np.sqrt(np.einsum("...d,...d->...", k, k).max())
        else:
            import torch

            q_norm = torch.linalg.vector_norm(q, dim=-1, dtype=score_dtype).max()
            k_norm = torch.linalg.vector_norm(k, dim=-1, dtype=score_dtype).max()
        bound = float(q_norm) * float(k_norm) * abs(scale)
    may_overflow = not bound < arrays.float_info_max(score_dtype) / 2
    return Prepared(
        q, k, v, scale, mask_tensor, causal, heads, group, weights_shape, input_shapes, may_overflow
    )


def _as_array(x: TensorLike, dtype: np.dtype[Any], role: str) -> np.ndarray:
    """The NumPy kernel's `_as_tensor`: a NumPy array in `dtype` (float32 or float64)."""
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{role} must be a numpy.ndarray for the NumPy kernel, not {type(x).__name__}")
    if x.dtype.kind not in "iuf":
        raise UsageError(f"{role} holds {x.dtype}; query, key and value must be real numbers")
    with np.errstate(over="ignore"):  # _check_range names the input that overflowed
        return x.astype(dtype, copy=False)


def _as_numpy_mask(mask: TensorLike, score_dtype: np.dtype[Any], label: str) -> np.ndarray:
    """The NumPy kernel's `_as_mask`: the same checks and messages, on a NumPy array."""
    if not isinstance(mask, np.ndarray):
        raise TypeError(f"mask must be a numpy.ndarray for the NumPy kernel, not {type(mask).__name__}")
    if mask.dtype.kind not in "bf":
        raise UsageError(f"the mask holds {mask.dtype}; use booleans (True = may attend) or floats")
    if mask.ndim > MAX_AXES:
        raise ShapeError(f"{label}: the mask has {mask.ndim} axes; attncli takes at most {MAX_AXES}")
    if mask.dtype.kind == "b":
        return mask
    with np.errstate(over="ignore"):
        converted = mask.astype(score_dtype, copy=False)
    bad = np.isnan(converted) | np.isposinf(converted)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad.reshape(bad.shape or (1,)))[0])
        _bad_mask(label, int(bad.sum()), first, score_dtype)
    return converted


def _bad_mask(label: str, count: int, first: tuple[int, ...], score_dtype: Any) -> None:
    largest = arrays.float_info_max(score_dtype)
    raise InputError(
        f"{label}: the mask holds {count} values that are NaN or +inf in {arrays.dtype_name(score_dtype)} "
        f"(the scores' dtype; finite values beyond ±{largest:.4g} become +inf), "
        f"the first at index {first}; use 0 for keys that may be attended and -inf (or a large "
        "negative number) for keys that may not"
    )


def _as_tensor(x: TensorLike, dtype: torch.dtype, device: torch.device, role: str) -> torch.Tensor:
    import torch

    if isinstance(x, np.ndarray):
        if x.dtype.kind not in "iuf":
            raise UsageError(f"{role} holds {x.dtype}; query, key and value must be real numbers")
        wanted = np.float64 if dtype == torch.float64 else np.float32
        # astype also makes the array native-endian and writable, which torch.from_numpy needs.
        if x.dtype != wanted or not x.flags.writeable or any(stride < 0 for stride in x.strides):
            with np.errstate(over="ignore"):  # _check_range names the input that overflowed
                x = x.astype(wanted)  # a copy: torch.from_numpy takes no negative strides
        return torch.from_numpy(x).to(device=device, dtype=dtype)
    if isinstance(x, torch.Tensor):
        if x.dtype == torch.bool or x.is_complex():
            raise UsageError(f"{role} holds {x.dtype}; query, key and value must be real numbers")
        return x.to(device=device, dtype=dtype)
    raise TypeError(f"{role} must be a torch.Tensor or numpy.ndarray, not {type(x).__name__}")


def _check_range(given: TensorLike, converted: Array, role: str, label: str) -> None:
    """Refuse finite values that became infinite in the compute dtype (70000 in float16)."""
    if arrays.is_numpy(converted):
        if _fits(given.dtype, converted.dtype) or not np.isinf(converted).any():
            return
        finite_before = bool(np.isfinite(given).all())
    else:
        import torch

        if not converted.is_floating_point() or _fits(given.dtype, converted.dtype):
            return  # every value of the given dtype is finite in the compute dtype: nothing to scan
        if not bool(torch.isinf(converted).any()):
            return
        finite_before = (
            bool(np.isfinite(given).all())
            if isinstance(given, np.ndarray)
            else (bool(torch.isfinite(given).all()) if given.is_floating_point() else True)
        )
    if finite_before:
        largest = arrays.float_info_max(converted.dtype)
        raise InputError(
            f"{label}: {role} has values that overflow {arrays.dtype_name(converted.dtype)} "
            f"(beyond ±{largest:.6g}); use a wider --dtype"
        )


def _fits(given: Any, compute: Any) -> bool:
    """Whether every finite value of `given` (a NumPy or torch dtype) stays finite in `compute`."""
    if isinstance(given, np.dtype):
        if given.kind != "f":
            return given.kind == "b"
        largest = float(np.finfo(given).max)
    else:
        if not given.is_floating_point:
            return arrays.dtype_name(given) == "bool"
        largest = arrays.float_info_max(given)
    return largest <= arrays.float_info_max(compute)


def _as_mask(mask: TensorLike, device: torch.device, score_dtype: torch.dtype, label: str) -> torch.Tensor:
    """The mask on `device`; a float mask in the scores' dtype, as it is added to them, checked
    there: NaN, or +inf (a finite 1e300 becomes +inf in float32), would make NaN weights."""
    import torch

    tensor = torch.from_numpy(np.array(mask)) if isinstance(mask, np.ndarray) else mask
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"mask must be a torch.Tensor or numpy.ndarray, not {type(mask).__name__}")
    if tensor.dtype != torch.bool and not tensor.is_floating_point():
        raise UsageError(f"the mask holds {tensor.dtype}; use booleans (True = may attend) or floats")
    if tensor.ndim > MAX_AXES:
        raise ShapeError(f"{label}: the mask has {tensor.ndim} axes; attncli takes at most {MAX_AXES}")
    if tensor.dtype == torch.bool:
        return tensor.to(device)
    converted = tensor.to(device=device, dtype=score_dtype)
    bad = torch.isnan(converted) | torch.isposinf(converted)
    if bool(bad.any()):
        first = tuple(int(i) for i in torch.nonzero(bad.reshape(bad.shape or (1,)))[0])
        _bad_mask(label, int(bad.sum()), first, score_dtype)
    return converted


def _check_pair(
    a: Array, b: Array, name_a: str, name_b: str, axis: int, what: str, shown: Mapping[str, str]
) -> None:
    if a.shape[axis] != b.shape[axis]:
        raise ShapeError(
            f"{name_a} has {a.shape[axis]} {what} but {name_b} has {b.shape[axis]}: "
            f"{shown[name_a]}, {shown[name_b]}"
        )


def _split_heads(x: Array, heads: int, role: str, shown: Mapping[str, str]) -> Array:
    if isinstance(heads, bool) or not isinstance(heads, int) or heads < 1:
        raise UsageError(f"heads must be a positive whole number, not {heads}")
    features = x.shape[-1]
    if features % heads:
        if x.ndim >= 4:  # the usual mistake: --heads given the count of the heads axis it already has
            raise ShapeError(
                f"--heads {heads}: {shown[role]} already has {x.shape[-3]} heads, on axis {x.ndim - 3} "
                "of (..., heads, positions, features); --heads is for merged inputs "
                "(..., positions, heads x features): leave it out"
            )
        raise ShapeError(f"{heads} heads do not divide the {features} features of {role}: {shown[role]}")
    # (..., L, D) -> (..., L, H, D/H) -> (..., H, L, D/H)
    return x.reshape(*x.shape[:-1], heads, features // heads).swapaxes(-3, -2)


#: Features per head in the usual transformer layer: the size a merged query's features suggest heads of.
HEAD_FEATURES = 64


def heads_note(problem: Prepared, label: str = "query") -> str | None:
    """A hint when the heads may have been guessed wrong, else None: a query of more than 256
    features, a multiple of 64, with no heads axis and no `heads` (likely several heads merged,
    computed as one head with a scale of 1/sqrt(all features)); or `heads` (more than 1) that
    split a 4-D query, which has its heads already. The numbers are what was asked for either way."""
    query, key = problem.input_shapes["query"], problem.input_shapes["key"]
    shown = f"{label} {_shape_text(query)}"
    features = query[-1]
    if problem.heads is None:
        if max(len(query), len(key)) >= 4 or features <= 256 or features % HEAD_FEATURES:
            return None
        default_scale = math.isclose(problem.scale, 1.0 / math.sqrt(features))
        return (
            f"{shown}: query has {features} features on its last axis and no heads axis, so it is "
            f"computed as one head{f' (scale 1/sqrt({features}))' if default_scale else ''}; if it "
            f"holds several heads, give --heads N (e.g. --heads {features // HEAD_FEATURES} for "
            f"{HEAD_FEATURES} features each)"
        )
    if len(query) >= 4 and problem.heads > 1:  # --heads 1 only adds an axis of one
        return (
            f"{shown} already has {query[-3]} heads, on axis {len(query) - 3} of (..., heads, "
            f"positions, features), and --heads {problem.heads} split each into {problem.heads} of "
            f"{features // problem.heads} features; --heads is for merged inputs (..., positions, "
            "heads x features): leave it out unless these features merge several heads"
        )
    return None


def _query_heads_per_key_head(q: Array, k: Array, v: Array, shown: Mapping[str, str]) -> int:
    """How many query heads share each key/value head: 1 unless 4-D inputs have different head counts."""
    if q.ndim < 4 or k.ndim < 4 or v.ndim < 4:
        return 1
    query_heads, key_heads, value_heads = q.shape[-3], k.shape[-3], v.shape[-3]
    if key_heads != value_heads:
        raise ShapeError(
            f"key has {key_heads} heads but value has {value_heads}: {shown['key']}, {shown['value']}"
        )
    if query_heads == key_heads:
        return 1
    if query_heads % key_heads:
        raise ShapeError(
            f"query has {query_heads} heads and key/value {key_heads}; grouped-query attention needs "
            f"query heads to be a multiple of key/value heads: {shown['query']}, {shown['key']}"
        )
    return int(query_heads // key_heads)  # one key/value head for all: multi-query attention


def _check_batch_axes(q: Array, k: Array, v: Array, group: int, shown: Mapping[str, str]) -> None:
    """The leading axes (the heads axis aside when heads are grouped) must broadcast together."""
    cut = -3 if group > 1 else -2
    try:
        broadcast_shapes(q.shape[:cut], k.shape[:cut], v.shape[:cut])
    except ValueError:
        raise ShapeError("the batch axes do not broadcast: " + ", ".join(shown.values())) from None


def broadcast_shapes(*shapes: tuple[int, ...]) -> tuple[int, ...]:
    # NumPy's, not torch.broadcast_shapes: that one imports sympy on first use (about 0.4 s).
    return tuple(int(n) for n in np.broadcast_shapes(*shapes))


def _broadcast_or_none(*shapes: tuple[int, ...]) -> tuple[int, ...] | None:
    try:
        return broadcast_shapes(*shapes)
    except ValueError:
        return None


def _shape_text(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "") + ")"


def memory_message(shape: tuple[int, ...], dtype: Any, error: BaseException) -> str:
    size = math.prod(shape) * arrays.itemsize(dtype)
    return f"out of memory computing weights of shape {shape} ({size / 2**30:.2f} GiB): {str(error)[:120]}"


def settings(
    scale: float,
    causal: bool,
    heads: int | None,
    group: int,
    dtype: Any,
    device: Any,
    input_shapes: Mapping[str, tuple[int, ...]],
    weights_shape: tuple[int, ...],
) -> dict[str, Any]:
    """What a computation was, as JSON-able values: known before it runs (the blocked path's
    weights file carries them too). The weights' leading axes are named: the last is 'head' when
    there are heads, the rest 'batch'."""
    leading = len(weights_shape) - 2
    names = ["batch"] * leading
    if (heads is not None or len(input_shapes["query"]) >= 4) and leading:
        names[-1] = "head"
    return {
        "scale": scale,
        "causal": causal,
        "heads": heads,
        "query_heads_per_key_head": group,
        "dtype": arrays.dtype_name(dtype),
        "device": str(device),
        "input_shapes": {role: list(shape) for role, shape in input_shapes.items()},
        "weights_shape": list(weights_shape),
        "weights_axes": [*names, "query", "key"],
    }


def blocked_keys(
    mask: Array | None, causal: bool, rows: int, keys: int, first_row: int = 0, *, device: Any
) -> Array | None:
    """Masked keys as bool (True = masked), broadcastable to weights (..., rows, keys) whose first row
    is query `first_row`: the mask's False or -inf entries, and the causal triangle. None if none.
    NumPy for a NumPy mask or `device` "numpy", else torch on `device`."""
    blocked = causal_hidden(rows, keys, first_row, device) if causal else None
    if mask is not None:
        from_mask = ~mask if arrays.is_bool(mask) else mask == -math.inf
        blocked = from_mask if blocked is None else blocked | from_mask
    return blocked


def mask_rows(mask: Array | None, start: int, stop: int) -> Array | None:
    """The mask of query rows [start, stop): its query axis cut where it has one longer than 1 (a
    mask without one, or of one row, holds for every row as it is)."""
    if mask is None or mask.ndim < 2 or mask.shape[-2] <= 1:
        return mask
    return mask[..., start:stop, :]


def block_operands(
    p: Prepared, q: Array, k: Array, v: Array, mask: Array | None, first_row: int
) -> tuple[Array, Array, Array, Array | None, tuple[int, ...]]:
    """What a kernel multiplies for query rows first_row.. (`q` (..., n, D), torch tensors or NumPy
    arrays alike): the keys, values and mask columns a causal block can see (those after its last
    row get no work), the query's heads grouped under their key/value head for grouped-query
    attention, and the block's weights shape (..., n, W)."""
    n, all_keys = q.shape[-2], k.shape[-2]
    weights_shape = (*p.weights_shape[:-2], n, all_keys)
    if p.causal and first_row + n < all_keys:
        # Query rows first_row.. see no key past the last of them: those columns get no work.
        seen = first_row + n
        k, v = k[..., :seen, :], v[..., :seen, :]
        if mask is not None and mask.ndim and mask.shape[-1] > 1:
            mask = mask[..., :seen]
        weights_shape = (*weights_shape[:-1], seen)
    if p.group > 1:
        # Query head h uses key/value head h // group, as scaled_dot_product_attention(enable_gqa=True).
        q = q.reshape(*q.shape[:-3], k.shape[-3], p.group, *q.shape[-2:])  # (..., Hkv, G, n, D)
        k = k[..., None, :, :]  # (..., Hkv, 1, W, D)
        v = v[..., None, :, :]  # (..., Hkv, 1, W, Dv)
    return q, k, v, mask, weights_shape


def causal_hidden(rows: int, keys: int, first_row: int, device: Any) -> Array:
    """(rows, keys) bool: True where key j lies after query first_row + i (what causal hides).
    The one causal triangle of the computation: blocks, the fused kernel's masks and the views.
    A NumPy array for `device` "numpy" (the NumPy kernel), else a tensor on `device`."""
    if isinstance(device, str) and device == "numpy":
        return np.triu(np.ones((rows, keys), dtype=np.bool_), first_row + 1)
    import torch

    return torch.ones(rows, keys, dtype=torch.bool, device=device).triu_(first_row + 1)
