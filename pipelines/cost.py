"""What a stage cost: CPU-seconds of every process it ran on this machine, GPU-seconds held, and
the video it covered, so a user can size a corpus run from a small one.

CPU time is read from the process tree of the driver (a local Ray's GCS, raylet and workers are
its descendants), sampled while the stage runs so that workers which exit before the end (model
actors) still count up to their last sample. With `ray.address` set, the cluster's workers are
not the driver's children: only the driver's share is seen, and the marker says so.
"""

from __future__ import annotations

import os
import threading

import psutil

SAMPLE_S = 0.25
COST_FIELDS = ("video_s", "video_s_per_s", "cpu_s", "cpu_s_per_video_h", "gpu_s", "gpu_s_per_video_h", "cpu_scope")


def _tree_cpu() -> dict[int, float]:
    """CPU-seconds (user + system) so far of this process and each of its descendants."""
    seen = {}
    me = psutil.Process(os.getpid())
    for proc in [me, *me.children(recursive=True)]:
        try:
            times = proc.cpu_times()
            seen[proc.pid] = times.user + times.system
        except psutil.Error:  # exited between listing and reading: its last sample stands
            continue
    return seen


class CpuMeter:
    """Context manager: `seconds` is the CPU time the process tree spent inside the block."""

    def __init__(self, sample_s: float = SAMPLE_S):
        self.sample_s = sample_s
        self.seconds = 0.0
        self._start: dict[int, float] = {}
        self._last: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample_until_stopped, daemon=True, name="vidcurate-cpu-meter")

    def __enter__(self) -> CpuMeter:
        self._start = _tree_cpu()
        self._last = dict(self._start)
        self._thread.start()
        return self

    def _sample(self) -> None:
        for pid, used in _tree_cpu().items():
            self._last[pid] = max(used, self._last.get(pid, 0.0))

    def _sample_until_stopped(self) -> None:
        while not self._stop.wait(self.sample_s):
            self._sample()

    def __exit__(self, *_exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
        # a pid first seen during the block started during it: all of its time counts
        self.seconds = sum(used - self._start.get(pid, 0.0) for pid, used in self._last.items())


def per_video_hour(seconds: float, video_s: float | None) -> float | None:
    return round(seconds / video_s * 3600, 1) if video_s else None


def cost_fields(wall_s: float, cpu_s: float, gpu_s: float, video_s: float | None, local_only: bool) -> dict:
    """The marker's cost entries: video covered, its rate, and CPU/GPU-seconds per video-hour
    (video_s None: the run's input tables were not found, so no rates)."""
    fields = {
        "video_s": None if video_s is None else round(video_s, 2),
        "video_s_per_s": round(video_s / wall_s, 2) if video_s is not None and wall_s > 0 else None,
        "cpu_s": round(cpu_s, 1),
        "cpu_s_per_video_h": per_video_hour(cpu_s, video_s),
    }
    if gpu_s:
        fields |= {"gpu_s": round(gpu_s, 1), "gpu_s_per_video_h": per_video_hour(gpu_s, video_s)}
    if local_only:
        fields["cpu_scope"] = "this driver's processes only (Ray cluster at ray.address)"
    return fields


def describe_cost(cost: dict) -> str:
    """One line for logs: '12.3 video-s/s, 95 CPU-s per video-hour (GPU 4.1)'."""
    if cost.get("video_s") is None:
        return ""
    text = f"; {cost['video_s']} video-s at {cost['video_s_per_s']} video-s/s, {cost['cpu_s_per_video_h']} CPU-s per video-hour"
    if "gpu_s_per_video_h" in cost:
        text += f", {cost['gpu_s_per_video_h']} GPU-s per video-hour"
    return text


def run_cost(markers: list, inputs_stage: str) -> dict | None:
    """The whole run: wall, CPU- and GPU-seconds summed over its stages' last runs (`StageMarker`s),
    per hour of the input video (that of `inputs_stage`, which lists the inputs). None when no
    stage recorded its cost."""
    costed = [m for m in markers if m.cost.get("video_s") is not None]
    source = next((m for m in costed if m.stage == inputs_stage), None)
    if not costed or source is None:
        return None
    wall = sum(m.seconds for m in costed)
    cpu = sum(m.cost["cpu_s"] for m in costed)
    gpu = sum(m.cost.get("gpu_s", 0.0) for m in costed)
    return {"seconds": round(wall, 2), **cost_fields(wall, cpu, gpu, source.cost["video_s"], any("cpu_scope" in m.cost for m in costed))}


def describe_run_cost(cost: dict) -> str:
    text = (f"cost: {cost['video_s']} video-s in {cost['seconds']} s of stage time ({cost['video_s_per_s']} video-s/s), "
            f"{cost['cpu_s']} CPU-s = {cost['cpu_s_per_video_h']} CPU-s per video-hour")  # fmt: skip
    if "gpu_s" in cost:
        text += f", {cost['gpu_s']} GPU-s = {cost['gpu_s_per_video_h']} GPU-s per video-hour"
    return text + (f" ({cost['cpu_scope']})" if "cpu_scope" in cost else "")
