"""``agentfly-min bench``: one agent workload through every transport and
its raw counterpart; a table, a JSON report and a chart."""

from .host import HostSteadiness, probe_host
from .report import BenchReport, Environment, RunResult, host_line, host_steady, render_chart, render_markdown, render_table
from .runner import BenchOptions, run_bench
from .workload import Workload

__all__ = [
    "BenchOptions",
    "BenchReport",
    "Environment",
    "HostSteadiness",
    "RunResult",
    "Workload",
    "host_line",
    "host_steady",
    "probe_host",
    "run_bench",
    "render_chart",
    "render_markdown",
    "render_table",
]
