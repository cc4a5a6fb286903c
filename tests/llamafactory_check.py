"""Run by tests/test_alignment.py in a separate LLaMA-Factory environment (its pins conflict
with vidcurate's): LLaMA-Factory's own SFT data pipeline (dataset_info.json entry, sharegpt
parser and converter, qwen2_vl template and multimodal plugin) over the llamafactory export,
with the tiny Qwen2-VL's tokenizer and processor. Prints one JSON line of counts."""

import json
import sys


def main() -> None:
    from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
    from llamafactory.hparams import get_train_args
    from llamafactory.model import load_tokenizer

    export_dir, model_dir, out_dir = sys.argv[1:4]
    args = {
        "stage": "sft",
        "do_train": True,
        "model_name_or_path": model_dir,
        "dataset": "vidcurate",
        "dataset_dir": export_dir,
        "template": "qwen2_vl",
        "finetuning_type": "full",
        "cutoff_len": 8192,
        "video_fps": 2.0,
        "video_maxlen": 8,
        "output_dir": out_dir,
        "overwrite_cache": True,
        "preprocessing_num_workers": 1,
        "report_to": "none",
    }
    model_args, data_args, training_args, *_ = get_train_args(args)
    tokenizer_module = load_tokenizer(model_args)
    tokenizer = tokenizer_module["tokenizer"]
    template = get_template_and_fix_tokenizer(tokenizer, data_args)
    module = get_dataset(template, model_args, data_args, training_args, "sft", **tokenizer_module)
    rows = list(module["train_dataset"])
    video_pad = tokenizer.convert_tokens_to_ids("<|video_pad|>")
    print(
        json.dumps(
            {
                "records": len(rows),
                "with_video_tokens": sum(video_pad in r["input_ids"] for r in rows),
                "with_labels": sum(any(t != -100 for t in r["labels"]) for r in rows),
                "videos": sum(len(r.get("videos") or []) for r in rows),
            }
        )
    )


if __name__ == "__main__":
    main()
