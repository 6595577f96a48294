"""Numbers about attention weights: per-row statistics, top-k, head scores, differences between files.

Each figure is computed by one function, used by every path (whole runs and runs in blocks). The
names below are plain data, importable without torch.
"""

from __future__ import annotations

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
