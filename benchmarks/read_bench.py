"""What the untrusted-shard checks cost a reader: `open_shards` (every sample checked, its json
parsed and validated) against webdataset's own WebDataset over the same shards (unchecked), both
parsing each json as a trainer does; and the same with frames decoded (`training_samples` against
WebDataset + `clip_frames`), which is what a trainer pays per sample.

    python benchmarks/read_bench.py [--dataset DIR] [--passes 200] [--frames 8]

Without --dataset it builds one: the planted video of tests/planted.py through probe, split,
caption (the planted double behind a loopback OpenAI-compatible server), ground and shard,
in process: clips and a window with captions and QA, as real shards carry them.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from vidcurate.schemas.readers import clip_frames, open_shards, shard_urls, training_samples  # noqa: E402


def planted_dataset(root: Path) -> Path:
    from openai_server import OpenAIServer
    from planted import PlantedEventCaptioner, make_planted_video

    from vidcurate.pipelines.config import load_config
    from vidcurate.pipelines.runner import Runner

    (root / "inputs").mkdir()
    make_planted_video(root / "inputs" / "planted.mp4")
    with OpenAIServer(PlantedEventCaptioner()) as server:
        settings = {"executor": "in_process", "caption.backend": "openai", "caption.openai.base_url": server.base_url}
        cfg = load_config(None, profile="tiny", inputs=str(root / "inputs"), run_dir=str(root / "run"), stages=["caption", "ground"], **settings)
        Runner(cfg).run_all()
    return root / "run" / "shard" / "dataset"


def rate(read, passes: int) -> tuple[float, int]:
    """Samples per second over `passes` reads of the whole dataset, and samples per pass."""
    n = sum(1 for _ in read())  # warm: imports, page cache
    start = time.perf_counter()
    for _ in range(passes):
        for _ in read():
            pass
    return n * passes / (time.perf_counter() - start), n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", help="a shard folder (default: build the planted one)")
    parser.add_argument("--passes", type=int, default=200)
    parser.add_argument("--frames", type=int, default=8)
    args = parser.parse_args()
    import webdataset as wds

    with tempfile.TemporaryDirectory() as tmp:
        dataset = args.dataset or str(planted_dataset(Path(tmp)))
        urls = shard_urls(dataset)
        unchecked = lambda: (json.loads(s["json"]) for s in wds.WebDataset(urls, shardshuffle=False))  # noqa: E731
        checked = lambda: (json.loads(s["json"]) for s in open_shards(dataset))  # noqa: E731
        decoded_unchecked = lambda: (clip_frames(s["mp4"], args.frames) for s in wds.WebDataset(urls, shardshuffle=False))  # noqa: E731
        decoded_checked = lambda: training_samples(dataset, frames=args.frames)  # noqa: E731
        sizes = [len(s["json"]) for s in wds.WebDataset(urls, shardshuffle=False)]
        print(f"dataset: {dataset}: {len(sizes)} samples in {len(urls)} shards, json {min(sizes)}-{max(sizes)} bytes")
        for what, anchor, ours, passes in (
            ("samples + json", unchecked, checked, args.passes),
            (f"samples + json + {args.frames} frames", decoded_unchecked, decoded_checked, max(1, args.passes // 20)),
        ):
            theirs, n = rate(anchor, passes)
            mine, _ = rate(ours, passes)
            print(f"{what}: webdataset (unchecked) {theirs:.0f}/s, open_shards (checked) {mine:.0f}/s, "
                  f"ratio {mine / theirs:.2f}x; check cost {1e3 / mine - 1e3 / theirs:.2f} ms/sample ({n * passes} samples each)")


if __name__ == "__main__":
    main()
