"""Typing is part of the API: mypy --strict must accept the project and the
usage file, and must reject the deliberate mistakes in tests/typing/fail_*."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
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


@pytest.mark.slow
def test_readme_examples_type_check_in_a_downstream_project(tmp_path: Path) -> None:
    """What a user does: install the package (as scripts/setup.sh does),
    then run mypy --strict on their own code, outside our tree and without
    our config, stubs or paths. Their code here is every Python example in
    the README."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.DOTALL)
    assert len(blocks) >= 3
    parts = ["from typing import Any\n"]
    for number, block in enumerate(blocks):
        # The free names the examples lean on arrive as parameters.
        parts.append(f"\n\nasync def example_{number}(tasks: list[dict[str, Any]], tokenizer: Any, batch: Any) -> None:\n")
        parts.append(textwrap.indent(block, "    ") + "    return None\n")
    (tmp_path / "downstream.py").write_text("".join(parts))
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(tmp_path / ".mypy_cache"), "downstream.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert result.returncode == 0, result.stdout + result.stderr + "".join(parts)
