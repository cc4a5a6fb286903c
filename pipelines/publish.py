"""Publish a finished dataset folder to a directory or any fsspec URL (s3://, gs://, ...).

Published layout: `<dest>/index.json` (the commit point), the card and stats beside it, and the shards with their sidecars in `<dest>/<version>/`, where the version is a digest
of the dataset's bytes. A version folder is written whole before the index names it and is
never changed afterwards, so a reader following the index sees either the previous dataset or
the new one, never a mix, whatever fails mid-publish. Object-store errors are retried with
backoff; when they persist, publish raises and the previous dataset stays as it was. Version
folders the new index does not name are removed once it is in place.

A dataset shipped in partitions (pipelines/partitions.py) publishes after each one: its shards
are grouped by partition, each group in a version folder of its own bytes, and a group the
current index already names is not uploaded again, so each partition's shards travel once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Callable
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


def dataset_version(local_dir: Path, names: list[str] | None = None) -> str:
    """`v-<digest>` of the files' names and bytes (every file by default): equal files share a version."""
    digest = hashlib.sha256()
    chosen = sorted(names) if names is not None else sorted(p.name for p in local_dir.iterdir() if p.is_file())
    for path in (local_dir / name for name in chosen):
        digest.update(path.name.encode() + b"\0")
        with path.open("rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
    return VERSION_PREFIX + digest.hexdigest()[:16]


def relocated_card(text: str, versions: list[str]) -> str:
    """The card with its `configs` data_files pointing into the version folders (front matter
    between `---` lines, as the Hub reads it); a card without front matter is unchanged."""
    match = re.match(r"---\n(.*?)\n---\n", text, flags=re.S)
    if not match:
        return text
    meta = yaml.safe_load(match.group(1))
    for config in meta.get("configs", []):
        for files in config.get("data_files", []):
            pattern = files["path"]
            files["path"] = [f"{v}/{pattern}" for v in versions] if len(versions) > 1 else f"{versions[0]}/{pattern}"
    return "---\n" + yaml.safe_dump(meta, sort_keys=False) + "---\n" + text[match.end() :]


def publish(local_dir: Path, url: str, retries: int = 4, backoff_s: float = 1.0, group_of: Callable[[str], str] | None = None) -> str:
    """Copy `local_dir`'s dataset to `url`; returns the published index URL. `group_of(name)`
    splits the shards into groups of their own version folders (default: one group)."""
    fs, root = fsspec.core.url_to_fs(url)
    root = root.rstrip("/")

    def attempt(what: str, action, *args):
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
    groups: dict[str, list[str]] = {}
    for name in shards:
        groups.setdefault(group_of(name) if group_of else "", []).append(name)
    version_of = {}
    for members in groups.values():
        version = dataset_version(local_dir, members) if group_of else dataset_version(local_dir)
        version_of.update(dict.fromkeys(members, version))
    present = _published_versions(attempt("reading the index", _read_or_none, fs, f"{root}/{INDEX}"))
    for version in sorted(set(version_of.values()) - present):
        attempt("mkdir", fs.makedirs, f"{root}/{version}", True)
    for name in shards:  # each new version, whole, before anything names it
        if version_of[name] not in present:
            attempt(name, fs.put_file, str(local_dir / name), f"{root}/{version_of[name]}/{name}")
    index = json.loads((local_dir / INDEX).read_text())
    for shard in index["shardlist"]:
        shard["url"] = f"{version_of[shard['url']]}/{shard['url']}"
    # the commit point: one object
    attempt(INDEX, fs.pipe_file, f"{root}/{INDEX}", json.dumps(index, indent=1).encode())
    versions = sorted(set(version_of.values()))
    for name in [n for n in names if n not in shards and n != INDEX]:  # card, stats
        data = (local_dir / name).read_text()
        data = relocated_card(data, versions) if name == CARD and versions else data
        attempt(name, fs.pipe_file, f"{root}/{name}", data.encode())
    for path in fs.ls(root, detail=False):
        name = path.rstrip("/").rsplit("/", 1)[-1]
        stale = name.startswith(VERSION_PREFIX) and name not in versions
        if stale or name.endswith(SHARD_FILES):  # older versions; shards of the unversioned layout (before 0.2)
            attempt(f"removing {name}", fs.rm, path, True)
    return f"{url.rstrip('/')}/{INDEX}"


def partition_name(index: int) -> str:
    """A partition's name, which its shards carry (`<prefix>-p00000-000000.tar`): its publish group."""
    return f"p{index:05d}"


def partition_of(shard_name: str) -> str:
    """The partition a shard file belongs to ('' outside a partitioned run): its publish group."""
    parts = reversed(shard_name.split("-"))  # from the end: a prefix may hold a segment that looks like one
    return next((part for part in parts if len(part) == 6 and part[0] == "p" and part[1:].isdigit()), "")


def _read_or_none(fs, path: str) -> bytes | None:
    try:
        return fs.cat_file(path)
    except FileNotFoundError:
        return None


def _published_versions(index: bytes | None) -> set[str]:
    """Version folders the published index names: complete, so never uploaded again."""
    shards = json.loads(index).get("shardlist", []) if index else []
    return {s["url"].split("/", 1)[0] for s in shards if "/" in s["url"]}
