"""Cost accounting: the CPU meter counts the work of child processes, including one that exits
before the block ends (as model actors do), and not the idle time around it; and the driver's
start-up stays free of the heavy model libraries."""

from __future__ import annotations

import subprocess
import sys
import time

from vidcurate.pipelines.cost import CpuMeter, cost_fields, run_cost
from vidcurate.pipelines.store import StageMarker

BURN = "import time\nt = time.process_time()\nwhile time.process_time() - t < {s}: pass\n"


def test_cpu_meter_counts_children_that_exit_inside_the_block():
    with CpuMeter(sample_s=0.05) as meter:
        subprocess.run([sys.executable, "-c", BURN.format(s=1.0)], check=True)
        time.sleep(0.3)  # idle: no CPU
    assert 0.8 <= meter.seconds <= 2.5  # the child's 1 s, its interpreter start-up, the sampler


def test_cpu_meter_reads_zero_for_an_idle_block():
    with CpuMeter(sample_s=0.05) as meter:
        time.sleep(0.5)
    assert meter.seconds < 0.2


def test_run_cost_is_per_hour_of_the_input_video():
    def marker(stage: str, seconds: float, cost: dict) -> StageMarker:
        return StageMarker(stage, "", "", "", 0, {}, seconds=seconds, cost=cost)

    markers = [
        marker("probe", 2.0, cost_fields(2.0, 4.0, 0.0, 1800.0, False)),
        marker("split", 8.0, cost_fields(8.0, 16.0, 0.0, 1800.0, False)),
        marker("caption", 10.0, cost_fields(10.0, 5.0, 10.0, 1200.0, False)),
    ]
    cost = run_cost(markers, "probe")
    assert cost["cpu_s"] == 25.0 and cost["cpu_s_per_video_h"] == 50.0  # 25 CPU-s for half an hour
    assert cost["gpu_s_per_video_h"] == 20.0 and cost["video_s_per_s"] == 90.0
    assert markers[2].cost["video_s_per_s"] == 120.0 and markers[2].cost["cpu_s_per_video_h"] == 15.0


def test_the_driver_starts_without_torch():
    """Importing the flow, the CLI and the runner must not import torch (1.5-2 s of every command's
    start-up, and of every probe and split task's first call): only model stages and shard
    writing (webdataset) import it, when they run."""
    code = "import sys, flows.corpus, pipelines.cli, pipelines.runner, stages.probe, stages.split; print(sorted(m for m in ('torch', 'webdataset', 'transformers', 'open_clip') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out
