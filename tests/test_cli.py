"""The command line, end to end, in subprocesses as a user runs it."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import msgspec
import pytest

from agentfly_min import Trajectory
from agentfly_min.bench import BenchReport
from agentfly_min.bench.stats import verdict
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
    rollout = [
        "rollout", "--config", str(agent_toml(tmp_path / "agent.toml", fake_server)),
        "--tasks", str(tasks_file(tmp_path / "tasks.jsonl", 20)), "--out", str(out), "--n", "2", "--concurrency", "2",
    ]  # fmt: skip
    # Ctrl-C as a terminal's foreground job gets it, whatever the launcher
    # of this test run left the child (an ignored or blocked SIGINT is
    # inherited through exec): two fresh-clone runs saw the rollout go on to
    # its end after the signal, which no run in a terminal does.
    as_foreground = (
        "import runpy, signal, sys; signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT}); "
        "signal.signal(signal.SIGINT, signal.default_int_handler); "
        "sys.argv[0] = 'agentfly-min'; runpy.run_module('agentfly_min', run_name='__main__', alter_sys=True)"
    )
    proc = subprocess.Popen([sys.executable, "-c", as_foreground, *rollout], cwd=ROOT, stderr=subprocess.PIPE, text=True)
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
    again = cli(*rollout)
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
        "bench", "--tasks", "2", "--chains", "2", "--turns", "2", "--new-tokens", "8", "--concurrency", "1,4", "--min-rounds", "2", "--max-rounds", "4",
        "--stacks", "2",
        "--out", str(tmp_path), "--work-dir", str(WORK / "bench"),
        timeout=1200,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = msgspec.json.decode((tmp_path / "bench.json").read_bytes(), type=BenchReport)  # the schema holds
    assert report.random_weights and not report.interrupted and report.failures == {}
    assert sorted((r.transport, r.concurrency) for r in report.results) == [
        (t, c) for t in ("client", "verl", "vllm") for c in (1, 4)
    ]
    assert report.schema_version == 4 and report.seconds > 0 and report.stacks == 2
    # The host was timed before the first engine and after the last.
    assert report.host_before is not None and report.host_after is not None
    assert len(report.host_before.seconds) == len(report.host_after.seconds) == 15
    assert "Host: a fixed Python loop varied by" in result.stdout
    for r in report.results:
        # Each stack started twice, two counted rounds on each start (the warm-ups kept apart).
        assert r.tokens == 4 * (2 * 2 * 2 * 8) and r.errors == 0
        assert r.tokens_per_s > 0 and r.raw_tokens_per_s > 0 and r.ratio_to_raw > 0
        assert r.estimate.rounds == 4 and r.estimate.stopped in ("narrow", "max rounds")  # 2 rounds may already be +/-5%
        assert [s.stack for s in r.estimate.ours] == [s.stack for s in r.estimate.raw] == [0, 0, 1, 1]
        assert len(r.estimate.ours) == len(r.estimate.raw) == 4 and len(r.estimate.warmup_ours) == 2
        assert r.ratio_low <= r.ratio_to_raw <= r.ratio_high and r.verdict == verdict(r.ratio_low, r.ratio_high)
        assert sum(s.work for s in r.estimate.ours) == r.tokens  # the samples recompute the row
        assert sum(1 for pair in zip(r.estimate.ours, r.estimate.raw, strict=True) if pair[0].first == pair[1].first) == 0
        assert r.cpu_ms_per_turn > 0 and r.raw_cpu_ms_per_turn > 0
        assert 0 < r.p50_turn_ms <= r.p99_turn_ms and r.peak_memory_mb > 100
    assert report.environment.cores >= 1 and "agentfly-min" in report.environment.packages
    assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "random weights: this measures the transports, not model quality" in result.stdout
    assert "vs raw [95% CI]" in result.stdout and "tokens/s" in result.stdout


@pytest.mark.slow
@pytest.mark.parametrize("transport", ["vllm", "verl"])
def test_bench_interrupted_from_a_terminal_leaves_a_summary_and_nothing_running(transport: str, tmp_path: Path) -> None:
    """Ctrl-C in a terminal signals the whole foreground process group, so the
    engine processes (vLLM's engine core; Ray and verl's server actor) get it
    too and die mid-measurement."""
    import os

    import psutil

    from agentfly_min.local._shm import shm_entries

    from .vllm_support import assert_gone

    args = [
        sys.executable, "-m", "agentfly_min", "bench", "--transports", transport, "--tasks", "2", "--chains", "2",
        "--turns", "2", "--new-tokens", "8", "--concurrency", "1,2,4", "--min-rounds", "2", "--max-rounds", "2", "--stacks", "1",
        "--out", str(tmp_path), "--work-dir", str(WORK / "bench"),
    ]  # fmt: skip
    shm_before = shm_entries()
    # A session of its own, like a terminal's foreground job: killpg reaches every process in it.
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    report_path = tmp_path / "bench.json"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not report_path.exists():
        time.sleep(0.2)  # the report is written after every measurement
    assert report_path.exists(), "no measurement finished"
    children = psutil.Process(proc.pid).children(recursive=True)
    assert children, "the engine runs in child processes"
    os.killpg(proc.pid, signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130, stderr[-2000:]
    assert "Interrupted: the table and files hold what finished." in stderr
    assert "Traceback" not in stderr, stderr[-3000:]
    report = msgspec.json.decode(report_path.read_bytes(), type=BenchReport)
    assert report.interrupted and 1 <= len(report.results) < 3
    assert all(r.errors == 0 for r in report.results)  # no half-dead measurement was kept
    assert "vs raw" in stdout  # the table of what finished
    assert_gone(children, timeout=60)
    assert shm_entries() - shm_before == set()


def test_bench_refuses_rounds_that_cannot_be_met_before_building_anything(tmp_path: Path) -> None:
    result = cli("bench", "--min-rounds", "5", "--max-rounds", "2", "--out", str(tmp_path / "out"), timeout=120)
    assert result.returncode == 2 and result.stderr.strip() == "agentfly-min bench: --min-rounds 5 is more than --max-rounds 2"
    result = cli("bench", "--target", "5", "--out", str(tmp_path / "out"), timeout=120)
    assert result.returncode == 2 and "expected a fraction between 0 and 1" in result.stderr
    result = cli("bench", "--stacks", "3", "--min-rounds", "2", "--max-rounds", "5", "--out", str(tmp_path / "out"), timeout=120)
    assert result.returncode == 2 and result.stderr.strip() == (
        "agentfly-min bench: --stacks 3: 3 starts split a row's rounds: each needs at least 2, "
        "but at most 5 rounds a row leave 1 each; allow 6 or start fewer stacks"
    )
    result = cli("bench", "--publication", "--min-rounds", "2", "--max-rounds", "5", "--out", str(tmp_path / "out"), timeout=120)
    assert result.returncode == 2 and result.stderr.strip().startswith("agentfly-min bench: --stacks 4: 4 starts split")
    assert not (tmp_path / "out").exists()


def test_bench_progress_keeps_one_line_however_many_runs() -> None:
    # A line per run piled up and every redraw rendered them all, on a
    # thread of the process being measured: the bench's own CPU per token
    # grew 3-5x from its first start to its fourth.
    import io

    from rich.console import Console
    from rich.progress import Progress

    from agentfly_min.bench.cli import _run_progress

    bar = Progress(console=Console(file=io.StringIO()), auto_refresh=False)
    progress = _run_progress(bar)
    for run in range(500):
        tick = progress(f"vllm x16 start 4/4 raw #{run}", 48)
        for _ in range(run % 7):
            tick()
    assert len(bar.tasks) == 1
    (task,) = bar.tasks
    assert (task.description, task.total, task.completed) == ("vllm x16 start 4/4 raw #499", 48, 499 % 7)


def test_bench_refuses_a_path_that_is_not_a_model_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "file.txt").write_text("x")
    (tmp_path / "no-tokenizer").mkdir()
    (tmp_path / "no-tokenizer" / "config.json").write_text("{}")
    cases = {
        str(tmp_path / "missing"): "no such file or folder",
        str(tmp_path / "file.txt"): "not a folder (give a Hugging Face model folder)",
        str(tmp_path): "not a Hugging Face model folder (no config.json)",
        str(tmp_path / "no-tokenizer"): "the model folder has no tokenizer (tokenizer.json / tokenizer_config.json)",
    }
    for model, says in cases.items():
        result = cli("bench", "--model", model, "--out", str(tmp_path / "out"), timeout=120)
        assert result.returncode == 2, result.stderr
        assert result.stderr.strip() == f"agentfly-min bench: --model {model}: {says}"
    assert not (tmp_path / "out").exists()  # refused before anything started


def test_local_stacks_pick_cpu_settings_only_without_a_gpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from agentfly_min.local import VLLMServer, cpu_environment, detect_device, local_engine_config

    assert detect_device() == ("cuda" if torch.cuda.is_available() else "cpu")
    assert local_engine_config("cpu").kv_cache_memory_bytes == 128 << 20
    gpu = local_engine_config("cuda")
    assert gpu.kv_cache_memory_bytes is None and not gpu.enforce_eager and gpu.dtype == "auto" and gpu.engine_args == {}
    cpu_args = VLLMServer("m", work_dir=tmp_path, device="cpu")._args
    gpu_args = VLLMServer("m", work_dir=tmp_path, device="cuda")._args
    assert "--enforce-eager" in cpu_args and "--kv-cache-memory-bytes" in cpu_args
    assert "--enforce-eager" not in gpu_args and "--kv-cache-memory-bytes" not in gpu_args and "--dtype" not in gpu_args
    # The hub is put offline only for a local model folder, and never over the user's own setting.
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert cpu_environment(tmp_path)["HF_HUB_OFFLINE"] == "1"
    assert "HF_HUB_OFFLINE" not in cpu_environment(tmp_path, offline=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert "HF_HUB_OFFLINE" not in cpu_environment(tmp_path)


def test_a_server_is_pinned_only_to_cpus_this_process_may_use(tmp_path: Path) -> None:
    import os

    from agentfly_min.local import VLLMServer

    allowed = os.sched_getaffinity(0)
    assert VLLMServer("m", work_dir=tmp_path).cpus is None
    assert VLLMServer("m", work_dir=tmp_path, cpus=[min(allowed), min(allowed)]).cpus == frozenset({min(allowed)})
    with pytest.raises(ValueError, match="at least one CPU"):
        VLLMServer("m", work_dir=tmp_path, cpus=())
    with pytest.raises(ValueError, match=rf"cpus \[{max(allowed) + 1}\] are not available"):
        VLLMServer("m", work_dir=tmp_path, cpus={min(allowed), max(allowed) + 1})


def test_a_benchmark_splits_the_cpus_and_gives_the_thread_its_own_back() -> None:
    import os
    import threading

    from agentfly_min.local import pinned, split_cpus

    allowed = os.sched_getaffinity(0)
    client, server = split_cpus()
    if len(allowed) < 2:
        assert (client, server) == (None, None)
        return
    assert client is not None and server is not None
    assert len(client) == 1 and not client & server and client | server == allowed
    seen: list[set[int]] = []
    with pytest.raises(KeyError), pinned(client):
        assert os.sched_getaffinity(0) == client
        thread = threading.Thread(target=lambda: seen.append(os.sched_getaffinity(0)))  # started inside: inherits
        thread.start()
        thread.join()
        raise KeyError("user code failed")
    assert seen == [client] and os.sched_getaffinity(0) == allowed
    with pinned(None):
        assert os.sched_getaffinity(0) == allowed


def test_resuming_never_deletes_a_complete_line(fake_server: FakeOpenAIServer, tmp_path: Path) -> None:
    fake_server.configure()
    out = tmp_path / "out.jsonl"
    args = [
        "rollout", "--config", str(agent_toml(tmp_path / "agent.toml", fake_server)),
        "--tasks", str(tasks_file(tmp_path / "tasks.jsonl", 5)), "--out", str(out),
    ]  # fmt: skip
    assert cli(*args).returncode == 0
    lines = out.read_bytes().splitlines(keepends=True)
    assert len(lines) == 5
    # A hand annotation (a field this version does not know), a line that is
    # not a trajectory at all, one chain missing, and a line cut off.
    annotated = lines[1][:-2] + b', "note": "checked by hand"}\n'
    edited = lines[0] + annotated + b"not a trajectory\n" + lines[2] + lines[3] + b'{"task_id": "t9", "chain_in'
    out.write_bytes(edited)
    fake_server.configure()
    again = cli(*args)
    assert again.returncode == 0, again.stderr
    assert f"{out}:3: kept as it is, not a trajectory" in again.stderr
    after = out.read_bytes()
    kept = lines[0] + annotated + b"not a trajectory\n" + lines[2] + lines[3]
    assert after.startswith(kept)  # every byte of every complete line, in place
    assert len(fake_server.log()) == 1  # only the missing chain ran
    (new,) = trajectories_from(after[len(kept) :])
    assert (new.task_id, new.chain_index) == (msgspec.json.decode(lines[4], type=Trajectory).task_id, 0)


def trajectories_from(data: bytes) -> list[Trajectory]:
    return [msgspec.json.decode(line, type=Trajectory) for line in data.splitlines()]


def test_rollout_prints_a_summary(fake_server: FakeOpenAIServer, tmp_path: Path) -> None:
    fake_server.configure(script=("400", "ok", "ok"))
    result = cli(
        "rollout", "--config", str(agent_toml(tmp_path / "agent.toml", fake_server)),
        "--tasks", str(tasks_file(tmp_path / "tasks.jsonl", 3)), "--out", str(tmp_path / "o.jsonl"), "--concurrency", "1",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "ran 3 chains: answer 2, error 1" in result.stderr
    assert "failed: PermanentError 1" in result.stderr
    assert re.search(r"tokens: \d+ prompt, \d+ completion", result.stderr)


def test_templates_lists_every_family() -> None:
    result = cli("templates", timeout=120)
    assert result.returncode == 0, result.stderr
    for name, fmt in (("qwen2.5", "hermes"), ("qwen3", "<think>"), ("llama3", "llama3 JSON"), ("mistral", "[TOOL_CALLS]"), ("gpt-oss", "harmony"), ("hf", "vLLM parser"), ("qwen3-coder", "XML")):
        assert any(line.startswith(name) and fmt in line for line in result.stdout.splitlines()), (name, result.stdout)


def test_rollout_configs_name_a_template(fake_server: FakeOpenAIServer, tmp_path: Path) -> None:
    from agentfly_min.runfile import load_agent

    agent, _ = load_agent(agent_toml(tmp_path / "a.toml", fake_server, template='"qwen3"').read_bytes())
    assert agent.template == "qwen3"
    bad = agent_toml(tmp_path / "b.toml", fake_server, template='"qwen9"')
    result = cli("rollout", "--config", str(bad), "--tasks", str(tasks_file(tmp_path / "t.jsonl", 1)), "--out", str(tmp_path / "o.jsonl"))
    assert result.returncode == 2 and "no template named 'qwen9'" in result.stderr


@pytest.mark.slow
def test_bench_runs_a_familys_template_on_its_tiny_model(tmp_path: Path) -> None:
    result = cli(
        "bench", "--transports", "vllm", "--template", "llama3", "--tasks", "2", "--chains", "1", "--turns", "2",
        "--new-tokens", "8", "--concurrency", "1", "--min-rounds", "2", "--max-rounds", "2", "--stacks", "1", "--out", str(tmp_path), "--work-dir", str(WORK / "bench"),
        timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = msgspec.json.decode((tmp_path / "bench.json").read_bytes(), type=BenchReport)
    assert report.workload.template == "llama3" and "tiny-llama3" in report.model
    assert [r.errors for r in report.results] == [0] and report.results[0].tokens == 2 * (2 * 2 * 8)


@pytest.mark.slow
def test_bench_measures_a_fleet_behind_the_router(tmp_path: Path) -> None:
    result = cli(
        "bench", "--transports", "fleet", "--servers", "2", "--tasks", "2", "--chains", "2", "--turns", "2",
        "--new-tokens", "8", "--concurrency", "2", "--min-rounds", "2", "--max-rounds", "2", "--stacks", "1", "--out", str(tmp_path), "--work-dir", str(WORK / "bench"),
        timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = msgspec.json.decode((tmp_path / "bench.json").read_bytes(), type=BenchReport)
    (row,) = report.results
    assert row.transport == "fleet" and row.errors == 0 and row.tokens == 2 * (2 * 2 * 2 * 8)
    assert row.raw_tokens_per_s > 0 and row.ratio_to_raw > 0


CALL_QUESTION = '<tool_call>{"name": "calculator", "arguments": {"expression": "6*7"}}</tool_call>'


def test_run_shows_an_episode_live_and_as_json(fake_server: FakeOpenAIServer, tmp_path: Path) -> None:
    """The fake server echoes the question, so a question that is a tool call
    makes the echo call the calculator: text, call and result all show."""
    fake_server.configure(chunk_delay=0.01)
    config = str(agent_toml(tmp_path / "agent.toml", fake_server))
    result = cli("run", "--config", config, CALL_QUESTION, timeout=120)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "echo: <tool_call>" in out  # the streamed text
    assert 'calculator({"expression": "6*7"})' in out and "← 42" in out
    assert "[max_turns] 2 turns, 1 tool calls" in out
    as_json = cli("run", "--config", config, "--json", "--answer", "echo: hi", "hi", timeout=120)
    assert as_json.returncode == 0, as_json.stderr
    trajectory = msgspec.json.decode(as_json.stdout, type=Trajectory)
    assert trajectory.messages[-1].text == "echo: hi" and trajectory.finish_reason == "answer"


def test_run_in_a_real_terminal(fake_server: FakeOpenAIServer, tmp_path: Path) -> None:
    import shutil

    tmux = shutil.which("tmux")
    assert tmux is not None, "tmux is part of the test setup (scripts/setup.sh)"
    fake_server.configure(chunk_delay=0.05)
    config = str(agent_toml(tmp_path / "agent.toml", fake_server))
    session = f"agentfly-run-{tmp_path.name}"[:60]
    done = tmp_path / "done"
    command = f"{sys.executable} -m agentfly_min run --config {config} '{CALL_QUESTION}'; echo exit=$? > {done}; sleep 30"
    subprocess.run([tmux, "new-session", "-d", "-s", session, "-x", "160", "-y", "40", command], check=True, cwd=ROOT)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not done.exists():
            time.sleep(0.2)
        screen = subprocess.run([tmux, "capture-pane", "-p", "-t", session], capture_output=True, text=True, check=True).stdout
    finally:
        subprocess.run([tmux, "kill-session", "-t", session], check=False)
    assert done.read_text().strip() == "exit=0", screen
    assert "→ calculator(" in screen and "← 42" in screen and "[max_turns]" in screen, screen


def test_every_agent_setting_is_a_toml_key_of_the_same_name_and_default() -> None:
    """AgentSpec and Agent share their settings (AgentLimits): a TOML file can
    set each, with Agent's default when it does not."""
    from agentfly_min.agent.agent import AgentLimits
    from agentfly_min.runfile import AgentSpec, load_agent

    shared = set(AgentLimits.__struct_fields__)
    assert {"max_turns", "max_prompt_tokens", "reward_timeout", "logprobs"} <= shared
    assert shared <= set(AgentSpec.__struct_fields__)
    agent, _ = load_agent('model = "m"\nmax_prompt_tokens = 300\nreward_timeout = 5.0\nlogprobs = false\n')
    assert (agent.max_prompt_tokens, agent.reward_timeout, agent.logprobs) == (300, 5.0, False)
    default, _ = load_agent('model = "m"\n')
    assert all(getattr(default, name) == getattr(AgentLimits(), name) for name in shared)


def test_bench_defaults_are_the_quick_look_and_publication_the_tables_settings() -> None:
    # The first run answers within ten minutes on two cores (one start, short
    # rows); --publication is what docs/bench.md's tables were made with, and
    # a flag given on the command line wins over either.
    from agentfly_min.bench.cli import PUBLICATION, QUICK, _apply_preset
    from agentfly_min.cli import _parser

    def settings(*argv: str) -> dict[str, object]:
        args = _parser().parse_args(["bench", *argv])
        _apply_preset(args)
        return {name: getattr(args, name) for name in QUICK}

    assert settings() == QUICK == {"tasks": 8, "target": 0.05, "budget": 30.0, "min_rounds": 6, "max_rounds": 50, "stacks": 1}
    assert settings("--publication") == PUBLICATION
    assert PUBLICATION == {"tasks": 24, "target": 0.02, "budget": 200.0, "min_rounds": 8, "max_rounds": 80, "stacks": 4}
    assert settings("--publication", "--stacks", "2", "--budget", "50") == {**PUBLICATION, "stacks": 2, "budget": 50.0}
    assert settings("--tasks", "3") == {**QUICK, "tasks": 3}
