"""The ``agentfly-min`` command line: ``bench``, ``rollout``, ``run``, ``gateway``, ``templates`` and ``demo``."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import anyio
import msgspec

from .configs import ClientConfig
from .errors import ConfigError, OutputBusyError, TransportError
from .records import Completion, Message, Request
from .transports import open_backend

__all__ = ["main"]


def _work_dir(args: argparse.Namespace) -> Path:
    path = Path(args.work_dir).resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def _prepare_environment(work_dir: Path, *, offline: bool) -> None:
    # vLLM, torch and Ray read these when imported: queues on loopback, no
    # usage reports, temp files and caches under the work folder; the hub
    # offline only for a local model folder, and only if not set already.
    import tempfile

    from .local import cpu_environment

    os.environ.update(cpu_environment(work_dir, offline=offline))
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # keep the table readable
    tempfile.tempdir = None


# --- templates -----------------------------------------------------------------


def templates_command(args: argparse.Namespace) -> int:
    """List the registered chat templates."""
    from .templates import get_template, template_names

    rows = [(name, get_template(name)) for name in template_names()]
    width = max(len(name) for name, _ in rows)
    print(f"{'template':<{width}}  tool-call format / reasoning")
    for name, template in rows:
        print(f"{name:<{width}}  {template.tool_format} / {template.reasoning}")
    return 0


def _device(choice: str) -> Literal["cpu", "cuda"]:
    from .local import detect_device

    if choice == "auto":
        return detect_device()
    return "cuda" if choice == "cuda" else "cpu"



# --- rollout -------------------------------------------------------------------


def rollout_command(args: argparse.Namespace) -> int:
    """Run an agent from a TOML file over a JSONL task file, resumable."""
    from .runfile import iter_tasks, load_agent, run_rollout_file

    work_dir = _work_dir(args)
    try:
        agent, spec = load_agent(Path(args.config).read_bytes())
    except ConfigError as exc:
        print(f"agentfly-min: {args.config}: {exc}", file=sys.stderr)
        return 2

    def bad_line(number: int, reason: str) -> None:
        print(f"{args.tasks}:{number}: skipped: {reason}", file=sys.stderr)

    def unreadable(number: int, reason: str) -> None:
        print(f"{args.out}:{number}: {reason}", file=sys.stderr)

    if spec.backend != "client":
        _prepare_environment(work_dir, offline=Path(spec.model).exists())
    count = 0

    def on_trajectory(trajectory: Any) -> None:
        nonlocal count
        count += 1
        print(f"\r{count} trajectories", end="", file=sys.stderr, flush=True)

    try:
        summary = anyio.run(
            lambda: run_rollout_file(
                agent,
                spec,
                iter_tasks(Path(args.tasks), bad_line),
                Path(args.out),
                n=args.n,
                concurrency=args.concurrency,
                work_dir=work_dir,
                on_trajectory=on_trajectory,
                on_unreadable=unreadable,
                device=_device(args.device),
            ),
            backend=args.backend_lib,
        )
    except KeyboardInterrupt:
        print(f"\ninterrupted; {count} trajectories written; run again to resume", file=sys.stderr)
        return 130
    except OutputBusyError as exc:
        print(f"agentfly-min: {exc}", file=sys.stderr)
        return 2
    print("", file=sys.stderr)
    for line in summary.lines():
        print(line, file=sys.stderr)
    print(f"-> {args.out}", file=sys.stderr)
    return 0


# --- run -------------------------------------------------------------------------


def run_command(args: argparse.Namespace) -> int:
    """Run one episode and show it live: streamed text, tool calls and their
    results, the reward at the end; ``--json`` prints the trajectory instead."""
    from rich.console import Console
    from rich.text import Text

    from .agent import EpisodeDone, ReasoningDelta, TextDelta, ToolCallEvent, ToolResultEvent, TurnEnd, stream_agent
    from .runfile import load_agent, stream_transport

    try:
        agent, spec = load_agent(Path(args.config).read_bytes())
    except ConfigError as exc:
        print(f"agentfly-min: {args.config}: {exc}", file=sys.stderr)
        return 2
    work_dir = _work_dir(args)
    if spec.backend != "client":
        _prepare_environment(work_dir, offline=Path(spec.model).exists())
    console = Console(highlight=False, soft_wrap=True)
    done: list[Any] = []

    async def main() -> None:
        async with stream_transport(agent, spec, work_dir, _device(args.device)) as (stream, tokenizer):
            async with stream_agent(agent, stream, {"question": args.question, **_answer(args)}, tokenizer=tokenizer) as events:
                async for event in events:
                    if args.json:
                        if isinstance(event, EpisodeDone):
                            done.append(event.trajectory)
                        continue
                    if isinstance(event, TextDelta):
                        console.print(Text(event.text), end="")
                    elif isinstance(event, ReasoningDelta):
                        console.print(Text(event.text, style="dim italic"), end="")
                    elif isinstance(event, TurnEnd):
                        console.print()
                    elif isinstance(event, ToolCallEvent):
                        console.print(Text(f"→ {event.call.function.name}({event.call.function.arguments})", style="bold cyan"))
                    elif isinstance(event, ToolResultEvent):
                        console.print(Text(f"← {event.message.text}", style="red" if event.failed else "green"))
                    elif isinstance(event, EpisodeDone):
                        done.append(event.trajectory)

    try:
        anyio.run(main, backend=args.backend_lib)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    (trajectory,) = done
    if args.json:
        sys.stdout.write(msgspec.json.format(msgspec.json.encode(trajectory)).decode() + "\n")
    else:
        reward = "none" if trajectory.reward is None else f"{trajectory.reward:g}"
        summary = f"[{trajectory.finish_reason}] {trajectory.num_turns} turns, {trajectory.tool_calls} tool calls, reward {reward}"
        console.print(Text(summary, style="bold"))
        if trajectory.error:
            console.print(Text(f"error: {trajectory.error}", style="red"))
    return 1 if trajectory.error else 0


def _answer(args: argparse.Namespace) -> dict[str, str]:
    return {"answer": args.answer} if args.answer is not None else {}


# --- demo ----------------------------------------------------------------------


async def _demo(base_url: str, requests: int, concurrency: int) -> tuple[Counter[str], list[int]]:
    config = ClientConfig(base_url=base_url, max_concurrency=concurrency, max_requests_per_minute=60_000, timeout=30)
    outcomes: Counter[str] = Counter()
    attempts: list[int] = []
    async with open_backend(config) as generate:

        async def one(i: int) -> None:
            try:
                completion: Completion = await generate(Request(messages=(Message(role="user", content=f"task {i}"),)))
            except TransportError as exc:
                outcomes[f"{type(exc).__name__}: {exc}"] += 1
                return
            outcomes["completed"] += 1
            attempts.append(completion.attempts)

        async with anyio.create_task_group() as tg:
            for i in range(requests):
                tg.start_soon(one, i)
    return outcomes, attempts


def demo(args: argparse.Namespace) -> int:
    """The client transport and its default middleware against the local
    fake OpenAI server, with faults injected."""
    from .testing import FakeOpenAIServer

    with FakeOpenAIServer() as server:
        server.configure(fault_rate=args.fault_rate, fault_kinds=["429", "500", "503", "drop"], latency=0.01)
        start = time.perf_counter()
        outcomes, attempts = anyio.run(_demo, server.base_url, args.requests, args.concurrency, backend=args.backend_lib)
        seconds = time.perf_counter() - start
        served = Counter(entry.outcome for entry in server.log())
    print(f"{args.requests} requests, {args.concurrency} in flight, {args.fault_rate:.0%} faults injected, on {args.backend_lib}")
    print(f"  server saw: {dict(served)}")
    print(f"  outcomes:   {dict(outcomes)}")
    if attempts:
        print(f"  attempts:   mean {sum(attempts) / len(attempts):.2f}, max {max(attempts)}")
    print(f"  time:       {seconds:.2f} s ({args.requests / seconds:,.0f} requests/s)")
    return 0 if outcomes["completed"] == args.requests else 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="agentfly-min", description="Typed LLM agents over vLLM, verl and OpenAI-compatible transports."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    from .bench.cli import add_command as add_bench, positive

    add_bench(commands, _prepare_environment, _device)

    r = commands.add_parser("rollout", help="run an agent from a TOML file over a JSONL task file")
    r.add_argument("--config", required=True, help="agent TOML")
    r.add_argument("--tasks", required=True, help="tasks, one JSON object per line")
    r.add_argument("--out", required=True, help="trajectories JSONL; appended to, and resumed from")
    r.add_argument("--n", type=positive, default=1, help="chains per task")
    r.add_argument("--concurrency", type=positive, default=32, help="chains in flight")
    r.add_argument("--backend-lib", choices=["asyncio", "trio"], default="asyncio")
    r.add_argument("--work-dir", default=".cache/rollout", help="caches and temp files for local engines")
    r.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="settings of a local verl stack (see bench)")
    r.set_defaults(run=rollout_command)

    run = commands.add_parser("run", help="run one episode and show it live")
    run.add_argument("--config", required=True, help="agent TOML (as for rollout)")
    run.add_argument("question", help="the task's question")
    run.add_argument("--answer", help="the expected answer, for the reward")
    run.add_argument("--json", action="store_true", help="print the trajectory as JSON instead")
    run.add_argument("--backend-lib", choices=["asyncio", "trio"], default="asyncio")
    run.add_argument("--work-dir", default=".cache/run", help="caches and temp files for local engines")
    run.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="settings of a local stack (see bench)")
    run.set_defaults(run=run_command)

    t = commands.add_parser("templates", help=templates_command.__doc__)
    t.set_defaults(run=templates_command)

    d = commands.add_parser("demo", help=demo.__doc__.splitlines()[0] if demo.__doc__ else None)
    d.add_argument("--requests", type=int, default=500)
    d.add_argument("--concurrency", type=int, default=64)
    d.add_argument("--fault-rate", type=float, default=0.2)
    d.add_argument("--backend-lib", choices=["asyncio", "trio"], default="asyncio")
    d.set_defaults(run=demo)

    from .gateway.cli import add_command

    add_command(commands, _prepare_environment, _device)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    status: int = args.run(args)
    return status


if __name__ == "__main__":
    sys.exit(main())
