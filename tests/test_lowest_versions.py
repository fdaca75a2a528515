"""The core dependencies at the lowest versions pyproject.toml allows.

A floor that is too low passes every other test (they run on whatever pip
picked, usually the newest) and breaks for the user whose resolver picks the
floor. This builds a venv with each core dependency pinned at its floor and
runs the tests of the parts that use only them (records, configs, middleware,
the OpenAI client transport on asyncio and trio, tools, rewards).
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib

import pytest

from .conftest import CACHE, ROOT

pytestmark = pytest.mark.slow

CORE_TESTS = [
    "tests/test_records.py",
    "tests/test_configs.py",
    "tests/test_middleware.py",
    "tests/test_client.py",
    "tests/test_client_options.py",
    "tests/test_tools.py",
    "tests/test_rewards.py",
    "tests/test_reliability.py",
]
# What those tests need besides the package's own dependencies (any version).
TEST_TOOLS = ["pytest", "trio", "hypothesis", "uvicorn", "starlette", "psutil", "pillow"]


def floors() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins: dict[str, str] = {}
    for requirement in project["dependencies"]:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*>=\s*([0-9][^,;\s]*)", requirement.strip())
        assert match, f"every core dependency needs a >= floor: {requirement!r}"
        pins[match.group(1)] = match.group(2)
    return pins


def _release(version: str) -> tuple[int, ...]:
    parts = [int(part) for part in version.split(".")]
    while parts and parts[-1] == 0:
        parts.pop()  # 4.11 == 4.11.0
    return tuple(parts)


def test_core_tests_pass_with_every_core_dependency_at_its_floor() -> None:
    pins = floors()
    assert set(pins) == {"anyio", "msgspec", "openai", "docstring-parser", "aiohttp"}
    venv = CACHE / "lowest-deps"
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    install = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *TEST_TOOLS]
    subprocess.run([*install, *(f"{name}=={version}" for name, version in pins.items())], check=True, timeout=600)
    listed = subprocess.run([str(python), "-m", "pip", "list", "--format=freeze"], capture_output=True, text=True, check=True).stdout
    installed = {line.split("==")[0].lower().replace("_", "-"): line.split("==")[1] for line in listed.splitlines() if "==" in line}
    for name, version in pins.items():
        assert _release(installed[name]) == _release(version)  # really the floor, not something newer
    # The package from the source tree, not installed: its dependencies stay the pinned ones.
    result = subprocess.run(
        [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow", *CORE_TESTS],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "HOME": str(CACHE)},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert re.search(r"\d+ passed", result.stdout)
