"""The embed stage's encoder: half precision (as on a GPU: fp16 there, bf16 here on the CPU) gives
the float32 model's embeddings, since open_clip keeps some weights in float32, so the input dtype
must come from the precision, not from whichever parameter happens to be first; and the default
profile's architectures at full size through the stage."""

from __future__ import annotations

import numpy as np
import pytest
from make_synthetic import render

from vidcurate.schemas.tables import KEPT
from vidcurate.stages.embed import ClipEncoder, EmbedConfig, embed_clips, make_encoder, tiny_clip_checkpoint
from vidcurate.stages.models import TINY_CLIP_MODEL, tiny_qwen2vl


def test_half_precision_encoder_matches_float32():
    frames, _ = render(5, height=144, width=256)
    clips = [np.stack(frames[0:4]), np.stack(frames[200:204])]
    weights = tiny_clip_checkpoint()
    texts = ["a red square", "shapes move across a textured background"]
    full, full_text = ClipEncoder(TINY_CLIP_MODEL, weights, "cpu", precision="fp32").encode(clips, texts)
    half, half_text = ClipEncoder(TINY_CLIP_MODEL, weights, "cpu", precision="bf16").encode(clips, texts)
    assert half.shape == full.shape == (8, full.shape[1])
    assert half_text.shape == full_text.shape == (2, full.shape[1])
    assert np.allclose(np.linalg.norm(half, axis=1), 1, atol=0.02)
    assert (np.sum(half * full, axis=1) > 0.99).all()
    assert (np.sum(half_text * full_text, axis=1) > 0.99).all()


@pytest.mark.parametrize(
    "model, tokenizer, dim",
    [("ViT-B-32", None, 512), ("ViT-B-16-SigLIP", "tiny-tokenizer", 768)],
)
def test_full_size_clip_and_siglip_embed_clips_through_the_default_profiles_path(cut_clips, model, tokenizer, dim):
    """The default profile's architectures at their real size, random weights (pretrained=None).
    SigLIP's tokenizer lives on the hub, so a local one stands in (`embed.tokenizer`)."""
    if tokenizer:
        tokenizer = str(tiny_qwen2vl())  # a Hugging Face tokenizer folder on this machine
    cfg = EmbedConfig(model=model, pretrained=None, tokenizer=tokenizer, device="cpu", keyframes=2)
    encoder = make_encoder(cfg)
    clips = [{**c, "caption": "shapes move across a textured background"} for c in cut_clips[:2]]
    rows = embed_clips(clips, encoder, cfg.keyframes)
    assert [r["status"] for r in rows] == [KEPT, KEPT]
    for row in rows:
        image = np.frombuffer(row["image_emb"], dtype=np.float16)
        assert image.shape == (dim,) and abs(np.linalg.norm(image.astype(np.float32)) - 1) < 0.01
        assert np.frombuffer(row["text_emb"], dtype=np.float16).shape == (dim,) and -1 <= row["clip_score"] <= 1
