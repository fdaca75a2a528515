"""The benchmark tables in the README and in ``docs/`` are what the
committed reports render to: regenerated from ``docs/bench``, never typed in
(or left behind when a report is re-run); and every page they link to
exists."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from agentfly_min.bench import BenchReport, render_markdown
from agentfly_min.bench.report import render_suites_markdown

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
PAGES = "\n".join([README, *(page.read_text() for page in sorted((ROOT / "docs").glob("*.md")))])
BENCH = ROOT / "docs" / "bench"


def _rows(markdown: str) -> str:
    """From the table's header row on: the date line of a suite's table is
    given in the README's prose instead."""
    return markdown[markdown.index("| ") :].strip()


# Told apart by content, as ``python -m agentfly_min.bench`` does (other JSON
# there, such as the loop's scaling points, has no table in the README).
_FILES = {path: path.read_bytes() for path in sorted(BENCH.rglob("*.json"))}
_REPORTS = [path for path, data in _FILES.items() if b'"schema_version"' in data]
_SUITES = [path for path, data in _FILES.items() if b'"machine_info"' in data]


@pytest.mark.parametrize("path", _REPORTS, ids=lambda p: str(p.relative_to(BENCH)))
def test_every_bench_report_is_in_the_readme_as_rendered(path: Path) -> None:
    report = msgspec.json.decode(path.read_bytes(), type=BenchReport)
    assert render_markdown(report).strip() in PAGES


@pytest.mark.parametrize("path", _SUITES, ids=lambda p: p.name)
def test_every_suite_table_is_in_the_readme_as_rendered(path: Path) -> None:
    table = _rows(render_suites_markdown(path.read_bytes()))
    assert table.count("\n") >= 2  # a header, its rule and at least one row
    assert table in PAGES


def test_the_readme_is_a_front_door() -> None:
    assert README.count("\n") <= 400


def test_every_local_link_of_the_readme_and_docs_resolves() -> None:
    import re

    checked = 0
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#:]+)\)", page.read_text()):
            assert (page.parent / target).exists(), f"{page.name} links to {target}, which is not there"
            checked += 1
    assert checked > 20  # the pattern finds the links


@pytest.mark.parametrize("path", _REPORTS + _SUITES, ids=lambda p: str(p.relative_to(BENCH)))
def test_every_committed_interval_is_what_this_estimator_makes_of_its_samples(path: Path) -> None:
    # The tables were once left with intervals of an estimator since fixed
    # (too narrow): a change to the estimator now means recomputing them
    # (python -m agentfly_min.bench --recompute F.json), as the run would.
    from agentfly_min.bench.recompute import recompute_report, recompute_suites

    data = path.read_bytes()
    if path in _SUITES:
        stored = msgspec.json.decode(data)
        again = msgspec.json.decode(recompute_suites(data))
        paired = [b for b in stored["benchmarks"] if "samples" in b["extra_info"]]
        assert paired and again == stored
    else:
        report = msgspec.json.decode(data, type=BenchReport)
        assert report.results and recompute_report(report) == report


def test_recompute_restores_an_interval_left_from_another_estimator() -> None:
    from agentfly_min.bench.recompute import recompute_report, recompute_suites

    report = msgspec.json.decode((BENCH / "bench.json").read_bytes(), type=BenchReport)
    row = report.results[0]
    stale = msgspec.structs.replace(row, ratio_low=row.ratio_to_raw * 0.99, ratio_high=row.ratio_to_raw * 1.01, verdict="slower")
    tampered = msgspec.structs.replace(report, results=[stale, *report.results[1:]])
    assert tampered != report and recompute_report(tampered) == report

    data = (BENCH / "pytest-client.json").read_bytes()
    suites = msgspec.json.decode(data)
    suites["benchmarks"][0]["extra_info"].update(ratio_low=0.0, verdict="slower")
    assert msgspec.json.decode(recompute_suites(msgspec.json.encode(suites))) == msgspec.json.decode(data)
