"""Dedup stage: exact, near and semantic duplicates, each rejection naming a kept clip it
directly duplicates.

Links between two clips (the figure that decided each, strongest kind first):
- exact: identical clip bytes (extraction is deterministic, so same content -> same sha256);
- near: pHash of the middle keyframe within `max_hamming` bits (Hamming distance), with at
  least `hamming_frames` of the keyframes at the same places within it too; or embedding
  cosine >= `near_cosine`;
- semantic (SemDeDup): k-means clusters of the embeddings, then cosine >= 1 - eps inside a cluster.
The rule: clips are taken best `quality` first (ties: the smaller clip id); a clip is rejected
only when it is linked to a clip already kept, and its reason names that clip, the kind and the
figure (`duplicate_of=<id> (near, cosine 0.9812)`). Of several kept clips it links to, the
strongest link wins (kind, then figure, then the better-ranked clip). Nothing is transitive: a
clip linked only to rejected clips is kept, so chains (A~B, B~C) never reject C for A. Clips a
persisted history of shipped clips already holds (earlier runs, earlier partitions) count as
kept before every clip of this run.

Cosine links use exact FAISS range search up to `flat_max` vectors; beyond, vectors are
clustered and each cluster searched alone (soft-assigned to its 2 nearest centroids so pairs
across a boundary are still found) - on Ray, one task per cluster group, so no machine
holds more than its clusters. Every search returns its figures with its pairs; the rule runs
once, over all of them, in this process.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field

from vidcurate.schemas.tables import DEDUPED, KEPT, REJECTED
from vidcurate.stages.contract import Stage, SubRun, map_here
from vidcurate.stages.media import link_or_copy
from vidcurate.stages.settings import StrictModel


class DedupConfig(StrictModel):
    near_cosine: float = Field(0.97, gt=0, le=1, description="embedding cosine at or above which clips are near-duplicates")
    max_hamming: int | None = Field(6, ge=0, le=32, description="pHash bits that may differ for a near-duplicate; null: off")
    hamming_frames: int = Field(
        2, ge=1, le=64,
        description="keyframes, at the same places of both clips (embed's), whose pHashes must each lie within max_hamming bits: one frame alone links unrelated pictures that agree by chance",
    )  # fmt: skip
    semantic_eps: float | None = Field(0.05, gt=0, lt=1, description="SemDeDup: same cluster and cosine >= 1 - eps; null: off")
    n_clusters: int | None = Field(None, ge=1, description="SemDeDup k-means clusters; None: sqrt(clips)")
    flat_max: int = Field(200_000, ge=2, description="exact search up to this many clips; beyond, clustered search on Ray")
    history: str | None = Field(None, description="folder of shipped clips shared by scheduled runs; null: this run only")


STAGE = "dedup"
KINDS = ("exact", "near", "semantic", "shipped")
# What a link's figure measures, strongest link first: same bytes (no figure), then pHash Hamming
# bits (pixel evidence, lower is closer), then embedding cosine (higher is closer).
MEASURES = ("bytes", "hamming", "cosine")
HISTORY_SCHEMA = pa.schema(
    [
        pa.field("clip_id", pa.string()),
        pa.field("run_id", pa.string()),
        pa.field("clip_sha256", pa.string()),
        pa.field("phash", pa.int64()),
        pa.field("phashes", pa.list_(pa.int64())),
        pa.field("image_emb", pa.binary()),
    ]
)
Links = tuple[np.ndarray, np.ndarray]  # pairs (m, 2) i < j, and each pair's figure (m,)


def _faiss():
    import faiss

    return faiss


GPU_K = 256  # neighbours per query from GPU k-NN; a row that fills them is finished by CPU range search
QUERY_BLOCK = 65_536  # queries per GPU k-NN call (bounds the k-NN result arrays to ~200 MB)
ASSIGN_BLOCK = 50_000  # vectors per centroid-assignment task


def no_links() -> Links:
    return np.empty((0, 2), np.int64), np.empty(0, np.float32)


def joined(found: list[Links]) -> Links:
    found = [f for f in found if len(f[0])]
    if not found:
        return no_links()
    return np.concatenate([p for p, _ in found]), np.concatenate([f for _, f in found])


def flat_pairs(emb: np.ndarray, threshold: float) -> Links:
    """All pairs i < j with cosine >= threshold, with their cosines (`flat_links` of the set with itself)."""
    return upper(flat_links(emb, emb, threshold))


def flat_links(queries: np.ndarray, reference: np.ndarray, threshold: float) -> Links:
    """Every (query i, reference j) with cosine >= threshold, with its cosine: exact FAISS range
    search over `reference`, on every GPU when faiss has GPUs (FAISS has no GPU range search, so
    k-NN there plus CPU range search for the queries whose k-th neighbour still passes)."""
    faiss = _faiss()
    index = faiss.IndexFlatIP(reference.shape[1])
    index.add(reference)
    if faiss.get_num_gpus() == 0:
        return _links_from_ranges(*index.range_search(queries, threshold))
    options = faiss.GpuMultipleClonerOptions()
    options.shard, options.useFloat16 = True, True
    return knn_range_links(queries, threshold, faiss.index_cpu_to_all_gpus(index, options), index, GPU_K)


def knn_range_links(queries: np.ndarray, threshold: float, knn_index, exact_index, k: int) -> Links:
    """flat_links through k-NN (`knn_index`, e.g. on GPUs) and exact range search (`exact_index`)
    for the queries whose k nearest all pass the threshold, block by block of queries."""
    from faiss.contrib.exhaustive_search import range_search_gpu

    found = []
    for start in range(0, len(queries), QUERY_BLOCK):
        block = np.ascontiguousarray(queries[start : start + QUERY_BLOCK])
        found.append(_links_from_ranges(*range_search_gpu(block, threshold, knn_index, exact_index, gpu_k=k), offset=start))
    return joined(found)


def _links_from_ranges(lims: np.ndarray, figures: np.ndarray, ids: np.ndarray, offset: int = 0) -> Links:
    """Range-search results (query i's hits are ids[lims[i]:lims[i+1]], with their figures) ->
    (query, hit) pairs and their figures."""
    rows = np.repeat(np.arange(len(lims) - 1) + offset, np.diff(lims).astype(np.int64))
    return np.stack([rows, ids], axis=1).astype(np.int64), np.asarray(figures)


def upper(links: Links) -> Links:
    """Of a set's links with itself, each pair once, as i < j (and no link of a row to itself)."""
    pairs, figures = links
    keep = pairs[:, 0] < pairs[:, 1]
    return pairs[keep], figures[keep]


def train_centroids(emb: np.ndarray, n_clusters: int, seed: int = 1) -> np.ndarray:
    """Spherical k-means (FAISS; on the GPU when faiss has one) on a bounded sample."""
    faiss = _faiss()
    rng = np.random.default_rng(seed)
    sample = emb[rng.choice(len(emb), size=min(len(emb), n_clusters * 40), replace=False)]
    kmeans = faiss.Kmeans(emb.shape[1], n_clusters, niter=10, seed=seed, spherical=True, gpu=faiss.get_num_gpus() > 0)
    kmeans.train(np.ascontiguousarray(sample))
    return kmeans.centroids


def assign(emb: np.ndarray, centroids: np.ndarray, soft: int) -> np.ndarray:
    """Each vector's `soft` nearest centroids, (n, soft)."""
    faiss = _faiss()
    index = faiss.IndexFlatIP(centroids.shape[1])
    index.add(centroids)
    return index.search(emb, soft)[1]


def cluster_pairs(members: np.ndarray, emb: np.ndarray, threshold: float) -> Links:
    """Pairs inside one cluster, as global indices, with their cosines."""
    local, sims = flat_pairs(np.ascontiguousarray(emb[members]), threshold)
    return members[local].reshape(-1, 2), sims


def near_clusters(n: int) -> int:
    """Clusters for the near-duplicate search: sqrt(n) keeps both k-means and the per-cluster
    all-pairs work near O(n^1.5) (about 2n^1.5 dot products with soft assignment)."""
    return max(1, int(np.sqrt(n)))


def assign_block(rows: np.ndarray, emb: np.ndarray, centroids: np.ndarray, soft: int) -> np.ndarray:
    """`assign` for the vectors at `rows`."""
    return assign(np.ascontiguousarray(emb[rows]), centroids, soft)


def cluster_groups(emb: np.ndarray, n_clusters: int, soft: int, map_each=map_here) -> list[np.ndarray]:
    """The rows of each k-means cluster of more than one (each row in its `soft` nearest),
    increasing; vectors are assigned to centroids in blocks through `map_each`."""
    centroids = train_centroids(emb, n_clusters)
    blocks = [np.arange(i, min(i + ASSIGN_BLOCK, len(emb))) for i in range(0, len(emb), ASSIGN_BLOCK)]
    labels = np.concatenate(map_each(assign_block, blocks, emb=emb, centroids=centroids, soft=soft))
    order = np.argsort(labels.ravel(), kind="stable")
    flat = labels.ravel()[order]
    owners = order // soft  # increasing within each cluster: the stable sort keeps index order
    bounds = np.flatnonzero(np.diff(flat)) + 1
    return [group for group in np.split(owners, bounds) if len(group) > 1]


def clustered_pairs(emb: np.ndarray, threshold: float, n_clusters: int, soft: int, map_each=map_here) -> Links:
    """Pairs within clusters, with their cosines (`soft` = 1: SemDeDup; 2: near-dup search at
    scale). Assigning vectors to centroids (in blocks) and searching each cluster go through
    `map_each`: this process by default, the executor's parallel map at scale (the vectors
    travel once)."""
    groups = cluster_groups(emb, n_clusters, soft, map_each)
    return unique_pairs(joined(map_each(cluster_pairs, groups, emb=emb, threshold=threshold)))


def unique_pairs(links: Links) -> Links:
    """Each pair once (soft assignment finds a pair in every cluster both ends share)."""
    pairs, figures = links
    if not len(pairs):
        return no_links()
    pairs, first = np.unique(np.sort(pairs, axis=1), axis=0, return_index=True)
    return pairs, figures[first]


def _codes(hashes) -> np.ndarray:
    """64-bit hashes as the 8-byte codes FAISS binary indexes take."""
    return np.asarray(hashes, np.int64).astype(">i8").view(np.uint8).reshape(-1, 8)


def phash_pairs(hashes: np.ndarray, max_hamming: int) -> Links:
    """Pairs of 64-bit hashes within `max_hamming` bits, with their Hamming distances."""
    return upper(phash_links(hashes, hashes, max_hamming))


def phash_links(queries: np.ndarray, reference: np.ndarray, max_hamming: int) -> Links:
    """Every (query i, reference j) of 64-bit hashes within `max_hamming` bits, with its Hamming
    distance (FAISS binary range search over `reference`)."""
    faiss = _faiss()
    index = faiss.IndexBinaryFlat(64)
    index.add(_codes(reference))
    return _links_from_ranges(*index.range_search(_codes(queries), max_hamming + 1))  # strict: distance < radius


def hamming(a: int, b: int) -> int:
    """Bits that differ between two 64-bit hashes stored as signed integers."""
    return bin((int(a) ^ int(b)) & 0xFFFFFFFFFFFFFFFF).count("1")


def frames_agree(a: list[int] | None, b: list[int] | None, max_hamming: int, frames: int) -> bool:
    """Whether at least `frames` keyframes at the same places of two clips (all where they have
    fewer) lie within `max_hamming` bits; true where either has no frame hashes (a history row
    from before they were kept, or other keyframe counts): then the middle keyframe decides."""
    if not a or not b or len(a) != len(b):
        return True
    close = sum(hamming(x, y) <= max_hamming for x, y in zip(a, b))
    return close >= min(frames, len(a))


def agreeing(links: Links, queries: list, reference: list, max_hamming: int, frames: int) -> Links:
    """The pHash links (query i, reference j) whose other keyframes agree too (`frames_agree`)."""
    pairs, figures = links
    keep = np.asarray([frames_agree(queries[i], reference[j], max_hamming, frames) for i, j in pairs.tolist()], bool).reshape(-1)
    return pairs[keep], figures[keep]


def rank_order(rows: list[dict]) -> np.ndarray:
    """Each row's place in the keep order: best `quality` first, then the smaller clip id."""
    order = sorted(range(len(rows)), key=lambda i: (-(rows[i].get("quality") or 0.0), rows[i]["clip_id"]))
    rank = np.empty(len(rows), np.int64)
    rank[order] = np.arange(len(rows))
    return rank


def exact_links(keys: list[str | None], rank: np.ndarray) -> Links:
    """Each clip's link to the best-ranked clip with the same bytes (no figure: NaN)."""
    best: dict[str, int] = {}
    for i, key in enumerate(keys):
        if key is not None and (key not in best or rank[i] < rank[best[key]]):
            best[key] = i
    pairs = [(best[key], i) for i, key in enumerate(keys) if key is not None and best[key] != i]
    return np.asarray(pairs, np.int64).reshape(-1, 2), np.full(len(pairs), np.nan, np.float32)


def embeddings(rows: list[dict]) -> np.ndarray:
    emb = np.stack([np.frombuffer(r["image_emb"], dtype=np.float16) for r in rows]).astype(np.float32)
    return emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)


def find_links(rows: list[dict], cfg, rank: np.ndarray, map_each=map_here) -> dict[tuple[str, str], Links]:
    """Links by (kind, measure) among `rows` (clip_sha256, phash, image_emb), each with its
    figures; `map_each` runs the clustered searches' parts (`clustered_pairs`)."""
    links = {("exact", "bytes"): exact_links([r.get("clip_sha256") for r in rows], rank)}
    if len(rows) < 2:
        return links
    if cfg.max_hamming is not None:
        frames = [r.get("phashes") for r in rows]
        middle = phash_pairs(np.asarray([r["phash"] for r in rows], np.int64), cfg.max_hamming)
        links["near", "hamming"] = agreeing(middle, frames, frames, cfg.max_hamming, cfg.hamming_frames)
    emb = embeddings(rows)
    if len(emb) <= cfg.flat_max:
        links["near", "cosine"] = flat_pairs(emb, cfg.near_cosine)
    else:
        links["near", "cosine"] = clustered_pairs(emb, cfg.near_cosine, n_clusters=near_clusters(len(emb)), soft=2, map_each=map_each)
    if cfg.semantic_eps is not None:
        k = cfg.n_clusters or max(1, int(np.sqrt(len(rows))))
        links["semantic", "cosine"] = clustered_pairs(emb, 1 - cfg.semantic_eps, n_clusters=min(k, len(rows)), soft=1, map_each=map_each)
    return links


def strength(kind: str, measure: str) -> int:
    """0 for the strongest link (exact bytes), then near by pHash, near by cosine, semantic."""
    return KINDS.index(kind) * len(MEASURES) + MEASURES.index(measure)


def keep_first(rank: np.ndarray, links: dict[tuple[str, str], Links]) -> list[tuple | None]:
    """The rule, per row: None (kept), or (index of the kept row it duplicates, kind, measure,
    figure). Rows are decided in `rank` order; a row is rejected for its strongest link to a row
    already kept, and a link to a rejected row rejects nothing."""
    names = sorted(links, key=lambda km: strength(*km))
    lo, hi, signal, closeness, figure = [], [], [], [], []
    for s, name in enumerate(names):
        pairs, figures = links[name]
        a, b = pairs[:, 0], pairs[:, 1]
        later = rank[a] > rank[b]
        lo.append(np.where(later, a, b))
        hi.append(np.where(later, b, a))
        signal.append(np.full(len(pairs), s))
        closeness.append(-figures if name[1] == "cosine" else np.nan_to_num(figures))
        figure.append(figures)
    lo, hi, signal, closeness, figure = map(np.concatenate, (lo, hi, signal, closeness, figure))
    order = np.lexsort((rank[hi], closeness, signal, rank[lo]))
    kept = [True] * len(rank)
    decided: list[tuple | None] = [None] * len(rank)
    for a, b, s, f in zip(lo[order].tolist(), hi[order].tolist(), signal[order].tolist(), figure[order].tolist()):
        if kept[a] and kept[b]:  # b ranks before a, so b's own fate is already final
            kept[a] = False
            decided[a] = (b, *names[s], None if np.isnan(f) else f)
    return decided


def run_id(run_dir: str | Path) -> str:
    return hashlib.sha256(str(Path(run_dir).resolve()).encode()).hexdigest()[:16]


def load_history(path: str | None, exclude_run: str) -> list[dict]:
    """Clips shipped by earlier runs (not this one), from `<history>/*.parquet`."""
    if not path or not Path(path).is_dir():
        return []
    parts = sorted(Path(path).glob("*.parquet"))
    rows = [r for p in parts for r in pq.read_table(p, schema=HISTORY_SCHEMA).to_pylist()]
    return [r for r in rows if r["run_id"] != exclude_run]


def against_history(rows: list[dict], history: list[dict], cfg) -> dict[int, tuple]:
    """Index of each new row that duplicates a shipped clip -> (that clip's id, measure, figure).
    The same tests as within a run (equal bytes, close pHash, cosine at the near or semantic
    threshold), and the strongest link wins: the shipped clips are all kept already."""
    if not history or not rows:
        return {}
    faiss = _faiss()
    found: dict[int, tuple] = {}
    sha = {h["clip_sha256"]: h["clip_id"] for h in history}
    for i, r in enumerate(rows):
        if r.get("clip_sha256") in sha:
            found[i] = (sha[r["clip_sha256"]], "bytes", None)
    if cfg.max_hamming is not None:
        middle = phash_links(np.asarray([r["phash"] for r in rows], np.int64), np.asarray([h["phash"] for h in history], np.int64), cfg.max_hamming)
        pairs, bits = agreeing(middle, [r.get("phashes") for r in rows], [h.get("phashes") for h in history], cfg.max_hamming, cfg.hamming_frames)
        for k in np.lexsort((pairs[:, 1], bits)).tolist():  # the closest shipped clip first
            found.setdefault(int(pairs[k, 0]), (history[int(pairs[k, 1])]["clip_id"], "hamming", float(bits[k])))
    threshold = min(cfg.near_cosine, 1 - cfg.semantic_eps) if cfg.semantic_eps is not None else cfg.near_cosine
    index = faiss.IndexFlatIP(len(history[0]["image_emb"]) // 2)
    index.add(embeddings(history))
    sims, ids = index.search(embeddings(rows), 1)
    for i, (s, j) in enumerate(zip(sims[:, 0].tolist(), ids[:, 0].tolist())):
        if s >= threshold:
            found.setdefault(i, (history[j]["clip_id"], "cosine", s))
    return found


def figure_text(measure: str, figure: float | None) -> str:
    if measure == "bytes":
        return "same bytes"
    return f"hamming {int(figure)}" if measure == "hamming" else f"cosine {figure:.4f}"


def rejected(row: dict, of: str, kind: str, measure: str, figure: float | None) -> dict:
    return {"clip_id": row["clip_id"], "video_id": row["video_id"], "stage": STAGE, "status": REJECTED,
            "reason": f"dedup: duplicate_of={of} ({kind}, {figure_text(measure, figure)})",
            "duplicate_of": of, "dup_kind": kind, "dup_measure": measure, "dup_figure": None if figure is None else round(figure, 6)}


def dedup(rows: list[dict], cfg, history: list[dict], map_each=map_here) -> list[dict]:
    """DEDUPED rows for clips (merged stage rows), in input order: first against the shipped
    history, then the rule over the rest."""
    shipped = against_history(rows, history, cfg)
    fresh = [r for i, r in enumerate(rows) if i not in shipped]
    rank = rank_order(fresh)
    decided = dict(zip((r["clip_id"] for r in fresh), keep_first(rank, find_links(fresh, cfg, rank, map_each))))
    out = []
    for i, r in enumerate(rows):
        if i in shipped:
            out.append(rejected(r, shipped[i][0], "shipped", *shipped[i][1:]))
        elif (match := decided[r["clip_id"]]) is not None:
            out.append(rejected(r, fresh[match[0]]["clip_id"], *match[1:]))
        else:
            out.append({"clip_id": r["clip_id"], "video_id": r["video_id"], "stage": STAGE, "status": KEPT, "reason": None})
    return out


def append_history(path: str, run: str, shipped: list[dict]) -> None:
    """Record this run's shipped clips (one file per run: re-running rewrites, never doubles)."""
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{"clip_id": r["clip_id"], "run_id": run, "clip_sha256": r["clip_sha256"], "phash": r["phash"], "phashes": r.get("phashes"), "image_emb": r["image_emb"]} for r in shipped]
    tmp = folder / f".{run}.parquet.tmp"
    pq.write_table(pa.Table.from_pylist(rows, schema=HISTORY_SCHEMA), tmp)
    tmp.replace(folder / f"shipped-{run}.parquet")


def dedup_run(rows: list[dict], ctx) -> tuple[list[dict], dict]:
    """The stage over every clip at once: against the shipped history (other runs'), then within
    the run; past `flat_max` clips the clustered searches run on the executor's parallel map."""
    cfg = ctx.config
    history = load_history(cfg.history, run_id(ctx.run.run_dir))
    decided = dedup(rows, cfg, history, ctx.executor.map if len(rows) > cfg.flat_max else map_here)
    return decided, {"history_clips": len(history)}


class ShippedHistory:
    """What dedup remembers across runs (`dedup.history`): every clip a run shipped, so later runs
    reject a clip an earlier one shipped; a partition also checks what earlier partitions shipped."""

    def record(self, cfg: DedupConfig, run_dir: Path, shipped: list[dict]) -> None:
        if cfg.history:
            append_history(cfg.history, run_id(run_dir), shipped)

    def gather(self, cfg: DedupConfig, parent: DedupConfig, sub: SubRun, earlier: list[SubRun]) -> None:
        """The partition's history folder: the parent's history (less this corpus run's own entry)
        and the clips each earlier partition shipped, linked (copied where links cannot be made)."""
        folder = Path(cfg.history)
        folder.mkdir(parents=True, exist_ok=True)
        own = f"shipped-{run_id(sub.run_dir)}.parquet"
        for stale in folder.glob("shipped-*.parquet"):
            if stale.name != own:
                stale.unlink()
        sources = []
        if parent.history and Path(parent.history).is_dir():
            corpus_run = f"shipped-{run_id(sub.root.parent)}.parquet"
            sources += [p for p in Path(parent.history).glob("shipped-*.parquet") if p.name != corpus_run]
        for other in earlier:
            shipped = _partition_history(other) / f"shipped-{run_id(other.run_dir)}.parquet"
            if shipped.is_file():
                sources.append(shipped)
        for source in sources:
            link_or_copy(source, folder / source.name)


def _partition_history(sub: SubRun) -> Path:
    return sub.root / "history" / sub.name


def sub_config(cfg: DedupConfig, sub: SubRun) -> DedupConfig:
    """A partition checks its own history folder (gathered before it runs); an increment the shared
    history, by default `<corpus root>/shipped`."""
    if sub.kind == "partition":
        return cfg.model_copy(update={"history": str(_partition_history(sub))})
    return cfg.model_copy(update={"history": cfg.history or str(sub.root / "shipped")})


SPEC = Stage(
    name=STAGE,
    config_model=DedupConfig,
    table=DEDUPED,
    needs=("embed",),
    reasons={"dedup": (REJECTED, "`duplicate_of=<clip_id> (<kind>, <figure>)`, e.g. `(near, cosine 0.9812)`: a kept clip (or one an earlier run or partition shipped) it directly duplicates; kind exact, near, semantic or shipped; figure `same bytes`, `hamming <bits>` or `cosine <value>`")},
    # random embeddings are all alike (cosine ~0.97): only near-identical clips count as duplicates
    tiny_defaults={"near_cosine": 0.9995, "semantic_eps": 0.0002},
    whole=dedup_run,
    redo_unit=None,
    memory=ShippedHistory(),
    sub_config=sub_config,
)
