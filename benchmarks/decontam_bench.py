"""Decontamination: which copies of eval videos the stage catches, what it catches by mistake, and
what its search costs at corpus scale.

    python benchmarks/decontam_bench.py                     # the recorded run
    python benchmarks/decontam_bench.py --synthetic 2 --codes 100000 --queries 10000 --windows 10000   # a quicker one

Part 1, real footage. Eval set: 5 real videos of ../shared/data/videos. Each is copied 9 ways
(tests/copies.py, libx264): re-encoded at crf 36 and half the width; centre crops of 3, 6 and 10%
a side; cut from 16:9 to 4:3; an uneven crop (8% off the top and the left); cut in time (from 2 s
in); mirrored; and all of crf 34, 6% centre crop and time cut together. Unrelated: the other 5
shared videos and `--synthetic` synthetic ones. Every video is cut into clips by the real probe and
split stages (clips of at most 3 s, 240 p), and the stage's own matching (`decontam.match_block`,
pHash only: the tiny profile has no real embeddings) decides each clip against the stage's
fingerprints of the eval set: with the default crops, and with none (the anchor: plain frame
pHash, what dedup compares). Per copy kind: clips matched of clips; unrelated: clips matched
(false matches), and the closest distance of any unrelated clip frame to the eval frames.

Part 2, the search at scale: `--codes` eval frame hashes (1M: 4.6 hours of eval video at 10 frames
a second and 6 crops) against `--queries` clip frame hashes, range search within 6 bits
(`dedup.phash_links`, what the stage runs) beside FAISS k-NN (k=1, then the radius), the anchor:
time of each and the ratio; then the cosine search (`dedup.flat_links`) of `--queries / 4` clip
embeddings (512-d) against `--windows` eval windows.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "sample_data"))
sys.path.insert(0, str(ROOT / "tests"))

from copies import transcode  # noqa: E402
from make_synthetic import make  # noqa: E402

from vidcurate.stages import decontam  # noqa: E402
from vidcurate.stages.contract import map_here  # noqa: E402
from vidcurate.stages.embed import EmbedConfig  # noqa: E402
from vidcurate.stages.dedup import _codes, flat_links, phash_links  # noqa: E402
from vidcurate.stages.decontam import DecontamConfig, EvalSet  # noqa: E402
from vidcurate.stages.frame_store import FrameNeed, read_frames  # noqa: E402
from vidcurate.stages.probe import ProbeConfig, probe_video  # noqa: E402
from vidcurate.stages.split import SplitConfig, split_video  # noqa: E402

SHARED = ROOT.parent / "shared" / "data" / "videos"
EVAL = ["moviepy_chaplin.mp4", "kivy_cityCC0.mpg", "imageio_cockatoo.mp4", "moviepy_big_buck_bunny_0_30.webm", "psd_testvideo.mp4"]
UNRELATED = ["moviepy_video_with_failing_audio.mp4", "moviepy_fire2.mp4", "psd_counter.mp4", "psd_fades.mp4", "moviepy_no_duration.webm"]
COPIES = {
    "crf36, half width": {"crf": 36, "scale": 0.5},
    "centre crop 3%": {"crop": (0.03,) * 4},
    "centre crop 6%": {"crop": (0.06,) * 4},
    "centre crop 10%": {"crop": (0.10,) * 4},
    "16:9 -> 4:3": {"crop": (0.0, 0.0, 0.125, 0.125)},
    "uneven crop 8% top-left": {"crop": (0.08, 0.0, 0.08, 0.0)},
    "time cut from 2 s": {"start_s": 2.0},
    "mirrored": {"mirror": True},
    "crf34 + crop 6% + cut": {"crf": 34, "crop": (0.06,) * 4, "start_s": 2.0},
}
WIDTH = 480


def clips_of(video: Path, media: Path) -> list[dict]:
    """The clips the real probe and split stages cut (with the frames the stage samples kept)."""
    probed = probe_video(str(video), ProbeConfig(), None)
    if probed["status"] != "kept":
        return []
    rows = split_video(probed, media, SplitConfig(max_clip_s=3.0, clip_max_height=240), (FrameNeed(4),))
    return [r for r in rows if r["status"] == "kept"]


def part1(work: Path, synthetic: int) -> None:
    eval_dir, inputs = work / "eval", work / "inputs"
    eval_dir.mkdir()
    inputs.mkdir()
    for name in EVAL:
        shutil.copy(SHARED / name, eval_dir / name)
    kinds: dict[str, str] = {}
    for name in EVAL:
        for n, (kind, how) in enumerate(COPIES.items()):
            how = dict(how)
            scale = how.pop("scale", 1.0)
            copy = inputs / f"{Path(name).stem}-{n}.mp4"
            transcode(SHARED / name, copy, crf=how.pop("crf", 23), width=round(WIDTH * scale / 2) * 2, **how)
            kinds[copy.name] = kind
    for name in UNRELATED:
        shutil.copy(SHARED / name, inputs / name)
        kinds[name] = "unrelated"
    make(inputs / "synthetic", count=synthetic, seed=200)
    for video in sorted((inputs / "synthetic").glob("*.mp4")):
        kinds[f"synthetic/{video.name}"] = "unrelated"
    clips = {name: clips_of(inputs / name, work / "media") for name in kinds}
    print(f"part 1: {len(EVAL)} eval videos; {sum(len(c) for n, c in clips.items() if kinds[n] != 'unrelated')} copy clips, "
          f"{sum(len(c) for n, c in clips.items() if kinds[n] == 'unrelated')} unrelated clips")  # fmt: skip
    for label, crops in (("default crops", list(decontam.CROPS)), ("no crops (anchor)", [(0.0, 0.0)])):
        cfg = DecontamConfig(eval_sets=[EvalSet(name="eval", videos=str(eval_dir))], near_cosine=None, crops=crops, cache=str(work / "cache"))
        started = time.perf_counter()
        index, _ = decontam.eval_index(cfg, EmbedConfig(), map_here)
        fingerprint_s = time.perf_counter() - started
        started = time.perf_counter()
        found = {name: decontam.match_block(rows, index, cfg) for name, rows in clips.items()}
        match_s = time.perf_counter() - started
        print(f"\n{label}: {len(index.codes)} eval codes (fingerprinted in {fingerprint_s:.1f} s), matching {match_s:.1f} s")
        print("| copy | clips matched | closest frame, bits (median) | wrong source |")
        print("|---|---|---|---|")
        for kind in [*COPIES, "unrelated"]:
            names = [n for n in clips if kinds[n] == kind]
            decided = [(n, m) for n in names for m in found[n]]
            matched = [(n, m) for n, m in decided if isinstance(m, decontam.Match)]
            wrong = sum(index.videos[m.video][1].split(".")[0] != n.split("-")[0] for n, m in matched) if kind != "unrelated" else "-"
            bits = f"{np.median([m.figure for _, m in matched]):g}" if matched else "-"
            print(f"| {kind} | {len(matched)} / {len(decided)} | {bits} | {wrong} |")
        nearest = closest_unrelated(clips, kinds, index)
        print(f"unrelated clip frames: closest to any eval frame {nearest.min()} bits, 1st percentile {np.percentile(nearest, 1):g}, median {np.median(nearest):g}")


def closest_unrelated(clips: dict, kinds: dict, index) -> np.ndarray:
    """Each unrelated clip frame's distance to its nearest eval frame (FAISS k-NN)."""
    import faiss

    codes = []
    for name, rows in clips.items():
        if kinds[name] == "unrelated":
            for row in rows:
                frames, _ = read_frames(row, 4, decontam.SIDE)
                codes += [c for f in frames for c in decontam.frame_hashes(f, [(0.0, 0.0)]) if c is not None]
    search = faiss.IndexBinaryFlat(64)
    search.add(_codes(index.codes))
    return search.search(_codes(codes), 1)[0][:, 0]


def part2(n_codes: int, n_queries: int, n_windows: int) -> None:
    import faiss

    rng = np.random.default_rng(0)
    reference = rng.integers(-(2**63), 2**63 - 1, n_codes)
    queries = rng.integers(-(2**63), 2**63 - 1, n_queries)
    queries[: n_queries // 10] = reference[rng.choice(n_codes, n_queries // 10)] ^ 0b101  # a tenth are copies (2 bits)
    print(f"\npart 2: {n_queries} clip frame hashes against {n_codes} eval frame hashes, {faiss.omp_get_max_threads()} threads")
    started = time.perf_counter()
    pairs, _ = phash_links(queries, reference, 6)
    ours = time.perf_counter() - started
    index = faiss.IndexBinaryFlat(64)
    index.add(_codes(reference))
    started = time.perf_counter()
    distance, _ = index.search(_codes(queries), 1)
    anchor = time.perf_counter() - started
    assert len(np.unique(pairs[:, 0])) == int((distance[:, 0] <= 6).sum())  # the same frames found
    print(f"range search (ours) {ours:.1f} s, k-NN (anchor) {anchor:.1f} s: {anchor / ours:.1f}x; "
          f"{ours / n_queries * 1e6 / n_codes * 1e6:.2f} s per million queries per million eval codes")  # fmt: skip
    emb = rng.normal(size=(n_windows, 512)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    clips = emb[rng.choice(n_windows, n_queries // 4)] + 0.01 * rng.normal(size=(n_queries // 4, 512)).astype(np.float32)
    clips /= np.linalg.norm(clips, axis=1, keepdims=True)
    started = time.perf_counter()
    links, _ = flat_links(clips, emb, 0.97)
    cosine_s = time.perf_counter() - started
    print(f"cosine: {n_queries // 4} clip embeddings against {n_windows} eval windows: {cosine_s:.1f} s, {len(np.unique(links[:, 0]))} clips matched")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--synthetic", type=int, default=8)
    parser.add_argument("--codes", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=20_000)
    parser.add_argument("--windows", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="decontam-bench-") as work:
        part1(Path(work), args.synthetic)
    part2(args.codes, args.queries, args.windows)


if __name__ == "__main__":
    main()
