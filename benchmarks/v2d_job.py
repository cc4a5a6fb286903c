"""video2dataset's side of benchmarks/pipeline_bench.py; runs inside video2dataset's own venv.

    v2d-venv/bin/python benchmarks/v2d_job.py LIST.parquet OUT_DIR --height 360 --min-s 1 --max-s 30 --processes 2

Its download worker does the job: cut detection (PySceneDetect ContentDetector), precise
clipping (ffmpeg segment muxer with forced keyframes), resize to `--height`, WebDataset.
video2dataset 1.3.0's package imports every worker at start-up; the caption, whisper and
optical-flow workers import torch 2.1.2, torchaudio, torchdata, transformers, decord and wandb,
none of which the download worker calls. Those modules are not installed: one import hook
answers them with inert placeholders, so a call into any of them would fail the job loudly.
"""

from __future__ import annotations

import argparse
import importlib.abc
import importlib.machinery
import json
import sys
import time
import types

ABSENT = ("torch", "torchaudio", "torchdata", "transformers", "decord", "einops", "wandb", "langdetect", "accelerate")


class _Inert(type):
    """A placeholder class: attributes, calls and subclassing give more placeholders."""

    def __getattr__(cls, name):
        return _Inert(name, (), {})

    def __call__(cls, *args, **kwargs):
        return args[0] if len(args) == 1 and callable(args[0]) and not kwargs else _Inert("result", (), {})


class _AbsentFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ABSENT:
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        module = types.ModuleType(spec.name)
        module.__path__ = []
        module.__getattr__ = lambda attr: _Inert(attr, (), {})
        return module

    def exec_module(self, module):
        pass


# At import, not in main(): the multiprocessing distributor's spawned workers import this file.
sys.meta_path.insert(0, _AbsentFinder())
# video2dataset 1.3.0 (PyPI's newest) sets `encode_format` on its resolution subsampler while its
# download worker reads `encode_formats`, so every video fails; give it the attribute it reads.
from video2dataset.subsamplers import ResolutionSubsampler  # noqa: E402

ResolutionSubsampler.encode_formats = property(lambda self: {"video": self.encode_format})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url_list")
    parser.add_argument("out_dir")
    parser.add_argument("--height", type=int, default=360)
    parser.add_argument("--min-s", type=float, default=1.0)
    parser.add_argument("--max-s", type=float, default=30.0)
    parser.add_argument("--threshold", type=float, default=27.0, help="ContentDetector threshold (its default)")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--tmp", default="/tmp")
    args = parser.parse_args()
    from video2dataset import video2dataset

    config = {
        "subsampling": {
            "CutDetectionSubsampler": {
                "cuts_are_clips": True,
                "args": {"cut_detection_mode": "all", "threshold": args.threshold, "min_scene_len": 15},
            },
            "ClippingSubsampler": {
                "args": {"min_length": args.min_s, "max_length": args.max_s, "max_length_strategy": "all", "precision": "exact"}
            },
            "ResolutionSubsampler": {"args": {"video_size": -1, "height": args.height, "resize_mode": "scale"}},
        },
        "reading": {"yt_args": {"download_size": 360, "download_audio_rate": 44100, "yt_metadata_args": {}}, "timeout": 60, "sampler": None},
        "storage": {"number_sample_per_shard": 1, "oom_shard_count": 5, "captions_are_subtitles": False},
        "distribution": {"processes_count": args.processes, "thread_count": 1, "subjob_size": 1000, "distributor": "multiprocessing"},
    }
    started = time.monotonic()
    video2dataset(
        url_list=args.url_list,
        input_format="parquet",
        url_col="url",
        output_folder=args.out_dir,
        output_format="webdataset",
        encode_formats={"video": "mp4"},
        tmp_dir=args.tmp,
        config=config,
    )
    print(json.dumps({"seconds": round(time.monotonic() - started, 2)}))


if __name__ == "__main__":
    main()
