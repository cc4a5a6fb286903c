"""The image encoder in half precision (as on a GPU: fp16 there, bf16 here on the CPU) gives the
float32 model's embeddings: open_clip keeps some weights in float32, so the input dtype must
come from the precision, not from whichever parameter happens to be first."""

from __future__ import annotations

import numpy as np
from make_synthetic import render

from stages.embed import ClipEncoder, tiny_clip_checkpoint
from stages.models import TINY_CLIP_MODEL


def test_half_precision_encoder_matches_float32():
    frames, _ = render(5, height=144, width=256)
    clips = [np.stack(frames[0:4]), np.stack(frames[200:204])]
    weights = tiny_clip_checkpoint()
    full = ClipEncoder(TINY_CLIP_MODEL, weights, "cpu", precision="fp32").images(clips)
    half = ClipEncoder(TINY_CLIP_MODEL, weights, "cpu", precision="bf16").images(clips)
    assert half.shape == full.shape == (8, full.shape[1])
    assert np.allclose(np.linalg.norm(half, axis=1), 1, atol=0.02)
    assert (np.sum(half * full, axis=1) > 0.99).all()
