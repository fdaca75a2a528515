"""Benchmark fixtures, and a summary of the ratios each benchmark measured."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from agentfly_min.testing import FakeOpenAIServer, tiny_model

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache"
WORK = CACHE / "work"


def pytest_configure(config: pytest.Config) -> None:
    import os
    import tempfile

    from agentfly_min.local import cpu_environment

    os.environ.update(cpu_environment(WORK))
    tempfile.tempdir = None


@pytest.fixture(scope="session")
def tiny_model_path() -> Path:
    return tiny_model(CACHE)

_RATIOS = pytest.StashKey[list[tuple[str, str]]]()


@pytest.fixture(scope="session")
def fake_server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer() as server:
        yield server


@pytest.fixture
def report_ratio(request: pytest.FixtureRequest) -> "RatioReporter":
    return RatioReporter(request)


class RatioReporter:
    """Records a line for the end-of-run summary (and the benchmark JSON)."""

    def __init__(self, request: pytest.FixtureRequest) -> None:
        self._request = request

    def __call__(self, line: str) -> None:
        self._request.config.stash.setdefault(_RATIOS, []).append((self._request.node.name, line))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    lines = config.stash.get(_RATIOS, [])
    if lines:
        terminalreporter.section("ratios measured in this run")
        for name, line in lines:
            terminalreporter.write_line(f"{name}: {line}")
