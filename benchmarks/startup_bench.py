"""Where a small run's time goes besides its stages: imports, Prefect's temporary server, Ray's
start, and each stage's fixed cost, each measured in a fresh process.

    python benchmarks/startup_bench.py [--config pipelines/configs/sample.yaml] [--repeat 2]

Prints seconds for: importing the flow (Prefect, Ray, pyarrow, ...); an empty Prefect flow
(the temporary server's start and stop); `ray.init` + `ray.shutdown` of a local Ray; one Ray task and one actor
call (a stage's fixed cost); and the whole sample job, beside the
sum of its stages' own seconds (from the markers), so the gap is start-up.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from vidcurate.pipelines.store import MARKER  # noqa: E402

SNIPPETS = {
    "import the flow": "import vidcurate.flows.corpus",
    "empty Prefect flow (temporary server)": (
        "from prefect import flow\n@flow\ndef empty():\n    return 1\nempty()"
    ),
    "ray.init + shutdown (local)": (
        "import ray\nray.init(address='local', include_dashboard=False, configure_logging=False, log_to_driver=False)\n"
        "ray.shutdown()"
    ),
    "ray.init + one task and one actor call": (
        "import ray\n"
        "ray.init(address='local', include_dashboard=False, configure_logging=False, log_to_driver=False)\n"
        "ray.get(ray.remote(lambda: 1).remote())\n"
        "class Core:\n    def call(self):\n        return 1\n"
        "actor = ray.remote(Core).remote()\nray.get(actor.call.remote())\nray.kill(actor)\n"
        "ray.shutdown()"
    ),
}


def seconds(code: str) -> float:
    """Wall time of `code` in a fresh Python, from the repository root."""
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(REPO)}
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, check=True, capture_output=True)
    return time.perf_counter() - started


def sample_job(config: Path) -> dict:
    """The whole job in a fresh run directory (its shipped history there too, so earlier runs
    do not change what it keeps), and the sum of its stages' own seconds."""
    with tempfile.TemporaryDirectory(prefix="startup-bench-") as scratch:
        work = Path(scratch)
        settings = yaml.safe_load(config.read_text())
        settings.setdefault("dedup", {})["history"] = str(work / "shipped")
        (work / "config.yaml").write_text(yaml.safe_dump(settings))
        env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
        vidcurate = Path(sys.executable).with_name("vidcurate")
        started = time.perf_counter()
        command = [str(vidcurate), "run", "--config", str(work / "config.yaml"), "--run-dir", str(work / "run")]
        subprocess.run(command, cwd=REPO, env=env, check=True, capture_output=True)
        total = time.perf_counter() - started
        markers = [json.loads(p.read_text()) for p in (work / "run").glob(f"*/{MARKER}")]
        stages = sum(m["seconds"] for m in markers)
    return {"whole job": round(total, 2), "sum of stage seconds": round(stages, 2), "outside the stages": round(total - stages, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=REPO / "pipelines" / "configs" / "sample.yaml")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    results = {name: round(min(seconds(code) for _ in range(args.repeat)), 2) for name, code in SNIPPETS.items()}
    results["one-row map_batches alone"] = round(results["ray.init + one-row map_batches"] - results["ray.init + shutdown (local)"], 2)
    results.update(sample_job(args.config))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
