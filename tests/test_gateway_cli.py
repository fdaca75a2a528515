"""``agentfly-min gateway`` as a user runs it: a real engine behind it, an
openai-SDK client through a session, Ctrl-C writes the trajectories."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import msgspec
import openai
import pytest

from agentfly_min import Trajectory

from .conftest import ROOT, WORK

pytestmark = pytest.mark.slow


def test_the_gateway_command_serves_and_writes_trajectories_on_ctrl_c(tiny_model_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "trajectories.jsonl"
    command = [sys.executable, "-m", "agentfly_min", "gateway", "--model", str(tiny_model_path), "--port", "0"]
    command += ["--out", str(out), "--work-dir", str(WORK / "gateway"), "--max-model-len", "1024"]
    process: subprocess.Popen[str] = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        assert process.stdout is not None
        url = ""
        for line in process.stdout:  # the engine starts first (about 30 s here)
            if line.startswith("gateway for"):
                url = line.rsplit(" at ", 1)[1].strip()
                break
        assert url.startswith("http://127.0.0.1:"), "the gateway never said where it is"
        client = openai.OpenAI(base_url=f"{url}/sessions/episode-1/v1", api_key="unused", max_retries=0)
        answer = client.chat.completions.create(model="any", messages=[{"role": "user", "content": "hi"}], max_tokens=8)
        assert answer.choices[0].message.role == "assistant"
        client.close()
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=120) == 0
        assert "1 trajectories written" in process.stdout.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    [written] = out.read_bytes().splitlines()
    trajectory = msgspec.json.decode(written, type=Trajectory)
    assert trajectory.request_id == "episode-1" and trajectory.num_turns == 1 and trajectory.token_level
    assert trajectory.response_mask == (1,) * len(trajectory.response_ids) and 0 < len(trajectory.response_ids) <= 8
