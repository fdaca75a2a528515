"""``agentfly-min bench``: the same agent workload through each transport
and its raw counterpart. The defaults answer in under ten minutes on two
cores (one start of each stack, short rows); ``--publication`` runs the
settings the tables in docs/bench.md were made with."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

import msgspec

from ..errors import ConfigError
from .options import BenchOptions
from .workload import Workload

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

__all__ = ["add_command", "positive", "QUICK", "PUBLICATION"]


def _default(struct: type[msgspec.Struct], name: str) -> Any:
    return next(field.default for field in msgspec.structs.fields(struct) if field.name == name)


# A setting's value when the command line leaves it out: the quick look
# (one start of each stack: its interval holds the rounds' noise, not a
# second start's), which is what BenchOptions and Workload default to, or
# the publication run (four starts, +/-2%).
QUICK: dict[str, Any] = {
    "tasks": _default(Workload, "tasks"),
    "target": _default(BenchOptions, "target"),
    "budget": _default(BenchOptions, "budget_seconds"),
    "min_rounds": _default(BenchOptions, "min_rounds"),
    "max_rounds": _default(BenchOptions, "max_rounds"),
    "stacks": _default(BenchOptions, "stacks"),
}
PUBLICATION: dict[str, Any] = {"tasks": 24, "target": 0.02, "budget": 200.0, "min_rounds": 8, "max_rounds": 80, "stacks": 4}


def _apply_preset(args: argparse.Namespace) -> None:
    preset = PUBLICATION if args.publication else QUICK
    for name, value in preset.items():
        if getattr(args, name) is None:
            setattr(args, name, value)


def _levels(text: str) -> tuple[int, ...]:
    try:
        levels = tuple(sorted({int(part) for part in text.split(",") if part.strip()}))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not levels or min(levels) < 1:
        raise argparse.ArgumentTypeError("concurrency levels must be integers >= 1")
    return levels


def _transports(text: str) -> tuple[Any, ...]:
    from .report import TransportName

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


def positive(text: str) -> int:
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
    from ..templates import template_names

    if text not in template_names():
        raise argparse.ArgumentTypeError(f"no template named {text!r}; registered: {', '.join(template_names())}")
    return text


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


def _bench(args: argparse.Namespace, prepare: Any, device_of: Any) -> int:
    """Run one agent workload through each transport and its raw counterpart."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ..testing import tiny_model
    from . import BenchReport, host_line, host_steady, render_chart, render_table, run_bench
    from .options import split_rounds

    console = Console(stderr=True)
    _apply_preset(args)
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
    work_dir = Path(args.work_dir).resolve()
    work_dir.mkdir(parents=True, exist_ok=True)
    prepare(work_dir, offline=True)  # the bench takes model folders only
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
    device = device_of(args.device)
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


def add_command(commands: Any, prepare: Any, device: Any) -> None:
    """Register the command on the CLI's subparsers (``prepare`` sets up the
    environment for local engines, ``device`` reads ``--device``)."""
    quick, full = QUICK, PUBLICATION
    b = commands.add_parser("bench", help="the same agent workload through each transport and its raw counterpart")
    b.add_argument("--model", help="a model folder (default: the tiny random model, built offline)")
    b.add_argument(
        "--transports", type=_transports, default=("vllm", "client", "verl"),
        help="comma-separated: vllm,client,verl,fleet (fleet: --servers vLLM servers behind vLLM's router, token ids over HTTP)",
    )  # fmt: skip
    b.add_argument(
        "--publication", action="store_true",
        help="the settings docs/bench.md's tables were made with (about an hour on two cores): "
        + ", ".join(f"--{name.replace('_', '-')} {value:g}" for name, value in full.items()),
    )  # fmt: skip
    b.add_argument("--servers", type=positive, default=2, help="vLLM servers in the fleet")
    b.add_argument("--tasks", type=positive, help=f"tasks per round ({quick['tasks']}; --publication: {full['tasks']})")
    b.add_argument("--chains", type=positive, default=2, help="chains per task")
    b.add_argument("--turns", type=positive, default=3, help="model turns per episode")
    b.add_argument("--new-tokens", type=positive, default=32, help="tokens sampled per turn (ignore_eos)")
    b.add_argument("--concurrency", type=_levels, default=(1, 4, 16), help="chains in flight, comma-separated levels")
    b.add_argument("--template", type=_template_name, default="qwen2.5", help="the chat family whose prompts and splices the workload uses")
    b.add_argument("--backend-lib", choices=["asyncio", "trio"], default="asyncio")
    b.add_argument(
        "--target", type=_fraction,
        help=f"add rounds until the ratio's 95%% interval is within this fraction of it ({quick['target']}: "
        f"+/-{quick['target'] * 100:g}%%; --publication: {full['target']})",
    )  # fmt: skip
    b.add_argument(
        "--budget", type=_seconds,
        help=f"seconds of rounds per row at most, after its warm-up round ({quick['budget']:g}; --publication: {full['budget']:g})",
    )  # fmt: skip
    b.add_argument(
        "--min-rounds", type=_rounds,
        help=f"counted rounds per row at least, ours and raw each ({quick['min_rounds']}; --publication: {full['min_rounds']})",
    )  # fmt: skip
    b.add_argument("--max-rounds", type=_rounds, help=f"counted rounds per row at most ({quick['max_rounds']}; --publication: {full['max_rounds']})")
    b.add_argument(
        "--stacks", type=positive,
        help=f"start each transport's engine or server this many times ({quick['stacks']}; --publication: {full['stacks']}); "
        "each start runs every row for its share of --budget and the rounds, and the interval resamples starts as well "
        "as rounds (rounds on one start share its state: with one start the interval says nothing of a second)",
    )  # fmt: skip
    b.add_argument("--out", default="bench-results", help="folder for bench.json and bench.png")
    b.add_argument("--work-dir", default=".cache/bench", help="models, caches and temp files")
    b.add_argument(
        "--device", choices=["auto", "cpu", "cuda"], default="auto",
        help="settings of the local engines: auto picks cuda where torch sees a GPU, else the CPU settings",
    )  # fmt: skip
    b.set_defaults(run=lambda args: _bench(args, prepare, device))
