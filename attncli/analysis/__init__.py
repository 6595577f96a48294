"""Numbers about attention weights: per-row statistics, top-k, differences between files.

Each figure is computed by one function, used by every path (whole runs and runs in blocks). The
names below are plain data, importable without torch.
"""

from __future__ import annotations

#: The per-row statistics of `attn compute --stats` (attncli.analysis.rows.RowStats), as saved and shown.
STAT_NAMES: tuple[str, ...] = ("entropy", "entropy_normalised", "max_weight", "argmax", "sink", "distance")
#: Those that have a per-matrix mean (an argmax has none).
MEAN_NAMES: tuple[str, ...] = ("entropy", "entropy_normalised", "max_weight", "sink", "distance")
