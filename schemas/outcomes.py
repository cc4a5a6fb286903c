"""Every reason code a row can end with, by stage: the ledger's vocabulary in one place.

A reason reads `code: detail`. README's "Ledger reasons" table is generated from this
(`python -m vidcurate.schemas.outcomes`; tests/test_outcomes.py checks that the two agree), and the
end-to-end tests check that every reason a run wrote has its code here.
"""

from __future__ import annotations

import re

from vidcurate.schemas.tables import FAILED, REJECTED

# stage -> code -> (status, what it means). Quality's rejections are named by their failing
# rules instead (RULE_CODE), e.g. `motion` or `ocr_coverage+nsfw`.
REASONS: dict[str, dict[str, tuple[str, str]]] = {
    "probe": {
        "outside_root": (REJECTED, "a symlink in the input directory that leads outside it"),
        "empty": (REJECTED, "a zero-byte file"),
        "unreadable": (REJECTED, "not a media container FFmpeg can open"),
        "no_video_stream": (REJECTED, "streams present, none of them video"),
        "bad_dimensions": (REJECTED, "declared width or height not positive"),
        "too_large": (REJECTED, "file bytes or declared size over `probe.max_*` (decoder bombs)"),
        "undecodable": (REJECTED, "the first frame does not decode"),
        "no_frames": (REJECTED, "no packets, or no frame decodes"),
        "truncated": (REJECTED, "the data ends before the frames or duration the file declares"),
        "too_short": (REJECTED, "shorter than `probe.min_duration_s`"),
        "too_long": (REJECTED, "longer than `probe.max_duration_s`"),
        "duplicate": (REJECTED, "the same bytes as an earlier input"),
        "read": (FAILED, "the file could not be read (I/O; transient ones are retried)"),
    },
    "split": {
        "black": (REJECTED, "black runs, lead-ins and fade gaps, cut out of the clips"),
        "static": (REJECTED, "a frozen start before the picture moves (`split.static_lead_in_s`)"),
        "too_short": (REJECTED, "a shot shorter than `split.min_clip_s` with `short_shots: drop`"),
        "split": (FAILED, "shot detection failed for the whole video"),
        "extract": (FAILED, "the clip's file could not be cut or encoded"),
    },
    "caption": {
        "invalid_output": (FAILED, "no answer passed the grammar in `caption.max_attempts` tries (raw answer kept)"),
        "backend": (FAILED, "the model or server failed (unreachable, 5xx, out of memory: transient)"),
        "frames": (FAILED, "the clip's frames could not be read (split's stored frames, else the clip decoded)"),
    },
    "ground": {
        "no_grounding": (REJECTED, "no caption or events to ground"),
    },
    "embed": {
        "frames": (FAILED, "the clip's keyframes could not be read (split's stored frames, else the clip decoded)"),
        "embed": (FAILED, "the encoder failed"),
    },
    "quality": {
        "score": (FAILED, "a score could not be computed"),
    },
    "dedup": {
        "dedup": (REJECTED, "`duplicate_of=<clip_id> (exact|near|semantic|shipped)`: a copy is kept, or an earlier run shipped it"),
    },
    "shard": {
        "write": (FAILED, "the sample could not be written into a shard"),
    },
}
# A video that passed probe but whose clips all ended rejected or failed (stage: its first
# such clip's), with the counts and that clip's reason.
VIDEO_CODE = ("no_clip_kept", "every clip of the video was rejected or failed; the counts and the first clip's reason")
RULE_CODE = re.compile(r"^[a-z][a-z0-9_]*(\+[a-z][a-z0-9_]*)*$")  # quality: the failing scores, joined by +


def code_of(reason: str | None) -> str:
    return (reason or "").split(":", 1)[0].strip()


def known(stage: str, status: str, reason: str | None) -> bool:
    """Whether a row's (stage, status, reason) uses the vocabulary above."""
    code = code_of(reason)
    if code == VIDEO_CODE[0]:
        return True
    if stage == "quality" and status == REJECTED:
        return bool(RULE_CODE.match(code))
    return REASONS.get(stage, {}).get(code, (None,))[0] == status


def reasons_table() -> str:
    """The Markdown table README's "Ledger reasons" holds."""
    lines = ["| stage | status | code | meaning |", "|---|---|---|---|"]
    for stage, codes in REASONS.items():
        if stage == "quality":
            lines.append("| quality | rejected | the failing rules' scores, joined by `+` | e.g. `motion: motion=0.003 (min 0.01)`, `ocr_coverage+nsfw: ...` |")
        lines += [f"| {stage} | {status} | `{code}` | {meaning} |" for code, (status, meaning) in codes.items()]
    lines.append(f"| any (video) | rejected or failed | `{VIDEO_CODE[0]}` | {VIDEO_CODE[1]} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(reasons_table())
