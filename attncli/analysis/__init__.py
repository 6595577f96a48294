"""Numbers about attention weights: per-row statistics, top-k, head scores, differences between files.

Each figure is computed by one function, used by every path (whole runs and runs in blocks). The
names below are plain data, importable without torch; `row_stats`, `top_k` and `matrix_means`
(of `attncli.analysis.rows`, which take a weights tensor or an `AttentionResult`) and
`head_scores` (of `attncli.analysis.heads`, which takes a result) are imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from attncli.analysis.heads import head_scores
    from attncli.analysis.rows import matrix_means, row_stats, top_k

__all__ = [
    "MEAN_NAMES",
    "PATTERN_NAMES",
    "SCORE_NAMES",
    "STAT_NAMES",
    "head_scores",
    "matrix_means",
    "row_stats",
    "top_k",
]

#: The per-row statistics of `attn compute --stats` (attncli.analysis.rows.RowStats), as saved and shown.
STAT_NAMES: tuple[str, ...] = ("entropy", "entropy_normalised", "max_weight", "argmax", "sink", "distance")
#: Those that have a per-matrix mean (an argmax has none).
MEAN_NAMES: tuple[str, ...] = ("entropy", "entropy_normalised", "max_weight", "sink", "distance")
#: Figures of a row that `analysis.heads.pattern_rows` gives (the last two need tokens).
PATTERN_NAMES = ("self", "previous", "duplicate", "induction")
TOKEN_SCORES = ("duplicate", "induction")
#: Every head score, in the order they are shown.
SCORE_NAMES = ("entropy", "sink", "distance", *PATTERN_NAMES)
#: What a high value of each score means, for the list of top heads.
SCORE_WORDS = {
    "entropy": "spread over many keys (nats)",
    "sink": "weight on the first key",
    "distance": "mean distance to the keys attended",
    "self": "weight on the query's own position",
    "previous": "weight on the previous position",
    "duplicate": "weight on earlier copies of the query's token",
    "induction": "weight on keys that follow earlier copies of the query's token",
}


def __getattr__(name: str) -> Any:
    if name in ("matrix_means", "row_stats", "top_k", "head_scores"):
        import importlib  # by name, as attncli's lazy exports: rows and heads import the names above

        module = "attncli.analysis.heads" if name == "head_scores" else "attncli.analysis.rows"
        return getattr(importlib.import_module(module), name)
    raise AttributeError(f"module 'attncli.analysis' has no attribute {name!r}")
