"""The interleaved trainers' own reading code, re-implemented faithfully where it cannot be
imported (OpenFlamingo pins torch==2.0.1 and imports its data module as a script; LLaVA-NeXT's
train.py imports deepspeed and its whole model package). Each function names the file, commit and
function it follows; only what reads a record is here (no model, no augmentation by chance).

The tokenizer both need is a stand-in: OpenFlamingo's language models and LLaVA's are on the model
hub, which this machine cannot reach, so a BPE tokenizer is built from the CLIP vocabulary that
open_clip ships, with each trainer's special tokens added as the trainer adds them. Only the count
of tokens a text takes depends on it (OpenFlamingo's 256-token cut); `<image>` stays one token.
"""

from __future__ import annotations

import base64
import copy
import gzip
import io
import json
import os
import re
import zipfile
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image

# ---- OpenFlamingo (mlfoundations/open_flamingo) ----------------------------------------------
OPENFLAMINGO_HEAD = "655f693fbfa04cd6e9a987d960654624d48917cf"  # main, 2023-10-11
OPENFLAMINGO_V1 = "95426dd25fd8334db295311b95ea1add686e654c"  # 2023-04-19, MMC4's own matched_* fields
MIN_KB = 10  # open_flamingo/train/data.py


@cache
def bpe_tokenizer():
    """A Hugging Face CLIP BPE tokenizer from open_clip's bundled vocabulary (the stand-in)."""
    import tempfile

    from open_clip.tokenizer import bytes_to_unicode, default_bpe
    from transformers import CLIPTokenizer

    merges = gzip.open(default_bpe()).read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    vocab = list(bytes_to_unicode().values())
    vocab += [v + "</w>" for v in vocab] + ["".join(m.split()) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    with tempfile.TemporaryDirectory(prefix="bpe-") as scratch:  # read once: the tokenizer keeps it in memory
        folder = Path(scratch)
        (folder / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(vocab)}))
        (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
        return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))


def openflamingo_tokenizer():
    """open_flamingo/src/factory.py `create_model_and_transforms`: Flamingo's special tokens, a pad token."""
    tokenizer = copy.deepcopy(bpe_tokenizer())
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|endofchunk|>", "<image>"]})
    if tokenizer.pad_token is None:
        tokenizer.add_special_tokens({"pad_token": "<PAD>"})
    return tokenizer


def convert_mmc4_to_wds(zip_files: list[Path], image_dir: Path) -> list[dict]:
    """open_flamingo/scripts/convert_mmc4_to_wds.py `main` (HEAD): each document line of each
    shard's zip, every `image_info[i]["image_name"]` opened from `image_dir/<shard index>/`,
    re-encoded as JPEG and stored base64 in `image_base64`; the samples it writes (`json` members)."""
    samples = []
    for idx, shard in enumerate(zip_files):
        with zipfile.ZipFile(shard, "r") as zip_file:
            json_filename = zip_file.namelist()[0]
            with zip_file.open(json_filename, "r") as json_file:
                for sample_data in json_file:
                    sample_data = json.loads(sample_data)
                    image_info = sample_data["image_info"]
                    image_names = [image["image_name"] for image in image_info]
                    for img_idx, image_name in enumerate(image_names):
                        img = Image.open(os.path.join(image_dir, str(idx), image_name)).convert("RGB")  # FileNotFoundError: it prints and skips
                        buffered = io.BytesIO()
                        img.save(buffered, format="JPEG")
                        sample_data["image_info"][img_idx]["image_base64"] = base64.b64encode(buffered.getvalue()).decode("utf-8")
                    samples.append({"json": json.dumps(sample_data).encode()})
    return samples


def _load_images(info: dict) -> tuple[list, list[int]]:
    """The images of `image_info` that carry base64 bytes over MIN_KB, with their indices."""
    images, indices = [], []
    for i, sample_image in enumerate(info["image_info"]):
        if "image_base64" not in sample_image:
            continue
        rawbytes = base64.b64decode(sample_image["image_base64"])
        if len(rawbytes) // 1000 <= MIN_KB:  # filter to images >= 10KB
            continue
        images.append(Image.open(io.BytesIO(rawbytes)).convert("RGB"))
        indices.append(i)
    return images, indices


def preprocess_interleaved(sample: tuple[bytes], tokenizer, sim_threshold: float, min_num_images: int = 1, max_num_images: int = 6, max_tokens: int = 256) -> dict:
    """open_flamingo/train/data.py `preprocess_interleaved` (HEAD): the MMC4 branch, images as PIL
    (the CLIP transform and the random flip left out). Raises ValueError where it does. Returns the
    images kept, the sentence each went before, the text and the `<image>` tokens counted after the cut."""
    from scipy.optimize import linear_sum_assignment

    info = json.loads(sample[0])
    sentences = info["text_list"]
    sim_matrix = info["similarity_matrix"]
    valid_images, valid_image_indices = _load_images(info)
    if len(valid_image_indices) == 0:
        raise ValueError("No images in sample")
    sim_matrix = np.array(sim_matrix)[valid_image_indices]  # of shape images x sentences
    image_indices, sentence_indices = linear_sum_assignment(-sim_matrix)  # one to one assignments
    images, sentence_ixs = [], []
    for i, sim_ix in zip(image_indices, sentence_indices):
        if sim_matrix[i][sim_ix] < sim_threshold:
            continue
        images.append(valid_images[i])
        sentence_ixs.append(sim_ix)
    if len(images) == 0:
        raise ValueError("No images in sample")
    keep_ixs = range(min(len(images), max_num_images))
    images = [images[ix] for ix in keep_ixs]
    sentence_ixs = [sentence_ixs[ix] for ix in keep_ixs]
    return _tokenized(sentences, images, sentence_ixs, tokenizer, min_num_images, max_tokens)


def preprocess_interleaved_v1(sample: tuple[bytes], tokenizer, sim_threshold: float, max_num_images: int = 5) -> dict:
    """open_flamingo/train/data.py `preprocess_interleaved` at OPENFLAMINGO_V1: MMC4's own fields,
    each image's `matched_sim` against the threshold and its `matched_text_index` as its place."""
    info = json.loads(sample[0])
    sentences = info["text_list"]
    images, sentence_ixs = [], []
    loaded, indices = _load_images(info)
    for image, i in zip(loaded, indices):
        if info["image_info"][i]["matched_sim"] < sim_threshold:
            continue
        images.append(image)
        sentence_ixs.append(info["image_info"][i]["matched_text_index"])
    if len(images) == 0:
        raise ValueError("No images in sample")
    keep_ixs = range(min(len(images), max_num_images))
    images = [images[ix] for ix in keep_ixs]
    sentence_ixs = [sentence_ixs[ix] for ix in keep_ixs]
    return _tokenized(sentences, images, sentence_ixs, tokenizer, 1, 256)


def _tokenized(sentences: list[str], images: list, sentence_ixs: list[int], tokenizer, min_num_images: int, max_tokens: int) -> dict:
    """Both versions' common tail: `<|endofchunk|><image>` before each image's sentence, the
    whitespace clean-up, the cut at `max_tokens`, and the checks on the `<image>` tokens left."""
    sentences = list(sentences)
    for ix in sentence_ixs:
        sentences[ix] = f"<|endofchunk|><image>{sentences[ix]}"
    text = " ".join(sentences)
    text = text.replace("<|endofchunk|>", "", 1)  # but remove first eoc
    text = text.replace(" <|endofchunk|>", "<|endofchunk|>").replace("<image> ", "<image>").replace(" <image>", "<image>")
    text = f"{text}<|endofchunk|>{tokenizer.eos_token}"
    tokenizer.padding_side = "right"
    text_tensor = tokenizer(text, max_length=max_tokens, truncation=True, padding="max_length")
    # OpenFlamingo: tokenizer.additional_special_tokens_ids[tokenizer.additional_special_tokens.index("<image>")]
    # (transformers 4.28's names; this transformers keeps the added tokens under other names)
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    num_images = sum(t == image_id for t in text_tensor["input_ids"])
    if num_images < min_num_images:
        raise ValueError(f"Fewer than {min_num_images} images in sample")
    if num_images == 1 and text_tensor["input_ids"][-1] == image_id:
        raise ValueError("Only one image at the end of sample, so labels will all be -100")
    # "num_images == 1 and random.random() <= 0.5": a single-image sample is dropped half the time (not by chance here)
    return {"images": images, "sentence_ixs": sentence_ixs, "text": text, "image_tokens": num_images}


# ---- LLaVA-NeXT (LLaVA-VL/LLaVA-NeXT) ---------------------------------------------------------
LLAVA_NEXT = "df17966"  # main
DEFAULT_IMAGE_TOKEN, IMAGE_TOKEN_INDEX = "<image>", -200  # llava/constants.py


def llava_process_image(image_folder: str, image_file: str, processor, image_aspect_ratio: str = "square"):
    """llava/train/train.py `LazySupervisedDataset.process_image` (its "pad" and default branches)."""
    image = Image.open(os.path.join(image_folder, image_file)).convert("RGB")
    image_size = image.size
    if image_aspect_ratio == "pad":

        def expand2square(pil_img, background_color):
            width, height = pil_img.size
            if width == height:
                return pil_img
            side = max(width, height)
            result = Image.new(pil_img.mode, (side, side), background_color)
            result.paste(pil_img, ((side - width) // 2, (side - height) // 2))
            return result

        image = expand2square(image, tuple(int(x * 255) for x in processor.image_mean))
    return processor.preprocess(image, return_tensors="pt")["pixel_values"][0], image_size, "image"


def llava_preprocess_multimodal(sources: list[list[dict]]) -> list[list[dict]]:
    """llava/train/train.py `preprocess_multimodal` (is_multimodal, no im_start/end, not mmtag)."""
    for source in sources:
        for sentence in source:
            num_im = len(re.findall(DEFAULT_IMAGE_TOKEN, sentence["value"]))
            if num_im == 1 and DEFAULT_IMAGE_TOKEN in sentence["value"] and not sentence["value"].startswith(DEFAULT_IMAGE_TOKEN):
                sentence["value"] = sentence["value"].replace(DEFAULT_IMAGE_TOKEN, "").strip()
                sentence["value"] = (DEFAULT_IMAGE_TOKEN + "\n" + sentence["value"]).strip()
            sentence["value"] = sentence["value"].replace("QA_GT_caption_based_noisy", "")
    return sources


def tokenizer_image_token(prompt: str, tokenizer, image_token_index: int = IMAGE_TOKEN_INDEX) -> list[int]:
    """llava/mm_utils.py `tokenizer_image_token`."""
    prompt_chunks = [tokenizer(chunk).input_ids for chunk in prompt.split("<image>")]

    def insert_separator(X, sep):
        return [ele for sublist in zip(X, [sep] * len(X)) for ele in sublist][:-1]

    input_ids, offset = [], 0
    if len(prompt_chunks) > 0 and len(prompt_chunks[0]) > 0 and prompt_chunks[0][0] == tokenizer.bos_token_id:
        offset = 1
        input_ids.append(prompt_chunks[0][0])
    for x in insert_separator(prompt_chunks, [image_token_index] * (offset + 1)):
        input_ids.extend(x[offset:])
    return input_ids


def llava_get_item(record: dict, image_folder: str, processor) -> dict:
    """llava/train/train.py `LazySupervisedDataset._get_item`, the `image` branch: a list of
    images is processed one by one ("pad" for more than one), the conversation goes through
    `preprocess_multimodal`, and each turn's `<image>` tokens become IMAGE_TOKEN_INDEX as
    `tokenizer_image_token` makes them for the `preprocess_*` templates; the model's
    `prepare_inputs_labels_for_multimodal` (llava/model/llava_arch.py) then takes one image's
    features per such token, in order."""
    image_file = record["image"]
    if type(image_file) is list:
        image = [llava_process_image(image_folder, f, processor) for f in image_file]
        if len(image_file) > 1:
            image = [llava_process_image(image_folder, f, processor, "pad") for f in image_file]
            image = [[im[0], im[1], "image"] for im in image]
    else:
        image = [llava_process_image(image_folder, image_file, processor)]
    sources = llava_preprocess_multimodal(copy.deepcopy([record["conversations"]]))
    tokenizer = bpe_tokenizer()
    input_ids = [t for turn in sources[0] for t in tokenizer_image_token(turn["value"], tokenizer)]
    return {"image": image, "input_ids": input_ids, "image_tokens": input_ids.count(IMAGE_TOKEN_INDEX), "conversations": sources[0]}
