"""Running the bench: start each transport's resources, run the workload
through ours and the raw counterpart at each concurrency, shut down."""

from __future__ import annotations

import datetime
import threading
import time
import zlib
from collections.abc import Callable
from typing import Literal

import msgspec

from .._text import one_line
from ..errors import ConfigError
from .host import HostSteadiness, probe_host
from .report import BenchReport, RunResult, TransportName, environment
from .stats import RatioEstimate, Sample, combine_stacks, measure_pairs
from .workload import RunStats, Workload
from .options import BenchOptions, split_rounds
from .stacks import STARTERS, Runner

__all__ = ["BenchOptions", "run_bench", "MemorySampler", "split_rounds"]


class MemorySampler:
    """Peak resident memory of this process and all its children (engine
    cores, Ray workers, servers), sampled on a thread every 0.2 s."""

    def __init__(self) -> None:
        import psutil

        self._process = psutil.Process()
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _rss(self) -> int:
        import psutil

        total = 0
        for p in [self._process, *self._process.children(recursive=True)]:
            try:
                total += p.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            self._stop.wait(0.2)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())


def _ms(seconds: float) -> float:
    return seconds * 1000.0


def _pooled(runs: list[RunStats]) -> RunStats:
    return RunStats(
        seconds=sum(r.seconds for r in runs),
        tokens=sum(r.tokens for r in runs),
        trajectories=sum(r.trajectories for r in runs),
        turn_latencies=tuple(t for r in runs for t in r.turn_latencies),
        errors=sum(r.errors for r in runs),
    )


def _cpu_ms_per_turn(samples: list[Sample], runs: list[RunStats]) -> float:
    turns = sum(len(r.turn_latencies) for r in runs)
    return 1000.0 * sum(s.cpu_seconds for s in samples) / turns if turns else 0.0


def _result(
    name: TransportName,
    loop: Literal["asyncio", "trio"],
    level: int,
    mine: list[RunStats],
    theirs: list[RunStats],
    estimate: RatioEstimate,
    peak: int,
) -> RunResult:
    ours_all, raw_all = _pooled(mine), _pooled(theirs)
    return RunResult(
        transport=name,
        loop=loop,
        concurrency=level,
        tokens=ours_all.tokens,
        seconds=ours_all.seconds,
        tokens_per_s=ours_all.tokens_per_s,
        trajectories_per_s=ours_all.trajectories_per_s,
        p50_turn_ms=_ms(ours_all.latency(0.5)),
        p99_turn_ms=_ms(ours_all.latency(0.99)),
        peak_memory_mb=peak / 2**20,
        raw_tokens_per_s=raw_all.tokens_per_s,
        raw_p99_turn_ms=_ms(raw_all.latency(0.99)),
        ratio_to_raw=estimate.ratio,
        ratio_low=estimate.low,
        ratio_high=estimate.high,
        verdict=estimate.verdict,
        cpu_ms_per_turn=_cpu_ms_per_turn(estimate.ours, mine),
        raw_cpu_ms_per_turn=_cpu_ms_per_turn(estimate.raw, theirs),
        estimate=estimate,
        errors=ours_all.errors,
    )


def run_bench(
    options: BenchOptions,
    *,
    on_result: Callable[[BenchReport], None],
    progress: Callable[[str, int], Callable[[], None]],
    failures: dict[str, str],
    should_stop: Callable[[], bool] = lambda: False,
) -> None:
    """Run the bench; ``on_result`` gets the report so far after every
    measurement (so an interrupted run still has everything finished),
    ``progress(label, total)`` returns the tick for one run's chains, and a
    transport that fails to start is recorded in ``failures``. When
    ``should_stop()`` turns true, the run ends after the current measurement
    with :class:`KeyboardInterrupt`, everything shut down on the way out."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(options.model)
    except (OSError, ValueError) as exc:  # transformers' words for a folder it cannot read
        raise ConfigError("model", f"cannot load its tokenizer: {one_line(str(exc), 300)}") from None
    # Per row (transport, level), one entry per start: its estimate, the
    # counted runs of each side, and the peak memory.
    rows: dict[tuple[TransportName, int], list[tuple[RatioEstimate, list[RunStats], list[RunStats], int]]] = {}
    started_at = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    clock_started = time.monotonic()
    env = environment()
    host_before = probe_host()  # before any engine: the host's own jitter
    host_after: HostSteadiness | None = None

    def results() -> list[RunResult]:
        found = []
        for name in options.transports:
            for level in options.concurrency_levels:
                starts = rows.get((name, level))
                if not starts:
                    continue
                estimate = starts[0][0] if len(starts) == 1 else combine_stacks([e for e, _, _, _ in starts])
                mine = [stats for _, m, _, _ in starts for stats in m]
                theirs = [stats for _, _, t, _ in starts for stats in t]
                found.append(_result(name, options.loop, level, mine, theirs, estimate, max(p for _, _, _, p in starts)))
        return found

    def report() -> BenchReport:
        return BenchReport(
            started_at=started_at,
            model=options.model,
            random_weights=options.random_weights,
            workload=options.workload,
            transports=list(options.transports),
            loop=options.loop,
            concurrency_levels=list(options.concurrency_levels),
            target=options.target,
            budget_seconds=options.budget_seconds,
            min_rounds=options.min_rounds,
            max_rounds=options.max_rounds,
            seconds=time.monotonic() - clock_started,
            environment=env,
            results=results(),
            failures=dict(failures),
            host_before=host_before,
            host_after=host_after,
            stacks=options.stacks,
        )

    chains = options.workload.tasks * options.workload.chains
    budget, min_rounds, max_rounds = options.share()

    def interrupted() -> bool:
        # Ctrl-C in a terminal reaches the whole process group: engine
        # processes die of it while our handler is still to run. Give the
        # handler a moment before calling a failure a failure.
        deadline = time.monotonic() + 1.0
        while not should_stop() and time.monotonic() < deadline:
            time.sleep(0.05)
        return should_stop()

    def measure(run: Runner, workload: Workload, label: str) -> RunStats:
        try:
            stats = run(workload, progress(label, chains))
        except Exception:  # noqa: BLE001 - whatever a dying engine raises, when we were told to stop
            if interrupted():
                raise KeyboardInterrupt from None
            raise
        if stats.errors and interrupted():
            raise KeyboardInterrupt  # the signal reached the engines mid-run: the measurement is void
        return stats

    # The starts go round the transports (A, B, C, A, B, C, ...), so each
    # row's starts are spread over the whole run, not taken back to back.
    for stack in range(options.stacks):
        for name in options.transports:
            if name in failures:
                continue
            try:
                with STARTERS[name](options, tokenizer) as (ours, raw):
                    for level in options.concurrency_levels:
                        if should_stop():
                            raise KeyboardInterrupt
                        workload = msgspec.structs.replace(options.workload, concurrency=level)
                        # The first run of each side is the warm-up round.
                        kept: dict[str, list[RunStats]] = {"ours": [], "raw": []}
                        start = f" start {stack + 1}/{options.stacks}" if options.stacks > 1 else ""

                        def timed(side: str, run: Runner) -> Callable[[], Sample]:
                            def one() -> Sample:
                                if should_stop():
                                    raise KeyboardInterrupt
                                done = len(kept[side])
                                who = "agentfly_min" if side == "ours" else "raw"
                                cpu = time.process_time()
                                stats = measure(run, workload, f"{name} x{level}{start} {who} " + (f"#{done}" if done else "warm-up"))
                                kept[side].append(stats)
                                return Sample(work=stats.tokens, seconds=stats.seconds, cpu_seconds=time.process_time() - cpu, stack=stack)

                            return one

                        # Ours and raw alternate a round at a time, in blocks of
                        # both orders; the first round (new shapes pay one-time
                        # costs: kernels, the first Ray calls) is measured and
                        # kept apart; rounds are added until the ratio's interval
                        # on this start is narrow enough or its share of the
                        # budget is spent. Each row and start draws its own
                        # orders (reproducibly): with one seed every row and
                        # start ran the same sequence of orders.
                        with MemorySampler() as memory:
                            estimate = measure_pairs(
                                timed("ours", ours), timed("raw", raw),
                                target=options.target, budget_seconds=budget,
                                min_rounds=min_rounds, max_rounds=max_rounds, warmup_rounds=1,
                                seed=zlib.crc32(f"{name} {level} {stack}".encode()),
                            )  # fmt: skip
                        rows.setdefault((name, level), []).append((estimate, kept["ours"][1:], kept["raw"][1:], memory.peak))
                        on_result(report())
            except (ImportError, RuntimeError, TimeoutError, OSError, ValueError) as exc:
                # A transport that cannot start here (say, no verl) does not stop the others.
                failures[name] = f"{type(exc).__name__}: {exc}"
                on_result(report())
    host_after = probe_host()  # every engine is shut down by now
    on_result(report())
