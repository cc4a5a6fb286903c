"""The whole job against a peer and the floor: vidcurate probe -> split -> shard beside video2dataset,
one corpus, one run, the same cores; then the full sample config stage by stage.

    python benchmarks/pipeline_bench.py [--synthetic 6 --seconds 30] [--height 240] [--preset medium]
                                        [--skip-peer] [--sample | --sample-only] [--baseline c5403b1]
                                        [--partitions 4]

Corpus: the shared videos plus `--synthetic` moving shots over photographs (sample_data/make_moving.py,
16:9 at `--synthetic-height`, about `--seconds` each), built once into .bench/corpus-<n>x<s>-<h>p/. Both tools cut shots,
cut each into a clip of its own (1 to 30 s; longer shots in 30 s pieces), scale it to `--height`
and write WebDataset shards, each encoding with libx264 at crf 23 and `--preset` (video2dataset
passes no preset, so ffmpeg's default, medium, is the matched one). video2dataset 1.3.0 runs in
its own venv (.bench/v2d-venv, made here) with imageio-ffmpeg's ffmpeg as `ffmpeg`
(benchmarks/v2d_job.py says how it is started).

For each it prints wall time, video-seconds per wall-second, CPU-seconds per video-minute
(the larger of a 0.1 s sampler over the process tree and the rusage of its waited
descendants: both can only miss time), clips and bytes written, and how far each clip's real
duration is from the span its sample claims. Two floors run in the same way on 2 processes:
decoding every frame, and decoding every frame then encoding it at the target height.
`--sample` then runs the sample config (every stage, tiny models) on the corpus and prints each
stage's seconds; `--baseline COMMIT` runs that commit's own sample config beside it (a git
worktree on PYTHONPATH) and compares kept clips and quality scores. `--partitions N` also runs
HEAD's sample config in partitions of N videos and prints, for each run, when its first shards
were complete (seconds after the command started) against its whole time.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import av
import psutil
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "sample_data"))
sys.path.insert(0, str(REPO))

import make_moving  # noqa: E402
from make_synthetic import FPS as TRUTH_FPS  # noqa: E402
from make_synthetic import write_video  # noqa: E402

from vidcurate.pipelines.store import StageStore, read_parts  # noqa: E402
from vidcurate.stages.registry import STAGES  # noqa: E402

SHARED = REPO.parent / "shared" / "data" / "videos"
BENCH = (REPO / ".bench").resolve()  # a worktree links .bench to the main checkout's: listings name real paths
V2D = "video2dataset==1.3.0"
# video2dataset's runtime needs for its download worker; its torch 2.1.2 / transformers pins
# serve workers this job never starts (v2d_job.py stands in for those imports).
V2D_DEPS = [
    "numpy<2", "pyarrow<20", "pandas", "fsspec", "webdataset", "fire", "requests", "tqdm", "ffmpeg-python",
    "timeout-decorator", "scenedetect[opencv]==0.6.2", "omegaconf", "webvtt-py", "yt-dlp", "imageio-ffmpeg",
]


OURS = """
import sys
from vidcurate.pipelines.config import load_config
from vidcurate.pipelines.runner import Runner
runner = Runner(load_config(sys.argv[1]))
for stage in ("probe", "split", "shard"):
    runner.run_stage(stage)
"""

FLOOR = """
import sys
from fractions import Fraction
from multiprocessing import Pool
import av

def work(job):
    path, height, preset, out = job
    with av.open(path) as src:
        stream = src.streams.video[0]
        stream.thread_type = "AUTO"
        sink = None
        for index, frame in enumerate(src.decode(stream)):
            if height is None:
                continue
            if sink is None:
                width = round(frame.width * height / frame.height / 2) * 2
                dst = av.open(out, "w")
                sink = dst.add_stream("libx264", rate=Fraction(25))
                sink.width, sink.height, sink.pix_fmt = width, height, "yuv420p"
                sink.options = {"crf": "23", "preset": preset}
            image = frame.reformat(width=sink.width, height=sink.height, format="yuv420p")
            image.pts, image.time_base = index, Fraction(1, 25)
            dst.mux(sink.encode(image))
        if sink is not None:
            dst.mux(sink.encode(None))
            dst.close()

if __name__ == "__main__":
    paths, height, preset, out = sys.argv[1].split(","), sys.argv[2], sys.argv[3], sys.argv[4]
    height = None if height == "none" else int(height)
    jobs = [(p, height, preset, f"{out}/{i}.mp4") for i, p in enumerate(paths)]
    with Pool(2) as pool:
        pool.map(work, jobs, chunksize=1)
"""


def build_corpus(count: int, seconds: float, height: int) -> Path:
    """A list file of the shared videos and of moving synthetic videos (made once)."""
    corpus = BENCH / f"corpus-{count}x{seconds:g}-{height}p"
    videos = corpus / "videos"
    listing = corpus / "videos.txt"
    if not listing.is_file():
        videos.mkdir(parents=True, exist_ok=True)
        shots = max(1, round(seconds / 3))  # make_moving's shots last 2-4 s
        for i in range(count):
            frames, truth = make_moving.render(700 + i, height, height * 16 // 9 // 2 * 2, shots=shots)
            write_video(videos, f"moving_{700 + i:03d}", frames, truth)
        paths = sorted(SHARED.iterdir()) + sorted(videos.glob("*.mp4"))
        listing.write_text("".join(f"{p}\n" for p in paths))
    return listing


def video_seconds(paths: list[Path]) -> float:
    total = 0.0
    for path in paths:
        with av.open(str(path)) as c:
            s = c.streams.video[0]
            if s.duration and s.time_base:
                total += float(s.duration * s.time_base)
            elif c.duration:
                total += c.duration / 1e6
            else:  # no declared duration: count the frames
                total += sum(1 for p in c.demux(s) if p.pts is not None) / float(s.average_rate or 25)
    return total


def run_measured(cmd: list[str], env: dict | None = None, cwd: Path | None = None) -> dict:
    """Run a command: wall seconds and CPU-seconds of everything it started (the larger of a
    sampler over its process tree and the rusage of its waited descendants)."""
    before = psutil.Process().cpu_times()
    started, started_at = time.monotonic(), time.time()
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    root, seen, output = psutil.Process(proc.pid), {}, bytearray()
    os.set_blocking(proc.stdout.fileno(), False)
    while proc.poll() is None:
        try:
            for p in [root, *root.children(recursive=True)]:
                t = p.cpu_times()
                seen[p.pid] = max(seen.get(p.pid, 0.0), t.user + t.system)
        except psutil.Error:
            pass
        output += proc.stdout.read() or b""
        time.sleep(0.1)
    output += proc.stdout.read() or b""
    wall = time.monotonic() - started
    after = psutil.Process().cpu_times()
    waited = after.children_user + after.children_system - before.children_user - before.children_system
    tail = output.decode(errors="replace")[-3000:]
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[:3]} failed ({proc.returncode}):\n{tail}")
    return {"wall": wall, "cpu": max(sum(seen.values()), waited), "tail": tail, "started_at": started_at}


def clip_checks(tars: list[Path], span_of, truth: dict[str, list]) -> tuple[int, int, list[float], int]:
    """(clips, bytes of the tars, |mp4 duration - claimed span| per clip, clips of a synthetic
    video that hold a whole true transition, 2 frames in from either end: two shots in one clip)."""
    clips, gaps, spanning = 0, [], 0
    for path in tars:
        with tarfile.open(path) as tar:
            members = {m.name: m for m in tar.getmembers()}
            for name in members:
                if not name.endswith(".mp4"):
                    continue
                span = span_of(json.loads(tar.extractfile(members[name[:-4] + ".json"]).read()))
                if span is None:
                    continue
                uri, start, end = span
                clips += 1
                with av.open(io.BytesIO(tar.extractfile(members[name]).read())) as c:
                    s = c.streams.video[0]
                    times = [f.time for f in c.decode(s)]
                    step = 1 / float(s.average_rate or 25)
                    duration = (times[-1] - times[0] + step) if times else 0.0
                gaps.append(abs(duration - (end - start)))
                first, last = round(start * TRUTH_FPS), round(end * TRUTH_FPS) - 1
                inside = [t for t in truth.get(Path(uri).stem, []) if first + 2 <= t[0] and t[1] <= last - 2]
                spanning += bool(inside)
    return clips, sum(p.stat().st_size for p in tars), gaps, spanning


def ours_span(meta: dict) -> tuple[str, float, float] | None:
    if meta.get("kind") != "clip":
        return None
    p = meta["provenance"]
    return p["source_uri"], p["source_start_s"], p["source_end_s"]


def v2d_span(meta: dict) -> tuple[str, float, float] | None:
    if meta.get("status") != "success" or not meta.get("clips"):
        return None
    return meta["url"], *meta["clips"][0]


def load_truth(listing: Path) -> dict[str, list]:
    """True transitions (frame spans) of the corpus's synthetic videos, by file stem."""
    return {p.stem: [t["frames"] for t in json.loads(p.read_text())["transitions"]] for p in (listing.parent / "truth").glob("*.json")}


def v2d_python() -> Path:
    venv = BENCH / "v2d-venv"
    python = venv / "bin" / "python"
    if not (venv / "ready").is_file():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *V2D_DEPS], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", V2D], check=True)
        (venv / "ready").write_text(V2D)
    return python


def v2d_env(python: Path) -> dict:
    """PATH with imageio-ffmpeg's binary as `ffmpeg`, which video2dataset calls."""
    find = [str(python), "-c", "import imageio_ffmpeg; print(imageio_ffmpeg.get_ffmpeg_exe())"]
    ffmpeg = subprocess.run(find, capture_output=True, text=True, check=True).stdout.strip()
    bin_dir = BENCH / "v2d-bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    link = bin_dir / "ffmpeg"
    link.unlink(missing_ok=True)
    link.symlink_to(ffmpeg)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}


def row(name: str, result: dict, video_s: float, clips="", size="", gaps: list[float] | None = None, spanning="") -> dict:
    out = {
        "what": name,
        "wall_s": round(result["wall"], 1),
        "video_s_per_s": round(video_s / result["wall"], 2),
        "cpu_s_per_video_min": round(result["cpu"] / (video_s / 60), 2),
        "clips": clips,
        "mb": round(size / 1e6, 1) if size != "" else "",
    }
    if gaps:
        out["mean_gap_s"] = round(sum(gaps) / len(gaps), 3)
        out["max_gap_s"] = round(max(gaps), 3)
        out["clips_off_gt_0.1s"] = sum(g > 0.1 for g in gaps)
        out["clips_over_a_cut"] = spanning
    return out


def print_rows(rows: list[dict]) -> None:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(str(r.get(k, "")) for k in keys) + " |")


def job_config(path: Path, inputs: Path, run_dir: Path, height: int, preset: str) -> Path:
    cfg = {
        "inputs": str(inputs),
        "run_dir": str(run_dir),
        "profile": "tiny",
        "stages": [],
        # x264's own defaults, as video2dataset's ffmpeg and the floor encode (ours turn mbtree off)
        "split": {"min_clip_s": 1.0, "max_clip_s": 30.0, "clip_max_height": height, "clip_crf": 23, "clip_preset": preset, "clip_x264_params": ""},
        "shard": {"prefix": "bench", "shuffle_seed": None},
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


def compare_with_peer(args, listing: Path, paths: list[Path], total: float, work: Path, env: dict) -> None:
    """probe -> split -> shard, video2dataset and the two floors, each measured alone."""
    truth = load_truth(listing)
    rows = []
    ours_dir = work / "ours"
    config = job_config(work / "ours.yaml", listing, ours_dir, args.height, args.preset)
    result = run_measured([sys.executable, "-c", OURS, str(config)], env=env, cwd=REPO)
    checks = clip_checks(sorted((ours_dir / "shard" / "dataset").glob("*.tar")), ours_span, truth)
    rows.append(row(f"vidcurate probe->split->shard (preset {args.preset})", result, total, *checks))
    print(json.dumps(rows[-1]), flush=True)
    if not args.skip_peer:
        python = v2d_python()
        listing_parquet = work / "v2d.parquet"
        urls = [str(p) for p in paths]
        write = f"import pyarrow as pa, pyarrow.parquet as pq; pq.write_table(pa.table({{'url': {urls!r}}}), {str(listing_parquet)!r})"
        subprocess.run([str(python), "-c", write], check=True)
        out = work / "v2d"
        cmd = [str(python), str(REPO / "benchmarks" / "v2d_job.py"), str(listing_parquet), str(out), "--height", str(args.height), "--tmp", str(work)]
        result = run_measured(cmd, env=v2d_env(python))
        peer = row("video2dataset 1.3.0 (ContentDetector, exact clipping, scale)", result, total, *clip_checks(sorted(out.glob("*.tar")), v2d_span, truth))
        stats = [json.loads(p.read_text()) for p in sorted(out.glob("*_stats.json"))]
        peer["videos_failed"] = sum(s.get("failed_to_download", 0) + s.get("failed_to_subsample", 0) for s in stats)
        rows.append(peer)
        print(json.dumps(peer), flush=True)
    names = ",".join(str(p) for p in paths)
    (work / "floor").mkdir()
    rows.append(row("floor: decode every frame", run_measured([sys.executable, "-c", FLOOR, names, "none", args.preset, str(work / "floor")]), total))
    floor = [sys.executable, "-c", FLOOR, names, str(args.height), args.preset, str(work / "floor")]
    rows.append(row(f"floor: decode + encode at {args.height}p ({args.preset})", run_measured(floor), total))
    print()
    print_rows(rows)
    for r in rows[1:]:
        print(f"vidcurate / {r['what']}: {rows[0]['video_s_per_s'] / r['video_s_per_s']:.2f}x the video-seconds per second")


# A sitecustomize for the sample runs (driver and every Ray worker import it): each call of
# clip_frames, the one function that decodes a clip's media, is logged with the stage function
# that made it, one file per process, so decode passes per clip are counted, not assumed.
DECODE_TRACER = """
import importlib, os, sys

def _count_clip_decodes():
    out = os.environ.get("VIDCURATE_BENCH_DECODES")
    for name in ("vidcurate.schemas.readers", "schemas.readers"):  # namespaced, and older commits
        try:
            readers = importlib.import_module(name)
            break
        except ImportError:
            readers = None
    if not out or readers is None or not hasattr(readers, "clip_frames"):
        return
    decode = readers.clip_frames

    def counted(*args, **kwargs):
        frame = sys._getframe(1)
        while frame and ("/stages/" not in frame.f_code.co_filename or frame.f_code.co_filename.endswith("frame_store.py")):
            frame = frame.f_back
        caller = f"{os.path.basename(frame.f_code.co_filename)[:-3]}.{frame.f_code.co_name}" if frame else "other"
        with open(os.path.join(out, f"{os.getpid()}.log"), "a") as log:
            log.write(caller + "\\n")
        return decode(*args, **kwargs)

    readers.clip_frames = counted

_count_clip_decodes()
"""


def decode_passes(work: Path) -> dict[str, int]:
    """Clip decodes logged by DECODE_TRACER, by the stage function that made them."""
    counts: dict[str, int] = {}
    for log in (work / "decodes").glob("*.log"):
        for caller in log.read_text().split():
            counts[caller] = counts.get(caller, 0) + 1
    return dict(sorted(counts.items()))


def sample_run(repo: Path, listing: Path, work: Path, env: dict, partitions: int = 0) -> tuple[dict, Path]:
    """The repo's own sample config on the corpus (dedup history in `work`), through `vidcurate run`,
    with clip decodes counted (DECODE_TRACER); in partitions of that many videos where given."""
    work.mkdir(parents=True)
    (work / "tracer").mkdir()
    (work / "tracer" / "sitecustomize.py").write_text(DECODE_TRACER)
    (work / "decodes").mkdir()
    cfg = yaml.safe_load((repo / "pipelines" / "configs" / "sample.yaml").read_text())
    cfg.update(inputs=str(listing), run_dir=str(work / "run"))
    cfg.setdefault("dedup", {})["history"] = str(work / "shipped")
    if partitions:
        cfg["partitions"] = {"videos": partitions}
    config = work / "sample.yaml"
    config.write_text(yaml.safe_dump(cfg))
    cli = "pipelines.cli"
    if '"vidcurate.pipelines"' in (repo / "pyproject.toml").read_text():  # installed under the namespace
        cli = "vidcurate.pipelines.cli"
        env = {**env, "PYTHONPATH": str(namespace_of(repo, work))}
    env = {**env, "PYTHONPATH": f"{work / 'tracer'}:{env['PYTHONPATH']}", "VIDCURATE_BENCH_DECODES": str(work / "decodes")}
    cmd = [sys.executable, "-c", f"import sys; from {cli} import main; sys.exit(main())", "run", "--config", str(config)]
    return run_measured(cmd, env=env, cwd=repo), work / "run"


def namespace_of(repo: Path, work: Path) -> Path:
    """A folder whose `vidcurate/` links to `repo`'s packages: on PYTHONPATH it wins over the
    editable install, so a worktree of another commit runs its own code."""
    root = work / "namespace"
    (root / "vidcurate").mkdir(parents=True, exist_ok=True)
    for package in ("schemas", "stages", "pipelines", "flows"):
        link = root / "vidcurate" / package
        if not link.exists():
            link.symlink_to(repo / package)
    return root


def first_shards_s(result: dict, run_dir: Path) -> float:
    """Seconds from the command's start until its first shards were complete: the earliest shard
    marker, a partition's where the run had partitions."""
    markers = [*run_dir.glob("partitions/p?????/shard/_SUCCESS.json"), run_dir / "shard" / "_SUCCESS.json"]
    return min(m.stat().st_mtime for m in markers if m.is_file()) - result["started_at"]


def stage_seconds(run_dir: Path) -> dict:
    stages = ("probe", "split", "caption", "ground", "embed", "quality", "dedup", "shard")
    return {stage: marker.seconds for stage in stages if (marker := StageStore.marker(run_dir / stage))}


def kept_and_scores(run_dir: Path) -> tuple[dict[str, set], dict[str, dict]]:
    """Kept clip ids of split and of shard, and each scored clip's quality scores."""
    kept = {}
    for stage in ("split", "shard"):
        kept[stage] = {r["clip_id"] for r in read_parts(run_dir / stage, STAGES[stage].table).to_pylist() if r["status"] == "kept"}
    quality = read_parts(run_dir / "quality", STAGES["quality"].table).to_pylist()
    return kept, {r["clip_id"]: json.loads(r["scores"]) for r in quality if r["scores"]}


def kept_spans(run_dir: Path) -> dict[str, list[tuple[float, float]]]:
    """Each video's clips split kept, as (start_s, end_s), by the source file's stem."""
    spans: dict[str, list] = {}
    for r in read_parts(run_dir / "split", STAGES["split"].table).to_pylist():
        if r["status"] == "kept":
            spans.setdefault(Path(r["source_uri"]).stem, []).append((r["start_s"], r["end_s"]))
    return {video: sorted(found) for video, found in spans.items()}


def cuts_only_in(a: list[tuple], b: list[tuple], edge: float) -> list[float]:
    """Clip boundaries of `a` that fall inside one of `b`'s clips, more than `edge` from its ends:
    where `a` cuts footage that `b` keeps whole."""
    return sorted({t for span in a for t in span if any(s + edge < t < e - edge for s, e in b)})


def truth_seconds(listing: Path, run_dir: Path) -> dict[str, list[tuple[float, float]]]:
    """True transitions (and the shared truth's don't-care ranges) in seconds, with 2 frames of
    slack, by file stem: the synthetic videos' own truth, and benchmarks/truth/shared.json at
    each shared video's probed frame rate."""
    fps = {Path(r["uri"]).stem: r["fps"] for r in read_parts(run_dir / "probe", STAGES["probe"].table).to_pylist() if r.get("fps")}
    frames = {stem: (spans, TRUTH_FPS) for stem, spans in load_truth(listing).items()}
    shared = json.loads((REPO / "benchmarks" / "truth" / "shared.json").read_text())["videos"]
    for name, t in shared.items():
        if Path(name).stem in fps:
            frames[Path(name).stem] = ([x["frames"] for x in t["transitions"]] + t.get("dont_care", []), fps[Path(name).stem])
    return {stem: [((a - 2) / rate, (b + 2) / rate) for a, b in spans] for stem, (spans, rate) in frames.items()}


def compare_footage(head: Path, base: Path, truth: dict[str, list]) -> None:
    """Where the kept clips differ: the footage both keep, and each cut one side makes inside the
    other's clip, checked against the true transitions."""
    spans_h, spans_b = kept_spans(head), kept_spans(base)
    both = sum(max(0.0, min(e1, e2) - max(s1, s2)) for v in spans_h for s1, e1 in spans_h[v] for s2, e2 in spans_b.get(v, []))
    total_h, total_b = (sum(e - s for found in spans.values() for s, e in found) for spans in (spans_h, spans_b))
    print(f"split kept footage: HEAD {total_h:.2f} s, baseline {total_b:.2f} s, both {both:.2f} s")
    for name, a, b in (("HEAD", spans_h, spans_b), ("baseline", spans_b, spans_h)):
        moved, missed, other, unknown = 0, 0, [], 0
        for video in sorted(a):
            bounds = {t for span in b.get(video, []) for t in span}
            for t in cuts_only_in(a[video], b.get(video, []), 1.0 / TRUTH_FPS):
                hit = [(first, last) for first, last in truth.get(video, []) if first <= t <= last]
                if video not in truth:
                    unknown += 1
                elif not hit:
                    other.append(f"{video}@{t:.2f}")
                elif any(first <= x <= last for first, last in hit for x in bounds):
                    moved += 1
                else:
                    missed += 1
        print(f"  cuts only {name} makes inside the other's clips: {missed} at a true transition the other "
              f"misses, {moved} in a transition the other cuts at another frame, {len(other)} at no transition "
              f"{other}, {unknown} in videos without truth")


def compare(head: Path, base: Path, truth: dict[str, list]) -> None:
    """Same kept clips? where not, whose cuts are true; and how far apart the quality scores of
    the clips both scored are."""
    (kept_h, scores_h), (kept_b, scores_b) = kept_and_scores(head), kept_and_scores(base)
    for stage in ("split", "shard"):
        a, b = kept_h[stage], kept_b[stage]
        print(f"{stage} kept: HEAD {len(a)}, baseline {len(b)}, both {len(a & b)}, only HEAD {sorted(a - b)}, only baseline {sorted(b - a)}")
    compare_footage(head, base, truth)
    common = sorted(scores_h.keys() & scores_b.keys())
    names = sorted({k for c in common for k in scores_h[c]} & {k for c in common for k in scores_b[c]})
    print(f"quality scores of {len(common)} clips both scored: max |HEAD - baseline| per score")
    for name in names:
        gaps = [abs(scores_h[c][name] - scores_b[c][name]) for c in common if scores_h[c].get(name) is not None and scores_b[c].get(name) is not None]
        print(f"  {name}: {max(gaps, default=0):.4g}")


def compare_sample_runs(args, listing: Path, work: Path, env: dict) -> None:
    """The sample config on the corpus, stage by stage; with --baseline, that commit's beside it."""
    runs = {"HEAD": sample_run(REPO, listing, work / "sample-head", env)}
    if args.baseline:
        tree = BENCH / f"baseline-{args.baseline}"
        if not tree.is_dir():
            subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree), args.baseline], check=True)
        runs[args.baseline] = sample_run(tree, listing, work / "sample-base", {**env, "PYTHONPATH": str(tree)})
    if args.partitions:
        runs[f"HEAD, partitions of {args.partitions}"] = sample_run(REPO, listing, work / "sample-parted", env, args.partitions)
    print()
    stages = {name: stage_seconds(run_dir) for name, (_, run_dir) in runs.items()}
    print("| stage | " + " | ".join(runs) + " |")
    print("|---|" + "---|" * len(runs))
    for stage in stages["HEAD"]:
        print(f"| {stage} | " + " | ".join(str(stages[n].get(stage, "")) for n in runs) + " |")
    print("| whole command | " + " | ".join(f"{result['wall']:.1f}" for result, _ in runs.values()) + " |")
    print("| first shards complete | " + " | ".join(f"{first_shards_s(*run):.1f}" for run in runs.values()) + " |")
    for name, (_, run_dir) in runs.items():
        clips = len(kept_and_scores(run_dir)[0]["split"])
        passes = decode_passes(run_dir.parent)
        print(f"{name}: {clips} clips extracted (one decode each); clip decodes after extraction: {passes or 'none'}; "
              f"decode passes per clip: {(clips + sum(passes.values())) / max(clips, 1):.2f}")
    if args.baseline:
        head, base = runs["HEAD"][0]["wall"], runs[args.baseline][0]["wall"]
        print(f"sample config: HEAD {head:.1f} s, {args.baseline} {base:.1f} s: {base / head:.2f}x")
        compare(runs["HEAD"][1], runs[args.baseline][1], truth_seconds(listing, runs["HEAD"][1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--synthetic", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--synthetic-height", type=int, default=720, help="height of the synthetic videos (16:9)")
    parser.add_argument("--height", type=int, default=240, help="height the clips are scaled to")
    parser.add_argument("--preset", default="medium")
    parser.add_argument("--skip-peer", action="store_true")
    parser.add_argument("--sample", action="store_true", help="also run the full sample config, stage by stage")
    parser.add_argument("--sample-only", action="store_true", help="only the sample config (with --baseline: both)")
    parser.add_argument("--baseline", help="a commit whose sample config runs beside ours (implies --sample)")
    parser.add_argument("--partitions", type=int, default=0, help="also HEAD's sample config in partitions of this many videos")
    args = parser.parse_args()
    listing = build_corpus(args.synthetic, args.seconds, args.synthetic_height)
    paths = [Path(p) for p in listing.read_text().split()]
    total = video_seconds(paths)
    print(f"corpus: {len(paths)} videos, {total:.1f} s of video ({listing})", flush=True)
    work = BENCH / "work"
    subprocess.run(["rm", "-rf", str(work)], check=True)
    work.mkdir(parents=True)
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(REPO)}
    if not args.sample_only:
        compare_with_peer(args, listing, paths, total, work, env)
    if args.sample or args.sample_only or args.baseline or args.partitions:
        compare_sample_runs(args, listing, work, env)


if __name__ == "__main__":
    main()
