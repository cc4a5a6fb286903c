"""Dedup: planted exact / near / semantic duplicates are found, the best copy is kept, the Ray
search equals the in-process one, and a later run re-admits nothing already shipped."""

from __future__ import annotations

import numpy as np
import pytest

from vidcurate.pipelines.executors import map_on_ray_tasks
from vidcurate.stages import dedup
from vidcurate.stages.dedup import DedupConfig
from vidcurate.stages.embed import phash

D = 64


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _row(i: int, emb: np.ndarray, quality: float, sha: str | None = None, hash_: int | None = None) -> dict:
    return {
        "clip_id": f"c{i:04d}",
        "video_id": f"v{i % 7}",
        "clip_sha256": sha or f"sha{i}",
        "phash": hash_ if hash_ is not None else int(np.random.default_rng(i).integers(-(2**63), 2**63 - 1)),
        "image_emb": emb.astype(np.float16).tobytes(),
        "quality": quality,
    }


@pytest.fixture(scope="module")
def planted():
    """400 unrelated clips plus: an exact copy of c0000, a near copy of c0001 (cos ~0.995),
    a semantic neighbour of c0002 (cos ~0.96); the better copy is noted for each."""
    rng = np.random.default_rng(0)
    base = _unit(rng.normal(size=(400, D)))
    rows = [_row(i, base[i], quality=rng.uniform(0.2, 0.8)) for i in range(400)]
    near = _unit(base[1] + 0.07 * _unit(rng.normal(size=D)))
    semantic = _unit(base[2] + 0.3 * _unit(rng.normal(size=D)))
    rows.append({**_row(400, base[0], quality=0.1), "clip_sha256": rows[0]["clip_sha256"]})  # worse exact copy
    rows.append(_row(401, near, quality=0.95))  # better near copy: it should win
    rows.append(_row(402, semantic, quality=0.05))
    return rows


CFG = DedupConfig(near_cosine=0.98, max_hamming=None, semantic_eps=0.06, n_clusters=8)


def _decided(rows, cfg=CFG, history=()) -> dict:
    return {r["clip_id"]: r for r in dedup.dedup(rows, cfg, list(history))}


def test_planted_duplicates_are_found_and_the_best_copy_kept(planted):
    emb = dedup.embeddings(planted)
    assert 1 - CFG.semantic_eps <= emb[2] @ emb[402] < CFG.near_cosine  # the semantic plant: between thresholds
    out = _decided(planted)
    assert out["c0400"] == {**out["c0400"], "status": "rejected", "duplicate_of": "c0000", "dup_kind": "exact"}
    assert out["c0001"]["status"] == "rejected" and out["c0001"]["duplicate_of"] == "c0401"
    assert out["c0001"]["dup_kind"] == "near" and out["c0401"]["status"] == "kept"
    assert out["c0402"]["status"] == "rejected" and out["c0402"]["duplicate_of"] == "c0002"
    assert out["c0402"]["dup_kind"] == "semantic"
    assert sum(r["status"] == "rejected" for r in out.values()) == 3  # nothing unrelated is touched


def test_near_duplicate_frames_share_a_perceptual_hash():
    rng = np.random.default_rng(1)
    frame = (np.kron(rng.integers(0, 256, (12, 16)), np.ones((8, 8)))).astype(np.uint8)
    noisy = np.clip(frame + rng.normal(0, 6, frame.shape), 0, 255).astype(np.uint8)
    other = (np.kron(rng.integers(0, 256, (12, 16)), np.ones((8, 8)))).astype(np.uint8)
    hashes = np.asarray([phash(frame), phash(noisy), phash(other)], np.int64)
    assert dedup.phash_pairs(hashes, max_hamming=6).tolist() == [[0, 1]]


def test_clustered_search_on_ray_equals_in_process(planted, ray_local, monkeypatch):
    """Blocks of 50 vectors: the assignment is spread over several Ray tasks too."""
    monkeypatch.setattr(dedup, "ASSIGN_BLOCK", 50)
    emb = dedup.embeddings(planted)
    local = dedup.clustered_pairs(emb, 0.9, n_clusters=8, soft=2)
    on_ray = dedup.clustered_pairs(emb, 0.9, n_clusters=8, soft=2, map_each=map_on_ray_tasks)
    assert len(local) >= 2
    assert on_ray.tolist() == local.tolist()
    exact = dedup.flat_pairs(emb, 0.9)
    assert {tuple(p) for p in exact.tolist()} <= {tuple(p) for p in local.tolist()}  # soft assignment finds them all


def test_a_later_run_never_readmits_a_shipped_clip(planted, tmp_path):
    history = tmp_path / "history"
    first = _decided(planted)
    shipped = [r for r in planted if first[r["clip_id"]]["status"] == "kept"]
    dedup.append_history(str(history), "run-a", shipped)
    dedup.append_history(str(history), "run-a", shipped)  # re-running run A rewrites, never doubles
    assert len(dedup.load_history(str(history), exclude_run="run-b")) == len(shipped)
    assert dedup.load_history(str(history), exclude_run="run-a") == []
    again = _decided(planted, history=dedup.load_history(str(history), exclude_run="run-b"))
    assert all(r["status"] == "rejected" for r in again.values())  # re-running adds nothing
    assert again["c0005"]["dup_kind"] == "shipped" and again["c0005"]["duplicate_of"] == "c0005"
    fresh = _row(999, _unit(np.random.default_rng(9).normal(size=D)), 0.5)
    assert _decided([*planted[:3], fresh], history=dedup.load_history(str(history), "run-b"))["c0999"]["status"] == "kept"


@pytest.mark.parametrize("k", [3, 64])
def test_knn_range_search_used_on_gpus_equals_exact_range_search(k, monkeypatch):
    """The GPU path (k-NN, then exact range search for rows whose k nearest all pass) run with CPU
    indexes: groups of 6 copies overflow k=3, so both halves of the emulation are exercised."""
    import faiss

    rng = np.random.default_rng(1)
    centres = _unit(rng.normal(size=(50, D)))
    emb = _unit(np.concatenate([centres, *(centres[:20] + 0.02 * rng.normal(size=(20, D)) for _ in range(5))]))
    emb = np.ascontiguousarray(emb.astype(np.float32))
    index = faiss.IndexFlatIP(D)
    index.add(emb)
    monkeypatch.setattr(dedup, "QUERY_BLOCK", 37)  # several query blocks, offsets included
    emulated = dedup.knn_range_pairs(emb, 0.95, index, index, k)
    exact = dedup.flat_pairs(emb, 0.95)
    assert len(exact) == 20 * 15  # every pair inside each group of 6
    assert set(map(tuple, emulated.tolist())) == set(map(tuple, exact.tolist()))
