"""Retrieval metrics of an audio/lyrics index: recall@K and MRR when every song of a group
(one work's renderings) counts as a hit, and what random ranking would score."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def retrieval_metrics(
    queries: np.ndarray, keys: np.ndarray, groups: np.ndarray, ks: Sequence[int] = (1, 5, 10)
) -> dict[str, float]:
    """Recall@k and MRR of exact search: query i's correct keys are those with groups[i]."""
    n = queries.shape[0]
    ranks = np.empty(n, dtype=np.int64)
    for start in range(0, n, 1024):
        sim = queries[start : start + 1024] @ keys.T  # (q, N) cosine similarities
        correct = groups[start : start + 1024, None] == groups[None, :]  # (q, N)
        best = np.where(correct, sim, -np.inf).max(axis=1)  # best-scoring correct key
        # Rank of the first correct key: 1 + wrong keys scoring strictly higher (ties favour it).
        ranks[start : start + 1024] = 1 + ((sim > best[:, None]) & ~correct).sum(axis=1)
    out = {f"recall@{k}": float((ranks <= k).mean()) for k in ks}
    out["mrr"] = float((1.0 / ranks).mean())
    out["median_rank"] = float(np.median(ranks))
    return out


def chance_metrics(groups: np.ndarray, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Expected recall@k and MRR of a random ranking, per query with g correct keys among N."""
    n = len(groups)
    _, sizes = np.unique(groups, return_counts=True)
    # Each group of size g contributes g queries, each with g correct keys.
    weights = sizes / n
    out: dict[str, float] = {}
    for k in ks:
        out[f"recall@{k}"] = float(sum(w * _p_hit_within(n, g, k) for g, w in zip(sizes, weights)))
    out["mrr"] = float(sum(w * _expected_rr(n, g) for g, w in zip(sizes, weights)))
    return out


def _p_hit_within(n: int, g: int, k: int) -> float:
    """P(at least one of g correct items in the first k of a random order of n)."""
    if k >= n - g + 1:
        return 1.0
    t = np.arange(k)
    return 1.0 - float(np.prod((n - g - t) / (n - t)))


def _expected_rr(n: int, g: int) -> float:
    """E[1 / rank of the first correct item] for g correct among n in random order."""
    r = np.arange(1, n - g + 2)  # possible first-hit ranks
    # P(first r-1 all wrong) = prod_{t<r-1} (n-g-t)/(n-t); then P(hit at r) = g/(n-r+1).
    miss = np.concatenate([[1.0], np.cumprod((n - g - np.arange(n - g)) / (n - np.arange(n - g)))])
    p = miss[: r.size] * g / (n - r + 1)
    return float((p / r).sum())
