"""Where model weights come from: real ids for profile `default`, and for profile `tiny`
random-initialised models of the same architectures, built once into a local cache.

The tiny models exist so the real inference code (processor, chat template, generate,
open_clip encoders) runs in CI and on machines with no model hub. Their outputs are noise;
the pipeline's parsing, constraints and ledger handle that like any bad model answer. One more,
for tests and benchmarks, has a real-sized vocabulary (`bpe_qwen25vl`).
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_CAPTION_MODEL = "Qwen/Qwen2.5-VL-7B-Instruct"
DEFAULT_CLIP_MODEL = "ViT-B-32"  # open_clip, with embed.pretrained's weights
TINY_CAPTION_MODEL = "tiny-qwen2-vl"
TINY_CLIP_MODEL = "tiny-clip"
# speech: each Whisper backend's name for large-v3-turbo (faster-whisper's alias; hub ids)
DEFAULT_SPEECH_MODELS = {"faster-whisper": "large-v3-turbo", "transformers": "openai/whisper-large-v3-turbo", "openai": "openai/whisper-large-v3-turbo"}
TINY_WHISPER_MODEL = "tiny-whisper"

# Qwen's chat template, reduced to what captioning sends: text and image parts.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]

# Qwen2.5-VL's own chat template (a default system turn, frames and videos between vision markers).
QWEN25VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Qwen2.5-VL's added tokens in its order (ids 151643-151664 there, after the BPE's): 14 special,
# then 8 plain ones, which `skip_special_tokens` keeps.
QWEN_ADDED_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
                     "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>",
                     "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]  # fmt: skip
QWEN_ADDED_PLAIN = ["<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
                    "<|repo_name|>", "<|file_sep|>"]  # fmt: skip
# Qwen2's pre-tokenizer: contractions, letter runs with one leading mark, single digits, punctuation runs.
QWEN_PRETOKENIZE = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
BPE_VOCAB = 32768  # trained tokens, before the added ones
BPE_QWEN25VL_MODEL = "bpe32k-qwen2.5-vl"


def cache_dir() -> Path:
    """VIDCURATE_CACHE, else ~/.cache/vidcurate: built tiny models live here."""
    return Path(os.environ.get("VIDCURATE_CACHE") or Path.home() / ".cache" / "vidcurate")


def tiny_qwen2vl(root: Path | None = None) -> Path:
    """A Qwen2-VL model (2 text layers, 1 vision block, byte-level vocabulary) saved with its
    processor, so `from_pretrained(path)` works exactly as for a hub checkpoint."""
    return tiny_vlm("qwen2_vl", root)


# Text and vision shapes of the tiny models: the real architectures' code at toy width.
_TINY_TEXT = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 2, "max_position_embeddings": 4096}  # fmt: skip
_TINY_VISION = {
    "qwen2_vl": {"depth": 1, "embed_dim": 32, "hidden_size": 64, "num_heads": 2, "mlp_ratio": 2, "patch_size": 14},
    "qwen2_5_vl": {"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": 64,
                   "patch_size": 14, "window_size": 56, "fullatt_block_indexes": [1]},
    "qwen3_vl": {"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": 64,
                 "patch_size": 16, "num_position_embeddings": 64, "deepstack_visual_indexes": [0]},
}  # fmt: skip
TINY_VLM_DIRS = {"qwen2_vl": TINY_CAPTION_MODEL, "qwen2_5_vl": "tiny-qwen2.5-vl", "qwen3_vl": "tiny-qwen3-vl"}


def tiny_vlm(arch: str, root: Path | None = None) -> Path:
    """A random-initialised `arch` (qwen2_vl, qwen2_5_vl, qwen3_vl) with its processor and the
    byte-level tokenizer, built once into the cache: the code path of the real checkpoints
    (processor, chat template, vision tower, M-RoPE, generate) at toy size."""
    path = (root or cache_dir()) / TINY_VLM_DIRS[arch]
    if not (path / "config.json").is_file():
        tokenizer = _byte_tokenizer()
        _build_vlm(arch, tokenizer, CHAT_TEMPLATE, len(tokenizer), ["<|im_end|>"], path)
    return path


def bpe_qwen25vl(root: Path | None = None) -> Path:
    """A random-initialised Qwen2.5-VL at toy width with a real-sized vocabulary: a byte-level
    BPE of BPE_VOCAB tokens trained here (`bpe_tokenizer`), Qwen2.5-VL's added tokens, chat
    template and stop tokens, and an output layer padded past the tokenizer as Qwen's is
    (151936 rows for 151665 tokens). Grammar engines meet here what they meet in real
    checkpoints: multi-character tokens that straddle the answer's fields, and logits that no
    token text stands for."""
    path = (root or cache_dir()) / BPE_QWEN25VL_MODEL
    if not (path / "config.json").is_file():
        tokenizer = bpe_tokenizer()
        rows = -(-len(tokenizer) // 128) * 128
        _build_vlm("qwen2_5_vl", tokenizer, QWEN25VL_CHAT_TEMPLATE, rows, ["<|im_end|>", "<|endoftext|>"], path)
    return path


def _build_vlm(arch: str, tokenizer, chat_template: str, vocab_rows: int, stop_tokens: list[str], path: Path) -> None:
    """Save a random `arch` at toy width with `tokenizer` to `path` (written to a private folder,
    then renamed into place)."""
    import torch
    import transformers as tf

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in _SPECIAL}
    text = {
        **_TINY_TEXT,
        "vocab_size": vocab_rows,
        "eos_token_id": ids[stop_tokens[0]],
        "bos_token_id": ids["<|endoftext|>"],
        "pad_token_id": ids["<|endoftext|>"],
    }
    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}  # 16-dim heads: 2+3+3 = 8 pairs
    if arch == "qwen3_vl":
        text |= {"head_dim": 16, "rope_parameters": {**rope, "mrope_interleaved": True}}
    else:
        text |= {"rope_parameters": rope}
    config_class, model_class, processor_class = {
        "qwen2_vl": (tf.Qwen2VLConfig, tf.Qwen2VLForConditionalGeneration, tf.Qwen2VLProcessor),
        "qwen2_5_vl": (tf.Qwen2_5_VLConfig, tf.Qwen2_5_VLForConditionalGeneration, tf.Qwen2_5_VLProcessor),
        "qwen3_vl": (tf.Qwen3VLConfig, tf.Qwen3VLForConditionalGeneration, tf.Qwen3VLProcessor),
    }[arch]
    config = config_class(
        text_config=text,
        vision_config=_TINY_VISION[arch],
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    torch.manual_seed(0)
    model = model_class(config).eval()
    stops = [ids[t] for t in stop_tokens]
    model.generation_config.eos_token_id = stops[0] if len(stops) == 1 else stops
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    # Few image tokens per frame: 112x112 -> 8x8 patches -> 16 tokens after the 2x2 merge
    # (Qwen3-VL's 16-pixel patches: 128x128).
    side = 128 if arch == "qwen3_vl" else 112
    pixels = {"min_pixels": side * side, "max_pixels": side * side}
    patch = {"patch_size": _TINY_VISION[arch]["patch_size"]}
    video_class = tf.Qwen3VLVideoProcessor if arch == "qwen3_vl" else tf.Qwen2VLVideoProcessor
    processor = processor_class(
        image_processor=tf.Qwen2VLImageProcessor(**pixels, **patch),
        tokenizer=tokenizer,
        video_processor=video_class(**pixels, **patch),
        chat_template=chat_template,
    )
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    model.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    os.replace(tmp, path)


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


def bpe_tokenizer():
    """Qwen2's tokenizer design at a real size, trained here: byte-level BPE (BPE_VOCAB tokens)
    with Qwen2's pre-tokenizer, NFC normaliser and decoder, then Qwen2.5-VL's added tokens.
    The corpus is `bpe_corpus`, so the same library version trains the same vocabulary."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import AddedToken, PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.normalizer = normalizers.NFC()
    core.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(QWEN_PRETOKENIZE), behavior="isolated"), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=BPE_VOCAB, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    core.train_from_iterator(bpe_corpus(), trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, padding_side="left")
    tokenizer.add_special_tokens({"additional_special_tokens": QWEN_ADDED_TOKENS})
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in QWEN_ADDED_PLAIN])
    tokenizer.eos_token, tokenizer.pad_token = "<|im_end|>", "<|endoftext|>"
    return tokenizer


def bpe_corpus(lines: int = 20_000, seed: int = 0):
    """Seeded English-like text to train `bpe_tokenizer` on: sentences of words drawn by a Zipf
    law from the whole words of CLIP's BPE vocabulary (shipped with open_clip, in its merge
    order, which is roughly frequency order), and every fourth line a caption answer in JSON, so
    the vocabulary learns JSON's punctuation runs as real ones have (`{"`, `":`, `"},`, `[{"`).
    About 4 MB: the 32768 tokens train in seconds."""
    import gzip
    import importlib.util
    import itertools
    import random

    clip_vocab = Path(importlib.util.find_spec("open_clip").origin).parent / "bpe_simple_vocab_16e6.txt.gz"  # found, not imported
    merges = gzip.open(clip_vocab).read().decode().split("\n")[1:48895]  # the merges CLIP's tokenizer uses
    words = [w[:-4] for w in (a + b for a, b in (m.split() for m in merges)) if w.endswith("</w>") and w[:-4].isascii() and w[:-4].isalpha()]
    rank_weights = list(itertools.accumulate(1 / (rank + 10) for rank in range(len(words))))
    rng = random.Random(seed)

    def sentence(count: int) -> str:
        drawn = rng.choices(words, cum_weights=rank_weights, k=count)
        return " ".join([drawn[0].capitalize(), *drawn[1:]]) + rng.choice(".....!?;,")

    for line in range(lines):
        if line % 4 == 3:
            times = sorted(rng.sample(range(0, 3000, 25), 4))
            events = ", ".join(
                f'{{"start_s": {a / 100:.2f}, "end_s": {b / 100:.2f}, "text": "{sentence(rng.randint(2, 8))}"}}' for a, b in zip(times, times[1:])
            )
            yield f'{{"caption": "{sentence(rng.randint(5, 20))}", "events": [{events}]}}'
        else:
            yield " ".join(sentence(rng.randint(4, 18)) for _ in range(rng.randint(1, 5)))


def tiny_clip_config() -> dict:
    """An open_clip CLIP config of the ViT-B-32 family at toy width (random weights, pretrained=None)."""
    return {
        "embed_dim": 64,
        "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
    }


# Whisper large-v3's special tokens, in its order after the 50257 text tokens (then 1501 timestamps).
_WHISPER_TEXT_TOKENS = 50257
_WHISPER_TIMESTAMPS = 1501  # <|0.00|> .. <|30.00|>, 20 ms apart


def tiny_whisper(root: Path | None = None) -> Path:
    """A random-initialised Whisper (2 + 2 layers, 64 wide) with large-v3's token layout (51866
    ids: text, <|endoftext|>, <|startoftranscript|>, 100 languages, tasks, <|notimestamps|>,
    timestamps) and 128 mel bins, saved with its processor: the real generate, language detection,
    timestamp and word-alignment code at toy size. The text tokens are bytes and byte pairs (no
    merges): noise decodes to bytes, as any noise would."""
    path = (root or cache_dir()) / TINY_WHISPER_MODEL
    if (path / "config.json").is_file():
        return path
    import torch
    import transformers as tf
    from tokenizers import pre_tokenizers
    from transformers.models.whisper.tokenization_whisper import LANGUAGES

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    pairs = (a + b for a in alphabet for b in alphabet)
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    while len(vocab) < _WHISPER_TEXT_TOKENS:
        vocab.setdefault(next(pairs), len(vocab))
    tokenizer = tf.WhisperTokenizer(vocab=vocab, merges=[])
    tasks = ["<|translate|>", "<|transcribe|>", "<|startoflm|>", "<|startofprev|>", "<|nospeech|>", "<|notimestamps|>"]
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|startoftranscript|>", *[f"<|{code}|>" for code in LANGUAGES], *tasks]})
    tokenizer.add_tokens([f"<|{i * 0.02:.2f}|>" for i in range(_WHISPER_TIMESTAMPS)])
    ids = tokenizer.convert_tokens_to_ids
    end, start = ids("<|endoftext|>"), ids("<|startoftranscript|>")
    config = tf.WhisperConfig(
        vocab_size=len(tokenizer), num_mel_bins=128, d_model=64, encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=128, decoder_ffn_dim=128,
        pad_token_id=end, bos_token_id=end, eos_token_id=end, decoder_start_token_id=start,
    )  # fmt: skip
    torch.manual_seed(0)
    model = tf.WhisperForConditionalGeneration(config).eval()
    model.generation_config = tf.GenerationConfig(
        decoder_start_token_id=start, eos_token_id=end, pad_token_id=end, bos_token_id=end, max_length=448,
        lang_to_id={f"<|{code}|>": ids(f"<|{code}|>") for code in LANGUAGES},
        task_to_id={"transcribe": ids("<|transcribe|>"), "translate": ids("<|translate|>")},
        no_timestamps_token_id=ids("<|notimestamps|>"), prev_sot_token_id=ids("<|startofprev|>"), is_multilingual=True,
        alignment_heads=[[1, 0], [1, 1]], max_initial_timestamp_index=50, begin_suppress_tokens=[220, end], suppress_tokens=[],
    )  # fmt: skip
    features = tf.WhisperFeatureExtractor(feature_size=128)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    model.save_pretrained(tmp)
    tf.WhisperProcessor(feature_extractor=features, tokenizer=tokenizer).save_pretrained(tmp)
    features.save_pretrained(tmp)  # preprocessor_config.json: what faster-whisper reads the mel settings from
    os.replace(tmp, path)
    return path


def tiny_whisper_ct2(root: Path | None = None) -> Path:
    """`tiny_whisper` converted by CTranslate2's own converter, as faster-whisper loads it."""
    path = (root or cache_dir()) / f"{TINY_WHISPER_MODEL}-ct2"
    if (path / "model.bin").is_file():
        return path
    from ctranslate2.converters import TransformersConverter

    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    TransformersConverter(str(tiny_whisper(root)), copy_files=["tokenizer.json", "preprocessor_config.json"]).convert(str(tmp), force=True)
    os.replace(tmp, path)
    return path
