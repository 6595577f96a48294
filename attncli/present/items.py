"""Lines of items that break between items, never inside one.

A header's `query x.npy (2, 12, 128, 64)` or a title's `min=0.1 max=0.9` must not be cut across two
lines (`(2, 12, 128,` / `64)`) on a narrow terminal: `ItemLines` packs its items onto lines of the
width it is drawn at, a separator between items on a line, the next line started where an item
would not fit. An item wider than a whole line gets a line of its own, which Rich then folds.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console, ConsoleOptions, RenderResult
from rich.measure import Measurement
from rich.text import Text


class ItemLines:
    """`items` (str or Text) joined by `separator` (in `separator_style`), wrapped between them,
    each line in `style`."""

    def __init__(
        self,
        items: Sequence[str | Text],
        separator: str = " · ",
        style: str = "",
        separator_style: str = "",
    ) -> None:
        self.items = [item if isinstance(item, Text) else Text(item) for item in items if item]
        self.separator, self.style, self.separator_style = separator, style, separator_style

    @classmethod
    def split(cls, text: str, separator: str = "  ", style: str = "") -> ItemLines:
        """The items of `text` that `separator` divides (a title's groups: name, shape, figures)."""
        return cls(text.split(separator), separator, style)

    @property
    def plain(self) -> str:
        return self.separator.join(item.plain for item in self.items)

    def lines(self, width: int) -> list[Text]:
        lines: list[Text] = []
        line = Text(style=self.style)
        for item in self.items:
            if line.cell_len and line.cell_len + len(self.separator) + item.cell_len > width:
                lines.append(line)
                line = Text(style=self.style)
            if line.cell_len:
                line.append(self.separator, style=self.separator_style)
            line.append_text(item)
        lines.append(line)
        return lines

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield from self.lines(options.max_width)

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        widest = max((item.cell_len for item in self.items), default=0)
        return Measurement(widest, len(self.plain))
