"""Embed stage end to end vs the model's raw encode rate, same device, same run.

    python benchmarks/embed_bench.py [--model ViT-B-32] [--device auto] [--keyframes 8]
                                     [--clips-per-batch 16] [--raw-batch 256] [--repeat 3]

Stage: `stages.embed.embed_clips` on real clips (cut from the sample videos by the split
stage): decode keyframes, resize/crop/normalise with torch on the device, encode images and
captions, hash. Raw: `encode_image` on ready tensors at `--raw-batch`. Prints frames/s of
both and the ratio (issue target on GPU: stage >= 70% of raw). Weights are random
(`pretrained=None`): speed does not depend on them.
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

from pipelines.config import ProbeConfig, SplitConfig  # noqa: E402
from stages.embed import ClipEncoder, embed_clips  # noqa: E402
from stages.probe import probe_video  # noqa: E402
from stages.split import split_video  # noqa: E402


def sample_clips() -> list[dict]:
    media = Path(tempfile.mkdtemp())
    clips = []
    for video in sorted((REPO / "sample_data" / "videos").glob("*")):
        row = probe_video(str(video), ProbeConfig(), None)
        if row["status"] == "kept":
            clips += [c for c in split_video(row, media, SplitConfig(max_clip_s=4.0)) if c["status"] == "kept"]
    return [{**c, "caption": "a short clip of moving shapes"} for c in clips]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--keyframes", type=int, default=8)
    parser.add_argument("--clips-per-batch", type=int, default=16, help="embed.resources.batch_size")
    parser.add_argument("--raw-batch", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=3, help="passes over the clips")
    args = parser.parse_args()

    import torch

    encoder = ClipEncoder(args.model, None, args.device)
    clips = sample_clips() * args.repeat
    batches = [clips[i : i + args.clips_per_batch] for i in range(0, len(clips), args.clips_per_batch)]
    embed_clips(batches[0][:2], encoder, args.keyframes)  # warm-up
    started = time.perf_counter()
    for batch in batches:
        embed_clips(batch, encoder, args.keyframes)
    stage_s = time.perf_counter() - started
    frames = len(clips) * args.keyframes

    images = torch.randn(args.raw_batch, 3, encoder.size, encoder.size, device=encoder.device, dtype=encoder.dtype)
    with torch.inference_mode():
        encoder.model.encode_image(images[:8])
        if encoder.device.startswith("cuda"):
            torch.cuda.synchronize()
        started = time.perf_counter()
        done = 0
        while done < frames:
            encoder.model.encode_image(images)
            done += args.raw_batch
        if encoder.device.startswith("cuda"):
            torch.cuda.synchronize()
        raw_s = time.perf_counter() - started
    result = {
        "model": args.model,
        "device": encoder.device,
        "dtype": str(encoder.dtype),
        "clips": len(clips),
        "frames": frames,
        "stage_frames_per_s": round(frames / stage_s, 1),
        "raw_images_per_s": round(done / raw_s, 1),
        "stage_vs_raw": round((frames / stage_s) / (done / raw_s), 3),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
