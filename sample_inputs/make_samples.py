"""Write the files in sample_inputs/ (run from the repository root: python sample_inputs/make_samples.py).

- seed.*: the tutorial's 3-position example (query = key) in every format attncli reads:
  seed_query.npy, seed_key.npy, seed_value.npy; seed.npz, seed.safetensors and seed.json holding
  query/key/value by name.
- multihead.safetensors: batch 2, 4 heads, 6 positions, 8 features (random, seed 0), and
  padding_mask.npy, a boolean key mask (2, 1, 1, 6) that hides the last two keys of the second sequence.
- gqa.npz: grouped-query attention, 8 query heads sharing 2 key/value heads.
- pattern.safetensors: 512 positions, 64 features, built so that attention has the shapes people look
  for in real models: a local window along the diagonal (sinusoidal position features) and an
  attention sink on key 0 (one feature that every query shares with key 0 alone). Try it with
  `--causal --view heatmap`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from attncli.demo import SAMPLE_QUERY, SAMPLE_VALUE

HERE = Path(__file__).resolve().parent


def main() -> None:
    query = np.array(SAMPLE_QUERY, dtype=np.float32)[0]  # (3, 4)
    value = np.array(SAMPLE_VALUE, dtype=np.float32)[0]  # (3, 4)
    seed = {"query": query, "key": query.copy(), "value": value}
    for name, array in seed.items():
        np.save(HERE / f"seed_{name}.npy", array)
    np.savez(HERE / "seed.npz", **seed)
    save_file(seed, str(HERE / "seed.safetensors"))
    (HERE / "seed.json").write_text(json.dumps({k: v.tolist() for k, v in seed.items()}, indent=1) + "\n")

    rng = np.random.default_rng(0)
    multihead = {
        role: rng.standard_normal((2, 4, 6, 8)).astype(np.float32) for role in ("query", "key", "value")
    }
    save_file(multihead, str(HERE / "multihead.safetensors"))
    padding = np.ones((2, 1, 1, 6), dtype=bool)
    padding[1, ..., 4:] = False  # the second sequence is 4 tokens long
    np.save(HERE / "padding_mask.npy", padding)

    np.savez(
        HERE / "gqa.npz",
        query=rng.standard_normal((1, 8, 5, 16)).astype(np.float32),
        key=rng.standard_normal((1, 2, 5, 16)).astype(np.float32),
        value=rng.standard_normal((1, 2, 5, 16)).astype(np.float32),
    )
    save_file(pattern(), str(HERE / "pattern.safetensors"))


def pattern(positions: int = 512, features: int = 64) -> dict[str, np.ndarray]:
    """Query and key whose dot products peak near the diagonal, plus a sink on key 0."""
    index = np.arange(positions)[:, None]
    frequencies = 1.0 / (10.0 ** (np.arange((features - 2) // 2) / ((features - 2) // 2)))
    angles = index * frequencies  # (positions, features/2 - 1)
    # q_i . k_j = sum_f cos(w_f (i - j)): largest at i = j, falling off with distance.
    position = np.concatenate([np.cos(angles), np.sin(angles)], axis=1) * 1.5
    query = np.concatenate([position, np.full((positions, 1), 3.0), np.zeros((positions, 1))], axis=1)
    key = np.concatenate([position, np.zeros((positions, 2))], axis=1)
    key[0, -2] = 16.0  # the sink: every query's last-but-one feature meets key 0's
    value = np.random.default_rng(1).standard_normal((positions, features))
    tensors = {"query": query, "key": key, "value": value}
    return {name: array.astype(np.float32) for name, array in tensors.items()}


if __name__ == "__main__":
    main()
