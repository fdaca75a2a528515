"""Shared fixtures: every async test runs on asyncio and on trio."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from agentfly_min.testing import FakeOpenAIServer


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    backend: str = request.param
    return backend


@pytest.fixture(scope="session")
def fake_server() -> Iterator[FakeOpenAIServer]:
    """One fake OpenAI server (its own process) for the whole session; each
    test that uses it configures it first, which also clears its log."""
    with FakeOpenAIServer() as server:
        yield server
