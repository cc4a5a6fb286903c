"""Synthetic videos whose camera never stops: Ken Burns moves (pans, zooms) over real
photographs (the images shipped with scikit-image) joined by hard cuts, dissolves and fades,
with traps inside shots that are not transitions: whip pans, flashes and zoom bursts.

A dissolve between two moving shots is where frame-difference detectors fail: the motion
changes every frame as much as the dissolve does. Truth is written as by make_synthetic.py
(`<out>/../truth/<name>.json`, transitions as frame spans).

    python sample_data/make_moving.py --out /tmp/moving/videos --count 8 --seed 200
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from make_synthetic import FPS, write_video

PHOTOS = (
    "astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry",
    "colorwheel", "retina", "camera", "coins", "brick", "grass", "gravel", "page",
)  # fmt: skip
MOVES = ("pan", "zoom_in", "zoom_out", "kenburns")
TRAPS = ("whip", "flash", "zoom_burst", None, None)
TRANSITIONS = ("dissolve", "hard", "dissolve", "fade")


def photo(name: str) -> np.ndarray:
    import skimage.data

    img = getattr(skimage.data, name)()
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    return np.ascontiguousarray(img[..., :3])


class MovingShot:
    """A virtual camera over one photograph: a view (centre, zoom) that moves every frame."""

    def __init__(self, rng: np.random.Generator, image: np.ndarray, height: int, width: int, frames: int, trap: str | None):
        self.img, self.h, self.w, self.frames, self.trap = image.astype(np.float32), height, width, frames, trap
        ih, iw = image.shape[:2]
        self.fit = max(width / iw, height / ih)  # zoom at which the view just covers the photo
        move = rng.choice(MOVES)
        self.scale = width / 640  # motion is set for 640 wide and scaled, so every size sees the same moves
        speed = rng.uniform(0.6, 2.5) * self.scale  # output pixels per frame
        angle = rng.uniform(0, 2 * np.pi)
        self.velocity = speed * np.array([np.cos(angle), np.sin(angle)]) if move in ("pan", "kenburns") else np.zeros(2)
        self.zoom_rate = {"zoom_in": 1.006, "zoom_out": 1 / 1.006, "kenburns": 1.003}.get(move, 1.0)
        self.centre = np.array([iw, ih], dtype=np.float64) / 2 + rng.uniform(-0.1, 0.1, 2) * [iw, ih]
        self.zoom = self.fit * rng.uniform(1.8, 2.4)  # the view shows under half the photo: room to move
        self.trap_at = int(rng.integers(frames // 4, max(frames // 2, frames // 4 + 1)))

    def _burst(self, t: int) -> float:
        """Frames of the trap's burst elapsed by t (0 before it, capped after)."""
        return float(np.clip(t - self.trap_at, 0, 8))

    def frame(self, t: int) -> np.ndarray:
        zoom = max(self.zoom * self.zoom_rate**t, self.fit)  # never so far out that the photo's edge shows
        shift = self.velocity * t
        if self.trap == "whip":  # 8 frames at ~30 px/frame (at 640 wide), then back to the steady pan
            shift = shift + np.array([30.0, 4.0]) * self.scale * self._burst(t)
        if self.trap == "zoom_burst":  # zoom in by 1.6x within 8 frames, and stay there
            zoom *= 1.6 ** (self._burst(t) / 8)
        half_view = np.array([self.w, self.h]) / (2 * zoom)
        size = np.array(self.img.shape[1::-1], dtype=np.float64)
        centre = np.clip(self.centre + shift / zoom, half_view, size - half_view)  # the camera stops at the photo's edge
        # output pixel p shows photo point centre + (p - out_centre) / zoom
        matrix = np.array([[zoom, 0, self.w / 2 - zoom * centre[0]], [0, zoom, self.h / 2 - zoom * centre[1]]])
        img = cv2.warpAffine(self.img, matrix, (self.w, self.h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        if self.trap == "flash" and t in (self.trap_at, self.trap_at + 1):
            img = np.minimum(img * 0.3 + 200, 255)
        return img


def render(seed: int, height: int = 360, width: int = 640, shots: int = 6) -> tuple[list[np.ndarray], dict]:
    """Frames and truth: transitions as frame spans, and where each trap happens (not a cut)."""
    rng = np.random.default_rng(seed)
    names = rng.permutation(PHOTOS)
    frames: list[np.ndarray] = []
    truth: dict = {"transitions": [], "traps": []}
    previous: MovingShot | None = None
    for i in range(shots):
        shot = MovingShot(rng, photo(names[i % len(names)]), height, width, int(rng.integers(2 * FPS, 4 * FPS)), rng.choice(TRAPS))
        start, clock = len(frames), 0  # clock: the new shot's own time, which runs on through the transition
        if previous is not None:
            kind = TRANSITIONS[(seed + i) % len(TRANSITIONS)]
            if kind == "dissolve":  # both shots keep moving through it
                n = int(rng.integers(10, 30))
                for k in range(n):
                    a = (k + 1) / (n + 1)
                    frames.append((1 - a) * previous.frame(previous.end + k) + a * shot.frame(k))
                clock = n
                truth["transitions"].append({"kind": kind, "frames": [start, start + n - 1]})
            elif kind == "fade":
                n, hold = int(rng.integers(6, 15)), int(rng.integers(0, 5))
                frames += [previous.frame(previous.end + k) * (1 - (k + 1) / n) for k in range(n)]
                frames += [np.zeros_like(frames[-1]) for _ in range(hold)]
                frames += [shot.frame(k) * ((k + 1) / n) for k in range(n)]
                clock = n
                truth["transitions"].append({"kind": kind, "frames": [start, start + 2 * n + hold - 1]})
            else:
                truth["transitions"].append({"kind": kind, "frames": [start, start]})
        shot.trap_at += clock  # traps happen after the transition, in the shot's own part
        shot.end = clock + shot.frames
        if shot.trap:
            truth["traps"].append({"kind": shot.trap, "frame": len(frames) + shot.trap_at - clock})
        frames += [shot.frame(t) for t in range(clock, shot.end)]
        previous = shot
    return [f.clip(0, 255).astype(np.uint8) for f in frames], truth


def make(out: Path, count: int, seed: int, height: int = 360, width: int = 640) -> list[Path]:
    return [write_video(out, f"moving_{seed + i:03d}", *render(seed + i, height, width)) for i in range(count)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--count", type=int, default=8)
    parser.add_argument("--seed", type=int, default=200)
    parser.add_argument("--height", type=int, default=360)
    args = parser.parse_args()
    for path in make(args.out, args.count, args.seed, args.height, args.height * 16 // 9 // 2 * 2):
        print(path)


if __name__ == "__main__":
    main()
