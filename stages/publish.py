"""Publish a finished dataset folder to a directory or any fsspec URL (s3://, gs://, ...).

Published layout: `<dest>/index.json` (the commit point), the card and stats beside it, and the shards with their sidecars in `<dest>/<version>/`, where the version is a digest
of the dataset's bytes. A version folder is written whole before the index names it and is
never changed afterwards, so a reader following the index sees either the previous dataset or
the new one, never a mix, whatever fails mid-publish. Object-store errors are retried with
backoff; when they persist, publish raises and the previous dataset stays as it was. Version
folders the new index does not name are removed once it is in place.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from pathlib import Path

import fsspec
import yaml

from vidcurate.schemas.readers import INDEX
from vidcurate.stages.failures import is_transient

log = logging.getLogger("vidcurate")

VERSION_PREFIX = "v-"
CARD = "README.md"
SHARD_FILES = (".tar", ".parquet")  # versioned; every other file is also copied beside the index


class PublishError(RuntimeError):
    """The object store kept failing: nothing new is visible; a re-run publishes again."""

    transient = True


def dataset_version(local_dir: Path) -> str:
    """`v-<digest>` of every file's name and bytes: equal datasets share a version."""
    digest = hashlib.sha256()
    for path in sorted(p for p in local_dir.iterdir() if p.is_file()):
        digest.update(path.name.encode() + b"\0")
        with path.open("rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
    return VERSION_PREFIX + digest.hexdigest()[:16]


def relocated_card(text: str, version: str) -> str:
    """The card with its `configs` data_files pointing into the version folder (front matter
    between `---` lines, as the Hub reads it); a card without front matter is unchanged."""
    match = re.match(r"---\n(.*?)\n---\n", text, flags=re.S)
    if not match:
        return text
    meta = yaml.safe_load(match.group(1))
    for config in meta.get("configs", []):
        for files in config.get("data_files", []):
            files["path"] = f"{version}/{files['path']}"
    return "---\n" + yaml.safe_dump(meta, sort_keys=False) + "---\n" + text[match.end() :]


def publish(local_dir: Path, url: str, retries: int = 4, backoff_s: float = 1.0) -> str:
    """Copy `local_dir`'s dataset to `url`; returns the published index URL."""
    fs, root = fsspec.core.url_to_fs(url)
    root = root.rstrip("/")
    version = dataset_version(local_dir)

    def attempt(what: str, action, *args) -> None:
        for i in range(retries + 1):
            try:
                return action(*args)
            except Exception as exc:
                if not is_transient(exc) or i == retries:
                    raise PublishError(f"publishing to {url} failed at {what}: {type(exc).__name__}: {exc}") from exc
                delay = backoff_s * 2**i
                log.warning("publish: %s failed (%s), retry %d/%d in %.1f s", what, exc, i + 1, retries, delay)
                time.sleep(delay)

    names = sorted(p.name for p in local_dir.iterdir() if p.is_file())
    shards = [n for n in names if n.endswith(SHARD_FILES)]
    attempt("mkdir", fs.makedirs, f"{root}/{version}", True)
    for name in shards:  # the new version, whole, before anything names it
        attempt(name, fs.put_file, str(local_dir / name), f"{root}/{version}/{name}")
    index = json.loads((local_dir / INDEX).read_text())
    for shard in index["shardlist"]:
        shard["url"] = f"{version}/{shard['url']}"
    # the commit point: one object
    attempt(INDEX, fs.pipe_file, f"{root}/{INDEX}", json.dumps(index, indent=1).encode())
    for name in [n for n in names if n not in shards and n != INDEX]:  # card, stats
        data = (local_dir / name).read_text()
        data = relocated_card(data, version) if name == CARD else data
        attempt(name, fs.pipe_file, f"{root}/{name}", data.encode())
    for path in fs.ls(root, detail=False):
        name = path.rstrip("/").rsplit("/", 1)[-1]
        stale = name.startswith(VERSION_PREFIX) and name != version
        if stale or name.endswith(SHARD_FILES):  # older versions; shards of the unversioned layout (before 0.2)
            attempt(f"removing {name}", fs.rm, path, True)
    return f"{url.rstrip('/')}/{INDEX}"
