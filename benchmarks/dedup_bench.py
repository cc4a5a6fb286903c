"""Dedup as the corpus grows: rejection rate and recall by pHash on synthetic corpora, and the
clustered near-duplicate search at scale against exact search.

    python benchmarks/dedup_bench.py [--videos 16,128,1024] [--planted 0.1] [--n 200000] [--subset 50000]
    python benchmarks/dedup_bench.py --n 1000000      # the recorded run (~15 min on 2 cores)
    python benchmarks/dedup_bench.py --quick          # a minute: 16 and 128 videos, 20k embeddings

Part 1 (printed after part 2, so that part 2's peak memory is its own), corpora of `--videos`
synthetic videos (5 shots each, one clip per shot, as the split stage cuts them): each clip's
middle keyframe is made with `sample_data/make_synthetic.py`'s shot maker, round-tripped through
libx264 (crf 20, as the generator encodes) and hashed as the embed stage does. The rule (`stages.dedup.keep_first`) runs on the pHash links alone: the tiny
profile's random embeddings are alike by construction. Per size:
  * distinct: every clip different; the rejection rate should be 0 at every size;
  * planted: a share `--planted` of the clips are copies of other clips, scaled to 192x108 and
    re-encoded at crf 32; the rate should stay at that share, and the recall is the share of
    planted (original, copy) pairs of which at most one clip is kept;
  * the anchor: the transitive closure the stage used before (#41): one clip kept per
    connected component of the same links.
Part 2, `--n` embeddings (clustered, with planted near-duplicate groups):
  * ours: `clustered_pairs` (k-means, soft-assigned clusters, per-cluster range search), then
    the rule over its links: time, and the peak resident memory of the search alone (the
    high-water mark is reset after the corpus is built; the embeddings stay resident in it);
  * recall: exact FAISS range search from every planted member over all N gives the true
    pairs; recall = share of them ours found;
  * anchor: brute-force numpy (blocked matmul, all pairs) on `--subset` vectors vs ours on
    the same subset: the ratio, numpy extrapolated to N, and whether the rule's decisions on
    ours' links equal its decisions on the exact links.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "sample_data"))

from make_synthetic import FPS, Shot  # noqa: E402

from vidcurate.schemas.readers import evenly_spaced  # noqa: E402
from vidcurate.stages.dedup import DedupConfig, agreeing, clustered_pairs, hamming, keep_first, near_clusters, phash_pairs, unique_pairs  # noqa: E402
from vidcurate.stages.embed import EmbedConfig, phash  # noqa: E402

THRESHOLD = 0.95  # cosine, part 2
SHOTS = 5
KEYFRAMES = EmbedConfig().keyframes
CHUNK = 256  # keyframes per encoded stream


def reset_peak() -> None:
    """Start the process' resident-memory high-water mark again from now (Linux)."""
    Path("/proc/self/clear_refs").write_text("5")


def peak_gib() -> float:
    """The high-water mark of resident memory since the last reset_peak."""
    status = Path("/proc/self/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1]) / 2**20


def timed(fn, *args, **kwargs):
    started = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - started


# Part 1: the rule on pHash links of synthetic corpora


def keyframes(videos: int, height: int = 144, width: int = 256) -> list[np.ndarray]:
    """The keyframes of each shot of `videos` synthetic videos (distinct seeds), KEYFRAMES a shot
    at the places the embed stage takes them, shot after shot."""
    frames = []
    for seed in range(videos):
        rng = np.random.default_rng(seed)
        for _ in range(SHOTS):
            length = int(rng.integers(2 * FPS, 4 * FPS))
            shot = Shot(rng, height, width, length, None)
            frames += [shot.frame(i).clip(0, 255).astype(np.uint8) for i in evenly_spaced(length, KEYFRAMES)]
    return frames


def reencoded(frames: list[np.ndarray], crf: int, size: tuple[int, int] | None = None) -> list[np.ndarray]:
    """Frames through libx264 at `crf` (scaled to `size` = (height, width) first) and back."""
    out_frames = []
    for start in range(0, len(frames), CHUNK):
        buf = io.BytesIO()
        with av.open(buf, "w", format="mp4") as out:
            stream = out.add_stream("libx264", rate=Fraction(FPS))
            stream.height, stream.width = size or frames[0].shape[:2]
            stream.pix_fmt, stream.options = "yuv420p", {"crf": str(crf), "preset": "medium"}
            for img in frames[start : start + CHUNK]:
                frame = av.VideoFrame.from_ndarray(img, format="rgb24")
                out.mux(stream.encode(frame.reformat(width=stream.width, height=stream.height) if size else frame))
            out.mux(stream.encode(None))
        buf.seek(0)
        with av.open(buf) as inp:
            out_frames += [f.to_ndarray(format="rgb24") for f in inp.decode(video=0)]
    return out_frames


def hashes(frames: list[np.ndarray]) -> np.ndarray:
    """As the embed stage hashes a clip's keyframes: (clips, KEYFRAMES)."""
    return np.asarray([phash(f.mean(axis=2).astype(np.uint8)) for f in frames], np.int64).reshape(-1, KEYFRAMES)


def closure_rejections(n: int, pairs: np.ndarray) -> int:
    """The anchor: one clip kept per connected component of the links (union-find, as before #41)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    return n - connected_components(graph, directed=False)[0]


def random_rank(n: int, rng: np.random.Generator) -> np.ndarray:
    """Each clip's place in the keep order under a random quality."""
    rank = np.empty(n, np.int64)
    rank[np.argsort(-rng.random(n), kind="stable")] = np.arange(n)
    return rank


def decide(codes: np.ndarray, rank: np.ndarray, max_hamming: int, frames: int) -> tuple[list, np.ndarray]:
    """The rule over pHash links (the middle keyframe within the bits, and `frames` keyframes at
    the same places): per clip None (kept) or the index of the kept clip it duplicates; and the links."""
    per_clip = codes.tolist()
    links = agreeing(phash_pairs(codes[:, KEYFRAMES // 2], max_hamming), per_clip, per_clip, max_hamming, frames)
    decided = keep_first(rank, {("near", "hamming"): links})
    return [None if d is None else d[0] for d in decided], links[0]


def corpus_rates(videos: int, planted_share: float, max_hamming: int, hamming_frames: int, seed: int = 0) -> list[dict]:
    """The rates with the middle keyframe alone (the rule before) and with `hamming_frames`
    keyframes agreeing (the stage's), on the same corpora and keep order."""
    rng = np.random.default_rng(seed)
    frames = keyframes(videos)
    originals = hashes(reencoded(frames, crf=20))
    n = len(originals)
    copies = int(round(n * planted_share / (1 - planted_share)))
    of = np.sort(rng.choice(n, size=copies, replace=False))  # a clip is copied at most once
    copied = hashes(reencoded([f for i in of for f in frames[i * KEYFRAMES : (i + 1) * KEYFRAMES]], crf=32, size=(108, 192)))
    both = np.concatenate([originals, copied])
    ranks = random_rank(n, rng), random_rank(n + copies, rng)
    return [rates(videos, originals, both, of, ranks, max_hamming, agree) for agree in (1, hamming_frames)]


def rates(videos, originals, both, of, ranks, max_hamming: int, frames: int) -> dict:
    """The rule's rejections on the distinct and the planted corpus, and the closure's."""
    n, copies = len(originals), len(both) - len(originals)
    distinct, distinct_links = decide(originals, ranks[0], max_hamming, frames)
    planted, planted_links = decide(both, ranks[1], max_hamming, frames)
    caught = sum(planted[i] is not None or planted[n + k] is not None for k, i in enumerate(of.tolist()))
    rejected = sum(d is not None for d in planted)
    middle = KEYFRAMES // 2
    return {
        "videos": videos,
        "max_hamming": max_hamming,
        "hamming_frames": frames,
        "clips": n,
        "distinct_links": len(distinct_links),
        "distinct_links_per_million_pairs": round(len(distinct_links) / (n * (n - 1) / 2) * 1e6, 2),
        "distinct_rejected": sum(d is not None for d in distinct),
        "distinct_rate": round(sum(d is not None for d in distinct) / n, 4),
        "distinct_closure_rejected": closure_rejections(n, distinct_links),
        "planted_clips": n + copies,
        "planted_copies": copies,
        "planted_share": round(copies / (n + copies), 4),
        "planted_rejected": rejected,
        "planted_rate": round(rejected / (n + copies), 4),
        "planted_recall": round(caught / max(1, copies), 4),
        "planted_closure_rejected": closure_rejections(n + copies, planted_links),
        "copy_hamming": np.bincount([hamming(originals[i, middle], c) for i, c in zip(of, both[n:, middle])], minlength=max_hamming + 2).tolist(),
    }


# Part 2: the clustered search at scale


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


def numpy_pairs(emb: np.ndarray, threshold: float, block: int = 4096):
    """The anchor: every pair, with its cosine, by blocked matrix products."""
    found, sims = [], []
    for start in range(0, len(emb), block):
        block_sims = emb[start : start + block] @ emb.T
        rows, cols = np.nonzero(block_sims >= threshold)
        keep = rows + start < cols
        found.append(np.stack([rows[keep] + start, cols[keep]], axis=1))
        sims.append(block_sims[rows[keep], cols[keep]])
    return unique_pairs((np.concatenate(found), np.concatenate(sims)))


def decisions(links, n: int, seed: int = 3) -> list:
    """The rule over cosine links, clips ranked by a random quality: None or the kept clip's index."""
    decided = keep_first(random_rank(n, np.random.default_rng(seed)), {("near", "cosine"): links})
    return [None if d is None else d[0] for d in decided]


def search_at_scale(n: int, dim: int, groups: int, subset: int) -> dict:
    emb, planted = corpus(n, dim, groups)
    corpus_peak = peak_gib()
    reset_peak()
    ours, ours_s = timed(clustered_pairs, emb, THRESHOLD, n_clusters=near_clusters(len(emb)), soft=2)
    search_peak = peak_gib()
    decided, rule_s = timed(decisions, ours, n)
    members = np.unique(np.concatenate(planted))
    truth, exact_s = timed(exact_pairs_from, emb, members, THRESHOLD)
    found = set(map(tuple, ours[0].tolist()))
    recall = sum(p in found for p in truth) / max(1, len(truth))

    sub = np.ascontiguousarray(emb[:subset])
    anchor, numpy_s = timed(numpy_pairs, sub, THRESHOLD)
    ours_sub, ours_sub_s = timed(clustered_pairs, sub, THRESHOLD, n_clusters=near_clusters(len(sub)), soft=2)
    sub_found = set(map(tuple, ours_sub[0].tolist()))
    sub_recall = sum(tuple(p) in sub_found for p in anchor[0].tolist()) / max(1, len(anchor[0]))
    numpy_full_est = numpy_s * (n / subset) ** 2
    return {
        "n": n,
        "dim": dim,
        "threshold": THRESHOLD,
        "planted_groups": len(planted),
        "ours_s": round(ours_s, 2),
        "ours_pairs": len(ours[0]),
        "rule_s": round(rule_s, 2),
        "rule_rejected": sum(d is not None for d in decided),
        "search_peak_rss_gib": round(search_peak, 2),
        "embeddings_gib": round(emb.nbytes / 2**30, 2),
        "corpus_building_peak_rss_gib": round(corpus_peak, 2),
        "true_pairs_of_planted_members": len(truth),
        "recall_vs_exact": round(recall, 4),
        "exact_search_from_planted_s": round(exact_s, 2),
        "subset": subset,
        "numpy_subset_s": round(numpy_s, 2),
        "ours_subset_s": round(ours_sub_s, 2),
        "subset_speedup": round(numpy_s / ours_sub_s, 2),
        "subset_recall_vs_numpy": round(sub_recall, 4),
        "subset_decisions_equal_exact": decisions(ours_sub, subset) == decisions(anchor, subset),
        "numpy_full_estimate_s": round(numpy_full_est, 1),
        "full_speedup_vs_numpy_estimate": round(numpy_full_est / ours_s, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", default="16,128,1024", help="corpus sizes for part 1, comma-separated (empty: part 2 only)")
    parser.add_argument("--planted", type=float, default=0.1, help="share of clips that are planted copies")
    parser.add_argument("--max-hamming", type=int, default=DedupConfig().max_hamming, help="pHash bits for part 1 (the stage's default)")
    parser.add_argument("--hamming-frames", type=int, default=DedupConfig().hamming_frames, help="keyframes that must agree (the stage's default)")
    parser.add_argument("--n", type=int, default=200_000, help="embeddings for part 2 (recorded: 1000000; 0: part 1 only)")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--groups", type=int, default=2000)
    parser.add_argument("--subset", type=int, default=50_000)
    parser.add_argument("--quick", action="store_true", help="16 and 128 videos, 20k embeddings, a 10k subset")
    args = parser.parse_args()
    if args.quick:
        args.videos, args.n, args.groups, args.subset = "16,128", 20_000, 200, 10_000

    # the search first: its peak memory is then its own, not the keyframes' of part 1
    if args.n:
        print(json.dumps(search_at_scale(args.n, args.dim, args.groups, min(args.subset, args.n)), indent=2), flush=True)
    for videos in [int(v) for v in args.videos.split(",") if v]:
        for found in corpus_rates(videos, args.planted, args.max_hamming, args.hamming_frames):
            print(json.dumps(found), flush=True)


if __name__ == "__main__":
    main()
