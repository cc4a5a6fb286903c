"""Publish a finished dataset folder to a directory or any fsspec URL (s3://, gs://, ...).

Every file is first written under `<dest>/_staging/` and then moved to its final name, so a
reader never sees half a file; `index.json` goes last and is the commit point: a crash
mid-publish leaves the previous index (and complete files) in place. Files the new index no
longer lists are removed afterwards.
"""

from __future__ import annotations

import json
from pathlib import Path

import fsspec

from schemas.readers import INDEX

STAGING = "_staging"


def publish(local_dir: Path, url: str) -> str:
    """Copy `local_dir`'s files to `url`; returns the published index URL."""
    fs, root = fsspec.core.url_to_fs(url)
    root = root.rstrip("/")
    fs.makedirs(root, exist_ok=True)
    staging = f"{root}/{STAGING}"
    fs.makedirs(staging, exist_ok=True)
    names = sorted(p.name for p in local_dir.iterdir() if p.is_file())
    for name in [n for n in names if n != INDEX] + [INDEX]:
        fs.put_file(str(local_dir / name), f"{staging}/{name}")
        fs.mv(f"{staging}/{name}", f"{root}/{name}")
    listed = {s["url"] for s in json.loads((local_dir / INDEX).read_text())["shardlist"]}
    for path in fs.ls(root, detail=False):
        name = path.rstrip("/").rsplit("/", 1)[-1]
        stem = name.rsplit(".", 1)[0]
        if name.endswith((".tar", ".parquet")) and f"{stem}.tar" not in listed:
            fs.rm(path)
    if fs.exists(staging):
        fs.rm(staging, recursive=True)
    return f"{url.rstrip('/')}/{INDEX}"
