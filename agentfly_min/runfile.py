"""Rollouts from files: an agent described in TOML, tasks in JSONL,
trajectories appended to JSONL as they finish, resumable."""

from __future__ import annotations

import json
import pkgutil
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal

import msgspec

from .agent import Agent, Backend, Trajectory, rollout
from .configs import AsyncVerlConfig, AsyncVLLMConfig, ClientConfig
from .errors import ConfigError
from .records import Generate
from .templates import TemplateName
from .tools import Tool

__all__ = ["AgentSpec", "load_agent", "read_tasks", "read_done", "run_rollout_file"]

_TABLE: dict[str, Literal["client", "vllm", "verl"]] = {"client": "client", "async_vllm": "vllm", "async_verl": "verl"}


class AgentSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """An agent as written in TOML. ``tools`` and ``reward`` are import paths
    (``package.module.name`` or ``package.module:name``); the transport's
    settings go in the table named after the backend: ``[client]``,
    ``[vllm]`` or ``[verl]``."""

    model: str
    backend: Backend = "client"
    tools: list[str] = []
    reward: str | None = None
    template: TemplateName = "qwen2.5"
    system_prompt: str | None = None
    max_turns: int = 4
    max_new_tokens: int | None = None
    max_model_len: int | None = None
    max_response_tokens: int | None = None
    temperature: float | None = None
    client: ClientConfig | None = None
    vllm: AsyncVLLMConfig | None = None
    verl: AsyncVerlConfig | None = None


def _resolve(path: str, what: str) -> Any:
    try:
        return pkgutil.resolve_name(path)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigError(what, f"cannot import {path!r}: {exc}") from None


def load_agent(text: bytes | str) -> tuple[Agent[Any], AgentSpec]:
    """Decode and build the agent a TOML file describes; every mistake (an
    unknown key, a wrong type, a value out of range, a tool that is not a
    Tool, a settings table for another backend) is a :class:`ConfigError`."""
    try:
        spec = msgspec.toml.decode(text, type=AgentSpec)
    except msgspec.ValidationError as exc:
        raise ConfigError("agent config", str(exc)) from None
    except msgspec.DecodeError as exc:
        raise ConfigError("agent config", f"not valid TOML: {exc}") from None
    wanted = _TABLE[spec.backend]
    for table in ("client", "vllm", "verl"):
        if table != wanted and getattr(spec, table) is not None:
            raise ConfigError(f"agent config [{table}]", f"settings for another backend (backend = {spec.backend!r} reads [{wanted}])")
    tools = [_resolve(path, "agent config tools") for path in spec.tools]
    for path, item in zip(spec.tools, tools, strict=True):
        if not isinstance(item, Tool):
            raise ConfigError("agent config tools", f"{path} is not a Tool (decorate it with agentfly_min.tool)")
    reward = _resolve(spec.reward, "agent config reward") if spec.reward else None
    if reward is not None and not callable(reward):
        raise ConfigError("agent config reward", f"{spec.reward} is not callable")
    agent = Agent(
        model_name_or_path=spec.model,
        tools=tools,
        reward_fn=reward,
        template=spec.template,
        backend=spec.backend,
        backend_config=getattr(spec, wanted),
        system_prompt=spec.system_prompt,
        max_turns=spec.max_turns,
        max_new_tokens=spec.max_new_tokens,
        max_model_len=spec.max_model_len,
        max_response_tokens=spec.max_response_tokens,
        temperature=spec.temperature,
    )
    return agent, spec


def read_tasks(path: Path, on_bad_line: Callable[[int, str], None]) -> list[dict[str, Any]]:
    """The tasks of a JSONL file. A line that is not a JSON object with
    ``question``, ``prompt`` or ``messages`` is reported with its (1-based)
    number and skipped. A task without ``id`` gets ``line-N``."""
    tasks: list[dict[str, Any]] = []
    seen: set[str] = set()
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                task = json.loads(line)
            except json.JSONDecodeError as exc:
                on_bad_line(number, f"not valid JSON ({exc.msg} at column {exc.colno})")
                continue
            if not isinstance(task, dict):
                on_bad_line(number, f"expected a JSON object, got {type(task).__name__}")
                continue
            if not any(key in task for key in ("question", "prompt", "messages")):
                on_bad_line(number, "a task needs `question`, `prompt` or `messages`")
                continue
            task.setdefault("id", f"line-{number}")
            task["id"] = str(task["id"])
            if task["id"] in seen:
                on_bad_line(number, f"repeats the id {task['id']!r}")
                continue
            seen.add(task["id"])
            tasks.append(task)
    return tasks


def read_done(path: Path) -> set[tuple[str, int]]:
    """The (task id, chain) pairs already in an output file. A last line cut
    off by an interruption is removed, so the file stays valid JSONL."""
    if not path.exists():
        return set()
    data = path.read_bytes()
    done: set[tuple[str, int]] = set()
    keep = 0
    decoder = msgspec.json.Decoder(Trajectory)
    for line in data.splitlines(keepends=True):
        if not line.endswith(b"\n"):
            break  # a partial line at the end
        try:
            trajectory = decoder.decode(line)
        except (msgspec.DecodeError, msgspec.ValidationError):
            break
        done.add((trajectory.task_id, trajectory.chain_index))
        keep += len(line)
    if keep < len(data):
        with path.open("r+b") as handle:
            handle.truncate(keep)
    return done


@asynccontextmanager
async def _transport(
    agent: Agent[Any], spec: AgentSpec, work_dir: Path, device: Literal["cpu", "cuda"]
) -> AsyncIterator[tuple[Generate, Any]]:
    """The agent's transport, plus a tokenizer for token-exact trajectories
    where the transport works in tokens."""
    from .transports import open_backend, open_verl

    config = agent.config
    if isinstance(config, ClientConfig):
        async with open_backend(config, model=spec.model) as generate:
            yield generate, None
        return
    from transformers import AutoTokenizer

    tokenizer: Any = AutoTokenizer.from_pretrained(spec.model)
    if isinstance(config, AsyncVLLMConfig):
        async with open_backend(config, model=spec.model) as generate:
            yield generate, tokenizer
        return
    import anyio

    from .testing.verl_cpu import VerlCluster

    cluster = VerlCluster(spec.model, work_dir=work_dir, device=device)
    await anyio.to_thread.run_sync(cluster.__enter__)
    try:
        async with open_verl(config, cluster.client, tokenizer) as generate:
            yield generate, tokenizer
    finally:
        await anyio.to_thread.run_sync(cluster.close)


async def run_rollout_file(
    agent: Agent[Any],
    spec: AgentSpec,
    tasks: list[dict[str, Any]],
    out: Path,
    *,
    n: int,
    concurrency: int,
    work_dir: Path,
    on_trajectory: Callable[[int, int, Trajectory], None],
    device: Literal["cpu", "cuda"] = "cpu",
) -> int:
    """Run every (task, chain) not yet in ``out`` and append each trajectory
    to ``out`` as it finishes (flushed line by line). Returns how many ran."""
    done = read_done(out)
    with out.open("ab") as sink:

        def written(count: int, total: int, trajectory: Trajectory) -> None:
            sink.write(msgspec.json.encode(trajectory) + b"\n")
            sink.flush()
            on_trajectory(count, total, trajectory)

        async with _transport(agent, spec, work_dir, device) as (generate, tokenizer):
            results = await rollout(
                agent, generate, tasks, n=n, concurrency=concurrency, tokenizer=tokenizer, progress=written, skip=done
            )
    return len(results)

