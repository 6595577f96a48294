"""Write the files in sample_inputs/ (run from the repository root: python sample_inputs/make_samples.py).

- seed.*: the tutorial's 3-position example (query = key) in every format attncli reads:
  seed_query.npy, seed_key.npy, seed_value.npy; seed.npz, seed.safetensors and seed.json holding
  query/key/value by name.
- multihead.safetensors: batch 2, 4 heads, 6 positions, 8 features (random, seed 0), and
  padding_mask.npy, a boolean key mask (2, 1, 1, 6) that hides the last two keys of the second sequence.
- gqa.npz: grouped-query attention, 8 query heads sharing 2 key/value heads.
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


if __name__ == "__main__":
    main()
