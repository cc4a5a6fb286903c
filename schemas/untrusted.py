"""Shards are untrusted input: the one place every reader of shards checks a sample before use.

Users read shards others made (shared buckets, hub downloads). webdataset 1.0.2 groups tar
members by name as they stand: a key `../../pwned` or `/tmp/x` reaches whoever joins it into a
path, links and devices vanish without a word, a member of any size is read into memory, and a
cut tar or a key repeated within a sample raises out of the whole read. Here each tar is read
with these checks instead, and a sample that fails one is left out with a reason `code: detail`
(REASONS), reported to the reader's `on_skip`, while every good sample beside it is read as usual.
"""

from __future__ import annotations

import json
import logging
import re
import tarfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from vidcurate.schemas.sample import SAMPLE_SCHEMA, VALIDATORS as SCHEMA_VALIDATORS

# The project's sample key (`<video_id>_<start_ms>_<end_ms>`, windows `<video_id>_w<start_ms>_<end_ms>`),
# the sample schema's own pattern; ASCII digits only, and a whole-string match (`$` would allow a
# trailing newline). Real keys are about 40 characters.
KEY = re.compile(SAMPLE_SCHEMA["properties"]["clip_id"]["pattern"], re.ASCII)
MAX_KEY_CHARS = 128
MAX_HEADER_BYTES = 1 << 20  # a pax or GNU long-name header: tarfile reads it whole before any check of ours
REQUIRED = ("json", "mp4")
SPAN_REF = re.compile(r"\{span(\d+)\}")  # how QA text names its spans (stages/ground.py, pipelines/export.py)
VALIDATORS: dict[str, Callable[[dict], None]] = SCHEMA_VALIDATORS  # every schema_version this reader knows (1.4.0, 1.3.0, 1.2.0)

REASONS = {  # README's table under "Reading the shards" is generated from this (python -m vidcurate.schemas.untrusted)
    "truncated": "the tar ends inside a member or a header, or without its end-of-archive blocks",
    "bad_tar": "a member header that is not a tar header (bad checksum, an extended header over 1 MiB): the rest of the shard",
    "unsafe_path": "a member name that is absolute or has a `..` component",
    "link": "a symlink or hard link member",
    "special": "a device, FIFO or other member that is not a regular file",
    "bad_key": f"a key that is not the project's (`<video_id>_[w]<start_ms>_<end_ms>`, at most {MAX_KEY_CHARS} characters)",
    "too_large": "a `json` over the json limit, or a sample's members together over the sample limit",
    "duplicate_key": "a key an earlier sample of the same shard had (`export`: of any shard)",
    "missing_member": "no `json` or no `mp4` member",
    "not_utf8": "the `json` member is not UTF-8",
    "bad_json": "the `json` member is not one JSON object (syntax, a field twice, NaN, nested too deep)",
    "unknown_version": "a `schema_version` this reader has no schema for",
    "schema": "the annotation violates the sample schema of its version, or its QA text names a span it lacks",
    "key_mismatch": "the annotation's `clip_id` is not the sample's key",
    "undecodable": "`training_samples`: the `mp4` does not decode",
    "outside_output": "`export`: the media path would resolve outside the export folder (a link planted there)",
}

log = logging.getLogger("vidcurate")


@dataclass(frozen=True)
class Limits:
    """Bytes a reader holds in memory for one sample: every member together, and the `json`
    (parsed JSON takes several times its bytes). Defaults: shard.maxsize's, and far above the
    few kB an annotation takes."""

    sample_bytes: int = 1 << 30
    json_bytes: int = 16 << 20


@dataclass(frozen=True)
class Skipped:
    """A sample left out (`key` None: the rest of a shard), with its reason."""

    shard: str
    key: str | None
    code: str
    detail: str

    @property
    def reason(self) -> str:
        return f"{self.code}: {self.detail}"

    def __str__(self) -> str:
        return printable(f"{self.shard} {self.key if self.key is not None else '(rest of shard)'}: {self.reason}")


class Rejected(Exception):
    """A check that failed: a code from REASONS and a detail of bounded length."""

    def __init__(self, code: str, detail: str):
        assert code in REASONS, code
        self.code, self.detail = code, detail if len(detail) <= 300 else detail[:300] + "..."
        super().__init__(f"{code}: {self.detail}")


def printable(text: str, keep: str = "") -> str:
    """`text` with every character a terminal could act on (controls, escapes, bidi and other
    format characters, line separators, surrogates) written as a `\\uXXXX` escape, which is also
    valid inside JSON text; characters in `keep` stay."""
    return "".join(ch if ch.isprintable() or ch in keep else (f"\\u{ord(ch):04x}" if ord(ch) <= 0xFFFF else f"\\U{ord(ch):08x}") for ch in text)


def log_skipped(skipped: Skipped) -> None:
    """Readers' default report: one warning line per sample left out."""
    log.warning("skipped %s", skipped)


def inside(path: Path, folder: Path) -> bool:
    """Whether `path`, every symlink followed, stays under `folder`."""
    return path.resolve().is_relative_to(folder.resolve())


def check_key(key: str) -> None:
    if len(key) > MAX_KEY_CHARS:
        raise Rejected("bad_key", f"{len(key)} characters (at most {MAX_KEY_CHARS})")
    if not KEY.fullmatch(key):
        raise Rejected("bad_key", f"{key!r} is not <video_id>_[w]<start_ms>_<end_ms>")


def annotation(data: bytes, key: str) -> dict:
    """The `json` member of sample `key`, parsed and valid under the schema of its version."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Rejected("not_utf8", f"byte {exc.start}: {exc.reason}") from None
    try:
        meta = json.loads(text, object_pairs_hook=_fields_once, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        raise Rejected("bad_json", f"{type(exc).__name__}: {exc}") from None
    if not isinstance(meta, dict):
        raise Rejected("bad_json", f"a JSON {type(meta).__name__}, not an object")
    version = meta.get("schema_version")
    validate = VALIDATORS.get(version) if isinstance(version, str) else None
    if validate is None:
        raise Rejected("unknown_version", f"{version!r} (this reader knows {', '.join(VALIDATORS)})")
    try:
        validate(meta)
    except (ValueError, RecursionError) as exc:
        raise Rejected("schema", str(exc)) from None
    for i, item in enumerate((meta.get("grounding") or {}).get("qa", [])):
        for k in SPAN_REF.findall(item["question"] + item["answer"]):
            if int(k) >= len(item["spans"]):
                raise Rejected("schema", f"grounding/qa/{i} names {{span{k}}} but has {len(item['spans'])} spans")
    if meta["clip_id"] != key:
        raise Rejected("key_mismatch", f"clip_id {meta['clip_id']!r}")
    return meta


def _fields_once(pairs: list[tuple[str, object]]) -> dict:
    fields = dict(pairs)
    if len(fields) < len(pairs):
        names = [name for name, _ in pairs]
        raise ValueError(f"field {next(n for n in names if names.count(n) > 1)!r} twice")
    return fields


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


class _Header(tarfile.TarInfo):
    """tarfile ends an archive without a word at a cut or corrupt header after the first: this
    remembers the header error on the archive (`ended_by`), so a cut tar is told from a whole one;
    and refuses extended headers (pax, GNU long names) too large to hold."""

    @classmethod
    def fromtarfile(cls, tar: tarfile.TarFile) -> tarfile.TarInfo:
        try:
            return super().fromtarfile(tar)
        except tarfile.HeaderError as exc:
            tar.ended_by = exc
            raise

    def _proc_member(self, tar: tarfile.TarFile):  # tarfile's dispatch on the header's type
        if self.type in (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE, tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK) and self.size > MAX_HEADER_BYTES:
            raise tarfile.SubsequentHeaderError(f"extended header of {self.size} bytes (at most {MAX_HEADER_BYTES})")
        return super()._proc_member(tar)


# webdataset's grouping: a member `<key>.<suffix>` belongs to sample <key> (up to the file name's first dot)
_MEMBER = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")


class _Sample:
    """Consecutive members with one key, and the first check they failed."""

    def __init__(self, key: str, shard: str, seen: set[str]):
        self.key, self.shard, self.members, self.size = key, shard, {}, 0
        self.problem: Rejected | None = None
        try:  # applies from its first member on, after that member's own checks (unsafe_path first)
            if key in seen:
                raise Rejected("duplicate_key", "an earlier sample of this shard has it")
            check_key(key)
            self.key_problem = None
        except Rejected as exc:
            self.key_problem = exc
        seen.add(key)

    def add(self, info: tarfile.TarInfo, suffix: str, tar: tarfile.TarFile, limits: Limits) -> None:
        self.members[suffix] = None  # the name counts for grouping even when its bytes are not read
        self.problem = self.problem or _member_problem(info, suffix, self.size, limits) or self.key_problem
        if self.problem is None:
            self.members[suffix] = tar.extractfile(info).read()
            self.size += info.size

    def result(self) -> dict | Skipped:
        try:
            if self.problem:
                raise self.problem
            missing = [m for m in REQUIRED if m not in self.members]
            if missing:
                raise Rejected("missing_member", f"no {' or '.join(missing)} (members: {', '.join(sorted(self.members))})")
            annotation(self.members["json"], self.key)
        except Rejected as exc:
            return Skipped(self.shard, self.key, exc.code, exc.detail)
        return {"__key__": self.key, "__url__": self.shard, **self.members}


_SPECIAL = {tarfile.CHRTYPE: "character device", tarfile.BLKTYPE: "block device", tarfile.FIFOTYPE: "FIFO"}


def _member_problem(info: tarfile.TarInfo, suffix: str, sample_size: int, limits: Limits) -> Rejected | None:
    name = info.name
    if name.startswith("/") or ".." in PurePosixPath(name).parts:
        return Rejected("unsafe_path", repr(name))
    if info.issym() or info.islnk():
        return Rejected("link", f"{name!r} is a {'symlink' if info.issym() else 'hard link'} to {info.linkname!r}")
    if not info.isreg():
        return Rejected("special", f"{name!r} is a {_SPECIAL.get(info.type, f'member of tar type {info.type!r}')}")
    if suffix == "json" and info.size > limits.json_bytes:
        return Rejected("too_large", f"{name!r} is {info.size} bytes (json: at most {limits.json_bytes})")
    if sample_size + info.size > limits.sample_bytes:
        return Rejected("too_large", f"{name!r} brings the sample to {sample_size + info.size} bytes (at most {limits.sample_bytes})")
    return None


def shard_samples(stream: BinaryIO, shard: str, limits: Limits) -> Iterator[dict | Skipped]:
    """The samples of one tar stream in order, each a dict of its members (webdataset's layout:
    `__key__`, `__url__`, `json`, `mp4`, ...) once every check passed, else a Skipped.

    A member's bytes are read only after its name, type and size passed. A cut or corrupt tar
    ends the shard, and the sample it was reading is skipped with that reason. Keys are
    remembered per shard (memory bounded by the shard), so a reader that revisits shards
    (resampling) reads them again."""
    seen: set[str] = set()
    sample: _Sample | None = None
    last = None
    try:
        tar = tarfile.open(fileobj=stream, mode="r|", tarinfo=_Header)
        for info in tar:
            tar.members = []  # stream mode keeps every header otherwise
            if info.isdir():
                continue  # names nothing a reader uses
            last = info.name
            match = _MEMBER.match(info.name)
            key, suffix = (match.group(1), match.group(2).lower()) if match else (info.name, "")
            if sample is None or key != sample.key or suffix in sample.members:
                if sample is not None:
                    yield sample.result()
                sample = _Sample(key, shard, seen)
            sample.add(info, suffix, tar, limits)
        end = _end_problem(getattr(tar, "ended_by", None), last)
    except tarfile.TarError as exc:
        cut = str(exc) == "unexpected end of data"
        where = f"inside {last!r}" if cut and last else f"after {last!r}" if last else "at its start"
        end = Rejected("truncated" if cut else "bad_tar", f"{exc} {where}")
    if end is None:
        if sample is not None:
            yield sample.result()
    else:
        yield Skipped(shard, sample.key if sample is not None else None, end.code, end.detail)


def _end_problem(ended_by: tarfile.HeaderError | None, last: str | None) -> Rejected | None:
    """What the header that ended the archive says: None for the end-of-archive blocks."""
    if isinstance(ended_by, tarfile.EOFHeaderError):
        return None
    if isinstance(ended_by, (tarfile.EmptyHeaderError, tarfile.TruncatedHeaderError)):
        return Rejected("truncated", f"the tar ends without its end-of-archive blocks after {last!r}")
    return Rejected("bad_tar", f"{ended_by} after {last!r}: the rest of the shard is unreadable")


def checked_samples(
    sources: Iterable[dict], limits: Limits, on_skip: Callable[[Skipped], None], handler: Callable[[Exception], bool]
) -> Iterator[dict]:
    """A webdataset pipeline stage in place of its tar expander and grouper: opened shards
    (`url`, `stream`) in, checked samples out; each sample left out goes to `on_skip`. Other
    errors (I/O) go to webdataset's `handler`, as in webdataset."""
    for source in sources:
        try:
            for item in shard_samples(source["stream"], source["url"], limits):
                if isinstance(item, Skipped):
                    on_skip(item)
                else:
                    yield {**item, **({"__local_path__": source["local_path"]} if "local_path" in source else {})}
        except Exception as exc:  # noqa: BLE001 - webdataset's contract: the handler decides
            if handler(exc):
                continue
            break
        finally:
            source["stream"].close()


def reasons_table() -> str:
    """The Markdown table README's "Reading the shards" holds."""
    return "\n".join(["| code | the sample left out |", "|---|---|", *(f"| `{code}` | {meaning} |" for code, meaning in REASONS.items())])


if __name__ == "__main__":
    print(reasons_table())
