"""Make small synthetic videos with exactly known shot transitions (PyAV + libx264).

Each video is a sequence of shots (textured, moving scenes with their own palette) joined
by hard cuts, dissolves or fades through black; some shots contain a flash or a fast pan,
which are not transitions. `<out>/../truth/<name>.json` lists every transition
as `{"kind", "frames": [first, last]}`: for a hard cut both are the first frame of the new
shot; for gradual ones, the span of mixed frames.

    python sample_data/make_synthetic.py --out sample_data/videos --count 3 --seed 0
"""

from __future__ import annotations

import argparse
import json
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

FPS = 25
TRANSITIONS = ("hard", "dissolve", "fade")


def _texture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Smooth random texture with a shot-specific palette, tiled 2x2 so panning wraps seamlessly."""
    coarse = rng.random((height // 32 + 1, width // 32 + 1, 3)).astype(np.float32)
    tile = np.kron(coarse, np.ones((32, 32, 1), dtype=np.float32))[:height, :width]
    tint = rng.random(3).astype(np.float32) * 0.8 + 0.2
    tile = (tile * tint * 200 + rng.random(3).astype(np.float32) * 40).clip(0, 255)
    return np.tile(tile, (2, 2, 1))


class Shot:
    def __init__(self, rng: np.random.Generator, height: int, width: int, frames: int, event: str | None):
        self.tex = _texture(rng, height, width)
        self.h, self.w, self.frames, self.event = height, width, frames, event
        self.velocity = rng.uniform(-1.5, 1.5, size=2)
        self.disk = rng.uniform(0.2, 0.8, size=2), rng.uniform(-0.01, 0.01, size=2)
        self.yy, self.xx = np.mgrid[0:height, 0:width]

    def frame(self, t: int) -> np.ndarray:
        # a fast pan moves 12x faster for one second; position is integrated, so it never jumps
        fast = min(max(t - self.frames // 3, 0), FPS) if self.event == "pan" else 0
        offset = self.velocity * (t + 11 * fast)
        y0 = int(offset[0]) % self.h
        x0 = int(offset[1]) % self.w
        img = self.tex[y0 : y0 + self.h, x0 : x0 + self.w].copy()
        (cy, cx), (vy, vx) = self.disk
        mask = (self.yy / self.h - (cy + vy * t) % 1) ** 2 + (self.xx / self.w - (cx + vx * t) % 1) ** 2 < 0.01
        img[mask] = 255 - img[mask]
        if self.event == "flash" and t in (self.frames // 2, self.frames // 2 + 1):
            img = np.minimum(img * 0.3 + 200, 255)
        return img


def render(seed: int, height: int = 144, width: int = 256, shots: int = 5) -> tuple[list[np.ndarray], list[dict]]:
    rng = np.random.default_rng(seed)
    frames: list[np.ndarray] = []
    truth: list[dict] = []
    previous: Shot | None = None
    for i in range(shots):
        event = rng.choice(["flash", "pan", None, None])
        shot = Shot(rng, height, width, int(rng.integers(2 * FPS, 4 * FPS)), event)
        if previous is not None:
            kind = TRANSITIONS[(seed + i) % len(TRANSITIONS)]
            start = len(frames)
            if kind == "dissolve":
                n = int(rng.integers(10, 20))
                for k in range(n):
                    a = (k + 1) / (n + 1)
                    frames.append((1 - a) * previous.frame(previous.frames + k) + a * shot.frame(k))
                truth.append({"kind": kind, "frames": [start, start + n - 1]})
            elif kind == "fade":
                n, hold = int(rng.integers(6, 12)), int(rng.integers(2, 6))
                frames += [previous.frame(previous.frames + k) * (1 - (k + 1) / n) for k in range(n)]
                frames += [np.zeros_like(frames[-1]) for _ in range(hold)]
                frames += [shot.frame(k) * ((k + 1) / n) for k in range(n)]
                truth.append({"kind": kind, "frames": [start, start + 2 * n + hold - 1]})
            else:
                truth.append({"kind": kind, "frames": [start, start]})
        frames += [shot.frame(t) for t in range(shot.frames)]
        previous = shot
    return [f.clip(0, 255).astype(np.uint8) for f in frames], truth


def encode(frames: list[np.ndarray], path: Path, crf: int = 20) -> None:
    with av.open(str(path), mode="w") as out:
        stream = out.add_stream("libx264", rate=Fraction(FPS))
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf), "preset": "medium"}
        for img in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        out.mux(stream.encode(None))


def write_video(out: Path, name: str, frames: list[np.ndarray], truth: dict) -> Path:
    """<out>/<name>.mp4 and its truth, <out>/../truth/<name>.json."""
    truth_dir = out.parent / "truth"
    for d in (out, truth_dir):
        d.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.mp4"
    encode(frames, path)
    meta = {"video": path.name, "fps": FPS, "n_frames": len(frames), **truth}
    (truth_dir / f"{name}.json").write_text(json.dumps(meta, indent=1))
    return path


def make(out: Path, count: int, seed: int, truncated: bool = False, height: int = 144, width: int = 256) -> list[Path]:
    paths = []
    for i in range(count):
        frames, transitions = render(seed + i, height, width)
        paths.append(write_video(out, f"synthetic_{seed + i:03d}", frames, {"transitions": transitions}))
    if truncated and paths:  # a damaged input, to show the ledger rejecting it
        data = paths[0].read_bytes()
        (out / "damaged_truncated.mp4").write_bytes(data[: len(data) // 3])
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "videos")
    parser.add_argument("--count", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--truncated", action="store_true", help="also write a truncated copy of the first video")
    args = parser.parse_args()
    for path in make(args.out, args.count, args.seed, args.truncated):
        print(path)


if __name__ == "__main__":
    main()
