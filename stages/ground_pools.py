"""The ground stage's instruction pools: many phrasings per task, one drawn per item.

A model tuned on one sentence per task learns that sentence; TimeIT and TimePro draw each
instruction from a pool, and TimePro's multi-format grounding varies the answer's form too. The
pools ship as data (`ground_pools.yaml` beside this module); `ground.templates: PATH` replaces the
tasks a file names, or extends them (`extend: true`). Every phrasing is checked when the config
loads: a placeholder its task does not fill, a task that does not exist or an empty pool is an
error before any work. A draw is seeded by the item's key, so re-runs phrase every item alike.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from vidcurate.schemas.tables import stable_int

SHIPPED = Path(__file__).with_name("ground_pools.yaml")
PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
TIMES = frozenset({"span0", "start0", "end0"})  # the item's first span, rendered by each exporter
NEGATIVES = "negatives"  # the answers of a query from another video


@dataclass(frozen=True)
class Form:
    """What a task's phrasings may name (`question`, `answer`) and must name (`needs_*`: each
    set is a choice, one of its names must appear); `pairs`: question and answer come together."""

    question: frozenset = frozenset()
    answer: frozenset = frozenset()
    needs_question: tuple[frozenset, ...] = ()
    needs_answer: tuple[frozenset, ...] = ()
    pairs: bool = False


def _form(question=(), answer=(), needs_question=(), needs_answer=(), pairs=False) -> Form:
    sets = lambda names: tuple(frozenset(n) if isinstance(n, (set, frozenset)) else frozenset({n}) for n in names)  # noqa: E731
    return Form(frozenset(question), frozenset(answer), sets(needs_question), sets(needs_answer), pairs)


FORMS = {
    "temporal_video_grounding": _form({"event"}, {"spans"}, ["event"], ["spans"]),
    NEGATIVES: _form(),
    "multi_format_temporal_grounding": _form({"event", *TIMES}, {"event", *TIMES}, pairs=True),
    "dense_video_captioning": _form((), {"events"}, (), ["events"]),
    "video_summarization": _form((), {"moments"}, (), ["moments"]),
    "step_localization": _form((), {"steps"}, (), ["steps"]),
    "transcribed_speech_generation": _form((), {"transcript"}, (), ["transcript"]),
    "reasoning_temporal_localization": _form({"question"}, {"reason", *TIMES}, ["question"], ["reason", TIMES]),
    "highlight_detection": _form({"query"}, {"moments"}, ["query"], ["moments"]),
    "temporal_grounded_caption": _form((), {"segments"}, (), ["segments"]),
    "temporal_ordering": _form({"event"}, {"next", *TIMES}, ["event"], ["next", TIMES]),
    "multiple_choice": _form({"options", *TIMES}, {"answer"}, ["options", TIMES], ["answer"]),
}


class PoolError(ValueError):
    """A pools file that cannot be used; the message names the file, the task and the phrasing."""


@dataclass(frozen=True)
class Pools:
    """Phrasings by task: `questions` and `answers`, or `pairs` of (question, answer)."""

    tasks: dict[str, dict[str, list]] = field(default_factory=dict)

    @property
    def digest(self) -> str:
        """What the pools say, as a fingerprint: a changed phrasing re-runs the stage."""
        return hashlib.sha256(json.dumps(self.tasks, sort_keys=True).encode()).hexdigest()[:16]

    def question(self, task: str, key: str) -> str:
        return _draw(self.tasks[task]["questions"], f"{key}/q")

    def answer(self, task: str, key: str) -> str:
        return _draw(self.tasks[task]["answers"], f"{key}/a")

    def pair(self, task: str, key: str) -> tuple[str, str]:
        entry = _draw(self.tasks[task]["pairs"], f"{key}/qa")
        return entry["q"], entry["a"]


def _draw(pool: list, key: str):
    return pool[stable_int(key) % len(pool)]


def load_pools(path: str | Path | None) -> Pools:
    """The shipped pools, with the tasks `path` names replacing (or, `extend: true`, joining)
    theirs; every phrasing checked against its task's form."""
    tasks = _read(SHIPPED)
    if path is not None:
        user = _read(Path(path))
        extend = user.pop("extend", False)
        if not isinstance(extend, bool):
            raise PoolError(f"{path}: `extend` must be true or false, got {extend!r}")
        for task, lists in user.items():
            tasks[task] = {k: [*tasks[task].get(k, []), *v] for k, v in lists.items()} if extend else lists
    for task, lists in tasks.items():
        _check_task(path or SHIPPED, task, lists)
    missing = sorted(set(FORMS) - set(tasks))
    if missing:
        raise PoolError(f"{path or SHIPPED}: no pool for {missing}")
    return Pools(tasks)


def _read(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise PoolError(f"ground.templates: cannot read {path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise PoolError(f"{path}: not YAML: {exc}") from None
    if not isinstance(data, dict):
        raise PoolError(f"{path}: the top level must map task names to their pools")
    unknown = sorted(set(data) - set(FORMS) - {"extend"})
    if unknown:
        raise PoolError(f"{path}: unknown task {unknown[0]!r}; tasks: {', '.join(FORMS)}")
    return data


def _check_task(path, task: str, lists) -> None:
    form = FORMS[task]
    expected = {"pairs"} if form.pairs else {"answers"} if task == NEGATIVES else {"questions", "answers"}
    if not isinstance(lists, dict) or set(lists) != expected:
        raise PoolError(f"{path}: {task} must have exactly {sorted(expected)}, got {sorted(lists) if isinstance(lists, dict) else lists!r}")
    for name, pool in lists.items():
        if not isinstance(pool, list) or not pool:
            raise PoolError(f"{path}: {task}.{name} is an empty pool: give at least one phrasing")
        for entry in pool:
            if form.pairs:
                _check_pair(path, task, entry)
            else:
                _check_text(path, task, entry, form.question if name == "questions" else form.answer,
                            form.needs_question if name == "questions" else form.needs_answer)


def _check_pair(path, task: str, entry) -> None:
    if not isinstance(entry, dict) or set(entry) != {"q", "a"}:
        raise PoolError(f"{path}: {task}: each pair is {{q: ..., a: ...}}, got {entry!r}")
    form = FORMS[task]
    q = _check_text(path, task, entry["q"], form.question, ())
    a = _check_text(path, task, entry["a"], form.answer, ())
    if not (("event" in q and a & TIMES) or (q & TIMES and "event" in a)):
        raise PoolError(f"{path}: {task}: a pair names {{event}} on one side and a time ({{span0}}, {{start0}}, {{end0}}) on the other: {entry!r}")


def _check_text(path, task: str, text, allowed: frozenset, needs: tuple[frozenset, ...]) -> set[str]:
    if not isinstance(text, str) or not text.strip():
        raise PoolError(f"{path}: {task}: a phrasing must be non-empty text, got {text!r}")
    names = set(PLACEHOLDER.findall(text))
    unknown = sorted(names - allowed)
    if unknown:
        raise PoolError(f"{path}: {task}: unknown placeholder {{{unknown[0]}}} in {text!r}; {task} fills {_listing(allowed)}")
    if "{" in PLACEHOLDER.sub("", text) or "}" in PLACEHOLDER.sub("", text):
        raise PoolError(f"{path}: {task}: an unmatched brace in {text!r}")
    for choice in needs:
        if not names & choice:
            raise PoolError(f"{path}: {task}: {text!r} must name {' or '.join(f'{{{n}}}' for n in sorted(choice))}")
    return names


def _listing(names: frozenset) -> str:
    return ", ".join(f"{{{n}}}" for n in sorted(names)) or "no placeholder"


def fill(text: str, **values: str) -> str:
    """A phrasing with its content placeholders filled; time placeholders stay for the exporters.
    Text from the data must come through `safe` (its braces would read as placeholders)."""
    return PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), text)


def safe(text: str) -> str:
    """Text from the data (event texts, captions, queries) as it may stand in QA text."""
    return text.replace("{", "(").replace("}", ")")
