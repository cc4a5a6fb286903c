"""PyTorch DataLoader over vidcurate shards (local folder or s3://...): frames + annotation.

    python docs/examples/torch_dataloader.py runs/sample/shard/dataset

Needs torch (not a vidcurate dependency). Each worker reads a disjoint subset of shards.
Shards are untrusted: a sample that fails the readers' checks (or whose mp4 does not decode)
is left out with a warning naming its reason; `limits=Limits(...)` bounds what one sample may hold.
"""

from __future__ import annotations

import sys

import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset

from vidcurate.schemas.readers import training_samples


class Clips(IterableDataset):
    def __init__(self, location: str, frames: int = 8, **reader_args):
        self.location, self.frames, self.reader_args = location, frames, reader_args  # e.g. limits, on_skip

    def __iter__(self):
        for item in training_samples(self.location, self.frames, workersplitter=wds.split_by_worker, **self.reader_args):
            # (T, H, W, C) uint8 -> (T, C, H, W) float in [0, 1]; times in seconds from clip start
            video = torch.from_numpy(item["frames"]).permute(0, 3, 1, 2).float() / 255
            yield {"key": item["key"], "video": video, "times_s": torch.from_numpy(item["times_s"]), "meta": item["meta"]}


if __name__ == "__main__":
    loader = DataLoader(Clips(sys.argv[1]), batch_size=None, num_workers=2)
    for i, batch in enumerate(loader):
        print(batch["key"], tuple(batch["video"].shape), batch["times_s"].tolist(), batch["meta"]["duration_s"])
        if i == 4:
            break
