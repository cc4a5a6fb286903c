"""`vidcurate report RUN`: one self-contained HTML page (inline CSS, SVG and JPEG thumbnails,
no scripts) showing what a run kept, what it dropped and why, and where each clip came from.

Every string from the data (file names, reasons) is HTML-escaped: input names are hostile.
"""

from __future__ import annotations

import base64
import html
import io
from collections import Counter
from pathlib import Path

import av
import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from pipelines.ledger import reason_code
from pipelines.runner import STAGES, read_marker, read_stage_table
from stages.media import local_copy

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
.timeline{margin:6px 0 14px}.legend span{display:inline-block;width:12px;height:12px;margin:0 4px 0 12px}
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
    duration = max(float(video["duration_s"] or 0), max((c["end_s"] for c in clips), default=0), 1e-3)
    w = 1000
    segments = "".join(
        f'<rect class="span {c["status"]}" x="{c["start_s"] / duration * w:.1f}" y="0" '
        f'width="{max((c["end_s"] - c["start_s"]) / duration * w - 1, 1):.1f}" height="18" fill="{STATUS_COLOURS[c["status"]]}">'
        f"<title>{_e(c['clip_id'])} {c['start_s']:.2f}-{c['end_s']:.2f} s {_e(c['status'])} {_e(c['reason'] or c['cut_kind'])}</title></rect>"
        for c in clips
    )
    ticks = "".join(f'<text x="{t / duration * w:.1f}" y="32" font-size="10">{t:.0f}s</text>' for t in np.linspace(0, duration, 6)[:-1])
    return f'<svg class="timeline" width="{w}" height="36" role="img">{segments}{ticks}</svg>'


def build_report(run_dir: Path, max_thumbnails: int = 60) -> str:
    ledger = pq.read_table(run_dir / "ledger.parquet").to_pylist()
    videos_ledger = [r for r in ledger if r["entity"] == "video"]
    clips_ledger = {r["id"]: r for r in ledger if r["entity"] == "clip"}
    probe = {v["uri"]: v for v in read_stage_table(run_dir / "probe", "probe").to_pylist()}
    clips = read_stage_table(run_dir / "split", "split").to_pylist() if read_marker(run_dir / "split") else []
    for c in clips:  # final status from the ledger (later stages may have overridden split's)
        c.update({k: clips_ledger[c["clip_id"]][k] for k in ("status", "stage", "reason")})
    shard_marker = read_marker(run_dir / "shard") or {}
    samples = sum(s["samples"] for s in shard_marker.get("shards", []))

    funnel = [
        ("input files", len(videos_ledger)),
        ("videos past probe", sum(v["status"] == "kept" for v in probe.values())),
        ("clip spans", len(clips)),
        ("clips kept", sum(c["status"] == "kept" for c in clips)),
        ("samples in shards", samples),
    ]
    top = max(n for _, n in funnel) or 1
    funnel_html = "".join(
        f'<div class="bar funnel-step" style="width:{max(n / top * 100, 4):.1f}%">{_e(label)}: <b>{n}</b></div>' for label, n in funnel
    )
    reasons = Counter(
        (r["entity"], r["status"], r["stage"], reason_code(r["reason"])) for r in ledger if r["status"] != "kept"
    )
    reasons_html = "".join(
        f"<tr><td>{_e(ent)}</td><td>{_e(st)}</td><td>{_e(stage)}</td><td>{_e(code)}</td><td>{n}</td></tr>"
        for (ent, st, stage, code), n in sorted(reasons.items())
    ) or '<tr><td colspan="5">nothing was rejected or failed</td></tr>'
    inputs_html = "".join(
        f'<tr class="{_e(r["status"])}"><td>{_e(r["id"])}</td><td>{_e(r["status"])}</td><td>{_e(r["stage"])}</td><td>{_e(r["reason"] or "")}</td></tr>'
        for r in sorted(videos_ledger, key=lambda r: (r["status"], r["id"]))
    )

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
    stages = "".join(
        f"<tr><td>{s}</td><td>{m['rows']}</td><td>{_e(m['counts'])}</td><td>{m['seconds']}</td></tr>"
        for s in STAGES
        if (m := read_marker(run_dir / s))
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>vidcurate report: {_e(run_dir.name)}</title>
<style>{CSS}</style></head><body>
<h1>vidcurate report: {_e(run_dir.name)}</h1>
<h2 id="funnel">Funnel</h2>{funnel_html}
<h2 id="reasons">Why things were dropped</h2>
<table><tr><th>entity</th><th>status</th><th>stage</th><th>reason</th><th>count</th></tr>{reasons_html}</table>
<h2 id="distributions">Distributions</h2>
{_histogram_svg([c["end_s"] - c["start_s"] for c in clips if c["status"] == "kept"], "kept clip duration (s)")}
{_histogram_svg([v["duration_s"] for v in probe.values() if v["status"] == "kept"], "source video duration (s)")}
<h2 id="gallery">Clips</h2><div class="gallery">{"".join(gallery)}</div>
<h2 id="timelines">Timelines</h2><p class="legend">clip spans by status:{legend}</p>{timelines}
<h2 id="inputs">Inputs</h2>
<table><tr><th>input</th><th>status</th><th>stage</th><th>reason</th></tr>{inputs_html}</table>
<h2 id="stages">Stages</h2><table><tr><th>stage</th><th>rows</th><th>by status</th><th>seconds</th></tr>{stages}</table>
</body></html>
"""


def write_report(run_dir: Path, out: Path | None = None, max_thumbnails: int = 60) -> Path:
    if not (run_dir / "ledger.parquet").is_file():
        raise FileNotFoundError(f"{run_dir} has no ledger.parquet: run the pipeline first")
    out = out or run_dir / "report.html"
    out.write_text(build_report(run_dir, max_thumbnails), encoding="utf-8")
    return out
