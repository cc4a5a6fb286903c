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


def test_span_frames_and_event_texts_are_embedded_with_their_times(cut_clips):
    """Ground's span verification compares each event's text with frames at `embed.span_fps`: they
    are the encoder's embeddings of the clip's frames at the times stored beside them."""
    import json

    from vidcurate.stages.embed import SPEC, event_embeddings, frame_evidence, span_need
    from vidcurate.stages.frame_store import FrameNeed, read_frames

    cfg = EmbedConfig(device="cpu", keyframes=2)
    assert SPEC.frames(cfg) == (FrameNeed(2), FrameNeed(64, 2.0, 64))  # split keeps them: decode once
    assert SPEC.frames(EmbedConfig(span_fps=0)) == (FrameNeed(4),)
    encoder = make_encoder(cfg)
    events = [{"start_s": 0.2, "end_s": 1.0, "text": "a square slides left"}, {"start_s": 1.0, "end_s": 2.0, "text": "a circle grows"}]
    clip = {**cut_clips[0], "caption": "shapes move", "events": json.dumps(events)}
    (row,) = embed_clips([clip], encoder, cfg.keyframes, span_need(cfg))
    duration = clip["end_s"] - clip["start_s"]
    frames = frame_evidence(row)
    assert len(frames.times) == round(duration * 2) and list(frames.times) == sorted(frames.times)
    assert 0 <= frames.times[0] < frames.times[-1] < duration
    rgb, times = read_frames(clip, len(frames.times), encoder.size)
    expected, texts = encoder.encode([rgb], [e["text"] for e in events])
    assert np.allclose(frames.times, np.round(times, 3))
    assert (np.sum(frames.embs * expected, axis=1) > 0.99).all()  # float16 storage of the same embeddings
    embs = event_embeddings(row, len(events))
    assert all(float(e @ t) > 0.99 for e, t in zip(embs, texts))
    (plain,) = embed_clips([clip], encoder, cfg.keyframes)  # no span frames asked (span_fps 0)
    assert frame_evidence(plain) is None and all(e is not None for e in event_embeddings(plain, 2))
