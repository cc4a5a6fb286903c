"""Dedup: planted exact / near / semantic duplicates are found and the best copy kept; a chain
(A~B, B~C, A far from C) never rejects C for A, in process, on the clustered Ray path and
against the shipped history; every rejection of a real run names a kept clip it is directly
similar to, by the embed table's own embeddings and pHashes."""

from __future__ import annotations

import shutil

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


def _decided(rows, cfg=CFG, history=(), map_each=dedup.map_here) -> dict:
    return {r["clip_id"]: r for r in dedup.dedup(rows, cfg, list(history), map_each)}


def _rejected(out: dict) -> dict[str, str]:
    return {c: r["duplicate_of"] for c, r in out.items() if r["status"] == "rejected"}


def test_planted_duplicates_are_found_and_the_best_copy_kept(planted):
    emb = dedup.embeddings(planted)
    assert 1 - CFG.semantic_eps <= emb[2] @ emb[402] < CFG.near_cosine  # the semantic plant: between thresholds
    out = _decided(planted)
    assert out["c0400"] == {**out["c0400"], "status": "rejected", "duplicate_of": "c0000", "dup_kind": "exact", "dup_measure": "bytes"}
    assert out["c0400"]["reason"] == "dedup: duplicate_of=c0000 (exact, same bytes)" and out["c0400"]["dup_figure"] is None
    cos = float(emb[1] @ emb[401])
    assert out["c0001"] == {**out["c0001"], "status": "rejected", "duplicate_of": "c0401", "dup_kind": "near", "dup_measure": "cosine"}
    assert out["c0001"]["dup_figure"] == pytest.approx(cos, abs=1e-5) and out["c0401"]["status"] == "kept"
    assert out["c0001"]["reason"] == f"dedup: duplicate_of=c0401 (near, cosine {cos:.4f})"
    assert out["c0402"]["status"] == "rejected" and out["c0402"]["duplicate_of"] == "c0002"
    assert out["c0402"]["dup_kind"] == "semantic" and out["c0402"]["dup_figure"] == pytest.approx(float(emb[2] @ emb[402]), abs=1e-5)
    assert len(_rejected(out)) == 3  # nothing unrelated is touched


def _bits(a, b) -> int:
    """Hamming distance of two 64-bit hashes stored as signed integers."""
    return bin((int(a) ^ int(b)) & (2**64 - 1)).count("1")


def test_near_duplicate_frames_share_a_perceptual_hash():
    rng = np.random.default_rng(1)
    frame = (np.kron(rng.integers(0, 256, (12, 16)), np.ones((8, 8)))).astype(np.uint8)
    noisy = np.clip(frame + rng.normal(0, 6, frame.shape), 0, 255).astype(np.uint8)
    other = (np.kron(rng.integers(0, 256, (12, 16)), np.ones((8, 8)))).astype(np.uint8)
    hashes = np.asarray([phash(frame), phash(noisy), phash(other)], np.int64)
    pairs, bits = dedup.phash_pairs(hashes, max_hamming=6)
    assert pairs.tolist() == [[0, 1]]
    assert bits.tolist() == [_bits(hashes[0], hashes[1])]


STEP = np.radians(11)  # consecutive links: cosine 0.982 >= 0.98; two steps apart: 0.927, below every threshold


def _chain(qualities: list[float], first: int = 500) -> list[dict]:
    """Clips on a great circle, 11 degrees apart: each links only to its neighbours, by cosine
    and by pHash (4 new bits flipped per step, so two steps apart differ in 8 > 6 bits)."""
    rng = np.random.default_rng(5)
    u, w = np.linalg.qr(rng.normal(size=(D, 2)))[0].T
    hashes = [0x0F0F_3C3C_5A5A_1234]
    for k in range(1, len(qualities)):
        hashes.append(hashes[-1] ^ (0xF << (4 * k)))
    return [_row(first + k, np.cos(k * STEP) * u + np.sin(k * STEP) * w, q, hash_=hashes[k] - 2**63) for k, q in enumerate(qualities)]


CHAIN_CASES = [
    ([0.9, 0.8, 0.7], {"c0501": "c0500"}),  # A kept, B rejected for A, C kept: its only link is rejected
    ([0.8, 0.9, 0.7], {"c0500": "c0501", "c0502": "c0501"}),  # B best: both ends duplicate it directly
    ([0.9, 0.8, 0.7, 0.6, 0.5], {"c0501": "c0500", "c0503": "c0502"}),  # a long chain alternates
]


@pytest.mark.parametrize("signals", ["cosine", "hamming"])
@pytest.mark.parametrize(("qualities", "expected"), CHAIN_CASES)
def test_a_chain_rejects_exactly_the_clips_directly_linked_to_a_kept_clip(planted, qualities, expected, signals):
    chain = _chain(qualities)
    emb = dedup.embeddings(chain)
    assert emb[0] @ emb[1] >= 0.98 and emb[1] @ emb[2] >= 0.98 and emb[0] @ emb[2] < 0.93
    if signals == "cosine":
        cfg = DedupConfig(near_cosine=0.98, max_hamming=None, semantic_eps=0.06)
    else:  # embeddings of the unrelated rows, pHashes of the chain
        cfg = DedupConfig(near_cosine=0.999, max_hamming=6, semantic_eps=None)
        chain = [{**r, "image_emb": planted[300 + k]["image_emb"]} for k, r in enumerate(chain)]
    out = _decided([*planted[3:100], *chain], cfg)
    assert _rejected(out) == expected
    for clip in expected:
        assert out[clip]["dup_kind"] == "near" and out[clip]["dup_measure"] == signals
        assert out[clip]["dup_figure"] == (4 if signals == "hamming" else pytest.approx(np.cos(STEP), abs=1e-3))


def test_of_several_kept_clips_the_strongest_link_is_named():
    """c0601 links to two kept clips by cosine and to a third by pHash: pHash wins; without
    pHash, the higher cosine does, whatever the kept clips' own ranks."""
    rng = np.random.default_rng(7)
    centre, v, w, far = np.linalg.qr(rng.normal(size=(D, 4)))[0].T
    close = np.cos(np.radians(13)) * centre + np.sin(np.radians(13)) * v  # cosine 0.974 to the centre
    closer = np.cos(np.radians(8)) * centre + np.sin(np.radians(8)) * w  # 0.990; 0.965 to `close`: no link
    rows = [_row(600, close, 0.9), _row(601, centre, 0.1), _row(602, closer, 0.5), _row(603, far, 0.8, hash_=77)]
    rows[1]["phash"] = 77 ^ 0b111
    by_pixels = _decided(rows, DedupConfig(near_cosine=0.97, max_hamming=6, semantic_eps=None))
    assert _rejected(by_pixels) == {"c0601": "c0603"} and by_pixels["c0601"]["reason"].endswith("(near, hamming 3)")
    by_cosine = _decided(rows, DedupConfig(near_cosine=0.97, max_hamming=None, semantic_eps=None))
    assert _rejected(by_cosine) == {"c0601": "c0602"}


@pytest.mark.parametrize(("qualities", "expected"), CHAIN_CASES)
def test_the_clustered_search_on_ray_decides_as_the_exact_one(planted, qualities, expected, ray_local, monkeypatch):
    """Past `flat_max` the near search is clustered and its parts run as Ray tasks (blocks of
    50 vectors: the assignment is spread over several tasks too); the same rule decides."""
    monkeypatch.setattr(dedup, "ASSIGN_BLOCK", 50)
    rows = [*planted, *_chain(qualities)]
    flat = _decided(rows)
    clustered = _decided(rows, CFG.model_copy(update={"flat_max": 2}), map_each=map_on_ray_tasks)
    assert clustered == flat
    assert _rejected(flat) == {"c0400": "c0000", "c0001": "c0401", "c0402": "c0002", **expected}


def test_clustered_search_on_ray_equals_in_process(planted, ray_local, monkeypatch):
    monkeypatch.setattr(dedup, "ASSIGN_BLOCK", 50)
    emb = dedup.embeddings(planted)
    local = dedup.clustered_pairs(emb, 0.9, n_clusters=8, soft=2)
    on_ray = dedup.clustered_pairs(emb, 0.9, n_clusters=8, soft=2, map_each=map_on_ray_tasks)
    assert len(local[0]) >= 2
    assert on_ray[0].tolist() == local[0].tolist() and on_ray[1].tolist() == local[1].tolist()
    exact = dict(zip(map(tuple, dedup.flat_pairs(emb, 0.9)[0].tolist()), dedup.flat_pairs(emb, 0.9)[1].tolist()))
    found = dict(zip(map(tuple, local[0].tolist()), local[1].tolist()))
    assert {pair: found[pair] for pair in exact} == exact  # soft assignment finds them all, same cosines


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
    assert again["c0005"]["reason"] == "dedup: duplicate_of=c0005 (shipped, same bytes)"
    fresh = _row(999, _unit(np.random.default_rng(9).normal(size=D)), 0.5)
    assert _decided([*planted[:3], fresh], history=dedup.load_history(str(history), "run-b"))["c0999"]["status"] == "kept"


def test_against_the_history_a_chain_rejects_only_the_direct_duplicate(tmp_path):
    """A shipped; this run has B (~A) and C (~B only, better quality than B): B is rejected as
    shipped, C is kept - even though, ranked first, it linked to B."""
    a, b, c = _chain([0.5, 0.6, 0.7])
    dedup.append_history(str(tmp_path), "run-a", [a])
    out = _decided([b, c], history=dedup.load_history(str(tmp_path), "run-b"))
    assert _rejected(out) == {"c0501": "c0500"} and out["c0501"]["dup_kind"] == "shipped"
    assert out["c0501"]["reason"] == f"dedup: duplicate_of=c0500 (shipped, cosine {np.cos(STEP):.4f})"


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
    emulated = dedup.upper(dedup.knn_range_links(emb, 0.95, index, index, k))
    exact = dedup.flat_pairs(emb, 0.95)
    assert len(exact[0]) == 20 * 15  # every pair inside each group of 6
    as_dict = lambda links: dict(zip(map(tuple, links[0].tolist()), np.round(links[1], 5).tolist()))  # noqa: E731
    assert as_dict(emulated) == as_dict(exact)


# A real run, cut in partitions of one video: the second video's near copy (re-encoded) is
# rejected as shipped, and a near_cosine the tiny model's embeddings often pass makes chains.
RUN_DEDUP = {"near_cosine": 0.995, "max_hamming": 6, "semantic_eps": 0.006}


@pytest.fixture(scope="module")
def real_run(tmp_path_factory, synthetic_videos):
    import av

    from vidcurate.pipelines.config import load_config
    from vidcurate.pipelines.runner import Runner

    root = tmp_path_factory.mktemp("dedup-run")
    inputs = root / "videos"
    inputs.mkdir()
    first, second = sorted(synthetic_videos[0].glob("*.mp4"))
    shutil.copy(first, inputs / "a.mp4")
    shutil.copy(second, inputs / "b.mp4")
    with av.open(str(first)) as inp, av.open(str(inputs / "c_reencoded.mp4"), "w") as out:
        stream = inp.streams.video[0]
        encoder = out.add_stream("libx264", rate=stream.average_rate, options={"crf": "32"})
        encoder.width, encoder.height, encoder.pix_fmt = 192, 108, "yuv420p"  # scaled down too
        for frame in inp.decode(stream):
            out.mux(encoder.encode(frame.reformat(width=192, height=108, format="yuv420p")))
        out.mux(encoder.encode())
    settings = {"executor": "in_process", "partitions.videos": 2, "split.max_clip_s": 3.0, **{f"dedup.{k}": v for k, v in RUN_DEDUP.items()}}
    cfg = load_config(None, profile="tiny", inputs=str(inputs), run_dir=str(root / "run"), stages=["embed", "quality", "dedup"], **settings)
    Runner(cfg).run_all()
    return root / "run"


def test_every_rejection_of_a_run_names_a_kept_clip_it_directly_duplicates(real_run):
    """By the embed table's embeddings and pHashes and the split table's bytes: the named clip
    was kept (in this partition or an earlier one) and the link holds at the stage's thresholds,
    with the figure the reason states."""
    from vidcurate.pipelines.store import StageStore

    store = StageStore(real_run)
    tables = {s: {r["clip_id"]: r for r in store.table(store.path(s), s).to_pylist()} for s in ("split", "embed", "dedup")}
    decided = tables["dedup"]
    rejected = [r for r in decided.values() if r["status"] == "rejected"]
    kinds = {r["dup_kind"] for r in rejected}
    assert {"near", "shipped"} <= kinds and len(rejected) >= 5, kinds
    cosine_floor = min(RUN_DEDUP["near_cosine"], 1 - RUN_DEDUP["semantic_eps"])
    for r in rejected:
        of = r["duplicate_of"]
        assert decided[of]["status"] == "kept", r  # never named: a clip itself rejected
        one, other = tables["embed"][r["clip_id"]], tables["embed"][of]
        if r["dup_measure"] == "bytes":
            assert tables["split"][r["clip_id"]]["clip_sha256"] == tables["split"][of]["clip_sha256"]
            continue
        if r["dup_measure"] == "hamming":
            figure = _bits(one["phash"], other["phash"])
            assert figure <= RUN_DEDUP["max_hamming"] and figure == r["dup_figure"], r
        else:
            figure = float(dedup.embeddings([one])[0] @ dedup.embeddings([other])[0])
            floor = RUN_DEDUP["near_cosine"] if r["dup_kind"] == "near" else cosine_floor
            assert figure >= floor - 1e-6 and figure == pytest.approx(r["dup_figure"], abs=1e-5), r
        assert r["reason"] == f"dedup: duplicate_of={of} ({r['dup_kind']}, {dedup.figure_text(r['dup_measure'], r['dup_figure'])})"


def test_the_card_counts_rejections_by_kind_with_the_deciding_figures(real_run):
    """The dataset card (rendered from stats.json) against the run's own dedup table."""
    import json

    from vidcurate.pipelines.store import StageStore

    rejected = [r for r in StageStore(real_run).table(real_run / "dedup", "dedup").to_pylist() if r["status"] == "rejected"]
    dataset = real_run / "shard" / "dataset"
    stats = json.loads((dataset / "stats.json").read_text())["content"]["duplicates"]
    card = (dataset / "README.md").read_text()
    for kind in {r["dup_kind"] for r in rejected}:
        mine = [r for r in rejected if r["dup_kind"] == kind]
        assert f"- {kind}: {len(mine)} clips rejected" in card
        for measure in {r["dup_measure"] for r in mine}:
            of = [r for r in mine if r["dup_measure"] == measure]
            entry = stats[kind][measure]
            assert (entry["clips"], entry["kept_named"]) == (len(of), len({r["duplicate_of"] for r in of}))
            if measure != "bytes":
                figures = [r["dup_figure"] for r in of]
                assert (entry["figure"]["p0"], entry["figure"]["p100"]) == (round(min(figures), 4), round(max(figures), 4))
                label = {"hamming": "pHash Hamming bits", "cosine": "embedding cosine"}[measure]
                assert f"| {kind} | {label} | {len(of)} | {entry['kept_named']} | {entry['figure']['p0']:g} |" in card
