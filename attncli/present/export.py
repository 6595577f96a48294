"""What a console recorded, as standalone SVG or HTML (`--export-svg`, `--export-html`): nothing fetched."""

from __future__ import annotations

import re

from rich.console import Console

_SVG_FONTS = "font-family: Fira Code, 'DejaVu Sans Mono', Menlo, Consolas, monospace;"


def export_svg(console: Console, title: str) -> str:
    """What `console` recorded, as a standalone SVG: Rich's template without its web-font download."""
    from rich._export_format import CONSOLE_SVG_FORMAT

    # Keep local() fonts and fall back to the system's monospace fonts; fetch nothing.
    template = re.sub(r',\s*url\("[^"]*"\) format\("[^"]*"\)', "", CONSOLE_SVG_FORMAT)
    template = template.replace("font-family: Fira Code, monospace;", _SVG_FONTS)
    return console.export_svg(title=title, code_format=template, clear=False)


def export_html(console: Console) -> str:
    """What `console` recorded, as a standalone HTML page with inline styles (no stylesheet to fetch)."""
    return console.export_html(inline_styles=True, clear=False)
