"""Where model weights come from: real ids for profile `default`, and for profile `tiny`
random-initialised models of the same architectures, built once into a local cache.

The tiny models exist so the real inference code (processor, chat template, generate,
open_clip encoders) runs in CI and on machines with no model hub. Their outputs are noise;
the pipeline's parsing, constraints and ledger handle that like any bad model answer.
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_CAPTION_MODEL = "Qwen/Qwen2.5-VL-7B-Instruct"
TINY_CAPTION_MODEL = "tiny-qwen2-vl"
TINY_CLIP_MODEL = "tiny-clip"

# Qwen's chat template, reduced to what captioning sends: text and image parts.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]


def cache_dir() -> Path:
    """VIDCURATE_CACHE, else ~/.cache/vidcurate: built tiny models live here."""
    return Path(os.environ.get("VIDCURATE_CACHE") or Path.home() / ".cache" / "vidcurate")


def tiny_qwen2vl(root: Path | None = None) -> Path:
    """A Qwen2-VL model (2 text layers, 1 vision block, byte-level vocabulary) saved with its
    processor, so `from_pretrained(path)` works exactly as for a hub checkpoint."""
    path = (root or cache_dir()) / TINY_CAPTION_MODEL
    if (path / "config.json").is_file():
        return path
    import torch
    from transformers import (
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )

    tokenizer = _byte_tokenizer()
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in _SPECIAL}
    config = Qwen2VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 4096,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
            "eos_token_id": ids["<|im_end|>"],
            "bos_token_id": ids["<|endoftext|>"],
            "pad_token_id": ids["<|endoftext|>"],
        },
        vision_config={"depth": 1, "embed_dim": 32, "hidden_size": 64, "num_heads": 2, "mlp_ratio": 2, "patch_size": 14},
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    torch.manual_seed(0)
    model = Qwen2VLForConditionalGeneration(config).eval()
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    # Few image tokens per frame: 112x112 -> 8x8 patches -> 16 tokens after the 2x2 merge.
    images = Qwen2VLImageProcessor(min_pixels=112 * 112, max_pixels=112 * 112)
    videos = Qwen2VLVideoProcessor(min_pixels=112 * 112, max_pixels=112 * 112)
    processor = Qwen2VLProcessor(image_processor=images, tokenizer=tokenizer, video_processor=videos, chat_template=CHAT_TEMPLATE)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    model.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    os.replace(tmp, path)
    return path


def _byte_tokenizer():
    """Byte-level BPE with no merges: one token per byte, so any text encodes and a grammar
    over characters maps one-to-one onto tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token="<|im_end|>", pad_token="<|endoftext|>", padding_side="left"
    )
    tokenizer.add_special_tokens({"additional_special_tokens": _SPECIAL})
    return tokenizer


def tiny_clip_config() -> dict:
    """An open_clip CLIP config of the ViT-B-32 family at toy width (random weights, pretrained=None)."""
    return {
        "embed_dim": 64,
        "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
    }
