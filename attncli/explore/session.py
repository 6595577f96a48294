"""What the explorer shows, computed by compute/ and analysis/: the pooled thumbnails of every
matrix (the grid), the pooled picture of one matrix's visible window, and the figures of one cell.

A window's rows are computed again, block by block, each time the view moves: the weights of a
long input never exist whole, so memory is bounded by one block of rows (`MAX_BLOCK_BYTES` of
scores) and the picture, whatever the number of positions. Each block of rows is its own small
problem (`rows_problem`): the query rows alone against every key, with the matrix's mask and causal
triangle for those rows turned into one mask, so that the softmax is the one `attn compute` takes.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
import torch

from attncli import arrays
from attncli.analysis.rows import row_entropy, row_stats, top_k
from attncli.compute import MAX_BLOCK_BYTES, Prepared, causal_hidden, prepare, run
from attncli.compute.blocks import Block, blocks
from attncli.compute.sinks import PictureSink
from attncli.io.loaders import TensorFile
from attncli.present.explore import CellFigures, WindowPicture
from attncli.present.grid import thumbnail_size
from attncli.selection import matrix_indices

#: Keys listed in the side panel.
TOP_KEYS = 5
#: The weights of one head kept whole up to this size (a 4,096 x 4,096 float32 head): zooming and
#: panning over it pool what is kept instead of computing its rows again; longer heads are computed
#: again for each window, within MAX_BLOCK_BYTES.
HEAD_BYTES = 64 * 2**20
#: Heads kept whole at once, the latest used last: the one shown and the next one, which the head
#: screen computes ahead while the first is looked at (so that `h` finds it computed).
KEPT_HEADS = 2
#: Rows of a kept head's blocks: under causal, a block computes the keys up to its last row only,
#: so smaller blocks leave out more of the masked triangle (8 blocks: 9/16 of a matrix computed).
HEAD_BLOCK_ROWS = 512


class StoppedError(Exception):
    """A computation given up between two blocks: its result is no longer wanted."""


_Key = TypeVar("_Key", bound=Hashable)
_Value = TypeVar("_Value")


class Recent(OrderedDict[_Key, _Value]):
    """The `limit` entries used last, the latest last: the kept heads here, the app's windows."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def take(self, key: _Key) -> _Value | None:
        """The entry of `key`, now the latest used; None when none is kept."""
        value = self.get(key)
        if value is not None:
            self.move_to_end(key)
        return value

    def keep(self, key: _Key, value: _Value) -> None:
        """`value` for `key`, the latest; those used least lately go past `limit`."""
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.limit:
            self.popitem(last=False)


@dataclass(frozen=True)
class Grid:
    """The thumbnails of every matrix: pooled pictures (..., R, C) by max and by mean, each cell
    `blocks` weights, and each row's entropy (..., Lq)."""

    picture_max: np.ndarray
    picture_mean: np.ndarray
    blocks: tuple[int, int]
    entropy: np.ndarray


@dataclass(frozen=True)
class HeadWeights:
    """The weights of matrix `index` as the blocks of its rows computed them, kept: each block's
    weights (n, W) and where they are masked (`Block`: under causal, W stops at the block's last
    row, the keys after it 0 and masked). What its windows pool, with no copy made."""

    index: tuple[int, ...]
    blocks: list[Block]


@dataclass(frozen=True)
class HeldWeights:
    """Weights read whole (..., Lq, Lk), from a result file: `causal` says the keys past each
    query were masked (the file's metadata; other masks are not saved, their weights are 0)."""

    weights: np.ndarray
    causal: bool = False

    def rows(self, index: tuple[int, ...], start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Rows [start, stop) of matrix `index`, (n, Lk), and the keys masked for them (the causal
        triangle) or None."""
        rows = torch.from_numpy(np.ascontiguousarray(self.weights[index][start:stop]))
        keys = self.weights.shape[-1]
        return rows, causal_hidden(stop - start, keys, start, rows.device) if self.causal else None

    def grid(self, size: tuple[int, int], stopped: Callable[[], bool] | None) -> Grid:
        """Every matrix's thumbnail of `size` cells and its rows' entropy, a block of rows at a time."""
        *lead, lq, lk = self.weights.shape
        picture = PictureSink(self.weights.shape, size, torch.device("cpu"))
        step = max(1, MAX_BLOCK_BYTES // max(1, math.prod(lead) * lk * 8))
        entropies = []
        for start in range(0, lq, step):
            if stopped is not None and stopped():
                raise StoppedError
            stop = min(start + step, lq)
            rows = torch.from_numpy(np.ascontiguousarray(self.weights[..., start:stop, :]))  # (..., n, Lk)
            blocked = causal_hidden(stop - start, lk, start, rows.device) if self.causal else None
            picture.pool(start, rows, blocked)
            entropies.append(row_entropy(rows, blocked).double().numpy())
        largest, mean = picture.arrays()
        entropy = np.concatenate(entropies, axis=-1) if entropies else np.zeros((*lead, 0))
        return Grid(largest, mean, picture.blocks, entropy)


@dataclass
class Explorer:
    """The matrices of one problem, named: `axes` are the weights' leading axes ("layer", "batch",
    "head"), `axis_values` what each index of an axis stands for (a capture's layer numbers),
    `tokens` the tokens of each batch entry (a capture's), `label` the input's name.

    `problem` is None for weights read whole from a result file (`held`): they are shown as
    saved, with no score (the file holds none)."""

    problem: Prepared | None
    axes: tuple[str, ...]
    label: str
    axis_values: dict[str, list[int]] = field(default_factory=dict)
    tokens: list[list[str]] | None = None
    held: HeldWeights | None = None
    _grid: Grid | None = None
    #: Heads kept whole (`head`), the latest used last; windows are computed in threads, two at once
    #: where one is computed ahead, hence the lock (held for the dictionary, not the computing).
    _heads: Recent[tuple[int, ...], HeadWeights] = field(
        default_factory=lambda: Recent(KEPT_HEADS), repr=False
    )
    _heads_lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @property
    def weights_shape(self) -> tuple[int, ...]:
        if self.problem is not None:
            return tuple(self.problem.weights_shape)
        assert self.held is not None, "an explorer has a problem or held weights"
        return tuple(self.held.weights.shape)

    @property
    def shape(self) -> tuple[int, int]:
        """(Lq, Lk) of each matrix."""
        lq, lk = self.weights_shape[-2:]
        return lq, lk

    @property
    def has_mask(self) -> bool:
        """Whether the input masks any weights: a mask, or causal."""
        if self.problem is not None:
            return self.problem.causal or self.problem.mask is not None
        return self.held is not None and self.held.causal

    @property
    def leading(self) -> tuple[int, ...]:
        return self.weights_shape[:-2]

    @property
    def batch_size(self) -> int:
        """Entries of the (first) batch axis; 1 without one."""
        return self.leading[self.axes.index("batch")] if "batch" in self.axes else 1

    def matrices(self, batch: int | None) -> list[tuple[int, ...]]:
        """The indices of every matrix of batch entry `batch` (every one with None), in order."""
        chosen = None if batch is None or "batch" not in self.axes else [batch]
        return list(matrix_indices(self.leading, self.axes, chosen, None))

    @property
    def grid_ready(self) -> bool:
        return self._grid is not None

    def grid(self, stopped: Callable[[], bool] | None = None) -> Grid:
        """Every matrix's thumbnail, computed once, in blocks of rows as long inputs need;
        `StoppedError` is raised between blocks once `stopped()` says so."""
        if self._grid is None and self.held is not None:
            self._grid = self.held.grid(thumbnail_size(self.shape), stopped)
        if self._grid is None:
            assert self.problem is not None

            def progress(done: int, total: int) -> None:
                if stopped is not None and stopped():
                    raise StoppedError

            result = run(
                self.problem,
                block_rows=_block_rows(self.problem),
                picture=thumbnail_size(self.shape),
                entropy=True,
                progress=progress,
            )
            assert result.picture_max is not None
            assert result.picture_mean is not None
            assert result.entropy is not None
            entropy = result.entropy.detach().cpu().double().numpy()
            self._grid = Grid(result.picture_max, result.picture_mean, result.picture_blocks, entropy)
        return self._grid

    def labels(self, index: tuple[int, ...]) -> list[str] | None:
        """The tokens that name the positions of matrix `index` (its batch entry's), or None."""
        if self.tokens is None:
            return None
        entry = index[self.axes.index("batch")] if "batch" in self.axes else 0
        if entry >= len(self.tokens):
            return None
        return self.tokens[entry]

    def _operands(self, index: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Matrix `index`'s query (Lq, D), key (Lk, D) and value (Lk, Dv): the inputs broadcast to
        the weights' leading axes, a grouped query head reading key/value head h // group."""
        p = self.problem
        assert p is not None, "held weights have no problem to compute"
        lead = self.leading
        query = p.query.expand(*lead, *p.query.shape[-2:])[index]
        kv_lead, kv_index = lead, index
        if p.group > 1:
            kv_lead = (*lead[:-1], p.key.shape[-3])
            kv_index = (*index[:-1], index[-1] // p.group)
        key = p.key.expand(*kv_lead, *p.key.shape[-2:])[kv_index]
        value = p.value.expand(*kv_lead, *p.value.shape[-2:])[kv_index]
        return query, key, value

    def matrix_problem(self, index: tuple[int, ...], *, outputs: bool = True) -> Prepared:
        """Matrix `index` as a problem of its own: its query (Lq, D), key and value (Lk, .), its
        mask (Lq, Lk), causal as the input's. `outputs` False: a value of no features, for the
        weights alone."""
        p = self.problem
        assert p is not None, "held weights have no problem to compute"
        query, key, value = self._operands(index)  # (Lq, D), (Lk, D), (Lk, Dv)
        mask = None if p.mask is None else torch.broadcast_to(p.mask, p.weights_shape)[index]  # (Lq, Lk)
        if not outputs:
            # (Lk, Dv) -> (Lk, 0): the blocks' weights @ value, as costly as the scores, costs nothing
            value = value[:, :0]
        return prepare(
            query,
            key,
            value,
            scale=p.scale,
            mask=mask,
            causal=p.causal,
            dtype=p.query.dtype,
            device=query.device,
        )

    def rows_problem(self, index: tuple[int, ...], start: int, stop: int, *, trim: bool = False) -> Prepared:
        """Query rows [start, stop) of matrix `index` against every key, as a problem of their own:
        the matrix's mask rows and causal triangle (aligned to row `start`) as one mask. `trim`:
        under causal, only the keys up to row stop - 1, which are all these rows see (as the
        blocks of a run leave the others out)."""
        p = self.problem
        assert p is not None, "held weights have no problem to compute"
        query, key, value = self._operands(index)
        query = query[start:stop]  # (n, D)
        seen = min(stop, key.shape[-2]) if trim and p.causal else key.shape[-2]
        key, value = key[:seen], value[:seen]  # (W, D), (W, Dv)
        rows, keys = stop - start, seen
        mask: torch.Tensor | None = None
        if p.mask is not None:
            # (..., Lq or 1, Lk or 1) -> (Lq, Lk) of this matrix (a view), then its rows: (n, W)
            mask = torch.broadcast_to(p.mask, p.weights_shape)[index][start:stop, :seen]
        if p.causal:
            hidden = causal_hidden(rows, keys, start, query.device)  # (n, Lk): True past the diagonal
            if mask is None:
                mask = ~hidden
            elif mask.dtype == torch.bool:
                mask = mask & ~hidden
            else:
                mask = mask.masked_fill(hidden, -math.inf)
        return prepare(query, key, value, scale=p.scale, mask=mask, dtype=p.query.dtype, device=query.device)

    def window(
        self,
        index: tuple[int, ...],
        origin: tuple[int, int],
        span: tuple[int, int],
        blocks_per_cell: tuple[int, int],
        stopped: Callable[[], bool] | None = None,
    ) -> WindowPicture:
        """The picture of rows origin[0].. and keys origin[1].. of matrix `index`, `span` (rows,
        keys) of them, each cell pooling `blocks_per_cell` weights: only those rows are computed,
        a block of rows at a time, and only those keys pooled. `StoppedError` is raised between blocks
        once `stopped()` says so (the view moved on before the window was done)."""
        lq, lk = self.shape
        first_row, first_key = origin
        last_row = min(first_row + span[0], lq)
        last_key = min(first_key + span[1], lk)
        rows, keys = last_row - first_row, last_key - first_key
        size = (max(1, math.ceil(rows / blocks_per_cell[0])), max(1, math.ceil(keys / blocks_per_cell[1])))
        head = self.head(index, stopped)
        if head is not None:
            picture = PictureSink((rows, keys), size, self.problem.query.device if self.problem else "cpu")
            for block in head.blocks:
                start, stop = max(block.start, first_row), min(block.stop, last_row)
                seen = min(last_key, block.weights.shape[-1])  # under causal, W < Lk: the rest masked
                if start >= stop or seen <= first_key:
                    continue  # rows outside the window, or every key of the window masked for them
                taken = slice(start - block.start, stop - block.start)
                shut = block.blocked  # bool, broadcastable to (n, W)
                if shut is not None and shut.shape[-2] > 1:
                    shut = shut[taken]
                if shut is not None and shut.shape[-1] > 1:
                    shut = shut[..., first_key:seen]
                # (n, W) -> (rows of the window, keys of the window it computed): a view
                picture.pool(start - first_row, block.weights[taken, first_key:seen], shut)
        elif self.held is not None:
            picture = PictureSink((rows, keys), size, torch.device("cpu"))
            step = max(1, MAX_BLOCK_BYTES // max(1, lk * 8))
            for start in range(first_row, last_row, step):
                if stopped is not None and stopped():
                    raise StoppedError
                stop = min(start + step, last_row)
                weights, blocked = self.held.rows(index, start, stop)  # (n, Lk)
                if blocked is not None and blocked.shape[-1] > 1:
                    blocked = blocked[..., first_key:last_key]
                picture.pool(start - first_row, weights[..., first_key:last_key], blocked)
        else:
            assert self.problem is not None
            picture = PictureSink((rows, keys), size, self.problem.query.device)
            step = _rows_per_block(self.problem, lk)
            for start in range(first_row, last_row, step):
                if stopped is not None and stopped():
                    raise StoppedError
                stop = min(start + step, last_row)
                sub = self.rows_problem(index, start, stop, trim=True)
                seen = sub.weights_shape[-1]  # under causal, keys from `stop` on are masked: not computed
                if seen <= first_key:
                    continue  # every key of the window is masked for these rows: their cells stay empty
                for block in blocks(sub, stop - start):
                    # (n, W) -> (n, keys or fewer): keys past W count as masked in the picture
                    weights = block.weights[..., first_key:last_key]
                    blocked = block.blocked
                    if blocked is not None and blocked.shape[-1] > 1:
                        blocked = blocked[..., first_key:last_key]
                    picture.pool(start - first_row, weights, blocked)
        largest, mean = picture.arrays()
        return WindowPicture(
            picture_max=largest,
            picture_mean=mean,
            blocks=picture.blocks,
            origin=(first_row, first_key),
            span=(rows, keys),
            shape=(lq, lk),
            picture_all_mean=_all_mean(picture, (rows, keys)),
        )

    def head(self, index: tuple[int, ...], stopped: Callable[[], bool] | None = None) -> HeadWeights | None:
        """The weights of matrix `index` whole, computed once by the blocks of its rows and kept
        (KEPT_HEADS heads at a time) where they fit HEAD_BYTES; None where they do not, or for held
        weights (already whole). `StoppedError` is raised between blocks once `stopped()` says so."""
        with self._heads_lock:
            kept = self._heads.take(index)
        if kept is not None:
            return kept
        if self.problem is None:
            return None
        lq, lk = self.shape
        if lq * lk * max(arrays.itemsize(self.problem.query.dtype), 4) > HEAD_BYTES:
            return None
        # One problem for the whole matrix, causal left to the blocks (which compute no key past a
        # block's last row), its rows computed a block at a time and kept as they come.
        sub = self.matrix_problem(index, outputs=False)
        kept_blocks = []
        for block in blocks(sub, min(HEAD_BLOCK_ROWS, _rows_per_block(self.problem, lk))):
            if stopped is not None and stopped():
                raise StoppedError
            kept_blocks.append(block)
        head = HeadWeights(index, kept_blocks)
        with self._heads_lock:
            self._heads.keep(index, head)
        return head

    def kept_heads(self) -> list[tuple[int, ...]]:
        """The matrices whose weights are kept whole, the latest used last."""
        with self._heads_lock:
            return list(self._heads)

    def window_weights(
        self, index: tuple[int, ...], rows: tuple[int, int], keys: tuple[int, int]
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """The weights (float64) of rows [rows) and keys [keys) of matrix `index`, and where they
        are masked (bool, or None): what a table of the window shows."""
        if self.held is not None:
            held, blocked = self.held.rows(index, *rows)
            shut = None if blocked is None else blocked.numpy()[:, keys[0] : keys[1]]
            return held.double().numpy()[:, keys[0] : keys[1]], shut
        sub = self.rows_problem(index, *rows)
        result = run(sub, keep_weights=True)
        assert result.weights is not None
        weights = result.weights.detach().cpu().double().numpy()[:, keys[0] : keys[1]]
        masked = result.masked_keys()
        if masked is not None:
            masked = np.broadcast_to(masked, result.weights_shape)[:, keys[0] : keys[1]]
        return weights, masked

    def cell(self, index: tuple[int, ...], query: int, key: int, top: int = TOP_KEYS) -> CellFigures:
        """The figures of weight (query, key) of matrix `index` and of its row: computed for that
        row alone, by the run and row statistics that `attn compute --stats --top-k` uses (held
        weights: read from the file, with no score)."""
        if self.held is not None:
            weights, blocked = self.held.rows(index, query, query + 1)  # (1, Lk)
            stats = row_stats(weights, blocked, row_offset=query)
            values, keys = top_k(weights, top, blocked)
            score: float | None = None
        else:
            sub = self.rows_problem(index, query, query + 1)
            result = run(sub, keep_weights=True, top_k=top)
            assert result.weights is not None
            assert result.top_k is not None
            stats = row_stats(result, row_offset=query)
            weights, (values, keys) = result.weights, result.top_k
            masked = result.masked_keys()
            blocked = None if masked is None else torch.from_numpy(np.array(masked))
            score = self._score(sub, key)
        row = weights[0].detach().cpu().double().numpy()  # (Lk,)
        shut = (
            np.zeros(row.shape, dtype=bool)
            if blocked is None
            else np.broadcast_to(blocked.cpu().numpy(), weights.shape)[0]
        )
        weight = float(row[key])
        open_weights = row[~shut]
        # ties share a rank: 1 + the open keys with a larger weight
        rank = None if shut[key] else 1 + int((open_weights > weight).sum())
        labels = self.labels(index)
        return CellFigures(
            query=query,
            key=key,
            query_token=None if labels is None else labels[query],
            key_token=None if labels is None else labels[key],
            weight=weight,
            score=None if shut[key] else score,
            rank=rank,
            open_keys=int((~shut).sum()),
            masked=bool(shut[key]),
            entropy=float(stats.entropy[0]),
            sink=float(stats.sink[0]),
            distance=float(stats.distance[0]),
            top=[
                (int(k), float(v), None if labels is None else labels[int(k)])
                for k, v in zip(keys[0].tolist(), values[0].double().tolist(), strict=True)
                if k >= 0
            ],
        )

    @staticmethod
    def _score(sub: Prepared, key: int) -> float:
        """The score the softmax took for `key` in the one row of `sub`: the scaled query . key, plus
        the additive mask where the mask is one; the product taken as the blocks take it."""
        query, keys, _ = sub.compute_inputs()
        score = float((query[0] * sub.scale) @ keys[key])  # (D,) . (D,)
        if sub.mask is not None and sub.mask.dtype != torch.bool:
            score += float(torch.broadcast_to(sub.mask, sub.weights_shape)[0, key])
        return score


def _all_mean(picture: PictureSink, span: tuple[int, int]) -> np.ndarray:
    """The mean over every weight of each cell of `picture` of `span` (rows, keys), masked ones
    counted as the 0 they are: its sums over each cell's size (the last row and column ragged)."""
    sums: np.ndarray = picture.sums.cpu().numpy() if isinstance(picture.sums, torch.Tensor) else picture.sums
    cells_down, cells_across = sums.shape[-2:]
    block_rows, block_cols = picture.blocks
    rows_in = np.minimum(block_rows, span[0] - block_rows * np.arange(cells_down))  # (R,)
    keys_in = np.minimum(block_cols, span[1] - block_cols * np.arange(cells_across))  # (C,)
    mean: np.ndarray = (sums / np.outer(np.maximum(rows_in, 1), np.maximum(keys_in, 1))).astype(np.float32)
    return mean


def _block_rows(problem: Prepared) -> int:
    """Query rows per block of a run over `problem`: every row when its scores fit MAX_BLOCK_BYTES
    x 8, else as many as fit MAX_BLOCK_BYTES (compute's own bound for a block)."""
    *lead, lq, lk = problem.weights_shape
    row_bytes = max(1, math.prod(lead) * lk * arrays.itemsize(problem.query.dtype))
    if row_bytes * lq <= 8 * MAX_BLOCK_BYTES:
        return max(lq, 1)
    return max(1, MAX_BLOCK_BYTES // row_bytes)


def _rows_per_block(problem: Prepared, keys: int) -> int:
    """Rows of one matrix per block of a window: MAX_BLOCK_BYTES of scores."""
    return max(1, MAX_BLOCK_BYTES // max(1, keys * max(arrays.itemsize(problem.query.dtype), 4)))


def open_explorer(
    paths: Sequence[str],
    *,
    layer: str | None = None,
    scale: float | None = None,
    causal: bool = False,
    mask: str | None = None,
    heads: int | None = None,
    dtype: str = "auto",
    labels: str | None = None,
) -> Explorer:
    """The explorer of what `attn compute` reads: a file from `attn capture` (its layers stacked,
    every one unless `layer` picks some, with their mask, scale and tokens), or query, key and
    value (three files, or one holding them, or one tensor for self-attention). Errors are the
    loaders' and `prepare`'s, raised before anything is computed."""
    from attncli import selection
    from attncli.errors import UsageError
    from attncli.io import loaders

    layers = selection.parse_layers(layer)
    path, name = loaders.split_spec(paths[0])
    source = loaders.read_tensors(path) if len(paths) == 1 else None
    if source is not None and name is None and _holds_weights_only(source.tensors):
        ignored = {
            "--layer": layer is not None,
            "--scale": scale is not None,
            "--causal": causal,
            "--mask": mask is not None,
            "--heads": heads is not None,
            "--dtype": dtype != "auto",
        }
        if any(ignored.values()):
            options = ", ".join(option for option, is_given in ignored.items() if is_given)
            raise UsageError(f"{source.label} holds weights, shown as saved: {options} do not apply to them")
        return _held_explorer(source, selection.given_labels(labels))
    if source is not None and name is None and loaders.captured_layers(source.tensors):
        inputs = loaders.stacked_layer_inputs(source, loaders.chosen_layers(source, layers))
    else:
        if layer is not None:
            raise UsageError("--layer picks layers of a file from 'attn capture'; this input has none")
        inputs = loaders.load_attention_inputs(paths)
    problem = prepare(
        inputs.query,
        inputs.key,
        inputs.value,
        scale=inputs.scale if scale is None else scale,
        mask=loaders.load_mask(mask) if mask else inputs.mask,
        causal=causal,
        heads=heads,
        dtype=dtype,
        names=inputs.sources,
    )
    tokens = inputs.tokens
    given = selection.given_labels(labels)
    if given is not None:
        selection.check_label_count(given, problem.weights_shape[-2], "--labels", "query")
        selection.check_label_count(given, problem.weights_shape[-1], "--labels", "key")
        tokens = [given] * max(1, len(inputs.tokens or [given]))
    return Explorer(
        problem,
        axes_of(problem, inputs.layers),
        label=source.label if source is not None else " ".join(paths),
        axis_values={} if inputs.layers is None else {"layer": list(inputs.layers)},
        tokens=tokens,
    )


def _holds_weights_only(tensors: dict[str, np.ndarray]) -> bool:
    """A result file (`attn compute -o`): weights, and no query/key/value to compute them from."""
    inputs = {"query", "key", "value", "q", "k", "v"}
    return "weights" in tensors and not inputs & set(tensors) and tensors["weights"].ndim >= 2


def _held_explorer(source: TensorFile, labels: list[str] | None) -> Explorer:
    """The explorer of a result file's weights, named by its metadata: their axes (layers
    included), whether they are causal."""
    from attncli import selection

    weights = source.tensors["weights"]
    meta = source.metadata
    axes = meta.get("weights_axes")
    leading = weights.ndim - 2
    if isinstance(axes, list) and len(axes) == weights.ndim and all(isinstance(a, str) for a in axes):
        names = tuple(axes[:-2])
    else:  # no metadata (weights from elsewhere): batch axes, the last one taken for heads
        names = ("batch",) * max(leading - 1, 0) + (("head",) if leading else ())
    values: dict[str, list[int]] = {}
    numbers = meta.get("layers")
    if names[:1] == ("layer",) and isinstance(numbers, list) and len(numbers) == weights.shape[0]:
        values["layer"] = [int(n) for n in numbers]
    tokens = None
    if labels is not None:
        selection.check_label_count(labels, weights.shape[-2], "--labels", "query")
        selection.check_label_count(labels, weights.shape[-1], "--labels", "key")
        tokens = [labels] * (weights.shape[names.index("batch")] if "batch" in names else 1)
    held = HeldWeights(np.asarray(weights, dtype=np.float64), causal=meta.get("causal") is True)
    return Explorer(None, names, label=source.label, axis_values=values, tokens=tokens, held=held)


def axes_of(problem: Prepared, layers: Sequence[int] | None) -> tuple[str, ...]:
    """The names of the weights' leading axes; a capture's stacked layers are the first."""
    axes = list(problem.describe()["weights_axes"][:-2])
    if layers is not None and axes:
        axes[0] = "layer"
    return tuple(axes)
