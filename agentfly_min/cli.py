"""The ``agentfly-min`` command line: ``bench``, ``rollout``, ``run``, ``gateway``, ``templates`` and ``demo``."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

import anyio
import msgspec

from .configs import ClientConfig
from .errors import ConfigError, OutputBusyError, TransportError
from .records import Completion, Message, Request
from .transports import open_backend

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

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


# --- bench ---------------------------------------------------------------------


def _levels(text: str) -> tuple[int, ...]:
    try:
        levels = tuple(sorted({int(part) for part in text.split(",") if part.strip()}))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not levels or min(levels) < 1:
        raise argparse.ArgumentTypeError("concurrency levels must be integers >= 1")
    return levels


def _transports(text: str) -> tuple[Any, ...]:
    from .bench.report import TransportName

    allowed = get_args(TransportName)
    names = tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    unknown = [n for n in names if n not in allowed]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"transports are {', '.join(allowed)}; got {text!r}")
    return names


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction between 0 and 1 (0.05 for +/-5%), got {text}")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not value > 0.0:
        raise argparse.ArgumentTypeError(f"expected seconds > 0, got {text}")
    return value


def _rounds(text: str) -> int:
    value = int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"an interval needs two rounds or more, got {text}")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text}")
    return value


# The tiny model the bench builds for a template when no --model is given.
_TINY_FAMILY: dict[str, Literal["qwen2.5", "qwen3", "llama3"]] = {
    "qwen2.5": "qwen2.5",
    "hf": "qwen2.5",
    "qwen3": "qwen3",
    "qwen3-nothink": "qwen3",
    "qwen3-coder": "qwen3",
    "llama3": "llama3",
}


def _template_name(text: str) -> str:
    from .templates import template_names

    if text not in template_names():
        raise argparse.ArgumentTypeError(f"no template named {text!r}; registered: {', '.join(template_names())}")
    return text


def templates_command(args: argparse.Namespace) -> int:
    """List the registered chat templates."""
    from .templates import get_template, template_names

    rows = [(name, get_template(name)) for name in template_names()]
    width = max(len(name) for name, _ in rows)
    print(f"{'template':<{width}}  tool-call format / reasoning")
    for name, template in rows:
        print(f"{name:<{width}}  {template.tool_format} / {template.reasoning}")
    return 0


def _not_a_model(path: Path) -> str | None:
    """Why ``path`` is not a model folder the bench can load, or None."""
    if not path.exists():
        return "no such file or folder"
    if not path.is_dir():
        return "not a folder (give a Hugging Face model folder)"
    missing = [name for name in ("config.json",) if not (path / name).is_file()]
    if missing:
        return f"not a Hugging Face model folder (no {', '.join(missing)})"
    if not any((path / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
        return "the model folder has no tokenizer (tokenizer.json / tokenizer_config.json)"
    return None


def _device(choice: str) -> Literal["cpu", "cuda"]:
    from .local import detect_device

    if choice == "auto":
        return detect_device()
    return "cuda" if choice == "cuda" else "cpu"


def _run_progress(bar: Progress) -> Callable[[str, int], Callable[[], None]]:
    """The bench's ``progress(label, total)``: one line, reset for each run.

    A line per run piled up (hundreds in a long bench), and every redraw
    renders them all, on a thread of the process being measured: by the
    last starts the display took a good share of the CPU the bench was
    counting, on both sides, and held the GIL the transports wait for."""
    current: list[TaskID] = []

    def progress(label: str, total: int) -> Callable[[], None]:
        if current:
            bar.reset(current[0], total=total, description=label)
        else:
            current.append(bar.add_task(label, total=total))
        task = current[0]
        return lambda: bar.advance(task)

    return progress


def bench(args: argparse.Namespace) -> int:
    """Run one agent workload through each transport and its raw counterpart."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from .bench import BenchOptions, BenchReport, Workload, host_line, host_steady, render_chart, render_table, run_bench
    from .bench.runner import split_rounds
    from .testing import tiny_model

    console = Console(stderr=True)
    if args.min_rounds > args.max_rounds:  # before building anything
        print(f"agentfly-min bench: --min-rounds {args.min_rounds} is more than --max-rounds {args.max_rounds}", file=sys.stderr)
        return 2
    try:
        split_rounds(args.min_rounds, args.max_rounds, args.stacks)
    except ConfigError as exc:
        print(f"agentfly-min bench: --stacks {args.stacks}: {exc.reason}", file=sys.stderr)
        return 2
    if args.model is not None:
        problem = _not_a_model(Path(args.model))
        if problem:
            print(f"agentfly-min bench: --model {args.model}: {problem}", file=sys.stderr)
            return 2
    work_dir = _work_dir(args)
    _prepare_environment(work_dir, offline=True)  # the bench takes model folders only
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if args.model is None:
        family = _TINY_FAMILY.get(args.template)
        if family is None:
            print(f"agentfly-min bench: --template {args.template} has no tiny model to build; give --model", file=sys.stderr)
            return 2
        console.print("[bold]No --model: building the tiny random model (random weights: this measures transports, not model quality).")
        model, random_weights = str(tiny_model(work_dir / "models", family=family)), True
    else:
        model, random_weights = str(Path(args.model).resolve()), False
    device = _device(args.device)
    console.print(f"Device: {device}" + (" (no GPU found: CPU settings)" if device == "cpu" and args.device == "auto" else ""))
    try:
        options = BenchOptions(
            model=model,
            random_weights=random_weights,
            transports=args.transports,
            workload=Workload(tasks=args.tasks, chains=args.chains, turns=args.turns, new_tokens=args.new_tokens, template=args.template),
            concurrency_levels=args.concurrency,
            loop=args.backend_lib,
            work_dir=str(work_dir),
            target=args.target,
            budget_seconds=args.budget,
            min_rounds=args.min_rounds,
            max_rounds=args.max_rounds,
            device=device,
            servers=args.servers,
            stacks=args.stacks,
        )
    except ConfigError as exc:
        print(f"agentfly-min bench: {exc}", file=sys.stderr)
        return 2
    latest: list[BenchReport] = []
    failures: dict[str, str] = {}
    interrupted = False
    stop = threading.Event()

    def on_sigint(signum: int, frame: Any) -> None:
        if stop.is_set():
            signal.default_int_handler(signum, frame)  # a second Ctrl-C stops at once
        stop.set()
        console.print("[yellow]Stopping after the current measurement (Ctrl-C again to stop now)...")

    def keep(report: BenchReport) -> None:
        latest.append(report)  # written as it grows, so even a killed run leaves its figures
        (out / "bench.json").write_bytes(msgspec.json.format(msgspec.json.encode(report)))

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        # Redraws run on a thread of this process, the one being measured:
        # two a second is plenty for a bar.
        with Progress(*columns, console=console, refresh_per_second=2) as bar:
            try:
                run_bench(options, on_result=keep, progress=_run_progress(bar), failures=failures, should_stop=stop.is_set)
            except KeyboardInterrupt:
                interrupted = True
            except ConfigError as exc:
                console.print(f"[red]agentfly-min bench: {exc}")
                return 2
    finally:
        signal.signal(signal.SIGINT, previous)
    if not latest:
        console.print("[red]Interrupted before anything was measured." if interrupted else "[red]Nothing was measured.")
        return 130 if interrupted else 1
    report = msgspec.structs.replace(latest[-1], interrupted=interrupted, failures=failures)
    (out / "bench.json").write_bytes(msgspec.json.format(msgspec.json.encode(report)))
    render_chart(report, out / "bench.png")
    screen = Console(width=None if sys.stdout.isatty() else 200)  # a pipe or file: the whole table
    weights = "random weights: this measures the transports, not model quality" if report.random_weights else "user model"
    screen.print(f"Model: {report.model} ({weights})")
    screen.print(render_table(report))
    host = host_line(report)
    if host is not None:
        screen.print(host if host_steady(report) else f"[yellow]{host}")
    for name, reason in failures.items():
        console.print(f"[red]{name} did not run: {reason}")
    if interrupted:
        console.print("[yellow]Interrupted: the table and files hold what finished.")
    console.print(f"Wrote {out / 'bench.json'} and {out / 'bench.png'}")
    return 130 if interrupted else (1 if failures else 0)


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

    b = commands.add_parser("bench", help="the same agent workload through each transport and its raw counterpart")
    b.add_argument("--model", help="a model folder (default: the tiny random model, built offline)")
    b.add_argument(
        "--transports", type=_transports, default=("vllm", "client", "verl"),
        help="comma-separated: vllm,client,verl,fleet (fleet: --servers vLLM servers behind vLLM's router, token ids over HTTP)",
    )  # fmt: skip
    b.add_argument("--servers", type=_positive, default=2, help="vLLM servers in the fleet")
    b.add_argument("--tasks", type=_positive, default=8)
    b.add_argument("--chains", type=_positive, default=2, help="chains per task")
    b.add_argument("--turns", type=_positive, default=3, help="model turns per episode")
    b.add_argument("--new-tokens", type=_positive, default=32, help="tokens sampled per turn (ignore_eos)")
    b.add_argument("--concurrency", type=_levels, default=(1, 4, 16), help="chains in flight, comma-separated levels")
    b.add_argument("--template", type=_template_name, default="qwen2.5", help="the chat family whose prompts and splices the workload uses")
    b.add_argument("--backend-lib", choices=["asyncio", "trio"], default="asyncio")
    b.add_argument(
        "--target", type=_fraction, default=0.05,
        help="add rounds until the ratio's 95%% interval is within this fraction of it (0.05: +/-5%%)",
    )  # fmt: skip
    b.add_argument("--budget", type=_seconds, default=120.0, help="seconds of rounds per row at most (after its warm-up round)")
    b.add_argument("--min-rounds", type=_rounds, default=5, help="counted rounds per row at least (ours and raw each; 2 or more)")
    b.add_argument("--max-rounds", type=_rounds, default=50, help="counted rounds per row at most")
    b.add_argument(
        "--stacks", type=_positive, default=3,
        help="start each transport's engine or server this many times; each start runs every row for its share of "
        "--budget and the rounds, and the interval resamples starts as well as rounds (rounds on one start share its state)",
    )  # fmt: skip
    b.add_argument("--out", default="bench-results", help="folder for bench.json and bench.png")
    b.add_argument("--work-dir", default=".cache/bench", help="models, caches and temp files")
    b.add_argument(
        "--device", choices=["auto", "cpu", "cuda"], default="auto",
        help="settings of the local engines: auto picks cuda where torch sees a GPU, else the CPU settings",
    )  # fmt: skip
    b.set_defaults(run=bench)

    r = commands.add_parser("rollout", help="run an agent from a TOML file over a JSONL task file")
    r.add_argument("--config", required=True, help="agent TOML")
    r.add_argument("--tasks", required=True, help="tasks, one JSON object per line")
    r.add_argument("--out", required=True, help="trajectories JSONL; appended to, and resumed from")
    r.add_argument("--n", type=_positive, default=1, help="chains per task")
    r.add_argument("--concurrency", type=_positive, default=32, help="chains in flight")
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
