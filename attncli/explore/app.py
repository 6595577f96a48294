"""`attn explore`'s Textual app: the grid of every matrix, one matrix's heatmap with a cursor and
the panel of its weight, zoom and pan. The drawings come from present/ (`grid.grid_view`,
`explore.window_heatmap`, `explore.cell_panel`, `tables.weight_table`), the numbers from
`session.Explorer`; this module only keeps the state of the screens and answers keys."""

from __future__ import annotations

import math
from dataclasses import replace
from itertools import count
from pathlib import Path
from typing import ClassVar

from rich.console import Group
from rich.text import Text
from textual import events, work
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal
from textual.screen import ModalScreen, Screen
from textual.visual import VisualType
from textual.widgets import Footer, Static
from textual.worker import Worker, get_current_worker

from attncli.explore.session import Explorer, Recent, StoppedError
from attncli.present.explore import (
    WindowPicture,
    cell_panel,
    gutter_width,
    magnified_cell,
    magnified_lines,
    picture_cells,
    window_heatmap,
)
from attncli.present.grid import grid_view
from attncli.present.options import ViewOptions
from attncli.present.style import COLOR_SCALES

POOLS = ("max", "mean")
#: A window of a head: (matrix index, origin, span, weights per cell), as `Explorer.window` takes them.
WindowKey = tuple[tuple[int, ...], tuple[int, int], tuple[int, int], tuple[int, int]]
PANEL_WIDTH = 34  # columns of the side panel of a head
#: Windows kept once computed (each a few thousand pooled cells), so that zooming back out or
#: returning to a head draws at once.
KEPT_WINDOWS = 32

HELP = """\
[b]attn explore[/b]: every head of the input, then one head, then one weight.

[b]The grid[/b]
  arrows        move between heads (up/down: rows, a layer or a batch entry)
  enter         open the head

[b]A head[/b]
  arrows        move the cursor one cell (one weight when zoomed in fully)
  pgup / pgdn   move it a screenful of rows; home / end: to the first / last row
  + / -         zoom in / out around the cursor; cells pool fewer weights
  h / H         next / previous head
  l / L         next / previous layer (or the first axis of the matrices)
  t             table of the weights around the cursor / heatmap
  m             masked weights shown as masked (· grey) or plainly, as 0
                (where the input has a mask or is causal)
  click         move the cursor to a cell
  escape        back to the grid

[b]Everywhere[/b]
  s             colour scale: fixed (0 to 1), max, row, log
  p             pooling of a cell: max or mean of its weights
  b             the next batch entry (text)
  e             save the screen as an SVG picture (attn-explore-N.svg)
  ?             this help
  q             quit

A head of up to 64 MiB of weights (4,096 x 4,096) is computed once and kept
while it is shown; in a longer one only the rows on screen are computed, a
block at a time: memory stays bounded by one block of scores (16 MiB), the
kept head and the picture, whatever the input's length.
"""


class ExploreApp(App[None]):
    """The explorer of one input's attention matrices."""

    TITLE = "attn explore"
    ENABLE_COMMAND_PALETTE = False  # every action has its key, listed by ?
    CSS = """
    #title { height: 1; background: $boost; text-style: bold; }
    #grid { height: 1fr; overflow-y: auto; }
    #map { width: 1fr; height: 1fr; }
    #panel { width: 34; height: 1fr; border-left: solid $primary; padding: 0 1; }
    HelpScreen { align: center middle; }
    #help { width: 84; height: auto; max-height: 90%; border: round $primary; background: $surface;
            padding: 1 2; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("question_mark", "help", "help"),
        Binding("q", "quit", "quit"),
        Binding("s", "scale", "scale"),
        Binding("p", "pool", "pool"),
        Binding("b", "batch", "batch", show=False),
        Binding("e", "export", "svg"),
    ]

    def __init__(
        self, explorer: Explorer, *, color_scale: str = "fixed", pool: str = "max", look_ahead: bool = True
    ) -> None:
        super().__init__()
        self.explorer = explorer
        #: The head screen computes the next head's window while one is shown (`HeadScreen.look_ahead`).
        self.look_ahead = look_ahead
        self.color_scale = color_scale
        self.pool = pool
        self.batch = 0
        self.exported: list[Path] = []
        self.show_masked = True  # masked weights drawn as masked (·, grey), else plainly as the 0 they are
        self.windows: Recent[WindowKey, WindowPicture] = Recent(KEPT_WINDOWS)

    def on_mount(self) -> None:
        self.push_screen(GridScreen())

    def redraw(self) -> None:
        screen = self.screen
        if isinstance(screen, GridScreen | HeadScreen):
            screen.redraw()

    def action_scale(self) -> None:
        self.color_scale = COLOR_SCALES[(COLOR_SCALES.index(self.color_scale) + 1) % len(COLOR_SCALES)]
        self.notify(f"colour scale: {self.color_scale}", timeout=2)
        self.redraw()

    def action_pool(self) -> None:
        self.pool = POOLS[(POOLS.index(self.pool) + 1) % len(POOLS)]
        self.notify(f"pooling: {self.pool}", timeout=2)
        self.redraw()

    def action_batch(self) -> None:
        entries = self.explorer.batch_size
        if entries == 1:
            self.notify("one batch entry only", timeout=2)
            return
        self.batch = (self.batch + 1) % entries
        screen = self.screen
        if isinstance(screen, HeadScreen):
            screen.set_batch(self.batch)
        self.notify(f"batch entry {self.batch}", timeout=2)
        self.redraw()

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    def action_export(self) -> None:
        """The screen as Textual draws it, as an SVG file in the working directory (the first
        attn-explore-N.svg not taken), written at once (not at exit, as a command's outputs are)."""
        from attncli.errors import AttnError
        from attncli.io import writers
        from attncli.io.outputs import all_or_nothing

        path = next(
            Path(f"attn-explore-{n}.svg") for n in count(1) if not Path(f"attn-explore-{n}.svg").exists()
        )
        svg = self.export_screenshot(title=f"attn explore {self.explorer.label}")
        try:
            with all_or_nothing() as written:
                writers.write_text(
                    writers.check_output_path(str(path), force=False, option="e", suffixes=(".svg",)),
                    svg,
                    option="e",
                )
                written.commit()
        except AttnError as error:
            self.notify(str(error), severity="error")
            return
        self.exported.append(path)
        self.notify(f"saved {path}", timeout=3)


class HelpScreen(ModalScreen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,question_mark,q", "close", "close"),
    ]

    def compose(self) -> ComposeResult:
        yield Static(Text.from_markup(HELP), id="help")

    def action_close(self) -> None:
        self.dismiss()


class _ExplorerScreen(Screen[None]):
    """A screen of the app's `Explorer`, drawn again (`redraw`) when shown and when resized."""

    @property
    def explorer(self) -> Explorer:
        app = self.app
        assert isinstance(app, ExploreApp)
        return app.explorer

    def redraw(self) -> None:
        raise NotImplementedError

    def put(self, selector: str, content: VisualType) -> None:
        """New content for one of the screen's widgets whose size the layout fixes (the title line,
        the map, the panel): drawn again without a layout pass."""
        self.query_one(selector, Static).update(content, layout=False)

    def on_mount(self) -> None:
        self.redraw()

    def on_resize(self, _: events.Resize) -> None:
        self.redraw()


class GridScreen(_ExplorerScreen):
    """Every matrix as a thumbnail (`present.grid.grid_view`), one selected."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("left", "move(0, -1)", "head", show=False),
        Binding("right", "move(0, 1)", "head", show=False),
        Binding("up", "move(-1, 0)", "row", show=False),
        Binding("down", "move(1, 0)", "row", show=False),
        Binding("enter", "open", "open head"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.selected = 0
        self.first_layer = 0  # the first row of thumbnails shown, when not every layer fits
        self._grid_worker: Worker[None] | None = None

    @work(thread=True, group="grid")
    def _compute_grid(self) -> None:
        worker = get_current_worker()
        try:
            self.explorer.grid(stopped=lambda: worker.is_cancelled)
        except StoppedError:
            return
        if not worker.is_cancelled:
            self.app.call_from_thread(self.redraw)

    def compose(self) -> ComposeResult:
        yield Static(id="title")
        yield Static(id="grid")
        yield Footer()

    def matrices(self) -> list[tuple[int, ...]]:
        app = self.app
        assert isinstance(app, ExploreApp)
        return self.explorer.matrices(app.batch)

    def redraw(self) -> None:
        app = self.app
        assert isinstance(app, ExploreApp)
        explorer = self.explorer
        matrices = self.matrices()
        if not explorer.grid_ready:  # computed in a thread; this screen answers keys meanwhile
            lq, lk = explorer.shape
            self.put("#title", Text(f" {explorer.label}", no_wrap=True))
            self.query_one("#grid", Static).update(
                Text(f"computing the thumbnails of {len(explorer.matrices(None))} matrices of {lq}×{lk}…")
            )
            if self._grid_worker is None:
                self._grid_worker = self._compute_grid()
            return
        grid = explorer.grid()
        self.selected = min(self.selected, len(matrices) - 1)
        width = max(self.size.width, 20)
        options = ViewOptions(
            view="grid",
            width=width,
            pool=app.pool,
            color_scale=app.color_scale,
            colour=True,
            axes=explorer.axes,
            axis_values=explorer.axis_values,
            batch=None if "batch" not in explorer.axes else [app.batch],
        )
        pictures = grid.picture_max if app.pool == "max" else grid.picture_mean
        entropy = grid.entropy
        selected = matrices[self.selected] if matrices else None
        shown = selected
        rows_note = ""
        layers = pictures.shape[0] if explorer.axes[:1] == ("layer",) else 1
        if selected is not None and layers > 1:
            # only the layers that fit the height, the selected one among them
            fit = self._layers_that_fit(pictures.shape[-2:], _row_length(matrices), width)
            if fit < layers:
                self.first_layer = min(max(self.first_layer, selected[0] - fit + 1), selected[0])
                first, last = self.first_layer, min(self.first_layer + fit, layers)
                pictures, entropy = pictures[first:last], entropy[first:last]
                values = explorer.axis_values.get("layer", list(range(layers)))
                options = replace(options, axis_values={**explorer.axis_values, "layer": values[first:last]})
                shown = (selected[0] - first, *selected[1:])
                rows_note = f"  ·  layers {values[first]}–{values[last - 1]} of {len(values)} (↑↓)"
        view = grid_view(pictures, grid.blocks, explorer.shape, entropy, options, selected=shown)
        lq, lk = explorer.shape
        where = _name(explorer, selected) if selected is not None else ""
        self.put(
            "#title",
            Text(
                f" {explorer.label}  {len(matrices)} matrices of {lq}×{lk}  ·  {where}{rows_note}",
                no_wrap=True,
                overflow="ellipsis",
            ),
        )
        self.query_one("#grid", Static).update(view)

    def _layers_that_fit(self, cells: tuple[int, int], heads: int, width: int) -> int:
        """Rows of thumbnails (layers) that fit the grid's height: each a label line and its
        picture (two cell rows a line), wrapped as `grid_view` wraps them to `width`."""
        from attncli.present.grid import GAP

        picture_lines = (cells[0] + 1) // 2
        gutter = len(f"L{max(self.explorer.axis_values.get('layer', [0]), default=0)}") + 1
        label = len("h99 9.99")  # the widest label `grid_view` writes under a thumbnail
        per_line = max(1, (width - gutter + GAP) // (max(cells[1], label) + GAP))
        lines_per_layer = math.ceil(heads / per_line) * (1 + picture_lines)
        height = self.query_one("#grid", Static).size.height or max(self.size.height - 4, 4)
        return max(1, (height - 2) // lines_per_layer)  # a line above for the batch, one below for the legend

    def action_move(self, rows: int, heads: int) -> None:
        matrices = self.matrices()
        if not matrices:
            return
        current = matrices[self.selected]
        if heads:
            self.selected = (self.selected + heads) % len(matrices)
        else:
            # the same head of the row above or below: the matrix whose index differs before the head
            per_row = _row_length(matrices)
            self.selected = (self.selected + rows * per_row) % len(matrices)
        if matrices[self.selected] != current:
            self.redraw()

    def action_open(self) -> None:
        matrices = self.matrices()
        if matrices:
            self.app.push_screen(HeadScreen(matrices[self.selected]))

    def follow(self, index: tuple[int, ...]) -> None:
        """Select matrix `index` (the head screen moved to it)."""
        matrices = self.matrices()
        if index in matrices:
            self.selected = matrices.index(index)


class HeadScreen(_ExplorerScreen):
    """One matrix: the heatmap of the window around the cursor, or its weights as a table, and the
    figures of the weight under the cursor."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "back", "grid"),
        Binding("left", "move(0, -1)", "move", show=False),
        Binding("right", "move(0, 1)", "move", show=False),
        Binding("up", "move(-1, 0)", "move", show=False),
        Binding("down", "move(1, 0)", "move", show=False),
        Binding("pageup", "page(-1)", "page", show=False),
        Binding("pagedown", "page(1)", "page", show=False),
        Binding("home", "jump(0)", "first row", show=False),
        Binding("end", "jump(1)", "last row", show=False),
        Binding("plus,equals_sign", "zoom(1)", "zoom", key_display="+/-"),
        Binding("minus", "zoom(-1)", "zoom -", show=False),
        Binding("h", "head(1)", "head"),
        Binding("H", "head(-1)", "head -", show=False),
        Binding("l", "layer(1)", "layer"),
        Binding("L", "layer(-1)", "layer -", show=False),
        Binding("t", "table", "table"),
        Binding("m", "mask", "mask"),
    ]

    def __init__(self, index: tuple[int, ...]) -> None:
        super().__init__()
        self.index = index
        self.cursor = (0, 0)  # (query, key) of the weight under the cursor
        self.blocks: tuple[int, int] | None = None  # weights per cell; None: the whole matrix fits
        self.origin = (0, 0)
        self.table = False
        self._window_key: WindowKey | None = None
        self._wanted: WindowKey | None = None
        self._ahead: WindowKey | None = None  # the next head's window, being computed ahead
        self._window: WindowPicture | None = None
        self._heatmap_shown = False  # the map shows a picture of this head (not a table or a note)

    def compose(self) -> ComposeResult:
        yield Static(id="title")
        with Horizontal():
            yield Static(id="map")
            yield Static(id="panel")
        yield Footer()

    def area(self) -> tuple[int, int]:
        """(width, height) of the heatmap's widget."""
        area = self.query_one("#map", Static).size
        return area.width or max(self.size.width - PANEL_WIDTH, 20), area.height or max(
            self.size.height - 2, 5
        )

    def magnified(self) -> int:
        """Columns per weight where the whole matrix fits drawn large (`magnified_cell`), else 0."""
        return magnified_cell(*self.area(), self.explorer.shape, self.explorer.labels(self.index))

    def cell_lines(self) -> int:
        """Lines per matrix row where the whole matrix is drawn large (`magnified_lines`)."""
        cell_width = self.magnified()
        return magnified_lines(self.area()[1], self.explorer.shape, cell_width) if cell_width else 1

    def cells(self) -> tuple[int, int]:
        """(rows, cols) of cells the heatmap has room for."""
        if self.magnified():
            return self.explorer.shape
        return picture_cells(*self.area(), self.explorer.shape)

    def fit(self) -> tuple[int, int]:
        """Weights per cell that show the whole matrix."""
        lq, lk = self.explorer.shape
        rows, cols = self.cells()
        return max(1, math.ceil(lq / rows)), max(1, math.ceil(lk / cols))

    def place(self) -> tuple[tuple[int, int], tuple[int, int]]:
        """The window (origin, span) that holds the cursor at this zoom: aligned to whole cells,
        moved only when the cursor leaves it."""
        lq, lk = self.explorer.shape
        fit = self.fit()
        blocks = self.blocks = (
            fit if self.blocks is None else (min(self.blocks[0], fit[0]), min(self.blocks[1], fit[1]))
        )
        rows, cols = self.cells()
        span = (rows * blocks[0], cols * blocks[1])
        origin = []
        for axis in range(2):
            size, step, at = (lq, lk)[axis], blocks[axis], self.cursor[axis]
            first = self.origin[axis]
            if not first <= at < first + span[axis]:  # the cursor left: centre on it
                first = at - span[axis] // 2
            first = max(0, min(first, size - span[axis]))
            origin.append(first // step * step)
        self.origin = (origin[0], origin[1])
        return self.origin, span

    def redraw(self) -> None:
        app = self.app
        assert isinstance(app, ExploreApp)
        explorer = self.explorer
        self.put("#title", Text(f" {explorer.label}  ·  {_name(explorer, self.index)}", no_wrap=True))
        if self.table:
            self._panel()
            self.put("#map", self._table())
            self._heatmap_shown = False
            return
        origin, span = self.place()
        assert self.blocks is not None
        key = (self.index, origin, span, self.blocks)
        title = f"{_name(explorer, self.index)}  (+/- zoom, arrows move)"
        kept = app.windows.take(key) if key != self._window_key else None
        if kept is not None:
            self._window, self._window_key = kept, key
            self._wanted = key  # not one still being computed: that one is no longer wanted
        if key != self._window_key:
            if key != self._wanted:  # computed in a thread; the last picture stays meanwhile
                self._wanted = key
                if key != self._ahead:  # else its thread, computing it ahead, shows it once done
                    self._stop_ahead()
                    self._compute_window(key)
            last = min(origin[0] + span[0], explorer.shape[0]) - 1
            title = f"{_name(explorer, self.index)}  computing rows {origin[0]}–{last}…"
            if self._window is None or self._window_key is None or self._window_key[0] != self.index:
                # Another matrix (or none): map and panel wait for this one's window, whose thread
                # has the cores meanwhile (the panel's row, computed here, slowed it by a third).
                self.put("#map", Text(title, style="bold"))
                self.put("#panel", "")
                self._heatmap_shown = False
                return
            if self._heatmap_shown:
                # This head's last picture stays as drawn (drawing it again would cost as much as
                # the new one): the title line says what is being computed.
                self._panel()
                self.put("#title", Text(f" {explorer.label}  ·  {title}", no_wrap=True, overflow="ellipsis"))
                return
        assert self._window is not None
        self._panel()
        self.put(
            "#map",
            window_heatmap(
                self._window,
                title=title,
                pool=app.pool,
                scale=app.color_scale,
                cursor=self.cursor,
                cell_width=self.magnified(),
                cell_lines=self.cell_lines(),
                query_labels=explorer.labels(self.index),
                show_masked=app.show_masked,
            ),
        )
        self._heatmap_shown = True
        if key == self._window_key:
            # once drawn: started sooner, its thread would take the cores from the drawing of this one
            self.call_after_refresh(self.look_ahead)

    def _panel(self) -> None:
        """The figures of the weight under the cursor, beside the map."""
        figures = self.explorer.cell(self.index, *self.cursor)
        self.put("#panel", cell_panel(figures))

    @work(thread=True, exclusive=True, group="window")
    def _compute_window(self, key: WindowKey) -> None:
        """The window `key` = (matrix, origin, span, weights per cell); given up between blocks of
        rows once a newer one is asked for (exclusive: the newer worker cancels this one)."""
        self._computed(key)

    @work(thread=True, exclusive=True, group="ahead")
    def _compute_ahead(self, key: WindowKey) -> None:
        """`look_ahead`'s window, computed as any other, in a group of its own: starting a window's
        worker does not cancel it; `redraw` stops it where another window is asked for, and waits for
        it where the window asked for is this one."""
        self._computed(key)

    def _computed(self, key: WindowKey) -> None:
        """In a worker's thread: window `key`, handed to `_window_done` unless the worker was
        cancelled (checked between its blocks of rows and at the end)."""
        worker = get_current_worker()
        try:
            window = self.explorer.window(*key, stopped=lambda: worker.is_cancelled)
        except StoppedError:
            return
        if not worker.is_cancelled:
            self.app.call_from_thread(self._window_done, key, window)

    def look_ahead(self) -> None:
        """Compute the window that `h` will ask for (the next head's, at this zoom and place) while
        this one is looked at: `h` then draws it at once. Any other window asked for stops it."""
        app = self.app
        assert isinstance(app, ExploreApp)
        leading = self.explorer.leading
        if not app.look_ahead or not leading or self._window_key is None or self.table:
            return
        if app.screen is not self:
            return  # closed, or under the help (called after a refresh: the screen may have changed)
        if self._wanted is not None and self._wanted != self._window_key:
            return  # another window is being computed: this is asked for again once it is drawn
        key = (self._stepped(len(leading) - 1, 1), *self._window_key[1:])
        if key == self._window_key or key == self._ahead or key in app.windows:
            return
        self._ahead = key
        self._compute_ahead(key)

    def _stop_ahead(self) -> None:
        """Cancel the window being computed ahead (it stops between two of its blocks)."""
        if self._ahead is not None:
            self.workers.cancel_group(self, "ahead")
            self._ahead = None

    def _window_done(
        self,
        key: WindowKey,
        window: WindowPicture,
    ) -> None:
        app = self.app
        assert isinstance(app, ExploreApp)
        app.windows.keep(key, window)
        if key == self._ahead:
            self._ahead = None
        if key == self._wanted:
            self._window, self._window_key = window, key
            self.redraw()

    def _table(self) -> Group:
        from attncli.present.tables import weight_table

        explorer = self.explorer
        lq, lk = explorer.shape
        area = self.query_one("#map", Static).size
        rows = max(1, min(lq, (area.height or 20) - 6))
        cols = max(1, min(lk, ((area.width or 80) - 16) // 8))
        first_row = max(0, min(self.cursor[0] - rows // 2, lq - rows))
        first_key = max(0, min(self.cursor[1] - cols // 2, lk - cols))
        weights, masked = explorer.window_weights(
            self.index, (first_row, first_row + rows), (first_key, first_key + cols)
        )
        tokens = explorer.labels(self.index)

        def named(first: int, n: int) -> list[str]:
            return [str(i) if tokens is None else f"{i} {tokens[i]}" for i in range(first, first + n)]

        app = self.app
        assert isinstance(app, ExploreApp)
        options = ViewOptions(
            width=area.width or 80,
            max_rows=rows + 1,
            max_cols=cols,
            color_scale=app.color_scale,
            query_labels=named(first_row, rows),
            key_labels=named(first_key, cols),
        )
        title = f"rows {first_row}–{first_row + rows - 1}, keys {first_key}–{first_key + cols - 1}"
        return weight_table(
            weights,
            options=options,
            title=title,
            blocked=masked if app.show_masked else None,
            cursor=(self.cursor[0] - first_row, self.cursor[1] - first_key),
        )

    def action_back(self) -> None:
        self.app.pop_screen()
        screen = self.app.screen
        if isinstance(screen, GridScreen):
            screen.follow(self.index)
            screen.redraw()

    def action_move(self, rows: int, keys: int) -> None:
        lq, lk = self.explorer.shape
        step = self.blocks or (1, 1)
        query = max(0, min(lq - 1, self.cursor[0] + rows * step[0]))
        key = max(0, min(lk - 1, self.cursor[1] + keys * step[1]))
        if (query, key) != self.cursor:
            self.cursor = (query, key)
            self.redraw()

    def action_page(self, pages: int) -> None:
        """The cursor a screenful of rows up or down."""
        rows = self.cells()[0]
        self.action_move(pages * max(1, rows - 1), 0)

    def action_jump(self, end: int) -> None:
        """The cursor to the first row (0) or the last (1), in its column."""
        lq = self.explorer.shape[0]
        row = (lq - 1) if end else 0
        if row != self.cursor[0]:
            self.cursor = (row, self.cursor[1])
            self.redraw()

    def action_zoom(self, steps: int) -> None:
        fit = self.fit()
        blocks = self.blocks or fit
        if steps > 0:
            new = (max(1, math.ceil(blocks[0] / 2)), max(1, math.ceil(blocks[1] / 2)))
        else:
            new = (min(fit[0], blocks[0] * 2), min(fit[1], blocks[1] * 2))
        if new != blocks:
            self.blocks = new
            self.origin = (-(10**9), -(10**9))  # centre the new window on the cursor
            self.redraw()

    def _stepped(self, axis: int, steps: int) -> tuple[int, ...]:
        """The index of the matrix `steps` further along leading axis `axis` (round to its start
        past its end), the other indices kept."""
        index = list(self.index)
        index[axis] = (index[axis] + steps) % self.explorer.leading[axis]
        return tuple(index)

    def _step(self, axis: int, steps: int) -> None:
        """Show the matrix `steps` further along leading axis `axis`."""
        if not self.explorer.leading:
            return
        self.index = self._stepped(axis, steps)
        self.redraw()

    def action_head(self, steps: int) -> None:
        self._step(len(self.explorer.leading) - 1, steps)

    def action_layer(self, steps: int) -> None:
        if len(self.explorer.leading) < 2:
            self.notify("one row of matrices only", timeout=2)
            return
        self._step(0, steps)

    def set_batch(self, batch: int) -> None:
        axes = self.explorer.axes
        if "batch" in axes:
            index = list(self.index)
            index[axes.index("batch")] = batch
            self.index = tuple(index)

    def action_table(self) -> None:
        self.table = not self.table
        self.redraw()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """`m` only where the input masks some weights (a mask or causal): hidden from the footer else."""
        if action == "mask":
            return self.explorer.has_mask
        return True

    def action_mask(self) -> None:
        """Masked weights drawn as masked, or plainly as the 0 they are (heatmap and table)."""
        app = self.app
        assert isinstance(app, ExploreApp)
        app.show_masked = not app.show_masked
        self.notify("masked weights: " + ("shown as masked" if app.show_masked else "shown as 0"), timeout=2)
        self.redraw()

    def on_click(self, event: events.Click) -> None:
        """Move the cursor to the clicked cell of the heatmap."""
        target = self.query_one("#map", Static)
        offset = event.get_content_offset(target)
        if offset is None or self.table or self._window is None or self.blocks is None:
            return
        cell_width = self.magnified()
        labels = self.explorer.labels(self.index) if cell_width else None
        gutter = gutter_width(self.explorer.shape, labels)
        line, column = offset.y - 2, (offset.x - gutter) // max(cell_width, 1)  # title and ruler above
        # the cell's row: magnified, `cell_lines` lines a row; else two rows a line (the upper taken)
        row = line // self.cell_lines() if cell_width else line * 2
        window = self._window
        rows, cols = window.picture_max.shape
        if not (line >= 0 and 0 <= row < rows and 0 <= column < cols and offset.x >= gutter):
            return
        self.cursor = (
            window.origin[0] + row * self.blocks[0],
            window.origin[1] + column * self.blocks[1],
        )
        self.redraw()


def _row_length(matrices: list[tuple[int, ...]]) -> int:
    """Matrices per row of the grid: the heads of one layer (or batch entry)."""
    if not matrices or len(matrices[0]) < 2:
        return max(len(matrices), 1)
    first = matrices[0][:-1]
    return sum(1 for index in matrices if index[:-1] == first)


def _name(explorer: Explorer, index: tuple[int, ...] | None) -> str:
    """`layer 2, head 5`: each leading axis and its value."""
    if index is None:
        return ""
    parts = []
    for axis, value in zip(explorer.axes, index, strict=False):
        shown = explorer.axis_values[axis][value] if axis in explorer.axis_values else value
        parts.append(f"{axis} {shown}")
    return ", ".join(parts) or "the matrix"
