"""`vidcurate report RUN`: one self-contained HTML page (inline CSS, SVG and JPEG thumbnails,
no scripts) showing what a run kept, what it dropped and why, and where each clip came from.

Every string from the data (file names, reasons, model output) is HTML-escaped: input names
and captions are hostile.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections import Counter
from pathlib import Path

import av
import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from vidcurate.pipelines.cost import describe_run_cost, run_cost
from vidcurate.pipelines.export import render
from vidcurate.pipelines.ledger import reason_code
from vidcurate.pipelines.store import StageStore
from vidcurate.stages.registry import CLIP_SOURCE, SHIPPER, STAGES, VIDEO_SOURCE
from vidcurate.stages.media import local_copy

THUMB_WIDTH = 160
STATUS_COLOURS = {"kept": "#2e7d32", "rejected": "#9e9e9e", "failed": "#c62828"}
CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;max-width:1200px}
h1{font-size:22px}h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ddd}
.bar{height:22px;background:#1565c0;color:#fff;padding-left:6px;white-space:nowrap;margin:3px 0}
table{border-collapse:collapse}td,th{border:1px solid #ddd;padding:3px 8px;text-align:left}
.gallery{display:flex;flex-wrap:wrap;gap:10px}.card{width:170px;font-size:11px;word-break:break-all}
.card img{width:160px;display:block;border:3px solid #ccc}.kept img{border-color:#2e7d32}
.rejected img{border-color:#9e9e9e}.failed img{border-color:#c62828}
figure{display:inline-block;margin:0 16px 12px 0}.timeline{margin:6px 0 14px}.legend span{display:inline-block;width:12px;height:12px;margin:0 4px 0 12px}
"""


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _jpeg_data_uri(rgb: np.ndarray) -> str:
    image = Image.fromarray(rgb)
    image = image.resize((THUMB_WIDTH, max(1, round(image.height * THUMB_WIDTH / image.width))))
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def _frame_at(uri: str, seconds: float, rotation: int = 0) -> np.ndarray | None:
    """The first frame at or after `seconds` (from the stream start), upright; None if unreadable."""
    try:
        with local_copy(uri) as path, av.open(path) as container:
            stream = container.streams.video[0]
            start = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
            container.seek(int((start + seconds) / stream.time_base), stream=stream, backward=True)
            for frame in container.decode(stream):
                if frame.time is not None and frame.time >= start + seconds - 1e-3:
                    return np.rot90(frame.to_ndarray(format="rgb24"), k=rotation // 90)
    except Exception:  # noqa: BLE001 - a thumbnail is optional; the card says so
        return None
    return None


def _histogram_svg(values: list[float], title: str, bins: int = 12) -> str:
    if not values:
        return f"<p>{_e(title)}: no values</p>"
    counts, edges = np.histogram(values, bins=bins)
    w, h, top = 480, 140, max(counts.max(), 1)
    bw = w / bins
    bars = "".join(
        f'<rect x="{i * bw:.1f}" y="{h - c / top * h:.1f}" width="{bw - 2:.1f}" height="{c / top * h:.1f}" fill="#1565c0">'
        f"<title>{edges[i]:.1f}-{edges[i + 1]:.1f}: {c}</title></rect>"
        for i, c in enumerate(counts)
    )
    axis = f'<text x="0" y="{h + 14}" font-size="11">{edges[0]:.1f}</text><text x="{w - 30}" y="{h + 14}" font-size="11">{edges[-1]:.1f}</text>'
    return f'<figure><figcaption>{_e(title)}</figcaption><svg width="{w}" height="{h + 18}" role="img">{bars}{axis}</svg></figure>'


def _timeline_svg(video: dict, clips: list[dict]) -> str:
    """Clip spans coloured by status; below them each captioned clip's events (blue) and a
    mark per grounded QA item at the start of its first span (orange), at source time."""
    duration = max(float(video["duration_s"] or 0), max((c["end_s"] for c in clips), default=0), 1e-3)
    w = 1000
    x = lambda t: t / duration * w  # noqa: E731
    events = "".join(
        f'<rect class="event" x="{x(c["start_s"] + e["start_s"]):.1f}" y="21" width="{max(x(e["end_s"] - e["start_s"]) - 1, 1):.1f}" '
        f'height="6" fill="#1565c0"><title>{c["start_s"] + e["start_s"]:.2f}-{c["start_s"] + e["end_s"]:.2f} s: {_e(e["text"])}</title></rect>'
        for c in clips
        for e in c.get("events_list", [])
    )
    qa = "".join(
        f'<rect class="qa" x="{x(c["start_s"] + q["spans"][0][0]):.1f}" y="29" width="3" height="6" fill="#ef6c00">'
        f'<title>{_e(q["task"])}: {_e(render(q["question"], q["spans"], "llava"))}</title></rect>'
        for c in clips
        for q in c.get("qa_list", [])
        if q["spans"]
    )
    segments = "".join(
        f'<rect class="span {c["status"]}" x="{c["start_s"] / duration * w:.1f}" y="0" '
        f'width="{max((c["end_s"] - c["start_s"]) / duration * w - 1, 1):.1f}" height="18" fill="{STATUS_COLOURS[c["status"]]}">'
        f"<title>{_e(c['clip_id'])} {c['start_s']:.2f}-{c['end_s']:.2f} s {_e(c['status'])} {_e(c['reason'] or c['cut_kind'])}</title></rect>"
        for c in clips
    )
    ticks = "".join(f'<text x="{t / duration * w:.1f}" y="48" font-size="10">{t:.0f}s</text>' for t in np.linspace(0, duration, 6)[:-1])
    return f'<svg class="timeline" width="{w}" height="52" role="img">{segments}{events}{qa}{ticks}</svg>'


SCORE_HISTOGRAMS = ("sharpness", "motion", "brightness", "aesthetic", "clip_score")


def _attach_annotations(store: StageStore, clips: list[dict]) -> None:
    """Caption, events, QA and scores from the clip stages that ran, onto the split rows."""
    by_id = {c["clip_id"]: c for c in clips}
    loaders = {
        "caption": lambda r: {"caption": r["caption"], "events_list": json.loads(r["events"] or "[]")},
        "ground": lambda r: {  # ground's events are the caption's, refined and verified
            "qa_list": json.loads(r["qa"] or "[]"), "dropped": json.loads(r["dropped"] or "{}"), **({"events_list": json.loads(r["events"])} if r["events"] else {}),
        },
        "quality": lambda r: {"scores": json.loads(r["scores"] or "{}")},
    }
    for stage, load in loaders.items():
        if store.completed(stage):
            for row in store.table(store.path(stage), stage).to_pylist():
                if row["clip_id"] in by_id:
                    by_id[row["clip_id"]].update(load(row))


def _annotation_html(clip: dict) -> str:
    events = "".join(f"<li>{e['start_s']:.2f}-{e['end_s']:.2f} s: {_e(e['text'])}</li>" for e in clip.get("events_list", []))
    qa = "".join(
        f"<tr><td>{_e(q['task'])}</td><td>{_e(render(q['question'], q['spans'], 'llava'))}</td>"
        f"<td>{_e(render(q['answer'], q['spans'], 'llava'))}</td><td>{_score(q['verification'])}</td></tr>"
        for q in clip.get("qa_list", [])
    )
    return (
        f'<details class="annotation"><summary>{_e(clip["clip_id"])} ({clip["end_s"] - clip["start_s"]:.2f} s): '
        f'{_e(clip["caption"][:120])}</summary><ul>{events or "<li>no events</li>"}</ul>'
        f"<table><tr><th>task</th><th>question</th><th>answer</th><th>verification</th></tr>{qa}</table></details>"
    )


def _score(value: float | None) -> str:
    """A verification: null where embed did not run."""
    return "-" if value is None else f"{value:.2f}"


def _qa_table(clips: list[dict]) -> str:
    """Grounded QA by task over the clips ground kept: items made, negatives among them, and
    items dropped because their events' span verification was under ground.min_verification."""
    made, negatives, dropped = Counter(), Counter(), Counter()
    for c in clips:
        made.update(q["task"] for q in c.get("qa_list", []))
        negatives.update(q["task"] for q in c.get("qa_list", []) if q.get("negative"))
        dropped.update(c.get("dropped", {}))
    rows = "".join(
        f"<tr><td>{_e(task)}</td><td>{made[task]}</td><td>{negatives[task]}</td><td>{dropped[task]}</td></tr>" for task in sorted({*made, *dropped})
    )
    return rows or '<tr><td colspan="4">no QA items (ground did not run)</td></tr>'


def _failure_kind(row: dict) -> str:
    """transient (a re-run retries it) or permanent; empty for rows that did not fail."""
    return "" if row["status"] != "failed" else "transient" if row["transient"] else "permanent"


def build_report(run_dir: Path, max_thumbnails: int = 60) -> str:
    ledger = pq.read_table(run_dir / "ledger.parquet").to_pylist()
    videos_ledger = [r for r in ledger if r["entity"] == "video"]
    clips_ledger = {r["id"]: r for r in ledger if r["entity"] == "clip"}
    windows_ledger = [r for r in ledger if r["entity"] == "window"]
    store = StageStore(run_dir)
    probe = {v["uri"]: v for v in store.table(store.path(VIDEO_SOURCE), VIDEO_SOURCE).to_pylist()}
    clips = store.table(store.path(CLIP_SOURCE), CLIP_SOURCE).to_pylist() if store.completed(CLIP_SOURCE) else []
    for c in clips:  # final status from the ledger (later stages may have overridden split's)
        c.update({k: clips_ledger[c["clip_id"]][k] for k in ("status", "stage", "reason")})
    _attach_annotations(store, clips)
    shipped = store.completed(SHIPPER)
    shards = shipped.fields.get("shards", []) if shipped else []
    samples = sum(s["samples"] for s in shards if s.get("kind", "clip") == "clip")
    window_samples = sum(s["samples"] for s in shards if s.get("kind") == "window")

    funnel = [
        ("input files", len(videos_ledger)),
        ("videos past probe", sum(v["status"] == "kept" for v in probe.values())),
        ("clip spans", len(clips)),
        ("clips kept", sum(c["status"] == "kept" for c in clips)),
        ("clip samples in shards", samples),
        ("window samples in shards", window_samples),
    ]
    top = max(n for _, n in funnel) or 1
    funnel_html = "".join(
        f'<div class="bar funnel-step" style="width:{max(n / top * 100, 4):.1f}%">{_e(label)}: <b>{n}</b></div>' for label, n in funnel
    )
    reasons = Counter(
        (r["entity"], r["status"], r["stage"], _failure_kind(r), reason_code(r["reason"]), r["tries"] or 1)
        for r in ledger
        if r["status"] != "kept"
    )
    reasons_html = "".join(
        f"<tr><td>{_e(ent)}</td><td>{_e(st)}</td><td>{_e(stage)}</td><td>{kind}</td><td>{_e(code)}</td><td>{tries}</td><td>{n}</td></tr>"
        for (ent, st, stage, kind, code, tries), n in sorted(reasons.items())
    ) or '<tr><td colspan="7">nothing was rejected or failed</td></tr>'
    inputs_html = "".join(
        f'<tr class="{_e(r["status"])}"><td>{_e(r["id"])}</td><td>{_e(r["status"])}</td><td>{_e(r["stage"])}</td>'
        f'<td>{_failure_kind(r)}</td><td>{r["tries"] or 1}</td><td>{_e(r["reason"] or "")}</td></tr>'
        for r in sorted(videos_ledger, key=lambda r: (r["status"], r["id"]))
    )
    windows_html = "".join(
        f'<tr class="{_e(r["status"])}"><td>{_e(r["id"])}</td><td>{_e(r["status"])}</td><td>{_failure_kind(r)}</td>'
        f'<td>{r["tries"] or 1}</td><td>{_e(r["reason"] or "")}</td></tr>'
        for r in sorted(windows_ledger, key=lambda r: (r["status"], r["id"]))
    ) or '<tr><td colspan="5">no windows (ground did not run, or no contiguous clips shipped)</td></tr>'

    gallery = []
    for status in ("kept", "rejected", "failed"):
        for c in [c for c in clips if c["status"] == status][:max_thumbnails]:
            video = probe[c["source_uri"]]
            if c.get("clip_uri"):
                rgb = _frame_at(c["clip_uri"], (c["end_s"] - c["start_s"]) / 2)
            else:
                rgb = _frame_at(c["source_uri"], (c["start_s"] + c["end_s"]) / 2, int(video["rotation"] or 0))
            img = f'<img alt="{_e(c["clip_id"])}" src="{_jpeg_data_uri(rgb)}">' if rgb is not None else "<p>(no frame)</p>"
            why = c["reason"] or c["cut_kind"]
            gallery.append(
                f'<div class="card {_e(status)}">{img}{_e(Path(c["source_uri"]).name)}<br>'
                f'{c["start_s"]:.2f}-{c["end_s"]:.2f} s · {_e(status)}<br>{_e(why)}</div>'
            )

    by_video: dict[str, list[dict]] = {}
    for c in clips:
        by_video.setdefault(c["source_uri"], []).append(c)
    timelines = "".join(
        f'<h3>{_e(Path(uri).name)} <small>({probe[uri]["duration_s"]:.1f} s)</small></h3>'
        + _timeline_svg(probe[uri], sorted(cs, key=lambda c: c["start_s"]))
        for uri, cs in sorted(by_video.items())
    )
    legend = "".join(f'<span style="background:{c}"></span>{s}' for s, c in STATUS_COLOURS.items())
    legend += '<span style="background:#1565c0"></span>events<span style="background:#ef6c00"></span>QA items'
    kept = [c for c in clips if c["status"] == "kept"]
    score_histograms = "".join(
        _histogram_svg(values, f"kept clips: {name}")
        for name in SCORE_HISTOGRAMS
        if (values := [c["scores"][name] for c in kept if name in c.get("scores", {})])
    )
    annotations = "".join(_annotation_html(c) for c in kept if "caption" in c and c["caption"] is not None)[: 400_000]
    annotations = annotations or "<p>no captioned clips (the caption stage did not run or kept nothing)</p>"
    markers = [m for s in STAGES if (m := store.completed(s))]
    stages = "".join(
        f"<tr><td>{m.stage}</td><td>{m.rows}</td><td>{_e(m.counts)}</td><td>{m.transient_failed}</td>"
        f"<td>{m.done}</td><td>{m.seconds}</td>{_cost_cells(m.cost)}</tr>"
        for m in markers
    )
    cost = run_cost(markers, VIDEO_SOURCE)
    if cost:
        stages += f"<tr><td>run</td><td></td><td></td><td></td><td></td><td>{cost['seconds']}</td>{_cost_cells(cost)}</tr>"
    cost_note = f"<p>{_e(describe_run_cost(cost))}</p>" if cost else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>vidcurate report: {_e(run_dir.name)}</title>
<style>{CSS}</style></head><body>
<h1>vidcurate report: {_e(run_dir.name)}</h1>
<h2 id="funnel">Funnel</h2>{funnel_html}
<h2 id="reasons">Why things were dropped</h2>
<table><tr><th>entity</th><th>status</th><th>stage</th><th>failure</th><th>reason</th><th>tries</th><th>count</th></tr>{reasons_html}</table>
<h2 id="distributions">Distributions</h2>
{_histogram_svg([c["end_s"] - c["start_s"] for c in clips if c["status"] == "kept"], "kept clip duration (s)")}
{_histogram_svg([v["duration_s"] for v in probe.values() if v["status"] == "kept"], "source video duration (s)")}
{score_histograms}
<h2 id="gallery">Clips</h2><div class="gallery">{"".join(gallery)}</div>
<h2 id="timelines">Timelines</h2><p class="legend">clip spans by status:{legend}</p>{timelines}
<h2 id="qa">Grounded QA by task</h2>
<table><tr><th>task</th><th>items</th><th>negatives</th><th>dropped by verification</th></tr>{_qa_table(clips)}</table>
<h2 id="annotations">Captions, events and QA</h2>{annotations}
<h2 id="inputs">Inputs</h2>
<table><tr><th>input</th><th>status</th><th>stage</th><th>failure</th><th>tries</th><th>reason</th></tr>{inputs_html}</table>
<h2 id="windows">Windows</h2>
<table><tr><th>window</th><th>status</th><th>failure</th><th>tries</th><th>reason</th></tr>{windows_html}</table>
<h2 id="stages">Stages and cost</h2>{cost_note}<table><tr><th>stage</th><th>rows</th><th>by status</th><th>transient failures</th><th>rows done in its last run</th><th>seconds</th>
<th>video-s</th><th>video-s per s</th><th>CPU-s per video-hour</th><th>GPU-s per video-hour</th></tr>{stages}</table>
</body></html>
"""


def _cost_cells(m: dict) -> str:
    cells = (m.get("video_s"), m.get("video_s_per_s"), m.get("cpu_s_per_video_h"), m.get("gpu_s_per_video_h"))
    return "".join(f"<td>{'' if v is None else v}</td>" for v in cells)


def write_report(run_dir: Path, out: Path | None = None, max_thumbnails: int = 60) -> Path:
    if not (run_dir / "ledger.parquet").is_file():
        raise FileNotFoundError(f"{run_dir} has no ledger.parquet: run the pipeline first")
    out = out or run_dir / "report.html"
    out.write_text(build_report(run_dir, max_thumbnails), encoding="utf-8")
    return out
