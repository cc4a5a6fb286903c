"""The wheel installs one namespace, `vidcurate`, and the code only imports through it: a user's
own `stages` or `schemas` package can neither shadow ours nor be shadowed."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FOLDERS = ("schemas", "stages", "pipelines", "flows")
TOP_LEVEL_IMPORT = re.compile(rf"^\s*(from|import) ({'|'.join(FOLDERS)})\b", re.M)


def test_no_module_imports_the_folders_by_their_top_level_names():
    sources = [p for folder in (*FOLDERS, "tests", "benchmarks", "sample_data") for p in (REPO / folder).rglob("*.py")]
    offenders = [f"{p.relative_to(REPO)}: {m.group(0).strip()}" for p in sources for m in TOP_LEVEL_IMPORT.finditer(p.read_text())]
    assert sources and not offenders, offenders


def test_the_wheel_holds_only_the_namespace_and_imports_from_it(tmp_path):
    source = tmp_path / "source"  # a copy: building leaves build/ and *.egg-info beside the sources
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    for folder in FOLDERS:
        shutil.copytree(REPO / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(source)], check=True)
    (wheel,) = tmp_path.glob("vidcurate-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    packages = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert packages == {"vidcurate"}, packages
    assert "vidcurate/pipelines/configs/sample.yaml" in names
    assert "vidcurate/stages/ground_pools.yaml" in names  # ground's instruction pools ship as data
    assert {f"vidcurate/{folder}/__init__.py" for folder in FOLDERS} <= set(names)
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "vidcurate = vidcurate.pipelines.cli:main" in entry_points

    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)], check=True)
    probe = (
        "import importlib.util, vidcurate.stages.grammar as g, vidcurate.pipelines.config as c; "
        "print(g.__file__); print(c.__file__); print(importlib.util.find_spec('stages'))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, env={"PYTHONPATH": str(target)}, check=True, capture_output=True, text=True
    ).stdout.split("\n")
    assert out[0].startswith(str(target)) and out[1].startswith(str(target)), out
    assert out[2] == "None"  # no top-level `stages` comes with it
