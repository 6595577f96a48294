"""Compare the tensors of two files as torch.testing.assert_close would, a block at a time.

Two values are close when |a - b| <= atol + rtol * |b| (b: the second file), or when they are equal,
infinities of the same sign included, or both NaN. The default tolerances are those of the coarsest
dtype involved: each tensor's as stored, and each file's computed dtype (the `dtype` of attncli's
result metadata: a bfloat16 result kept as float32 in .npz is still bfloat16's); integers and
booleans must be equal. Weights (a tensor named `weights`, keys on the last axis) are also compared
row by row: KL divergence and top-k agreement. The tensors of the same name in both files are
compared; those held by one file only are listed (`Comparison.only`), and make the files different
unless the comparison is of the common ones only.

All arithmetic is float64 NumPy on blocks of a few MiB read through attncli.io.lazy, so two
multi-GiB files compare in bounded memory. Nothing here prints, exits or imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from attncli.errors import InputError, ShapeError
from attncli.io.lazy import BLOCK_ELEMENTS, LazyFile, LazyTensor

#: (rtol, atol) per dtype, as `attn compute --check` takes them (compute/check.py): assert_close's,
#: but for float16 and bfloat16 an atol of the dtype's resolution near 1 (its eps), since a result
#: computed in half precision rounds every value to it: assert_close's atol of 1e-5 calls the bfloat16
#: run of the same inputs as a float32 run different wherever an output is near 0. Any other dtype
#: (integers, bool) must match exactly.
DEFAULT_TOLERANCES: dict[str, tuple[float, float]] = {
    "float16": (1e-3, 1e-3),
    "bfloat16": (1.6e-2, 1e-2),
    "float32": (1.3e-6, 1e-5),
    "float64": (1e-7, 1e-7),
}
#: The float dtypes from the coarsest to the finest: a comparison takes the coarsest one's tolerance.
COARSEST_FIRST = ("bfloat16", "float16", "float32", "float64")
WEIGHTS = "weights"  # the tensor compared row by row, as attention weights


@dataclass(frozen=True)
class RowAgreement:
    """How alike the rows of two weight tensors are as distributions over keys."""

    rows: int  # rows in the tensor (every axis but the last)
    rows_compared: int  # rows with mass in both files and no NaN, Inf or negative value
    kl_mean: float | None  # KL(A || B) of the rows, each normalised to sum to 1; None: no row compared
    kl_max: float | None
    top_k: int  # k, at most the row length
    top_k_same: float | None  # share of rows whose k largest keys are the same set in both
    top_k_overlap: float | None  # mean share of the k largest keys that both have in common


@dataclass(frozen=True)
class TensorComparison:
    """One pair of tensors compared element by element."""

    name: str
    shape: tuple[int, ...]
    dtypes: tuple[str, str]  # as stored
    rtol: float
    atol: float
    #: The dtype whose default tolerance applies where rtol/atol are not given (the coarsest of the
    #: stored and computed dtypes); None for integers and booleans, which must be equal.
    tolerance_dtype: str | None
    elements: int
    max_abs: float | None  # largest |a - b|, NaN positions left out; None: nothing to compare
    max_rel: float | None  # largest |a - b| / |b|; where b == 0: 0 within tolerance, inf outside
    #: Some elements outside tolerance: where |a - b| - (atol + rtol * |b|) is largest. All within:
    #: where |a - b| uses the largest share of its tolerance. None when all are equal.
    worst_index: tuple[int, ...] | None
    worst_excess: float | None  # |a - b| - (atol + rtol * |b|) there: > 0 means outside tolerance
    outside: int  # elements outside tolerance (a NaN on one side only counts)
    nan: tuple[int, int]  # NaN count in A and in B
    nan_both: int  # positions NaN in both, counted equal
    rows: RowAgreement | None  # for weights only

    @property
    def close(self) -> bool:
        return self.outside == 0

    @property
    def verdict(self) -> str:
        if not self.close:
            return "different"
        return "equal" if not self.max_abs else "close"

    @property
    def outside_share(self) -> float:
        return self.outside / self.elements if self.elements else 0.0


@dataclass(frozen=True)
class Comparison:
    labels: tuple[str, str]
    tensors: list[TensorComparison]  # the tensors both files hold
    given: tuple[bool, bool]  # whether rtol, atol were given rather than the dtype's defaults
    #: Each file's computed dtype, from its metadata (attncli's results say it); None where it is not said.
    computed: tuple[str | None, str | None] = (None, None)
    only: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())  # names held by A only, by B only
    common_only: bool = False  # names held by one file only do not make the files different

    @property
    def tensors_close(self) -> bool:
        """Every tensor both files hold is close."""
        return all(tensor.close for tensor in self.tensors)

    @property
    def unpaired(self) -> int:
        """How many tensors one file holds and the other does not."""
        return len(self.only[0]) + len(self.only[1])

    @property
    def close(self) -> bool:
        """The verdict (exit status 0): the common tensors close, and no other unless `common_only`."""
        return self.tensors_close and (self.common_only or not self.unpaired)


def default_tolerances(*dtypes: str) -> tuple[float, float]:
    """(rtol, atol) of the coarsest float dtype of `dtypes` (`tolerance_dtype`); exact for integers."""
    coarsest = tolerance_dtype(*dtypes)
    return (0.0, 0.0) if coarsest is None else DEFAULT_TOLERANCES[coarsest]


def tolerance_dtype(*dtypes: str | None) -> str | None:
    """The coarsest of the float dtypes among `dtypes` (bfloat16, then float16, float32, float64);
    None when there is none (integers, booleans: exact)."""
    return next((dtype for dtype in COARSEST_FIRST if dtype in dtypes), None)


def computed_dtype(file: LazyFile) -> str | None:
    """The dtype a result was computed in, as its metadata says (`dtype`, which attncli writes): a
    bfloat16 result stored as float32 (.npz, .json) is still bfloat16's. None where it says none."""
    dtype = file.metadata.get("dtype")
    return dtype if isinstance(dtype, str) and dtype in DEFAULT_TOLERANCES else None


def compare_files(
    first: LazyFile,
    second: LazyFile,
    *,
    rtol: float | None = None,
    atol: float | None = None,
    top_k: int = 5,
    common_only: bool = False,
) -> Comparison:
    """Compare the tensors the files share by name (or the only tensor of each); the others are
    listed in `Comparison.only`, and with `common_only` do not make the files different."""
    pairs, only = pair_tensors(first, second)
    computed = computed_dtype(first), computed_dtype(second)
    tensors = [
        compare_tensors(name, a, b, rtol=rtol, atol=atol, top_k=top_k, computed=computed)
        for name, a, b in pairs
    ]
    given = (rtol is not None, atol is not None)
    return Comparison((first.label, second.label), tensors, given, computed, only, common_only)


def pair_tensors(
    first: LazyFile, second: LazyFile
) -> tuple[list[tuple[str, LazyTensor, LazyTensor]], tuple[tuple[str, ...], tuple[str, ...]]]:
    """(name, A's tensor, B's tensor) to compare, and the names held by A only and by B only; an
    error naming every shape that does not match, or the names when no tensor is in both."""
    only_first: list[str] = []
    only_second: list[str] = []
    if len(first.tensors) == 1 and len(second.tensors) == 1:  # whatever their names
        (a,) = first.tensors.values()
        (b,) = second.tensors.values()
        name = (
            a.name if a.name == b.name else WEIGHTS if WEIGHTS in (a.name, b.name) else f"{a.name}/{b.name}"
        )
        pairs = [(name, a, b)]
    else:
        only_first = [name for name in first.tensors if name not in second.tensors]
        only_second = [name for name in second.tensors if name not in first.tensors]
        pairs = [
            (name, a, second.tensors[name]) for name, a in first.tensors.items() if name in second.tensors
        ]
    if not pairs:
        raise InputError(
            f"{first.label} and {second.label} hold no tensor of the same name ({first.label}: "
            f"{', '.join(first.tensors)}; {second.label}: {', '.join(second.tensors)}); "
            "PATH:NAME picks one tensor of each to compare"
        )
    problems = [
        f"'{name}' has shape {a.shape} in {first.label} but {b.shape} in {second.label}"
        for name, a, b in pairs
        if a.shape != b.shape
    ]
    if problems:
        raise ShapeError("; ".join(problems))
    return pairs, (tuple(only_first), tuple(only_second))


def compare_tensors(
    name: str,
    first: LazyTensor,
    second: LazyTensor,
    *,
    rtol: float | None = None,
    atol: float | None = None,
    top_k: int = 5,
    computed: tuple[str | None, str | None] = (None, None),
) -> TensorComparison:
    """Compare two tensors of one shape a block at a time; rows too when `name` is `weights`.
    The default tolerances are the coarsest dtype's of the two stored and the files' `computed`
    dtypes (`tolerance_dtype`); integers and booleans on both sides are exact."""
    if first.shape != second.shape:
        raise ShapeError(f"'{name}' has shape {first.shape} in one file but {second.shape} in the other")
    exact = first.dtype not in DEFAULT_TOLERANCES and second.dtype not in DEFAULT_TOLERANCES
    defaults_of = None if exact else tolerance_dtype(first.dtype, second.dtype, *computed)
    default_rtol, default_atol = (0.0, 0.0) if defaults_of is None else DEFAULT_TOLERANCES[defaults_of]
    rtol = default_rtol if rtol is None else rtol
    atol = default_atol if atol is None else atol
    differences = _Differences(rtol, atol, exact)
    row_length = first.shape[-1] if first.shape else 0
    rows = _Rows(min(top_k, row_length)) if name == WEIGHTS and row_length > 0 else None
    block = max(1, BLOCK_ELEMENTS // row_length) * row_length if rows else BLOCK_ELEMENTS
    offset = 0
    for block_a, block_b in zip(first.blocks(block), second.blocks(block), strict=True):
        differences.add(block_a, block_b, offset)
        if rows is not None:
            rows.add(block_a.reshape(-1, row_length), block_b.reshape(-1, row_length))
        offset += block_a.size
    worst_at, worst_excess = differences.worst()
    worst = None if worst_at is None else np.unravel_index(worst_at, first.shape)
    return TensorComparison(
        name=name,
        shape=first.shape,
        dtypes=(first.dtype, second.dtype),
        rtol=rtol,
        atol=atol,
        tolerance_dtype=defaults_of,
        elements=first.size,
        max_abs=differences.max_abs,
        max_rel=differences.max_rel,
        worst_index=None if worst is None else tuple(int(i) for i in worst),
        worst_excess=worst_excess,
        outside=differences.outside,
        nan=(differences.nan_first, differences.nan_second),
        nan_both=differences.nan_both,
        rows=None if rows is None else rows.result(),
    )


class _Differences:
    """Running element-wise facts of two tensors, fed aligned blocks in order."""

    def __init__(self, rtol: float, atol: float, exact: bool) -> None:
        self.rtol, self.atol, self.exact = rtol, atol, exact
        self.max_abs: float | None = None
        self.max_rel: float | None = None
        self.worst_excess: float | None = None
        self.worst_at: int | None = None
        self.nearest_share: float | None = None  # the largest share of its tolerance a close element uses
        self.nearest_at: int | None = None
        self.nearest_excess: float | None = None
        self.outside = self.nan_first = self.nan_second = self.nan_both = 0

    def add(self, first: np.ndarray, second: np.ndarray, offset: int) -> None:
        a, b = first.astype(np.float64), second.astype(np.float64)
        nan_a, nan_b = np.isnan(a), np.isnan(b)
        both_nan = nan_a & nan_b
        # Integers are compared as themselves: float64 cannot tell 2**53 from 2**53 + 1.
        same = (first == second) if self.exact else (a == b)
        same |= both_nan
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            gap = np.abs(a - b)  # NaN where one side is NaN or both are infinite
            gap[same] = 0.0
            allowed = self.atol + self.rtol * np.abs(b)
            if self.exact and not (self.rtol or self.atol):
                close = same
            else:
                close = same | (np.isfinite(gap) & (gap <= allowed))
            relative = gap / np.abs(b)
            excess = gap - allowed
            used = np.where(close & (gap > 0), gap / allowed, -1.0)
        # 0/0, inf/inf and NaN: 0 where close, infinitely far where not; b == 0 within tolerance is ignored.
        relative = np.where(np.isnan(relative), np.where(close, 0.0, np.inf), relative)
        relative[close & (b == 0)] = 0.0
        excess = np.where(np.isnan(excess), np.where(close, -np.inf, np.inf), excess)
        compared = ~(nan_a ^ nan_b)  # a NaN on one side only has no distance
        if compared.any():
            self.max_abs = _largest(self.max_abs, float(gap[compared].max()))
            self.max_rel = _largest(self.max_rel, float(relative[compared].max()))
        if excess.size:
            at = int(np.argmax(excess))
            if self.worst_excess is None or excess[at] > self.worst_excess:
                self.worst_excess, self.worst_at = float(excess[at]), offset + at
            near = int(np.argmax(used))
            if used[near] > 0 and (self.nearest_share is None or used[near] > self.nearest_share):
                self.nearest_share, self.nearest_at = float(used[near]), offset + near
                self.nearest_excess = float(excess[near])
        self.outside += close.size - int(np.count_nonzero(close))
        self.nan_first += int(np.count_nonzero(nan_a))
        self.nan_second += int(np.count_nonzero(nan_b))
        self.nan_both += int(np.count_nonzero(both_nan))

    def worst(self) -> tuple[int | None, float | None]:
        """(flat index, excess) of the worst element outside tolerance, else of the nearest its limit."""
        if self.outside:
            return self.worst_at, self.worst_excess
        return self.nearest_at, self.nearest_excess


class _Rows:
    """Running KL divergence and top-k agreement of weight rows, fed aligned (rows, keys) blocks."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.rows = self.compared = self.same = 0
        self.kl_sum = self.overlap_sum = 0.0
        self.kl_max: float | None = None

    def add(self, first: np.ndarray, second: np.ndarray) -> None:
        p, q = first.astype(np.float64), second.astype(np.float64)  # (rows, keys)
        self.rows += p.shape[0]
        usable = _distributions(p) & _distributions(q)
        mass_p, mass_q = p.sum(axis=1), q.sum(axis=1)
        kept = usable & (mass_p > 0) & (mass_q > 0)  # fully masked rows have no distribution
        if not kept.any():
            return
        p = p[kept] / mass_p[kept, None]
        q = q[kept] / mass_q[kept, None]
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.where(p > 0, p * (np.log(p) - np.log(q)), 0.0)  # p > 0 where q == 0: inf
        divergence = np.maximum(terms.sum(axis=1), 0.0)  # rounding can dip just below zero
        self.compared += p.shape[0]
        self.kl_sum += float(divergence.sum())
        self.kl_max = _largest(self.kl_max, float(divergence.max()))
        overlap = np.count_nonzero(_top_keys(p, self.k) & _top_keys(q, self.k), axis=1)
        self.same += int(np.count_nonzero(overlap == self.k))
        self.overlap_sum += float(overlap.sum()) / self.k

    def result(self) -> RowAgreement:
        if not self.compared:
            return RowAgreement(self.rows, 0, None, None, self.k, None, None)
        return RowAgreement(
            self.rows,
            self.compared,
            self.kl_sum / self.compared,
            self.kl_max,
            self.k,
            self.same / self.compared,
            self.overlap_sum / self.compared,
        )


def _distributions(rows: np.ndarray) -> np.ndarray:
    """Rows that can be a distribution: finite and not negative."""
    usable: np.ndarray = np.all(np.isfinite(rows) & (rows >= 0), axis=1)
    return usable


def _top_keys(rows: np.ndarray, k: int) -> np.ndarray:
    """(rows, keys) -> True at each row's k largest keys; ties go to the lower index."""
    order = np.argsort(-rows, axis=1, kind="stable")[:, :k]
    chosen = np.zeros(rows.shape, dtype=bool)
    np.put_along_axis(chosen, order, True, axis=1)
    return chosen


def _largest(current: float | None, candidate: float) -> float:
    return candidate if current is None or candidate > current else current


__all__ = [
    "COARSEST_FIRST",
    "DEFAULT_TOLERANCES",
    "Comparison",
    "RowAgreement",
    "TensorComparison",
    "compare_files",
    "compare_tensors",
    "computed_dtype",
    "default_tolerances",
    "pair_tensors",
    "tolerance_dtype",
]
