"""Rollouts from files: an agent described in TOML, tasks in JSONL,
trajectories appended to JSONL as they finish, resumable."""

from __future__ import annotations

import fcntl
import json
import os
import pkgutil
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Literal

import msgspec

from .agent import Agent, Backend, Trajectory, rollout_stream
from .agent.agent import AgentLimits
from .configs import AsyncVerlConfig, AsyncVLLMConfig, ClientConfig, read_secret
from ._text import scrub_all
from .errors import ConfigError, OutputBusyError
from .records import Generate
from .stream import Stream
from .templates import TemplateName
from .tools import Tool

__all__ = ["AgentSpec", "RolloutSummary", "load_agent", "iter_tasks", "read_done", "run_rollout_file", "stream_transport"]

_TABLE: dict[str, Literal["client", "vllm", "verl"]] = {"client": "client", "async_vllm": "vllm", "async_verl": "verl"}


class AgentSpec(AgentLimits, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """An agent as written in TOML. ``tools`` and ``reward`` are import paths
    (``package.module.name`` or ``package.module:name``); the transport's
    settings go in the table named after the backend: ``[client]``,
    ``[vllm]`` or ``[verl]``."""

    model: str
    backend: Backend = "client"
    tools: list[str] = []
    reward: str | None = None
    template: TemplateName = "qwen2.5"
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
        spec = msgspec.toml.decode(text, type=AgentSpec, dec_hook=read_secret)
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
        **{name: getattr(spec, name) for name in AgentLimits.__struct_fields__},
    )
    return agent, spec


def iter_tasks(path: Path, on_bad_line: Callable[[int, str], None]) -> Iterator[dict[str, Any]]:
    """The tasks of a JSONL file, read lazily. A line that is not a JSON
    object with ``question``, ``prompt`` or ``messages``, or that repeats an
    id, is reported with its (1-based) number and skipped. A task without
    ``id`` gets ``line-N``."""
    seen: set[str] = set()
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                task = json.loads(line)
            except ValueError as exc:  # JSONDecodeError, or a number too long to read
                on_bad_line(number, f"not valid JSON ({getattr(exc, 'msg', exc)})")
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
            yield task


class _Done(msgspec.Struct, frozen=True):
    """What resuming reads of a written trajectory: which chain it is. Any
    other field, known or not (a newer version's, a hand annotation), is
    ignored."""

    task_id: str
    chain_index: int = 0


def read_done(path: Path, on_unreadable: Callable[[int, str], None] | None = None) -> set[tuple[str, int]]:
    """The (task id, chain) pairs already in an output file. Reads only:
    the file is never changed here.

    A complete line that cannot be read as a trajectory's ids is reported
    (with its 1-based number) to ``on_unreadable``; its chain is run again.
    A last line without its newline (cut off by an interruption) is not
    counted."""
    return _scan(path, on_unreadable)[0]


def _scan(path: Path, on_unreadable: Callable[[int, str], None] | None) -> tuple[set[tuple[str, int]], int | None, int]:
    """The done pairs, where a partial last line starts (None if there is
    none), and the bytes read."""
    if not path.exists():
        return set(), None, 0
    done: set[tuple[str, int]] = set()
    decoder = msgspec.json.Decoder(_Done)
    offset = 0
    with path.open("rb") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.endswith(b"\n"):
                return done, offset, offset + len(line)
            offset += len(line)
            if not line.strip():
                continue
            try:
                entry = decoder.decode(line)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                if on_unreadable is not None:
                    on_unreadable(number, f"kept as it is, not a trajectory ({exc})")
                continue
            done.add((entry.task_id, entry.chain_index))
    return done, None, offset


@contextmanager
def _locked(path: Path) -> Iterator[BinaryIO]:
    """``path`` open for appending, held with an exclusive advisory lock for
    as long as the block runs: two rollouts appending to one file would
    interleave their lines and each resume would cut the other's."""
    with path.open("ab") as sink:
        try:
            fcntl.flock(sink.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputBusyError(f"{path} is being written by another rollout (it holds the file's lock)") from None
        try:
            yield sink
        finally:
            fcntl.flock(sink.fileno(), fcntl.LOCK_UN)


def _encoded(trajectory: Trajectory) -> bytes:
    """One output line. Lone surrogates, which JSON cannot carry, become
    U+FFFD here, so one chain's text can never stop the file."""
    try:
        return msgspec.json.encode(trajectory) + b"\n"
    except UnicodeEncodeError:
        return msgspec.json.encode(scrub_all(msgspec.to_builtins(trajectory))) + b"\n"


class RolloutSummary(msgspec.Struct, kw_only=True):
    """What a file rollout did: chains run, how they ended, retries, tokens."""

    ran: int = 0
    finished: dict[str, int] = {}
    failed: dict[str, int] = {}
    tool_errors: dict[str, int] = {}
    retries: dict[str, int] = {}
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def add(self, trajectory: Trajectory) -> None:
        self.ran += 1
        reason = trajectory.finish_reason
        self.finished[reason] = self.finished.get(reason, 0) + 1
        if trajectory.error is not None:
            kind = trajectory.error.split(":", 1)[0]
            self.failed[kind] = self.failed.get(kind, 0) + 1
        for table, counts in ((self.tool_errors, trajectory.tool_error_kinds), (self.retries, trajectory.retries)):
            for key, count in counts.items():
                table[key] = table.get(key, 0) + count
        self.prompt_tokens += trajectory.usage.prompt_tokens
        self.completion_tokens += trajectory.usage.completion_tokens

    def lines(self) -> list[str]:
        out = [f"ran {self.ran} chains: " + (", ".join(f"{k} {v}" for k, v in sorted(self.finished.items())) or "none")]
        if self.failed:
            out.append("failed: " + ", ".join(f"{k} {v}" for k, v in sorted(self.failed.items())))
        if self.tool_errors:
            out.append("tool errors: " + ", ".join(f"{k} {v}" for k, v in sorted(self.tool_errors.items())))
        if self.retries:
            out.append("retries: " + ", ".join(f"{k} {v}" for k, v in sorted(self.retries.items())))
        out.append(f"tokens: {self.prompt_tokens:,} prompt, {self.completion_tokens:,} completion")
        return out


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

    from .local.verl_cluster import VerlCluster

    cluster = VerlCluster(spec.model, work_dir=work_dir, device=device)
    await anyio.to_thread.run_sync(cluster.__enter__)
    try:
        async with open_verl(config, cluster.client, tokenizer) as generate:
            yield generate, tokenizer
    finally:
        await anyio.to_thread.run_sync(cluster.close)


@asynccontextmanager
async def stream_transport(
    agent: Agent[Any], spec: AgentSpec, work_dir: Path, device: Literal["cpu", "cuda"]
) -> AsyncIterator[tuple[Stream, Any]]:
    """The agent's streaming transport (verl's is one chunk per turn), plus
    a tokenizer where the transport works in tokens."""
    from .stream import one_chunk
    from .transports import open_stream

    config = agent.config
    if isinstance(config, ClientConfig):
        async with open_stream(config, model=spec.model) as stream:
            yield stream, None
        return
    if isinstance(config, AsyncVLLMConfig):
        from transformers import AutoTokenizer

        async with open_stream(config, model=spec.model) as stream:
            yield stream, AutoTokenizer.from_pretrained(spec.model)
        return
    async with _transport(agent, spec, work_dir, device) as (generate, tokenizer):
        yield one_chunk(generate), tokenizer


async def run_rollout_file(
    agent: Agent[Any],
    spec: AgentSpec,
    tasks: Iterable[dict[str, Any]],
    out: Path,
    *,
    n: int,
    concurrency: int,
    work_dir: Path,
    on_trajectory: Callable[[Trajectory], None],
    on_unreadable: Callable[[int, str], None] | None = None,
    device: Literal["cpu", "cuda"] = "cpu",
) -> RolloutSummary:
    """Run every (task, chain) not yet in ``out`` and append each trajectory
    to ``out`` as it finishes (flushed line by line). ``tasks`` is read
    lazily and at most ``concurrency`` chains are alive, so memory does not
    grow with the number of tasks. A second rollout appending to the same
    ``out`` is refused with :class:`OutputBusyError` (an advisory lock held
    for the run)."""
    summary = RolloutSummary()
    with _locked(out) as sink:
        done, partial, read = _scan(out, on_unreadable)
        if partial is not None and os.fstat(sink.fileno()).st_size == read:
            # An interrupted run's last line: appending goes on from a line
            # boundary. Cut only if nobody wrote after it since it was read.
            os.truncate(out, partial)
        async with _transport(agent, spec, work_dir, device) as (generate, tokenizer):
            async with rollout_stream(
                agent, generate, tasks, n=n, concurrency=concurrency, tokenizer=tokenizer, skip=done
            ) as trajectories:
                async for trajectory in trajectories:
                    sink.write(_encoded(trajectory))
                    sink.flush()
                    summary.add(trajectory)
                    on_trajectory(trajectory)
    return summary
