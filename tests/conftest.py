"""Shared fixtures: every async test runs on asyncio and on trio."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agentfly_min.testing import FakeOpenAIServer, tiny_model

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache"  # caches stay inside the build tree
WORK = CACHE / "work"


def pytest_configure(config: pytest.Config) -> None:
    # vLLM, torch and Ray read these when first imported: set them before any
    # test imports them, so sockets, caches and temp files stay in the tree.
    import os
    import tempfile

    from agentfly_min.local import cpu_environment

    os.environ.update(cpu_environment(WORK))
    tempfile.tempdir = None  # re-read TMPDIR
    # Ray worker processes (verl's agent-loop workers) import test helpers
    # (tests.verl.rewards) by path.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))


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


@pytest.fixture(scope="session")
def tiny_model_path() -> Path:
    return tiny_model(CACHE)


@pytest.fixture(scope="session")
def tokenizer(tiny_model_path: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model_path))
