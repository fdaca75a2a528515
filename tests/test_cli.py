"""The command line, end to end, in subprocesses as a user runs it."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import msgspec
import pytest

from agentfly_min import Trajectory
from agentfly_min.bench import BenchReport
from agentfly_min.testing import FakeOpenAIServer

from .conftest import ROOT, WORK


def cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agentfly_min", *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )


def agent_toml(path: Path, server: FakeOpenAIServer, **extra: str) -> Path:
    settings = {
        "model": '"fake-echo"',
        "backend": '"client"',
        "tools": '["agentfly_min.tools.calculator"]',
        "reward": '"agentfly_min.rewards.math_reward_string_equal"',
        "max_turns": "2",
        **extra,
    }
    lines = [
        *(f"{k} = {v}" for k, v in settings.items()),
        "[client]",
        f'base_url = "{server.base_url}"',
        "max_retries = 2",
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def tasks_file(path: Path, count: int, bad: bool = False) -> Path:
    rows = [json.dumps({"id": f"t{i}", "question": f"echo {i}", "answer": i}) for i in range(count)]
    if bad:
        rows.insert(1, '{"question": "unterminated')
        rows.insert(3, '{"answer": 3}')
        rows.insert(4, "[1, 2]")
    path.write_text("\n".join(rows) + "\n")
    return path


def trajectories(path: Path) -> list[Trajectory]:
    return [msgspec.json.decode(line, type=Trajectory) for line in path.read_bytes().splitlines()]


def test_rollout_writes_one_trajectory_per_chain_and_reports_bad_lines(fake_server: FakeOpenAIServer, tmp_path: Path) -> None:
    fake_server.configure()
    out = tmp_path / "out.jsonl"
    result = cli(
        "rollout", "--config", str(agent_toml(tmp_path / "agent.toml", fake_server)),
        "--tasks", str(tasks_file(tmp_path / "tasks.jsonl", 5, bad=True)), "--out", str(out), "--n", "2",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "tasks.jsonl:2: skipped: not valid JSON" in result.stderr
    assert "tasks.jsonl:4: skipped: a task needs `question`, `prompt` or `messages`" in result.stderr
    assert "tasks.jsonl:5: skipped: expected a JSON object, got list" in result.stderr
    written = trajectories(out)
    assert sorted((t.task_id, t.chain_index) for t in written) == [(f"t{i}", c) for i in range(5) for c in range(2)]
    for t in written:
        assert t.error is None and t.messages[-1].content == f"echo: echo {t.task_id[1:]}"
        assert t.reward == 1.0  # the echoed number is the answer


def test_rollout_resumes_after_an_interruption_without_losing_or_repeating(fake_server: FakeOpenAIServer, tmp_path: Path) -> None:
    fake_server.configure(latency=0.15)
    out = tmp_path / "out.jsonl"
    args = [
        sys.executable, "-m", "agentfly_min", "rollout", "--config", str(agent_toml(tmp_path / "agent.toml", fake_server)),
        "--tasks", str(tasks_file(tmp_path / "tasks.jsonl", 20)), "--out", str(out), "--n", "2", "--concurrency", "2",
    ]  # fmt: skip
    proc = subprocess.Popen(args, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not out.exists() or out.read_bytes().count(b"\n") < 6):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "run again to resume" in stderr
    first = out.read_bytes().count(b"\n")
    assert 6 <= first < 40
    fake_server.configure()
    again = cli("rollout", *args[4:])
    assert again.returncode == 0, again.stderr
    written = trajectories(out)
    pairs = [(t.task_id, t.chain_index) for t in written]
    assert len(pairs) == len(set(pairs)) == 40  # nothing lost, nothing twice
    assert len(fake_server.log()) == 40 - first  # only the missing chains ran the second time


def test_rollout_refuses_a_bad_config_naming_the_problem(fake_server: FakeOpenAIServer, tmp_path: Path) -> None:
    tasks = str(tasks_file(tmp_path / "tasks.jsonl", 1))
    bad = agent_toml(tmp_path / "a.toml", fake_server, max_turnz="3")
    result = cli("rollout", "--config", str(bad), "--tasks", tasks, "--out", str(tmp_path / "o.jsonl"))
    assert result.returncode == 2 and "unknown field `max_turnz`" in result.stderr
    wrong = agent_toml(tmp_path / "b.toml", fake_server, max_turns="0")
    result = cli("rollout", "--config", str(wrong), "--tasks", tasks, "--out", str(tmp_path / "o.jsonl"))
    assert result.returncode == 2 and "Agent.max_turns" in result.stderr
    other = tmp_path / "c.toml"
    other.write_text('model = "m"\nbackend = "client"\n[vllm]\nmax_model_len = 512\n')
    result = cli("rollout", "--config", str(other), "--tasks", tasks, "--out", str(tmp_path / "o.jsonl"))
    assert result.returncode == 2 and "settings for another backend" in result.stderr
    assert not (tmp_path / "o.jsonl").exists()


@pytest.mark.slow
def test_bench_end_to_end_on_the_tiny_model(tmp_path: Path) -> None:
    result = cli(
        "bench", "--tasks", "2", "--chains", "2", "--turns", "2", "--new-tokens", "8", "--concurrency", "1,4", "--repeat", "2",
        "--out", str(tmp_path), "--work-dir", str(WORK / "bench"),
        timeout=1200,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = msgspec.json.decode((tmp_path / "bench.json").read_bytes(), type=BenchReport)  # the schema holds
    assert report.random_weights and not report.interrupted and report.failures == {}
    assert sorted((r.transport, r.concurrency) for r in report.results) == [
        (t, c) for t in ("client", "verl", "vllm") for c in (1, 4)
    ]
    for r in report.results:
        assert r.tokens == 2 * (2 * 2 * 2 * 8) and r.errors == 0  # two rounds
        assert r.tokens_per_s > 0 and r.raw_tokens_per_s > 0 and r.ratio_to_raw > 0
        assert 0 < r.p50_turn_ms <= r.p99_turn_ms and r.peak_memory_mb > 100
    assert report.environment.cores >= 1 and "agentfly-min" in report.environment.packages
    assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "random weights: this measures the transports, not model quality" in result.stdout
    assert "vs raw" in result.stdout and "tokens/s" in result.stdout


@pytest.mark.slow
def test_bench_interrupted_leaves_a_clean_summary_and_nothing_running(tmp_path: Path) -> None:
    import psutil

    from .vllm_support import assert_gone

    args = [
        sys.executable, "-m", "agentfly_min", "bench", "--transports", "vllm,client", "--tasks", "2", "--chains", "2",
        "--turns", "2", "--new-tokens", "8", "--concurrency", "1,2,4", "--repeat", "2",
        "--out", str(tmp_path), "--work-dir", str(WORK / "bench"),
    ]  # fmt: skip
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    report_path = tmp_path / "bench.json"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not report_path.exists():
        time.sleep(0.2)  # the report is written after every measurement
    assert report_path.exists(), "no measurement finished"
    children = psutil.Process(proc.pid).children(recursive=True)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130, stderr[-2000:]
    assert "Interrupted: the table and files hold what finished." in stderr
    report = msgspec.json.decode(report_path.read_bytes(), type=BenchReport)
    assert report.interrupted and 1 <= len(report.results) < 6
    assert "vs raw" in stdout  # the table of what finished
    assert_gone(children, timeout=60)
