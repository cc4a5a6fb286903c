"""Embed stage end to end vs the model's raw encode rate, same device, same run.

    python benchmarks/embed_bench.py [--model ViT-B-32] [--device auto] [--keyframes 8]
                                     [--clips-per-batch 16] [--raw-batch 256] [--repeat 3]

Stage: `stages.embed.embed_clips` on real clips (cut from the sample videos by the split
stage, which keeps the keyframes as it encodes them: decode once): read the keyframes, scale them
to the encoder's input size, crop, normalise on the device, encode images and captions, hash.
Model half: `embed_decoded` on keyframes read beforehand, as the pipeline runs it (CPU tasks
read, the model actor only preprocesses and encodes). Raw: `encode_image`
on ready tensors at `--raw-batch`. Prints frames/s of each and the ratios to raw (targets:
model half >= 0.85 of raw on CPU, >= 0.70 on GPU). Weights are random (`pretrained=None`):
speed does not depend on them.
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

from vidcurate.stages.embed import ClipEncoder, decode_keyframes, embed_clips, embed_decoded  # noqa: E402
from vidcurate.stages.media import unpack_frames  # noqa: E402
from vidcurate.stages.probe import ProbeConfig, probe_video  # noqa: E402
from vidcurate.stages.frame_store import FrameNeed  # noqa: E402
from vidcurate.stages.split import SplitConfig, split_video  # noqa: E402


def sample_clips(keyframes: int, media: Path) -> list[dict]:
    """The sample videos' clips, cut by split into `media` with their keyframes kept, as the pipeline does."""
    clips = []
    for video in sorted((REPO / "sample_data" / "videos").glob("*")):
        row = probe_video(str(video), ProbeConfig(), None)
        if row["status"] == "kept":
            clips += [c for c in split_video(row, media, SplitConfig(max_clip_s=4.0), (FrameNeed(keyframes),)) if c["status"] == "kept"]
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
    scratch = tempfile.TemporaryDirectory(prefix="embed-bench-")  # removed when main returns
    clips = sample_clips(args.keyframes, Path(scratch.name)) * args.repeat
    batches = [clips[i : i + args.clips_per_batch] for i in range(0, len(clips), args.clips_per_batch)]
    frames = len(clips) * args.keyframes
    images = torch.randn(args.raw_batch, 3, encoder.size, encoder.size, device=encoder.device, dtype=encoder.dtype)

    def timed(fn) -> float:
        if encoder.device.startswith("cuda"):
            torch.cuda.synchronize()
        started = time.perf_counter()
        with torch.inference_mode():
            fn()
        if encoder.device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - started

    def raw(count: int) -> None:
        encoder.model.encode_image(images[:count] if count <= len(images) else images.repeat(-(-count // len(images)), 1, 1, 1)[:count])

    embed_clips(batches[0][:2], encoder, args.keyframes)  # warm-up
    stage_s = sum(timed(lambda: embed_clips(batch, encoder, args.keyframes)) for batch in batches)
    raw_batches = -(-frames // args.raw_batch)
    raw_s = sum(timed(lambda: raw(args.raw_batch)) for _ in range(raw_batches))
    # The model half (decoded keyframes in) and the raw encode of the same frame count, batch by
    # batch, one right after the other: drifts in the machine's speed hit both alike.
    model_half_s = paired_raw_s = 0.0
    for batch in (decode_keyframes(b, args.keyframes, encoder.size) for b in batches):
        count = sum(len(unpack_frames(c["frames"])) for c in batch)
        model_half_s += timed(lambda: embed_decoded(batch, encoder))
        paired_raw_s += timed(lambda: raw(count))
    result = {
        "model": args.model,
        "device": encoder.device,
        "dtype": str(encoder.dtype),
        "clips": len(clips),
        "frames": frames,
        "stage_frames_per_s": round(frames / stage_s, 1),
        "raw_images_per_s": round(raw_batches * args.raw_batch / raw_s, 1),
        "stage_vs_raw": round((frames / stage_s) / (raw_batches * args.raw_batch / raw_s), 3),
        "model_half_frames_per_s": round(frames / model_half_s, 1),
        "raw_same_batches_images_per_s": round(frames / paired_raw_s, 1),
        "model_half_vs_raw_same_batches": round(paired_raw_s / model_half_s, 3),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
