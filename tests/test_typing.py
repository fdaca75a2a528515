"""Typing is part of the API: mypy --strict must accept the project and the
usage file, and must reject the deliberate mistakes in tests/typing/fail_*."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from mypy import api

ROOT = Path(__file__).resolve().parent.parent
FAILS = sorted((ROOT / "tests" / "typing").glob("fail_*.py"))


def run_mypy(*args: str) -> tuple[str, int]:
    stdout, stderr, status = api.run(["--config-file", str(ROOT / "pyproject.toml"), *args])
    return stdout + stderr, status


@pytest.mark.slow
def test_project_passes_mypy_strict() -> None:
    # Package, tests (the usage file included) and benchmarks, per pyproject.
    output, status = run_mypy()
    assert status == 0, output


@pytest.mark.parametrize("path", FAILS, ids=[p.name for p in FAILS])
def test_wrong_uses_are_rejected(path: Path) -> None:
    expected = {
        number: line.split("# expect: ", 1)[1].strip()
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if "# expect: " in line
    }
    assert expected, f"{path.name} declares no expected errors"
    output, status = run_mypy(str(path))
    assert status == 1, output
    errors: dict[int, str] = {}
    for match in re.finditer(rf"{re.escape(path.name)}:(\d+): error: (.*)", output):
        errors.setdefault(int(match.group(1)), match.group(2))
    for number, message in expected.items():
        assert number in errors, f"line {number} was accepted; expected: {message}\n{output}"
        assert message in errors[number], f"line {number}: {errors[number]!r} does not say {message!r}"
