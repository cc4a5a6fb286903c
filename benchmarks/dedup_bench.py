"""Near-duplicate search at corpus scale: our clustered FAISS search vs exact search.

    python benchmarks/dedup_bench.py [--n 1000000] [--dim 512] [--groups 2000] [--subset 50000]

Builds N synthetic embeddings (clustered, like real CLIP embeddings) with planted
near-duplicate groups, then in one run:
  * ours: `stages.dedup.clustered_pairs` (k-means, soft-assigned clusters, per-cluster
    range search) over all N: time and peak memory;
  * recall: exact FAISS range search from every planted member over all N gives the true
    pairs at the threshold; recall = share of them ours found;
  * anchor: brute-force numpy (blocked matmul, all pairs) on a subset of `--subset` vectors,
    vs ours on the same subset; the ratio, and numpy's quadratic cost extrapolated to N.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vidcurate.stages.dedup import clustered_pairs, near_clusters, unique_pairs  # noqa: E402

THRESHOLD = 0.95


def rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def corpus(n: int, dim: int, groups: int, seed: int = 0) -> tuple[np.ndarray, list[np.ndarray]]:
    """Clustered unit vectors; `groups` planted groups of 2-4 near copies (cosine ~0.99)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(1, n // 500), dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    emb = np.empty((n, dim), np.float32)
    for start in range(0, n, 100_000):
        stop = min(n, start + 100_000)
        noise = rng.standard_normal((stop - start, dim), dtype=np.float32)
        noise *= 0.9 / np.linalg.norm(noise, axis=1, keepdims=True)
        emb[start:stop] = centres[rng.integers(0, len(centres), stop - start)] + noise
    planted, members = [], rng.permutation(n)
    cursor = 0
    for _ in range(groups):
        size = int(rng.integers(2, 5))
        group = members[cursor : cursor + size]
        cursor += size
        jitter = rng.standard_normal((size - 1, dim), dtype=np.float32)
        emb[group[1:]] = emb[group[0]] / np.linalg.norm(emb[group[0]]) + 0.1 * jitter / np.linalg.norm(jitter, axis=1, keepdims=True)
        planted.append(group)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    return emb, planted


def exact_pairs_from(emb: np.ndarray, queries: np.ndarray, threshold: float) -> set[tuple[int, int]]:
    import faiss

    index = faiss.IndexFlatIP(emb.shape[1])
    index.add(emb)
    lims, _, ids = index.range_search(np.ascontiguousarray(emb[queries]), threshold)
    pairs = set()
    for qi, q in enumerate(queries):
        for j in ids[lims[qi] : lims[qi + 1]]:
            if j != q:
                pairs.add((min(q, int(j)), max(q, int(j))))
    return pairs


def numpy_pairs(emb: np.ndarray, threshold: float, block: int = 4096) -> np.ndarray:
    """The anchor: every pair by blocked matrix products."""
    found = []
    for start in range(0, len(emb), block):
        sims = emb[start : start + block] @ emb.T
        rows, cols = np.nonzero(sims >= threshold)
        rows += start
        keep = rows < cols
        found.append(np.stack([rows[keep], cols[keep]], axis=1))
    return unique_pairs(np.concatenate(found))


def timed(fn, *args, **kwargs):
    started = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--groups", type=int, default=2000)
    parser.add_argument("--subset", type=int, default=50_000)
    args = parser.parse_args()

    emb, planted = corpus(args.n, args.dim, args.groups)
    base_rss = rss_gib()
    ours, ours_s = timed(clustered_pairs, emb, THRESHOLD, n_clusters=near_clusters(len(emb)), soft=2)
    ours_rss = rss_gib()
    members = np.unique(np.concatenate(planted))
    truth, exact_s = timed(exact_pairs_from, emb, members, THRESHOLD)
    found = {tuple(p) for p in ours.tolist()}
    recall = sum(p in found for p in truth) / max(1, len(truth))

    sub = np.ascontiguousarray(emb[: args.subset])
    anchor, numpy_s = timed(numpy_pairs, sub, THRESHOLD)
    ours_sub, ours_sub_s = timed(clustered_pairs, sub, THRESHOLD, n_clusters=near_clusters(len(sub)), soft=2)
    sub_found = {tuple(p) for p in ours_sub.tolist()}
    sub_recall = sum(tuple(p) in sub_found for p in anchor.tolist()) / max(1, len(anchor))
    numpy_full_est = numpy_s * (args.n / args.subset) ** 2

    result = {
        "n": args.n,
        "dim": args.dim,
        "threshold": THRESHOLD,
        "planted_groups": len(planted),
        "ours_s": round(ours_s, 2),
        "ours_pairs": len(ours),
        "peak_rss_gib": round(ours_rss, 2),
        "embeddings_gib": round(emb.nbytes / 2**30, 2),
        "rss_before_search_gib": round(base_rss, 2),
        "true_pairs_of_planted_members": len(truth),
        "recall_vs_exact": round(recall, 4),
        "exact_search_from_planted_s": round(exact_s, 2),
        "subset": args.subset,
        "numpy_subset_s": round(numpy_s, 2),
        "ours_subset_s": round(ours_sub_s, 2),
        "subset_speedup": round(numpy_s / ours_sub_s, 2),
        "subset_recall_vs_numpy": round(sub_recall, 4),
        "numpy_full_estimate_s": round(numpy_full_est, 1),
        "full_speedup_vs_numpy_estimate": round(numpy_full_est / ours_s, 1),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
