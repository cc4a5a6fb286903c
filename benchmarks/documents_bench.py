"""The in-context documents' neighbour search at scale against exact search (the anchor).

    python benchmarks/documents_bench.py [--sizes 20000,50000] [--depth 17] [--dim 512]

The shard stage finds each shipped clip's nearest clips (`stages.documents.nearest`): one exact
FAISS inner-product search up to `EXACT_MAX` clips, and past it each clip among the clips of its 2
nearest k-means clusters, as dedup searches at scale. Embeddings here are seeded, clustered
(500 centres, noise 0.7, unit length: CLIP image embeddings of a corpus cluster by content);
depth 17 is what `ground.in_context_k` 2 searches. Printed per size: both times, the ratio and
the clustered search's recall of the exact neighbours.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from vidcurate.stages.documents import nearest


def corpus(n: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(500, dim))
    emb = (centres[rng.integers(0, len(centres), n)] + 0.7 * rng.normal(size=(n, dim))).astype(np.float32)
    return emb / np.linalg.norm(emb, axis=1, keepdims=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="20000,50000")
    parser.add_argument("--depth", type=int, default=17)
    parser.add_argument("--dim", type=int, default=512)
    args = parser.parse_args()
    print("| clips | exact (s) | clustered (s) | ratio | recall |")
    print("|---|---|---|---|---|")
    for n in map(int, args.sizes.split(",")):
        emb = corpus(n, args.dim)
        start = time.perf_counter()
        _, exact = nearest(emb, args.depth, exact_max=n)
        exact_s = time.perf_counter() - start
        start = time.perf_counter()
        _, clustered = nearest(emb, args.depth, exact_max=0)
        clustered_s = time.perf_counter() - start
        recall = np.mean([len(set(a) & set(b)) / args.depth for a, b in zip(exact.tolist(), clustered.tolist())])
        print(f"| {n} | {exact_s:.1f} | {clustered_s:.1f} | {exact_s / clustered_s:.2f} | {recall:.4f} |")


if __name__ == "__main__":
    main()
